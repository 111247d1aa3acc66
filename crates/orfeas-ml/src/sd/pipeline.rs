//! The text→image stages, each usable (and tested) on its own, and `generate` which chains them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{D, DType, Device, Tensor};

use super::clip::{ClipConfig, ClipTextModel};
use super::schedulers::{self, Scheduler, SchedulerConfig, SchedulerKind};
use super::tokenizer::ClipTokenizer;
use super::unet::{AddedCond, UNet, UNetConfig};
use super::vae::{Vae, VaeConfig};
use super::weights::{load_weights, weight_files, weights_err};
use crate::error::{Result, SdError};

/// Which device to run on; `Auto` picks CUDA, then Metal, then the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePref {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl std::str::FromStr for DevicePref {
    type Err = SdError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "metal" => Ok(Self::Metal),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    SdError::invalid(
                        "device",
                        format!("'{s}' is not one of auto, cpu, cuda, cuda:N, metal"),
                    )
                }),
        }
    }
}

/// Number format of the weights and activations (named with the requests in `orfeas-core`).
pub use orfeas_core::request::Precision;

/// The dtype `precision` gives on `device`: `auto` is f16 on GPUs and f32 on the CPU.
pub fn dtype_for(precision: Precision, device: &Device) -> DType {
    match precision {
        Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
        Precision::Auto if device.is_cpu() => DType::F32,
        Precision::Auto => DType::F16,
    }
}

/// The device and the dtype used on it: f16 on GPUs, f32 on the CPU.
pub fn select_device(pref: DevicePref) -> Result<(Device, DType)> {
    let gpu = |d: Device| (d, DType::F16);
    match pref {
        DevicePref::Cpu => Ok((Device::Cpu, DType::F32)),
        DevicePref::Cuda(i) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(SdError::DeviceUnavailable(format!("cuda:{i}")));
            }
            Ok(gpu(Device::new_cuda(i)?))
        }
        DevicePref::Metal => {
            if !candle_core::utils::metal_is_available() {
                return Err(SdError::DeviceUnavailable("metal".into()));
            }
            Ok(gpu(Device::new_metal(0)?))
        }
        DevicePref::Auto => {
            if candle_core::utils::cuda_is_available()
                && let Ok(d) = Device::new_cuda(0)
            {
                return Ok(gpu(d));
            }
            if candle_core::utils::metal_is_available()
                && let Ok(d) = Device::new_metal(0)
            {
                return Ok(gpu(d));
            }
            Ok((Device::Cpu, DType::F32))
        }
    }
}

/// Turns candle's allocation failures into a message that says what to try.
pub(crate) fn map_oom(err: SdError, device: &Device) -> SdError {
    if let SdError::Candle(e) = &err {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("out of memory")
            || text.contains("out_of_memory")
            || text.contains("alloc")
        {
            return SdError::OutOfMemory {
                device: format!("{device:?}"),
                detail: e.to_string(),
            };
        }
    }
    err
}

const TEXT_ENCODER_FILES: &[&str] = &["model.safetensors", "model.fp16.safetensors"];
const DIFFUSERS_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// SDXL's second tokenizer and text encoder (OpenCLIP bigG with projection).
#[derive(Debug)]
pub struct SecondEncoder {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
}

/// A loaded diffusers-format Stable Diffusion folder (SD 1.x/2.x, or SDXL
/// when the UNet asks for `text_time` added conditioning).
#[derive(Debug)]
pub struct SdModel {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL only.
    pub second: Option<SecondEncoder>,
    pub unet: UNet,
    pub vae: Vae,
    /// The VAE runs in f32 when its config forces an upcast (SDXL in f16).
    pub vae_dtype: DType,
    pub scheduler_config: SchedulerConfig,
    /// SDXL: an empty negative prompt means zero unconditional embeddings
    /// (`force_zeros_for_empty_prompt` in model_index.json, default true).
    pub force_zeros_for_empty_prompt: bool,
    pub device: Device,
    pub dtype: DType,
}

