//! Job runners: adapt the generation pipelines to the job engine.

use std::path::{Path, PathBuf};

use crate::export::ExportFormat;
use crate::image_to_3d::{self, ImageTo3dError, ImageTo3dRequest};
use crate::jobs::{JobContext, JobFailure, JobKind, JobOutput, JobRunner, JobSpec};

/// Runs [`image_to_3d::run_file`] for [`JobKind::ImageTo3d`] jobs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageTo3dRunner;

/// The job spec for an image→3D request (label: the input file's name).
pub fn image_to_3d_spec(request: &ImageTo3dRequest) -> Result<JobSpec, serde_json::Error> {
    Ok(JobSpec {
        kind: JobKind::ImageTo3d,
        params: serde_json::to_value(request)?,
        label: file_label(&request.input),
    })
}

/// Where an output goes when the user gave no path: `dir/<input stem>-<job-ish stamp>.<ext>`.
pub fn default_output_path(dir: &Path, input: &Path, format: ExportFormat) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "mesh".to_owned());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    dir.join(format!("{stem}-{stamp}.{}", format.extension()))
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl JobRunner for ImageTo3dRunner {
    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
        let request: ImageTo3dRequest =
            serde_json::from_value(spec.params.clone()).map_err(|err| {
                JobFailure::new(
                    "invalid_parameter",
                    format!("the job's parameters are not a valid image→3D request: {err}"),
                )
            })?;
        let outcome = image_to_3d::run_file(
            &request,
            &mut |stage, fraction| ctx.progress(stage, fraction, ""),
            &|| ctx.is_cancelled(),
        )
        .map_err(|err| match err {
            ImageTo3dError::Cancelled => JobFailure::cancelled(),
            other => JobFailure::new(other.reason(), format!("{other}")),
        })?;
        let summary = serde_json::json!({
            "vertices": outcome.vertices,
            "triangles": outcome.triangles,
            "format": request.format.as_str(),
            "quality": request.params.quality.as_str(),
            "report": outcome.report,
            "stage_millis": outcome.stage_millis.iter()
                .map(|(stage, ms)| serde_json::json!({"stage": stage, "millis": ms}))
                .collect::<Vec<_>>(),
        });
        Ok(JobOutput {
            files: outcome.files,
            quality: Some(outcome.report.score),
            summary,
        })
    }
}
