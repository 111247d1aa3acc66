#!/usr/bin/env python3
"""CPU reference timings of the official BiRefNet code (PyTorch) for
BiRefNet_lite (Swin-T) at 1024², to set beside
`cargo bench -p orfeas-ml --bench birefnet` (candle).

Our own driver: it imports the official code from a BiRefNet work tree given
with --src (none of its code is copied here) and never touches the network.
The released BiRefNet_lite settings are the official `Config` with
`bb = 'swin_v1_t'` (the HF BiRefNet_lite model differs from BiRefNet only
there); the lateral and context channels are recomputed by the official rule.

Weights are seeded random (no trained weights are involved), drawn by the same
rule as the candle bench's `SeededRandom`: N(0, 1)/sqrt(fan_in) for weights,
biases and BatchNorm means 0.05·N, 1-D weights (norm scales) 1 + 0.1·N,
BatchNorm variances |1 + 0.1·N|, relative-position bias tables 0.02·N.
--save-weights writes them as safetensors in the official state-dict names, so
the candle bench can load exactly these (ORFEAS_BENCH_WEIGHTS); --save-output
writes the model input, logits and sigmoid mask at model resolution, so it can
compare its output (ORFEAS_BENCH_REFERENCE).

Times are warm (one untimed forward first), the median of --repeats runs each;
peak RSS is the process's VmHWM.

Example (see scripts/bench/birefnet-cpu-vs-pytorch.sh):
  python scripts/bench/birefnet_pytorch.py --src /tmp/birefnet-src \
      --image assets/examples/mug-on-table.png --threads 2 \
      --save-weights /tmp/brn-bench/lite-seeded.safetensors \
      --save-output /tmp/brn-bench/lite-torch-out.safetensors
"""

import argparse
import os
import statistics
import sys
import time


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def use_lite_config(src):
    """Makes every `Config()` of the official code the BiRefNet_lite one.

    The official modules build `Config()` at import time, so this runs before
    any of them is imported."""
    sys.path.insert(0, src)
    import config as official_config

    official_init = official_config.Config.__init__

    def lite_init(self):
        official_init(self)
        self.bb = "swin_v1_t"
        self.device = "cpu"
        self.compile = False
        self.freeze_bb = False
        channels = [768, 384, 192, 96]  # the official table's swin_v1_t row
        if self.mul_scl_ipt == "cat":
            channels = [c * 2 for c in channels]
        self.lateral_channels_in_collection = channels
        self.cxt = channels[1:][::-1][-self.cxt_num :] if self.cxt_num else []

    official_config.Config.__init__ = lite_init


def seed_weights(model, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue  # relative_position_index, num_batches_tracked
            leaf = name.rsplit(".", 1)[-1]
            n = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            fan_in = max(1, int(torch.tensor(t.shape[1:]).prod().item()) if t.dim() > 1 else 1)
            if leaf == "running_var":
                v = (1.0 + 0.1 * n).abs()
            elif leaf in ("running_mean", "bias"):
                v = 0.05 * n
            elif leaf == "weight" and t.dim() == 1:
                v = 1.0 + 0.1 * n
            elif leaf == "relative_position_bias_table":
                v = 0.02 * n
            else:
                v = n / fan_in**0.5
            t.copy_(v)


def model_input(image_path, size_hw):
    """The HF model card's transforms: PIL bilinear resize, ToTensor, ImageNet normalisation."""
    from PIL import Image
    from torchvision import transforms

    image = Image.open(image_path).convert("RGB")
    tf = transforms.Compose(
        [
            transforms.Resize(size_hw),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    return image, tf(image).unsqueeze(0)


def median_secs(repeats, f):
    times = []
    out = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="official BiRefNet work tree")
    ap.add_argument("--image", required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--save-weights")
    ap.add_argument("--save-output")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    import torchvision

    torch.set_num_threads(args.threads)
    use_lite_config(os.path.abspath(args.src))
    from models.birefnet import BiRefNet

    t = time.perf_counter()
    model = BiRefNet(bb_pretrained=False)
    seed_weights(model, args.seed)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads; official BiRefNet_lite config bb={model.config.bb}, "
        f"{n_params} parameters (with training-only heads); built in {time.perf_counter() - t:.1f} s, "
        f"peak RSS {peak_rss_mib():.1f} MiB"
    )
    if args.save_weights:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, args.save_weights)
        print(f"weights -> {args.save_weights}")

    size_hw = (args.size, args.size)
    image, x = model_input(args.image, size_hw)
    with torch.inference_mode():
        t = time.perf_counter()
        model(x)
        print(f"warm-up forward {time.perf_counter() - t:.1f} s")
        bb_s, _ = median_secs(args.repeats, lambda: model.bb(x))
        enc_s, ((x1, x2, x3, x4), _) = median_secs(args.repeats, lambda: model.forward_enc(x))
        sq_s, x4 = median_secs(args.repeats, lambda: model.squeeze_module(x4))
        dec_s, preds = median_secs(args.repeats, lambda: model.decoder([x, x1, x2, x3, x4]))
        fwd_s, logits = median_secs(args.repeats, lambda: model(x))

        def mask_of_picture():
            # The HF model card's whole path: picture -> mask at the picture's size.
            _, xin = model_input(args.image, size_hw)
            pred = model(xin)[-1].sigmoid()[0].squeeze()
            small = torchvision.transforms.ToPILImage()(pred)
            return small.resize(image.size)

        mask_s, mask_img = median_secs(args.repeats, mask_of_picture)
    logits = logits[-1] if isinstance(logits, (list, tuple)) else logits
    dec_logits = preds[-1] if isinstance(preds, (list, tuple)) else preds
    assert torch.equal(logits, dec_logits), "stage-wise and whole forward disagree"
    mask = logits.sigmoid()
    print(
        f"official BiRefNet_lite at {args.size}x{args.size} (picture {image.size[0]}x{image.size[1]}, median of {args.repeats}):"
    )
    print(f"  backbone x1  {bb_s * 1e3:10.1f} ms")
    print(f"  encoder      {enc_s * 1e3:10.1f} ms  (backbone on the input and the x0.5 pyramid, cat, context)")
    print(f"  squeeze      {sq_s * 1e3:10.1f} ms")
    print(f"  decoder      {dec_s * 1e3:10.1f} ms")
    print(f"  forward      {fwd_s * 1e3:10.1f} ms  (model(x): encoder + squeeze + decoder)")
    print(f"  mask() total {mask_s * 1e3:10.1f} ms  (mask {mask_img.size[0]}x{mask_img.size[1]})")
    print(f"  peak RSS     {peak_rss_mib():10.1f} MiB")
    print(
        f"  logits mean {logits.mean().item():.4f} std {logits.std().item():.4f}; "
        f"mask in (0.05, 0.95): {((mask > 0.05) & (mask < 0.95)).float().mean().item() * 100:.1f} %"
    )
    if args.save_output:
        from safetensors.torch import save_file

        save_file(
            {"input": x.contiguous(), "logits": logits.contiguous(), "mask": mask.contiguous()},
            args.save_output,
        )
        print(f"outputs -> {args.save_output}")


if __name__ == "__main__":
    main()