/// `model_index.json`'s pipeline flag; SDXL pipelines default it to true.
fn force_zeros_for_empty_prompt(dir: &Path) -> Result<bool> {
    let path = dir.join("model_index.json");
    if !path.is_file() {
        return Ok(true);
    }
    let index: serde_json::Value = crate::sd::read_config(&path)?;
    Ok(index
        .get("force_zeros_for_empty_prompt")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true))
}

impl SdModel {
    /// Whether the folder is an SDXL one (its UNet takes `text_time` conditioning).
    /// For a single file, from its tensor names.
    pub fn dir_is_xl(dir: &Path) -> Result<bool> {
        if super::single_file::is_single_file(dir) {
            return Ok(super::single_file::family_of_file(dir)?
                == Some(super::single_file::CheckpointFamily::Sdxl));
        }
        let cfg = UNetConfig::from_file(&dir.join("unet/config.json"))?;
        Ok(cfg.is_xl())
    }

    /// An SD 1.x or SDXL single-file checkpoint; `config_dir` (a diffusers folder
    /// of the same architecture) replaces the built-in configs and tokenizers.
    pub fn load_single_file(
        path: &Path,
        config_dir: Option<&Path>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let m = super::single_file::load(path, config_dir, device, dtype)?;
        let second = m.second.map(|(tokenizer, text_encoder)| SecondEncoder {
            tokenizer,
            text_encoder,
        });
        let xl = second.is_some();
        Ok(Self {
            tokenizer: m.tokenizer,
            text_encoder: m.text_encoder,
            second,
            unet: m.unet,
            vae: m.vae,
            vae_dtype: m.vae_dtype,
            scheduler_config: m.scheduler,
            force_zeros_for_empty_prompt: xl,
            device: device.clone(),
            dtype,
        })
    }

    /// Whether this model is SDXL.
    pub fn is_xl(&self) -> bool {
        self.second.is_some()
    }

    /// Whose latent→RGB preview factors fit this model's VAE.
    pub fn latent_space(&self) -> LatentSpace {
        if self.is_xl() {
            LatentSpace::Sdxl
        } else {
            LatentSpace::Sd
        }
    }

    /// Checks every part exists before reading any weights, so a half-downloaded
    /// folder fails fast with the missing part's name.
    pub fn check_dir(dir: &Path) -> Result<()> {
        if super::single_file::is_single_file(dir) {
            return crate::models::check_safetensors(dir);
        }
        if dir.is_file() {
            return Err(SdError::invalid(
                "model",
                format!(
                    "{} is a file but not a .safetensors checkpoint; pickled .ckpt/.pt files are \
                     not loaded (they can run code): use the model's .safetensors or diffusers \
                     folder",
                    dir.display()
                ),
            ));
        }
        if !dir.is_dir() {
            return Err(SdError::MissingPart {
                dir: dir.to_path_buf(),
                part: "the folder itself".into(),
            });
        }
        for cfg in [
            "text_encoder/config.json",
            "unet/config.json",
            "vae/config.json",
        ] {
            if !dir.join(cfg).is_file() {
                return Err(SdError::MissingPart {
                    dir: dir.to_path_buf(),
                    part: cfg.into(),
                });
            }
        }
        weight_files(&dir.join("text_encoder"), TEXT_ENCODER_FILES)?;
        weight_files(&dir.join("unet"), DIFFUSERS_FILES)?;
        weight_files(&dir.join("vae"), DIFFUSERS_FILES)?;
        if !dir.join("tokenizer").is_dir() {
            return Err(SdError::MissingPart {
                dir: dir.to_path_buf(),
                part: "tokenizer/".into(),
            });
        }
        if Self::dir_is_xl(dir)? {
            if !dir.join("text_encoder_2/config.json").is_file() {
                return Err(SdError::MissingPart {
                    dir: dir.to_path_buf(),
                    part: "text_encoder_2/config.json".into(),
                });
            }
            weight_files(&dir.join("text_encoder_2"), TEXT_ENCODER_FILES)?;
            if !dir.join("tokenizer_2").is_dir() {
                return Err(SdError::MissingPart {
                    dir: dir.to_path_buf(),
                    part: "tokenizer_2/".into(),
                });
            }
        }
        Ok(())
    }

