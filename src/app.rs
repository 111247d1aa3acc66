//! The desktop app: owns the state, runs the frame loop, applies [`Command`]s.
//!
//! Per frame: poll background work (engine, history worker, thumbnails, dialogs) →
//! turn dropped files into commands → draw panels (which only read a [`StudioCtx`]
//! and emit commands) → apply all commands at one point.

pub mod backend;
pub mod job_views;
pub mod mask;
pub mod model_library;
pub mod requests;
pub mod state;
pub mod thumbnails;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use crate::app::backend::{Backend, BackendUpdate};
use crate::app::job_views::{JobPhase, JobView, StepPreview};
use crate::app::model_library::{Models, ModelsEvent};
use crate::app::state::{Command, CreateMode, JobKey, SavedState, Tab, ThemeChoice};
use crate::app::thumbnails::Thumbnails;
use crate::ui::theme::{self, space};
use crate::ui::toast::Toasts;
use crate::ui::{GalleryView, Monitoring, StudioCtx};
use crate::viewport::{ViewerCommand, ViewerState};
use orfeas_core::http::{ServeConfig, ServerHandle};
use orfeas_core::telemetry::{Telemetry, TelemetryConfig};

/// How the app is started; tests pass their own data dir instead of setting env vars.
#[derive(Clone, Debug, Default)]
pub struct AppConfig {
    /// `None` = the platform data dir (`ORFEAS_DATA_DIR` overrides).
    pub data_dir: Option<PathBuf>,
    /// A mesh to show on the Viewer tab at start (`orfeas view MESH`).
    pub open_mesh: Option<PathBuf>,
    /// A picture to select as the image→3D input at start (`orfeas open IMAGE`,
    /// how the desktop's "Open with" hands files over).
    pub open_image: Option<PathBuf>,
    /// The tab to open instead of the saved one (`ORFEAS_GUI_TAB`, for screenshots).
    pub start_tab: Option<Tab>,
    /// An image to turn into 3D right after start (`ORFEAS_GUI_GENERATE`, for screenshots).
    pub generate_on_start: Option<PathBuf>,
    /// The image→3D method and grid to use for it (`ORFEAS_GUI_METHOD=triposr`,
    /// `ORFEAS_GUI_MC_RESOLUTION`, for screenshots).
    pub method_on_start: Option<(state::MethodChoice, Option<u32>)>,
    /// A text→image job to start right after start (`ORFEAS_GUI_PROMPT`, for screenshots).
    pub prompt_on_start: Option<PromptStart>,
    /// The hub models are downloaded from (`None`: `HF_ENDPOINT` or huggingface.co).
    pub hf_endpoint: Option<String>,
    /// The graphics API to force (`--backend`, `ORFEAS_BACKEND`) for the window
    /// and the offscreen thumbnails; `None`: the best one found.
    pub backend: Option<crate::viewport::GpuBackend>,
}

/// `ORFEAS_GUI_PROMPT` with `ORFEAS_GUI_MODEL_DIR` (a diffusers folder),
/// `ORFEAS_GUI_STEPS` and `ORFEAS_GUI_INIT_IMAGE` (image to image): generate
/// this prompt at start.
#[derive(Clone, Debug, Default)]
pub struct PromptStart {
    pub prompt: String,
    pub model_path: Option<PathBuf>,
    pub steps: Option<usize>,
    pub init_image: Option<PathBuf>,
}

impl AppConfig {
    /// The default config plus the screenshot/test switches from the environment.
    pub fn from_env() -> Self {
        AppConfig {
            start_tab: std::env::var("ORFEAS_GUI_TAB")
                .ok()
                .and_then(|name| Tab::from_label(&name)),
            generate_on_start: std::env::var_os("ORFEAS_GUI_GENERATE").map(PathBuf::from),
            method_on_start: std::env::var("ORFEAS_GUI_METHOD").ok().and_then(|m| {
                let method = match m.to_ascii_lowercase().as_str() {
                    "triposr" => state::MethodChoice::TripoSr,
                    "inflate" => state::MethodChoice::Inflate,
                    _ => return None,
                };
                let res = std::env::var("ORFEAS_GUI_MC_RESOLUTION")
                    .ok()
                    .and_then(|r| r.parse().ok());
                Some((method, res))
            }),
            prompt_on_start: std::env::var("ORFEAS_GUI_PROMPT")
                .ok()
                .map(|prompt| PromptStart {
                    prompt,
                    model_path: std::env::var_os("ORFEAS_GUI_MODEL_DIR").map(PathBuf::from),
                    steps: std::env::var("ORFEAS_GUI_STEPS")
                        .ok()
                        .and_then(|s| s.parse().ok()),
                    init_image: std::env::var_os("ORFEAS_GUI_INIT_IMAGE").map(PathBuf::from),
                }),
            ..Default::default()
        }
    }
}

/// The running `/metrics` + API server of the GUI (Settings → Metrics endpoint).
struct Endpoint {
    /// (port, token) it was started with; a change restarts it.
    started_with: Option<(u16, String)>,
    handle: Option<ServerHandle>,
    error: Option<String>,
}

/// Opens the main window and runs until it is closed.
pub fn run_gui(config: AppConfig) -> anyhow::Result<()> {
    let mut options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("ORFEAS Studio")
            // The desktop file's name: Wayland and X11 match the window to its menu entry and icon.
            .with_app_id("org.orfeas.Studio")
            .with_inner_size([1320.0, 860.0])
            .with_min_inner_size([960.0, 620.0])
            .with_drag_and_drop(true),
        // eframe names the settings folder after the app id when there is one;
        // this keeps it where it was before the id (under the app's name).
        persistence_path: eframe::storage_dir("ORFEAS Studio").map(|dir| dir.join("app.ron")),
        ..Default::default()
    };
    if let Some(dir) = options.persistence_path.as_ref().and_then(|p| p.parent())
        && let Err(err) = std::fs::create_dir_all(dir)
    {
        tracing::warn!(
            "settings will not be saved: cannot create {}: {err}",
            dir.display()
        );
    }
    force_backend(&mut options.wgpu_options, config.backend);
    eframe::run_native(
        "ORFEAS Studio",
        options,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, config)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the ORFEAS Studio window: {e}"))
}

/// Restricts eframe's wgpu set-up to the forced backend, if there is one.
fn force_backend(
    options: &mut eframe::egui_wgpu::WgpuConfiguration,
    backend: Option<crate::viewport::GpuBackend>,
) {
    if let eframe::egui_wgpu::WgpuSetup::CreateNew(setup) = &mut options.wgpu_setup {
        setup.instance_descriptor.backends = crate::viewport::gpu::instance_backends(backend);
    }
}

