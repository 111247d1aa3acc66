//! The app's handle on background work: the job engine (generation) and a named
//! history thread (listing, deleting). Nothing here blocks the UI thread for longer
//! than a mutex: results come back through channels drained by [`Backend::poll`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use anyhow::Context as _;
use orfeas_core::history::{HISTORY_FILE_NAME, History, JobRecord};
use orfeas_core::jobs::{
    Engine, EngineConfig, JobEvent, JobId, JobObserver, JobSnapshot, JobSpec, JobState,
};

use orfeas_core::request::{JobRequest, TextToImageJob};

use crate::app::job_views::{GalleryItem, JobPhase, JobView};
use crate::app::requests::{self, ImageTo3dJobParams};
use crate::app::state::{CreateParams, FormatChoice, JobKey};

/// How many history entries the Gallery shows.
const GALLERY_LIMIT: usize = 200;
const WORKER_QUEUE: usize = 16;
/// Jobs the studio keeps in the fleet at once when it runs jobs there.
const FLEET_IN_FLIGHT: usize = 32;

/// What background work reports to the app.
#[derive(Debug)]
pub enum BackendUpdate {
    /// Current state of the engine's jobs (only sent after something changed).
    Jobs(Vec<JobView>),
    Gallery(Vec<GalleryItem>),
    Deleted {
        label: String,
    },
    Error(String),
}

enum WorkerRequest {
    List,
    Delete(JobKey),
}

/// The newest step preview of each running text→image job, not yet shown.
type PreviewSlots = Arc<parking_lot::Mutex<std::collections::HashMap<JobKey, RawPreview>>>;

/// A step preview as the runner hands it over.
pub struct RawPreview {
    pub step: usize,
    pub total: usize,
    pub image: image::RgbImage,
}

pub struct Backend {
    engine: Engine,
    previews: PreviewSlots,
    dirty: Arc<AtomicBool>,
    requests: mpsc::SyncSender<WorkerRequest>,
    updates: mpsc::Receiver<BackendUpdate>,
}

/// Marks the job list dirty and wakes the UI on every engine event.
struct UiObserver {
    dirty: Arc<AtomicBool>,
    repaint: Box<dyn Fn() + Send + Sync>,
}

impl JobObserver for UiObserver {
    fn on_event(&self, _event: &JobEvent, _snapshot: &JobSnapshot) {
        self.dirty.store(true, Ordering::Release);
        (self.repaint)();
    }
}

impl Backend {
    /// Opens the history in `data_dir`, starts the engine with the image→3D runner and
    /// the history thread.
    /// With `fleet`, every job goes to the fleet queue instead (the job list,
    /// history and Gallery work the same).
    pub fn start(
        data_dir: &Path,
        concurrency: usize,
        fleet: Option<&Arc<orfeas_core::fleet::Fleet>>,
        repaint: impl Fn() + Send + Sync + Clone + 'static,
    ) -> anyhow::Result<Self> {
        let history_path = data_dir.join(HISTORY_FILE_NAME);
        let history = Arc::new(History::open(&history_path).with_context(|| {
            format!(
                "cannot open the history at {}; generation is off until it opens",
                history_path.display()
            )
        })?);
        // On the fleet a job here only waits for a worker: let many wait at once.
        let concurrency = match fleet {
            Some(_) => concurrency.max(FLEET_IN_FLIGHT),
            None => concurrency.max(1),
        };
        let engine = Engine::new(
            EngineConfig {
                concurrency,
                ..EngineConfig::default()
            },
            Some(history.clone()),
        )
        .context("cannot start the job engine")?;
        let previews: PreviewSlots = Arc::default();
        let (slots, wake) = (previews.clone(), repaint.clone());
        orfeas_ml::register_runners(
            &engine,
            orfeas_ml::models::SearchRoots::for_data_dir(data_dir),
            Some(Arc::new(
                move |id: JobId, step, total, image: &image::RgbImage| {
                    slots.lock().insert(
                        id.0,
                        RawPreview {
                            step,
                            total,
                            image: image.clone(),
                        },
                    );
                    wake();
                },
            )),
        );
        if let Some(fleet) = fleet {
            orfeas_core::fleet::relay::register_relay(&engine, fleet);
        }
        let dirty = Arc::new(AtomicBool::new(true));
        engine.add_observer(Arc::new(UiObserver {
            dirty: dirty.clone(),
            repaint: Box::new(repaint.clone()),
        }));

        let (req_tx, req_rx) = mpsc::sync_channel::<WorkerRequest>(WORKER_QUEUE);
        let (upd_tx, upd_rx) = mpsc::sync_channel::<BackendUpdate>(WORKER_QUEUE);
        std::thread::Builder::new()
            .name("orfeas-history".into())
            .spawn(move || {
                for request in req_rx {
                    let update = match request {
                        WorkerRequest::List => match history.list(GALLERY_LIMIT, 0, None) {
                            Ok(records) => {
                                BackendUpdate::Gallery(records.iter().map(gallery_item).collect())
                            }
                            Err(err) => {
                                BackendUpdate::Error(format!("cannot read the history: {err}"))
                            }
                        },
                        WorkerRequest::Delete(key) => delete_record(&history, key),
                    };
                    if upd_tx.send(update).is_err() {
                        break;
                    }
                    repaint();
                }
            })
            .context("cannot start the history thread")?;

        Ok(Self {
            engine,
            previews,
            dirty,
            requests: req_tx,
            updates: upd_rx,
        })
    }