    fn load_text_encoder(dir: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel> {
        let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
        let files = weight_files(dir, TEXT_ENCODER_FILES)?;
        ClipTextModel::load(load_weights(&files, dtype, device)?, &cfg).map_err(weights_err(&files))
    }

    /// Loads a diffusers-format folder, or an SD 1.x or SDXL single-file `.safetensors`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if super::single_file::is_single_file(dir) {
            return Self::load_single_file(dir, None, device, dtype);
        }
        Self::check_dir(dir)?;
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let unet_cfg = UNetConfig::from_file(&dir.join("unet/config.json"))?;
        let vae_cfg = VaeConfig::from_file(&dir.join("vae/config.json"))?;
        let sched_path = dir.join("scheduler/scheduler_config.json");
        let scheduler_config = if sched_path.is_file() {
            SchedulerConfig::from_file(&sched_path)?
        } else {
            SchedulerConfig::default()
        };
        let text_encoder = Self::load_text_encoder(&dir.join("text_encoder"), dtype, device)?;
        let second = if unet_cfg.is_xl() {
            let text_encoder = Self::load_text_encoder(&dir.join("text_encoder_2"), dtype, device)?;
            if !text_encoder.has_projection() {
                return Err(SdError::invalid(
                    "text_encoder_2",
                    "has no text_projection (projection_dim in its config.json and the \
                     text_projection.weight tensor); SDXL needs its pooled embedding",
                ));
            }
            Some(SecondEncoder {
                tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?,
                text_encoder,
            })
        } else {
            None
        };
        let un = weight_files(&dir.join("unet"), DIFFUSERS_FILES)?;
        let unet =
            UNet::load(load_weights(&un, dtype, device)?, &unet_cfg).map_err(weights_err(&un))?;
        // As diffusers' SDXL pipeline: a VAE that asks for it decodes in f32.
        let vae_dtype = if second.is_some() && vae_cfg.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let va = weight_files(&dir.join("vae"), DIFFUSERS_FILES)?;
        let vae =
            Vae::load(load_weights(&va, vae_dtype, device)?, &vae_cfg).map_err(weights_err(&va))?;
        Ok(Self {
            tokenizer,
            text_encoder,
            second,
            unet,
            vae,
            vae_dtype,
            scheduler_config,
            force_zeros_for_empty_prompt: force_zeros_for_empty_prompt(dir)?,
            device: device.clone(),
            dtype,
        })
    }

    /// Pixels per latent cell.
    pub fn vae_scale(&self) -> usize {
        self.vae.config.downscale()
    }
}

/// What the UNet is conditioned on. With CFG the batch is `[uncond, cond]`.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Cross-attention context, (1 or 2, 77, dim).
    pub context: Tensor,
    /// SDXL: the second encoder's pooled, projected embedding, (1 or 2, dim).
    pub pooled: Option<Tensor>,
}

fn token_ids(tokenizer: &ClipTokenizer, text: &str, device: &Device) -> Result<Tensor> {
    let ids = tokenizer.encode(text)?;
    Ok(Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?)
}

/// SDXL's text conditioning for one text: both encoders' penultimate hidden
/// states side by side, and the second encoder's pooled embedding.
fn encode_xl(model: &SdModel, second: &SecondEncoder, text: &str) -> Result<(Tensor, Tensor)> {
    let first = model
        .text_encoder
        .encode(&token_ids(&model.tokenizer, text, &model.device)?)?;
    let other = second
        .text_encoder
        .encode(&token_ids(&second.tokenizer, text, &model.device)?)?;
    let context = Tensor::cat(&[&first.penultimate, &other.penultimate], D::Minus1)?;
    let pooled = other.pooled.ok_or_else(|| {
        SdError::invalid("text_encoder_2", "gave no pooled embedding (no projection)")
    })?;
    Ok((context, pooled))
}

