#!/usr/bin/env bash
# One command on a lent GPU machine: build the extension against the machine's torch, run the
# GPU tests (Triton kernels compiled for real, CUDA dispatch vs the CPU kernels) and every
# benchmark; logs and JSON go to $OUT when set (the device tool), else benchmarks/results/.
#
#   bash benchmarks/gpu_suite.sh
#
# Packages the machine lacks can travel as wheels in the git-ignored .whl/ folder.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/cuda}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
status=0
step() { echo "== $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; [ $rc -eq 0 ] || status=$rc; return $rc; }

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/fnf-site .whl/*.whl && export PYTHONPATH=/tmp/fnf-site:${PYTHONPATH:-}
fi
# Use the compiler that matches the system libstdc++: the GPU image exports CXX=/opt/gcc/bin/g++,
# a newer gcc whose module crashes on its first error message (see README, Install).
# FNF_CXX overrides.
if [ -n "${FNF_CXX:-}" ]; then export CXX=$FNF_CXX; elif [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
echo "compiler: ${CXX:-$(command -v c++)}" | tee -a "$LOG"
step nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
step $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . || { echo "build failed"; exit 1; }
step $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_ops_ws.py tests/test_ops_pgd.py tests/test_std_conv.py
step $PY -m pytest -q -p no:cacheprovider tests/test_models.py
step $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_attacks.py
OUT="$OUT" step $PY benchmarks/bench_kernels.py
OUT="$OUT" step $PY benchmarks/bench_attack.py --compile reduce-overhead
echo "gpu_suite finished with status $status" | tee -a "$LOG"
exit $status
