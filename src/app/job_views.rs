//! What the panels see of jobs and history: plain view types, filled by the backend.

use std::path::PathBuf;

use crate::app::state::{FormatChoice, JobKey, QualityChoice};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobPhase {
    pub fn label(self) -> &'static str {
        match self {
            JobPhase::Queued => "queued",
            JobPhase::Running => "running",
            JobPhase::Succeeded => "done",
            JobPhase::Failed => "failed",
            JobPhase::Cancelled => "cancelled",
            JobPhase::Interrupted => "interrupted",
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, JobPhase::Queued | JobPhase::Running)
    }
}

/// A job of this session, as shown in the Create tab's queue.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub key: JobKey,
    pub kind: orfeas_core::jobs::JobKind,
    pub label: String,
    pub phase: JobPhase,
    pub stage: String,
    /// 0..=1 within the whole job.
    pub fraction: f32,
    pub message: String,
    pub outputs: Vec<PathBuf>,
    pub error: Option<String>,
    pub duration_secs: Option<f64>,
    /// 0..=1 generation quality score, once the job succeeded.
    pub quality_score: Option<f32>,
}

impl JobView {
    /// The first output the Viewer can open (a job may also write textures, MTL files).
    pub fn mesh_output(&self) -> Option<&std::path::Path> {
        first_mesh(&self.outputs)
    }

    /// The first image output (text→image jobs).
    pub fn image_output(&self) -> Option<&std::path::Path> {
        first_image(&self.outputs)
    }
}

impl GalleryItem {
    /// The first image output (text→image jobs).
    pub fn image_output(&self) -> Option<&std::path::Path> {
        first_image(&self.outputs)
    }

    /// The first output the Viewer can open.
    pub fn mesh_output(&self) -> Option<&std::path::Path> {
        first_mesh(&self.outputs)
    }
}

fn first_image(outputs: &[PathBuf]) -> Option<&std::path::Path> {
    outputs
        .iter()
        .map(PathBuf::as_path)
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
}

fn first_mesh(outputs: &[PathBuf]) -> Option<&std::path::Path> {
    outputs
        .iter()
        .map(PathBuf::as_path)
        .find(|p| orfeas_core::import::MeshFormat::from_path(p).is_some())
}

/// One history entry, as shown in the Gallery.
#[derive(Clone, Debug, PartialEq)]
pub struct GalleryItem {
    pub record: JobKey,
    pub kind: orfeas_core::jobs::JobKind,
    pub label: String,
    pub phase: JobPhase,
    pub created_at_ms: i64,
    pub input: Option<PathBuf>,
    pub outputs: Vec<PathBuf>,
    pub format: Option<FormatChoice>,
    pub quality_preset: Option<QualityChoice>,
    /// 0..=1 generation quality score.
    pub quality_score: Option<f32>,
    pub duration_secs: Option<f64>,
    pub error: Option<String>,
    /// The job's parameters, when this build can read them (for re-run and export).
    pub params: Option<crate::app::requests::ImageTo3dJobParams>,
    /// A text→image job's parameters (for re-run and the card's facts).
    pub text: Option<orfeas_core::request::TextToImageJob>,
}

/// The latest step preview of a running text→image job.
#[derive(Clone)]
pub struct StepPreview {
    pub step: usize,
    pub total: usize,
    pub texture: egui::TextureHandle,
}