/// Stage 1+2: token ids → text embeddings. With CFG the batch is `[uncond, cond]`.
/// SDXL with an empty negative prompt uses zeros for the unconditional half when
/// the model asks for it (`force_zeros_for_empty_prompt`), as diffusers does when
/// no negative prompt is given.
pub fn encode_prompt(
    model: &SdModel,
    prompt: &str,
    negative: &str,
    cfg: bool,
) -> Result<Conditioning> {
    let Some(second) = &model.second else {
        let embed = |text: &str| -> Result<Tensor> {
            model
                .text_encoder
                .forward(&token_ids(&model.tokenizer, text, &model.device)?)
        };
        let cond = embed(prompt)?;
        let context = if cfg {
            Tensor::cat(&[&embed(negative)?, &cond], 0)?
        } else {
            cond
        };
        return Ok(Conditioning {
            context,
            pooled: None,
        });
    };
    let (context, pooled) = encode_xl(model, second, prompt)?;
    if !cfg {
        return Ok(Conditioning {
            context,
            pooled: Some(pooled),
        });
    }
    let (neg_context, neg_pooled) =
        if negative.trim().is_empty() && model.force_zeros_for_empty_prompt {
            (context.zeros_like()?, pooled.zeros_like()?)
        } else {
            encode_xl(model, second, negative)?
        };
    Ok(Conditioning {
        context: Tensor::cat(&[&neg_context, &context], 0)?,
        pooled: Some(Tensor::cat(&[&neg_pooled, &pooled], 0)?),
    })
}

/// SDXL's size conditioning for one image: original size, crop top-left and
/// target size, `[h, w, 0, 0, h, w]` (no crop, original = target), shape (1, 6).
pub fn add_time_ids(height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let (h, w) = (height as f32, width as f32);
    Ok(Tensor::new(&[[h, w, 0.0, 0.0, h, w]], device)?)
}

/// Repeats each of the (1 or 2) rows of `t` `batch` times: `[u×B, c×B]` with CFG.
fn per_image(t: &Tensor, batch: usize, cfg: bool) -> Result<Tensor> {
    let mut reps = vec![1; t.rank()];
    if let Some(first) = reps.first_mut() {
        *first = batch;
    }
    if cfg {
        if t.dim(0)? != 2 {
            return Err(SdError::invalid(
                "context",
                "CFG needs [uncond, cond] embeddings",
            ));
        }
        let u = t.narrow(0, 0, 1)?.repeat(reps.clone())?;
        let c = t.narrow(0, 1, 1)?.repeat(reps)?;
        Ok(Tensor::cat(&[&u, &c], 0)?)
    } else {
        Ok(t.narrow(0, 0, 1)?.repeat(reps)?)
    }
}

/// What a progress callback hears.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Before denoising; `total` steps follow.
    Started { total: usize },
    /// After denoising step `step` (1-based) of `total`, with a cheap preview.
    Step {
        step: usize,
        total: usize,
        preview: Option<image::RgbImage>,
    },
    /// Denoising done, VAE decode running.
    Decoding,
}

/// Options of the denoising loop.
#[derive(Debug, Clone, Copy)]
pub struct DenoiseOptions {
    pub guidance: f64,
    /// Build a latent→RGB preview for each step's progress event.
    pub previews: bool,
    /// Output (height, width) in pixels: SDXL's size conditioning.
    pub image_size: (usize, usize),
    /// How to colour the previews.
    pub preview_space: LatentSpace,
    /// Index of the first scheduler step to run (image→image starts part-way).
    pub first_step: usize,
}

