#!/usr/bin/env bash
# Issue 18's GPU baseline as two device-tool calls, back to back (docs/gpu_baseline.md):
#   call 1 (carry .whl):  setup, the machine's facts, the fused backends of gpu_backends'
#                         gpu-quick, the CUDA timing tests, then long_ctx's gpu-slice
#   call 2 (carry .whl2): join FlashAttention-4's wheel, its rows and flex's, our timer against
#                         triton's do_bench, every implementation's CUDA test, then whatever
#                         call 1 left of both runs (each run resumes where it was cut)
# Every step has its own budget inside the call's deadline (CALL_S, the call's timeout_s), logs
# to $OUT/callN.log and packs its run into $OUT as it ends, so a call cut short still brings
# back every finished row. A step that fails is logged and the next one runs.
# Usage, on the device from the repo root: CALL_S=<timeout_s> bash scripts/gpu_baseline.sh 1|2
set -u
cd "$(dirname "$0")/.."
call=${1:?usage: CALL_S=SECONDS $0 1|2}
OUT=${OUT:-/tmp/out}
export OUT
mkdir -p "$OUT"
# 60 s after the last step's budget: a runner stopped by SIGINT may take up to 30 s to end its
# workers (gpu_device.sh), then the pack and the hand-back
deadline=$(($(date +%s) + ${CALL_S:-300} - 60))
# the paths gpu_device.sh installs into, for the steps that do not go through it
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD"
export LD_LIBRARY_PATH="/tmp/cudart12${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec > >(tee -a "$OUT/call$call.log") 2>&1

gpu_state() {  # clocks, power and memory in use: a far-off number is first checked against these
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,memory.used \
    --format=csv,noheader 2>/dev/null | sed 's/^/   gpu: /'
}

step() {  # NAME MAX_S CMD...: at most MAX_S seconds, never past the deadline
  local name=$1 max=$2 left budget rc
  shift 2
  left=$((deadline - $(date +%s)))
  budget=$((left < max ? left : max))
  if [ "$budget" -lt 20 ]; then
    echo "== $name: not run, ${left}s left in the call"
    return
  fi
  echo "== $name: budget ${budget}s, $(date +%T)"
  # BUDGET_S is gpu_device.sh's own limit (SIGINT, so the runner stops its workers and keeps its
  # rows); the outer timeout only catches a step that hangs past it
  BUDGET_S=$budget timeout -k 10 $((budget + 40)) "$@"
  rc=$?
  echo "== $name: exit $rc, $(date +%T)"
  gpu_state
}

run=(bash scripts/gpu_device.sh run)  # SUITE PROFILE [harness run args]
fused=(--impl sdpa_flash --impl sdpa_cudnn --impl xformers --impl flash_attn2 --impl flash_attn3)
case "$call" in
  1)
    step setup 150 bash scripts/gpu_device.sh setup
    step machine 30 bash -c 'nvidia-smi; nvidia-smi -q -d CLOCK,POWER,PERFORMANCE | head -80
      python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda,
        torch.backends.cudnn.version(), triton.__version__, torch.cuda.get_device_name())"'
    step backends 200 "${run[@]}" suites/gpu_backends.yaml gpu-quick "${fused[@]}" --fail-on none
    step timing-tests 60 python3 -m pytest -q -p no:cacheprovider -m gpu \
      tests/unit/test_timing_cuda_fake.py
    step long_ctx 600 "${run[@]}" suites/long_ctx.yaml gpu-slice --fail-on none
    ;;
  2)
    step join 120 bash scripts/gpu_device.sh join
    step backends-fa4-flex 240 "${run[@]}" suites/gpu_backends.yaml gpu-quick \
      --impl flash_attn4 --impl flex --fail-on none
    step timer-crosscheck 60 python3 benchmarks/timer_crosscheck.py --device cuda --rounds 2
    step cuda-tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu -rs --durations=8 \
      tests/unit/test_cuda_correctness.py tests/unit/test_flex.py
    step long_ctx 600 "${run[@]}" suites/long_ctx.yaml gpu-slice --fail-on none
    step backends 600 "${run[@]}" suites/gpu_backends.yaml gpu-quick --fail-on none
    ;;
  *)
    echo "usage: CALL_S=SECONDS $0 1|2" >&2
    exit 2
    ;;
esac
ls -la "$OUT"
