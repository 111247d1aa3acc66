//! Weights-free image→3D: mask, crop, silhouette inflation, stitched closed mesh.
//!
//! Stages: `mask` (alpha, else border-colour flood fill) → `frame` (crop to
//! the foreground, pad to `foreground_ratio`, sample a coverage grid whose
//! size the quality preset sets) → `inflate` (distance transform → height
//! field, marching-squares contour shared by front and back: one closed,
//! manifold, outward-wound mesh) → `smooth` (Taubin) → `decimate` (quadric
//! edge collapse) → `texture` (atlas: front | mirrored blurred back; UVs and
//! vertex colours).
//!
//! Several separate blobs in the silhouette are all kept, each as its own
//! closed shell; only specks smaller than `min_component_share` of the
//! largest blob are dropped.

mod mask;
mod surface;
mod texture;

use std::path::PathBuf;
use std::time::Instant;

use crate::export::ExportError;
use crate::image_input::{ImageInputError, ImageLimits};
use crate::mesh::Mesh;
use crate::quality::{self, MeshReport};

/// Resolution presets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Draft,
    #[default]
    Standard,
    High,
}

impl Quality {
    pub const ALL: [Quality; 3] = [Quality::Draft, Quality::Standard, Quality::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Draft => "draft",
            Quality::Standard => "standard",
            Quality::High => "high",
        }
    }

    /// Grid cells along each side of the framed square: 96 / 192 / 384.
    /// Vertex count grows with the square of this.
    pub fn grid_cells(self) -> usize {
        match self {
            Quality::Draft => 96,
            Quality::Standard => 192,
            Quality::High => 384,
        }
    }

    /// Side of each half of the texture atlas: 256 / 512 / 1024 texels.
    pub fn texture_side(self) -> u32 {
        match self {
            Quality::Draft => 256,
            Quality::Standard => 512,
            Quality::High => 1024,
        }
    }
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Quality {
    type Err = ImageTo3dError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quality::ALL
            .into_iter()
            .find(|q| q.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ImageTo3dError::InvalidParameter {
                field: "quality",
                detail: format!("unknown quality '{s}'; use draft, standard or high"),
            })
    }
}

/// Parameters of the built-in image→3D method.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageTo3dParams {
    /// Where the foreground comes from (`auto`: alpha if the picture has it,
    /// else the segmenter when installed, else the border colour).
    pub background: crate::request::Background,
    pub quality: Quality,
    /// Share of the framed square's side taken by the foreground's long side (0.1..=1).
    pub foreground_ratio: f32,
    /// Alpha at or above which a pixel is foreground (images with transparency).
    pub mask_threshold: u8,
    /// Colour distance, as a share of the largest RGB distance (0..=1), within
    /// which a pixel counts as the border colour (opaque images).
    pub border_tolerance: f32,
    /// Shrink the mask by this many pixels (removes halos), 0..=64.
    pub erode_px: u32,
    /// Taubin smoothing passes (0 = off), 0..=50.
    pub smooth_iterations: u32,
    /// Target triangle share after decimation; 1.0 = off, (0, 1].
    pub decimate_ratio: f32,
    /// Depth relative to a round cross-section (1 = a disc becomes a sphere), (0, 4].
    pub thickness: f32,
    /// Blobs smaller than this share of the largest blob are dropped as specks, 0..=1.
    pub min_component_share: f32,
}

impl Default for ImageTo3dParams {
    fn default() -> Self {
        Self {
            background: crate::request::Background::Auto,
            quality: Quality::Standard,
            foreground_ratio: 0.85,
            mask_threshold: 128,
            border_tolerance: 0.12,
            erode_px: 0,
            smooth_iterations: 2,
            decimate_ratio: 1.0,
            thickness: 1.0,
            min_component_share: 0.01,
        }
    }
}

