#!/usr/bin/env bash
# The one GPU check run on a lent NVIDIA machine (device tool), from the repo root:
#   1. issue 3: `orfeas serve` there prints its gpu_* series from /metrics;
#   2. issue 4: viewport frame time for 10k/100k/1M triangles on headless Vulkan;
#   3. issue 5: orfeas-ml parity tests on CUDA and SD-Turbo 512² 1-step f16 candle vs PyTorch.
# Prepared here: .bin/*.xz (stripped, xz-compressed executables), .whl/ (diffusers wheels),
# .gl/ (Vulkan/EGL loader packages). Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
for f in .bin/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
export PATH=/opt/torch/.venv/bin:$PATH
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
status=0
echo "==== 1. GPU series from orfeas serve"
ORFEAS_DATA_DIR=$(mktemp -d) timeout 60 bash scripts/gpu/metrics.sh .bin/orfeas 2>&1 | tee "$OUT/metrics.log" || status=1
echo "==== 2. viewport frame time"
timeout 120 bash scripts/gpu/viewport.sh .bin/viewport-bench 200 1920x1080 2>&1 | tee "$OUT/viewport.log" || status=1
echo "==== 3. text→image on CUDA"
OUT=$OUT timeout 400 bash scripts/gpu/sd.sh 2>&1 | tee "$OUT/sd.log" || status=1
exit $status
