//! One-call text→image for the CLI, the GUI and the job runner.
//!
//! Input rules (checked before any weights are read, so bad input fails in
//! milliseconds and writes nothing):
//! - the prompt must contain something other than whitespace: an empty prompt
//!   gives an arbitrary unconditional picture, which is almost always a
//!   mistake in an app (the negative prompt may be empty);
//! - width and height are multiples of 8 between 64 and 2048;
//! - steps 1..=500, guidance 0..=30 (CFG runs when guidance > 1), batch 1..=16.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use parking_lot::Mutex;

use crate::error::{Result, SdError};
use crate::models;
use crate::sd::pipeline::{
    self, DecodeMode, DevicePref, GenerateRequest, Precision, Progress, SdModel,
};
use crate::sd::schedulers::SchedulerKind;
use crate::sd::taesd::TinyDecoder;

pub const MIN_SIDE: usize = 64;
pub const MAX_SIDE: usize = 2048;
pub const MAX_STEPS: usize = 500;
pub const MAX_BATCH: usize = 16;
pub const MAX_GUIDANCE: f64 = 30.0;
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Image→image strength when none is given.
pub const DEFAULT_STRENGTH: f64 = 0.6;

/// A style preset: words added to the prompt and the negative prompt. The
/// keys are the `style` label values of `text_to_image_generations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StylePreset {
    pub key: &'static str,
    pub label: &'static str,
    pub prompt_suffix: &'static str,
    pub negative: &'static str,
}

pub const STYLE_PRESETS: [StylePreset; 6] = [
    StylePreset {
        key: "none",
        label: "None",
        prompt_suffix: "",
        negative: "",
    },
    StylePreset {
        key: "photographic",
        label: "Photographic",
        prompt_suffix: "photograph, natural light, 50mm lens, sharp focus, highly detailed",
        negative: "drawing, painting, illustration, cartoon",
    },
    StylePreset {
        key: "digital-art",
        label: "Digital art",
        prompt_suffix: "digital painting, concept art, vibrant colours, detailed",
        negative: "photo, photograph",
    },
    StylePreset {
        key: "anime",
        label: "Anime",
        prompt_suffix: "anime style, cel shading, clean line art",
        negative: "photo, photograph, realistic",
    },
    StylePreset {
        key: "3d-model",
        label: "3D model",
        prompt_suffix: "3d render of a single object, centered, plain white background, studio lighting",
        negative: "cluttered background, multiple objects, cropped",
    },
    StylePreset {
        key: "pixel-art",
        label: "Pixel art",
        prompt_suffix: "pixel art, 16-bit, limited palette",
        negative: "photo, blurry, smooth gradients",
    },
];

impl StylePreset {
    /// The preset with this key (case-insensitive), or an error listing the keys.
    pub fn by_key(key: &str) -> Result<&'static StylePreset> {
        STYLE_PRESETS
            .iter()
            .find(|s| s.key.eq_ignore_ascii_case(key.trim()))
            .ok_or_else(|| {
                let keys: Vec<&str> = STYLE_PRESETS.iter().map(|s| s.key).collect();
                SdError::invalid(
                    "style",
                    format!("'{key}' is not a style; use one of {}", keys.join(", ")),
                )
            })
    }

    /// `prompt` with the style's words appended.
    pub fn apply_prompt(&self, prompt: &str) -> String {
        join_words(prompt, self.prompt_suffix)
    }

    /// `negative` with the style's negative words appended.
    pub fn apply_negative(&self, negative: &str) -> String {
        join_words(negative, self.negative)
    }
}

fn join_words(a: &str, b: &str) -> String {
    match (a.trim(), b) {
        (a, "") => a.to_owned(),
        ("", b) => b.to_owned(),
        (a, b) => format!("{a}, {b}"),
    }
}

