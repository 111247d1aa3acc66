#!/usr/bin/env bash
# BiRefNet_lite (Swin-T) at 1024² on this CPU: the official PyTorch code, then
# ours (candle), one after the other, on the same seeded random weights and the
# same picture; ours also prints the max abs difference from the official output.
# See docs/benchmarks.md for the numbers and how they were taken.
#
# Needs: a venv with torch, torchvision, timm, kornia, einops, safetensors,
# pillow, opencv-python-headless, tqdm, huggingface_hub (pip, CPU is enough),
# and a work tree of https://github.com/ZhengPeng7/BiRefNet (not vendored here).
#
#   BIREFNET_SRC=/tmp/birefnet-src VENV=/tmp/brn-bench scripts/bench/birefnet-cpu-vs-pytorch.sh
#
# Environment: BIREFNET_SRC (required), VENV (default /tmp/brn-bench),
# WORK (scratch for weights and outputs, default $VENV), IMAGE (default
# assets/examples/mug-on-table.png), SIZE (default 1024), THREADS (default 2,
# torch's threads; candle uses every core, RAYON_NUM_THREADS is set to match).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${BIREFNET_SRC:?set BIREFNET_SRC to a work tree of the official BiRefNet code}"
VENV=${VENV:-/tmp/brn-bench}
WORK=${WORK:-$VENV}
# Absolute: cargo bench runs the bench in the package folder.
IMAGE=$(realpath "${IMAGE:-assets/examples/mug-on-table.png}")
SIZE=${SIZE:-1024}
THREADS=${THREADS:-2}
mkdir -p "$WORK"
weights="$WORK/birefnet-lite-seeded.safetensors"
reference="$WORK/birefnet-lite-official-out-$SIZE.safetensors"

echo "== official PyTorch ($THREADS threads)"
"$VENV/bin/python" scripts/bench/birefnet_pytorch.py --src "$BIREFNET_SRC" \
    --image "$IMAGE" --size "$SIZE" --threads "$THREADS" \
    --save-weights "$weights" --save-output "$reference"

echo "== ours (candle, release)"
RAYON_NUM_THREADS=$THREADS ORFEAS_BENCH_REPEATS=1 ORFEAS_BENCH_SIZE=$SIZE \
    ORFEAS_BENCH_IMAGE="$IMAGE" ORFEAS_BENCH_WEIGHTS="$weights" \
    ORFEAS_BENCH_REFERENCE="$reference" \
    cargo bench -p orfeas-ml --bench birefnet