/// A native dialog running on its own thread (rfd blocks until the user answers).
enum PendingDialog {
    OpenImage(mpsc::Receiver<Option<PathBuf>>),
    OutputFolder(mpsc::Receiver<Option<PathBuf>>),
    BatchFolder(mpsc::Receiver<Option<PathBuf>>),
    OpenMesh(mpsc::Receiver<Option<PathBuf>>),
    ModelFolder(mpsc::Receiver<Option<PathBuf>>),
    InitImage(mpsc::Receiver<Option<PathBuf>>),
    /// A save dialog followed by the export itself, both on the dialog's thread:
    /// `None` = the user cancelled, otherwise the files written or why not.
    ExportMesh(mpsc::Receiver<Option<Result<Vec<PathBuf>, String>>>),
    /// A save dialog and the cut-out's write: `None` = cancelled.
    SaveCutOut(mpsc::Receiver<Option<Result<PathBuf, String>>>),
}

/// Which picker [`StudioApp::open_dialog`] shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DialogKind {
    OpenImage,
    OutputFolder,
    BatchFolder,
    OpenMesh,
    ModelFolder,
    ModelCheckpoint,
    InitImage,
}

pub struct StudioApp {
    saved: SavedState,
    data_dir: PathBuf,
    backend: Result<Backend, String>,
    /// Jobs of this session shown in the queue, oldest first.
    jobs: Vec<JobView>,
    /// Jobs the user cleared from the queue (they stay in the Gallery).
    cleared: std::collections::HashSet<JobKey>,
    gallery: GalleryView,
    input: Option<PathBuf>,
    thumbs: Thumbnails,
    toasts: Toasts,
    dialog: Option<PendingDialog>,
    applied_theme: Option<ThemeChoice>,
    /// Runtime only: one registry for the dashboard, the alerts and `/metrics`.
    telemetry: Result<Telemetry, String>,
    /// The Alertmanager URL telemetry was started with (changes apply at the next start).
    alertmanager_in_use: Option<String>,
    /// The fleet jobs go to and its URLs (`Ok(None)`: this machine), or why
    /// it could not be reached. Kept for the connection's lifetime.
    fleet: Result<Option<(Arc<orfeas_core::fleet::Fleet>, String)>, String>,
    endpoint: Endpoint,
    /// The Viewer tab's mesh and camera (runtime only: meshes are reopened, not saved).
    viewer: ViewerState,
    /// For starting background mesh loads from [`Self::apply`].
    egui_ctx: egui::Context,
    /// The Models tab: install state, downloads, deletes.
    models: Models,
    /// The newest step preview of each running text→image job.
    previews: std::collections::HashMap<JobKey, StepPreview>,
    /// The Create tab's mask of the selected picture (runtime only).
    mask: mask::MaskEditor,
    /// The last folder queued with "Open folder as batch".
    batch: Option<BatchRun>,
}

/// A folder queued as one batch.
struct BatchRun {
    name: String,
    keys: Vec<JobKey>,
}

/// The fleet the settings ask for, connected; `Ok(None)` when jobs run here.
/// A fleet that cannot be reached leaves the studio working locally.
fn connect_fleet(
    settings: &state::Settings,
) -> Result<Option<(Arc<orfeas_core::fleet::Fleet>, String)>, String> {
    use orfeas_core::fleet::{Fleet, FleetConfig};
    if settings.run_on != state::RunOn::Fleet {
        return Ok(None);
    }
    let connect = || -> Result<Arc<Fleet>, orfeas_core::fleet::FleetError> {
        Fleet::connect(FleetConfig {
            connect_timeout: std::time::Duration::from_secs(3),
            ..FleetConfig::client(&settings.fleet_url, "studio")?
        })
    };
    connect()
        .map(|fleet| {
            let urls = fleet.config().urls.join(",");
            Some((fleet, urls))
        })
        .map_err(|e| {
            let why = match e {
                orfeas_core::fleet::FleetError::Unreachable { urls, reason } => format!(
                    "Cannot reach the fleet at {urls} ({reason}); check the URL and that \
                     nats-server runs with -js"
                ),
                other => other.to_string(),
            };
            format!("{why}. Jobs run on this machine until the fleet answers at the next start.")
        })
}

impl StudioApp {
    pub fn new(cc: &eframe::CreationContext<'_>, config: AppConfig) -> Self {
        Self::with_storage(&cc.egui_ctx, cc.storage, config)
    }

