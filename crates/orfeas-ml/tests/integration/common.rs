//! Shared helpers: fixture paths, golden tensors, error metrics.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use orfeas_ml::sd::pipeline::DevicePref;

/// The fixtures; `ORFEAS_ML_FIXTURES` overrides for test binaries run from another checkout (the GPU script).
pub fn fixture_dir() -> PathBuf {
    // Completed once per test process (the git copy keeps only the embedding
    // rows the tests use; see `orfeas_ml::fixture`).
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = match std::env::var_os("ORFEAS_ML_FIXTURES") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny"),
        };
        let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sd-tiny-ml");
        let _ = std::fs::remove_dir_all(&dst); // a previous run's copy
        orfeas_ml::fixture::complete_model_dir(&src, &dst).unwrap();
        dst
    })
    .clone()
}

/// The SDXL fixture, completed once per test process: embeddings rebuilt and
/// the SD fixture's BPE files copied into both tokenizer folders.
pub fn xl_fixture_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = fixture_root().join("sdxl-tiny");
        let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sdxl-tiny-ml");
        let _ = std::fs::remove_dir_all(&dst);
        let vocab = fixture_root().join("sd-tiny/tokenizer");
        orfeas_ml::fixture::complete_model_dir_with_vocab(&src, &dst, Some(&vocab)).unwrap();
        dst
    })
    .clone()
}

/// The folder holding `sd-tiny/` and `sdxl-tiny/` (`ORFEAS_ML_FIXTURES` names `sd-tiny` itself).
pub fn fixture_root() -> PathBuf {
    match std::env::var_os("ORFEAS_ML_FIXTURES") {
        Some(dir) => PathBuf::from(dir)
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// A golden tensor file of the SDXL fixture.
pub fn xl_golden(name: &str) -> HashMap<String, Tensor> {
    let path = xl_fixture_dir()
        .join("golden")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &dev())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `ORFEAS_TEST_DEVICE=cuda` runs the parity tests on the GPU (in f32); default CPU.
pub fn test_pref() -> DevicePref {
    std::env::var("ORFEAS_TEST_DEVICE")
        .ok()
        .map(|s| {
            s.parse()
                .expect("ORFEAS_TEST_DEVICE: cpu, cuda, cuda:N or metal")
        })
        .unwrap_or(DevicePref::Cpu)
}

pub fn dev() -> Device {
    orfeas_ml::sd::pipeline::select_device(test_pref())
        .expect("test device")
        .0
}

pub fn golden(name: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir()
        .join("golden")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &dev())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    map.get(key)
        .unwrap_or_else(|| panic!("golden tensor {key} missing"))
}

/// max |a - b| / max |b| (the README's tolerance metric), printed for the report.
pub fn rel_err(label: &str, a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "{label}: shape");
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let max_abs_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let max_b = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let rel = max_abs_diff / max_b.max(f32::MIN_POSITIVE);
    assert!(rel.is_finite(), "{label}: non-finite error");
    eprintln!("parity {label}: max|diff| = {max_abs_diff:.3e}, rel = {rel:.3e}");
    rel
}

/// max |t| in f32 (any float dtype).
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn assert_close(label: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let rel = rel_err(label, a, b);
    assert!(
        rel <= tol,
        "{label}: relative error {rel:.3e} exceeds {tol:.0e}"
    );
}

pub fn scalar(map: &HashMap<String, Tensor>, key: &str) -> f64 {
    get(map, key)
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0] as f64
}

/// Compares two pictures channel by channel: (values that differ, largest difference).
pub fn pixel_diff(got: &image::RgbImage, want: &image::RgbImage) -> (usize, u8) {
    assert_eq!(got.dimensions(), want.dimensions(), "picture sizes differ");
    got.as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .filter(|&d| d > 0)
        .fold((0, 0), |(n, max), d| (n + 1, max.max(d)))
}

/// Asserts `got` is diffusers' PNG at `want_png` up to rounding: at most 20
/// channel values off, by at most 1 (a value exactly on .5 may round either way).
pub fn assert_png_close(label: &str, got: &image::RgbImage, want_png: &std::path::Path) {
    let want = image::open(want_png)
        .unwrap_or_else(|e| panic!("{}: {e}", want_png.display()))
        .to_rgb8();
    let (differ, max) = pixel_diff(got, &want);
    eprintln!("parity {label}: {differ} channel values differ, max {max}");
    assert!(
        max <= 1 && differ <= 20,
        "{label}: {differ} values differ, max {max}"
    );
}

/// One generation of the tiny models from diffusers' stored noise, 96×64.
pub fn stored_noise_request(
    prompt: &str,
    steps: usize,
    guidance: f64,
    scheduler: Option<orfeas_ml::sd::schedulers::SchedulerKind>,
    noise: &Tensor,
) -> orfeas_ml::sd::pipeline::GenerateRequest {
    orfeas_ml::sd::pipeline::GenerateRequest {
        prompt: prompt.into(),
        negative: String::new(),
        steps,
        guidance,
        seed: 0,
        width: 96,
        height: 64,
        batch: 1,
        scheduler,
        init_noise: Some(noise.clone()),
        init_image: None,
        decode: orfeas_ml::sd::pipeline::DecodeMode::Full,
        tiny_decoder: None,
        previews: false,
    }
}
