#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements (idempotent). Usage: scripts/setup.sh [dev]
# On a machine with an NVIDIA GPU (nvidia-smi answers) the app gets requirements-gpu.txt (adds FlashAttention-4).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
req=requirements.txt
if [ "${1:-}" = dev ]; then
  req=requirements-dev.txt
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  req=requirements-gpu.txt
fi
stamp=".venv/.installed-$(sha256sum "$req" requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r "$req"
  touch "$stamp"
fi
