#!/usr/bin/env bash
# Create .venv and install matloop with everything its tests need.
# torch goes first, as the CPU build: a bare `torch` requirement would pull a multi-GB CUDA
# build. Versions are pinned by requirements/constraints.txt so every machine gets the same.
set -euo pipefail
cd "$(dirname "$0")/.."
# From Debian, when we can: CP2K (the DFT verification stage and its test) and Chromium
# (rendering the HTML report and the Prefect UI in headless screenshots).
missing=()
command -v cp2k.psmp >/dev/null || command -v cp2k >/dev/null || missing+=(cp2k cp2k-data)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
    >/dev/null 2>&1 || echo "setup.sh: could not install ${missing[*]}" >&2
fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" \
  2>/dev/null || python -m pip install -q "torch==$TORCH_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -c requirements/constraints.txt -e ".[test,cluster,sevennet,mp,bench]" 2>&1 \
  | grep -v -e "^WARNING: Location" -e "yanked" || true
python -c "import matloop, torch, chgnet, prefect" \
  || { echo "setup.sh: the install did not complete" >&2; exit 1; }
