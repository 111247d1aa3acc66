//! The app's state, split the way eframe wants it: [`SavedState`] is restored from
//! eframe storage on start and written back by `App::save`; everything else is runtime
//! state rebuilt on each start. Panels never mutate either directly: they emit [`Command`]s.

use std::path::{Path, PathBuf};

use orfeas_core::request::{Decoder, TextToImageRequest};
use serde::{Deserialize, Serialize};

/// The top-level tabs, in the order they appear in the top bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    #[default]
    Create,
    Viewer,
    Gallery,
    Metrics,
    Alerts,
    Models,
    Settings,
}

impl Tab {
    pub const ALL: [Tab; 7] = [
        Tab::Create,
        Tab::Viewer,
        Tab::Gallery,
        Tab::Metrics,
        Tab::Alerts,
        Tab::Models,
        Tab::Settings,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Tab::Create => "Create",
            Tab::Viewer => "Viewer",
            Tab::Gallery => "Gallery",
            Tab::Metrics => "Metrics",
            Tab::Alerts => "Alerts",
            Tab::Models => "Models",
            Tab::Settings => "Settings",
        }
    }
}

/// Colour theme preference. `System` follows the OS setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThemeChoice {
    #[default]
    System,
    Dark,
    Light,
}

impl ThemeChoice {
    pub const ALL: [ThemeChoice; 3] = [ThemeChoice::System, ThemeChoice::Dark, ThemeChoice::Light];

    pub fn label(self) -> &'static str {
        match self {
            ThemeChoice::System => "System",
            ThemeChoice::Dark => "Dark",
            ThemeChoice::Light => "Light",
        }
    }
}

/// Where the studio runs its jobs (Settings → Run jobs on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOn {
    /// The local engine, on this computer's CPU or GPU.
    #[default]
    ThisMachine,
    /// The fleet queue at `Settings::fleet_url` (`orfeas serve --queue` workers).
    Fleet,
}

impl RunOn {
    pub const ALL: [RunOn; 2] = [RunOn::ThisMachine, RunOn::Fleet];

    pub fn label(self) -> &'static str {
        match self {
            RunOn::ThisMachine => "This machine",
            RunOn::Fleet => "Fleet",
        }
    }
}

/// Image→3D quality preset as saved in settings. Kept separate from the core enum so the
/// saved format does not change when the engine's types do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QualityChoice {
    Draft,
    #[default]
    Standard,
    High,
}

impl QualityChoice {
    pub const ALL: [QualityChoice; 3] = [
        QualityChoice::Draft,
        QualityChoice::Standard,
        QualityChoice::High,
    ];

    pub fn label(self) -> &'static str {
        match self {
            QualityChoice::Draft => "Draft",
            QualityChoice::Standard => "Standard",
            QualityChoice::High => "High",
        }
    }
}

/// Mesh output format as saved in settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormatChoice {
    #[default]
    Glb,
    Obj,
    Ply,
    Stl,
}

impl FormatChoice {
    pub const ALL: [FormatChoice; 4] = [
        FormatChoice::Glb,
        FormatChoice::Obj,
        FormatChoice::Ply,
        FormatChoice::Stl,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FormatChoice::Glb => "GLB",
            FormatChoice::Obj => "OBJ",
            FormatChoice::Ply => "PLY",
            FormatChoice::Stl => "STL",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            FormatChoice::Glb => "glb",
            FormatChoice::Obj => "obj",
            FormatChoice::Ply => "ply",
            FormatChoice::Stl => "stl",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.extension().eq_ignore_ascii_case(ext))
    }
}

/// Which image→3D method the Create tab runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodChoice {
    /// Silhouette inflation: no weights, runs anywhere.
    #[default]
    Inflate,
    /// TripoSR: a learnt reconstruction (needs its weights).
    TripoSr,
}

impl MethodChoice {
    pub const ALL: [MethodChoice; 2] = [Self::Inflate, Self::TripoSr];

    pub fn label(self) -> &'static str {
        match self {
            Self::Inflate => "Inflate (no weights)",
            Self::TripoSr => "TripoSR (neural)",
        }
    }
}

