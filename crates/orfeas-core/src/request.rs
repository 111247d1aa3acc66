//! The job boundary: the typed requests every front end converts into.
//!
//! CLI arguments, the GUI's Create tab, HTTP JSON and multipart bodies, a
//! generated PNG's own text chunks and A1111-style `/sdapi/v1/txt2img` bodies
//! each have exactly one conversion into [`TextToImageRequest`] or
//! [`ImageTo3dRequest`]; past that point nothing is an untyped value. The
//! requests deny unknown fields, so a runner can never receive a field it
//! does not know, and the limits below are the only ones: front ends do not
//! keep their own.
//!
//! A field left `None` means "the model's default" (steps, guidance, size);
//! the runner resolves it once it knows the model.

mod a1111;
mod png_info;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use a1111::{A1111_HONOURED_FIELDS, A1111Txt2Img, sampler_from_a1111, sampler_to_a1111};
pub use png_info::{read_png_text, text_to_image_from_png, text_to_image_from_png_text};

pub use crate::export::ExportFormat;
pub use crate::image_to_3d::{ImageTo3dParams, Quality};
use crate::jobs::JobKind;

// ---- limits (the one set) -----------------------------------------------

/// Longest prompt or negative prompt, in characters (CLIP reads 75 tokens of it anyway).
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Denoising steps per picture.
pub const MAX_STEPS: u32 = 150;
/// Classifier-free guidance scale.
pub const MAX_GUIDANCE: f64 = 30.0;
/// Picture sides, in pixels; both must be multiples of 8 (the latent grid).
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 2048;
/// Pictures per job.
pub const MAX_BATCH: u32 = 8;
/// Seeds are 32-bit, as in A1111 and ComfyUI, so every seed can be typed back in.
pub const MAX_SEED: u64 = u32::MAX as u64;
/// Image→image strength when none is given.
pub const DEFAULT_STRENGTH: f64 = 0.6;
/// Registry name of the default text→image model.
pub const DEFAULT_MODEL: &str = "sd-turbo";
/// Marching-cubes grid of TripoSR meshes.
pub const DEFAULT_MC_RESOLUTION: u32 = 256;
pub const MC_RESOLUTION_RANGE: (u32, u32) = (32, 1024);
/// Density level of the TripoSR surface.
pub const DEFAULT_MC_THRESHOLD: f32 = 25.0;

/// A field that failed its check, and what to do about it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// The request field at fault (`prompt`, `steps`, `width`, ...).
    pub field: &'static str,
    pub message: String,
}

impl RequestError {
    pub fn new(field: &'static str, message: impl Into<String>) -> RequestError {
        RequestError {
            field,
            message: message.into(),
        }
    }
}

// ---- names (the one set) ------------------------------------------------

/// A denoising scheduler. These names are the only ones every front end accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedulerKind {
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "euler-a")]
    EulerAncestral,
    #[serde(rename = "ddim")]
    Ddim,
    #[serde(rename = "dpm++2m")]
    DpmSolverPp2m,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] = [
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Ddim,
        SchedulerKind::DpmSolverPp2m,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::DpmSolverPp2m => "dpm++2m",
        }
    }

    /// The scheduler for a diffusers class name. PNDM (SD 1.5's default) and
    /// the other multistep solvers map to DPM-Solver++ 2M, which needs no
    /// warm-up steps and gives comparable images at the same step count.
    pub fn from_class_name(class: &str) -> SchedulerKind {
        match class {
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "DDIMScheduler" => SchedulerKind::Ddim,
            _ => SchedulerKind::DpmSolverPp2m,
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<SchedulerKind, RequestError> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                RequestError::new(
                    "scheduler",
                    format!(
                        "unknown scheduler '{s}'; use one of {}",
                        names(&SCHEDULER_NAMES)
                    ),
                )
            })
    }
}

/// The scheduler names, for help texts and the OpenAPI document.
pub const SCHEDULER_NAMES: [&str; 4] = ["euler", "euler-a", "ddim", "dpm++2m"];

/// Number format of the weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f16 on GPUs, f32 on the CPU.
    #[default]
    Auto,
    F32,
    F16,
}

