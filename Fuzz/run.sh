#!/usr/bin/env bash
# Run one fuzz target (built by `make fuzz-build` into .build-fuzz).
#   bash Fuzz/run.sh TARGET SECONDS [libFuzzer flags…]     (make fuzz TARGET=… SECONDS=…)
#   bash Fuzz/run.sh TARGET replay                          (run the seeds and regressions once; make fuzz-smoke)
# The working corpus is .build-fuzz/corpus/TARGET (new inputs go there), read together with the committed
# seeds Fuzz/corpus/TARGET and the committed crash reproducers Fuzz/regressions/TARGET; findings (crash-,
# timeout-, leak-, oom- files, and slow-unit- ones, which are not counted as findings) are written to
# .build-fuzz/findings/TARGET/ (not .build-fuzz/artifacts: SwiftPM owns and empties that folder); the log
# to .build-fuzz/logs/TARGET.log.
# The run ends with its summary:
#   "fuzz TARGET: N executions in S s (E exec/s), cov: E ft: F, corpus C new inputs / B bytes (libFuzzer's
#    corpus N/B), findings F, load L"
# (cov: coverage edges reached, ft: libFuzzer's features; corpus: the inputs in the working corpus, and
# libFuzzer's in-memory corpus with the seeds, count/bytes; S is libFuzzer's count, or the wall-clock time
# when the run stopped at a finding; load: the 1/5/15-minute load averages at the end), followed by the
# new findings' paths.
# Exit status: 0 when the run ended without a finding.
set -u
TARGET=${1:?usage: run.sh TARGET SECONDS|replay [libFuzzer flags]}
SECS=${2:?usage: run.sh TARGET SECONDS|replay [libFuzzer flags]}
shift 2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.build-fuzz/release/fuzz-$TARGET"
[ -x "$BIN" ] || { echo "run.sh: $BIN is missing: make fuzz-build first" >&2; exit 2; }
SEEDS="$ROOT/Fuzz/corpus/$TARGET"
REGR="$ROOT/Fuzz/regressions/$TARGET"
WORK="$ROOT/.build-fuzz/corpus/$TARGET"
ART="$ROOT/.build-fuzz/findings/$TARGET"
LOGS="$ROOT/.build-fuzz/logs"
mkdir -p "$WORK" "$ART" "$LOGS"
export LORAKIT_ROOT="$ROOT"
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
# The tokenizer target also fuzzes SmolLM2's tokenizer when the real model is cached.
if [ -z "${LORAKIT_MODEL:-}" ] && [ -s "$ROOT/.build/model-path" ]; then export LORAKIT_MODEL=$(cat "$ROOT/.build/model-path"); fi
# Leaks are findings (Fuzz/lsan.supp: what is not, and why); malloc_context_size=64: allocation stacks deep
# enough for the suppressions' frames (a template parse under chatFormatter is 30+ frames deep).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1:malloc_context_size=64}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/Fuzz/lsan.supp:print_suppressions=0}

dirs=("$WORK" "$SEEDS")
[ -d "$REGR" ] && dirs+=("$REGR")

if [ "$SECS" = replay ]; then
    # Each seed and reproducer once (libFuzzer runs the files it is given and exits).
    files=()
    for d in "$SEEDS" "$REGR"; do [ -d "$d" ] && for f in "$d"/*; do [ -f "$f" ] && files+=("$f"); done; done
    start=$(date +%s%N)
    if "$BIN" -rss_limit_mb=4096 -timeout=60 "$@" "${files[@]}" >"$LOGS/$TARGET-replay.log" 2>&1; then
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        echo "fuzz $TARGET: replayed ${#files[@]} inputs in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s, no finding"
    else
        tail -n 40 "$LOGS/$TARGET-replay.log"
        echo "fuzz $TARGET: replay FAILED (log: $LOGS/$TARGET-replay.log)"
        exit 1
    fi
    exit 0
fi

DICT="$ROOT/Fuzz/dict/$TARGET.dict"
LOG="$LOGS/$TARGET.log"
# findings: the crash-/timeout-/leak-/oom- files in $ART (slow-unit- files are reports, not findings).
findings() { find "$ART" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \) | sort; }
findings >"$LOGS/$TARGET.findings-before"
before=$(wc -l <"$LOGS/$TARGET.findings-before")
start=$(date +%s)
"$BIN" -max_total_time="$SECS" -timeout=${FUZZ_TIMEOUT:-20} -rss_limit_mb=${FUZZ_RSS_MB:-3072} -malloc_limit_mb=${FUZZ_RSS_MB:-3072} \
    -dict="$DICT" -artifact_prefix="$ART/" -print_final_stats=1 -reload=0 "$@" "${dirs[@]}" >"$LOG" 2>&1
rc=$?
wall=$(( $(date +%s) - start ))
findings >"$LOGS/$TARGET.findings-after"
after=$(wc -l <"$LOGS/$TARGET.findings-after")
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG" | tail -n 1)
secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$LOG" | tail -n 1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$LOG" | tail -n 1)
cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$LOG" | tail -n 1)
n=$(find "$WORK" -type f | wc -l)
bytes=$(find "$WORK" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
    grep -E "ERROR:|SUMMARY:|FUZZ PROPERTY|Fatal error|Test unit written|deadly signal|timeout|leak" "$LOG" | head -n 20
fi
load=$(cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null | tr ' ' / || echo '?')
corp=$(grep -oE 'corp: [0-9]+/[0-9]+[A-Za-z]*' "$LOG" | tail -n 1 | sed 's/^corp: //')
if [ -z "$secs" ]; then secs=$wall; fi
if [ -z "$rate" ] && [ -n "$execs" ] && [ "$secs" -gt 0 ]; then rate=$(( execs / secs )); fi
echo "fuzz $TARGET: ${execs:-?} executions in ${secs:-?} s (${rate:-?} exec/s), ${cov:-cov: ?}, corpus $n new inputs / $bytes bytes (libFuzzer's corpus ${corp:-?}), findings $((after - before)), load $load (log: $LOG)"
comm -13 "$LOGS/$TARGET.findings-before" "$LOGS/$TARGET.findings-after" | sed 's/^/  finding: /'
[ "$rc" -eq 0 ] && [ "$after" -eq "$before" ]
