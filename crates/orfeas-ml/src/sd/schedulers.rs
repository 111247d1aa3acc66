//! Noise schedulers behind one trait: Euler, Euler ancestral, DDIM, DPM-Solver++ (2M).
//!
//! Scalars are computed in f32 where diffusers keeps them in f32 tensors, so
//! that each step lands within a few ulps of the reference.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::error::{Result, SdError};

/// One scheduler run: fixed timesteps after construction, stepped in order.
pub trait Scheduler: Send {
    /// The UNet timestep of each step, in order.
    fn timesteps(&self) -> &[f64];
    /// What the initial unit noise is multiplied by.
    fn init_noise_sigma(&self) -> f64;
    /// Scales the UNet input at step `i` (Euler: divide by sqrt(sigma²+1)).
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor>;
    /// Advances `sample` from step `i` given the (guided) model output.
    fn step(&mut self, model_output: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor>;
    /// Noises clean latents to the level step `i` starts from (image→image).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor>;
}

/// Image→image: the step a run starts from when `strength` of the `steps`
/// is kept (diffusers: `init_timestep = min(int(steps × strength), steps)`,
/// start = steps − init_timestep). Errors when no step would run.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    let kept = ((steps as f64 * strength) as usize).min(steps);
    if kept == 0 {
        return Err(SdError::invalid(
            "strength",
            format!(
                "{strength} of {steps} steps leaves no step to run; raise the strength or the steps"
            ),
        ));
    }
    Ok(steps - kept)
}

/// Which scheduler: the one set of names lives with the requests in `orfeas-core`.
pub use orfeas_core::request::SchedulerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

/// Mirrors `scheduler/scheduler_config.json` (the fields the four schedulers read).
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_pred")]
    pub prediction_type: Prediction,
    /// `None` means the scheduler's own default (DDIM: leading, others: linspace).
    #[serde(default)]
    pub timestep_spacing: Option<Spacing>,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
}

fn d_beta_start() -> f64 {
    0.00085
}
fn d_beta_end() -> f64 {
    0.012
}
fn d_schedule() -> String {
    "scaled_linear".into()
}
fn d_train() -> usize {
    1000
}
fn d_pred() -> Prediction {
    Prediction::Epsilon
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            beta_start: d_beta_start(),
            beta_end: d_beta_end(),
            beta_schedule: d_schedule(),
            num_train_timesteps: d_train(),
            prediction_type: Prediction::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: None,
        }
    }
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::sd::read_config(path)
    }

    /// The scheduler the checkpoint was published with.
    pub fn default_kind(&self) -> SchedulerKind {
        self.class_name
            .as_deref()
            .map_or(SchedulerKind::Euler, SchedulerKind::from_class_name)
    }

    /// `torch.linspace` in f32 (it fills the two halves from either end).
    fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
        if n == 1 {
            return vec![start];
        }
        let step = (end - start) / (n - 1) as f32;
        let half = n / 2;
        (0..n)
            .map(|i| {
                if i < half {
                    start + step * i as f32
                } else {
                    end - step * (n - i - 1) as f32
                }
            })
            .collect()
    }

    /// `cumprod(1 - betas)` in f32 as diffusers computes it.
    pub fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match self.beta_schedule.as_str() {
            "scaled_linear" => Self::linspace_f32(
                (self.beta_start as f32).sqrt(),
                (self.beta_end as f32).sqrt(),
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            "linear" => Self::linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
            other => {
                return Err(SdError::invalid(
                    "scheduler.beta_schedule",
                    format!("'{other}' is not supported (scaled_linear, linear)"),
                ));
            }
        };
        let mut acc = 1f32;
        Ok(betas
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect())
    }
}

/// Validated scheduler inputs shared by the constructors.
fn check_steps(steps: usize, train: usize) -> Result<()> {
    if steps == 0 || steps > train {
        return Err(SdError::invalid(
            "steps",
            format!("{steps} is outside 1..={train} (the model's training timesteps)"),
        ));
    }
    Ok(())
}