/// Everything that decides the pictures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TextToImageParams {
    pub prompt: String,
    pub negative: String,
    /// Registry name (`sd-turbo`, `sd-1.5`, …); ignored when `model_dir` is set.
    pub model: String,
    /// A diffusers-format folder to use instead of the registry.
    pub model_dir: Option<PathBuf>,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    /// `None`: the model's own scheduler from its scheduler_config.json.
    pub scheduler: Option<SchedulerKind>,
    /// A safetensors file with a tensor `latents` (1 or batch, 4, h/8, w/8): the
    /// initial noise exactly as diffusers' pipeline takes it (before init_noise_sigma).
    pub init_latents: Option<PathBuf>,
    /// Image→image: start from this picture (cropped to the output's aspect
    /// and resized) instead of pure noise.
    pub init_image: Option<PathBuf>,
    /// How much of the schedule runs over `init_image`: near 0 keeps it, 1
    /// replaces it. Only read with `init_image`.
    pub strength: f64,
    /// Decode in overlapping tiles (less memory, slightly different seams).
    pub tiled_decode: bool,
    /// Decode with the tiny decoder (TAESD: `taesd`, or `taesdxl` for SDXL) instead
    /// of the VAE: much faster, a little less detail.
    pub tiny_decoder: bool,
    /// A TAESD folder to use instead of the registry's (implies `tiny_decoder`).
    pub tiny_decoder_dir: Option<PathBuf>,
    /// f16 on GPUs and f32 on the CPU unless overridden.
    pub precision: Precision,
}

impl Default for TextToImageParams {
    fn default() -> Self {
        Self::for_model("sd-turbo")
    }
}

impl TextToImageParams {
    /// Defaults suited to a registry model (SD-Turbo: 1 step, no CFG; SD 1.5: 25 steps, 7.5).
    pub fn for_model(name: &str) -> Self {
        let (steps, guidance, size) = models::known(name)
            .map(|m| (m.default_steps, m.default_guidance, m.default_size))
            .unwrap_or((1, 0.0, 512));
        Self {
            prompt: String::new(),
            negative: String::new(),
            model: name.to_owned(),
            model_dir: None,
            steps,
            guidance,
            seed: 0,
            width: size,
            height: size,
            batch: 1,
            scheduler: None,
            init_latents: None,
            init_image: None,
            strength: DEFAULT_STRENGTH,
            tiled_decode: false,
            tiny_decoder: false,
            tiny_decoder_dir: None,
            precision: Precision::Auto,
        }
    }

    /// Checks the parameters that need no model; see the module docs for the rules.
    pub fn validate(&self) -> Result<()> {
        if self.prompt.trim().is_empty() {
            return Err(SdError::invalid(
                "prompt",
                "is empty; describe the picture you want",
            ));
        }
        if self.prompt.chars().count() > MAX_PROMPT_CHARS
            || self.negative.chars().count() > MAX_PROMPT_CHARS
        {
            return Err(SdError::invalid(
                "prompt",
                format!(
                    "is longer than {MAX_PROMPT_CHARS} characters (only the first 75 tokens are used anyway)"
                ),
            ));
        }
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) || !v.is_multiple_of(8) {
                return Err(SdError::invalid(
                    field,
                    format!("{v} must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}"),
                ));
            }
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return Err(SdError::invalid(
                "steps",
                format!("{} must be between 1 and {MAX_STEPS}", self.steps),
            ));
        }
        if !self.guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&self.guidance) {
            return Err(SdError::invalid(
                "guidance",
                format!("{} must be between 0 and {MAX_GUIDANCE}", self.guidance),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(SdError::invalid(
                "batch",
                format!("{} must be between 1 and {MAX_BATCH}", self.batch),
            ));
        }
        if self.model_dir.is_none() {
            let m = models::known(&self.model)?;
            if !m.architecture.generates_images() {
                return Err(SdError::invalid(
                    "model",
                    format!(
                        "'{}' is a tiny decoder, not an image model; choose sd-turbo, sd-1.5, \
                         sd-2.1 or sdxl-turbo (and use the tiny decoder option to decode with it)",
                        m.name
                    ),
                ));
            }
        }
        if self.init_image.is_some() {
            if !self.strength.is_finite() || self.strength <= 0.0 || self.strength > 1.0 {
                return Err(SdError::invalid(
                    "strength",
                    format!(
                        "{} must be above 0 and at most 1 (0.3 keeps most of the picture, 0.8 \
                         little of it)",
                        self.strength
                    ),
                ));
            }
            crate::sd::schedulers::img2img_start(self.steps, self.strength)?;
        }
        if self.tiled_decode && self.uses_tiny_decoder() {
            return Err(SdError::invalid(
                "decoder",
                "tiled decoding and the tiny decoder exclude each other; pick one",
            ));
        }
        Ok(())
    }

    /// How the latents become pixels: `vae`, `vae-tiled` or `taesd`.
    pub fn decoder_name(&self) -> &'static str {
        if self.uses_tiny_decoder() {
            "taesd"
        } else if self.tiled_decode {
            "vae-tiled"
        } else {
            "vae"
        }
    }

    /// Whether the tiny decoder replaces the VAE.
    pub fn uses_tiny_decoder(&self) -> bool {
        self.tiny_decoder || self.tiny_decoder_dir.is_some()
    }

    /// The folder the weights come from (registry lookup unless `model_dir` is set).
    pub fn resolve_model_dir(&self) -> Result<PathBuf> {
        match &self.model_dir {
            Some(d) => Ok(d.clone()),
            None => models::resolve(&self.model),
        }
    }
}

