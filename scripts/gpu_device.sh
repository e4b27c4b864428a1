#!/usr/bin/env bash
# Steps run ON the GPU machine of the device tool, from the repo root, one step per call (see
# docs/gpu_baseline.md). Everything lives under /tmp, which survives between calls only while the
# machine stays warm; each `run` therefore ends by packing its run directory into $OUT, and a cold
# machine resumes from that pack when it is carried back in .gpu-runs/.
#   setup                      stash and install .whl/'s wheels, keep the first parts of split ones,
#                              print the machine, torch and what the harness can run there
#   join                       join the parts carried in .whl2/, check them, install every wheel
#                              (on a machine gone cold: .whl2/'s whole wheels, and says what is lost)
#   run SUITE PROFILE [ARGS]   run (or resume) SUITE's PROFILE (- for none) for at most BUDGET_S
#                              seconds, then pack the run directory into $OUT/<suite>-<profile>.tgz
set -euo pipefail
cd "$(dirname "$0")/.."
# Where things go (the defaults suit the device; the tests point them elsewhere).
SITE=${SITE:-/tmp/site} STASH=${STASH:-/tmp/wh} RUNS=${RUNS:-/tmp/harness-runs}
WHL=${WHL:-.whl} WHL2=${WHL2:-.whl2} PACKS=${PACKS:-.gpu-runs} OUT=${OUT:-/tmp/out}
CUDART12=${CUDART12:-/tmp/cudart12}
PY=${PY:-python3}
export PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD"  # --target skips .pth files
export LD_LIBRARY_PATH="$CUDART12${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"  # xformers' _C.so
shopt -s nullglob

extract_cudart() {  # only libcudart.so.12, kept outside the import path
  mkdir -p "$CUDART12"
  "$PY" - "$1" "$CUDART12" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, target = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])
for name in wheel.namelist():
    if "/libcudart.so" in name:
        (target / Path(name).name).write_bytes(wheel.read(name))
EOF
}

# One pip call for every wheel: --target replaces a top-level folder that a later call installs
# again, and the CUTLASS DSL's three wheels share nvidia_cutlass_dsl/.
install_stash() {
  local wheels=() w
  for w in "$STASH"/*.whl; do
    case "$(basename "$w")" in
      nvidia_cuda_runtime_cu12-*) extract_cudart "$w" ;;
      *) wheels+=("$w") ;;
    esac
  done
  [ ${#wheels[@]} -eq 0 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
}

case "${1:-}" in
  setup)
    mkdir -p "$SITE" "$STASH"
    parts=("$WHL"/*.part1) wheels=("$WHL"/*.whl)
    [ ${#parts[@]} -eq 0 ] || cp "${parts[@]}" "$STASH"/
    [ ${#wheels[@]} -eq 0 ] || cp "${wheels[@]}" "$STASH"/
    install_stash
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
    "$PY" -m harness list ;;
  join)
    mkdir -p "$SITE" "$STASH"
    wheels=("$WHL2"/*.whl)
    [ ${#wheels[@]} -eq 0 ] || cp "${wheels[@]}" "$STASH"/
    for part2 in "$WHL2"/*.part2; do
      name=$(basename "$part2" .part2)
      if [ ! -f "$STASH/$name.part1" ]; then  # a fresh machine: setup's half went with the old one
        echo "no first part of $name (the machine went cold after setup): not installed"
        continue
      fi
      cat "$STASH/$name.part1" "$part2" > "$STASH/$name.joining"
      echo "$(cat "$WHL2/$name.sha256")  $STASH/$name.joining" | sha256sum -c -
      mv "$STASH/$name.joining" "$STASH/$name"
    done
    install_stash
    "$PY" -m harness list ;;
  run)
    suite=$2 profile=$3; shift 3
    tag="$(basename "$suite" .yaml)-$profile" profile_args=(--profile "$profile")
    [ "$profile" = - ] && profile_args=()  # a suite's default (CPU) sweep, for trying the steps
    if [ ! -d "$RUNS/$tag" ] && [ -f "$PACKS/$tag.tgz" ]; then
      mkdir -p "$RUNS" && tar xzf "$PACKS/$tag.tgz" -C "$RUNS"
    fi
    resume=() previous=("$RUNS/$tag"/*/)
    [ ${#previous[@]} -eq 0 ] || resume=(--resume "${previous[0]}")
    status=0
    # SIGINT lets the runner's `finally` kill its workers (a run cut short must not leave them
    # holding the GPU); SIGKILL 30 s later only if it hangs.
    timeout -s INT -k 30 "${BUDGET_S:-480}" "$PY" -m harness run "$suite" "${profile_args[@]}" \
      --out "$RUNS/$tag" --no-report "${resume[@]}" "$@" || status=$?
    if [ -d "$RUNS/$tag" ]; then
      mkdir -p "$OUT" && tar czf "$OUT/$tag.tgz" -C "$RUNS" "$tag" && echo "packed $OUT/$tag.tgz"
    fi
    if [ "$status" = 124 ]; then
      echo "cut at BUDGET_S=${BUDGET_S:-480}s: run this step again to resume"
    elif [ "$status" != 0 ]; then
      exit "$status"
    fi ;;
  *)
    echo "usage: $0 setup | join | run SUITE PROFILE [harness run args]" >&2; exit 2 ;;
esac