impl FromStr for Precision {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Precision, RequestError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "fp32" => Ok(Precision::F32),
            "f16" | "fp16" => Ok(Precision::F16),
            _ => Err(RequestError::new(
                "precision",
                format!("unknown precision '{s}'; use auto, f32 or f16"),
            )),
        }
    }
}

/// How the latents become pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decoder {
    /// The model's VAE decoder.
    #[default]
    Vae,
    /// The VAE in overlapping tiles: less memory, slightly different seams.
    VaeTiled,
    /// The tiny decoder (TAESD / TAESDXL): much faster, a little less detail.
    Taesd,
}

impl Decoder {
    pub const ALL: [Decoder; 3] = [Decoder::Vae, Decoder::VaeTiled, Decoder::Taesd];

    /// The name written into PNGs and accepted back.
    pub fn name(self) -> &'static str {
        match self {
            Decoder::Vae => "vae",
            Decoder::VaeTiled => "vae-tiled",
            Decoder::Taesd => "taesd",
        }
    }
}

impl FromStr for Decoder {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Decoder, RequestError> {
        Decoder::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                RequestError::new(
                    "decoder",
                    format!("unknown decoder '{s}'; use vae, vae-tiled or taesd"),
                )
            })
    }
}

fn names(list: &[&str]) -> String {
    list.join(", ")
}

// ---- text → image ---------------------------------------------------------

/// Everything that decides a text→image job's pictures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextToImageRequest {
    /// What to draw, as the user typed it (the style's words are added by the runner).
    pub prompt: String,
    /// What to avoid.
    #[serde(default)]
    pub negative_prompt: String,
    /// Registry name (`sd-turbo`, `sd-1.5`, `sdxl-turbo`, ...); unused when `model_path` is set.
    #[serde(default = "default_model")]
    pub model: String,
    /// A diffusers folder or a single-file checkpoint to use instead of the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<PathBuf>,
    /// A style preset key (`none`, `photographic`, `anime`, ...).
    #[serde(default = "default_style")]
    pub style: String,
    /// `None`: the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// `None`: the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    /// `None`: the model's default size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Picture `i` of a batch uses `seed + i`.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// `None`: the model's own scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerKind>,
    #[serde(default)]
    pub decoder: Decoder,
    /// A TAESD folder to use instead of the registry's (only with `decoder = taesd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiny_decoder_path: Option<PathBuf>,
    /// Image→image: start from this picture instead of pure noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<PathBuf>,
    /// How much of the schedule runs over `init_image` (0, 1]; `None`: [`DEFAULT_STRENGTH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// A safetensors file with the initial noise (`latents`), for exact reproduction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_latents: Option<PathBuf>,
    #[serde(default)]
    pub precision: Precision,
    /// `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_model() -> String {
    DEFAULT_MODEL.to_owned()
}
fn default_style() -> String {
    "none".to_owned()
}
fn default_batch() -> u32 {
    1
}
fn default_device() -> String {
    "auto".to_owned()
}

impl Default for TextToImageRequest {
    fn default() -> TextToImageRequest {
        TextToImageRequest::new("")
    }
}

