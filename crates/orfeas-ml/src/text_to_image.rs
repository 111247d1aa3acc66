//! One-call text→image for the CLI, the GUI and the job runner.
//!
//! Every front end builds an [`orfeas_core::request::TextToImageRequest`]
//! (one set of names and limits) and [`TextToImageParams::from_request`] turns
//! it into what the pipeline runs: the model's defaults filled in, the decoder
//! choice spelled out. The checks that need no model run before any weights
//! are read, so bad input fails in milliseconds and writes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use orfeas_core::jobs::{JobContext, JobFailure, JobOutput, JobRequest, JobSpec};
use orfeas_core::request::{self as limits, Decoder, TextToImageJob, TextToImageRequest};
use parking_lot::Mutex;

use crate::error::{Result, SdError};
use crate::models;
use crate::sd::pipeline::{
    self, DecodeMode, DevicePref, GenerateRequest, Precision, Progress, SdModel,
};
use crate::sd::schedulers::SchedulerKind;
use crate::sd::taesd::TinyDecoder;

pub const MIN_SIDE: usize = limits::MIN_SIDE as usize;
pub const MAX_SIDE: usize = limits::MAX_SIDE as usize;
pub const MAX_STEPS: usize = limits::MAX_STEPS as usize;
pub const MAX_BATCH: usize = limits::MAX_BATCH as usize;
pub const MAX_GUIDANCE: f64 = limits::MAX_GUIDANCE;
pub const MAX_PROMPT_CHARS: usize = limits::MAX_PROMPT_CHARS;
/// Image→image strength when none is given.
pub const DEFAULT_STRENGTH: f64 = limits::DEFAULT_STRENGTH;

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

