//! TripoSR stage times: the tiny fixture model, then the full-size
//! architecture (stabilityai/TripoSR config.yaml) with seeded random weights
//! (PyTorch-like init scales, see `RandomInit`) end to end: one 512x512 RGBA
//! image -> scene code -> 256³ density grid -> marching cubes -> vertex
//! colours -> GLB, with wall time, CPU time and peak RSS (VmHWM, reset per
//! stage) of each stage. Random weights do not reach the official iso level
//! 25, so the grid's 90th percentile is used then (printed).
//! `scripts/bench/triposr_pytorch.py e2e` times the official PyTorch code the
//! same way.
//!
//! `cargo bench -p orfeas-ml --bench triposr` (add `--profile dev` to reuse the
//! dev build; dependencies are optimised there too). Environment:
//! ORFEAS_BENCH_DEVICE (auto|cpu|cuda|metal; default auto), ORFEAS_BENCH_FULL
//! (0 skips the full-size model), ORFEAS_BENCH_GRID (full-size grid resolution,
//! default 256), ORFEAS_BENCH_CHUNK (points per chunk, default
//! `DEFAULT_CHUNK_POINTS`), ORFEAS_BENCH_REPEATS (tiny model; default 5),
//! ORFEAS_BENCH_IMAGE (full-size input; default the fixture image resized to
//! 512x512), ORFEAS_BENCH_SEED (random weights; default 0).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use orfeas_core::export::{ExportFormat, export_mesh};
use orfeas_core::mesh::Mesh;
use orfeas_core::mesh::marching_cubes::extract_isosurface;
use orfeas_ml::sd::pipeline::{DevicePref, select_device};
use orfeas_ml::triposr::{Config, DEFAULT_CHUNK_POINTS, OrbitCamera, TripoSr};
use rand::{Rng, SeedableRng};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/triposr-tiny")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn sync(dev: &Device) -> anyhow::Result<()> {
    dev.synchronize()?;
    Ok(())
}

/// Median wall time of `repeats` runs, in milliseconds.
fn time_ms<T>(
    dev: &Device,
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(f64, T)> {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let out = f()?;
        sync(dev)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(out);
    }
    times.sort_by(f64::total_cmp);
    let out = last.ok_or_else(|| anyhow::anyhow!("no run"))?;
    Ok((times[times.len() / 2], out))
}

/// Peak resident memory since the last reset (Linux; `None` elsewhere).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Seeded random weights with PyTorch-like init scales, keyed by tensor name:
/// the ViT (transformers `_init_weights`): N(0, 0.02), biases 0; the triplane
/// embeddings: N(0, 1/sqrt(C)); the decoder: kaiming-uniform (relu); the rest:
/// PyTorch's default U(+-1/sqrt(fan_in)); norm weights 1, norm biases 0.
struct RandomInit {
    seed: u64,
    fan_in: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl RandomInit {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            fan_in: Default::default(),
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for RandomInit {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let n = s.elem_count();
        // FNV-1a of the name, mixed with the seed: each tensor its own stream.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(h);
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let is_norm = prefix.contains("norm");
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        if dims.len() >= 2 && leaf == "weight" {
            self.fan_in
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
                .insert(prefix.to_owned(), fan_in);
        }
        let normal = |rng: &mut rand::rngs::StdRng, std: f32| -> Vec<f32> {
            let d = rand_distr::Normal::new(0.0f32, std).unwrap_or_else(|_| unreachable!());
            (0..n).map(|_| rng.sample(d)).collect()
        };
        let uniform = |rng: &mut rand::rngs::StdRng, b: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-b..=b)).collect()
        };
        let data = if dims.len() == 1 && is_norm {
            vec![if leaf == "weight" { 1.0 } else { 0.0 }; n]
        } else if name.starts_with("image_tokenizer.") {
            if dims.len() >= 2 {
                normal(&mut rng, 0.02)
            } else {
                vec![0.0; n]
            }
        } else if name.starts_with("tokenizer.") {
            normal(
                &mut rng,
                1.0 / (dims.get(1).copied().unwrap_or(1) as f32).sqrt(),
            )
        } else if dims.len() >= 2 {
            let b = if name.starts_with("decoder.") {
                (6.0 / fan_in as f32).sqrt()
            } else {
                1.0 / (fan_in as f32).sqrt()
            };
            uniform(&mut rng, b)
        } else {
            let fan = self
                .fan_in
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
                .get(prefix)
                .copied();
            match fan {
                Some(f) => uniform(&mut rng, 1.0 / (f as f32).sqrt()),
                None => uniform(&mut rng, 0.02),
            }
        };
        Tensor::from_vec(data, dims, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "random init needs a shape for {name}"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// User + system CPU time of the process (all threads), in ms (Linux).
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Clock ticks: 100 Hz on Linux.
    f.iter().sum::<f64>() * 10.0
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Resets the peak-RSS counter so the next stage's peak can be read alone.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak-RSS counter ({e}); peaks include earlier stages");
    }
}

