#!/usr/bin/env bash
# The one GPU check run on a lent NVIDIA machine (device tool), from the repo root:
#   1. issue 4: viewport frame time for 10k/100k/1M triangles on headless Vulkan
#      (waited, pipelined and with wireframe);
#   2. issue 5: orfeas-ml parity tests on CUDA (cuDNN build) and SD-Turbo 512² 1-step f16:
#      candle with cuDNN, candle with im2col convolutions, PyTorch eager.
# (The issue 3 check, `scripts/gpu/metrics.sh .bin/orfeas`, passed on 2026-11-26 and is
#  not repeated; stash an `orfeas` binary to run it again.)
# Prepared here: .bin/*.xz (stripped, xz-compressed executables), .whl/ (diffusers wheels),
# .gl/ (Vulkan/EGL loader packages). Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
xz -dkf .bin/viewport-bench.xz && chmod +x .bin/viewport-bench
export PATH=/opt/torch/.venv/bin:$PATH
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
status=0
echo "==== 1. viewport frame time"
timeout 120 bash scripts/gpu/viewport.sh .bin/viewport-bench 200 1920x1080 2>&1 | tee "$OUT/viewport.log" || status=1
echo "==== 2. text→image on CUDA"
OUT=$OUT timeout 460 bash scripts/gpu/sd.sh 2>&1 | tee "$OUT/sd.log" || status=1
exit $status