/// The image→3D parameters shown on the Create tab (the last used values are saved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateParams {
    pub method: MethodChoice,
    /// Where the foreground comes from (auto: alpha, else the segmenter, else the border colour).
    pub background: orfeas_core::request::Background,
    /// TripoSR: points per axis of the density grid (detail; cost grows with its cube).
    pub mc_resolution: u32,
    pub quality: QualityChoice,
    pub format: FormatChoice,
    /// Share of the output frame the foreground fills, 0.5..=1.0.
    pub foreground_ratio: f32,
    /// Alpha at or above this (0..=255) is foreground (images with transparency).
    pub mask_threshold: u8,
    /// Colour distance (share of the largest) within which a pixel matches the
    /// border colour (opaque images), 0..=1.
    pub border_tolerance: f32,
    /// Pixels shaved off the mask edge before inflation.
    pub erode_px: u32,
    pub smooth_iterations: u32,
    /// Fraction of faces kept; 1.0 = no decimation.
    pub decimate_ratio: f32,
}

impl Default for CreateParams {
    fn default() -> Self {
        Self {
            method: MethodChoice::Inflate,
            background: orfeas_core::request::Background::Auto,
            mc_resolution: orfeas_core::request::DEFAULT_MC_RESOLUTION,
            quality: QualityChoice::Standard,
            format: FormatChoice::Glb,
            foreground_ratio: 0.85,
            mask_threshold: 128,
            border_tolerance: 0.12,
            erode_px: 0,
            smooth_iterations: 2,
            decimate_ratio: 1.0,
        }
    }
}

/// What the Create tab makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateMode {
    #[default]
    ImageTo3d,
    TextToImage,
}

impl CreateMode {
    pub const ALL: [CreateMode; 2] = [CreateMode::ImageTo3d, CreateMode::TextToImage];

    pub fn label(self) -> &'static str {
        match self {
            CreateMode::ImageTo3d => "Image to 3D",
            CreateMode::TextToImage => "Text to image",
        }
    }
}

/// How text→image turns latents into pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderChoice {
    /// The model's own VAE, in one pass.
    #[default]
    Vae,
    /// The VAE in overlapping tiles (less memory).
    TiledVae,
    /// The tiny decoder (TAESD): much faster, a little less detail.
    Tiny,
}

impl DecoderChoice {
    pub const ALL: [DecoderChoice; 3] = [Self::Vae, Self::TiledVae, Self::Tiny];

    pub fn label(self) -> &'static str {
        match self {
            Self::Vae => "VAE",
            Self::TiledVae => "VAE, tiled",
            Self::Tiny => "Tiny (TAESD)",
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            Self::Vae => "The model's own decoder: best detail.",
            Self::TiledVae => {
                "The model's decoder in overlapping tiles: less memory for large sizes, slower."
            }
            Self::Tiny => {
                "A 1.2M-parameter decoder (taesd, or taesdxl for SDXL; install it on the Models \
                 tab): many times faster, a little less fine detail."
            }
        }
    }
}

/// The text→image parameters shown on the Create tab (the last used values are saved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextParams {
    pub prompt: String,
    pub negative: String,
    /// Registry name (`sd-turbo`, `sd-1.5`, …); unused while `model_path` is set.
    pub model: String,
    /// A diffusers-format folder or a single-file checkpoint chosen by the
    /// user instead of a registry model (saved by older versions as `model_dir`).
    #[serde(alias = "model_dir")]
    pub model_path: Option<PathBuf>,
    /// A style preset key (`orfeas_ml::text_to_image::STYLE_PRESETS`).
    pub style: String,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    /// Keep the seed between generations; otherwise each Generate rolls a new one.
    pub seed_locked: bool,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<orfeas_core::request::SchedulerKind>,
    pub decoder: DecoderChoice,
    /// Image→image: the picture to start from (`None`: pure noise).
    pub init_image: Option<PathBuf>,
    /// How much of the schedule runs over `init_image` (0-1).
    pub strength: f64,
}

impl TextParams {
    /// Defaults for a model the user chose by path, keeping the prompt and
    /// seed (see `TextToImageParams::for_path`: the one rule for every front end).
    pub fn with_path_defaults(&self, path: &Path) -> TextParams {
        let d = orfeas_ml::text_to_image::TextToImageParams::for_path(path);
        TextParams {
            model: d.model,
            model_path: Some(path.to_path_buf()),
            steps: d.steps,
            guidance: d.guidance,
            width: d.width,
            height: d.height,
            ..self.clone()
        }
    }

