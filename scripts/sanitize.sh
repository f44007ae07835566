#!/usr/bin/env bash
# Build LoRAKit with a sanitizer and run the Swift, C and Python suites under it (make test-asan / test-tsan).
#   scripts/sanitize.sh address [swift|c|abi|plugins|python|soak …]   (default: swift c python)
#   scripts/sanitize.sh thread  [swift|c|abi|plugins|python|soak …]
#   SANITIZE_SWIFT_FILTER=REGEX scripts/sanitize.sh address swift   (only the Swift tests matching REGEX)
#   SANITIZE_PYTHON_FILTER=EXPR scripts/sanitize.sh thread python    (only the Python tests pytest -k EXPR selects)
#
# address: AddressSanitizer for the Swift code, AddressSanitizer + UndefinedBehaviorSanitizer for the C code
#   (LoRAKitKernelsC and the C test programs). Swift has no -sanitize=undefined on Linux; its own run-time
#   checks (overflow, bounds) are on in release builds, and this build also turns exclusivity checking back
#   on (the package compiles with -enforce-exclusivity=unchecked for speed). Leaks are reported (LeakSanitizer)
#   for the Swift and C suites; not for Python, whose interpreter keeps memory until exit by design.
# thread: ThreadSanitizer for the Swift and C code. The C suite is its threaded programs (test_threads: the
#   pool; test_model: generation on contexts in parallel; test_train: two trainers at once); C programs link
#   libdispatch and the blocks runtime, which the toolchain's TSan runtime intercepts.
# plugins: Tests/plugins (no liblorakit): the reference host, its thread pool, forward from two threads on one
#   plugin instance, the C plugins; built with the sanitizer (no library build when it is the only suite).
# Each mode builds into its own folder (.build-asan, .build-tsan) and installs there for the C tests; the
# Python tests load the sanitized liblorakit.so with the sanitizer runtime preloaded into the real python3
# interpreter (sys.executable: a pyenv shim is a shell script, and the preload would go to the shell), and
# under TSan also the toolchain's libdispatch and blocks runtime, which its runtime calls into.
# The Swift, C and Python suites load the shipped plugins from .build/plugin-tests: `make test-plugins`
# (ordinary, uninstrumented build) runs first when one of them is selected.
# Output: each suite's log in .build-<mode>/logs/, and one summary line per suite:
#   "<mode> <suite>: <result>, N sanitizer reports, S s". Exit status non-zero on any failure or report.
set -u
MODE=${1:?usage: sanitize.sh address|thread [suites…]}
shift
SUITES=${*:-swift c python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
case "$MODE" in
    address) TAG=asan
             export LORAKIT_SANITIZER=address
             SWIFT_SAN=(-Xswiftc -sanitize=address -Xcc -fsanitize=address,undefined -Xcc -fno-sanitize-recover=undefined)
             export LORAKIT_EXCLUSIVITY_CHECKS=1  # Package.swift: keep -enforce-exclusivity=checked
             RT=asan
             REPORT='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|Simultaneous accesses'
             # malloc_context_size=64: allocation stacks deep enough for the suppressions' frames (a template
             # parse under chatFormatter is 30+ frames deep; the default keeps 30: scripts/lsan.supp).
             export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1:print_summary=1:malloc_context_size=64}
             export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
             export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/scripts/lsan.supp:print_suppressions=0} ;;
    thread)  TAG=tsan
             export LORAKIT_SANITIZER=thread   # tests with hang checks allow for the slowdown
             SWIFT_SAN=(-Xswiftc -sanitize=thread -Xcc -fsanitize=thread)
             RT=tsan
             REPORT='WARNING: ThreadSanitizer|ERROR: ThreadSanitizer'
             export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1:report_signal_unsafe=0:suppressions=$ROOT/scripts/tsan.supp} ;;
    *) echo "sanitize.sh: mode must be address or thread" >&2; exit 2 ;;
