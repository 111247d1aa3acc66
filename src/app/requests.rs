//! Between the Create tab's saved choices and the core's image→3D request (which is
//! what a job stores as its parameters, and what `orfeas_core::runner` runs).

use std::path::Path;

use orfeas_core::export::ExportFormat;
use orfeas_core::image_to_3d::{ImageTo3dParams, ImageTo3dRequest, Quality};

use crate::app::state::{CreateParams, FormatChoice, MethodChoice, QualityChoice};

/// What an image→3D job stores as its parameters (also in the history).
pub type ImageTo3dJobParams = ImageTo3dRequest;

/// The request for `input` with the Create tab's parameters; the output path is
/// filled in when the job is submitted.
pub fn request_from_create(input: &Path, p: &CreateParams, output_dir: &Path) -> ImageTo3dRequest {
    ImageTo3dRequest {
        method: match p.method {
            MethodChoice::Inflate => orfeas_core::request::ImageTo3dMethod::Inflate,
            MethodChoice::TripoSr => orfeas_core::request::ImageTo3dMethod::TripoSr,
        },
        triposr: orfeas_core::request::TripoSrOptions {
            mc_resolution: p.mc_resolution,
            ..orfeas_core::request::TripoSrOptions::default()
        },
        params: ImageTo3dParams {
            background: p.background,
            quality: quality(p.quality),
            foreground_ratio: p.foreground_ratio,
            mask_threshold: p.mask_threshold,
            border_tolerance: p.border_tolerance,
            erode_px: p.erode_px,
            smooth_iterations: p.smooth_iterations,
            decimate_ratio: p.decimate_ratio,
            ..ImageTo3dParams::default()
        },
        ..ImageTo3dRequest::new(
            input.to_path_buf(),
            output_dir.join("pending"),
            export_format(p.format),
        )
    }
}

pub fn export_format(f: FormatChoice) -> ExportFormat {
    match f {
        FormatChoice::Glb => ExportFormat::Glb,
        FormatChoice::Obj => ExportFormat::Obj,
        FormatChoice::Ply => ExportFormat::Ply,
        FormatChoice::Stl => ExportFormat::Stl,
    }
}

pub fn format_choice(f: ExportFormat) -> FormatChoice {
    match f {
        ExportFormat::Glb => FormatChoice::Glb,
        ExportFormat::Obj => FormatChoice::Obj,
        ExportFormat::Ply => FormatChoice::Ply,
        ExportFormat::Stl => FormatChoice::Stl,
    }
}

pub fn quality(q: QualityChoice) -> Quality {
    match q {
        QualityChoice::Draft => Quality::Draft,
        QualityChoice::Standard => Quality::Standard,
        QualityChoice::High => Quality::High,
    }
}

pub fn quality_choice(q: Quality) -> QualityChoice {
    match q {
        Quality::Draft => QualityChoice::Draft,
        Quality::Standard => QualityChoice::Standard,
        Quality::High => QualityChoice::High,
    }
}

/// One line for the queue: "12 034 vertices · 24 064 triangles · quality 0.91".
pub fn summary_text(summary: &serde_json::Value, quality: Option<f32>) -> String {
    let mut parts = Vec::new();
    if let Some(v) = summary.get("vertices").and_then(|v| v.as_u64()) {
        parts.push(format!("{v} vertices"));
    }
    if let Some(t) = summary.get("triangles").and_then(|v| v.as_u64()) {
        parts.push(format!("{t} triangles"));
    }
    if let Some(size) = summary.get("size").and_then(|v| v.as_str()) {
        parts.push(size.to_owned());
    }
    if let Some(seed) = summary.get("seed").and_then(|v| v.as_u64()) {
        parts.push(format!("seed {seed}"));
    }
    if let Some(q) = quality {
        parts.push(format!("quality {q:.2}"));
    }
    parts.join(" · ")
}