    /// The one conversion from the Create tab's fields to a request. The prompt
    /// goes as typed (the runner adds the style's words).
    pub fn to_request(&self) -> TextToImageRequest {
        TextToImageRequest {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative.clone(),
            model: self.model.clone(),
            model_path: self.model_path.clone(),
            style: self.style.clone(),
            steps: Some(u32::try_from(self.steps).unwrap_or(u32::MAX)),
            guidance: Some(self.guidance),
            width: Some(u32::try_from(self.width).unwrap_or(u32::MAX)),
            height: Some(u32::try_from(self.height).unwrap_or(u32::MAX)),
            seed: self.seed,
            batch: u32::try_from(self.batch).unwrap_or(u32::MAX),
            scheduler: self.scheduler,
            decoder: match self.decoder {
                DecoderChoice::Vae => Decoder::Vae,
                DecoderChoice::TiledVae => Decoder::VaeTiled,
                DecoderChoice::Tiny => Decoder::Taesd,
            },
            strength: self.init_image.as_ref().map(|_| self.strength),
            init_image: self.init_image.clone(),
            ..TextToImageRequest::default()
        }
    }

    /// The fields for a request (a PNG dropped on the Create tab, a re-run):
    /// what it leaves open takes its model's defaults, by the one rule of
    /// `TextToImageParams::from_request`. The seed is locked, since the
    /// picture came from it.
    pub fn from_request(r: &TextToImageRequest) -> Result<TextParams, orfeas_ml::SdError> {
        let p = orfeas_ml::text_to_image::TextToImageParams::from_request(r)?;
        Ok(TextParams {
            decoder: if p.uses_tiny_decoder() {
                DecoderChoice::Tiny
            } else if p.tiled_decode {
                DecoderChoice::TiledVae
            } else {
                DecoderChoice::Vae
            },
            prompt: p.prompt,
            negative: p.negative,
            model: p.model,
            model_path: p.model_path,
            style: p.style,
            steps: p.steps,
            guidance: p.guidance,
            seed: p.seed,
            seed_locked: true,
            width: p.width,
            height: p.height,
            batch: p.batch,
            scheduler: p.scheduler,
            init_image: p.init_image,
            strength: p.strength,
        })
    }

    /// The registry model's recommended steps, guidance and size, keeping the prompt and seed.
    pub fn with_model_defaults(&self, model: &str) -> TextParams {
        let d = orfeas_ml::text_to_image::TextToImageParams::for_model(model);
        TextParams {
            model: model.to_owned(),
            model_path: None,
            steps: d.steps,
            guidance: d.guidance,
            width: d.width,
            height: d.height,
            ..self.clone()
        }
    }
}

impl Default for TextParams {
    fn default() -> Self {
        let d = orfeas_ml::text_to_image::TextToImageParams::for_model("sd-turbo");
        Self {
            prompt: String::new(),
            negative: String::new(),
            model: d.model,
            model_path: None,
            style: "none".to_owned(),
            steps: d.steps,
            guidance: d.guidance,
            seed: 42,
            seed_locked: false,
            width: d.width,
            height: d.height,
            batch: 1,
            scheduler: None,
            decoder: DecoderChoice::Vae,
            init_image: None,
            strength: orfeas_ml::text_to_image::DEFAULT_STRENGTH,
        }
    }
}

/// User settings (Settings tab).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub theme: ThemeChoice,
    pub default_quality: QualityChoice,
    pub default_format: FormatChoice,
    /// `None` = the data dir's `outputs/` folder.
    pub output_dir: Option<PathBuf>,
    /// How many generations may run at once.
    pub concurrency: usize,
    /// Serve `/metrics`, `/health` and the HTTP API on 127.0.0.1:`metrics_port`.
    pub metrics_endpoint: bool,
    pub metrics_port: u16,
    /// Bearer token the local API asks for; generated at the first start.
    pub api_token: String,
    /// Alertmanager base URL (`http://host:9093`); empty = do not send alerts.
    /// Read when telemetry starts, i.e. at the next app start.
    pub alertmanager_url: String,
    /// Run jobs here or on the fleet; read at the app's start.
    pub run_on: RunOn,
    /// The fleet's NATS URLs (`nats://host:4222`, comma-separated).
    pub fleet_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            theme: ThemeChoice::System,
            default_quality: QualityChoice::Standard,
            default_format: FormatChoice::Glb,
            output_dir: None,
            concurrency: 1,
            metrics_endpoint: false,
            metrics_port: 5000,
            api_token: String::new(),
            alertmanager_url: String::new(),
            run_on: RunOn::ThisMachine,
            fleet_url: String::new(),
        }
    }
}