    /// Builds the app from an egui context and (optionally) saved state; used by
    /// [`Self::new`] and by tests, whose creation context has no storage.
    pub fn with_storage(
        ctx: &egui::Context,
        storage: Option<&dyn eframe::Storage>,
        config: AppConfig,
    ) -> Self {
        let mut saved: SavedState = storage
            .and_then(|s| eframe::get_value(s, SavedState::STORAGE_KEY))
            .unwrap_or_default();
        if saved.settings.api_token.is_empty() {
            saved.settings.api_token = state::new_api_token();
        }
        if let Some(tab) = config.start_tab {
            saved.tab = tab;
        }
        let mut toasts = Toasts::default();
        let data_dir = match config.data_dir {
            Some(dir) => dir,
            None => orfeas_core::paths::data_dir().unwrap_or_else(|err| {
                toasts.error(format!("{err}"));
                PathBuf::from("orfeas-data")
            }),
        };
        let fleet = connect_fleet(&saved.settings);
        if let Err(err) = &fleet {
            toasts.error(err.clone());
        }
        let repaint_ctx = ctx.clone();
        let backend = Backend::start(
            &data_dir,
            saved.settings.concurrency,
            fleet.as_ref().ok().and_then(Option::as_ref).map(|(f, _)| f),
            move || repaint_ctx.request_repaint(),
        )
        .map_err(|e| format!("{e:#}"));
        if let Err(err) = &backend {
            toasts.error(err.clone());
        }
        let alertmanager_in_use =
            Some(saved.settings.alertmanager_url.trim().to_owned()).filter(|url| !url.is_empty());
        let telemetry = Telemetry::start(TelemetryConfig {
            data_dir: Some(data_dir.clone()),
            sampling: true,
            history: true,
            alertmanager_url: alertmanager_in_use.clone(),
            ..TelemetryConfig::default()
        })
        .map_err(|e| format!("metrics are off: {e}"));
        match (&telemetry, &backend) {
            // Image→3D jobs of the GUI move the generation metrics.
            (Ok(t), Ok(b)) => b.engine().add_observer(Arc::new(t.clone())),
            (Err(err), _) => toasts.error(err.clone()),
            _ => {}
        }
        let repaint_ctx = ctx.clone();
        let thumbs = match Thumbnails::new(config.backend, move || repaint_ctx.request_repaint()) {
            Ok(t) => t,
            Err(err) => {
                // Without a decoder thread previews stay "loading"; generation still works.
                toasts.error(format!("cannot start the preview thread: {err}"));
                Thumbnails::disabled()
            }
        };
        let data_dir_for_models = data_dir.clone();
        let repaint_ctx = ctx.clone();
        let mask_editor =
            match mask::MaskEditor::new(&data_dir, move || repaint_ctx.request_repaint()) {
                Ok(m) => m,
                Err(err) => {
                    toasts.error(format!("cannot start the mask thread: {err}"));
                    mask::MaskEditor::disabled()
                }
            };
        let mut app = Self {
            saved,
            data_dir,
            backend,
            jobs: Vec::new(),
            cleared: Default::default(),
            gallery: GalleryView::default(),
            input: None,
            thumbs,
            toasts,
            dialog: None,
            applied_theme: None,
            telemetry,
            alertmanager_in_use,
            fleet,
            endpoint: Endpoint {
                started_with: None,
                handle: None,
                error: None,
            },
            viewer: ViewerState::new(egui::Id::unique("orfeas-viewer")),
            egui_ctx: ctx.clone(),
            models: {
                let repaint_ctx = ctx.clone();
                Models::new(
                    &data_dir_for_models,
                    config.hf_endpoint.clone(),
                    Arc::new(move || repaint_ctx.request_repaint()),
                )
            },
            previews: Default::default(),
            mask: mask_editor,
            batch: None,
        };
        app.apply(Command::RefreshGallery);
        // The Create tab marks models that are not installed; the Models tab lists them.
        app.apply(Command::RefreshModels);
        app.sync_endpoint();
        if let Some((method, res)) = config.method_on_start {
            let mut params = app.saved.params.clone();
            params.method = method;
            if let Some(res) = res {
                params.mc_resolution = res;
            }
            app.apply(Command::SetParams(params));
        }
        if let Some(input) = config.generate_on_start {
            app.apply(Command::SelectInput(input.clone()));
            app.apply(Command::Generate { input });
        }
        if let Some(start) = config.prompt_on_start {
            let mut text = app.saved.text.clone();
            text.prompt = start.prompt;
            if start.model_path.is_some() {
                text.model_path = start.model_path;
            }
            if let Some(steps) = start.steps {
                text.steps = steps;
            }
            if start.init_image.is_some() {
                text.init_image = start.init_image;
            }
            app.saved.mode = CreateMode::TextToImage;
            app.saved.tab = Tab::Create;
            app.apply(Command::SetTextParams(text));
            app.apply(Command::GenerateImage);
        }
        if let Some(path) = config.open_image {
            app.apply(Command::SelectInput(path));
            app.saved.mode = CreateMode::ImageTo3d;
            app.saved.tab = Tab::Create;
        }
        if let Some(path) = config.open_mesh {
            app.apply(Command::OpenInViewer {
                path,
                quality_score: None,
            });
        }
        app
    }

    pub fn saved_state(&self) -> &SavedState {
        &self.saved
    }

    pub fn jobs(&self) -> &[JobView] {
        &self.jobs
    }

    pub fn gallery(&self) -> &GalleryView {
        &self.gallery
    }

    /// The Models tab's state.
    pub fn models(&self) -> &crate::app::model_library::ModelsView {
        self.models.view()
    }

    /// Jobs with a live step preview.
    pub fn preview_keys(&self) -> Vec<JobKey> {
        self.previews.keys().copied().collect()
    }

    /// Image previews and rendered mesh thumbnails.
    pub fn thumbnails(&self) -> &Thumbnails {
        &self.thumbs
    }

    pub fn toasts(&self) -> &Toasts {
        &self.toasts
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The app's telemetry, unless it failed to start.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.as_ref().ok()
    }

