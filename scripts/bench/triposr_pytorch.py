#!/usr/bin/env python3
"""CPU reference timings of the official TripoSR code (PyTorch), to set beside
`cargo bench -p orfeas-ml --bench triposr` (candle) and
`cargo bench -p orfeas-core --bench marching_cubes`.

Our own driver: it imports the official `tsr` package from a TripoSR work tree
given on the command line (none of its code is copied here) and never touches
the network (the DINO ViT config is read from a local file).

Modes:
  e2e  full-size TripoSR (config.yaml + dino-vitb16-config.json from a local
       folder), random weights from the model's own init under
       torch.manual_seed(SEED), eval mode, one 512x512 RGBA image ->
       scene code -> density grid (their chunked query) -> marching cubes ->
       vertex colours -> trimesh GLB export; time and peak RSS per stage.
  mc   skimage.measure.marching_cubes alone on the bumpy-blob field of
       crates/orfeas-core/benches/marching_cubes.rs (same formula, f32).

torchmcubes (the official marching cubes, a C++ extension installed from git)
is used when importable; otherwise `--mc skimage` (default when it is missing)
puts a stand-in module in its place that calls skimage.measure.marching_cubes
on the same grid, and the report says so.

Example:
  python scripts/bench/triposr_pytorch.py e2e --tsr /tmp/tsr-bench/TripoSR \
      --config-dir crates/orfeas-ml/tests/fixtures/triposr-tiny/full-size \
      --image /tmp/tsr-bench/input_512.png --threads 2
  python scripts/bench/triposr_pytorch.py mc --threads 2
"""

import argparse
import os
import statistics
import sys
import time
import types


def vm_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def peak_mb():
    return vm_kb("VmHWM") / 1024.0


_RESET_WARNED = False


def reset_peak():
    """Resets VmHWM (Linux clear_refs 5) so each stage's peak reads alone."""
    global _RESET_WARNED
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        if not _RESET_WARNED:
            print(f"cannot reset the peak-RSS counter ({e}); peaks include earlier stages")
            _RESET_WARNED = True


def install_stubs(mc_impl):
    # tsr.utils imports rembg at module level; the benchmark input already has
    # alpha, so remove_background would not call it (and it is not installed).
    if "rembg" not in sys.modules:
        try:
            import rembg  # noqa: F401
        except ImportError:
            sys.modules["rembg"] = types.ModuleType("rembg")
    if mc_impl == "skimage":
        import numpy as np
        import torch
        from skimage.measure import marching_cubes as sk_mc

        mod = types.ModuleType("torchmcubes")

        def marching_cubes(level, iso):
            # torchmcubes returns vertices as (z, y, x) of level[x, y, z]
            # (MarchingCubeHelper flips them with [..., [2, 1, 0]]).
            verts, faces, _normals, _values = sk_mc(
                level.detach().cpu().numpy(), level=float(iso)
            )
            verts = np.ascontiguousarray(verts[:, ::-1])
            return torch.from_numpy(verts), torch.from_numpy(faces.astype(np.int64))

        mod.marching_cubes = marching_cubes
        sys.modules["torchmcubes"] = mod


