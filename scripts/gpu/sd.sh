#!/usr/bin/env bash
# GPU check for text→image (issue 5), run on the lent NVIDIA machine from the repo root.
#
# Prepare here (no GPU needed):
#   eval "$(/work/shared/tools/cuda/setup.sh /work/cuda13)"
#   CARGO_TARGET_DIR=/work/target-cuda cargo build --release --features cuda -p orfeas-ml --tests --benches
#   scripts/gpu/sd.sh --stash     # test + bench executables, stripped and gzipped, into .bin/ (~28 MB)
#   (.whl/ holds the diffusers + importlib_metadata wheels, see the report)
# Then with the device tool:
#   run(command="bash scripts/gpu/sd.sh", carry=[".bin", ".whl"], timeout_s=540)
#
# It runs (1) every orfeas-ml integration test with the parity tests on CUDA in f32,
# (2) the candle bench: full-size SD-Turbo, 512², 1 step, f16, random weights,
# (3) the same split in diffusers/PyTorch eager f16, in the same run. Logs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--stash" ]; then
  mkdir -p .bin
  T=${CARGO_TARGET_DIR:-/work/target-cuda}/release/deps
  cp "$(ls -t "$T"/integration-*[!.d] | head -1)" .bin/orfeas-ml-integration
  cp "$(ls -t "$T"/sd-*[!.d] | head -1)" .bin/orfeas-ml-bench-sd
  # The carry limit is 64 MiB with the work tree: strip and gzip (the CUDA PTX compresses 4x).
  strip .bin/orfeas-ml-integration .bin/orfeas-ml-bench-sd
  gzip -9 -f .bin/orfeas-ml-integration .bin/orfeas-ml-bench-sd
  ls -la .bin
  exit 0
fi

OUT=${OUT:-/tmp/sd-gpu}
mkdir -p "$OUT" /tmp/sd-bin
for b in orfeas-ml-integration orfeas-ml-bench-sd; do
  gunzip -c ".bin/$b.gz" >"/tmp/sd-bin/$b" && chmod +x "/tmp/sd-bin/$b"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# candle dlopens cuBLAS/cuRAND/NVRTC: use the CUDA 13 libraries PyTorch ships.
LIBS=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for base in site.getsitepackages() + ["/usr/local/cuda/lib64"]:
    for f in glob.glob(base + "/**/lib*.so*", recursive=True):
        if any(n in os.path.basename(f) for n in ("cublas", "curand", "nvrtc", "cudart")):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORFEAS_ML_FIXTURES="$PWD/crates/orfeas-ml/tests/fixtures/sd-tiny"
status=0

echo "== 1. parity tests on CUDA (f32) =="
ORFEAS_TEST_DEVICE=cuda timeout 240 /tmp/sd-bin/orfeas-ml-integration --nocapture --test-threads 2 \
  >"$OUT/parity-cuda.log" 2>&1 || status=1
grep -E "^parity|test result|FAILED|panicked" "$OUT/parity-cuda.log"

echo "== 2. candle: SD-Turbo 512² 1 step f16, random weights =="
ORFEAS_BENCH_DEVICE=cuda ORFEAS_BENCH_MODELS=sd-turbo ORFEAS_BENCH_WEIGHTS=random ORFEAS_BENCH_REPEATS=10 \
  timeout 180 /tmp/sd-bin/orfeas-ml-bench-sd 2>&1 | tee "$OUT/bench-candle.log" || status=1

echo "== 3. diffusers/PyTorch eager f16, same machine =="
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 ORFEAS_BENCH_REPEATS=10 timeout 180 python3 scripts/gpu/sd_torch.py \
  2>&1 | tee "$OUT/bench-torch.log" || status=1
exit $status
