#!/usr/bin/env bash
# Build and run every example briefly (`make examples`; `make test` and so CI run it), so they cannot rot:
#   bash examples/run.sh PREFIX BUILD_DIR MODEL
# PREFIX: a `make install` prefix (the C examples build against it with pkg-config, as a user's program
# would); BUILD_DIR: the release build folder (liblorakit.so, lorakit-cli); MODEL: SmolLM2-135M-Instruct
# GGUF (empty: the examples that need it are skipped, loudly).
#   - C: examples/c/{stream,train,adapters}.c, compiled with `cc $(pkg-config --cflags --libs lorakit)`,
#     then run again with the Swift toolchain's library folder hidden from the loader (a private mount
#     namespace with an empty folder over it), as on a machine without Swift;
#   - Python: examples/python/*.py through the checkout's binding;
#   - packaging: `pip install ./bindings/python` and the wheel of `make wheel` into new virtualenvs, then
#     `import lorakit` and `python -m lorakit` with no LORAKIT_* variable (toolchain hidden too);
#   - Swift: examples/swift, a separate SwiftPM package that depends on LoRAKit by path;
#   - the demo (examples/demo/demo.py --quick: a few steps, every stage).
# Prints one line per check and ends with "N passed, M failed, K skipped"; exit status 1 on a failure.
set -uo pipefail
PREFIX=$(cd "${1:?usage: run.sh PREFIX BUILD_DIR MODEL}" && pwd)
BUILD_DIR=$(cd "${2:?usage: run.sh PREFIX BUILD_DIR MODEL}" && pwd)
MODEL=${3:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-cc}
OUT="$ROOT/.build/examples-run"
rm -rf "$OUT"
mkdir -p "$OUT"
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
passed=0; failed=0; skipped=0

# check NAME COMMAND...: run it (output indented, kept in $OUT/NAME.log), count it.
check() {
    local name=$1; shift
    echo "== $name"
    local t0=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    sed 's/^/   /' "$OUT/$name.log" | tail -n 40
    if [ $rc -eq 0 ]; then
        echo "  ok   $name ($((SECONDS - t0)) s)"; passed=$((passed + 1))
    else
        echo "  FAIL $name (exit status $rc)"; failed=$((failed + 1))
    fi
}
skip() { echo "== $1"; echo "  skip $1: $2"; skipped=$((skipped + 1)); }

# The folder the build's Swift runtime comes from (the toolchain), found the way the loader finds it.
TOOLCHAIN_LIBS=$(ldd "$BUILD_DIR/liblorakit.so" | awk '$1 == "libswiftCore.so" {print $3}' | xargs -r dirname)
# hidden CMD...: run CMD in a private mount namespace where the toolchain's library folder is empty.
hidden() {
    unshare -m --propagation private -- bash -c 'mount -t tmpfs lorakit-hidden "$0" && exec "$@"' "$TOOLCHAIN_LIBS" "$@"
}
can_hide=0
if [ -n "$TOOLCHAIN_LIBS" ] && case "$TOOLCHAIN_LIBS" in "$PREFIX"*) false ;; *) true ;; esac \
    && hidden true 2>/dev/null; then
    can_hide=1
fi
# The loader finds no Swift runtime but the installed copy: every libswift* resolves under PREFIX.
runtime_from_prefix() {
    local lddout
    lddout=$(hidden ldd "$@") || return 1
    echo "$lddout" | grep -E 'libswift|libdispatch|libBlocksRuntime|libFoundation'
    ! echo "$lddout" | grep -E 'libswift|libdispatch|libBlocksRuntime|libFoundation' | grep -v "$PREFIX" | grep -q .
}

# ---- C, against the installed prefix ------------------------------------------------------------------
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
for ex in stream train adapters; do
    # shellcheck disable=SC2046  # pkg-config prints a list of flags
    check "c-build-$ex" "$CC" -std=c11 -Wall -Wextra -Werror -O1 -o "$OUT/$ex" "$ROOT/examples/c/$ex.c" \
        $(pkg-config --cflags --libs lorakit) -lm
done
if [ -z "$MODEL" ]; then
    skip c-run "no model (make model failed?)"
else
    check c-stream "$OUT/stream" "$MODEL"
    check c-train "$OUT/train" "$MODEL" "$ROOT/examples/demo/data/train.jsonl" "$ROOT/examples/demo/data/valid.jsonl" 3 "$OUT/c-train"
    check c-adapters "$OUT/adapters" "$MODEL" "$OUT/c-adapters"
    rm -f "$OUT/c-adapters/merged.gguf"
fi
if [ $can_hide -eq 1 ]; then
    echo "(hiding $TOOLCHAIN_LIBS from the loader for the next checks)"
    check c-no-toolchain-runtime runtime_from_prefix "$OUT/stream" "$PREFIX/bin/lorakit"
    [ -n "$MODEL" ] && check c-no-toolchain-stream hidden "$OUT/stream" "$MODEL"
    check cli-no-toolchain hidden "$PREFIX/bin/lorakit" --version
else
    skip c-no-toolchain "cannot hide the toolchain's libraries here (unshare -m needs root; toolchain: ${TOOLCHAIN_LIBS:-none found})"
fi

