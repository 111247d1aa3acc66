//! Placeholder until the job engine lands on main: generation is reported unavailable.

use std::path::Path;

use crate::app::jobs::{GalleryItem, JobView};
use crate::app::state::{CreateParams, FormatChoice, JobKey};

#[derive(Debug)]
pub enum BackendUpdate {
    Jobs(Vec<JobView>),
    Gallery(Vec<GalleryItem>),
    Deleted { label: String },
    Error(String),
}

pub struct Backend;

impl Backend {
    pub fn start(
        _data_dir: &Path,
        _concurrency: usize,
        _repaint: impl Fn() + Send + Sync + Clone + 'static,
    ) -> anyhow::Result<Self> {
        anyhow::bail!("image-to-3D generation is not in this build yet")
    }
    pub fn poll(&self) -> Vec<BackendUpdate> {
        Vec::new()
    }
    pub fn submit(&self, _: &Path, _: &CreateParams, _: &Path) -> anyhow::Result<JobKey> {
        anyhow::bail!("unavailable")
    }
    pub fn resubmit(&self, _: &GalleryItem, _: Option<FormatChoice>, _: &Path) -> anyhow::Result<JobKey> {
        anyhow::bail!("unavailable")
    }
    pub fn cancel(&self, _: JobKey) {}
    pub fn refresh_gallery(&self) {}
    pub fn delete(&self, _: JobKey) {}
}