    /// Everything that arrived since the last call. Call once per frame.
    pub fn poll(&self) -> Vec<BackendUpdate> {
        let mut out: Vec<BackendUpdate> = self.updates.try_iter().collect();
        if self.dirty.swap(false, Ordering::AcqRel) {
            let mut jobs = self.engine.jobs();
            jobs.sort_by_key(|j| j.id.0);
            out.push(BackendUpdate::Jobs(jobs.iter().map(job_view).collect()));
        }
        out
    }

    /// Queues an image→3D job for `input`, writing into `output_dir`.
    pub fn submit(
        &self,
        input: &Path,
        params: &CreateParams,
        output_dir: &Path,
    ) -> anyhow::Result<JobKey> {
        self.submit_with_mask(input, params, output_dir, None)
    }

    /// [`Self::submit`] with the user's painted mask (a PNG already written).
    pub fn submit_with_mask(
        &self,
        input: &Path,
        params: &CreateParams,
        output_dir: &Path,
        mask: Option<std::path::PathBuf>,
    ) -> anyhow::Result<JobKey> {
        let mut job = requests::request_from_create(input, params, output_dir);
        job.mask = mask;
        self.submit_params(job, output_dir)
    }

    /// [`Self::submit`] for one picture of a folder batch (behind interactive
    /// jobs on the fleet).
    pub fn submit_batch(
        &self,
        input: &Path,
        params: &CreateParams,
        output_dir: &Path,
    ) -> anyhow::Result<JobKey> {
        let job = requests::request_from_create(input, params, output_dir);
        self.submit_params_as(job, output_dir, true)
    }

    /// Step previews that arrived since the last call.
    pub fn take_previews(&self) -> Vec<(JobKey, RawPreview)> {
        self.previews.lock().drain().collect()
    }

    /// Queues a text→image job writing a new PNG into `output_dir`.
    pub fn submit_text(
        &self,
        mut job: TextToImageJob,
        output_dir: &Path,
    ) -> anyhow::Result<JobKey> {
        create_output_dir(output_dir)?;
        job.output = unique_path(output_dir, &prompt_stem(&job.request.prompt), "png");
        self.queue(JobSpec::from(job))
    }

    /// Queues a new job with `item`'s parameters, optionally in another format.
    pub fn resubmit(
        &self,
        item: &GalleryItem,
        format: Option<FormatChoice>,
        output_dir: &Path,
    ) -> anyhow::Result<JobKey> {
        if let Some(text) = &item.text {
            return self.submit_text(text.clone(), output_dir);
        }
        let mut job = item.params.clone().with_context(|| {
            format!(
                "“{}” has no image-to-3D parameters that this build can re-run",
                item.label
            )
        })?;
        if let Some(format) = format {
            job.format = requests::export_format(format);
        }
        self.submit_params(job, output_dir)
    }

    fn submit_params(&self, job: ImageTo3dJobParams, output_dir: &Path) -> anyhow::Result<JobKey> {
        self.submit_params_as(job, output_dir, false)
    }