/// Classifier-free guidance is on when the scale is above 1 (as in diffusers).
pub fn uses_cfg(guidance: f64) -> bool {
    guidance > 1.0
}

/// Stage 3: the denoising loop. `latents` are the initial noise already scaled by
/// `init_noise_sigma`; `cond` is `[uncond, cond]` per image when CFG is on.
pub fn denoise(
    unet: &UNet,
    scheduler: &mut dyn Scheduler,
    mut latents: Tensor,
    cond: &Conditioning,
    opts: DenoiseOptions,
    progress: &mut dyn FnMut(Progress),
    cancelled: &AtomicBool,
) -> Result<Tensor> {
    let cfg = uses_cfg(opts.guidance);
    let batch = latents.dim(0)?;
    // Embeddings for the whole batch: [uncond×B, cond×B] to match cat([lat×B, lat×B]).
    let context = per_image(&cond.context, batch, cfg)?;
    let added = match &cond.pooled {
        Some(pooled) => {
            let rows = if cfg { 2 * batch } else { batch };
            let (h, w) = opts.image_size;
            let ids = add_time_ids(h, w, latents.device())?.repeat((rows, 1))?;
            Some((per_image(pooled, batch, cfg)?, ids))
        }
        None => None,
    };
    let added = added.as_ref().map(|(text_embeds, time_ids)| AddedCond {
        text_embeds,
        time_ids,
    });
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len().saturating_sub(opts.first_step);
    progress(Progress::Started { total });
    for (i, &t) in timesteps.iter().enumerate().skip(opts.first_step) {
        if cancelled.load(Ordering::Relaxed) {
            return Err(SdError::Cancelled);
        }
        let input = if cfg {
            Tensor::cat(&[&latents, &latents], 0)?
        } else {
            latents.clone()
        };
        let input = scheduler.scale_model_input(&input, i)?;
        let out = unet.forward(&input, t, &context, added.as_ref())?;
        let eps = if cfg {
            let u = out.narrow(0, 0, batch)?;
            let c = out.narrow(0, batch, batch)?;
            (&u + ((c - &u)? * opts.guidance)?)?
        } else {
            out
        };
        latents = scheduler.step(&eps, i, &latents)?;
        let preview = if opts.previews {
            Some(latent_preview(&latents, opts.preview_space)?)
        } else {
            None
        };
        progress(Progress::Step {
            step: i + 1 - opts.first_step,
            total,
            preview,
        });
    }
    Ok(latents)
}

/// An image→image start: the picture (already at the output size) and how much
/// of the schedule to run over it (1 = all of it, ignoring the picture's detail).
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: image::RgbImage,
    pub strength: f64,
}

/// RGB pixels → a (1, 3, h, w) tensor in [-1, 1], as diffusers' image processor.
pub fn image_to_tensor(img: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    let t = Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?;
    Ok(((t * 2.0)? - 1.0)?)
}

/// Stage 0 of image→image: the picture's latents, sampled from the VAE's
/// distribution with the unit noise `eps`, times the VAE's scaling factor.
pub fn encode_image(vae: &Vae, image: &Tensor, eps: &Tensor) -> Result<Tensor> {
    let dist = vae.encode(image)?;
    Ok((dist.sample_with(eps)? * vae.config.scaling_factor)?)
}