impl ImageTo3dParams {
    pub fn validate(&self) -> Result<(), ImageTo3dError> {
        let bad = |field: &'static str, detail: String| {
            Err(ImageTo3dError::InvalidParameter { field, detail })
        };
        let in_range = |v: f32, lo: f32, hi: f32, lo_open: bool| {
            v.is_finite() && v <= hi && if lo_open { v > lo } else { v >= lo }
        };
        if !in_range(self.foreground_ratio, 0.1, 1.0, false) {
            return bad(
                "foreground_ratio",
                format!("{} is outside 0.1..=1", self.foreground_ratio),
            );
        }
        if !in_range(self.border_tolerance, 0.0, 1.0, false) {
            return bad(
                "border_tolerance",
                format!("{} is outside 0..=1", self.border_tolerance),
            );
        }
        if self.erode_px > 64 {
            return bad("erode_px", format!("{} is above 64", self.erode_px));
        }
        if self.smooth_iterations > 50 {
            return bad(
                "smooth_iterations",
                format!("{} is above 50", self.smooth_iterations),
            );
        }
        if !in_range(self.decimate_ratio, 0.0, 1.0, true) {
            return bad(
                "decimate_ratio",
                format!("{} is outside (0, 1]", self.decimate_ratio),
            );
        }
        if !in_range(self.thickness, 0.0, 4.0, true) {
            return bad("thickness", format!("{} is outside (0, 4]", self.thickness));
        }
        if !in_range(self.min_component_share, 0.0, 1.0, false) {
            return bad(
                "min_component_share",
                format!("{} is outside 0..=1", self.min_component_share),
            );
        }
        Ok(())
    }
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageTo3dError {
    #[error(transparent)]
    Input(#[from] ImageInputError),
    #[error(
        "no foreground found: {detail}; use an image with a transparent background or an object on a plain backdrop"
    )]
    NoForeground { detail: String },
    #[error("invalid parameter {field}: {detail}")]
    InvalidParameter { field: &'static str, detail: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Export(#[from] ExportError),
}

impl ImageTo3dError {
    /// A bounded label for metrics and history.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Input(_) => "invalid_image",
            Self::NoForeground { .. } => "no_foreground",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::Cancelled => "cancelled",
            Self::Export(e) => e.reason(),
        }
    }
}

/// A generated mesh and the input-view mask in the mesh's framing: mask pixel
/// (i, j) of an N×N mask covers x ∈ [-1 + 2i/N, -1 + 2(i+1)/N], y from +1 down.
#[derive(Clone, Debug)]
pub struct Generated {
    pub mesh: Mesh,
    pub mask: image::GrayImage,
}

