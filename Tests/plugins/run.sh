#!/usr/bin/env bash
# Build the shipped C plugin, the deliberately bad plugins and the reference-host test, then run it.
#   bash Tests/plugins/run.sh OUT_DIR [DORA_SO]
# OUT_DIR receives ia3.so, bad_*.so and test_plugins; DORA_SO (the Swift DoRA plugin, built by
# `make plugins`) is copied to OUT_DIR/dora.so. Plain C: no liblorakit, no Swift.
set -eu
OUT=${1:?usage: run.sh OUT_DIR [DORA_SO]}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${CC:-cc}
mkdir -p "$OUT"
PFLAGS="-std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -fvisibility=hidden -I$ROOT/Include"
"$CC" $PFLAGS -o "$OUT/ia3.so" "$ROOT/examples/plugins/ia3/ia3.c" -lm
for v in major nosymbol short entry_error dup_type dup_within no_forward name type_short; do
    "$CC" $PFLAGS -DBAD_$(echo "$v" | tr a-z A-Z) -o "$OUT/bad_$v.so" "$HERE/bad_plugin.c"
done
if [ -n "${2:-}" ]; then cp "$2" "$OUT/dora.so"; fi
"$CC" -std=c11 -Wall -Wextra -Werror -O1 -g -I"$ROOT/Include" -o "$OUT/test_plugins" \
    "$HERE/test_plugins.c" "$HERE/ref_host.c" -ldl -lpthread -lm
"$OUT/test_plugins" "$OUT" "$ROOT/Tests/LoRAKitTests/Fixtures/plugins"
