#!/usr/bin/env bash
# Build and run the C tests against an INSTALLED LoRAKit (header, library and lorakit.pc under PREFIX).
#   bash Tests/c/run.sh PREFIX          (`make test-c` installs into .build/test-prefix and calls this)
# Every Tests/c/test_*.c and bindings/c/example.c is compiled with
#   cc -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags --libs lorakit) -pthread -lm
# and run. Test programs print "RESULT <passed> <failed> <skipped>"; the example counts as one test.
# The last line is "N passed, M failed"; the exit status is non-zero on any failure.
set -u
PREFIX=${1:?usage: run.sh PREFIX}
PREFIX=$(cd "$PREFIX" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${CC:-cc}
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
if ! PKG_FLAGS=$(pkg-config --cflags --libs lorakit); then
    echo "run.sh: pkg-config cannot find lorakit under $PREFIX/lib/pkgconfig" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
# A crash is reported as a failed test; keep Swift's crash report to its one-line message.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
export LORAKIT_EXPECTED_VERSION=$(pkg-config --modversion lorakit)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/lorakit-ctest.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

passed=0; failed=0; skipped=0
sources=("$HERE"/test_*.c "$ROOT/bindings/c/example.c")
# ONLY="test_threads test_train": just those programs (make test-tsan runs the threaded ones).
if [ -n "${ONLY:-}" ]; then
    sources=(); for name in $ONLY; do sources+=("$HERE/$name.c"); done
fi
for src in "${sources[@]}"; do
    name=$(basename "$src" .c)
    echo "== $name"
    # shellcheck disable=SC2086  # PKG_FLAGS is a list of flags; CC may carry flags (scripts/sanitize.sh)
    if ! $CC -std=c11 -Wall -Wextra -Werror -O1 -g -o "$OUT/$name" "$src" $PKG_FLAGS -pthread -lm; then
        echo "  FAIL $name: does not compile"
        failed=$((failed + 1))
        continue
    fi
    "$OUT/$name" >"$OUT/$name.log" 2>&1
    rc=$?
    cat "$OUT/$name.log"
    result=$(grep -E '^RESULT [0-9]+ [0-9]+ [0-9]+$' "$OUT/$name.log" | tail -n 1)
    if [ -n "$result" ]; then
        read -r _ p f s <<<"$result"
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            echo "  FAIL $name: exit status $rc"
            failed=$((failed + 1))
        fi
    elif [ "$name" = example ] && [ "$rc" -eq 0 ]; then
        echo "  ok   example"
        passed=$((passed + 1))
    else
        echo "  FAIL $name: exit status $rc without a RESULT line (crash?)"
        failed=$((failed + 1))
    fi
done
[ "$skipped" -gt 0 ] && echo "($skipped skipped; see the skip lines above for the reasons)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
