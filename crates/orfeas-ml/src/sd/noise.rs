//! Seeded Gaussian noise generated on the CPU, so a seed gives the same image on every device.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// A reproducible standard-normal source (ChaCha-based `StdRng`).
pub struct NoiseRng(rand::rngs::StdRng);

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        Self(rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// A tensor of `shape` filled with N(0, 1) f32 samples, moved to `device`.
    pub fn normal(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut self.0)).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
    }
}

/// Initial latents for a batch: image `i` uses seed `seed + i`, so image 3 of a
/// batch is the same picture as a single run with seed + 3.
pub fn initial_noise(
    seed: u64,
    batch: usize,
    latent_shape: (usize, usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let (c, h, w) = latent_shape;
    let parts = (0..batch)
        .map(|i| NoiseRng::new(seed.wrapping_add(i as u64)).normal(&[1, c, h, w], device))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}