/// Integer-valued timesteps as diffusers' `set_timesteps` computes them (descending).
fn spaced_timesteps(
    spacing: Spacing,
    steps: usize,
    train: usize,
    offset: usize,
    extra: usize,
) -> Vec<f64> {
    // `extra` = 1 for DPM-Solver, which spaces n+1 points and drops the last.
    let n = steps + extra;
    let mut t: Vec<f64> = match spacing {
        Spacing::Linspace => (0..n)
            .map(|i| {
                if n == 1 {
                    0.0
                } else {
                    (i as f64 * (train - 1) as f64 / (n - 1) as f64).round()
                }
            })
            .rev()
            .collect(),
        Spacing::Leading => {
            let ratio = train / n;
            (0..n).map(|i| (i * ratio + offset) as f64).rev().collect()
        }
        Spacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            (0..steps)
                .map(|i| (train as f64 - i as f64 * ratio).round() - 1.0)
                .collect()
        }
    };
    if spacing != Spacing::Trailing {
        t.truncate(steps);
    }
    t
}

/// Same as `spaced_timesteps` but without rounding for Euler's linspace (float timesteps).
fn euler_timesteps(spacing: Spacing, steps: usize, train: usize, offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => (0..steps)
            .map(|i| {
                if steps == 1 {
                    0.0
                } else {
                    i as f64 * (train - 1) as f64 / (steps - 1) as f64
                }
            })
            .rev()
            .collect(),
        _ => spaced_timesteps(spacing, steps, train, offset, 0),
    }
}

/// `np.interp` of the training sigmas at (possibly fractional) timesteps.
fn interp_sigmas(train_sigmas: &[f32], timesteps: &[f64]) -> Vec<f64> {
    let last = train_sigmas.len().saturating_sub(1);
    timesteps
        .iter()
        .map(|&t| {
            let t = t.clamp(0.0, last as f64);
            let lo = t.floor() as usize;
            let hi = (lo + 1).min(last);
            let frac = t - lo as f64;
            let a = train_sigmas.get(lo).copied().unwrap_or(0.0) as f64;
            let b = train_sigmas.get(hi).copied().unwrap_or(0.0) as f64;
            a + (b - a) * frac
        })
        .collect()
}

fn train_sigmas(ac: &[f32]) -> Vec<f32> {
    ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// Tensor ÷ scalar as a real division (not a multiply by the reciprocal), in the tensor's dtype.
fn div(t: &Tensor, s: f32) -> Result<Tensor> {
    let s = Tensor::new(s, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&s)?)
}

fn mul(t: &Tensor, s: f32) -> Result<Tensor> {
    let s = Tensor::new(s, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_mul(&s)?)
}

/// Builds a scheduler of `kind` for `steps` steps. `noise_seed` feeds Euler ancestral's per-step noise.
pub fn build(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    steps: usize,
    noise_seed: u64,
) -> Result<Box<dyn Scheduler>> {
    check_steps(steps, cfg.num_train_timesteps)?;
    let ac = cfg.alphas_cumprod()?;
    Ok(match kind {
        SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
            let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Linspace);
            let timesteps =
                euler_timesteps(spacing, steps, cfg.num_train_timesteps, cfg.steps_offset);
            let mut sigmas: Vec<f32> = interp_sigmas(&train_sigmas(&ac), &timesteps)
                .into_iter()
                .map(|s| s as f32)
                .collect();
            sigmas.push(0.0);
            let max = sigmas.iter().copied().fold(0f32, f32::max);
            let init = if matches!(spacing, Spacing::Linspace | Spacing::Trailing) {
                max
            } else {
                (max * max + 1.0).sqrt()
            };
            let euler = Euler {
                timesteps,
                sigmas,
                init_noise_sigma: init as f64,
                prediction: cfg.prediction_type,
                ancestral: None,
            };
            if kind == SchedulerKind::EulerAncestral {
                Box::new(Euler {
                    ancestral: Some(crate::sd::noise::NoiseRng::new(noise_seed)),
                    ..euler
                })
            } else {
                Box::new(euler)
            }
        }
        SchedulerKind::Ddim => {
            let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Leading);
            let timesteps =
                spaced_timesteps(spacing, steps, cfg.num_train_timesteps, cfg.steps_offset, 0);
            let final_alpha = if cfg.set_alpha_to_one.unwrap_or(true) {
                1.0
            } else {
                ac.first().copied().unwrap_or(1.0)
            };
            Box::new(Ddim {
                timesteps,
                ac,
                final_alpha,
                step_ratio: cfg.num_train_timesteps / steps,
                prediction: cfg.prediction_type,
            })
        }
        SchedulerKind::DpmSolverPp2m => {
            let spacing = cfg.timestep_spacing.unwrap_or(Spacing::Linspace);
            let timesteps =
                spaced_timesteps(spacing, steps, cfg.num_train_timesteps, cfg.steps_offset, 1);
            let mut sigmas = interp_sigmas(&train_sigmas(&ac), &timesteps);
            sigmas.push(0.0);
            Box::new(DpmPp2m {
                timesteps,
                sigmas,
                prediction: cfg.prediction_type,
                prev_x0: None,
            })
        }
    })
}