    /// Where the metrics endpoint listens, while it runs.
    pub fn endpoint_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.handle.as_ref().map(ServerHandle::addr)
    }

    /// Starts, restarts or stops the metrics/API server to match the settings.
    fn sync_endpoint(&mut self) {
        let s = &self.saved.settings;
        let wanted = s
            .metrics_endpoint
            .then(|| (s.metrics_port, s.api_token.clone()));
        if wanted == self.endpoint.started_with {
            return;
        }
        // Stop first: a restart on the same port needs the old socket closed.
        self.endpoint.handle = None;
        self.endpoint.error = None;
        self.endpoint.started_with = wanted.clone();
        let Some((port, token)) = wanted else { return };
        let (telemetry, backend) = match (&self.telemetry, &self.backend) {
            (Ok(t), Ok(b)) => (t.clone(), b),
            (Err(err), _) | (_, Err(err)) => {
                self.endpoint.error = Some(err.clone());
                return;
            }
        };
        let config = ServeConfig {
            bind: format!("127.0.0.1:{port}"),
            token: Some(token).filter(|t| !t.is_empty()),
            data_dir: Some(self.data_dir.clone()),
            // The GUI's own queue is what the user sees; do not restart old API jobs behind it.
            requeue_on_start: false,
            ..ServeConfig::default()
        };
        match orfeas_core::http::start(config, telemetry, backend.engine().clone()) {
            Ok(handle) => self.endpoint.handle = Some(handle),
            Err(err) => {
                let msg = format!("cannot serve metrics on 127.0.0.1:{port}: {err}");
                self.toasts.error(msg.clone());
                self.endpoint.error = Some(msg);
            }
        }
    }

    /// The Viewer tab's state (mesh on show, camera, loading progress).
    pub fn viewer(&self) -> &ViewerState {
        &self.viewer
    }

    /// Where new outputs go: the chosen folder or the data dir's `outputs/`.
    pub fn output_dir(&self) -> PathBuf {
        self.saved
            .settings
            .output_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("outputs"))
    }

    /// Applies one command. Public so tests can drive the app the way panels do.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::SelectTab(tab) => {
                self.saved.tab = tab;
                if tab == Tab::Gallery {
                    self.apply(Command::RefreshGallery);
                }
                if tab == Tab::Models {
                    self.apply(Command::RefreshModels);
                }
            }
            Command::SetMode(mode) => self.saved.mode = mode,
            Command::SetTextParams(text) => self.saved.text = text,
            Command::GenerateImage => self.generate_image(),
            Command::MakeThreeD(image) => {
                self.saved.mode = CreateMode::ImageTo3d;
                self.saved.tab = Tab::Create;
                self.apply(Command::SelectInput(image.clone()));
                self.apply(Command::Generate { input: image });
            }
            Command::VaryImage(image) => {
                self.saved.text.init_image = Some(image);
                self.saved.mode = CreateMode::TextToImage;
                self.saved.tab = Tab::Create;
            }
            Command::LoadPngSettings(path) => self.load_png_settings(&path),
            Command::PickModelFolder => self.open_dialog(DialogKind::ModelFolder),
            Command::PickModelCheckpoint => self.open_dialog(DialogKind::ModelCheckpoint),
            Command::PickInitImage => self.open_dialog(DialogKind::InitImage),
            Command::RefreshModels => {
                if let Err(err) = self.models.refresh() {
                    self.toasts.error(err);
                }
            }
            Command::DownloadModel(name) => {
                if let Err(err) = self.models.download(&name) {
                    self.toasts.error(err);
                }
            }
            Command::CancelDownload(name) => self.models.cancel_download(&name),
            Command::RequestDeleteModel(name) => self.models.request_delete(name),
            Command::CancelDeleteModel => self.models.cancel_delete(),
            Command::ConfirmDeleteModel(name) => {
                if let Err(err) = self.models.delete(&name) {
                    self.toasts.error(err);
                }
            }
            Command::OpenFileDialog => self.open_dialog(DialogKind::OpenImage),
            Command::PickOutputFolder => self.open_dialog(DialogKind::OutputFolder),
            Command::PickBatchFolder => self.open_dialog(DialogKind::BatchFolder),
            Command::GenerateFolder(folder) => self.generate_folder(&folder),
            Command::OpenMeshDialog => self.open_dialog(DialogKind::OpenMesh),
            Command::OpenInViewer {
                path,
                quality_score,
            } => {
                self.viewer.open_file(&self.egui_ctx, &path);
                // `open_file` clears the score; loading does not touch it again.
                self.viewer.quality_score = quality_score;
                self.saved.tab = Tab::Viewer;
            }
            Command::SelectInput(path) => {
                self.thumbs.forget(&path);
                self.input = Some(path);
            }
            Command::Generate { input } => {
                let output_dir = self.output_dir();
                let mask = match self.write_user_mask(&input) {
                    Ok(mask) => mask,
                    Err(err) => {
                        self.toasts.error(err);
                        return;
                    }
                };
                match &self.backend {
                    Ok(backend) => {
                        if let Err(err) =
                            backend.submit_with_mask(&input, &self.saved.params, &output_dir, mask)
                        {
                            self.toasts.error(format!("{err:#}"));
                        }
                    }
                    Err(err) => self.toasts.error(err.clone()),
                }
            }
            Command::Cancel(key) => {
                if let Ok(backend) = &self.backend {
                    backend.cancel(key);
                }
            }
            Command::ClearFinished => {
                let finished: Vec<JobKey> = self
                    .jobs
                    .iter()
                    .filter(|j| j.phase.is_finished())
                    .map(|j| j.key)
                    .collect();
                for key in &finished {
                    self.previews.remove(key);
                }
                self.cleared.extend(finished);
                self.jobs.retain(|j| !j.phase.is_finished());
            }
            Command::SetParams(params) => self.saved.params = params,
            Command::SetSettings(settings) => {
                if settings.concurrency != self.saved.settings.concurrency {
                    self.toasts
                        .info("The new number of parallel jobs takes effect at the next start.");
                }
                self.saved.settings = settings;
                self.sync_endpoint();
            }
            Command::RefreshGallery => {
                if let Ok(backend) = &self.backend {
                    backend.refresh_gallery();
                }
            }
            Command::OpenFolder(dir) => {
                // The models folder is where downloads go; opening it before the
                // first download shows the (empty) place rather than an error.
                if dir == self.models.view().download_root
                    && let Err(err) = std::fs::create_dir_all(&dir)
                {
                    self.toasts
                        .error(format!("cannot create {}: {err}", dir.display()));
                    return;
                }
                if let Err(err) = open_in_file_manager(&dir) {
                    self.toasts.error(err);
                }
            }
            Command::ExportAs { record, format } => self.resubmit(record, Some(format)),
            Command::Rerun { record } => self.resubmit(record, None),
            Command::RequestDelete { record } => self.gallery.confirm_delete = Some(record),
            Command::ConfirmDelete { record } => {
                self.gallery.confirm_delete = None;
                if let Ok(backend) = &self.backend {
                    backend.delete(record);
                }
            }
            Command::CancelDelete => self.gallery.confirm_delete = None,
            Command::DismissToast(id) => self.toasts.dismiss(id),
            Command::Mask(mask::MaskCommand::SaveCutOut) => self.save_cut_out(),
            Command::Mask(command) => self.mask.apply(command),
        }
    }

    /// The mask editor (what the Create tab overlays).
    pub fn mask_editor(&self) -> &mask::MaskEditor {
        &self.mask
    }

    /// Writes the user's edited mask for `input` into `<data>/masks/`; `None`
    /// when the automatic mask is unchanged (the runner computes it itself).
    fn write_user_mask(&self, input: &Path) -> Result<Option<PathBuf>, String> {
        let Some(user) = self.mask.user_mask_for(input) else {
            return Ok(None);
        };
        if user.pixels().all(|p| p.0[0] < 128) {
            return Err(
                "The mask is all background: paint the object back in with Add, or Reset mask."
                    .to_owned(),
            );
        }
        let path = mask::mask_path(&self.data_dir, input);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        mask::write_mask_png(&path, &user)?;
        Ok(Some(path))
    }

    /// Asks where to save the picture with its mask as alpha, then writes it
    /// (both on the dialog's thread).
    fn save_cut_out(&mut self) {
        if self.dialog.is_some() {
            return;
        }
        let (Some(cut), Some(input)) = (self.mask.cut_out(), self.input.clone()) else {
            self.toasts
                .error("Wait for the mask to appear before saving the cut-out.");
            return;
        };
        let stem = input.file_stem().map_or_else(
            || "picture".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        let start_dir = self.output_dir();
        let repaint = self.egui_ctx.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("orfeas-cut-out".into())
            .spawn(move || {
                let mut dialog = rfd::FileDialog::new()
                    .set_title("Save the cut-out")
                    .set_file_name(format!("{stem}-cutout.png"))
                    .add_filter("png", &["png"]);
                if start_dir.is_dir() {
                    dialog = dialog.set_directory(&start_dir);
                }
                let result = dialog
                    .save_file()
                    .map(|path| mask::write_rgba_png(&path, &cut).map(|()| path));
                if tx.send(result).is_err() {
                    tracing::debug!("the app closed before the cut-out was saved");
                }
                repaint.request_repaint();
            });
        match spawned {
            Ok(_) => self.dialog = Some(PendingDialog::SaveCutOut(rx)),
            Err(err) => self
                .toasts
                .error(format!("cannot start the save dialog ({err}); try again")),
        }
    }

    /// Builds the text→image job from the Create tab and queues it; refused input
    /// (empty prompt, a model that is not installed, …) is a toast and writes nothing.
    fn generate_image(&mut self) {
        if !self.saved.text.seed_locked {
            self.saved.text.seed = u64::from(rand::random::<u32>());
        }
        let request = self.saved.text.to_request();
        if let Err(err) = request.check() {
            self.toasts.error(err.to_string());
            return;
        }
        // Say now, not after the queue, when a registry model is not installed.
        let model_path = match &request.model_path {
            Some(dir) => dir.clone(),
            None => match self.models.resolve(&request.model) {
                Ok(dir) => dir,
                Err(err) => {
                    self.toasts.error(err);
                    return;
                }
            },
        };
        if request.decoder == orfeas_core::request::Decoder::Taesd {
            let xl = orfeas_ml::sd::pipeline::SdModel::dir_is_xl(&model_path).unwrap_or(false);
            if let Err(err) = self.models.resolve(if xl { "taesdxl" } else { "taesd" }) {
                self.toasts.error(err);
                return;
            }
        }
        let job = orfeas_core::request::TextToImageJob {
            request,
            output: PathBuf::new(), // chosen by the backend
        };
        let output_dir = self.output_dir();
        match &self.backend {
            Ok(backend) => {
                if let Err(err) = backend.submit_text(job, &output_dir) {
                    self.toasts.error(format!("{err:#}"));
                }
            }
            Err(err) => self.toasts.error(err.clone()),
        }
    }

    /// The text→image fields from the PNG's own text chunks, as A1111's PNG Info
    /// does: prompt, negative prompt, style, seed (locked), model, scheduler,
    /// size, steps, guidance, decoder and strength. What the PNG cannot hold (a
    /// model chosen by path, the start picture) is kept when it matches by
    /// name, and otherwise named in a toast.
    fn load_png_settings(&mut self, path: &std::path::Path) {
        let info = match orfeas_core::request::text_to_image_from_png(path) {
            Ok(info) => info,
            Err(err) => {
                self.toasts.error(err.message);
                return;
            }
        };
        let current = self.saved.text.clone();
        let mut request = info.request.clone();
        let file_name =
            |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut missing = Vec::new();
        if let Some(name) = &info.model_name
            && orfeas_ml::models::known(name).is_err()
        {
            // Not a registry name: the folder or checkpoint the user chose.
            match &current.model_path {
                Some(dir) if file_name(dir).as_deref() == Some(name.as_str()) => {
                    request.model = current.model.clone();
                    request.model_path = Some(dir.clone());
                }
                _ => {
                    request.model = current.model.clone();
                    request.model_path = current.model_path.clone();
                    missing.push(format!("the model “{name}” (choose its folder or file)"));
                }
            }
        }
        if let Some(name) = &info.init_image_name {
            match &current.init_image {
                Some(p) if file_name(p).as_deref() == Some(name.as_str()) => {
                    request.init_image = Some(p.clone());
                }
                _ => missing.push(format!("the start picture “{name}”")),
            }
        }
        if request.init_image.is_none() {
            request.strength = None;
        }
        match state::TextParams::from_request(&request) {
            Ok(text) => self.saved.text = text,
            Err(err) => {
                self.toasts.error(format!("{err}"));
                return;
            }
        }
        self.saved.mode = CreateMode::TextToImage;
        self.saved.tab = Tab::Create;
        let source = file_name(path).unwrap_or_default();
        if missing.is_empty() {
            self.toasts
                .success(format!("Settings loaded from {source}"));
        } else {
            self.toasts.info(format!(
                "Settings loaded from {source}; a PNG does not hold {}",
                missing.join(" or ")
            ));
        }
    }

    fn resubmit(&mut self, record: JobKey, format: Option<state::FormatChoice>) {
        let Some(item) = self.gallery.items.iter().find(|i| i.record == record) else {
            self.toasts.error(format!(
                "job {record} is no longer in the history; refresh the Gallery"
            ));
            return;
        };
        let output_dir = self.output_dir();
        let input = item.input.clone();
        let item_is_text = item.text.is_some();
        // Show the mask the job used, so what the overlay shows is what ran.
        if let (Some(input), Some(mask)) =
            (&input, item.params.as_ref().and_then(|p| p.mask.as_ref()))
        {
            match image::open(mask) {
                Ok(stored) => self.mask.adopt(input, stored.to_luma8()),
                Err(err) => self.toasts.error(format!(
                    "the job's mask {} cannot be read ({err}); the re-run will fail",
                    mask.display()
                )),
            }
        }
        if let Ok(backend) = &self.backend
            && let Err(err) = backend.resubmit(item, format, &output_dir)
        {
            self.toasts.error(format!("{err:#}"));
        }
        // Show the job where its progress is: the Create tab, with its input.
        self.saved.mode = if item_is_text {
            CreateMode::TextToImage
        } else {
            CreateMode::ImageTo3d
        };
        self.input = input.or(self.input.take());
        self.saved.tab = Tab::Create;
    }

    /// Queues every picture of `folder` (not its subfolders) with the current
    /// parameters; the Gallery shows one progress bar for them.
    fn generate_folder(&mut self, folder: &Path) {
        let pictures = match orfeas_core::image_input::pictures_in(folder) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => {
                self.toasts.error(format!(
                    "{} holds no pictures (PNG, JPEG or WebP)",
                    folder.display()
                ));
                return;
            }
            Err(e) => {
                self.toasts
                    .error(format!("cannot read the folder {}: {e}", folder.display()));
                return;
            }
        };
        let backend = match &self.backend {
            Ok(b) => b,
            Err(e) => {
                self.toasts.error(e.clone());
                return;
            }
        };
        let output_dir = self.output_dir();
        let mut keys = Vec::new();
        for input in &pictures {
            match backend.submit_batch(input, &self.saved.params, &output_dir) {
                Ok(key) => keys.push(key),
                Err(e) => self.toasts.error(format!("{}: {e:#}", input.display())),
            }
        }
        let name = folder.file_name().map_or_else(
            || folder.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.toasts
            .success(format!("{} pictures from {name} queued", keys.len()));
        self.batch = Some(BatchRun { name, keys });
        self.saved.tab = Tab::Gallery;
    }

    /// The folder batch's progress: (name, finished, total), while one is shown.
    pub fn batch_progress(&self) -> Option<(String, usize, usize)> {
        let batch = self.batch.as_ref()?;
        let finished = self
            .jobs
            .iter()
            .filter(|j| batch.keys.contains(&j.key) && j.phase.is_finished())
            .count();
        Some((batch.name.clone(), finished, batch.keys.len()))
    }

    fn open_dialog(&mut self, kind: DialogKind) {
        if self.dialog.is_some() {
            return; // one native dialog at a time
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("orfeas-file-dialog".into())
            .spawn(move || {
                let picked = match kind {
                    DialogKind::OutputFolder => rfd::FileDialog::new()
                        .set_title("Choose the output folder")
                        .pick_folder(),
                    DialogKind::BatchFolder => rfd::FileDialog::new()
                        .set_title("Choose a folder of pictures to turn into models")
                        .pick_folder(),
                    DialogKind::InitImage => rfd::FileDialog::new()
                        .set_title("Choose the picture to start from")
                        .add_filter("Images", &orfeas_core::image_input::PICTURE_EXTENSIONS)
                        .pick_file(),
                    DialogKind::OpenImage => rfd::FileDialog::new()
                        .set_title("Open an image")
                        .add_filter("Images", &orfeas_core::image_input::PICTURE_EXTENSIONS)
                        .pick_file(),
                    DialogKind::OpenMesh => rfd::FileDialog::new()
                        .set_title("Open a 3D model")
                        .add_filter("3D models", &orfeas_core::import::MeshFormat::EXTENSIONS)
                        .pick_file(),
                    DialogKind::ModelFolder => rfd::FileDialog::new()
                        .set_title("Choose a diffusers model folder (with model_index.json)")
                        .pick_folder(),
                    DialogKind::ModelCheckpoint => rfd::FileDialog::new()
                        .set_title("Choose an SD 1.x or SDXL single-file checkpoint")
                        .add_filter("safetensors checkpoints", &["safetensors"])
                        .pick_file(),
                };
                let _ = tx.send(picked); // the app may have closed meanwhile
            });
        match spawned {
            Ok(_) => {
                self.dialog = Some(match kind {
                    DialogKind::OutputFolder => PendingDialog::OutputFolder(rx),
                    DialogKind::BatchFolder => PendingDialog::BatchFolder(rx),
                    DialogKind::OpenImage => PendingDialog::OpenImage(rx),
                    DialogKind::InitImage => PendingDialog::InitImage(rx),
                    DialogKind::OpenMesh => PendingDialog::OpenMesh(rx),
                    DialogKind::ModelFolder | DialogKind::ModelCheckpoint => {
                        PendingDialog::ModelFolder(rx)
                    }
                });
            }
            Err(err) => self.toasts.error(format!(
                "cannot open a file dialog ({err}); drop the file on the window instead"
            )),
        }
    }

    /// Asks where to save the Viewer's mesh, then writes it; both off the UI thread.
    fn export_viewer_mesh(&mut self, format: orfeas_core::import::MeshFormat) {
        use orfeas_core::export::ExportFormat;
        use orfeas_core::import::MeshFormat;
        if self.dialog.is_some() {
            return;
        }
        let Some(mesh) = self.viewer.mesh().cloned() else {
            self.toasts
                .error("Open a model in the Viewer before exporting it.");
            return;
        };
        let export_format = match format {
            MeshFormat::Glb | MeshFormat::Gltf => ExportFormat::Glb,
            MeshFormat::Obj => ExportFormat::Obj,
            MeshFormat::Ply => ExportFormat::Ply,
            MeshFormat::Stl => ExportFormat::Stl,
        };
        let stem = self
            .viewer
            .mesh_name()
            .map(Path::new)
            .and_then(|n| n.file_stem())
            .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
        let file_name = format!("{stem}.{}", export_format.extension());
        let start_dir = self.output_dir();
        let repaint = self.egui_ctx.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("orfeas-export".into())
            .spawn(move || {
                let mut dialog = rfd::FileDialog::new()
                    .set_title("Export the model")
                    .set_file_name(&file_name)
                    .add_filter(export_format.as_str(), &[export_format.extension()]);
                if start_dir.is_dir() {
                    dialog = dialog.set_directory(&start_dir);
                }
                let result = dialog.save_file().map(|path| {
                    orfeas_core::export::export_mesh(&mesh, &path, export_format)
                        .map_err(|e| format!("cannot export to {}: {e}", path.display()))
                });
                let _ = tx.send(result); // the app may have closed meanwhile
                repaint.request_repaint();
            });
        match spawned {
            Ok(_) => self.dialog = Some(PendingDialog::ExportMesh(rx)),
            Err(err) => self
                .toasts
                .error(format!("cannot start the export ({err}); try again")),
        }
    }

    fn poll_dialog(&mut self) -> Option<Command> {
        if let Some(PendingDialog::SaveCutOut(rx)) = &self.dialog {
            let result = dialog_answer(rx, "saving stopped unexpectedly; try again")?;
            self.dialog = None;
            match result {
                Some(Ok(path)) => self.toasts.success(format!("Saved {}", path.display())),
                Some(Err(err)) => self.toasts.error(err),
                None => {}
            }
            return None;
        }
        if let Some(PendingDialog::ExportMesh(rx)) = &self.dialog {
            let result = dialog_answer(rx, "the export stopped unexpectedly; try again")?;
            self.dialog = None;
            match result {
                Some(Ok(files)) => {
                    let shown = files
                        .first()
                        .map_or_else(String::new, |f| f.display().to_string());
                    self.toasts.success(format!("Exported {shown}"));
                }
                Some(Err(err)) => self.toasts.error(err),
                None => {}
            }
            return None;
        }
        let rx = match &self.dialog {
            Some(
                PendingDialog::OpenImage(rx)
                | PendingDialog::OutputFolder(rx)
                | PendingDialog::BatchFolder(rx)
                | PendingDialog::OpenMesh(rx)
                | PendingDialog::ModelFolder(rx)
                | PendingDialog::InitImage(rx),
            ) => rx,
            Some(PendingDialog::ExportMesh(_) | PendingDialog::SaveCutOut(_)) | None => {
                return None;
            }
        };
        let picked = match rx.try_recv() {
            Ok(picked) => picked,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => None,
        };
        let dialog = self.dialog.take();
        let path = picked?;
        match dialog {
            Some(PendingDialog::OutputFolder(_)) => {
                let mut settings = self.saved.settings.clone();
                settings.output_dir = Some(path);
                Some(Command::SetSettings(settings))
            }
            Some(PendingDialog::BatchFolder(_)) => Some(Command::GenerateFolder(path)),
            Some(PendingDialog::OpenMesh(_)) => Some(Command::OpenInViewer {
                path,
                quality_score: None,
            }),
            Some(PendingDialog::InitImage(_)) => Some(Command::SetTextParams(state::TextParams {
                init_image: Some(path),
                ..self.saved.text.clone()
            })),
            Some(PendingDialog::ModelFolder(_)) => {
                let checkpoint = orfeas_ml::sd::single_file::is_single_file(&path);
                if !checkpoint && !path.join("model_index.json").is_file() {
                    self.toasts.error(format!(
                        "{} has no model_index.json; choose a diffusers-format model folder \
                         or an SD 1.x or SDXL .safetensors checkpoint",
                        path.display()
                    ));
                    return None;
                }
                let text = if checkpoint {
                    self.saved.text.with_path_defaults(&path)
                } else {
                    state::TextParams {
                        model_path: Some(path),
                        ..self.saved.text.clone()
                    }
                };
                Some(Command::SetTextParams(text))
            }
            _ => Some(Command::SelectInput(path)),
        }
    }

    fn poll_models(&mut self) {
        for event in self.models.poll() {
            match event {
                ModelsEvent::Downloaded { name, dir } => self
                    .toasts
                    .success(format!("{name} is installed in {}", dir.display())),
                ModelsEvent::DownloadCancelled { name } => self.toasts.info(format!(
                    "Download of {name} stopped; Download again resumes it"
                )),
                ModelsEvent::DownloadFailed { name, error } => self
                    .toasts
                    .error(format!("Download of {name} failed: {error}")),
                ModelsEvent::Deleted { name } => self.toasts.info(format!("Deleted {name}")),
                ModelsEvent::DeleteFailed { error, .. } => self.toasts.error(error),
            }
        }
    }

    fn poll_backend(&mut self) {
        let Ok(backend) = &self.backend else { return };
        for (key, raw) in backend.take_previews() {
            let (w, h) = raw.image.dimensions();
            let image = egui::ColorImage::from_rgb([w as usize, h as usize], raw.image.as_raw());
            let texture = self.egui_ctx.load_texture(
                format!("step-preview-{key}"),
                image,
                egui::TextureOptions::LINEAR,
            );
            self.previews.insert(
                key,
                StepPreview {
                    step: raw.step,
                    total: raw.total,
                    texture,
                },
            );
        }
        let mut refresh_gallery = false;
        for update in backend.poll() {
            match update {
                BackendUpdate::Jobs(views) => {
                    for view in views {
                        if self.cleared.contains(&view.key) {
                            continue;
                        }
                        let before = self.jobs.iter().position(|j| j.key == view.key);
                        let was_finished = before.is_some_and(|i| {
                            self.jobs.get(i).is_some_and(|j| j.phase.is_finished())
                        });
                        if view.phase.is_finished() && !was_finished {
                            refresh_gallery = true;
                            self.previews.remove(&view.key);
                            if view.phase == JobPhase::Succeeded
                                && let Some(mesh) = view.mesh_output()
                            {
                                // The new model replaces what the Viewer shows; the user
                                // stays on their tab and finds it there.
                                self.viewer.open_file(&self.egui_ctx, mesh);
                                self.viewer.quality_score = view.quality_score;
                            }
                            match view.phase {
                                JobPhase::Succeeded => self.toasts.success(format!(
                                    "{} is ready{}",
                                    view.label,
                                    if view.message.is_empty() {
                                        String::new()
                                    } else {
                                        format!(": {}", view.message)
                                    }
                                )),
                                JobPhase::Failed | JobPhase::Interrupted => {
                                    self.toasts.error(format!(
                                        "{} failed: {}",
                                        view.label,
                                        view.error.as_deref().unwrap_or("unknown error")
                                    ))
                                }
                                _ => {}
                            }
                        }
                        match before {
                            Some(i) => {
                                if let Some(slot) = self.jobs.get_mut(i) {
                                    *slot = view;
                                }
                            }
                            None => self.jobs.push(view),
                        }
                    }
                }
                BackendUpdate::Gallery(items) => {
                    self.gallery.items = items;
                    self.gallery.loaded = true;
                }
                BackendUpdate::Deleted { label } => {
                    self.toasts.info(format!("Deleted {label}"));
                    refresh_gallery = true;
                }
                BackendUpdate::Error(err) => self.toasts.error(err),
            }
        }
        if refresh_gallery {
            self.apply(Command::RefreshGallery);
        }
    }
}

/// Opens a folder in the platform file manager without waiting for it.
fn open_in_file_manager(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist yet; it is created with the first generated model",
            dir.display()
        ));
    }
    let program = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(target_os = "windows") {
        "explorer"
    } else {
        "xdg-open"
    };
    let mut child = std::process::Command::new(program)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {program} to open {}: {e}", dir.display()))?;
    // Reap the child off the UI thread so it does not linger as a zombie.
    let _ = std::thread::Builder::new()
        .name("orfeas-open-folder".into())
        .spawn(move || child.wait());
    Ok(())
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if self.applied_theme != Some(self.saved.settings.theme) {
            theme::apply(&ctx, self.saved.settings.theme);
            self.applied_theme = Some(self.saved.settings.theme);
        }
        self.thumbs.poll(&ctx);
        let mask_params =
            requests::request_from_create(Path::new(""), &self.saved.params, &self.data_dir).params;
        let picture = (self.saved.mode == CreateMode::ImageTo3d)
            .then_some(self.input.as_deref())
            .flatten();
        self.mask.sync(picture, &mask_params);
        self.mask.poll(&ctx);
        self.poll_backend();
        self.poll_models();
        let mut commands: Vec<Command> = self.poll_dialog().into_iter().collect();

        // A mesh dropped anywhere on the window opens in the Viewer; a picture
        // dropped on the Create tab's text→image side fills its fields from the
        // picture's text chunks; anything else is taken as an image and starts
        // an image→3D job right away. The drops are taken out of the
        // input so the Viewer widget does not handle them a second time.
        let (dropped, hovering) = ctx.input_mut(|i| {
            (
                std::mem::take(&mut i.raw.dropped_files)
                    .iter()
                    .map(|f| f.path().to_path_buf())
                    .collect::<Vec<_>>(),
                !i.raw.hovered_files.is_empty(),
            )
        });
        for path in dropped {
            if orfeas_core::import::MeshFormat::from_path(&path).is_some() {
                commands.push(Command::OpenInViewer {
                    path,
                    quality_score: None,
                });
            } else if self.saved.tab == Tab::Create && self.saved.mode == CreateMode::TextToImage {
                // On the text→image side a picture brings back its settings (PNG Info).
                commands.push(Command::LoadPngSettings(path));
            } else if picture_has_alpha(&path) == Some(false) {
                // An opaque photo's foreground is a guess: show it before generating.
                commands.push(Command::SelectTab(Tab::Create));
                commands.push(Command::SetMode(CreateMode::ImageTo3d));
                commands.push(Command::SelectInput(path));
                self.toasts.info(
                    "No transparency in this picture: check the tinted mask (paint to fix it), \
                     then Generate 3D model.",
                );
            } else {
                // A cut-out (or a file the job will explain it cannot read): straight to a mesh.
                commands.push(Command::SelectTab(Tab::Create));
                commands.push(Command::SelectInput(path.clone()));
                commands.push(Command::Generate { input: path });
            }
        }

        let output_dir = self.output_dir();
        let engine_error = self.backend.as_ref().err().map(String::as_str);
        let studio = StudioCtx::new(
            &self.saved,
            &self.jobs,
            &self.gallery,
            self.input.as_deref(),
            &self.thumbs,
            &self.data_dir,
            &output_dir,
            engine_error,
        )
        .with_monitoring(Monitoring {
            telemetry: self.telemetry.as_ref().map_err(String::as_str),
            endpoint_addr: self.endpoint.handle.as_ref().map(ServerHandle::addr),
            endpoint_error: self.endpoint.error.as_deref(),
            alertmanager_in_use: self.alertmanager_in_use.as_deref(),
            fleet_in_use: match &self.fleet {
                Ok(Some((_, urls))) => Ok(Some(urls.as_str())),
                Ok(None) => Ok(None),
                Err(e) => Err(e.as_str()),
            },
        })
        .with_models(self.models.view())
        .with_previews(&self.previews)
        .with_mask(&self.mask)
        .with_batch(self.batch_progress());
        top_bar_ui(&studio, ui);
        crate::ui::alerts::firing_banner_ui(&studio, ui);
        let mut viewer_command = None;
        egui::CentralPanel::default()
            .frame(
                egui::Frame::new()
                    .fill(theme::palette(&ctx).bg)
                    .inner_margin(egui::Margin::same(space::XL as i8)),
            )
            .show(ui, |ui| match studio.saved.tab {
                Tab::Create => crate::ui::create::create_tab_ui(&studio, ui),
                Tab::Viewer => {
                    viewer_command = crate::ui::viewer::viewer_tab_ui(
                        ui,
                        &mut self.viewer,
                        frame.wgpu_render_state(),
                    );
                }
                Tab::Gallery => crate::ui::gallery::gallery_tab_ui(&studio, ui),
                Tab::Metrics => crate::ui::metrics::metrics_tab_ui(&studio, ui),
                Tab::Alerts => crate::ui::alerts::alerts_tab_ui(&studio, ui),
                Tab::Models => crate::ui::models::models_tab_ui(&studio, ui),
                Tab::Settings => crate::ui::settings::settings_tab_ui(&studio, ui),
            });
        commands.extend(studio.into_commands());
        match viewer_command {
            Some(ViewerCommand::OpenDialog) => commands.push(Command::OpenMeshDialog),
            Some(ViewerCommand::Export(format)) => self.export_viewer_mesh(format),
            None => {}
        }

        self.toasts.expire(&ctx);
        if let Some(id) = crate::ui::toast::toasts_ui(&ctx, &self.toasts) {
            commands.push(Command::DismissToast(id));
        }
        if hovering {
            drop_overlay_ui(&ctx);
        }

        if !commands.is_empty() {
            // Commands change what is shown; draw the result now, not at the next input.
            ctx.request_repaint();
        }
        for command in commands {
            self.apply(command);
        }
        if self.jobs.iter().any(|j| !j.phase.is_finished())
            || self.dialog.is_some()
            || self.viewer.is_loading()
            || self.models.is_downloading()
            || self.mask.is_loading()
        {
            // Progress arrives with a repaint request; this is a fallback for missed wakes.
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
        // Live charts tick each second; elsewhere a slower beat still brings up the
        // firing banner without user input.
        let live_secs = if matches!(self.saved.tab, Tab::Metrics | Tab::Alerts) {
            1
        } else {
            5
        };
        ctx.request_repaint_after(std::time::Duration::from_secs(live_secs));
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SavedState::STORAGE_KEY, &self.saved);
    }

    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        visuals.panel_fill.to_normalized_gamma_f32()
    }
}

