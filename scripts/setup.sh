#!/usr/bin/env bash
# Install what building and testing LoRAKit needs on Debian/Ubuntu (run as root or with sudo):
# a C compiler, make, pkg-config, libffi (the C ABI sweep, Tests/abi), and the Python packages of the
# binding tests (and the openai client for the server tests). Swift 6.x must already
# be on PATH (https://swift.org/install). Idempotent: installs only what is missing.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v make >/dev/null || need_apt+=(make)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
pkg-config --exists libffi 2>/dev/null || need_apt+=(libffi-dev)
command -v unzip >/dev/null || true
if [ ${#need_apt[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
PY="${PYTHON:-python3}"
missing=()
for mod in pytest numpy openai; do  # openai: the client of the `lorakit serve` tests
    "$PY" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install --quiet "${missing[@]}"
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH" >&2; exit 1; }
echo "setup: ok ($(swift --version 2>/dev/null | head -n1))"
