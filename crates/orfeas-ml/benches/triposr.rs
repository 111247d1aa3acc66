//! TripoSR stage times: the tiny fixture model, then the full-size
//! architecture (stabilityai/TripoSR config.yaml, zero weights: the same work
//! as real ones) at 512 input and its 256³ density grid.
//!
//! `cargo bench -p orfeas-ml --bench triposr` (add `--profile dev` to reuse the
//! dev build; dependencies are optimised there too). Environment:
//! ORFEAS_BENCH_DEVICE (auto|cpu|cuda|metal; default auto), ORFEAS_BENCH_FULL
//! (0 skips the full-size model), ORFEAS_BENCH_GRID (full-size grid resolution,
//! default 256), ORFEAS_BENCH_CHUNK (points per chunk, default
//! `DEFAULT_CHUNK_POINTS`), ORFEAS_BENCH_REPEATS (tiny model; default 5).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use orfeas_ml::sd::pipeline::{DevicePref, select_device};
use orfeas_ml::triposr::field::{Triplane, grid_point};
use orfeas_ml::triposr::{Config, DEFAULT_CHUNK_POINTS, OrbitCamera, TripoSr};

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

fn main() -> anyhow::Result<()> {
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
    // Full-size architecture, zero weights (matmul cost does not depend on the values).
    let full = fixture().join("full-size");
    let cfg = Config::from_files(
        &full.join("config.yaml"),
        &full.join("dino-vitb16-config.json"),
    )?;
    let t = Instant::now();
    let model = TripoSr::load(VarBuilder::zeros(DType::F32, &dev), &cfg)?;
    println!(
        "full: built in {:.1} s, resident {:.0} MB",
        t.elapsed().as_secs_f64(),
        rss_mb().unwrap_or(f64::NAN)
    );
    reset_peak_rss();
    let codes = stages("full (512 input)", &model, &dev, 1, &image)?;
    println!(
        "full: scene codes {:?}, peak resident during the forward {:.0} MB",
        codes.dims(),
        peak_rss_mb().unwrap_or(f64::NAN)
    );
    let res = env_usize("ORFEAS_BENCH_GRID", 256);
    let triplane = Triplane::new(&codes)?;
    // Where one chunk's time goes: grid points + triplane sampling, then the MLP.
    let points: Vec<[f32; 3]> = (0..chunk.min(res * res * res))
        .map(|n| grid_point(n, res, cfg.renderer.radius))
        .collect();
    let field = model.field();
    let (feat_ms, features) =
        time_ms(&dev, 1, || Ok(field.triplane_features(&triplane, &points)?))?;
    let (mlp_ms, _) = time_ms(&dev, 1, || Ok(model.decoder().forward(&features)?))?;
    println!(
        "full: one chunk of {} points: triplane sampling {feat_ms:.0} ms, MLP {mlp_ms:.0} ms",
        points.len()
    );
    let before = rss_mb().unwrap_or(f64::NAN);
    reset_peak_rss();
    let (ms, grid) = time_ms(&dev, 1, || {
        Ok(model.field().density_grid(&triplane, res, chunk)?)
    })?;
    let peak = peak_rss_mb().unwrap_or(f64::NAN);
    println!(
        "full: density grid {res}^3 ({} points) {:.1} s ({:.2} M points/s); peak resident {peak:.0} MB = \
         {before:.0} MB before + {:.0} MB (of which the {:.0} MB output)",
        grid.len(),
        ms / 1e3,
        grid.len() as f64 / ms / 1e3,
        peak - before,
        (grid.len() * 4) as f64 / 1e6 / 1.048_576
    );
    Ok(())
}
