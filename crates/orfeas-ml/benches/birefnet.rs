//! BiRefNet per-stage times: the tiny fixture model at its own size, then the
//! full-size BiRefNet_lite architecture (Swin-T) with seeded random weights at
//! 1024², with the process's peak RSS.
//!
//! `cargo bench -p orfeas-ml --bench birefnet` (CPU). Environment:
//! ORFEAS_BENCH_SIZE (lite input side, default 1024; a multiple of 32),
//! ORFEAS_BENCH_REPEATS (tiny-model repeats, default 5),
//! ORFEAS_BENCH_LITE_REPEATS (lite-model repeats, default 1), ORFEAS_BENCH_LITE=0 skips the lite model,
//! ORFEAS_BENCH_IMAGE (the lite model's picture, default `assets/examples/mug-on-table.png`),
//! ORFEAS_BENCH_WEIGHTS (a BiRefNet_lite safetensors in the official names to use instead of
//! the seeded random weights, e.g. the ones `scripts/bench/birefnet_pytorch.py --save-weights`
//! wrote), ORFEAS_BENCH_REFERENCE (that script's `--save-output` file: the official code's
//! input, logits and mask, compared with ours as max abs differences).
//! `scripts/bench/birefnet-cpu-vs-pytorch.sh` runs both sides on the same weights and picture.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use orfeas_ml::birefnet::{BiRefNet, Config, Trace, preprocess};
use rand::SeedableRng;
use rand_distr::Distribution;

#[path = "support/proc_status.rs"]
#[allow(dead_code)] // minor_faults is for the SD bench
mod proc_status;
use proc_status::peak_rss_mib;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/birefnet-tiny")
}

/// Median milliseconds of `repeats` runs.
fn time_ms<T>(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(f64, T)> {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let out = last.ok_or_else(|| anyhow::anyhow!("no run"))?;
    Ok((times[times.len() / 2], out))
}

/// Seeded random weights of plausible scale: normal / √fan_in for weights,
/// small biases, BatchNorm / LayerNorm near identity.
#[derive(Clone)]
struct SeededRandom(Arc<Mutex<rand::rngs::StdRng>>);

impl candle_nn::var_builder::SimpleBackend for SeededRandom {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let n = s.elem_count();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let normal = rand_distr::StandardNormal;
        let mut rng = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("rng lock poisoned".into()))?;
        let mut draw = |scale: f32, offset: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let v: f32 = normal.sample(&mut *rng);
                    offset + scale * v
                })
                .collect()
        };
        let data = match (leaf, dims.len()) {
            ("running_var", _) => draw(0.1, 1.0).into_iter().map(f32::abs).collect(),
            ("running_mean", _) | ("bias", _) => draw(0.05, 0.0),
            ("weight", 1) => draw(0.1, 1.0),
            ("relative_position_bias_table", _) => draw(0.02, 0.0),
            _ => draw(1.0 / (fan_in as f32).sqrt(), 0.0),
        };
        Tensor::from_vec(data, dims, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked read of {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Times each stage of one model at `size_hw`; returns the model input and the
/// logits of the whole forward.
fn stages(
    label: &str,
    model: &BiRefNet,
    image: &image::DynamicImage,
    size_hw: (usize, usize),
    repeats: usize,
) -> anyhow::Result<(Tensor, Tensor)> {
    let dev = Device::Cpu;
    let (pre_ms, x) = time_ms(repeats, || Ok(BiRefNet::preprocess(image, size_hw, &dev)?))?;
    let (bb_ms, _) = time_ms(repeats, || Ok(model.backbone().forward(&x)?))?;
    let (enc_ms, feats) = time_ms(repeats, || Ok(model.encode(&x, &mut Trace::off())?))?;
    let [x1, x2, x3, x4] = feats;
    let (sq_ms, x4) = time_ms(repeats, || {
        Ok(model
            .squeeze_module()
            .forward_traced(&x4, "squeeze_module.0", &mut Trace::off())?)
    })?;
    let feats = [x1, x2, x3, x4];
    let (dec_ms, _) = time_ms(repeats, || {
        Ok(model
            .decoder()
            .forward_traced(&x, &feats, &mut Trace::off())?)
    })?;
    let (fwd_ms, logits) = time_ms(repeats, || Ok(model.forward(&x)?))?;
    let (post_ms, mask) = time_ms(repeats, || {
        let m = candle_nn::ops::sigmoid(&logits)?;
        let small = preprocess::mask_to_u8(&m)?;
        Ok(preprocess::resize_mask_u8(
            &small,
            (image.height() as usize, image.width() as usize),
        ))
    })?;
    let (total_ms, _) = time_ms(1, || Ok(model.mask(image, size_hw)?))?;
    println!(
        "{label} at {}x{} (picture {}x{}, median of {repeats}):",
        size_hw.0,
        size_hw.1,
        image.width(),
        image.height()
    );
    println!("  preprocess   {pre_ms:10.1} ms");
    println!("  backbone ×1  {bb_ms:10.1} ms");
    println!(
        "  encoder      {enc_ms:10.1} ms  (backbone on the input and the ×0.5 pyramid, cat, context)"
    );
    println!("  squeeze      {sq_ms:10.1} ms");
    println!("  decoder      {dec_ms:10.1} ms");
    println!("  forward      {fwd_ms:10.1} ms  (encoder + squeeze + decoder)");
    println!("  postprocess  {post_ms:10.1} ms");
    println!(
        "  mask() total {total_ms:10.1} ms  (mask {}x{})",
        mask.width(),
        mask.height()
    );
    println!("  peak RSS     {:10.1} MiB", peak_rss_mib());
    Ok((x, logits))
}

/// Max abs differences of our input, logits and mask from the official code's.
fn compare(reference: &std::path::Path, x: &Tensor, logits: &Tensor) -> anyhow::Result<()> {
    let theirs = candle_core::safetensors::load(reference, &Device::Cpu)?;
    let get = |name: &str| {
        theirs
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("{} has no tensor '{name}'", reference.display()))
    };
    let max_abs = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    };
    let mask = candle_nn::ops::sigmoid(logits)?;
    println!(
        "  vs official: max |Δ| input {:.3e}, logits {:.3e}, mask {:.3e} (logits std {:.3})",
        max_abs(x, get("input")?)?,
        max_abs(logits, get("logits")?)?,
        max_abs(&mask, get("mask")?)?,
        get("logits")?
            .flatten_all()?
            .var(0)?
            .sqrt()?
            .to_scalar::<f32>()?
    );
    Ok(())
}