/// `EulerDiscreteScheduler` (s_churn = 0), optionally ancestral.
struct Euler {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction: Prediction,
    ancestral: Option<crate::sd::noise::NoiseRng>,
}

impl Euler {
    fn sigma(&self, i: usize) -> Result<(f32, f32)> {
        match (self.sigmas.get(i), self.sigmas.get(i + 1)) {
            (Some(&s), Some(&n)) => Ok((s, n)),
            _ => Err(past_schedule(i)),
        }
    }

    fn x0(&self, out: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
        Ok(match self.prediction {
            Prediction::Epsilon => (sample - mul(out, sigma)?)?,
            Prediction::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                (mul(out, -sigma / s2.sqrt())? + div(sample, s2)?)?
            }
        })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let (sigma, _) = self.sigma(i)?;
        div(sample, (sigma * sigma + 1.0).sqrt())
    }
    fn step(&mut self, model_output: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        let (sigma, next) = self.sigma(i)?;
        let in_dtype = sample.dtype();
        let sample = sample.to_dtype(DType::F32)?;
        let out = model_output.to_dtype(DType::F32)?;
        let x0 = self.x0(&out, &sample, sigma)?;
        let derivative = div(&(&sample - &x0)?, sigma)?;
        let prev = match &mut self.ancestral {
            None => (&sample + mul(&derivative, next - sigma)?)?,
            Some(rng) => {
                let (s2, n2) = (sigma * sigma, next * next);
                let up = (n2 * (s2 - n2) / s2).max(0.0).sqrt();
                let down = (n2 - up * up).max(0.0).sqrt();
                let prev = (&sample + mul(&derivative, down - sigma)?)?;
                let noise = rng.normal(sample.dims(), sample.device())?;
                (prev + mul(&noise, up)?)?
            }
        };
        Ok(prev.to_dtype(in_dtype)?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let (sigma, _) = self.sigma(i)?;
        Ok((original + mul(noise, sigma)?)?)
    }
}

/// The error for a step index beyond the scheduler's timesteps.
fn past_schedule(i: usize) -> SdError {
    SdError::invalid("step", format!("step {i} is past the schedule"))
}

/// `DDIMScheduler` with eta = 0.
struct Ddim {
    timesteps: Vec<f64>,
    ac: Vec<f32>,
    final_alpha: f32,
    step_ratio: usize,
    prediction: Prediction,
}