def e2e(args):
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    mc_impl = args.mc
    if mc_impl == "auto":
        try:
            import torchmcubes  # noqa: F401

            mc_impl = "torchmcubes"
        except ImportError:
            mc_impl = "skimage"
    install_stubs(mc_impl)
    sys.path.insert(0, os.path.abspath(args.tsr))

    import tsr.models.tokenizers.image as tsr_image_tok
    from einops import rearrange
    from omegaconf import OmegaConf
    from tsr.system import TSR
    from tsr.utils import resize_foreground, scale_tensor

    vit_config = os.path.abspath(os.path.join(args.config_dir, "dino-vitb16-config.json"))

    def local_hf_hub_download(repo_id, filename, **_kw):
        assert filename == "config.json", filename
        return vit_config

    tsr_image_tok.hf_hub_download = local_hf_hub_download

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"marching cubes: {mc_impl}, chunk {args.chunk} points"
    )
    t = time.perf_counter()
    cfg = OmegaConf.load(os.path.join(args.config_dir, "config.yaml"))
    OmegaConf.resolve(cfg)
    torch.manual_seed(args.seed)
    model = TSR(cfg)
    model.eval()
    model.renderer.set_chunk_size(args.chunk)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"full: built with random init (seed {args.seed}, {n_params} parameters) in "
        f"{time.perf_counter() - t:.1f} s, resident {vm_kb('VmRSS') / 1024:.0f} MB"
    )

    image_path = args.image
    if not os.path.exists(image_path):
        src = Image.open(args.source_image).convert("RGBA")
        src.resize((512, 512), Image.BILINEAR).save(image_path)
        print(f"wrote {image_path} (from {args.source_image}, bilinear to 512x512)")
    rgba = Image.open(image_path).convert("RGBA")
    rgba.load()
    build_peak = peak_mb()
    print(f"full: input image {rgba.size[0]}x{rgba.size[1]} RGBA; peak RSS so far {build_peak:.0f} MB")
    res = args.res
    table = []

    cpu_mark = [time.process_time()]

    def stage(name, ms):
        # CPU time (user + system, all threads) since the previous stage ended: less
        # sensitive than wall time to other processes sharing the cores.
        peak = peak_mb()
        cpu_ms = (time.process_time() - cpu_mark[0]) * 1e3
        load = os.getloadavg()[0]
        print(f"full stage: {name:<28} {ms:>10.1f} ms wall {cpu_ms:>10.0f} ms CPU   peak RSS {peak:>7.0f} MB   load {load:.1f}")
        table.append((name, ms, peak, cpu_ms))
        reset_peak()
        cpu_mark[0] = time.process_time()

    def forward_once(image_pil):
        # run.py: resize_foreground, grey composite; then TSR.forward split in stages.
        t0 = time.perf_counter()
        img = resize_foreground(image_pil, 0.85)
        arr = np.array(img).astype(np.float32) / 255.0
        arr = arr[:, :, :3] * arr[:, :, 3:4] + (1 - arr[:, :, 3:4]) * 0.5
        img = Image.fromarray((arr * 255.0).astype(np.uint8))
        rgb_cond = model.image_processor([img], model.cfg.cond_image_size)[:, None]
        t_pre = (time.perf_counter() - t0) * 1e3
        return rgb_cond, t_pre

    with torch.no_grad():
        if args.warmup:
            t0 = time.perf_counter()
            rgb_cond, _ = forward_once(rgba)
            tok = model.image_tokenizer(rearrange(rgb_cond, "B Nv H W C -> B Nv C H W", Nv=1))
            tok = rearrange(tok, "B Nv C Nt -> B (Nv Nt) C", Nv=1)
            x = model.backbone(model.tokenizer(1), encoder_hidden_states=tok)
            model.post_processor(model.tokenizer.detokenize(x))
            print(f"warm-up forward {time.perf_counter() - t0:.1f} s (not counted)")
        t_total = time.perf_counter()
        reset_peak()
        cpu_mark[0] = time.process_time()
        rgb_cond, ms = forward_once(rgba)
        stage("preprocess", ms)

        t0 = time.perf_counter()
        tokens = model.image_tokenizer(rearrange(rgb_cond, "B Nv H W C -> B Nv C H W", Nv=1))
        tokens = rearrange(tokens, "B Nv C Nt -> B (Nv Nt) C", Nv=1)
        stage("image tokenizer", (time.perf_counter() - t0) * 1e3)

        t0 = time.perf_counter()
        x = model.tokenizer(1)
        x = model.backbone(x, encoder_hidden_states=tokens)
        scene_codes = model.post_processor(model.tokenizer.detokenize(x))
        stage("backbone + post-processor", (time.perf_counter() - t0) * 1e3)
        scene_code = scene_codes[0]
        radius = model.renderer.cfg.radius

        # TSR.extract_mesh, split in stages (density query, marching cubes, colours).
        t0 = time.perf_counter()
        model.set_marching_cubes_resolution(res)
        helper = model.isosurface_helper
        density = model.renderer.query_triplane(
            model.decoder,
            scale_tensor(helper.grid_vertices, helper.points_range, (-radius, radius)),
            scene_code,
        )["density_act"]
        stage("density grid query", (time.perf_counter() - t0) * 1e3)

        d = density.reshape(-1).numpy()
        lo, hi = float(d.min()), float(d.max())
        if lo < 25.0 < hi:
            level = 25.0
        else:
            # Random weights: no surface at the official 25; take the 90th percentile.
            k = d.size * 9 // 10
            level = float(np.partition(d, k)[k])
        del d
        print(f"full: density range [{lo:.4f}, {hi:.4f}], iso level {level:.4f}")
        reset_peak()
        cpu_mark[0] = time.process_time()

        t0 = time.perf_counter()
        v_pos, t_pos_idx = helper(-(density - level))
        v_pos = scale_tensor(v_pos, helper.points_range, (-radius, radius))
        stage("marching cubes", (time.perf_counter() - t0) * 1e3)
        del density
        print(f"full: mesh {v_pos.shape[0]} vertices, {t_pos_idx.shape[0]} triangles")

        t0 = time.perf_counter()
        color = model.renderer.query_triplane(model.decoder, v_pos, scene_code)["color"]
        stage("vertex colours", (time.perf_counter() - t0) * 1e3)

    import trimesh

    out = os.path.join(args.out_dir, "tsr-bench.glb")
    t0 = time.perf_counter()
    mesh = trimesh.Trimesh(
        vertices=v_pos.cpu().numpy(),
        faces=t_pos_idx.cpu().numpy(),
        vertex_colors=color.cpu().numpy(),
    )
    mesh.export(out)
    stage("export GLB", (time.perf_counter() - t0) * 1e3)
    total = time.perf_counter() - t_total
    print(f"full: GLB {out} ({os.path.getsize(out) / 1e6:.1f} MB; trimesh merged to "
          f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces)")
    print(f"full: 512 image -> {res}^3 grid -> mesh -> GLB total {total:.1f} s")
    whole = max([build_peak] + [r[2] for r in table])
    print(f"full: peak RSS over the whole run (max of the stage peaks and the build) {whole:.0f} MB")
    print("| stage | wall ms | CPU ms | peak RSS MB |")
    for name, ms, peak, cpu_ms in table:
        print(f"| {name} | {ms:.1f} | {cpu_ms:.0f} | {peak:.0f} |")


