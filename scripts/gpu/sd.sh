#!/usr/bin/env bash
# GPU check for text→image (issue 5), run on the lent NVIDIA machine from the repo root.
#
# Prepare here (no GPU needed):
#   eval "$(/work/shared/tools/cuda/setup.sh /work/cuda13)"
#   (cuDNN to link against: pip install --target /work/cuda13 nvidia-cudnn-cu13, then
#    ln -s /work/cuda13/nvidia/cudnn/lib/libcudnn.so.9 /work/cuda13/nvidia/cu13/lib/libcudnn.so)
#   CARGO_TARGET_DIR=/work/target-cuda cargo build --release --features cudnn -p orfeas-ml --tests --benches
#   scripts/gpu/sd.sh --stash     # test + bench executables, stripped and gzipped, into .bin/ (~28 MB)
#   (.whl/ holds the diffusers + importlib_metadata wheels, see the report)
# Then with the device tool:
#   run(command="bash scripts/gpu/sd.sh", carry=[".bin", ".whl"], timeout_s=540)
#
# It runs (1) every orfeas-ml integration test with the parity tests on CUDA in f32,
# (2) the candle bench: full-size SD-Turbo, 512², 1 step, f16, random weights,
# (3) the same split in diffusers/PyTorch eager f16, in the same run, (4) candle SDXL-Turbo
# and the TAESD decoder. Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--stash" ]; then
  # Stripped and xz-compressed (the CUDA PTX compresses well; carry is 64 MiB in all).
  mkdir -p .bin
  T=${CARGO_TARGET_DIR:-/work/target-cuda}/release/deps
  cp "$(ls -t "$T"/integration-*[!.d] | head -1)" .bin/orfeas-ml-integration
  cp "$(ls -t "$T"/sd-*[!.d] | head -1)" .bin/orfeas-ml-bench-sd
  strip .bin/orfeas-ml-integration .bin/orfeas-ml-bench-sd
  xz -9 -f .bin/orfeas-ml-integration .bin/orfeas-ml-bench-sd
  ls -la .bin
  exit 0
fi

OUT=${OUT:-/tmp/sd-gpu}
mkdir -p "$OUT" /tmp/sd-bin
for f in .bin/orfeas-ml-*.xz; do
  b=$(basename "$f" .xz)
  xz -dc "$f" >"/tmp/sd-bin/$b" && chmod +x "/tmp/sd-bin/$b"
done
# The plain-CUDA bench of the previous run reads its configs from its build tree.
mkdir -p /work/wt/sd/crates/orfeas-ml/tests/fixtures
ln -sfn "$PWD/crates/orfeas-ml/tests/fixtures/sd-tiny" /work/wt/sd/crates/orfeas-ml/tests/fixtures/sd-tiny
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# candle dlopens cuBLAS/cuRAND/NVRTC: use the CUDA 13 libraries PyTorch ships.
LIBS=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for base in site.getsitepackages() + ["/usr/local/cuda/lib64"]:
    for f in glob.glob(base + "/**/lib*.so*", recursive=True):
        if any(n in os.path.basename(f) for n in ("cublas", "curand", "nvrtc", "cudart", "cudnn")):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORFEAS_ML_FIXTURES="$PWD/crates/orfeas-ml/tests/fixtures/sd-tiny"
status=0

found=$(for d in ${LD_LIBRARY_PATH//:/ }; do ls "$d"/libcudnn.so* 2>/dev/null; done | head -3)
echo "${found:-no libcudnn found: the cuDNN build cannot start}"

echo "== 1. parity tests on CUDA with cuDNN (f32, TF32 off) =="
NVIDIA_TF32_OVERRIDE=0 ORFEAS_TEST_DEVICE=cuda timeout 240 /tmp/sd-bin/orfeas-ml-integration --nocapture --test-threads 2 \
  >"$OUT/parity-cuda.log" 2>&1 || status=1
grep -E "^parity|test result|FAILED|panicked" "$OUT/parity-cuda.log"

for variant in bench-sd bench-sd-plain; do
  echo "== 2. candle ($variant: -plain is im2col convolutions, the other cuDNN): SD-Turbo 512² 1 step f16, random weights =="
  ORFEAS_BENCH_DEVICE=cuda ORFEAS_BENCH_MODELS=sd-turbo ORFEAS_BENCH_WEIGHTS=random ORFEAS_BENCH_REPEATS=10 \
    timeout 150 "/tmp/sd-bin/orfeas-ml-$variant" 2>&1 | tee "$OUT/$variant.log" || status=1
done

echo "== 3. diffusers/PyTorch eager f16, same machine =="
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 ORFEAS_BENCH_REPEATS=10 timeout 180 python3 scripts/gpu/sd_torch.py \
  2>&1 | tee "$OUT/bench-torch.log" || status=1
echo "== 4. candle SDXL-Turbo 512² 1 step f16 and TAESD (cuDNN build; no PyTorch pair) =="
ORFEAS_BENCH_DEVICE=cuda ORFEAS_BENCH_MODELS=sdxl-turbo ORFEAS_BENCH_WEIGHTS=random ORFEAS_BENCH_REPEATS=5 \
  timeout 120 /tmp/sd-bin/orfeas-ml-bench-sd 2>&1 | tee "$OUT/bench-sdxl.log" || status=1
exit $status