/// Large blocks on transparent huge pages (`orfeas_ml::memory`).
#[global_allocator]
static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;

fn main() -> anyhow::Result<()> {
    orfeas_ml::memory::keep_freed_memory();
    orfeas_ml::memory::huge_pages_from_env();
    let repeats: usize = env_or("ORFEAS_BENCH_REPEATS", 5);
    let image = image::open(fixture().join("golden/input.png"))?;
    let tiny = BiRefNet::from_dir(&fixture(), DType::F32, &Device::Cpu)?;
    let tiny_size = orfeas_ml::birefnet::default_input_size(&fixture())?;
    stages("tiny fixture model", &tiny, &image, tiny_size, repeats)?;

    if std::env::var("ORFEAS_BENCH_LITE").as_deref() == Ok("0") {
        return Ok(());
    }
    let side: usize = env_or("ORFEAS_BENCH_SIZE", 1024);
    let text = std::fs::read_to_string(fixture().join("full-size/BiRefNet_lite.config.json"))?;
    let cfg = Config::from_json_str(&text).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let (vb, weights) = match std::env::var_os("ORFEAS_BENCH_WEIGHTS") {
        Some(path) => {
            let path = PathBuf::from(path);
            let vb = orfeas_ml::sd::weights::load_weights(
                std::slice::from_ref(&path),
                DType::F32,
                &Device::Cpu,
            )?;
            (vb, format!("weights from {}", path.display()))
        }
        None => {
            let rng = rand::rngs::StdRng::seed_from_u64(2024);
            let backend = SeededRandom(Arc::new(Mutex::new(rng)));
            let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
            (vb, "seeded random weights".to_owned())
        }
    };
    let lite = BiRefNet::load(vb, &cfg)?;
    println!(
        "BiRefNet_lite (Swin-T, {weights}) built in {:.1} s, peak RSS {:.1} MiB",
        t.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    let photo_path = std::env::var_os("ORFEAS_BENCH_IMAGE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/examples/mug-on-table.png"),
        PathBuf::from,
    );
    let photo =
        image::open(&photo_path).map_err(|e| anyhow::anyhow!("{}: {e}", photo_path.display()))?;
    let lite_repeats: usize = env_or("ORFEAS_BENCH_LITE_REPEATS", 1);
    let (x, logits) = stages("BiRefNet_lite", &lite, &photo, (side, side), lite_repeats)?;
    if let Some(reference) = std::env::var_os("ORFEAS_BENCH_REFERENCE") {
        compare(std::path::Path::new(&reference), &x, &logits)?;
    }
    Ok(())
}