impl TextToImageRequest {
    /// A request for `prompt` with every other field at its default.
    pub fn new(prompt: impl Into<String>) -> TextToImageRequest {
        TextToImageRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            model: default_model(),
            model_path: None,
            style: default_style(),
            steps: None,
            guidance: None,
            width: None,
            height: None,
            seed: 0,
            batch: 1,
            scheduler: None,
            decoder: Decoder::Vae,
            tiny_decoder_path: None,
            init_image: None,
            strength: None,
            init_latents: None,
            precision: Precision::Auto,
            device: default_device(),
        }
    }

    /// Checks every field that needs no model. Each front end calls it once,
    /// right after its conversion, and the runner again before loading weights.
    pub fn check(&self) -> Result<(), RequestError> {
        if self.prompt.trim().is_empty() {
            return Err(RequestError::new(
                "prompt",
                "is empty; describe the picture you want",
            ));
        }
        for (field, text) in [
            ("prompt", &self.prompt),
            ("negative_prompt", &self.negative_prompt),
        ] {
            if text.chars().count() > MAX_PROMPT_CHARS {
                return Err(RequestError::new(
                    field,
                    format!(
                        "is longer than {MAX_PROMPT_CHARS} characters (only the first 75 tokens are used anyway)"
                    ),
                ));
            }
        }
        if self.model.is_empty()
            || self.model.len() > 128
            || !self
                .model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(RequestError::new(
                "model",
                "model names use letters, digits and . _ - only; see `orfeas models list`",
            ));
        }
        if !crate::telemetry::metrics::STYLES.contains(&self.style.as_str()) {
            return Err(RequestError::new(
                "style",
                format!(
                    "unknown style '{}'; use one of {}",
                    self.style,
                    names(&crate::telemetry::metrics::STYLES)
                ),
            ));
        }
        if let Some(steps) = self.steps
            && !(1..=MAX_STEPS).contains(&steps)
        {
            return Err(RequestError::new(
                "steps",
                format!("{steps} must be between 1 and {MAX_STEPS}"),
            ));
        }
        if let Some(g) = self.guidance
            && (!g.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&g))
        {
            return Err(RequestError::new(
                "guidance",
                format!("{g} must be between 0 and {MAX_GUIDANCE}"),
            ));
        }
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if let Some(v) = side
                && (!(MIN_SIDE..=MAX_SIDE).contains(&v) || !v.is_multiple_of(8))
            {
                return Err(RequestError::new(
                    field,
                    format!("{v} must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}"),
                ));
            }
        }
        if self.seed > MAX_SEED {
            return Err(RequestError::new(
                "seed",
                format!("{} must be between 0 and {MAX_SEED}", self.seed),
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(RequestError::new(
                "batch",
                format!("{} must be between 1 and {MAX_BATCH}", self.batch),
            ));
        }
        if let Some(s) = self.strength {
            if self.init_image.is_none() {
                return Err(RequestError::new(
                    "strength",
                    "only applies to image to image; give a start image (init_image) too",
                ));
            }
            if !s.is_finite() || s <= 0.0 || s > 1.0 {
                return Err(RequestError::new(
                    "strength",
                    format!(
                        "{s} must be above 0 and at most 1 (0.3 keeps most of the picture, 0.8 little of it)"
                    ),
                ));
            }
        }
        if self.tiny_decoder_path.is_some() && self.decoder != Decoder::Taesd {
            return Err(RequestError::new(
                "decoder",
                "a tiny decoder folder was given but the decoder is not taesd; choose decoder taesd",
            ));
        }
        if !valid_device(&self.device) {
            return Err(RequestError::new(
                "device",
                format!(
                    "unknown device '{}'; use auto, cpu, cuda, cuda:N or metal",
                    self.device
                ),
            ));
        }
        Ok(())
    }

    /// The strength the run uses.
    pub fn strength_or_default(&self) -> f64 {
        self.strength.unwrap_or(DEFAULT_STRENGTH)
    }

    /// Short text for job lists: the prompt's start.
    pub fn label(&self) -> String {
        self.prompt.chars().take(60).collect()
    }
}

fn valid_device(d: &str) -> bool {
    match d {
        "auto" | "cpu" | "cuda" | "metal" => true,
        other => other.strip_prefix("cuda:").is_some_and(|n| {
            !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())
        }),
    }
}

/// A text→image job: the request and where its PNG goes. With `batch` > 1
/// the files are `STEM-0.png`, `STEM-1.png`, ...
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextToImageJob {
    pub request: TextToImageRequest,
    pub output: PathBuf,
}

impl TextToImageJob {
    /// Output path of batch item `index`.
    pub fn output_for(&self, index: usize) -> PathBuf {
        if self.request.batch <= 1 {
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

// ---- image → 3D -----------------------------------------------------------

/// Which image→3D method builds the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageTo3dMethod {
    /// Silhouette inflation: no weights, works everywhere.
    #[default]
    Inflate,
    /// TripoSR (MIT): a learned model that needs its weights.
    #[serde(rename = "triposr")]
    TripoSr,
}

impl ImageTo3dMethod {
    pub const ALL: [ImageTo3dMethod; 2] = [ImageTo3dMethod::Inflate, ImageTo3dMethod::TripoSr];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageTo3dMethod::Inflate => "inflate",
            ImageTo3dMethod::TripoSr => "triposr",
        }
    }
}