    fn submit_params_as(
        &self,
        mut job: ImageTo3dJobParams,
        output_dir: &Path,
        batch: bool,
    ) -> anyhow::Result<JobKey> {
        create_output_dir(output_dir)?;
        let stem = job
            .input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "model".to_owned());
        job.output = unique_path(output_dir, &stem, job.format.extension());
        self.queue(JobSpec {
            batch,
            ..JobSpec::from(job)
        })
    }

    fn queue(&self, spec: JobSpec) -> anyhow::Result<JobKey> {
        let id = self.engine.submit(spec)?;
        self.dirty.store(true, Ordering::Release);
        Ok(id.0)
    }

    pub fn cancel(&self, key: JobKey) {
        self.engine.cancel(JobId(key));
    }

    pub fn refresh_gallery(&self) {
        // A full queue means a listing is already on its way.
        let _ = self.requests.try_send(WorkerRequest::List);
    }

    pub fn delete(&self, key: JobKey) {
        if self.requests.try_send(WorkerRequest::Delete(key)).is_err() {
            tracing::warn!(key, "history thread busy; delete dropped");
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

fn phase(state: JobState) -> JobPhase {
    match state {
        JobState::Queued => JobPhase::Queued,
        JobState::Running => JobPhase::Running,
        JobState::Succeeded => JobPhase::Succeeded,
        JobState::Failed => JobPhase::Failed,
        JobState::Cancelled => JobPhase::Cancelled,
        JobState::Interrupted => JobPhase::Interrupted,
    }
}

fn job_view(s: &JobSnapshot) -> JobView {
    let message = s
        .output
        .as_ref()
        .map(|o| requests::summary_text(&o.summary, o.quality))
        .unwrap_or_else(|| s.message.clone());
    JobView {
        key: s.id.0,
        kind: s.kind,
        label: s.label.clone(),
        phase: phase(s.state),
        stage: s.stage.clone(),
        fraction: s.fraction,
        message,
        outputs: s
            .output
            .as_ref()
            .map(|o| o.files.clone())
            .unwrap_or_default(),
        error: s.failure.as_ref().map(|f| f.message.clone()),
        duration_secs: s.run_secs.filter(|_| s.state.is_terminal()),
        quality_score: s.output.as_ref().and_then(|o| o.quality),
    }
}

fn gallery_item(r: &JobRecord) -> GalleryItem {
    // A row this build cannot read (an older or newer request) shows, but cannot re-run.
    let (params, text): (Option<ImageTo3dJobParams>, Option<TextToImageJob>) =
        match JobRequest::from_params_json(r.kind, &r.params) {
            Ok(JobRequest::ImageTo3d(request)) => (Some(request), None),
            Ok(JobRequest::TextToImage(job)) => (None, Some(job)),
            Err(_) => (None, None),
        };
    GalleryItem {
        record: r.id.0,
        kind: r.kind,
        text,
        label: r.label.clone(),
        phase: phase(r.state),
        created_at_ms: r.created_at_ms,
        input: params.as_ref().map(|p| p.input.clone()),
        outputs: r.outputs.clone(),
        format: params.as_ref().map(|p| requests::format_choice(p.format)),
        quality_preset: params
            .as_ref()
            .map(|p| requests::quality_choice(p.params.quality)),
        quality_score: r.quality,
        duration_secs: r.duration_secs,
        error: r.error_message.clone(),
        params,
    }
}

fn delete_record(history: &History, key: JobKey) -> BackendUpdate {
    let record = match history.get(JobId(key)) {
        Ok(Some(r)) => r,
        Ok(None) => return BackendUpdate::Error(format!("job {key} is already gone")),
        Err(err) => return BackendUpdate::Error(format!("cannot read job {key}: {err}")),
    };
    for file in &record.outputs {
        if let Err(err) = std::fs::remove_file(file)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return BackendUpdate::Error(format!(
                "cannot delete {}: {err}; close programs using it and try again",
                file.display()
            ));
        }
    }
    match history.delete(JobId(key)) {
        Ok(_) => BackendUpdate::Deleted {
            label: record.label,
        },
        Err(err) => {
            BackendUpdate::Error(format!("cannot delete job {key} from the history: {err}"))
        }
    }
}

fn create_output_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the output folder {}; choose another one in Settings",
            dir.display()
        )
    })
}

/// The first words of a prompt as a file-name stem: "a-red-teapot-on-a-white".
fn prompt_stem(prompt: &str) -> String {
    let slug: String = prompt
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(6)
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase()
        .chars()
        .take(48)
        .collect();
    if slug.is_empty() {
        "image".to_owned()
    } else {
        slug
    }
}

/// `<dir>/<stem>-<unix ms>.<ext>`, with a counter if that exists already.
fn unique_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut path = dir.join(format!("{stem}-{stamp}.{ext}"));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{stem}-{stamp}-{n}.{ext}"));
    }
    path
}
