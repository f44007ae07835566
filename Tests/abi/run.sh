#!/usr/bin/env bash
# Build and run the C ABI sweep (Tests/abi/abi_sweep.c) against an INSTALLED LoRAKit.
#   bash Tests/abi/run.sh PREFIX [abi_sweep options: --only lk_name, --list, --verbose]
# (`make test-abi` installs into .build/test-prefix and calls this.)
# The signature table is generated here from the installed lorakit.h by scripts/abi_table.py, so it
# always describes the header being tested; the sweep checks it against `nm -D` of the library.
# Needs libffi (pkg-config libffi; Debian: libffi-dev, installed by scripts/setup.sh).
# The last line is "N passed, M failed"; the exit status is non-zero on any failure.
set -u
PREFIX=${1:?usage: run.sh PREFIX [options]}
shift
PREFIX=$(cd "$PREFIX" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${CC:-cc}
PYTHON=${PYTHON:-python3}
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
fail() { echo "run.sh: $*" >&2; echo "0 passed, 1 failed"; exit 1; }
PKG_FLAGS=$(pkg-config --cflags --libs lorakit) || fail "pkg-config cannot find lorakit under $PREFIX/lib/pkgconfig"
FFI_FLAGS=$(pkg-config --cflags --libs libffi) || fail "libffi not found (pkg-config libffi): run scripts/setup.sh (Debian: apt-get install libffi-dev)"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/lorakit-abi-build.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
"$PYTHON" "$ROOT/scripts/abi_table.py" --c-table "$PREFIX/include/lorakit.h" > "$OUT/abi_table.h" \
    || fail "scripts/abi_table.py cannot parse $PREFIX/include/lorakit.h"
# shellcheck disable=SC2086  # flag lists; CC may carry flags (scripts/sanitize.sh)
$CC -std=c11 -Wall -Wextra -Werror -O1 -g -I"$OUT" -o "$OUT/abi_sweep" "$HERE/abi_sweep.c" $PKG_FLAGS $FFI_FLAGS -ldl -lm \
    || fail "abi_sweep.c does not compile"
# A crash is reported as a failed call; keep Swift's crash report to its one-line message.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
"$OUT/abi_sweep" "$ROOT" "$@"
