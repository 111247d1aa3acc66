#!/usr/bin/env bash
# SD-Turbo text→image on this CPU: diffusers (PyTorch), then ours (candle), one
# after the other, on the same full-size diffusers folder with seeded random
# weights, the same prompt and the same initial noise. 1 step, guidance 0, f32,
# full VAE decode; each side times its real pipeline call split into text
# encoder / UNet / VAE decode (first call and warm call), the VAE decode alone
# and TAESD on the same latents, its peak RSS and its CPU share (process CPU time
# ÷ wall time × threads: under 100 % while other work shares the cores, which
# makes those numbers slower than the machine can do). Ours also prints how far its
# outputs are from diffusers'. Ends with a table of both and ours ÷ diffusers.
#
#   scripts/bench/sd-cpu-vs-diffusers.sh          # 512², 2 threads
#   SIZE=256 scripts/bench/sd-cpu-vs-diffusers.sh # a quick check
#
# Built once and kept in SD_BENCH_DIR (default /work/sd-bench), outside the repo:
#   venv/            python3 -m venv + the PyPI wheels in PIP_PACKAGES (torch from
#                    PyPI is the CUDA build, ~5.7 GB installed; it runs on the CPU)
#   sd-turbo-random/ the diffusers folder (~5.2 GB; taesd/ inside), written by
#                    scripts/bench/sd_diffusers_cpu.py make-folder from the configs in
#                    crates/orfeas-ml/tests/fixtures/sd-tiny/full-configs/sd-turbo
# Delete either to rebuild it. Per run: diffusers-SIZE.log, ours-SIZE.log and
# diffusers-out-SIZE.safetensors (noise, latents and outputs ours compares with).
#
# Environment: SD_BENCH_DIR, SIZE (default 512, a multiple of 8), THREADS
# (default 2: torch.set_num_threads and RAYON_NUM_THREADS), NICE (default 10).
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCH_DIR=${SD_BENCH_DIR:-/work/sd-bench}
SIZE=${SIZE:-512}
THREADS=${THREADS:-2}
NICE=${NICE:-10}
PIP_PACKAGES=${PIP_PACKAGES:-"torch==2.15.0 diffusers==0.42.1 transformers==5.25.0 safetensors==0.8.0 accelerate==1.16.0"}
VENV=$BENCH_DIR/venv
FOLDER=$BENCH_DIR/sd-turbo-random
PY=$VENV/bin/python
mkdir -p "$BENCH_DIR"

if ! "$PY" -c "import torch, diffusers, transformers, safetensors, accelerate" 2>/dev/null; then
    echo "== venv: $VENV ($PIP_PACKAGES)"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086 # one word per package
    "$VENV/bin/pip" install --quiet $PIP_PACKAGES
fi
if [[ ! -f $FOLDER/unet/diffusion_pytorch_model.safetensors ]]; then
    echo "== seeded random SD-Turbo folder: $FOLDER"
    nice -n "$NICE" "$PY" scripts/bench/sd_diffusers_cpu.py make-folder "$FOLDER"
fi

# Built first so a compile error stops the run before the long diffusers part;
# built again (a no-op unless the sources changed meanwhile) right before ours runs.
echo "== ours: build (release)"
cargo bench -p orfeas-ml --bench sd --no-run
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"

reference=$BENCH_DIR/diffusers-out-$SIZE.safetensors
echo "== diffusers ($THREADS threads; load average $(cut -d' ' -f1-3 /proc/loadavg))"
nice -n "$NICE" "$PY" scripts/bench/sd_diffusers_cpu.py run "$FOLDER" --size "$SIZE" \
    --threads "$THREADS" --save "$reference" 2>&1 \
    | grep -v -e 'requires torchvision' -e 'it/s]' -e 'safety checker' -e 'torch_dtype' \
    | tee "$BENCH_DIR/diffusers-$SIZE.log"

cargo bench --quiet -p orfeas-ml --bench sd --no-run
echo "== ours (candle, release, $THREADS threads; load average $(cut -d' ' -f1-3 /proc/loadavg)), built from \
$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates/orfeas-ml/src \
    || echo ' + uncommitted changes in crates/orfeas-ml/src')"
RAYON_NUM_THREADS=$THREADS ORFEAS_BENCH_FOLDER=$FOLDER ORFEAS_BENCH_SIZE=$SIZE \
    ORFEAS_BENCH_REFERENCE=$reference \
    nice -n "$NICE" cargo bench -p orfeas-ml --bench sd 2>&1 | tee "$BENCH_DIR/ours-$SIZE.log"

echo "== side by side, ${SIZE}x${SIZE}"
"$PY" - "$BENCH_DIR/diffusers-$SIZE.log" "$BENCH_DIR/ours-$SIZE.log" <<'EOF'
import json, sys

def summary(path, impl):
    with open(path) as f:
        for line in f:
            if line.startswith("{") and json.loads(line).get("impl") == impl:
                return json.loads(line)
    sys.exit(f"no summary line in {path}")

d, o = summary(sys.argv[1], "diffusers"), summary(sys.argv[2], "ours")
rows = [("load", "load_ms", "ms")]
for i, run in enumerate(d["runs"]):
    for stage in ("text_encoder", "unet", "vae_decode", "e2e"):
        rows.append((f"{stage} ({run['label']})", ("runs", i, stage), "ms"))
    rows.append((f"CPU share ({run['label']})", ("runs", i, "cpu_share"), "%"))
rows += [("vae_decode alone", "vae_decode_alone_ms", "ms"), ("CPU share (vae alone)", "vae_decode_alone_cpu_share", "%"), ("taesd_decode (first)", "taesd_first_ms", "ms"),
         ("taesd_decode (warm)", "taesd_warm_ms", "ms"),
         ("peak RSS after pipeline", "peak_rss_pipeline_mib", "MiB"), ("peak RSS at end", "peak_rss_mib", "MiB")]

def get(s, key):
    if isinstance(key, tuple):
        return s[key[0]][key[1]][key[2]]
    return s[key]

print(f"{'':26} {'diffusers':>12} {'ours':>12} {'ours/diffusers':>15}")
for name, key, unit in rows:
    a, b = get(d, key), get(o, key)
    if unit == "%":
        print(f"{name:26} {a * 100:>9.0f} %  {b * 100:>9.0f} %")
        continue
    print(f"{name:26} {a:>9.0f} {unit:3}{b:>9.0f} {unit:3}{b / a if a else float('nan'):>14.2f}")
print("ours vs diffusers outputs, max |Δ|:", o.get("diff_from_diffusers"))
EOF