esac
SCRATCH=".build-$TAG"
# The toolchain's TSan runtime intercepts libdispatch: a C program linked with it needs libdispatch and
# the blocks runtime (the Swift toolchain's).
SWIFTLIB=$(cd "$(dirname "$(command -v swift)")/../lib/swift/linux" && pwd)
TSAN_LIBS="-L$SWIFTLIB -Wl,-rpath,$SWIFTLIB -Wl,--no-as-needed -ldispatch -lBlocksRuntime"
# gold crashes linking sanitized Swift (internal error in format_file_lineno); lld works.
FLAGS="-c release -Xswiftc -enable-testing --scratch-path $SCRATCH ${SWIFT_SAN[*]} -Xswiftc -use-ld=lld"
LOGS="$SCRATCH/logs"
mkdir -p "$LOGS"
CLANG=$(dirname "$(command -v swift)")/clang
RUNTIME=$("$CLANG" -print-file-name="libclang_rt.$RT-x86_64.so")
[ -f "$RUNTIME" ] || { echo "sanitize.sh: no $RT runtime at $RUNTIME" >&2; exit 2; }
export SWIFT_BACKTRACE=enable=no
MODEL=$(cat .build/model-path 2>/dev/null || true)
[ -n "$MODEL" ] || MODEL=$(scripts/fetch_model.sh 2>/dev/null || true)
export LORAKIT_MODEL=$MODEL

# The real interpreter (a pyenv shim is a shell script: LD_PRELOAD would instrument bash, not python).
PY=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)' 2>/dev/null || command -v python3)
# What python3 preloads: the sanitizer runtime, and for TSan the libdispatch and blocks runtime it calls.
PRELOAD="$RUNTIME"
[ "$MODE" = thread ] && PRELOAD="$RUNTIME $SWIFTLIB/libdispatch.so $SWIFTLIB/libBlocksRuntime.so"

status=0
now() { date +%s; }
# reports LOG: the number of sanitizer reports in a log.
reports() { grep -cE "$REPORT" "$1" 2>/dev/null || true; }
summary() {  # suite rc log start
    local n; n=$(reports "$3")
    local res=passed
    [ "$2" -ne 0 ] && res="FAILED (exit $2)"
    [ "$n" -gt 0 ] && status=1
    [ "$2" -ne 0 ] && status=1
    echo "$MODE $1: $res, $n sanitizer reports, $(( $(now) - $4 )) s (log: $LOGS/$1.log)"
    if [ "$n" -gt 0 ] || [ "$2" -ne 0 ]; then grep -E -A12 "$REPORT" "$3" | head -n 60; fi
}

t=$(now)
TESTS=""
case " $SUITES " in *" swift "*) TESTS=--build-tests ;; esac
NEEDS_LIB=no
for s in $SUITES; do [ "$s" != plugins ] && NEEDS_LIB=yes; done
if [ $NEEDS_LIB = yes ]; then
echo "$MODE: building the library, the CLI${TESTS:+ and the Swift tests} into $SCRATCH"
# shellcheck disable=SC2086  # FLAGS is a list of flags
if ! swift build $FLAGS $TESTS >"$LOGS/build.log" 2>&1; then
    grep -E "error:" "$LOGS/build.log" | head -n 20; tail -n 5 "$LOGS/build.log"
    echo "$MODE build: FAILED"; exit 1
fi
BIN=$(swift build $FLAGS --show-bin-path)
echo "$MODE build: $(( $(now) - t )) s"
fi
# The Swift, C and Python suites read the shipped plugins and the bad test plugins from .build/plugin-tests.
case " $SUITES " in *" swift "*|*" c "*|*" python "*)
    t=$(now)
    if ! make --no-print-directory test-plugins >"$LOGS/test-plugins.log" 2>&1; then
        tail -n 20 "$LOGS/test-plugins.log"; echo "$MODE test-plugins: FAILED"; exit 1
    fi
    # The sanitized CLI (lorakit serve in the Python tests) searches its own build folder's plugins/.
    mkdir -p "$SCRATCH/plugins" && cp .build/plugins/ia3.so .build/plugins/dora.so "$SCRATCH/plugins/"
    echo "$MODE test-plugins (ordinary build, for the swift/c/python suites): $(( $(now) - t )) s" ;;
esac

