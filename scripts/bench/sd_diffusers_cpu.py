#!/usr/bin/env python3
"""SD-Turbo on the CPU with diffusers, to set beside ours
(`cargo bench -p orfeas-ml --bench sd` with ORFEAS_BENCH_FOLDER).

Two commands:

  make-folder OUT   writes a full-size SD-Turbo diffusers folder with seeded
                    random weights (f32 safetensors) from the configs in
                    crates/orfeas-ml/tests/fixtures/sd-tiny/full-configs/sd-turbo,
                    the CLIP BPE vocabulary of crates/orfeas-ml/assets/clip, and
                    a full-size TAESD (AutoencoderTiny) folder in OUT/taesd.
                    No download: the weights are drawn here.
  run FOLDER        times the text→image pipeline on it: 1 step, guidance 0,
                    full VAE decode, f32, --threads torch threads. Writes the
                    initial noise, the latents the VAE decodes and the outputs to
                    --save, so ours can start from the same noise and compare.

Weights: N(0, 1/fan_in) for conv and linear weights (each layer keeps the
scale of its input, so activations stay finite and away from denormals),
N(0, 0.02) for embeddings, 0 for biases, 1/0 for norm scales/shifts. TAESD
(ReLU, no norms): N(0, 2/fan_in), the last conv of each block at half that std.

`run` times the pipeline twice (run 1 is the first call in the process, run 2
warm), split into text encoder, UNet and VAE decode by wrapping those three
modules' calls inside the real `pipe(...)`; then the VAE decode alone and
TAESD's decode (first and warm) on the latents the pipeline decoded. Peak RSS
is the process's VmHWM; CPU share is the process's CPU time over wall time ×
threads (below 100 % when other work shares the cores). Prints one line per measurement and a JSON summary
line starting with `{"impl": "diffusers"`.
"""

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
ML = os.path.join(ROOT, "crates", "orfeas-ml")
CONFIGS = os.path.join(ML, "tests", "fixtures", "sd-tiny", "full-configs", "sd-turbo")
TAESD_CONFIG = os.path.join(ML, "tests", "fixtures", "taesd-tiny", "full_config.json")
VOCAB = os.path.join(ML, "assets", "clip")
PROMPT = "a red ceramic mug on a wooden table, studio photo"
SEED = 0


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def fresh_params(model, rule):
    """Replaces every parameter with a new tensor drawn by `rule(name, shape)`.

    The model is built under `init_empty_weights`, so the library's own (slow,
    865 M draws through kaiming_uniform) init never runs."""
    import torch

    for name, param in list(model.named_parameters()):
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        leaf = name.rsplit(".", 1)[-1]
        owner._parameters[leaf] = torch.nn.Parameter(rule(name, tuple(param.shape)), requires_grad=False)
    return model


def sd_rule(gen):
    import torch

    def rule(name, shape):
        if len(shape) == 1:
            # Biases → 0; the only 1-D weights are norm scales (GroupNorm/LayerNorm) → 1.
            return torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        if name.endswith("_embedding.weight"):
            # CLIP's token and position tables.
            return torch.empty(shape).normal_(0.0, 0.02, generator=gen)
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return torch.empty(shape).normal_(0.0, fan_in ** -0.5, generator=gen)

    return rule


def taesd_rule(gen):
    import torch

    def rule(name, shape):
        if len(shape) == 1:
            return torch.zeros(shape)
        fan_in = shape[1] * shape[2] * shape[3]
        std = (2.0 / fan_in) ** 0.5
        if name.endswith("conv.4.weight"):
            std *= 0.5
        return torch.empty(shape).normal_(0.0, std, generator=gen)

    return rule


def make_folder(out):
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator().manual_seed(SEED)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for part in ("scheduler", "tokenizer"):
        shutil.copytree(os.path.join(CONFIGS, part), os.path.join(tmp, part))
    shutil.copy(os.path.join(CONFIGS, "model_index.json"), tmp)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(VOCAB, f), os.path.join(tmp, "tokenizer", f))

    def save(name, model):
        t = time.perf_counter()
        model.save_pretrained(os.path.join(tmp, name), safe_serialization=True)
        n = sum(p.numel() for p in model.parameters())
        print(f"  {name}: {n / 1e6:.1f} M parameters, saved in {time.perf_counter() - t:.1f} s", flush=True)

    te_cfg = CLIPTextConfig(**{k: v for k, v in load_json(os.path.join(CONFIGS, "text_encoder", "config.json")).items()
                               if not k.startswith("_")})
    with init_empty_weights():
        te = CLIPTextModel(te_cfg)
    save("text_encoder", fresh_params(te, sd_rule(gen)))
    del te
    hub_text_encoder_names(os.path.join(tmp, "text_encoder", "model.safetensors"))
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(load_json(os.path.join(CONFIGS, "unet", "config.json")))
    save("unet", fresh_params(unet, sd_rule(gen)))
    del unet
    with init_empty_weights():
        vae = AutoencoderKL.from_config(load_json(os.path.join(CONFIGS, "vae", "config.json")))
    save("vae", fresh_params(vae, sd_rule(gen)))
    del vae
    with init_empty_weights():
        tiny = AutoencoderTiny.from_config(load_json(TAESD_CONFIG))
    save("taesd", fresh_params(tiny, taesd_rule(gen)))
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)