/// Reads an image→image start picture: size-checked before decoding (no
/// decompression bombs), transparency over white, cropped to the aspect of
/// `width`×`height` around the centre and resized to it.
pub fn load_init_image(path: &Path, width: usize, height: usize) -> Result<image::RgbImage> {
    let rgba = orfeas_core::image_input::load_image(
        path,
        &orfeas_core::image_input::ImageLimits::default(),
    )
    .map_err(|e| SdError::invalid("init_image", e.to_string()))?;
    let rgb = image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = f32::from(a) / 255.0;
        let over_white = |c: u8| (f32::from(c) * a + 255.0 * (1.0 - a)).round() as u8;
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    });
    let (w, h) = (width as u32, height as u32);
    if rgb.dimensions() == (w, h) {
        return Ok(rgb);
    }
    // Cover: the largest centred crop of the output's aspect, then resize.
    let (iw, ih) = (u64::from(rgb.width()), u64::from(rgb.height()));
    let (cw, ch) = if iw * u64::from(h) > ih * u64::from(w) {
        ((ih * u64::from(w) / u64::from(h)).max(1), ih)
    } else {
        (iw, (iw * u64::from(h) / u64::from(w)).max(1))
    };
    let (x0, y0) = ((iw - cw) / 2, (ih - ch) / 2);
    let crop =
        image::imageops::crop_imm(&rgb, x0 as u32, y0 as u32, cw as u32, ch as u32).to_image();
    Ok(image::imageops::resize(
        &crop,
        w,
        h,
        image::imageops::FilterType::Lanczos3,
    ))
}

/// Loads the `latents` tensor of an init-latents file.
pub fn load_init_latents(path: &Path) -> Result<candle_core::Tensor> {
    let mut tensors = pipeline::read_safetensors(path, &Device::Cpu)?;
    let t = tensors.remove("latents").ok_or_else(|| {
        SdError::invalid(
            "init_latents",
            format!("{} has no tensor named 'latents'", path.display()),
        )
    })?;
    Ok(t.to_dtype(DType::F32)?)
}

/// The last thing loaded from a folder for one device and dtype, kept so
/// consecutive jobs skip the load.
struct Kept<T>(Mutex<Option<(PathBuf, String, Arc<T>)>>);

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> Kept<T> {
    /// The kept value for (`dir`, `key`), or else what `load` gives, which
    /// replaces it. The old value is dropped first so two never sit in memory
    /// together.
    fn get_or_load(
        &self,
        dir: &Path,
        key: String,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        let mut guard = self.0.lock();
        if let Some((d, k, v)) = guard.as_ref()
            && d == dir
            && *k == key
        {
            return Ok(v.clone());
        }
        *guard = None;
        let value = Arc::new(load()?);
        *guard = Some((dir.to_path_buf(), key, value.clone()));
        Ok(value)
    }
}

