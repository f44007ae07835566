#!/usr/bin/env bash
# Build the fuzz targets (make fuzz-build): the whole package with libFuzzer's coverage instrumentation and
# AddressSanitizer, in release mode (-O keeps Swift's overflow and bounds checks; 10-50x faster than a
# debug build), into .build-fuzz. Targets are declared by Package.swift only when LORAKIT_FUZZ=1.
# Notes: -sanitize=fuzzer,address must be ONE flag (SwiftPM's --sanitize=fuzzer --sanitize=address passes
# two, and the second replaces the first: no coverage); SwiftPM links executables with its own `main`, so
# each target's main.swift calls libFuzzer's LLVMFuzzerRunDriver (Fuzz/Sources/FuzzDriver); gold crashes
# on these links (internal error in format_file_lineno), lld works.
#   bash Fuzz/build.sh [TARGET…]      (default: all)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p .build-fuzz
ALL="gguf-model gguf-lora safetensors hf-config peft jsonl tokenizer tokenizer-json templates"
for t in ${*:-$ALL}; do
    if ! LORAKIT_FUZZ=1 swift build -c release --scratch-path .build-fuzz \
        -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address -Xswiftc -use-ld=lld \
        --product "fuzz-$t" >.build-fuzz/build.log 2>&1; then
        grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Write|Emitting)' .build-fuzz/build.log | tail -n 40 >&2
        echo "fuzz build: fuzz-$t failed" >&2
        exit 1
    fi
    tail -n 1 .build-fuzz/build.log
done
