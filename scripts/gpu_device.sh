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
cd "$(dirname "$0")/.."
# Where things go (the defaults suit the device; the tests point them elsewhere).
SITE=${SITE:-/tmp/site} STASH=${STASH:-/tmp/wh} RUNS=${RUNS:-/tmp/harness-runs}
WHL=${WHL:-.whl} WHL2=${WHL2:-.whl2} PACKS=${PACKS:-.gpu-runs} OUT=${OUT:-/tmp/out}
PY=${PY:-python3}
export PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD"  # --target skips .pth files
install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
              --target "$SITE" "$@"; }

case "${1:-}" in
  setup)
    mkdir -p "$SITE" "$STASH"
    shopt -s nullglob
    parts=("$WHL"/*.part1) wheels=("$WHL"/*.whl)
    [ ${#parts[@]} -gt 0 ] && cp "${parts[@]}" "$STASH"/
    [ ${#wheels[@]} -gt 0 ] && install "${wheels[@]}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
    "$PY" -m harness list ;;
  join)
    for part2 in "$WHL2"/*.part2; do
      name=$(basename "$part2" .part2)
      cat "$STASH/$name.part1" "$part2" > "$STASH/$name"
      echo "$(cat "$WHL2/$name.sha256")  $STASH/$name" | sha256sum -c -
      install "$STASH/$name"
    done
    "$PY" -m harness list ;;
  run)
    suite=$2 profile=$3; shift 3
    tag="$(basename "$suite" .yaml)-$profile" profile_args=(--profile "$profile")
    [ "$profile" = - ] && profile_args=()  # a suite's default (CPU) sweep, for trying the steps
    if [ ! -d "$RUNS/$tag" ] && [ -f "$PACKS/$tag.tgz" ]; then
      mkdir -p "$RUNS" && tar xzf "$PACKS/$tag.tgz" -C "$RUNS"
    fi
    resume=()
    previous=$(ls -d "$RUNS/$tag"/*/ 2>/dev/null | head -1 || true)
    [ -n "$previous" ] && resume=(--resume "$previous")
    status=0
    # SIGINT lets the runner's `finally` kill its workers (a run cut short must not leave them
    # holding the GPU); SIGKILL 30 s later only if it hangs.
    timeout -s INT -k 30 "${BUDGET_S:-480}" "$PY" -m harness run "$suite" "${profile_args[@]}" \
      --out "$RUNS/$tag" --no-report "${resume[@]}" "$@" || status=$?
    mkdir -p "$OUT" && tar czf "$OUT/$tag.tgz" -C "$RUNS" "$tag"
    [ "$status" = 124 ] && echo "cut at BUDGET_S=${BUDGET_S:-480}s: run this step again to resume"
    echo "packed $OUT/$tag.tgz" ;;
  *)
    echo "usage: $0 setup | join | run SUITE PROFILE [harness run args]" >&2; exit 2 ;;
esac
