#!/usr/bin/env bash
# Decode speed of two lorakit builds side by side, interleaved (BENCHMARKS.md "Decode, round 3"):
#   bench/ab_decode.sh OLD_CLI NEW_CLI [MODEL] > ab.log
# 1. per-token decode profiles (128 tokens after a 128-token prompt), native qdot path and LORAKIT_QDOT=avx2,
#    1 and 2 threads, each build twice;
# 2. decode after P = 1024, 2048, 4096 prompt tokens, f32 and f16 KV caches, 1 and 2 threads;
# 3. `bench batch` (8 sequences, 8 adapters), twice each.
# Not a test: it prints the raw `lorakit bench` output, one "== case" header per run.
set -euo pipefail
OLD=${1:?usage: ab_decode.sh OLD_CLI NEW_CLI [MODEL]}
NEW=${2:?usage: ab_decode.sh OLD_CLI NEW_CLI [MODEL]}
M=${3:-$(cat "$(dirname "$0")/../.build/model-path")}
echo "start $(date -u +%FT%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for path in native avx2; do
  for t in 1 2; do
    for i in 1 2; do
      for b in OLD NEW; do
        if [ "$path" = avx2 ]; then export LORAKIT_QDOT=avx2; else unset LORAKIT_QDOT; fi
        echo "== profile $path t=$t $b run $i"
        "${!b}" bench generate --model "$M" --prompt-tokens 128 --gen-tokens 128 --repeats 3 --threads "$t" --profile 2>&1 | tail -15
      done
    done
  done
done
unset LORAKIT_QDOT
for P in 1024 2048 4096; do
  for t in 1 2; do
    for kv in f32 f16; do
      for b in OLD NEW; do
        echo "== ctx P=$P t=$t kv=$kv $b"
        "${!b}" bench generate --model "$M" --prompt-tokens "$P" --gen-tokens 32 --repeats 2 --threads "$t" --kv-type "$kv" 2>&1 | tail -1
      done
    done
  done
done
for i in 1 2; do
  for b in OLD NEW; do
    echo "== batch $b run $i"
    "${!b}" bench batch --model "$M" --sequences 8 --rank 8 --targets q,v --prompt 64 --decode 32 --rounds 5 --threads 2 2>&1 | tail -7
  done
done
echo "end $(date -u +%FT%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
