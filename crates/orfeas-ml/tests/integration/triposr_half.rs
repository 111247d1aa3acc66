//! TripoSR in f16 (what a GPU build would run for speed): how far it is from
//! the f32 goldens. It is NOT within the README's 1e-5 (f16 keeps ~3 decimal
//! digits); these bounds are what f16 reaches on the tiny model (scene codes
//! ~1.5e-3, density ~4e-3 relative), with 3x headroom. A density grid for a
//! mesh should come from f32: on this noisy random field f16 moves ~2% of the
//! cells across the marching-cubes threshold.

use candle_core::{DType, Device};
use orfeas_ml::triposr::TripoSr;

use super::triposr_parity::{fixture, golden};
use crate::common::{assert_close, get};

#[test]
fn f16_scene_codes_and_density_stay_close_to_the_f32_goldens() {
    // candle's CPU backend has f16 matmuls (not bf16), so this runs anywhere.
    let model = TripoSr::from_dir(&fixture(), DType::F16, &Device::Cpu).unwrap();
    let pixels = get(&golden("preprocess"), "pixel_values")
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    let codes = model.forward(&pixels).unwrap();
    assert_eq!(codes.dtype(), DType::F16);
    let want_codes = get(&golden("scene_codes"), "scene_codes")
        .to_device(&Device::Cpu)
        .unwrap();
    assert_close("f16 scene_codes", &codes, &want_codes, 5e-3);

    let grid = model.density_grid(&codes, 32).unwrap();
    let want: Vec<f32> = get(&golden("density_grid"), "density_act")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let rel = grid
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / b)
        .fold(0f32, f32::max);
    let flips = grid
        .iter()
        .zip(&want)
        .filter(|(a, b)| (**a > 25.0) != (**b > 25.0))
        .count();
    eprintln!(
        "f16 density grid: max rel {rel:.3e}, {flips} of {} cells across 25.0",
        want.len()
    );
    assert!(rel <= 1.2e-2, "f16 density relative error {rel:.3e}");
    assert!(
        flips * 100 <= want.len() * 5,
        "{flips} cells changed side of the threshold"
    );
}