impl FromStr for ImageTo3dMethod {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<ImageTo3dMethod, RequestError> {
        ImageTo3dMethod::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                RequestError::new(
                    "method",
                    format!("unknown method '{s}'; use inflate or triposr"),
                )
            })
    }
}

/// Where the foreground comes from, for every image→3D method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// Alpha when the picture has it, else the neural segmenter when installed, else the border colour.
    #[default]
    Auto,
    Alpha,
    Neural,
    Border,
    /// Keep the whole picture.
    None,
}

impl Background {
    pub const ALL: [Background; 5] = [
        Background::Auto,
        Background::Alpha,
        Background::Neural,
        Background::Border,
        Background::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Background::Auto => "auto",
            Background::Alpha => "alpha",
            Background::Neural => "neural",
            Background::Border => "border",
            Background::None => "none",
        }
    }
}

impl FromStr for Background {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Background, RequestError> {
        Background::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                RequestError::new(
                    "background",
                    format!(
                        "unknown background mode '{s}'; use auto, alpha, neural, border or none"
                    ),
                )
            })
    }
}

/// TripoSR's own parameters (read only with `method = triposr`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TripoSrOptions {
    /// A folder with `config.yaml` and the weights, or the weights file; `None`: the registry's `triposr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_path: Option<PathBuf>,
    /// Marching-cubes grid per side.
    pub mc_resolution: u32,
    /// Density level of the surface.
    pub mc_threshold: f32,
    /// UV-unwrap and bake the colours into a texture.
    pub bake_texture: bool,
}

impl Default for TripoSrOptions {
    fn default() -> TripoSrOptions {
        TripoSrOptions {
            model_path: None,
            mc_resolution: DEFAULT_MC_RESOLUTION,
            mc_threshold: DEFAULT_MC_THRESHOLD,
            bake_texture: false,
        }
    }
}

/// A whole file → file image→3D job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTo3dRequest {
    pub input: PathBuf,
    pub output: PathBuf,
    pub format: ExportFormat,
    #[serde(default)]
    pub method: ImageTo3dMethod,
    /// The built-in pipeline's parameters (the quality preset is read by every method).
    #[serde(default)]
    pub params: ImageTo3dParams,
    #[serde(default)]
    pub triposr: TripoSrOptions,
    /// A foreground mask the user painted: a grayscale PNG at the picture's
    /// size, 255 = foreground. When set it replaces `params.background` for
    /// every method; the runners read it (and refuse one of another size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<PathBuf>,
}

impl ImageTo3dRequest {
    /// A request with the defaults: inflate, standard quality.
    pub fn new(input: PathBuf, output: PathBuf, format: ExportFormat) -> ImageTo3dRequest {
        ImageTo3dRequest {
            input,
            output,
            format,
            method: ImageTo3dMethod::default(),
            params: ImageTo3dParams::default(),
            triposr: TripoSrOptions::default(),
            mask: None,
        }
    }

    /// Checks every field that needs no model or file (a mask's size is the
    /// runner's to check: it needs both files decoded).
    pub fn check(&self) -> Result<(), RequestError> {
        self.params.validate().map_err(|e| match e {
            crate::image_to_3d::ImageTo3dError::InvalidParameter { field, detail } => {
                RequestError::new(field, detail)
            }
            other => RequestError::new("params", other.to_string()),
        })?;
        let (lo, hi) = MC_RESOLUTION_RANGE;
        if !(lo..=hi).contains(&self.triposr.mc_resolution) {
            return Err(RequestError::new(
                "mc_resolution",
                format!(
                    "{} must be between {lo} and {hi} (256 is TripoSR's default)",
                    self.triposr.mc_resolution
                ),
            ));
        }
        if !self.triposr.mc_threshold.is_finite() {
            return Err(RequestError::new("mc_threshold", "must be a finite number"));
        }
        Ok(())
    }