/// Image → closed, textured mesh. `progress` gets (stage, overall fraction
/// 0..1), non-decreasing; `cancelled` is polled between stages.
pub fn generate(
    image: &image::RgbaImage,
    params: &ImageTo3dParams,
    progress: &mut dyn FnMut(&'static str, f32),
    cancelled: &dyn Fn() -> bool,
) -> Result<Generated, ImageTo3dError> {
    generate_timed(image, params, None, progress, cancelled, &mut Vec::new())
}

/// The foreground `params` would find in `image`, 255 = foreground, at the
/// picture's size: what the GUI overlays before the user paints on it.
/// (`neural` needs the segmenter: `orfeas_ml` has its own preview.)
pub fn preview_mask(
    image: &image::RgbaImage,
    params: &ImageTo3dParams,
) -> Result<image::GrayImage, ImageTo3dError> {
    params.validate()?;
    let mask = mask::foreground_mask(image, params)?;
    let data = mask
        .data
        .iter()
        .map(|&m| if m != 0 { 255 } else { 0 })
        .collect();
    image::GrayImage::from_raw(mask.width, mask.height, data).ok_or_else(|| {
        ImageTo3dError::InvalidParameter {
            field: "background",
            detail: "the mask does not match the picture's size".to_owned(),
        }
    })
}

/// Reads a user's mask (grayscale PNG, 255 = foreground) for a picture of
/// `width`×`height`, refusing one of another size.
pub fn load_mask(
    path: &std::path::Path,
    width: u32,
    height: u32,
) -> Result<image::GrayImage, ImageTo3dError> {
    let mask = image::open(path)
        .map_err(|e| ImageTo3dError::InvalidParameter {
            field: "mask",
            detail: format!("cannot read the mask {}: {e}", path.display()),
        })?
        .to_luma8();
    if mask.dimensions() != (width, height) {
        return Err(ImageTo3dError::InvalidParameter {
            field: "mask",
            detail: format!(
                "the mask {} is {}×{} but the picture is {width}×{height}; paint the mask \
                 again on this picture",
                path.display(),
                mask.width(),
                mask.height()
            ),
        });
    }
    if mask.pixels().all(|p| p.0[0] < 128) {
        return Err(ImageTo3dError::NoForeground {
            detail: "the mask is all background; paint the object back in or reset the mask"
                .to_owned(),
        });
    }
    Ok(mask)
}

fn generate_timed(
    image: &image::RgbaImage,
    params: &ImageTo3dParams,
    user_mask: Option<&image::GrayImage>,
    progress: &mut dyn FnMut(&'static str, f32),
    cancelled: &dyn Fn() -> bool,
    timings: &mut Vec<(&'static str, f64)>,
) -> Result<Generated, ImageTo3dError> {
    params.validate()?;
    let min_side = ImageLimits::default().min_side;
    if image.width() < min_side || image.height() < min_side {
        return Err(ImageInputError::TooSmall {
            width: image.width(),
            height: image.height(),
            min_side,
        }
        .into());
    }
    let mut clock = Instant::now();
    let mut stage = |name: &'static str, fraction: f32, timings: &mut Vec<(&'static str, f64)>| {
        timings.push((name, clock.elapsed().as_secs_f64() * 1000.0));
        clock = Instant::now();
        progress(name, fraction);
        if cancelled() {
            Err(ImageTo3dError::Cancelled)
        } else {
            Ok(())
        }
    };
    let check = || {
        if cancelled() {
            Err(ImageTo3dError::Cancelled)
        } else {
            Ok(())
        }
    };
    check()?;

    let mask = match user_mask {
        Some(user) => mask::from_user(user, image)?,
        None => mask::foreground_mask(image, params)?,
    };
    stage("mask", 0.15, timings)?;
    let frame = mask::frame(&mask, params.foreground_ratio);
    let n = params.quality.grid_cells();
    let mut field = mask::coverage(&mask, frame, n);
    stage("frame", 0.25, timings)?;
    let mut mesh = surface::build(&mut field, n, params.thickness, params.min_component_share);
    if mesh.is_empty() {
        return Err(ImageTo3dError::NoForeground {
            detail: "the foreground is too thin or small to build a shape at this quality; try a higher quality or a larger object".to_owned(),
        });
    }
    let scoring_mask = surface::mask_image(&field, n);
    stage("inflate", 0.5, timings)?;
    crate::mesh::smooth_taubin(&mut mesh, params.smooth_iterations);
    stage("smooth", 0.6, timings)?;
    if params.decimate_ratio < 1.0 {
        mesh = crate::mesh::decimate(&mesh, params.decimate_ratio);
    }
    stage("decimate", 0.75, timings)?;
    let atlas = texture::atlas(image, &mask, frame, params.quality.texture_side());
    let mut mesh = texture::apply(&mesh, atlas);
    mesh.compute_normals();
    stage("texture", 0.9, timings)?;
    Ok(Generated {
        mesh,
        mask: scoring_mask,
    })
}

pub use crate::request::ImageTo3dRequest;

/// What `background` means for `image`: `auto` is alpha when the picture
/// has any transparency, else border (the model runner turns `neural` and a
/// neural `auto` into an alpha channel first).
pub fn resolved_background(
    background: crate::request::Background,
    image: &image::RgbaImage,
) -> crate::request::Background {
    use crate::request::Background;
    match background {
        Background::Auto if image.pixels().any(|p| p.0[3] < 255) => Background::Alpha,
        Background::Auto => Background::Border,
        other => other,
    }
}

/// `image` with its background cut out by the built-in mask (the alpha
/// channel when it has one; otherwise a flood fill from the border through
/// the border's colour, holes kept): the background step of the neural
/// methods until a learnt segmenter replaces it.
pub fn cut_out_background(
    image: &image::RgbaImage,
    params: &ImageTo3dParams,
) -> Result<image::RgbaImage, ImageTo3dError> {
    let mask = mask::foreground_mask(image, params)?;
    let mut out = image.clone();
    for (p, &m) in out.pixels_mut().zip(&mask.data) {
        if m == 0 {
            p.0 = [0, 0, 0, 0];
        } else if p.0[3] == 0 {
            p.0[3] = 255;
        }
    }
    Ok(out)
}

/// What a finished generation produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageTo3dOutcome {
    /// Every file written (OBJ writes .obj, .mtl and .png).
    pub files: Vec<PathBuf>,
    pub vertices: usize,
    pub triangles: usize,
    pub report: MeshReport,
    /// Where the foreground came from (`auto` resolved).
    pub background: crate::request::Background,
    /// Wall time per stage in milliseconds, in order: decode, mask, frame,
    /// inflate, smooth, decimate, texture, score, export.
    pub stage_millis: Vec<(&'static str, f64)>,
}

/// Decode `req.input`, generate, score, and export to `req.output` in
/// `req.format`. Nothing is written unless every stage succeeds.
pub fn run_file(
    req: &ImageTo3dRequest,
    progress: &mut dyn FnMut(&'static str, f32),
    cancelled: &dyn Fn() -> bool,
) -> Result<ImageTo3dOutcome, ImageTo3dError> {
    if req.method != crate::request::ImageTo3dMethod::Inflate {
        return Err(ImageTo3dError::InvalidParameter {
            field: "method",
            detail: format!(
                "the built-in pipeline runs the inflate method only; {} runs through the \
                 model runner (`orfeas_ml::register_runners`)",
                req.method.as_str()
            ),
        });
    }
    req.params.validate()?;
    // Refuse a bad output path before the work, not after it.
    crate::export::check_output(&req.output, req.format)?;
    let clock = Instant::now();
    progress("decode", 0.0);
    let image = crate::image_input::load_image(&req.input, &ImageLimits::default())?;
    let decode = ("decode", clock.elapsed().as_secs_f64() * 1000.0);
    if cancelled() {
        return Err(ImageTo3dError::Cancelled);
    }
    let mut outcome = run_image(req, &image, progress, cancelled)?;
    outcome.stage_millis.insert(0, decode);
    Ok(outcome)
}

/// [`run_file`] on a picture already decoded (the model runner hands over a
/// cut-out whose alpha is the segmenter's mask, with `background = alpha`).
pub fn run_image(
    req: &ImageTo3dRequest,
    image: &image::RgbaImage,
    progress: &mut dyn FnMut(&'static str, f32),
    cancelled: &dyn Fn() -> bool,
) -> Result<ImageTo3dOutcome, ImageTo3dError> {
    req.params.validate()?;
    crate::export::check_output(&req.output, req.format)?;
    let user_mask = match &req.mask {
        Some(path) => Some(load_mask(path, image.width(), image.height())?),
        None => None,
    };
    let mut timings = Vec::new();
    let generated = generate_timed(
        image,
        &req.params,
        user_mask.as_ref(),
        &mut |stage, f| progress(stage, 0.05 + f * 0.8),
        cancelled,
        &mut timings,
    )?;
    let clock = Instant::now();
    let report = quality::score_mesh(&generated.mesh, &generated.mask);
    timings.push(("score", clock.elapsed().as_secs_f64() * 1000.0));
    progress("score", 0.85);
    if cancelled() {
        return Err(ImageTo3dError::Cancelled);
    }
    let clock = Instant::now();
    let files = crate::export::export_mesh(&generated.mesh, &req.output, req.format)?;
    timings.push(("export", clock.elapsed().as_secs_f64() * 1000.0));
    progress("export", 1.0);
    Ok(ImageTo3dOutcome {
        files,
        vertices: generated.mesh.vertex_count(),
        triangles: generated.mesh.triangle_count(),
        report,
        background: resolved_background(req.params.background, image),
        stage_millis: timings,
    })
}