/// Everything that decides the pictures, resolved: what the pipeline runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TextToImageParams {
    /// The prompt as the user typed it; the style's words are added when it runs.
    pub prompt: String,
    pub negative: String,
    /// A [`StylePreset`] key (`none`, `photographic`, …).
    pub style: String,
    /// Registry name (`sd-turbo`, `sd-1.5`, …); ignored when `model_path` is set.
    pub model: String,
    /// A diffusers-format folder to use instead of the registry.
    pub model_path: Option<PathBuf>,
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
            style: "none".to_owned(),
            model: name.to_owned(),
            model_path: None,
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

    /// Defaults for a model chosen by path. A single-file checkpoint is a full
    /// SD 1.x/SDXL model (SD 1.5's steps and guidance; 1024² for SDXL ones,
    /// which are trained at that size); a folder gets a turbo model's.
    pub fn for_path(path: &Path) -> Self {
        let mut p = if path.is_file() {
            let mut p = Self::for_model("sd-1.5");
            if SdModel::dir_is_xl(path).unwrap_or(false) {
                (p.width, p.height) = (1024, 1024);
            }
            p
        } else {
            Self::for_model("sd-turbo")
        };
        p.model_path = Some(path.to_path_buf());
        p
    }

    /// The one conversion from a request: checks it, then fills what it leaves
    /// open (steps, guidance, size) with the chosen model's defaults.
    pub fn from_request(req: &TextToImageRequest) -> Result<Self> {
        req.check()?;
        let mut p = match &req.model_path {
            Some(path) => Self::for_path(path),
            None => Self::for_model(&req.model),
        };
        p.prompt = req.prompt.clone();
        p.negative = req.negative_prompt.clone();
        p.style = req.style.clone();
        if let Some(steps) = req.steps {
            p.steps = steps as usize;
        }
        if let Some(g) = req.guidance {
            p.guidance = g;
        }
        if let Some(w) = req.width {
            p.width = w as usize;
        }
        if let Some(h) = req.height {
            p.height = h as usize;
        }
        p.seed = req.seed;
        p.batch = req.batch as usize;
        p.scheduler = req.scheduler;
        p.init_latents = req.init_latents.clone();
        p.init_image = req.init_image.clone();
        p.strength = req.strength_or_default();
        p.tiled_decode = req.decoder == Decoder::VaeTiled;
        p.tiny_decoder = req.decoder == Decoder::Taesd;
        p.tiny_decoder_dir = req.tiny_decoder_path.clone();
        p.precision = req.precision;
        p.validate()?;
        Ok(p)
    }

    /// The prompt the model sees: the user's with the style's words.
    pub fn styled_prompt(&self) -> Result<String> {
        Ok(StylePreset::by_key(&self.style)?.apply_prompt(&self.prompt))
    }

    /// The negative prompt the model sees: the user's with the style's words.
    pub fn styled_negative(&self) -> Result<String> {
        Ok(StylePreset::by_key(&self.style)?.apply_negative(&self.negative))
    }

    /// Checks the parameters that need no model; see the module docs for the rules.
    pub fn validate(&self) -> Result<()> {
        StylePreset::by_key(&self.style)?;
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
        if self.model_path.is_none() {
            let m = models::known(&self.model)?;
            if !m.architecture.generates_images() {
                return Err(SdError::invalid(
                    "model",
                    if matches!(m.architecture, models::Architecture::TinyDecoder) {
                        format!(
                            "'{}' is a tiny decoder, not an image model; choose sd-turbo, \
                             sd-1.5, sd-2.1 or sdxl-turbo (and use the tiny decoder option to \
                             decode with it)",
                            m.name
                        )
                    } else {
                        format!(
                            "'{}' does not make pictures from text (it is for image to 3D); \
                             choose sd-turbo, sd-1.5, sd-2.1 or sdxl-turbo",
                            m.name
                        )
                    },
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

    /// The folder the weights come from (registry lookup unless `model_path` is set).
    pub fn resolve_model_path(&self) -> Result<PathBuf> {
        self.resolve_model_path_in(&models::SearchRoots::from_env())
    }

    /// [`Self::resolve_model_path`] looking in `roots`.
    pub fn resolve_model_path_in(&self, roots: &models::SearchRoots) -> Result<PathBuf> {
        match &self.model_path {
            Some(d) => Ok(d.clone()),
            None => roots.resolve(&self.model),
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
    let mut tensors = crate::sd::weights::read_safetensors(path, &Device::Cpu)?;
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
pub(crate) struct Kept<T>(Mutex<Option<(PathBuf, String, Arc<T>)>>);

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> Kept<T> {
    /// The kept value for (`dir`, `key`), or else what `load` gives, which
    /// replaces it. The old value is dropped first so two never sit in memory
    /// together.
    pub(crate) fn get_or_load(
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
    /// Where registry models are found; `None`: [`models::SearchRoots::from_env`].
    roots: Option<models::SearchRoots>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine that finds registry models in `roots`.
    pub fn with_roots(roots: models::SearchRoots) -> Self {
        Self {
            roots: Some(roots),
            ..Self::default()
        }
    }

    /// Where registry models are looked for.
    pub fn roots(&self) -> models::SearchRoots {
        self.roots
            .clone()
            .unwrap_or_else(models::SearchRoots::from_env)
    }

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
            None => self
                .roots()
                .resolve(if model.is_xl() { "taesdxl" } else { "taesd" })?,
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
        let dir = params.resolve_model_path_in(&self.roots())?;
        SdModel::check_dir(&dir)?;
        let (dev, _) = pipeline::select_device(device)?;
        let dtype = pipeline::dtype_for(params.precision, &dev);
        let model = self.model(&dir, &dev, dtype)?;
        let f = model.vae_scale();
        if !params.width.is_multiple_of(f) || !params.height.is_multiple_of(f) {
            return Err(SdError::invalid(
                "width",
                format!("size must be a multiple of {f} for this model"),
            ));
        }
        let req = GenerateRequest {
            prompt: params.styled_prompt()?,
            negative: params.styled_negative()?,
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
        .model_path
        .as_ref()
        .and_then(|d| d.file_name())
        .map_or_else(
            || params.model.clone(),
            |n| n.to_string_lossy().into_owned(),
        );
    let seed = params.seed.wrapping_add(index as u64);
    // A1111's summary names what the model saw (the styled prompt); our own
    // chunks keep the prompt as typed plus the style, so it comes back as it was.
    let summary = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        params
            .styled_prompt()
            .unwrap_or_else(|_| params.prompt.clone()),
        params
            .styled_negative()
            .unwrap_or_else(|_| params.negative.clone()),
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
        ("style".into(), params.style.clone()),
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

    /// A runner that finds registry models in `roots` and hands previews to `previews`.
    pub fn new(roots: models::SearchRoots, previews: Option<PreviewSink>) -> Self {
        Self {
            engine: Engine::with_roots(roots),
            previews,
        }
    }
}

fn job_failure(e: &SdError) -> JobFailure {
    match e {
        SdError::Cancelled => JobFailure::cancelled(),
        other => JobFailure::new(other.reason(), format!("{other:#}")),
    }
}

/// The text→image job in `spec`, or a failure naming what this runner runs.
fn text_to_image_job(spec: &JobSpec) -> Result<&TextToImageJob, JobFailure> {
    match &spec.request {
        JobRequest::TextToImage(job) => Ok(job),
        other => Err(JobFailure::new(
            "invalid_parameter",
            format!(
                "the text-to-image runner was handed a {} job",
                other.kind().as_str()
            ),
        )),
    }
}

impl orfeas_core::jobs::JobRunner for TextToImageRunner {
    /// Refuses at once a request that fails its checks or whose model is not installed.
    fn admit(&self, spec: &JobSpec) -> Result<(), JobFailure> {
        let job = text_to_image_job(spec)?;
        let params = TextToImageParams::from_request(&job.request).map_err(|e| job_failure(&e))?;
        params
            .resolve_model_path_in(&self.engine.roots())
            .map_err(|e| job_failure(&e))?;
        Ok(())
    }

    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
        let job = text_to_image_job(spec)?;
        let params = TextToImageParams::from_request(&job.request).map_err(|e| job_failure(&e))?;
        let device: DevicePref = job.request.device.parse().map_err(|e| job_failure(&e))?;
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
            .run(&params, device, &mut on_progress, &cancelled);
        // The step's activations are freed; the loaded model stays.
        crate::memory::release_freed_memory();
        let images = images.map_err(|e| job_failure(&e))?;
        ctx.check_cancelled()?;
        let mut files = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let path = job.output_for(i);
            write_png_with_params(img, &params, i, &path).map_err(|e| job_failure(&e))?;
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
        Ok(JobOutput {
            files,
            quality,
            summary: serde_json::json!({
                "style": params.style,
                "seed": params.seed,
                "steps": params.steps,
                "size": format!("{}x{}", params.width, params.height),
                "model": params.model,
                "decoder": params.decoder_name(),
                "duration_secs": started.elapsed().as_secs_f64(),
            }),
        })
    }
}