/// A fresh random API token: 32 hex digits (128 bits).
pub fn new_api_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Tab {
    /// The tab whose label is `name` (any case), for `ORFEAS_GUI_TAB`.
    pub fn from_label(name: &str) -> Option<Tab> {
        Tab::ALL
            .into_iter()
            .find(|t| t.label().eq_ignore_ascii_case(name.trim()))
    }
}

/// Everything persisted through eframe storage, under [`SavedState::STORAGE_KEY`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SavedState {
    pub tab: Tab,
    pub settings: Settings,
    pub params: CreateParams,
    pub mode: CreateMode,
    pub text: TextParams,
}

impl SavedState {
    pub const STORAGE_KEY: &'static str = "orfeas-studio";
}

/// Identifies a generation job in the app (the engine's id once it exists).
pub type JobKey = i64;

/// What panels ask for. Applied in order at one point per frame by `StudioApp`.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    SelectTab(Tab),
    /// Show the native file picker (on its own thread).
    OpenFileDialog,
    /// Make this image the Create tab's input (loads its preview).
    SelectInput(PathBuf),
    /// Start an image→3D job on `input` with the current parameters.
    Generate {
        input: PathBuf,
    },
    SetMode(CreateMode),
    SetTextParams(TextParams),
    /// Fill the text→image fields from a generated PNG's text chunks ("PNG Info").
    LoadPngSettings(PathBuf),
    /// Start a text→image job with the current text parameters.
    GenerateImage,
    /// Turn this image into a 3D model (switches to image→3D and starts the job).
    MakeThreeD(PathBuf),
    /// Make this image the start of the next text→image generation (image to
    /// image) and show the Create tab's text mode.
    VaryImage(PathBuf),
    /// Show the native folder picker for a diffusers-format model folder.
    PickModelFolder,
    /// Choose an SD 1.x single-file `.safetensors` checkpoint as the text→image model.
    PickModelCheckpoint,
    /// Choose the picture an image→image generation starts from.
    PickInitImage,
    /// Re-read which models are installed (Models tab).
    RefreshModels,
    /// Download a registry model into the data dir's `models/` (user's request only).
    DownloadModel(String),
    CancelDownload(String),
    /// Ask for confirmation before deleting a model folder.
    RequestDeleteModel(String),
    ConfirmDeleteModel(String),
    CancelDeleteModel,
    Cancel(JobKey),
    ClearFinished,
    SetParams(CreateParams),
    SetSettings(Settings),
    RefreshGallery,
    OpenFolder(PathBuf),
    /// Show the native folder picker for the output folder.
    PickOutputFolder,
    /// Show the native folder picker for a folder of pictures to run as a batch.
    PickBatchFolder,
    /// Queue an image→3D job for every picture in this folder (one progress bar for all).
    GenerateFolder(PathBuf),
    /// Re-run a history entry with its own parameters but another output format.
    ExportAs {
        record: JobKey,
        format: FormatChoice,
    },
    /// Re-run a history entry with its own parameters.
    Rerun {
        record: JobKey,
    },
    /// Ask for confirmation before deleting.
    RequestDelete {
        record: JobKey,
    },
    ConfirmDelete {
        record: JobKey,
    },
    CancelDelete,
    DismissToast(u64),
    /// Load this mesh file into the Viewer (in the background) and show the Viewer tab.
    OpenInViewer {
        path: PathBuf,
        /// The generation's 0..=1 quality score, when the mesh came from a job.
        quality_score: Option<f32>,
    },
    /// Show the native file picker for a mesh to view (on its own thread).
    OpenMeshDialog,
    /// The Create tab's mask editor: brush, undo, reset, save the cut-out.
    Mask(crate::app::mask::MaskCommand),
}
