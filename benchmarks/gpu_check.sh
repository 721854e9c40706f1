#!/usr/bin/env bash
# One-command GPU check of the batched relaxer (issue #15), for a machine with an NVIDIA GPU,
# Python 3.12 and a CUDA torch already installed, and no network. Finishes in < 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [options of benchmarks/gpu_check.py]
#
# 1. Installs the other runtime wheels the check needs (requirements/gpu-check.txt) from DIR
#    (default: wheels/ in the checkout) into .gpu-check-site/, beside the system's torch.
#    Prepare DIR once, on any machine with network:
#      pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#        --platform manylinux2014_x86_64 -r requirements/gpu-check.txt -d wheels
#    Without DIR the current Python is used as it is (as the CPU test does).
# 2. Runs benchmarks/gpu_check.py: 64 crystals on bare CHGNet and on the batched relaxer,
#    then 1,024 on the batched relaxer; writes benchmarks/results/gpu_check.json.
#    The crystals come from known_crystals_mp.csv.gz in the shared data folder
#    (../shared/data beside the checkout, or --shared-data DIR, or MATLOOP_SHARED_DATA).
#
# Test run on a CPU, in seconds:  bash benchmarks/gpu_check.sh --device cpu --small
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
wheels=wheels
if [[ "${1:-}" == "--wheels" ]]; then
  wheels=$2
  shift 2
fi
python=${PYTHON:-python3}
site=""
if [[ -d "$wheels" ]]; then
  site=$PWD/.gpu-check-site
  echo "installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site"
  "$python" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "$wheels"/*.whl
  # chgnet imports nvidia_smi, whose package (nvidia-ml-py3) has no wheel: the same NVML
  # functions come from pynvml (nvidia-ml-py's wheel)
  if ! PYTHONPATH="$site" "$python" -c "import nvidia_smi" 2>/dev/null; then
    echo "from pynvml import *  # noqa: F403  (gpu_check.sh: stands in for nvidia-ml-py3)" \
      > "$site/nvidia_smi.py"
  fi
else
  echo "no wheel folder $wheels: running with $python as it is"
fi
export PYTHONPATH="$PWD/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export DO_NOT_TRACK=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
left=$((480 - (SECONDS - start)))
exec timeout "$left" "$python" benchmarks/gpu_check.py "$@"
