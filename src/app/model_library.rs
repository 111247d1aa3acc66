//! The Models tab's state: which registry models are installed where, downloads
//! running in the background with their progress, and deletes. Listing, downloading
//! and deleting all run on named threads; the UI thread only polls channels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use orfeas_ml::models::download::DownloadProgress;
use orfeas_ml::models::{self, KnownModel, SearchRoots};
use parking_lot::Mutex;

/// Where an installed copy was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// `<data dir>/models/NAME`: downloaded by this app; deletable here.
    DataDir,
    /// `$ORFEAS_MODELS`.
    OrfeasModels,
    /// The Hugging Face cache, shared with other tools.
    HfCache,
}

impl ModelSource {
    pub fn label(self) -> &'static str {
        match self {
            ModelSource::DataDir => "app data folder",
            ModelSource::OrfeasModels => "ORFEAS_MODELS",
            ModelSource::HfCache => "Hugging Face cache",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelInstall {
    Installed {
        dir: PathBuf,
        bytes: u64,
        source: ModelSource,
    },
    /// A folder exists but files are missing (an interrupted download resumes).
    Incomplete {
        dir: PathBuf,
        missing: Vec<String>,
    },
    Missing,
}

/// One row of the Models tab.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRow {
    pub name: &'static str,
    pub repo_id: &'static str,
    pub licence: &'static str,
    pub non_commercial: bool,
    /// Download size (approximate, from the registry).
    pub download_bytes: u64,
    pub install: ModelInstall,
}

/// A download in progress, as the Models tab shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownloadView {
    pub file: String,
    pub file_index: usize,
    pub file_count: usize,
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
}

/// What the Models tab reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelsView {
    pub rows: Vec<ModelRow>,
    /// False until the first listing arrived.
    pub loaded: bool,
    pub downloads: HashMap<String, DownloadView>,
    pub confirm_delete: Option<String>,
    /// Where downloads go (`<data dir>/models`).
    pub download_root: PathBuf,
}

struct Download {
    progress: Arc<Mutex<DownloadView>>,
    cancel: Arc<AtomicBool>,
    done: mpsc::Receiver<Result<PathBuf, String>>,
}

/// What finished in the background since the last poll, for toasts.
#[derive(Debug, PartialEq)]
pub enum ModelsEvent {
    Downloaded { name: String, dir: PathBuf },
    DownloadFailed { name: String, error: String },
    DownloadCancelled { name: String },
    Deleted { name: String },
    DeleteFailed { name: String, error: String },
}

type Repaint = Arc<dyn Fn() + Send + Sync>;

pub struct Models {
    roots: SearchRoots,
    /// The hub to download from (`None`: `HF_ENDPOINT` or huggingface.co); tests set a local one.
    endpoint: Option<String>,
    view: ModelsView,
    listing: Option<mpsc::Receiver<Vec<ModelRow>>>,
    downloads: HashMap<String, Download>,
    deletes: Vec<(String, mpsc::Receiver<Result<(), String>>)>,
    repaint: Repaint,
}

impl Models {
    /// Search roots: `$ORFEAS_MODELS`, `<data_dir>/models`, the HF cache.
    pub fn new(data_dir: &Path, endpoint: Option<String>, repaint: Repaint) -> Models {
        let roots = SearchRoots::for_data_dir(data_dir);
        Models {
            view: ModelsView {
                download_root: data_dir.join("models"),
                ..ModelsView::default()
            },
            roots,
            endpoint,
            listing: None,
            downloads: HashMap::new(),
            deletes: Vec::new(),
            repaint,
        }
    }

    pub fn view(&self) -> &ModelsView {
        &self.view
    }

    pub fn roots(&self) -> &SearchRoots {
        &self.roots
    }

    /// Re-reads the install state on a background thread.
    pub fn refresh(&mut self) -> Result<(), String> {
        let roots = self.roots.clone();
        let (tx, rx) = mpsc::channel();
        let repaint = self.repaint.clone();
        std::thread::Builder::new()
            .name("orfeas-models-list".into())
            .spawn(move || {
                let rows = roots.list().into_iter().map(|s| row(&roots, s)).collect();
                let _ = tx.send(rows); // the app may have closed meanwhile
                repaint();
            })
            .map_err(|e| format!("cannot list the models ({e}); try again"))?;
        self.listing = Some(rx);
        Ok(())
    }

