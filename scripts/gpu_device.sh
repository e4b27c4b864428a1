#!/usr/bin/env bash
# Steps run ON the GPU machine of the device tool, from the repo root, one step per call (see
# docs/gpu_baseline.md). Everything lives under /tmp, which survives between calls only while the
# machine stays warm; each `run` therefore ends by packing its run directory into $OUT, and a cold
# machine resumes from that pack when it is carried back in .gpu-runs/.
#   setup                      install .whl/'s wheels, keep the first halves of split ones, print
#                              the machine, torch and what the harness can run there
#   join                       join the halves carried in .whl2/, check them, install them
#   run SUITE PROFILE [ARGS]   run (or resume) SUITE's PROFILE (- for none) for at most BUDGET_S
#                              seconds, then pack the run directory into $OUT/<suite>-<profile>.tgz
set -euo pipefail
SITE=/tmp/site STASH=/tmp/wh RUNS=/tmp/harness-runs
export PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD"  # --target skips .pth files
PY=${PY:-python3}
OUT=${OUT:-/tmp/out}
install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
              --target "$SITE" "$@"; }

case "${1:-}" in
  setup)
    mkdir -p "$SITE" "$STASH"
    cp .whl/*.part1 "$STASH"/ 2>/dev/null || true
    install .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
    "$PY" -m harness list ;;
  join)
    for part2 in .whl2/*.part2; do
      name=$(basename "$part2" .part2)
      cat "$STASH/$name.part1" "$part2" > "$STASH/$name"
      echo "$(cat ".whl2/$name.sha256")  $STASH/$name" | sha256sum -c -
      install "$STASH/$name"
    done
    "$PY" -m harness list ;;
  run)
    suite=$2 profile=$3; shift 3
    tag="$(basename "$suite" .yaml)-$profile" profile_args=(--profile "$profile")
    [ "$profile" = - ] && profile_args=()  # a suite's default (CPU) sweep, for trying the steps
    if [ ! -d "$RUNS/$tag" ] && [ -f ".gpu-runs/$tag.tgz" ]; then
      mkdir -p "$RUNS" && tar xzf ".gpu-runs/$tag.tgz" -C "$RUNS"
    fi
    resume=()
    previous=$(ls -d "$RUNS/$tag"/*/ 2>/dev/null | head -1 || true)
    [ -n "$previous" ] && resume=(--resume "$previous")
    status=0
    timeout -s INT "${BUDGET_S:-480}" "$PY" -m harness run "$suite" "${profile_args[@]}" \
      --out "$RUNS/$tag" --no-report "${resume[@]}" "$@" || status=$?
    pkill -f multiprocessing.spawn || true  # workers of a run cut short must not hold the GPU
    mkdir -p "$OUT" && tar czf "$OUT/$tag.tgz" -C "$RUNS" "$tag"
    [ "$status" = 124 ] && echo "cut at BUDGET_S=${BUDGET_S:-480}s: run this step again to resume"
    echo "packed $OUT/$tag.tgz" ;;
  *)
    echo "usage: $0 setup | join | run SUITE PROFILE [harness run args]" >&2; exit 2 ;;
esac