fn top_bar_ui(studio: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let p = theme::palette(ui.ctx());
    egui::Panel::top("top-bar")
        .frame(
            egui::Frame::new()
                .fill(p.surface)
                .stroke(egui::Stroke::new(1.0, p.border))
                .inner_margin(egui::Margin::symmetric(space::XL as i8, space::SM as i8)),
        )
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(
                    egui::RichText::new("ORFEAS Studio")
                        .size(17.0)
                        .strong()
                        .color(p.accent),
                );
                ui.add_space(space::XL);
                for tab in Tab::ALL {
                    let selected = studio.saved.tab == tab;
                    let text = egui::RichText::new(tab.label()).size(15.0);
                    let text = if selected {
                        text.color(p.on_accent).strong()
                    } else {
                        text
                    };
                    if ui.selectable_label(selected, text).clicked() && !selected {
                        studio.send(Command::SelectTab(tab));
                    }
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    let running = studio
                        .jobs
                        .iter()
                        .filter(|j| j.phase == JobPhase::Running)
                        .count();
                    let queued = studio
                        .jobs
                        .iter()
                        .filter(|j| j.phase == JobPhase::Queued)
                        .count();
                    let text = match (running, queued) {
                        (0, 0) => "Idle".to_owned(),
                        (r, 0) => format!("{r} running"),
                        (r, q) => format!("{r} running · {q} queued"),
                    };
                    ui.label(egui::RichText::new(text).color(p.text_muted));
                });
            });
        });
}