    /// The folder of an installed registry model, or what to do to get it.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, String> {
        self.roots.resolve(name).map_err(|e| {
            format!("{e}. Open the Models tab to download it, or choose a model folder.")
        })
    }

    /// Starts downloading `name` into `<data dir>/models/NAME` (resumes partial files).
    pub fn download(&mut self, name: &str) -> Result<(), String> {
        let model = models::known(name).map_err(|e| e.to_string())?;
        if self.downloads.contains_key(model.name) {
            return Ok(());
        }
        let progress = Arc::new(Mutex::new(DownloadView {
            file_count: model.files.len(),
            ..DownloadView::default()
        }));
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let root = self.view.download_root.clone();
        let endpoint = self.endpoint.clone();
        let (p, c, repaint) = (progress.clone(), cancel.clone(), self.repaint.clone());
        std::thread::Builder::new()
            .name(format!("orfeas-download-{}", model.name))
            .spawn(move || {
                let mut last_repaint = std::time::Instant::now();
                let mut on_progress = |d: &DownloadProgress| {
                    *p.lock() = DownloadView {
                        file: d.file.clone(),
                        file_index: d.file_index,
                        file_count: d.file_count,
                        done_bytes: d.done_bytes,
                        total_bytes: d.total_bytes,
                    };
                    // Progress arrives per chunk; the UI needs a few frames a second.
                    if last_repaint.elapsed().as_millis() >= 100 {
                        last_repaint = std::time::Instant::now();
                        repaint();
                    }
                };
                let result = models::download::download(
                    model,
                    Some(&root),
                    endpoint.as_deref(),
                    &mut on_progress,
                    &c,
                )
                .map_err(|e| format!("{e:#}"));
                let _ = tx.send(result);
                repaint();
            })
            .map_err(|e| format!("cannot start the download ({e}); try again"))?;
        self.view
            .downloads
            .insert(model.name.to_owned(), progress.lock().clone());
        self.downloads.insert(
            model.name.to_owned(),
            Download {
                progress,
                cancel,
                done: rx,
            },
        );
        Ok(())
    }

    pub fn cancel_download(&mut self, name: &str) {
        if let Some(d) = self.downloads.get(name) {
            d.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_downloading(&self) -> bool {
        !self.downloads.is_empty()
    }

    pub fn request_delete(&mut self, name: String) {
        self.view.confirm_delete = Some(name);
    }

    pub fn cancel_delete(&mut self) {
        self.view.confirm_delete = None;
    }

    /// Deletes the app's own copy of `name` on a background thread. Copies in the
    /// Hugging Face cache are shared with other tools and are not deleted here.
    pub fn delete(&mut self, name: &str) -> Result<(), String> {
        self.view.confirm_delete = None;
        let row = self
            .view
            .rows
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| format!("{name} is not a known model"))?;
        let dir = match &row.install {
            ModelInstall::Installed {
                dir,
                source: ModelSource::HfCache,
                ..
            } => {
                return Err(format!(
                    "{name} is in the Hugging Face cache ({}), which other tools share; \
                     remove it with `huggingface-cli delete-cache`",
                    dir.display()
                ));
            }
            ModelInstall::Installed { dir, .. } | ModelInstall::Incomplete { dir, .. } => {
                dir.clone()
            }
            ModelInstall::Missing => return Err(format!("{name} is not installed")),
        };
        if self.downloads.contains_key(name) {
            return Err(format!("{name} is downloading; cancel the download first"));
        }
        let (tx, rx) = mpsc::channel();
        let repaint = self.repaint.clone();
        std::thread::Builder::new()
            .name("orfeas-models-delete".into())
            .spawn(move || {
                let result = std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("cannot delete {}: {e}", dir.display()));
                let _ = tx.send(result);
                repaint();
            })
            .map_err(|e| format!("cannot start the delete ({e}); try again"))?;
        self.deletes.push((name.to_owned(), rx));
        Ok(())
    }

    /// Takes in listings, download progress and finished work. Call once per frame.
    pub fn poll(&mut self) -> Vec<ModelsEvent> {
        let mut events = Vec::new();
        if let Some(rx) = &self.listing {
            match rx.try_recv() {
                Ok(rows) => {
                    self.view.rows = rows;
                    self.view.loaded = true;
                    self.listing = None;
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.listing = None,
            }
        }
        let mut finished = Vec::new();
        for (name, d) in &self.downloads {
            self.view
                .downloads
                .insert(name.clone(), d.progress.lock().clone());
            let result = match d.done.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => continue,
                Err(mpsc::TryRecvError::Disconnected) => {
                    Err("the download stopped unexpectedly; try again".to_owned())
                }
            };
            let cancelled = d.cancel.load(Ordering::Relaxed);
            events.push(match result {
                Ok(dir) => ModelsEvent::Downloaded {
                    name: name.clone(),
                    dir,
                },
                Err(_) if cancelled => ModelsEvent::DownloadCancelled { name: name.clone() },
                Err(error) => ModelsEvent::DownloadFailed {
                    name: name.clone(),
                    error,
                },
            });
            finished.push(name.clone());
        }
        for name in &finished {
            self.downloads.remove(name);
            self.view.downloads.remove(name);
        }
        let mut refresh = !finished.is_empty();
        self.deletes.retain(|(name, rx)| match rx.try_recv() {
            Ok(result) => {
                events.push(match result {
                    Ok(()) => ModelsEvent::Deleted { name: name.clone() },
                    Err(error) => ModelsEvent::DeleteFailed {
                        name: name.clone(),
                        error,
                    },
                });
                refresh = true;
                false
            }
            Err(mpsc::TryRecvError::Empty) => true,
            Err(mpsc::TryRecvError::Disconnected) => false,
        });
        if refresh && let Err(err) = self.refresh() {
            tracing::warn!("{err}");
        }
        events
    }
}

fn source_of(roots: &SearchRoots, dir: &Path) -> ModelSource {
    let under = |root: &Option<PathBuf>| root.as_deref().is_some_and(|r| dir.starts_with(r));
    if under(&roots.data_models) {
        ModelSource::DataDir
    } else if under(&roots.orfeas_models) {
        ModelSource::OrfeasModels
    } else {
        ModelSource::HfCache
    }
}

fn row(roots: &SearchRoots, status: models::ModelStatus) -> ModelRow {
    let m: &'static KnownModel = status.model;
    let install = match status {
        models::ModelStatus {
            installed: Some(dir),
            size_bytes,
            ..
        } => ModelInstall::Installed {
            source: source_of(roots, &dir),
            dir,
            bytes: size_bytes,
        },
        _ => match roots.candidate_dirs(m).into_iter().find(|d| d.is_dir()) {
            Some(dir) => ModelInstall::Incomplete {
                missing: models::missing_files(m, &dir)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                dir,
            },
            None => ModelInstall::Missing,
        },
    };
    ModelRow {
        name: m.name,
        repo_id: m.repo_id,
        licence: m.licence,
        non_commercial: m.non_commercial,
        download_bytes: m.approx_size_bytes(),
        install,
    }
}