/// Keeps the last loaded model (and tiny decoder) so consecutive jobs skip the load.
#[derive(Default)]
pub struct Engine {
    model: Kept<SdModel>,
    tiny: Kept<TinyDecoder>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    fn model(&self, dir: &Path, device: &Device, dtype: DType) -> Result<Arc<SdModel>> {
        self.model
            .get_or_load(dir, format!("{device:?}/{dtype:?}"), || {
                SdModel::load(dir, device, dtype).map_err(|e| pipeline::map_oom(e, device))
            })
    }

    /// The tiny decoder for `model`: the params' folder, else the registry's
    /// `taesdxl` for SDXL and `taesd` otherwise.
    fn tiny_decoder(
        &self,
        params: &TextToImageParams,
        model: &SdModel,
    ) -> Result<Arc<TinyDecoder>> {
        let dir = match &params.tiny_decoder_dir {
            Some(d) => d.clone(),
            None => models::resolve(if model.is_xl() { "taesdxl" } else { "taesd" })?,
        };
        let key = format!("{:?}/{:?}", model.device, model.dtype);
        self.tiny.get_or_load(&dir, key, || {
            let tiny = TinyDecoder::load_dir(&dir, &model.device, model.dtype)?;
            if tiny.config.latent_channels != model.unet.config.out_channels
                || tiny.config.upscale() != model.vae_scale()
            {
                return Err(SdError::invalid(
                    "tiny_decoder",
                    format!(
                        "{} does not fit this model's latents ({} channels, x{}); use taesd for \
                         SD 1.x/2.x and taesdxl for SDXL",
                        dir.display(),
                        model.unet.config.out_channels,
                        model.vae_scale()
                    ),
                ));
            }
            Ok(tiny)
        })
    }

    /// Validates, loads (or reuses) the model, and generates `params.batch` images.
    pub fn run(
        &self,
        params: &TextToImageParams,
        device: DevicePref,
        progress: &mut dyn FnMut(Progress),
        cancelled: &AtomicBool,
    ) -> Result<Vec<image::RgbImage>> {
        params.validate()?;
        let init_noise = params
            .init_latents
            .as_deref()
            .map(load_init_latents)
            .transpose()?;
        let init_image = params
            .init_image
            .as_deref()
            .map(|p| load_init_image(p, params.width, params.height))
            .transpose()?;
        let dir = params.resolve_model_dir()?;
        SdModel::check_dir(&dir)?;
        let (dev, _) = pipeline::select_device(device)?;
        let dtype = params.precision.dtype_on(&dev);
        let model = self.model(&dir, &dev, dtype)?;
        let f = model.vae_scale();
        if !params.width.is_multiple_of(f) || !params.height.is_multiple_of(f) {
            return Err(SdError::invalid(
                "width",
                format!("size must be a multiple of {f} for this model"),
            ));
        }
        let req = GenerateRequest {
            prompt: params.prompt.clone(),
            negative: params.negative.clone(),
            steps: params.steps,
            guidance: params.guidance,
            seed: params.seed,
            width: params.width,
            height: params.height,
            batch: params.batch,
            scheduler: params.scheduler,
            init_noise,
            init_image: init_image.map(|image| pipeline::InitImage {
                image,
                strength: params.strength,
            }),
            decode: if params.tiled_decode {
                DecodeMode::Tiled {
                    tile: 64,
                    overlap: 16,
                }
            } else {
                DecodeMode::Full
            },
            tiny_decoder: if params.uses_tiny_decoder() {
                Some(self.tiny_decoder(params, &model)?)
            } else {
                None
            },
            previews: true,
        };
        pipeline::generate(&model, &req, progress, cancelled)
            .map_err(|e| pipeline::map_oom(e, &dev))
    }
}