fn drop_overlay_ui(ctx: &egui::Context) {
    let p = theme::palette(ctx);
    let rect = ctx.content_rect();
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::unique("drop-overlay"),
    ));
    painter.rect_filled(rect, 0.0, p.bg.gamma_multiply(0.85));
    painter.rect_stroke(
        rect.shrink(space::XL),
        egui::CornerRadius::same(theme::radius::LG),
        egui::Stroke::new(2.0, p.accent),
        egui::StrokeKind::Inside,
    );
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        "Drop an image to make a 3D model, or a 3D model to view it",
        egui::FontId::proportional(24.0),
        p.text,
    );
}

/// Whether the picture's pixel format has an alpha channel, from its header
/// (`None` when the header cannot be read).
fn picture_has_alpha(path: &Path) -> Option<bool> {
    use image::ImageDecoder;
    let decoder = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_decoder()
        .ok()?;
    Some(decoder.color_type().has_alpha())
}

/// What a save dialog's thread answered: `None` while it is still open,
/// `Some(None)` when the user cancelled; a thread gone without answering
/// counts as the failure `lost`.
fn dialog_answer<T>(
    rx: &mpsc::Receiver<Option<Result<T, String>>>,
    lost: &str,
) -> Option<Option<Result<T, String>>> {
    match rx.try_recv() {
        Ok(result) => Some(result),
        Err(mpsc::TryRecvError::Empty) => None,
        Err(mpsc::TryRecvError::Disconnected) => Some(Some(Err(lost.to_owned()))),
    }
}
