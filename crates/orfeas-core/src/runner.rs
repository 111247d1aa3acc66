//! Job runners: adapt the generation pipelines to the job engine.

use std::path::{Path, PathBuf};

use crate::export::ExportFormat;
use crate::image_to_3d::{self, ImageTo3dError};
use crate::jobs::{JobContext, JobFailure, JobOutput, JobRequest, JobRunner, JobSpec};
use crate::request::{ImageTo3dMethod, ImageTo3dRequest};

/// Runs [`image_to_3d::run_file`] for [`crate::jobs::JobKind::ImageTo3d`]
/// jobs of the inflate method; other methods are refused with the reason
/// (`orfeas_ml::register_runners` registers the runner that has them all).
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageTo3dRunner;

/// Where an output goes when the user gave no path: `dir/<input stem>-<job-ish stamp>.<ext>`.
pub fn default_output_path(dir: &Path, input: &Path, format: ExportFormat) -> PathBuf {
    stamped_path(dir, input, "mesh", format.extension())
}

/// `dir/<input stem, or fallback>-<milliseconds since 1970>.<ext>`: a new
/// file named after the picture it came from.
pub fn stamped_path(dir: &Path, input: &Path, fallback: &str, ext: &str) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_owned());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    dir.join(format!("{stem}-{stamp}.{ext}"))
}

/// The image→3D request of a spec, or the failure that says the spec is of another kind.
pub fn image_to_3d_request(spec: &JobSpec) -> Result<&ImageTo3dRequest, JobFailure> {
    match &spec.request {
        JobRequest::ImageTo3d(r) => Ok(r),
        other => Err(JobFailure::new(
            "invalid_parameter",
            format!("an image→3D runner was given a {} job", other.kind()),
        )),
    }
}

/// Runs the built-in (inflate) pipeline on `request`; shared by every image→3D runner.
pub fn run_inflate(request: &ImageTo3dRequest, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
    let outcome = image_to_3d::run_file(
        request,
        &mut |stage, fraction| ctx.progress(stage, fraction, ""),
        &|| ctx.is_cancelled(),
    )
    .map_err(failure)?;
    Ok(inflate_output(request, outcome))
}

/// [`run_inflate`] on a picture already decoded (and cut out).
pub fn run_inflate_on(
    request: &ImageTo3dRequest,
    image: &image::RgbaImage,
    ctx: &JobContext,
) -> Result<JobOutput, JobFailure> {
    let outcome = image_to_3d::run_image(
        request,
        image,
        &mut |stage, fraction| ctx.progress(stage, fraction, ""),
        &|| ctx.is_cancelled(),
    )
    .map_err(failure)?;
    Ok(inflate_output(request, outcome))
}

fn failure(err: ImageTo3dError) -> JobFailure {
    match err {
        ImageTo3dError::Cancelled => JobFailure::cancelled(),
        other => JobFailure::new(other.reason(), format!("{other}")),
    }
}

fn inflate_output(request: &ImageTo3dRequest, outcome: image_to_3d::ImageTo3dOutcome) -> JobOutput {
    let summary = serde_json::json!({
        "method": request.method.as_str(),
        // A painted mask replaced whatever `background` said.
        "background": if request.mask.is_some() { "mask" } else { outcome.background.as_str() },
        "vertices": outcome.vertices,
        "triangles": outcome.triangles,
        "format": request.format.as_str(),
        "quality": request.params.quality.as_str(),
        "report": outcome.report,
        "stage_millis": outcome.stage_millis.iter()
            .map(|(stage, ms)| serde_json::json!({"stage": stage, "millis": ms}))
            .collect::<Vec<_>>(),
    });
    JobOutput {
        files: outcome.files,
        quality: Some(outcome.report.score),
        summary,
    }
}

impl JobRunner for ImageTo3dRunner {
    /// Refuses at once a method this runner does not have, instead of running another.
    fn admit(&self, spec: &JobSpec) -> Result<(), JobFailure> {
        let request = image_to_3d_request(spec)?;
        match request.method {
            ImageTo3dMethod::Inflate => Ok(()),
            other => Err(JobFailure::new(
                "model_unavailable",
                format!(
                    "this server has no {} runner; use method inflate, or install the model and restart",
                    other.as_str()
                ),
            )),
        }
    }

    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
        run_inflate(image_to_3d_request(spec)?, ctx)
    }
}
