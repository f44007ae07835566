#!/usr/bin/env bash
# Build the deliberately bad plugins and the reference-host test, then run it on the shipped plugins.
#   bash Tests/plugins/run.sh PLUGIN_DIR        (`make test-plugins`: PLUGIN_DIR = .build/plugins)
# PLUGIN_DIR must hold ia3.so and dora.so (`make plugins`); it receives bad_*.so, shift.so and test_plugins.
# Plain C: no liblorakit, no Swift. The last line is "N passed, M failed"; non-zero exit on a failure.
set -eu
OUT=${1:?usage: run.sh PLUGIN_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CC=${CC:-cc}  # may carry flags (scripts/sanitize.sh): used unquoted
# shellcheck disable=SC2086
mkdir -p "$OUT"
PFLAGS="-std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -fvisibility=hidden -I$ROOT/Include"
# The header alone: strict C99 and C++ (extern "C", no GNU extensions outside LKP_HAS_FIELD).
printf '#include "lorakit_plugin.h"\nint main(void) { return LKP_ABI_MAJOR - 1; }\n' > "$OUT/header_check.c"
$CC -std=c99 -Wall -Wextra -pedantic -Werror -I"$ROOT/Include" -fsyntax-only "$OUT/header_check.c"
if command -v "${CXX:-c++}" >/dev/null; then
    "${CXX:-c++}" -std=c++11 -Wall -Wextra -pedantic -Werror -I"$ROOT/Include" -fsyntax-only -x c++ "$OUT/header_check.c"
fi
for v in major nosymbol short entry_error dup_type dup_within no_forward name type_short; do
    $CC $PFLAGS -DBAD_$(echo "$v" | tr a-z A-Z) -o "$OUT/bad_$v.so" "$HERE/bad_plugin.c"
done
# The guide's minimal plugin (examples/plugins/minimal/shift.c) is tested too, so the guide stays true.
$CC $PFLAGS -o "$OUT/shift.so" "$ROOT/examples/plugins/minimal/shift.c"
$CC -std=c11 -Wall -Wextra -Werror -O1 -g -I"$ROOT/Include" -o "$OUT/test_plugins" \
    "$HERE/test_plugins.c" "$HERE/ref_host.c" -ldl -lpthread -lm
"$OUT/test_plugins" "$OUT" "$ROOT/Tests/LoRAKitTests/Fixtures/plugins"
