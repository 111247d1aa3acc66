#!/usr/bin/env python3
"""diffusers/PyTorch eager f16 reference timing for the candle SD bench.

Builds the full-size SD-Turbo architecture from the committed configs with random
weights (no download), then times one 512x512 step split into text encoder,
UNet and VAE decode, the same split as `cargo bench -p orfeas-ml --bench sd`.
Prints one line per stage and a JSON summary line.
"""
import json
import os
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CFG = os.environ.get(
    "ORFEAS_ML_FIXTURES",
    os.path.join(ROOT, "crates/orfeas-ml/tests/fixtures/sd-tiny"),
) + "/full-configs/sd-turbo"
SIZE = int(os.environ.get("ORFEAS_BENCH_SIZE", "512"))
REPEATS = int(os.environ.get("ORFEAS_BENCH_REPEATS", "10"))


def load_json(path):
    with open(path) as f:
        return json.load(f)


def timed(fn):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def main():
    dev, dt = torch.device("cuda"), torch.float16
    torch.manual_seed(0)
    te_cfg = CLIPTextConfig(**{k: v for k, v in load_json(CFG + "/text_encoder/config.json").items()
                               if not k.startswith("_")})
    te = CLIPTextModel(te_cfg).to(dev, dt).eval()
    unet = UNet2DConditionModel.from_config(load_json(CFG + "/unet/config.json")).to(dev, dt).eval()
    vae = AutoencoderKL.from_config(load_json(CFG + "/vae/config.json")).to(dev, dt).eval()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} | attention "
          f"{type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__}", flush=True)

    ids = torch.zeros((1, 77), dtype=torch.long, device=dev)
    lat = SIZE // 8
    sample = torch.randn((1, 4, lat, lat), device=dev, dtype=dt)
    ctx = te(ids)[0]
    t = torch.tensor([999.0], device=dev)

    te_ms = timed(lambda: te(ids)[0])
    unet_ms = timed(lambda: unet(sample, t, encoder_hidden_states=ctx).sample)
    vae_ms = timed(lambda: vae.decode(sample / vae.config.scaling_factor).sample)

    def e2e():
        c = te(ids)[0]
        eps = unet(sample * 14.6146 / (14.6146**2 + 1) ** 0.5, t, encoder_hidden_states=c).sample
        x = sample * 14.6146 - 14.6146 * eps
        return vae.decode(x / vae.config.scaling_factor).sample

    e2e_ms = timed(e2e)
    print(f"torch sd-turbo {SIZE}x{SIZE} 1 step f16: text_encoder {te_ms:.1f} ms | unet {unet_ms:.1f} ms | "
          f"vae_decode {vae_ms:.1f} ms | end-to-end {e2e_ms:.1f} ms", flush=True)
    print(json.dumps({"impl": "diffusers-eager-f16", "size": SIZE, "text_encoder_ms": te_ms,
                      "unet_ms": unet_ms, "vae_decode_ms": vae_ms, "e2e_ms": e2e_ms}))


if __name__ == "__main__":
    sys.exit(main())
