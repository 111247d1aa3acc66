//! The job engine → metrics adapter: `engine.add_observer(Arc::new(telemetry.clone()))`.
//!
//! The snapshot carries no job parameters, so the labels come from what the
//! job produced: the 3D format from the first mesh file's extension, the
//! quality preset and text→image style from `JobOutput::summary`
//! (`"quality"`, `"style"`) when the runner put them there.

use crate::jobs::{JobEvent, JobEventKind, JobKind, JobObserver, JobSnapshot};

use super::metrics::MESH_FORMATS;
use super::{GenerationKind, Outcome, Telemetry};

fn generation_kind(kind: JobKind) -> GenerationKind {
    match kind {
        JobKind::ImageTo3d => GenerationKind::ImageTo3d,
        JobKind::TextToImage => GenerationKind::TextToImage,
    }
}

fn extension(path: &std::path::Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

impl JobObserver for Telemetry {
    fn on_event(&self, event: &JobEvent, snapshot: &JobSnapshot) {
        let kind = generation_kind(event.kind);
        let summary = snapshot.output.as_ref().map(|o| &o.summary);
        let text = |key: &str| {
            summary
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let variant = match kind {
            GenerationKind::ImageTo3d => snapshot
                .output
                .iter()
                .flat_map(|o| o.files.iter())
                .filter_map(|f| extension(f))
                .find(|e| MESH_FORMATS.contains(&e.as_str()))
                .or_else(|| text("format"))
                .unwrap_or_else(|| "glb".to_owned()),
            GenerationKind::TextToImage => text("style").unwrap_or_else(|| "none".to_owned()),
        };
        let quality = text("quality").unwrap_or_else(|| "standard".to_owned());
        let duration_secs = snapshot.run_secs.unwrap_or(0.0);
        match &event.event {
            JobEventKind::Started => self.job_started(),
            JobEventKind::Succeeded(output) => {
                let sizes: Vec<(String, u64)> = output
                    .files
                    .iter()
                    .filter_map(|f| Some((extension(f)?, std::fs::metadata(f).ok()?.len())))
                    .collect();
                let sizes: Vec<(&str, u64)> = sizes.iter().map(|(e, n)| (e.as_str(), *n)).collect();
                self.record_generation(
                    kind,
                    &variant,
                    &quality,
                    Outcome::Succeeded {
                        duration_secs,
                        quality_score: output.quality.map(f64::from),
                        file_sizes: &sizes,
                    },
                );
            }
            JobEventKind::Failed(failure) => self.record_generation(
                kind,
                &variant,
                &quality,
                Outcome::Failed {
                    reason: failure.reason,
                    duration_secs,
                },
            ),
            // A cancelled job is neither a success nor a failure.
            JobEventKind::Cancelled | JobEventKind::Queued | JobEventKind::Progress { .. } => {}
        }
        if event.event.is_terminal() && snapshot.started_at.is_some() {
            self.job_finished();
        }
    }
}