for suite in $SUITES; do
    t=$(now)
    log="$LOGS/$suite.log"
    case "$suite" in
    swift)
        # shellcheck disable=SC2086
        # SANITIZE_SWIFT_FILTER=REGEX: only the matching Swift tests (swift test --filter).
        swift test $FLAGS --skip-build ${SANITIZE_SWIFT_FILTER:+--filter "$SANITIZE_SWIFT_FILTER"} >"$log" 2>&1; rc=$?
        grep -E "^(✔|✘|􀟈|.*Test run with|.*tests? (passed|failed))" "$log" | tail -n 3 ;;
    c|abi)
        PREFIX="$ROOT/$SCRATCH/test-prefix"
        make --no-print-directory install PREFIX="$PREFIX" SWIFT_FLAGS="$FLAGS" >"$LOGS/install.log" 2>&1 || { echo "install failed"; tail "$LOGS/install.log"; status=1; continue; }
        # The test programs are compiled with the toolchain's clang and the same sanitizer (C: + UBSan),
        # linked to the shared runtime liblorakit.so uses.
        if [ "$MODE" = address ]; then CSAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -shared-libasan"; else CSAN="-fsanitize=thread $TSAN_LIBS"; fi
        # Under TSan the C suite is its threaded programs (CSUITE_ONLY; every program: CSUITE_ONLY=).
        if [ "$MODE" = thread ] && [ "$suite" = c ]; then export ONLY=${CSUITE_ONLY-test_threads test_model test_train}; fi
        CC="$CLANG $CSAN -Wl,-rpath,$(dirname "$RUNTIME")" bash "Tests/$suite/run.sh" "$PREFIX" >"$log" 2>&1; rc=$?
        unset ONLY
        tail -n 1 "$log" ;;
    plugins)
        # The plugin ABI tests (plain C reference host, no liblorakit): the host, its thread pool, the test
        # harness (forward from two threads on one instance) and the C plugins (IA³, the guide's shift, the
        # bad ones) built with the sanitizer; DoRA (a Swift package) is the ordinary build from make plugins.
        P="$ROOT/$SCRATCH/plugins"
        mkdir -p "$P"
        if [ "$MODE" = address ]; then CSAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"; else CSAN="-fsanitize=thread $TSAN_LIBS"; fi
        make --no-print-directory plugins >"$LOGS/plugins-build.log" 2>&1 && cp .build/plugins/dora.so "$P/dora.so" &&
            $CLANG $CSAN -std=c11 -O1 -g -fPIC -shared -fvisibility=hidden -I"$ROOT/Include" -o "$P/ia3.so" examples/plugins/ia3/ia3.c -lm \
            || { echo "plugin build failed"; tail "$LOGS/plugins-build.log"; status=1; continue; }
        CC="$CLANG $CSAN -Wno-unused-command-line-argument -Wl,-rpath,$(dirname "$RUNTIME")" bash Tests/plugins/run.sh "$P" >"$log" 2>&1; rc=$?
        tail -n 1 "$log" ;;
    python)
        # python3 is not instrumented: the runtime is preloaded. Leak checking is off (see the header).
        # The CLI the tests start carries its own (static) runtime: a wrapper drops the preload for it.
        if [ "$MODE" = address ]; then PYSAN="ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:verify_asan_link_order=0"; else PYSAN="TSAN_OPTIONS=$TSAN_OPTIONS"; fi
        printf '#!/bin/sh\nunset LD_PRELOAD\nexec "%s" "$@"\n' "$BIN/lorakit-cli" >"$SCRATCH/lorakit-cli-wrapper"
        chmod +x "$SCRATCH/lorakit-cli-wrapper"
        env LD_PRELOAD="$PRELOAD" "$PYSAN" LORAKIT_LIBRARY="$BIN/liblorakit.so" LORAKIT_CLI="$ROOT/$SCRATCH/lorakit-cli-wrapper" \
            "$PY" -m pytest -q -p no:cacheprovider ${SANITIZE_PYTHON_FILTER:+-k "$SANITIZE_PYTHON_FILTER"} bindings/python/tests >"$log" 2>&1; rc=$?
        tail -n 1 "$log" ;;
    soak)
        # Tests/soak/soak.py for SOAK_SECONDS (default 60) on the tiny GGUF fixture (SOAK_MODEL to change),
        # python3 uninstrumented with the runtime preloaded, as for the python suite.
        if [ "$MODE" = address ]; then PYSAN="ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:verify_asan_link_order=0"; else PYSAN="TSAN_OPTIONS=$TSAN_OPTIONS"; fi
        env LD_PRELOAD="$PRELOAD" "$PYSAN" LORAKIT_LIBRARY="$BIN/liblorakit.so" LORAKIT_MODEL="${SOAK_MODEL:-}" \
            "$PY" Tests/soak/soak.py --seconds "${SOAK_SECONDS:-60}" >"$log" 2>&1; rc=$?
        tail -n 1 "$log" ;;
    *) echo "sanitize.sh: unknown suite $suite" >&2; status=1; continue ;;
    esac
    summary "$suite" "$rc" "$log" "$t"
done
exit $status
