#!/usr/bin/env bash
# Viewport frame-time benchmark on a GPU machine (headless Vulkan, no display).
#   usage: scripts/gpu/viewport.sh BENCH_EXE [FRAMES] [WIDTHxHEIGHT]
# BENCH_EXE is the compiled `viewport` bench, e.g. the path printed by
#   cargo bench --bench viewport --no-run   (target/release/deps/viewport-<hash>)
# Prints the adapter (must be the NVIDIA GPU, not llvmpipe) and ms/frame for
# 10k, 100k and 1M triangles. Target: 1M triangles under 4 ms per frame.
set -euo pipefail
exe=${1:?usage: scripts/gpu/viewport.sh BENCH_EXE [FRAMES] [WIDTHxHEIGHT]}
frames=${2:-200}
size=${3:-1920x1080}
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
# Prefer the NVIDIA adapter when several are present (lavapipe may be installed too).
if [ -z "${WGPU_ADAPTER_NAME:-}" ] && command -v nvidia-smi >/dev/null; then
  export WGPU_ADAPTER_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; fi
"$exe" "$frames" "$size"
