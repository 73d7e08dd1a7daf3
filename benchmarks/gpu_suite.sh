#!/usr/bin/env bash
# One command on a lent GPU machine: build the extension against the machine's torch, run the
# acceptance checks of the main job (benchmarks/gpu_acceptance.py: train.py under deepspeed,
# resume, the attack's CUDA graphs, no sync in a steady-state step, evaluate), then the GPU
# tests (Triton kernels compiled for real, CUDA dispatch vs the CPU kernels) and every
# benchmark; logs and JSON go to $OUT when set (the device tool), else benchmarks/results/.
# The acceptance verdict table is printed again at the very end.
#
#   bash benchmarks/gpu_wheels.sh      # here, where PyPI is reachable: deepspeed & co. into .whl/
#   bash benchmarks/gpu_suite.sh       # there, with .whl/ carried
#
# Packages the machine lacks travel as wheels in the git-ignored .whl/ folder (deepspeed and
# its missing requirements; DALI is too big: without it the DALI data backends are skipped, and
# said so). The set-up (wheels, the extension build) comes first, outside the budgets; then the
# acceptance checks take up to ${FNF_ACCEPT_BUDGET:-330} s, and the benchmarks share what is left
# of a ${FNF_SUITE_BUDGET:-540} s budget counted from the end of the set-up; one that runs out is
# stopped and keeps the rows it measured (complete=false).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
export OUT=${OUT:-benchmarks/results/cuda}
BUDGET=${FNF_SUITE_BUDGET:-540}
ACCEPT_BUDGET=${FNF_ACCEPT_BUDGET:-330}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
status=0
step() { echo "== $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; [ $rc -eq 0 ] || status=$rc; return $rc; }
# bench KEEP cmd...: a test run or benchmark under the suite's time left, keeping KEEP seconds for
# later ones; skipped (and said so) when under 30 s would be left for it
bench() {
  local keep=$1; shift
  local left=$(( BUDGET - SECONDS - keep ))
  [ $left -ge 30 ] || left=$(( BUDGET - SECONDS ))
  if [ $left -lt 30 ]; then echo "== skipped (suite budget ${BUDGET}s spent): $*" | tee -a "$LOG"; return 0; fi
  step timeout "$left" "$@"
  [ $? -ne 124 ] || echo "== stopped after ${left}s (suite budget ${BUDGET}s): its JSON keeps the rows measured" | tee -a "$LOG"
}

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
$PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null | tee -a "$LOG" \
  || echo "deepspeed not installed (put its wheel in .whl/): the step benchmarks do not need it" | tee -a "$LOG"
$PY -c "import nvidia.dali; print('DALI', nvidia.dali.__version__)" 2>/dev/null | tee -a "$LOG" \
  || echo "DALI not installed: dali-gpu/dali-cpu data benchmarks skipped" | tee -a "$LOG"
step $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . || { echo "build failed"; exit 1; }
echo "== set-up took ${SECONDS}s (wheels, build): the budgets start now" | tee -a "$LOG"
SECONDS=0  # the budgets count from here
step $PY benchmarks/gpu_acceptance.py --budget "$ACCEPT_BUDGET" --work /tmp/fnf-acceptance
# what is left of the budget: the GPU tests, then the benchmarks
bench 240 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_ops_ws.py tests/test_ops_ws_grouped.py tests/test_ops_pgd.py tests/test_std_conv.py tests/test_grouped.py
bench 200 $PY -m pytest -q -p no:cacheprovider tests/test_models.py
bench 180 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_attacks.py
bench 150 $PY benchmarks/bench_kernels.py
bench 120 $PY benchmarks/bench_attack.py --compile reduce-overhead
bench 100 $PY benchmarks/bench_data.py --workers 8 --epochs 2
# training steps at 224, batch 128: ours (bf16, CUDA-graph attack step) vs the official step (official.py), then
# nf_resnet50, then ours minus each optimization (eager: each compiled variant would compile anew)
# host cost of a launch-bound step (nf_resnet50 w0.25, batch 1): ops, reads, and a steady-state
# step of ours under torch.cuda.set_sync_debug_mode("error")
bench 80 $PY benchmarks/bench_overhead.py --device cuda
# the GPU goals: nf_resnet50 at 224, batch 128, K=0 and 10: ours-full (bf16, channels_last, attack step
# in CUDA graphs, training forward/backward compiled) and ours-sequential (memory) vs the official step
bench 40 $PY benchmarks/bench_step.py --device cuda --model nf_resnet50 --compile --engines ours-full,ours-sequential,official --ks 0,10
bench 0 $PY benchmarks/bench_step.py --device cuda --model nf_resnet26 --compile --engines ours,official,naive-attack,no-compile
awk '/^== verdict/ {on = 1; print; next} on && /^== / {on = 0} on' "$LOG"  # the acceptance verdict, last
echo "gpu_suite finished with status $status in ${SECONDS}s" | tee -a "$LOG"
exit $status
