#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels a GPU machine without network needs for the backends
# this harness adapts, sized for the device tool's 64 MiB carry: .whl/ (the small wheels and the
# first 36 MiB of the 92 MB CUTLASS-DSL library wheel) for one call, .whl2/ (the rest, and
# the harness's own dependencies again) for the next. The targets are the device image: CPython 3.12, x86-64, CUDA 13, torch 2.11 already there.
# Versions are pinned to the ones whose APIs the adapters were checked against.
# Usage: bash scripts/gpu_wheels.sh        (then see docs/gpu_baseline.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=(
  # ours: the harness's own dependencies missing from the device image (plotly: reports are
  # made back here, so runs there use --no-report)
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0
  # xformers: its C++ ops link libcudart.so.12 (the image has CUDA 13's), hence the cu12 runtime;
  # whether that _C.so (built for torch 2.10) then loads under 2.11 is for the device to tell
  xformers==0.0.35 nvidia-cuda-runtime-cu12==12.9.79
  # FlashAttention-4 (CuTe DSL, JIT-compiled on first use) and what it needs
  flash-attn-4==4.0.0b36 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2
  torch-c-dlpack-ext==0.1.5 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
           manylinux_2_17_x86_64 manylinux2014_x86_64 any)
rm -rf .whl .whl2 && mkdir -p .whl .whl2
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}"
# A wheel over 40 MiB travels in two pieces that scripts/gpu_device.sh joins on the device.
cut=$((36 << 20))
for big in $(find .whl -name '*.whl' -size +40M); do
  name=$(basename "$big")
  head -c "$cut" "$big" > ".whl/$name.part1"
  tail -c +"$((cut + 1))" "$big" > ".whl2/$name.part2"
  sha256sum "$big" | cut -d' ' -f1 > ".whl2/$name.sha256"
  rm "$big"
done
# The harness's own dependencies travel in both carries: if the machine went cold between the
# two calls, the second still runs every backend but FlashAttention-4.
cp .whl/pydantic*.whl .whl/annotated_types*.whl .whl/typing_*.whl .whl2/
du -sh .whl .whl2