    /// Short text for job lists: the input file's name.
    pub fn label(&self) -> String {
        file_label(&self.input)
    }
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

// ---- the job ----------------------------------------------------------------

/// What a job runs: one typed request per job kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "request", rename_all = "snake_case")]
pub enum JobRequest {
    ImageTo3d(ImageTo3dRequest),
    TextToImage(TextToImageJob),
}

impl JobRequest {
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::ImageTo3d(_) => JobKind::ImageTo3d,
            JobRequest::TextToImage(_) => JobKind::TextToImage,
        }
    }

    /// The request alone, as stored in the history's `params` column.
    pub fn params_json(&self) -> serde_json::Value {
        let value = match self {
            JobRequest::ImageTo3d(r) => serde_json::to_value(r),
            JobRequest::TextToImage(j) => serde_json::to_value(j),
        };
        // Both are plain structs of strings, numbers and paths: serialising cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Rebuilds a stored request; a row written by another version that no
    /// longer parses is an error naming the field.
    pub fn from_params_json(
        kind: JobKind,
        params: &serde_json::Value,
    ) -> Result<JobRequest, serde_json::Error> {
        Ok(match kind {
            JobKind::ImageTo3d => JobRequest::ImageTo3d(serde_json::from_value(params.clone())?),
            JobKind::TextToImage => {
                JobRequest::TextToImage(serde_json::from_value(params.clone())?)
            }
        })
    }

    /// Where the job writes its (first) output.
    pub fn output(&self) -> &Path {
        match self {
            JobRequest::ImageTo3d(r) => &r.output,
            JobRequest::TextToImage(j) => &j.output,
        }
    }

    /// Short human text for lists.
    pub fn label(&self) -> String {
        match self {
            JobRequest::ImageTo3d(r) => r.label(),
            JobRequest::TextToImage(j) => j.request.label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_by_every_request() {
        let err = serde_json::from_str::<TextToImageRequest>(r#"{"prompt":"x","negative":"y"}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `negative`"),
            "{err}"
        );
        let err = serde_json::from_str::<ImageTo3dRequest>(
            r#"{"input":"a.png","output":"a.glb","format":"glb","params":{"method":"triposr"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `method`"), "{err}");
    }

    #[test]
    fn scheduler_names_round_trip_and_others_are_refused() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        assert_eq!(
            "euler_a".parse::<SchedulerKind>().unwrap_err().field,
            "scheduler"
        );
    }

    #[test]
    fn checks_name_the_field() {
        let base = TextToImageRequest::new("a fox");
        assert!(base.check().is_ok());
        let cases: Vec<(TextToImageRequest, &str)> = vec![
            (TextToImageRequest::new("  "), "prompt"),
            (
                TextToImageRequest {
                    steps: Some(0),
                    ..base.clone()
                },
                "steps",
            ),
            (
                TextToImageRequest {
                    steps: Some(MAX_STEPS + 1),
                    ..base.clone()
                },
                "steps",
            ),
            (
                TextToImageRequest {
                    width: Some(100),
                    ..base.clone()
                },
                "width",
            ),
            (
                TextToImageRequest {
                    height: Some(4096),
                    ..base.clone()
                },
                "height",
            ),
            (
                TextToImageRequest {
                    batch: 0,
                    ..base.clone()
                },
                "batch",
            ),
            (
                TextToImageRequest {
                    guidance: Some(f64::NAN),
                    ..base.clone()
                },
                "guidance",
            ),
            (
                TextToImageRequest {
                    seed: MAX_SEED + 1,
                    ..base.clone()
                },
                "seed",
            ),
            (
                TextToImageRequest {
                    style: "sepia".into(),
                    ..base.clone()
                },
                "style",
            ),
            (
                TextToImageRequest {
                    strength: Some(0.5),
                    ..base.clone()
                },
                "strength",
            ),
            (
                TextToImageRequest {
                    device: "gpu0".into(),
                    ..base.clone()
                },
                "device",
            ),
            (
                TextToImageRequest {
                    model: "../x".into(),
                    ..base.clone()
                },
                "model",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(req.check().unwrap_err().field, field, "{req:?}");
        }
    }

    #[test]
    fn a_job_request_keeps_its_kind_through_the_history_column() {
        let job = JobRequest::TextToImage(TextToImageJob {
            request: TextToImageRequest {
                negative_prompt: "blur".into(),
                scheduler: Some(SchedulerKind::EulerAncestral),
                ..TextToImageRequest::new("a fox")
            },
            output: "/tmp/x.png".into(),
        });
        let back = JobRequest::from_params_json(job.kind(), &job.params_json()).unwrap();
        assert_eq!(back, job);
        assert!(JobRequest::from_params_json(JobKind::ImageTo3d, &job.params_json()).is_err());
    }
}