def blob(n):
    """crates/orfeas-core/benches/marching_cubes.rs `blob`, in f32, [i][j][k] C order."""
    import numpy as np

    s = np.float32(2.0) / np.float32(n - 1)
    a = np.arange(n, dtype=np.float32) * s - np.float32(1.0)
    x, y, z = a[:, None, None], a[None, :, None], a[None, None, :]
    r = np.sqrt(x * x + y * y + z * z)
    bumps = np.float32(0.08) * np.sin(np.float32(9.0) * x) * np.cos(np.float32(7.0) * y) * np.sin(
        np.float32(11.0) * z
    )
    return (np.float32(40.0) - np.float32(25.0) * (r + bumps)).astype(np.float32)


def mc(args):
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import skimage
    from skimage.measure import marching_cubes

    print(f"skimage {skimage.__version__} marching_cubes (lewiner; single-threaded), median of runs")
    runs_for = {128: 9, 256: 5, 512: 3}
    for n in args.sizes:
        grid = blob(n)
        runs = runs_for.get(n, 3)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            verts, faces, _normals, _values = marching_cubes(grid, level=25.0)
            times.append((time.perf_counter() - t) * 1e3)
        print(
            f"  {n}³ ({n ** 3 / 1e6:.1f} M points): {statistics.median(times):8.1f} ms median, "
            f"{min(times):8.1f} ms min; {len(verts)} vertices, {len(faces)} triangles; "
            f"peak RSS {peak_mb():.0f} MB"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("e2e")
    e.add_argument("--tsr", required=True, help="TripoSR work tree (holds the tsr package)")
    e.add_argument("--config-dir", required=True, help="folder with config.yaml and dino-vitb16-config.json")
    e.add_argument("--image", required=True, help="512x512 RGBA input (written from --source-image if missing)")
    e.add_argument("--source-image", default="crates/orfeas-ml/tests/fixtures/triposr-tiny/golden/input_rgba.png")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--res", type=int, default=256)
    e.add_argument("--chunk", type=int, default=8192, help="their run.py default")
    e.add_argument("--mc", choices=["auto", "torchmcubes", "skimage"], default="auto")
    e.add_argument("--warmup", action="store_true", help="one untimed image->scene-code pass first")
    e.add_argument("--out-dir", default="/tmp")
    m = sub.add_parser("mc")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = p.parse_args()
    e2e(args) if args.mode == "e2e" else mc(args)


if __name__ == "__main__":
    main()