fn stages(
    label: &str,
    model: &TripoSr,
    dev: &Device,
    repeats: usize,
    image: &image::DynamicImage,
) -> anyhow::Result<Tensor> {
    let (pre_ms, pixels) = time_ms(dev, repeats, || Ok(model.preprocess(image, 0.85, dev)?))?;
    let (vit_ms, tokens) = time_ms(dev, repeats, || Ok(model.image_tokens(&pixels)?))?;
    let (bb_ms, planes) = time_ms(dev, repeats, || Ok(model.triplane_tokens(&tokens)?))?;
    let (post_ms, codes) = time_ms(dev, repeats, || Ok(model.scene_codes(&planes)?))?;
    println!(
        "{label}: preprocess {pre_ms:.1} ms | image tokenizer {vit_ms:.1} ms | backbone {bb_ms:.1} ms | \
         post-processor {post_ms:.1} ms | image -> scene code {:.1} ms",
        pre_ms + vit_ms + bb_ms + post_ms
    );
    Ok(codes)
}

/// Large blocks on transparent huge pages (`orfeas_ml::memory`).
#[global_allocator]
static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;

fn main() -> anyhow::Result<()> {
    orfeas_ml::memory::keep_freed_memory();
    orfeas_ml::memory::huge_pages_from_env();
    let pref: DevicePref = std::env::var("ORFEAS_BENCH_DEVICE")
        .unwrap_or_else(|_| "auto".into())
        .parse()?;
    let (dev, _) = select_device(pref)?;
    let repeats = env_usize("ORFEAS_BENCH_REPEATS", 5);
    let chunk = env_usize("ORFEAS_BENCH_CHUNK", DEFAULT_CHUNK_POINTS);
    println!(
        "device {dev:?} f32, threads {}, chunk {chunk} points",
        candle_core::utils::get_num_threads()
    );
    let image = image::open(fixture().join("golden/input_rgba.png"))?;

    // Tiny fixture model (real weights).
    let tiny = TripoSr::from_dir(&fixture(), DType::F32, &dev)?;
    let codes = stages("tiny (144 input)", &tiny, &dev, repeats, &image)?;
    for res in [32, 64, 128] {
        let (ms, _) = time_ms(&dev, 1, || {
            Ok(tiny.density_grid_chunked(&codes, res, chunk)?)
        })?;
        println!(
            "tiny: density grid {res}^3 {ms:.0} ms ({:.2} M points/s)",
            (res * res * res) as f64 / ms / 1e3
        );
    }
    let camera = OrbitCamera::orbit(1, 0.0, 1.9, 40.0, 64, 64)[0];
    let (ms, _) = time_ms(&dev, 1, || Ok(tiny.render_view(&codes, &camera)?))?;
    println!("tiny: render 64x64 x 128 samples {ms:.0} ms");

    if std::env::var("ORFEAS_BENCH_FULL").as_deref() == Ok("0") {
        return Ok(());
    }
    // Full-size architecture, seeded random weights (PyTorch-like init scales,
    // so the density grid has structure and a surface like the official
    // model's own random init), one 512x512 RGBA image end to end.
    let full = fixture().join("full-size");
    let cfg = Config::from_files(
        &full.join("config.yaml"),
        &full.join("dino-vitb16-config.json"),
    )?;
    let seed = env_usize("ORFEAS_BENCH_SEED", 0) as u64;
    let t = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(RandomInit::new(seed)), DType::F32, dev.clone());
    let model = TripoSr::load(vb, &cfg)?;
    println!(
        "full: built with seeded random weights (seed {seed}) in {:.1} s, resident {:.0} MB",
        t.elapsed().as_secs_f64(),
        rss_mb().unwrap_or(f64::NAN)
    );
    let image = match std::env::var("ORFEAS_BENCH_IMAGE") {
        Ok(path) => image::open(path)?,
        Err(_) => image::DynamicImage::ImageRgba8(image::imageops::resize(
            &image.to_rgba8(),
            512,
            512,
            image::imageops::FilterType::Triangle,
        )),
    };
    let build_peak = peak_rss_mb().unwrap_or(f64::NAN);
    println!(
        "full: input image {}x{} RGBA; peak RSS so far (tiny model + build) {build_peak:.0} MB",
        image.width(),
        image.height()
    );
    let res = env_usize("ORFEAS_BENCH_GRID", 256);
    let mut table: Vec<(&str, f64, f64, f64)> = Vec::new();
    // CPU time (user + system, all threads) since the previous stage ended: less
    // sensitive than wall time to other processes sharing the cores.
    let mut stage = |name: &'static str, ms: f64, mark: &mut f64| {
        let peak = peak_rss_mb().unwrap_or(f64::NAN);
        let now = cpu_ms();
        let cpu = now - *mark;
        println!(
            "full stage: {name:<28} {ms:>10.1} ms wall {cpu:>10.0} ms CPU   peak RSS {peak:>7.0} MB   load {:.1}",
            load_avg()
        );
        table.push((name, ms, peak, cpu));
        reset_peak_rss();
        *mark = cpu_ms();
    };
    let total = Instant::now();
    reset_peak_rss();
    let mut cpu_mark = cpu_ms();
    let (ms, pixels) = time_ms(&dev, 1, || Ok(model.preprocess(&image, 0.85, &dev)?))?;
    stage("preprocess", ms, &mut cpu_mark);
    let (ms, tokens) = time_ms(&dev, 1, || Ok(model.image_tokens(&pixels)?))?;
    stage("image tokenizer", ms, &mut cpu_mark);
    let (ms, codes) = time_ms(&dev, 1, || {
        let planes = model.triplane_tokens(&tokens)?;
        Ok(model.scene_codes(&planes)?)
    })?;
    stage("backbone + post-processor", ms, &mut cpu_mark);
    let scene = codes.get(0)?.unsqueeze(0)?;
    let (ms, density) = time_ms(&dev, 1, || {
        Ok(model.density_grid_chunked(&scene, res, chunk)?)
    })?;
    stage("density grid query", ms, &mut cpu_mark);
    let (lo, hi) = density
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let level = if lo < 25.0 && hi > 25.0 {
        25.0
    } else {
        // Random weights: no surface at the official 25; take the 90th percentile.
        let mut sorted = density.clone();
        let k = sorted.len() * 9 / 10;
        *sorted.select_nth_unstable_by(k, f32::total_cmp).1
    };
    println!("full: density range [{lo:.4}, {hi:.4}], iso level {level:.4}");
    reset_peak_rss();
    cpu_mark = cpu_ms();
    let (ms, world) = time_ms(&dev, 1, || {
        let surface = extract_isosurface(&density, [res; 3], level)?;
        let radius = cfg.renderer.radius as f32;
        let scale = 2.0 * radius / (res - 1) as f32;
        let world: Vec<[f32; 3]> = surface
            .positions
            .iter()
            .map(|p| p.map(|x| x * scale - radius))
            .collect();
        Ok((world, surface.indices))
    })?;
    stage("marching cubes", ms, &mut cpu_mark);
    let (world, indices) = world;
    drop(density);
    println!(
        "full: mesh {} vertices, {} triangles",
        world.len(),
        indices.len() / 3
    );
    let (ms, colours) = time_ms(&dev, 1, || Ok(model.query_colors(&scene, &world)?))?;
    stage("vertex colours", ms, &mut cpu_mark);
    let out = std::env::temp_dir().join("orfeas-triposr-bench.glb");
    let mut indices = Some(indices);
    let (ms, bytes) = time_ms(&dev, 1, || {
        let mut mesh = Mesh {
            positions: world.iter().map(|&[x, y, z]| [y, z, x]).collect(),
            colors: colours
                .iter()
                .map(|c| {
                    let u = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    [u(c[0]), u(c[1]), u(c[2]), 255]
                })
                .collect(),
            indices: indices.take().unwrap_or_default(),
            ..Mesh::default()
        };
        mesh.compute_normals();
        export_mesh(&mesh, &out, ExportFormat::Glb)?;
        Ok(std::fs::metadata(&out)?.len())
    })?;
    stage("export GLB", ms, &mut cpu_mark);
    let total_ms = total.elapsed().as_secs_f64() * 1e3;
    println!("full: GLB {} ({:.1} MB)", out.display(), bytes as f64 / 1e6);
    println!(
        "full: 512 image -> {res}^3 grid -> mesh -> GLB total {:.1} s",
        total_ms / 1e3
    );
    let whole = table.iter().map(|r| r.2).fold(build_peak, f64::max);
    println!(
        "full: peak RSS over the whole run (max of the stage peaks and the build) {whole:.0} MB"
    );
    println!("| stage | wall ms | CPU ms | peak RSS MB |");
    for (name, ms, peak, cpu) in &table {
        println!("| {name} | {ms:.1} | {cpu:.0} | {peak:.0} |");
    }
    Ok(())
}