/// Image→image's start: the picture encoded by the VAE (its sample noise from
/// its own stream of the seed), one copy per batch item, noised with `noise`
/// to the level of the first step that runs; returns the latents and that step.
fn noised_image_latents(
    model: &SdModel,
    scheduler: &dyn Scheduler,
    init: &InitImage,
    noise: &Tensor,
    req: &GenerateRequest,
) -> Result<(Tensor, usize)> {
    let first = schedulers::img2img_start(req.steps, init.strength)?;
    if init.image.dimensions() != (req.width as u32, req.height as u32) {
        return Err(SdError::invalid(
            "init_image",
            format!(
                "is {}x{}; resize it to the output size {}x{} first",
                init.image.width(),
                init.image.height(),
                req.width,
                req.height
            ),
        ));
    }
    let (_, _, h, w) = noise.dims4()?;
    let pixels = image_to_tensor(&init.image, &model.device)?.to_dtype(model.vae_dtype)?;
    let eps_shape = (model.vae.config.latent_channels, h, w);
    let eps = super::noise::initial_noise(req.seed ^ 0x1a7e_4e5c, 1, eps_shape, &model.device)?
        .to_dtype(model.vae_dtype)?;
    let clean = encode_image(&model.vae, &pixels, &eps)?
        .to_dtype(DType::F32)?
        .repeat((req.batch, 1, 1, 1))?;
    let noisy = scheduler.add_noise(&clean, noise, first)?;
    Ok((noisy.to_dtype(model.dtype)?, first))
}

/// How to run the VAE decoder.
#[derive(Debug, Clone, Copy, Default)]
pub enum DecodeMode {
    #[default]
    Full,
    /// Overlapping tiles of `tile` latent cells (overlap `overlap`).
    Tiled { tile: usize, overlap: usize },
}

/// Stage 4: latents → image tensor in about [-1, 1] (NCHW).
pub fn decode_latents(vae: &Vae, latents: &Tensor, mode: DecodeMode) -> Result<Tensor> {
    let scaled = (latents / vae.config.scaling_factor)?;
    match mode {
        DecodeMode::Full => vae.decode(&scaled),
        DecodeMode::Tiled { tile, overlap } => vae.decode_tiled(&scaled, tile, overlap),
    }
}

/// `round(clamp(x/2 + 0.5, 0, 1) * 255)` per image, as diffusers' `numpy_to_pil`.
pub fn to_rgb_images(decoded: &Tensor) -> Result<Vec<image::RgbImage>> {
    let (b, c, h, w) = decoded.dims4()?;
    if c != 3 {
        return Err(SdError::invalid(
            "vae.out_channels",
            format!("{c} channels; expected 3"),
        ));
    }
    let pixels = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let pixels = (pixels * 255.0)?
        .round()?
        .permute((0, 2, 3, 1))?
        .contiguous()?;
    let data = pixels.flatten_all()?.to_vec1::<f32>()?;
    let per = h * w * 3;
    (0..b)
        .map(|i| {
            let bytes: Vec<u8> = data
                .get(i * per..(i + 1) * per)
                .unwrap_or(&[])
                .iter()
                .map(|&v| v as u8)
                .collect();
            image::RgbImage::from_raw(w as u32, h as u32, bytes)
                .ok_or_else(|| SdError::invalid("image", "decoded buffer has the wrong size"))
        })
        .collect()
}

/// Which VAE's latent space a preview reads: the linear latent→RGB maps differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatentSpace {
    /// SD 1.x / 2.x VAE.
    #[default]
    Sd,
    /// SDXL VAE.
    Sdxl,
}

impl LatentSpace {
    /// Linear latent→RGB factors (the widely used approximations).
    fn rgb_factors(self) -> [[f32; 3]; 4] {
        match self {
            Self::Sd => [
                [0.3512, 0.2297, 0.3227],
                [0.3250, 0.4974, 0.2350],
                [-0.2829, 0.1762, 0.2721],
                [-0.2120, -0.2616, -0.7177],
            ],
            Self::Sdxl => [
                [0.3920, 0.4054, 0.4549],
                [-0.2634, -0.0196, 0.0653],
                [0.0568, 0.1687, -0.0755],
                [-0.3112, -0.2359, -0.2076],
            ],
        }
    }
}