/// Generates with a fresh engine (loads the model every call; keep an `Engine` to reuse it).
pub fn run(
    params: &TextToImageParams,
    device: DevicePref,
    progress: &mut dyn FnMut(Progress),
    cancelled: &AtomicBool,
) -> Result<Vec<image::RgbImage>> {
    Engine::default().run(params, device, progress, cancelled)
}

/// The text chunks written into each PNG (keys as A1111/ComfyUI readers expect, plus ours).
pub fn png_text_chunks(params: &TextToImageParams, index: usize) -> Vec<(String, String)> {
    let scheduler = params
        .scheduler
        .map_or_else(|| "model default".to_owned(), |s| s.to_string());
    let model = params
        .model_dir
        .as_ref()
        .and_then(|d| d.file_name())
        .map_or_else(
            || params.model.clone(),
            |n| n.to_string_lossy().into_owned(),
        );
    let seed = params.seed.wrapping_add(index as u64);
    let summary = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        params.prompt,
        params.negative,
        params.steps,
        scheduler,
        params.guidance,
        seed,
        params.width,
        params.height,
        model
    );
    let mut chunks: Vec<(String, String)> = vec![
        ("parameters".into(), summary),
        ("prompt".into(), params.prompt.clone()),
        ("negative_prompt".into(), params.negative.clone()),
        ("model".into(), model),
        ("steps".into(), params.steps.to_string()),
        ("guidance".into(), params.guidance.to_string()),
        ("seed".into(), seed.to_string()),
        ("size".into(), format!("{}x{}", params.width, params.height)),
        ("scheduler".into(), scheduler),
        ("decoder".into(), params.decoder_name().to_owned()),
        (
            "Software".into(),
            format!("ORFEAS Studio {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    if let Some(init) = &params.init_image {
        let name = init.file_name().map_or_else(
            || init.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        chunks.push(("init_image".into(), name));
        chunks.push(("strength".into(), params.strength.to_string()));
    }
    chunks
}

/// Writes image `index` of a batch as PNG with the parameters in tEXt/iTXt chunks, atomically.
pub fn write_png_with_params(
    img: &image::RgbImage,
    params: &TextToImageParams,
    index: usize,
    path: &Path,
) -> Result<()> {
    let chunks = png_text_chunks(params, index);
    let (w, h) = img.dimensions();
    orfeas_core::paths::write_atomic(path, |out| {
        let mut enc = png::Encoder::new(out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in &chunks {
            // tEXt is Latin-1 only; prompts in other scripts go to iTXt (UTF-8).
            let res = if v.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk(k.clone(), v.clone())
            } else {
                enc.add_itxt_chunk(k.clone(), v.clone())
            };
            res.map_err(std::io::Error::other)?;
        }
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(img.as_raw())
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// A text→image job for `orfeas_core::jobs`: the parameters plus where the PNG goes.
/// With `batch` > 1 the files are `STEM-0.png`, `STEM-1.png`, ….
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextToImageJob {
    #[serde(flatten)]
    pub params: TextToImageParams,
    pub output: PathBuf,
    /// `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    #[serde(default = "default_device")]
    pub device: String,
    /// The style preset the prompt was built with (`none`, `photographic`, …),
    /// for the `style` label of the metrics; the prompt already carries it.
    #[serde(default = "default_style")]
    pub style: String,
}

fn default_style() -> String {
    "none".into()
}

fn default_device() -> String {
    "auto".into()
}

impl TextToImageJob {
    /// The job spec the engine queues (label: the prompt's start).
    pub fn spec(&self) -> Result<orfeas_core::jobs::JobSpec, serde_json::Error> {
        Ok(orfeas_core::jobs::JobSpec {
            kind: orfeas_core::jobs::JobKind::TextToImage,
            params: serde_json::to_value(self)?,
            label: self.params.prompt.chars().take(60).collect(),
        })
    }

    /// Output path of batch item `index`.
    pub fn output_for(&self, index: usize) -> PathBuf {
        if self.params.batch <= 1 {
            return self.output.clone();
        }
        let stem = self
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        self.output.with_file_name(format!("{stem}-{index}.png"))
    }
}

/// Receives each step's cheap preview: (job, step, total steps, image).
pub type PreviewSink =
    Arc<dyn Fn(orfeas_core::jobs::JobId, usize, usize, &image::RgbImage) + Send + Sync>;

/// Runs text→image jobs, keeping the last model loaded between jobs.
#[derive(Default)]
pub struct TextToImageRunner {
    engine: Engine,
    previews: Option<PreviewSink>,
}

impl std::fmt::Debug for TextToImageRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextToImageRunner")
            .field("previews", &self.previews.is_some())
            .finish_non_exhaustive()
    }
}

impl TextToImageRunner {
    /// A runner that hands every step's preview to `sink` (the GUI shows them live).
    pub fn with_previews(sink: PreviewSink) -> Self {
        Self {
            engine: Engine::default(),
            previews: Some(sink),
        }
    }
}

fn job_failure(e: &SdError) -> orfeas_core::jobs::JobFailure {
    match e {
        SdError::Cancelled => orfeas_core::jobs::JobFailure::cancelled(),
        other => orfeas_core::jobs::JobFailure::new(other.reason(), format!("{other:#}")),
    }
}

impl orfeas_core::jobs::JobRunner for TextToImageRunner {
    fn run(
        &self,
        spec: &orfeas_core::jobs::JobSpec,
        ctx: &orfeas_core::jobs::JobContext,
    ) -> Result<orfeas_core::jobs::JobOutput, orfeas_core::jobs::JobFailure> {
        let job: TextToImageJob = serde_json::from_value(spec.params.clone()).map_err(|e| {
            orfeas_core::jobs::JobFailure::new(
                "invalid_parameter",
                format!("the job's parameters are not a valid text→image request: {e}"),
            )
        })?;
        let device: DevicePref = job.device.parse().map_err(|e| job_failure(&e))?;
        let cancelled = AtomicBool::new(ctx.is_cancelled());
        let started = std::time::Instant::now();
        let mut on_progress = |p: Progress| {
            match p {
                Progress::Started { .. } => ctx.progress("denoise", 0.05, ""),
                Progress::Step {
                    step,
                    total,
                    preview,
                } => {
                    if let (Some(sink), Some(img)) = (&self.previews, &preview) {
                        sink(ctx.id(), step, total, img);
                    }
                    let f = 0.05 + 0.85 * step as f32 / total.max(1) as f32;
                    ctx.progress("denoise", f, &format!("step {step}/{total}"));
                }
                Progress::Decoding => ctx.progress("decode", 0.9, ""),
            }
            // The engine's flag is polled here, between steps.
            if ctx.is_cancelled() {
                cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        ctx.progress("load", 0.0, "");
        let images = self
            .engine
            .run(&job.params, device, &mut on_progress, &cancelled)
            .map_err(|e| job_failure(&e))?;
        ctx.check_cancelled()?;
        let mut files = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let path = job.output_for(i);
            write_png_with_params(img, &job.params, i, &path).map_err(|e| job_failure(&e))?;
            files.push(path);
        }
        ctx.progress("write", 1.0, "");
        // The no-reference image score, averaged over the batch.
        let quality = (!images.is_empty()).then(|| {
            images
                .iter()
                .map(|img| orfeas_core::quality::score_image(img).score)
                .sum::<f32>()
                / images.len() as f32
        });
        Ok(orfeas_core::jobs::JobOutput {
            files,
            quality,
            summary: serde_json::json!({
                "style": job.style,
                "seed": job.params.seed,
                "steps": job.params.steps,
                "size": format!("{}x{}", job.params.width, job.params.height),
                "model": job.params.model,
                "duration_secs": started.elapsed().as_secs_f64(),
            }),
        })
    }
}