def hub_text_encoder_names(path):
    """Renames the text encoder's tensors to the hub layout (`text_model.` prefix).

    transformers 5 builds CLIPTextModel without its `text_model` submodule and
    saves flat names; the published SD checkpoints (transformers 4) carry the
    prefix, and transformers 5 still loads them, so the folder mirrors those."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in tensors.items()},
              path, metadata={"format": "pt"})


class StageClock:
    """Wall time of each call of the wrapped callables, by stage name."""

    def __init__(self):
        self.ms = {}
        self.last_vae_input = None

    def wrap(self, obj, attr, stage, keep_input=False):
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            if keep_input:
                self.last_vae_input = args[0]
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t) * 1e3
            return out

        setattr(obj, attr, timed)


def run(folder, size, threads, save):
    import torch

    torch.set_num_threads(threads)
    t = time.perf_counter()
    from diffusers import AutoencoderTiny, AutoPipelineForText2Image, StableDiffusionPipeline
    import diffusers
    import transformers
    import_ms = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    pipe = AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    assert isinstance(pipe, StableDiffusionPipeline), type(pipe)
    tiny = AutoencoderTiny.from_pretrained(os.path.join(folder, "taesd"), torch_dtype=torch.float32)
    load_ms = (time.perf_counter() - t) * 1e3
    pipe.set_progress_bar_config(disable=True)
    attn = type(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))]).__name__
    print(f"diffusers: torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads, {pipe.scheduler.__class__.__name__}, "
          f"attention {attn}, f32, {size}x{size}, 1 step, guidance 0", flush=True)
    print(f"diffusers: import {import_ms:.0f} ms, load {load_ms:.0f} ms", flush=True)

    clock = StageClock()
    clock.wrap(pipe.text_encoder, "forward", "text_encoder")
    clock.wrap(pipe.unet, "forward", "unet")
    clock.wrap(pipe.vae, "decode", "vae_decode", keep_input=True)

    lat = size // 8
    noise = torch.randn((1, 4, lat, lat), generator=torch.Generator().manual_seed(SEED))
    runs = []
    image = None
    with torch.inference_mode():
        for label in ("first", "warm"):
            clock.ms = {}
            t, cpu = time.perf_counter(), time.process_time()
            image = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, height=size, width=size,
                         latents=noise.clone(), output_type="np").images[0]
            e2e = (time.perf_counter() - t) * 1e3
            share = (time.process_time() - cpu) * 1e3 / (e2e * threads)
            r = {"label": label, **{k: round(v, 1) for k, v in clock.ms.items()}, "e2e": round(e2e, 1),
                 "cpu_share": round(share, 3)}
            runs.append(r)
            print(f"diffusers run {len(runs)} ({label}): text_encoder {r['text_encoder']:.0f} ms | unet "
                  f"{r['unet']:.0f} ms | vae_decode {r['vae_decode']:.0f} ms | end-to-end {e2e:.0f} ms | "
                  f"CPU share {share:.0%}", flush=True)
        rss_pipeline = peak_rss_mib()
        vae_in = clock.last_vae_input
        t, cpu = time.perf_counter(), time.process_time()
        vae_out = pipe.vae.decode(vae_in).sample
        vae_ms = (time.perf_counter() - t) * 1e3
        vae_share = (time.process_time() - cpu) * 1e3 / (vae_ms * threads)
        print(f"diffusers vae_decode alone: {vae_ms:.0f} ms | CPU share {vae_share:.0%}", flush=True)
        unet_latents = vae_in * pipe.vae.config.scaling_factor
        taesd_ms = []
        for _ in range(2):
            t = time.perf_counter()
            taesd_out = tiny.decode(unet_latents).sample
            taesd_ms.append((time.perf_counter() - t) * 1e3)
        print(f"diffusers taesd_decode: first {taesd_ms[0]:.0f} ms, warm {taesd_ms[1]:.0f} ms", flush=True)
    rss = peak_rss_mib()
    print(f"diffusers peak RSS: {rss_pipeline:.0f} MiB after the pipeline runs, {rss:.0f} MiB at the end", flush=True)

    if save:
        from safetensors.torch import save_file

        pixels = torch.from_numpy((image * 255).round().astype("uint8"))
        save_file({"noise": noise.contiguous(), "unet_latents": unet_latents.contiguous(),
                   "vae_out": vae_out.contiguous(), "taesd_out": taesd_out.contiguous(),
                   "image": pixels.contiguous()}, save)
    print(json.dumps({"impl": "diffusers", "size": size, "threads": threads, "prompt": PROMPT,
                      "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "transformers": transformers.__version__, "load_ms": round(load_ms, 1),
                      "runs": runs, "vae_decode_alone_ms": round(vae_ms, 1),
                      "vae_decode_alone_cpu_share": round(vae_share, 3),
                      "taesd_first_ms": round(taesd_ms[0], 1), "taesd_warm_ms": round(taesd_ms[1], 1),
                      "peak_rss_pipeline_mib": round(rss_pipeline), "peak_rss_mib": round(rss)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-folder")
    mk.add_argument("out")
    rn = sub.add_parser("run")
    rn.add_argument("folder")
    rn.add_argument("--size", type=int, default=512)
    rn.add_argument("--threads", type=int, default=2)
    rn.add_argument("--save", help="safetensors file for the noise, latents and outputs")
    args = ap.parse_args()
    if args.cmd == "make-folder":
        make_folder(os.path.abspath(args.out))
    else:
        run(args.folder, args.size, args.threads, args.save)


if __name__ == "__main__":
    sys.exit(main())