/// A cheap preview of the first image of a latent batch: one RGB pixel per
/// latent cell through a fixed linear map (no VAE), so it costs microseconds.
pub fn latent_preview(latents: &Tensor, space: LatentSpace) -> Result<image::RgbImage> {
    let first = latents
        .get(0)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let (c, h, w) = first.dims3()?;
    let data = first.flatten_all()?.to_vec1::<f32>()?;
    let mut img = image::RgbImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let mut rgb = [0f32; 3];
            for (ch, factors) in space.rgb_factors().iter().enumerate().take(c) {
                let v = data.get((ch * h + y) * w + x).copied().unwrap_or(0.0);
                for k in 0..3 {
                    rgb[k] += v * factors[k];
                }
            }
            let px = rgb.map(|v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
            img.put_pixel(x as u32, y as u32, image::Rgb(px));
        }
    }
    Ok(img)
}

/// Everything `generate` needs besides the model.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative: String,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    pub scheduler: Option<SchedulerKind>,
    /// Initial unit noise (before `init_noise_sigma`), shape (1 or batch, 4, h/8, w/8).
    pub init_noise: Option<Tensor>,
    pub decode: DecodeMode,
    /// Start from this picture instead of pure noise (image→image).
    pub init_image: Option<InitImage>,
    /// Decode with this tiny decoder (TAESD) instead of the model's VAE.
    pub tiny_decoder: Option<std::sync::Arc<super::taesd::TinyDecoder>>,
    pub previews: bool,
}

/// All stages in order. Returns one RGB image per batch item.
pub fn generate(
    model: &SdModel,
    req: &GenerateRequest,
    progress: &mut dyn FnMut(Progress),
    cancelled: &AtomicBool,
) -> Result<Vec<image::RgbImage>> {
    let f = model.vae_scale();
    let latent_shape = (model.unet.config.in_channels, req.height / f, req.width / f);
    let kind = req
        .scheduler
        .unwrap_or_else(|| model.scheduler_config.default_kind());
    let mut scheduler = schedulers::build(
        kind,
        &model.scheduler_config,
        req.steps,
        req.seed.wrapping_add(0x5eed),
    )?;
    let cfg = uses_cfg(req.guidance);
    let cond = encode_prompt(model, &req.prompt, &req.negative, cfg)?;
    let noise = match &req.init_noise {
        Some(n) => {
            let (nb, c, h, w) = n.dims4()?;
            if (c, h, w) != latent_shape || (nb != 1 && nb != req.batch) {
                return Err(SdError::invalid(
                    "init_latents",
                    format!(
                        "shape {:?} does not match (batch, {}, {}, {}) for {}x{}",
                        n.dims(),
                        latent_shape.0,
                        latent_shape.1,
                        latent_shape.2,
                        req.width,
                        req.height
                    ),
                ));
            }
            let n = n.to_device(&model.device)?.to_dtype(DType::F32)?;
            if nb == 1 {
                n.repeat((req.batch, 1, 1, 1))?
            } else {
                n
            }
        }
        None => super::noise::initial_noise(req.seed, req.batch, latent_shape, &model.device)?,
    };
    let (latents, first_step) = match &req.init_image {
        None => (
            (noise * scheduler.init_noise_sigma())?.to_dtype(model.dtype)?,
            0,
        ),
        Some(init) => noised_image_latents(model, scheduler.as_ref(), init, &noise, req)?,
    };
    let opts = DenoiseOptions {
        guidance: req.guidance,
        previews: req.previews,
        image_size: (req.height, req.width),
        first_step,
        preview_space: model.latent_space(),
    };
    let latents = denoise(
        &model.unet,
        scheduler.as_mut(),
        latents,
        &cond,
        opts,
        progress,
        cancelled,
    )?;
    if cancelled.load(Ordering::Relaxed) {
        return Err(SdError::Cancelled);
    }
    progress(Progress::Decoding);
    let decoded = match &req.tiny_decoder {
        Some(tiny) => tiny.decode(&latents)?,
        None => decode_latents(&model.vae, &latents.to_dtype(model.vae_dtype)?, req.decode)?,
    };
    to_rgb_images(&decoded)
}