# ---- Python, through the checkout's binding -------------------------------------------------------------
if [ -z "$MODEL" ]; then
    skip python-examples "no model"
else
    export LORAKIT_LIBRARY="$BUILD_DIR/liblorakit.so"
    cd "$OUT" || exit 1
    check py-stream "$PYTHON" "$ROOT/examples/python/stream.py" "$MODEL"
    check py-train "$PYTHON" "$ROOT/examples/python/train.py" "$MODEL" --steps 3 --out "$OUT/py-train"
    check py-adapters "$PYTHON" "$ROOT/examples/python/adapters.py" "$MODEL" --out "$OUT/py-adapters"
    rm -f "$OUT/py-adapters/merged.gguf"
    check py-hf-handoff "$PYTHON" "$ROOT/examples/python/hf_handoff.py" "$MODEL" --steps 1 --out "$OUT/py-handoff"
    rm -f "$OUT/py-handoff/merged.gguf"
    unset LORAKIT_LIBRARY
fi

# ---- Packaging: pip install into fresh virtualenvs, no variables -----------------------------------------
venv_check() {  # venv_check VENV: import lorakit and run the CLI with a clean environment, outside the checkout
    local py="$1/bin/python"
    (cd / && env -i HOME="$HOME" PATH=/usr/bin:/bin "$py" -c \
        'import lorakit, lorakit._lib as l; assert "/_native/" in l.path, l.path; print("import lorakit:", lorakit.version(), "from", l.path)') &&
    (cd / && env -i HOME="$HOME" PATH=/usr/bin:/bin "$py" -m lorakit --version) &&
    { [ -z "$MODEL" ] || (cd / && env -i HOME="$HOME" PATH="$1/bin:/usr/bin:/bin" lorakit generate --model "$MODEL" \
        --prompt "The capital of France is" --max-tokens 4 --temp 0 | grep -q Paris); }
}
pip_dir() {
    rm -rf "$OUT/venv-dir" && "$PYTHON" -m venv "$OUT/venv-dir" &&
    "$OUT/venv-dir/bin/pip" install --quiet --disable-pip-version-check "$ROOT/bindings/python" && venv_check "$OUT/venv-dir"
}
pip_wheel() {
    rm -rf "$OUT/dist" "$OUT/venv-wheel" &&
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$OUT/dist" "$ROOT/bindings/python" &&
    "$PYTHON" -m zipfile -l "$OUT"/dist/lorakit-*.whl | grep -E '_native/(lib/liblorakit.so|lib/lorakit-swift/libswiftCore.so|bin/lorakit)' &&
    "$PYTHON" -m venv "$OUT/venv-wheel" &&
    "$OUT/venv-wheel/bin/pip" install --quiet --disable-pip-version-check "$OUT"/dist/lorakit-*.whl && venv_check "$OUT/venv-wheel"
}
check pip-install-dir pip_dir
check pip-install-wheel pip_wheel
if [ $can_hide -eq 1 ] && [ -x "$OUT/venv-dir/bin/python" ]; then
    check pip-no-toolchain hidden bash -c "$(declare -f venv_check); MODEL='$MODEL' venv_check '$OUT/venv-dir'"
fi
rm -rf "$OUT/venv-dir" "$OUT/venv-wheel" "$OUT/dist"

# ---- Swift: a separate package that depends on LoRAKit by path -------------------------------------------
# SwiftPM does not notice that a path dependency's manifest changed (targets moved: "missing inputs"), so
# the scratch folder is rebuilt from nothing when LoRAKit's Package.swift differs from the one it was built for.
SWIFT_SCRATCH="$ROOT/.build/examples-swift"
if ! cmp -s "$ROOT/Package.swift" "$SWIFT_SCRATCH/.lorakit-Package.swift"; then
    rm -rf "$SWIFT_SCRATCH"; mkdir -p "$SWIFT_SCRATCH" && cp "$ROOT/Package.swift" "$SWIFT_SCRATCH/.lorakit-Package.swift"
fi
rm -f "$SWIFT_SCRATCH/release/lorakit-example"   # never run a binary left by an earlier build
check swift-build swift build -c release --package-path "$ROOT/examples/swift" --scratch-path "$SWIFT_SCRATCH"
if [ -z "$MODEL" ]; then
    skip swift-run "no model"
elif [ ! -x "$SWIFT_SCRATCH/release/lorakit-example" ]; then
    echo "== swift-run"; echo "  FAIL swift-run (not built)"; failed=$((failed + 1))
else
    check swift-run bash -c "cd '$ROOT' && '$SWIFT_SCRATCH/release/lorakit-example' '$MODEL' 4"
fi

# ---- The demo, short ---------------------------------------------------------------------------------------
if [ -z "$MODEL" ]; then
    skip demo-quick "no model"
else
    check demo-quick env LORAKIT_LIBRARY="$BUILD_DIR/liblorakit.so" "$PYTHON" "$ROOT/examples/demo/demo.py" --quick \
        --cli "$BUILD_DIR/lorakit-cli" --model "$MODEL" --out "$OUT/demo"
fi

[ "$skipped" -gt 0 ] && echo "($skipped skipped; see the skip lines above for the reasons)"
echo "examples: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