impl Ddim {
    /// The training timestep of step `i`.
    fn timestep(&self, i: usize) -> Result<usize> {
        let t = self
            .timesteps
            .get(i)
            .copied()
            .ok_or_else(|| past_schedule(i))?;
        Ok(t as usize)
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
    fn step(&mut self, model_output: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        let t = self.timestep(i)?;
        let a_t = self.ac.get(t).copied().unwrap_or(self.final_alpha);
        let a_prev = t
            .checked_sub(self.step_ratio)
            .and_then(|p| self.ac.get(p).copied())
            .unwrap_or(self.final_alpha);
        let beta_t = 1.0 - a_t;
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => (
                div(&(sample - mul(model_output, beta_t.sqrt())?)?, a_t.sqrt())?,
                model_output.clone(),
            ),
            Prediction::VPrediction => (
                (mul(sample, a_t.sqrt())? - mul(model_output, beta_t.sqrt())?)?,
                (mul(model_output, a_t.sqrt())? + mul(sample, beta_t.sqrt())?)?,
            ),
        };
        Ok((mul(&x0, a_prev.sqrt())? + mul(&eps, (1.0 - a_prev).sqrt())?)?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        let t = self.timestep(i)?;
        let a = self.ac.get(t).copied().unwrap_or(self.final_alpha);
        Ok((mul(original, a.sqrt())? + mul(noise, (1.0 - a).sqrt())?)?)
    }
}

/// `DPMSolverMultistepScheduler`, algorithm dpmsolver++, order 2, midpoint, final sigma 0.
struct DpmPp2m {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: Prediction,
    prev_x0: Option<Tensor>,
}

impl DpmPp2m {
    /// (alpha_t, sigma_t, lambda_t) of sigma index `i`.
    fn coeffs(&self, i: usize) -> (f64, f64, f64) {
        let s = self.sigmas.get(i).copied().unwrap_or(0.0);
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        let sigma = s * alpha;
        (alpha, sigma, alpha.ln() - sigma.ln())
    }
}

impl Scheduler for DpmPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&self, sample: &Tensor, _i: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }
    fn step(&mut self, model_output: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
        if i >= self.timesteps.len() {
            return Err(past_schedule(i));
        }
        let in_dtype = sample.dtype();
        let sample = sample.to_dtype(DType::F32)?;
        let out = model_output.to_dtype(DType::F32)?;
        let (alpha_s, sigma_s, lambda_s) = self.coeffs(i);
        let x0 = match self.prediction {
            Prediction::Epsilon => ((&sample - (&out * sigma_s)?)? / alpha_s)?,
            Prediction::VPrediction => ((&sample * alpha_s)? - (&out * sigma_s)?)?,
        };
        let (alpha_t, sigma_t, lambda_t) = self.coeffs(i + 1);
        let h = lambda_t - lambda_s;
        let em1 = (-h).exp() - 1.0;
        let last = i + 1 == self.timesteps.len();
        let first_order = (&sample * (sigma_t / sigma_s))? - (&x0 * (alpha_t * em1))?;
        // The last step goes to sigma 0, where the second-order term is undefined
        // (diffusers: final_sigmas_type "zero" forces first order there too).
        let prev = match (&self.prev_x0, last) {
            (Some(m1), false) => {
                let (_, _, lambda_s1) = self.coeffs(i.saturating_sub(1));
                let r0 = (lambda_s - lambda_s1) / h;
                let d1 = ((&x0 - m1)? * (1.0 / r0))?;
                (first_order? - (d1 * (0.5 * alpha_t * em1))?)?
            }
            _ => first_order?,
        };
        self.prev_x0 = Some(x0);
        Ok(prev.to_dtype(in_dtype)?)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        if i >= self.timesteps.len() {
            return Err(past_schedule(i));
        }
        let (alpha, sigma, _) = self.coeffs(i);
        Ok((mul(original, alpha as f32)? + mul(noise, sigma as f32)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_timesteps_match_sd_turbo() {
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 2, 1000, 1, 0),
            vec![999.0, 499.0]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 1, 1000, 1, 0),
            vec![999.0]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Leading, 2, 1000, 1, 0),
            vec![501.0, 1.0]
        );
    }

    #[test]
    fn scheduler_names_round_trip() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>().ok(), Some(k));
        }
        assert!("pndm-ish".parse::<SchedulerKind>().is_err());
    }
}
