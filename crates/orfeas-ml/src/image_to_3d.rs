//! Image→3D jobs for every method: `inflate` (orfeas-core's, no weights)
//! and `triposr` (TripoSR on candle: scene code → density grid → marching
//! cubes → vertex colours).
//!
//! TripoSR's mesh is turned from its frame (camera on +x, up +z) into
//! glTF's (front +z, up +y): `(x, y, z) → (y, z, x)`, a rotation, so the
//! winding stays outward.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use orfeas_core::image_to_3d::{ImageTo3dError, cut_out_background, load_mask};
use orfeas_core::jobs::{JobContext, JobFailure, JobOutput, JobRunner, JobSpec};
use orfeas_core::mesh::Mesh;
use orfeas_core::mesh::marching_cubes::extract_isosurface;
use orfeas_core::request::{Background, ImageTo3dMethod, ImageTo3dRequest, TripoSrOptions};
use orfeas_core::runner::{image_to_3d_request, run_inflate_on};

use crate::birefnet::BiRefNet;
use crate::error::{Result, SdError};
use crate::models::SearchRoots;
use crate::sd::pipeline::{self, DevicePref};
use crate::text_to_image::Kept;
use crate::triposr::TripoSr;

/// The segmenter `neural` (and a neural `auto`) uses.
pub const SEGMENTER: &str = "birefnet-lite";

/// Loads the segmenter in `dir` (f32) on `device`.
pub fn load_segmenter(dir: &std::path::Path, device: DevicePref) -> Result<BiRefNet> {
    let (device, _) = pipeline::select_device(device)?;
    BiRefNet::from_dir(dir, DType::F32, &device)
}

/// `image` with `mask` (same size) as its alpha channel; the pixels are kept.
pub fn with_mask_as_alpha(image: &image::RgbaImage, mask: &image::GrayImage) -> image::RgbaImage {
    let mut cut = image.clone();
    for (p, m) in cut.pixels_mut().zip(mask.pixels()) {
        p.0[3] = m.0[0];
    }
    cut
}

/// Runs image→3D jobs of every method; keeps the last TripoSR model loaded.
pub struct ImageTo3dRunner {
    roots: SearchRoots,
    device: DevicePref,
    triposr: Kept<TripoSr>,
    segmenter: Kept<BiRefNet>,
}

impl std::fmt::Debug for ImageTo3dRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageTo3dRunner")
            .field("roots", &self.roots)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl ImageTo3dRunner {
    /// A runner that finds TripoSR in `roots` (unless a request names a folder)
    /// and runs it on `device`.
    pub fn new(roots: SearchRoots, device: DevicePref) -> Self {
        Self {
            roots,
            device,
            triposr: Kept::default(),
            segmenter: Kept::default(),
        }
    }

    /// The segmenter's folder, when it is installed.
    pub fn segmenter_dir(&self) -> Option<PathBuf> {
        self.roots.resolve(SEGMENTER).ok()
    }

    /// What `background` becomes for `image`: alpha when it has transparency,
    /// else the segmenter when installed, else the border colour (auto); the
    /// others as they are.
    pub fn resolve_background(
        &self,
        background: Background,
        image: &image::RgbaImage,
    ) -> Background {
        match background {
            Background::Auto if crate::triposr::preprocess::has_transparency(image) => {
                Background::Alpha
            }
            Background::Auto if self.segmenter_dir().is_some() => Background::Neural,
            Background::Auto => Background::Border,
            other => other,
        }
    }

    /// The TripoSR folder a request uses: its own, or the registry's.
    pub fn triposr_dir(&self, options: &TripoSrOptions) -> Result<PathBuf> {
        match &options.model_path {
            Some(dir) => Ok(dir.clone()),
            None => self.roots.resolve("triposr"),
        }
    }
}

fn failure(e: &SdError) -> JobFailure {
    match e {
        SdError::Cancelled => JobFailure::cancelled(),
        other => JobFailure::new(other.reason(), format!("{other:#}")),
    }
}

fn core_failure(e: ImageTo3dError) -> JobFailure {
    match e {
        ImageTo3dError::Cancelled => JobFailure::cancelled(),
        other => JobFailure::new(other.reason(), other.to_string()),
    }
}

/// What a TripoSR request may not ask for (yet), said before any work.
fn check_triposr(request: &ImageTo3dRequest) -> Result<()> {
    if request.triposr.bake_texture {
        return Err(SdError::invalid(
            "bake_texture",
            "texture baking is not available yet; TripoSR meshes carry vertex colours \
             (leave bake_texture off)",
        ));
    }
    Ok(())
}

impl JobRunner for ImageTo3dRunner {
    fn admit(&self, spec: &JobSpec) -> Result<(), JobFailure> {
        let request = image_to_3d_request(spec)?;
        request
            .check()
            .map_err(|e| JobFailure::new("invalid_parameter", e.to_string()))?;
        if request.params.background == Background::Neural {
            self.roots.resolve(SEGMENTER).map_err(|e| failure(&e))?;
        }
        match request.method {
            ImageTo3dMethod::Inflate => Ok(()),
            ImageTo3dMethod::TripoSr => {
                check_triposr(request).map_err(|e| failure(&e))?;
                let dir = self
                    .triposr_dir(&request.triposr)
                    .map_err(|e| failure(&e))?;
                crate::triposr::weights_file(&dir).map_err(|e| failure(&e))?;
                Ok(())
            }
        }
    }

    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
        let request = image_to_3d_request(spec)?;
        let output = match request.method {
            ImageTo3dMethod::Inflate => self.run_inflate(request, ctx),
            ImageTo3dMethod::TripoSr => self.run_triposr(request, ctx),
        };
        // The job's activations are freed; loaded models stay.
        crate::memory::release_freed_memory();
        output
    }
}

impl ImageTo3dRunner {
    /// The picture with its foreground in the alpha channel, by
    /// `params.background`, and the source used (`auto` resolved). A cut-out
    /// (alpha) goes in as it is, soft edges and all, as TripoSR takes it.
    fn foreground(
        &self,
        image: &image::RgbaImage,
        params: &orfeas_core::image_to_3d::ImageTo3dParams,
        ctx: &JobContext,
    ) -> Result<(image::RgbaImage, Background), JobFailure> {
        let source = self.resolve_background(params.background, image);
        match source {
            Background::Alpha if crate::triposr::preprocess::has_transparency(image) => {
                Ok((image.clone(), source))
            }
            Background::Neural => {
                ctx.progress("background", 0.02, "segmenting");
                let mask = self.segment(image).map_err(|e| failure(&e))?;
                let cut = with_mask_as_alpha(image, &mask);
                if !cut.pixels().any(|p| p.0[3] >= params.mask_threshold.max(1)) {
                    return Err(core_failure(ImageTo3dError::NoForeground {
                        detail: "the segmenter found no object in the picture".to_owned(),
                    }));
                }
                Ok((cut, source))
            }
            _ => Ok((
                cut_out_background(image, params).map_err(core_failure)?,
                source,
            )),
        }
    }

    /// The picture with the user's painted mask (`request.mask`) as alpha.
    fn painted(
        image: &image::RgbaImage,
        path: &std::path::Path,
    ) -> Result<image::RgbaImage, JobFailure> {
        let mask = load_mask(path, image.width(), image.height()).map_err(core_failure)?;
        // A painted mask is binary: no soft edge for TripoSR to half-keep.
        let binary = image::GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
            image::Luma([if mask.get_pixel(x, y).0[0] >= 128 {
                255
            } else {
                0
            }])
        });
        Ok(with_mask_as_alpha(image, &binary))
    }

    /// The foreground mask `params` finds in `image` (255 = foreground) and
    /// the source it came from (`auto` resolved), for the GUI to show and
    /// edit: the segmenter for `neural` (loaded once, kept), the built-in
    /// masks otherwise. Slow for `neural`: call it off the UI thread. The
    /// error is the message to show.
    pub fn preview_mask(
        &self,
        image: &image::RgbaImage,
        params: &orfeas_core::image_to_3d::ImageTo3dParams,
    ) -> std::result::Result<(image::GrayImage, Background), String> {
        let source = self.resolve_background(params.background, image);
        if source == Background::Neural {
            let soft = self.segment(image).map_err(|e| format!("{e:#}"))?;
            let threshold = params.mask_threshold.max(1);
            let mask = image::GrayImage::from_fn(soft.width(), soft.height(), |x, y| {
                image::Luma([if soft.get_pixel(x, y).0[0] >= threshold {
                    255
                } else {
                    0
                }])
            });
            return Ok((mask, source));
        }
        let resolved = orfeas_core::image_to_3d::ImageTo3dParams {
            background: source,
            ..params.clone()
        };
        orfeas_core::image_to_3d::preview_mask(image, &resolved)
            .map(|mask| (mask, source))
            .map_err(|e| e.to_string())
    }

    /// The segmenter's mask of `image` (0..255 at the picture's size).
    pub fn segment(&self, image: &image::RgbaImage) -> Result<image::GrayImage> {
        let dir = self.roots.resolve(SEGMENTER)?;
        let (device, _) = pipeline::select_device(self.device)?;
        let dtype = DType::F32;
        let model = self
            .segmenter
            .get_or_load(&dir, format!("{device:?}/{dtype:?}"), || {
                BiRefNet::from_dir(&dir, dtype, &device)
            })?;
        let size = crate::birefnet::default_input_size(&dir)?;
        model.mask(&image::DynamicImage::ImageRgba8(image.clone()), size)
    }

    fn run_inflate(
        &self,
        request: &ImageTo3dRequest,
        ctx: &JobContext,
    ) -> Result<JobOutput, JobFailure> {
        let image = orfeas_core::image_input::load_image(
            &request.input,
            &orfeas_core::image_input::ImageLimits::default(),
        )
        .map_err(|e| core_failure(e.into()))?;
        // A painted mask, or a background step core does itself: core runs it all.
        let source = self.resolve_background(request.params.background, &image);
        if request.mask.is_some() || source != Background::Neural {
            let mut output = run_inflate_on(request, &image, ctx)?;
            // The mask core used, worked out again only when there is a segmenter to ask.
            self.check_foreground(&mut output, &image, None, ctx, || match &request.mask {
                Some(path) => load_mask(path, image.width(), image.height()).map_err(core_failure),
                None => self
                    .foreground(&image, &request.params, ctx)
                    .map(|(cut, _)| alpha_of(&cut)),
            });
            return Ok(output);
        }
        let (cut, source) = self.foreground(&image, &request.params, ctx)?;
        // The segmenter's mask is now the alpha channel: inflate reads it as such.
        let mut on_alpha = request.clone();
        on_alpha.params.background = Background::Alpha;
        let mut output = run_inflate_on(&on_alpha, &cut, ctx)?;
        output.summary["background"] = source.as_str().into();
        let saliency = alpha_of(&cut);
        self.check_foreground(&mut output, &image, Some(&saliency), ctx, || {
            Ok(saliency.clone())
        });
        Ok(output)
    }

    /// Folds how far `used()` (the foreground the mesh was built from)
    /// agrees with the segmenter's saliency into the job's score (see
    /// [`orfeas_core::quality::with_mask_agreement`]); `saliency` is the
    /// segmenter's own mask when it already ran on this picture. Without the
    /// segmenter the score stays as it was and `used` is not called; a
    /// failure of either is noted in the summary, never fails the job.
    fn check_foreground(
        &self,
        output: &mut JobOutput,
        image: &image::RgbaImage,
        saliency: Option<&image::GrayImage>,
        ctx: &JobContext,
        used: impl FnOnce() -> Result<image::GrayImage, JobFailure>,
    ) {
        if saliency.is_none() && self.segmenter_dir().is_none() {
            return;
        }
        let used = match used() {
            Ok(mask) => mask,
            Err(err) => {
                tracing::warn!("the mask check could not run: {}", err.message);
                output.summary["mask_check"] = err.message.into();
                return;
            }
        };
        let computed;
        let saliency = match saliency {
            Some(s) => s,
            None => {
                ctx.progress("score", 0.9, "checking the mask");
                match self.segment(image) {
                    Ok(s) => {
                        computed = s;
                        &computed
                    }
                    Err(err) => {
                        tracing::warn!("the mask check could not run: {err:#}");
                        output.summary["mask_check"] = format!("{err:#}").into();
                        return;
                    }
                }
            }
        };
        let agreement = crate::mask_score::mask_agreement(&used, saliency);
        let Ok(report) = serde_json::from_value::<orfeas_core::quality::MeshReport>(
            output.summary["report"].clone(),
        ) else {
            tracing::warn!("the job summary has no mesh report to fold the mask check into");
            return;
        };
        let report = orfeas_core::quality::with_mask_agreement(report, agreement);
        output.quality = Some(report.score);
        output.summary["report"] = serde_json::to_value(&report).unwrap_or_default();
    }

    fn run_triposr(
        &self,
        request: &ImageTo3dRequest,
        ctx: &JobContext,
    ) -> Result<JobOutput, JobFailure> {
        check_triposr(request).map_err(|e| failure(&e))?;
        request.params.validate().map_err(core_failure)?;
        orfeas_core::export::check_output(&request.output, request.format)
            .map_err(|e| core_failure(e.into()))?;
        let mut timings: Vec<(&'static str, f64)> = Vec::new();
        let mut clock = Instant::now();
        let mut lap = |stage: &'static str, clock: &mut Instant| {
            timings.push((stage, clock.elapsed().as_secs_f64() * 1000.0));
            *clock = Instant::now();
        };

        ctx.progress("decode", 0.0, "");
        let image = orfeas_core::image_input::load_image(
            &request.input,
            &orfeas_core::image_input::ImageLimits::default(),
        )
        .map_err(|e| core_failure(e.into()))?;
        let (cut, background) = match &request.mask {
            Some(path) => (Self::painted(&image, path)?, "mask"),
            None => {
                let (cut, source) = self.foreground(&image, &request.params, ctx)?;
                (cut, source.as_str())
            }
        };
        // The segmenter's own mask needs no second opinion from itself.
        let own_saliency = (background == Background::Neural.as_str()).then(|| alpha_of(&cut));
        let cut_for_score = cut.clone();
        if cut.pixels().all(|p| p.0[3] == 0) {
            return Err(core_failure(ImageTo3dError::NoForeground {
                detail: "the image is fully transparent".to_owned(),
            }));
        }
        lap("background", &mut clock);
        ctx.check_cancelled()?;

        ctx.progress("load", 0.05, "");
        let dir = self
            .triposr_dir(&request.triposr)
            .map_err(|e| failure(&e))?;
        let (device, _) = pipeline::select_device(self.device).map_err(|e| failure(&e))?;
        // f32 everywhere for now: f16 has not been checked against the goldens on a GPU.
        let dtype = DType::F32;
        let model = self
            .triposr
            .get_or_load(&dir, format!("{device:?}/{dtype:?}"), || {
                TripoSr::from_dir(&dir, dtype, &device)
            })
            .map_err(|e| failure(&e))?;
        lap("load", &mut clock);
        ctx.check_cancelled()?;

        ctx.progress("encode", 0.15, "");
        let pixels = model
            .preprocess(
                &image::DynamicImage::ImageRgba8(cut),
                f64::from(request.params.foreground_ratio),
                &device,
            )
            .map_err(|e| failure(&e))?;
        let scene = model
            .forward(&pixels)
            .and_then(|codes| Ok(codes.get(0)?.unsqueeze(0)?))
            .map_err(|e| failure(&e))?;
        lap("scene_code", &mut clock);
        ctx.check_cancelled()?;

        let options = &request.triposr;
        let res = options.mc_resolution as usize;
        ctx.progress("density", 0.35, &format!("{res}³ grid"));
        let density = model.density_grid(&scene, res).map_err(|e| failure(&e))?;
        lap("density", &mut clock);
        ctx.check_cancelled()?;

        ctx.progress("surface", 0.75, "");
        let surface = extract_isosurface(&density, [res; 3], options.mc_threshold)
            .map_err(|e| JobFailure::new("internal", e.to_string()))?;
        drop(density);
        if surface.indices.is_empty() {
            return Err(JobFailure::new(
                "no_foreground",
                format!(
                    "the model's density never rises above the threshold {}; lower --mc-threshold \
                     or use a picture with one clear object",
                    options.mc_threshold
                ),
            ));
        }
        let radius = model.config().renderer.radius as f32;
        let scale = 2.0 * radius / (res - 1) as f32;
        let world: Vec<[f32; 3]> = surface
            .positions
            .iter()
            .map(|p| p.map(|x| x * scale - radius))
            .collect();
        lap("marching_cubes", &mut clock);

        ctx.progress("colour", 0.85, "");
        let colours = model
            .query_colors(&scene, &world)
            .map_err(|e| failure(&e))?;
        let mut mesh = Mesh {
            positions: world.iter().map(|&[x, y, z]| [y, z, x]).collect(),
            colors: colours
                .iter()
                .map(|c| {
                    let u = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    [u(c[0]), u(c[1]), u(c[2]), 255]
                })
                .collect(),
            indices: surface.indices,
            ..Mesh::default()
        };
        if request.params.smooth_iterations > 0 {
            orfeas_core::mesh::smooth_taubin(&mut mesh, request.params.smooth_iterations);
        }
        if request.params.decimate_ratio < 1.0 {
            mesh = orfeas_core::mesh::decimate(&mesh, request.params.decimate_ratio);
        }
        mesh.compute_normals();
        lap("colour", &mut clock);
        ctx.check_cancelled()?;

        ctx.progress("score", 0.9, "");
        let mask = front_mask(&cut_for_score, request.params.foreground_ratio);
        let report = orfeas_core::quality::score_mesh(&mesh, &mask);
        lap("score", &mut clock);

        ctx.progress("export", 0.95, "");
        let files = orfeas_core::export::export_mesh(&mesh, &request.output, request.format)
            .map_err(|e| core_failure(e.into()))?;
        lap("export", &mut clock);
        ctx.progress("export", 1.0, "");
        let mut output = JobOutput {
            files,
            quality: Some(report.score),
            summary: serde_json::json!({
                "method": request.method.as_str(),
                "background": background,
                "vertices": mesh.vertex_count(),
                "triangles": mesh.triangle_count(),
                "format": request.format.as_str(),
                "mc_resolution": options.mc_resolution,
                "mc_threshold": options.mc_threshold,
                "report": report,
                "stage_millis": timings.iter()
                    .map(|(stage, ms)| serde_json::json!({"stage": stage, "millis": ms}))
                    .collect::<Vec<_>>(),
            }),
        };
        self.check_foreground(&mut output, &image, own_saliency.as_ref(), ctx, || {
            Ok(alpha_of(&cut_for_score))
        });
        Ok(output)
    }
}

/// The alpha channel of `cut` (the foreground a job used, 255 = kept).
fn alpha_of(cut: &image::RgbaImage) -> image::GrayImage {
    image::GrayImage::from_fn(cut.width(), cut.height(), |x, y| {
        image::Luma([cut.get_pixel(x, y).0[3]])
    })
}

/// The cut-out's foreground as the quality score reads it: pixels covering
/// the mesh's xy square [-1, 1]² seen from the front. TripoSR's input view
/// spans ±`distance · tan(fov / 2)` at the origin (1.9 · tan 20° = 0.69),
/// and the foreground fills `foreground_ratio` of it.
fn front_mask(cut: &image::RgbaImage, foreground_ratio: f32) -> image::GrayImage {
    const SIDE: u32 = 256;
    let half_view = 1.9 * (20f32).to_radians().tan();
    let Ok(centred) =
        crate::triposr::preprocess::resize_foreground(cut, f64::from(foreground_ratio))
    else {
        return image::GrayImage::new(SIDE, SIDE);
    };
    let inner = ((SIDE as f32) * half_view).round().max(1.0) as u32;
    let alpha = image::GrayImage::from_fn(centred.width(), centred.height(), |x, y| {
        image::Luma([centred.get_pixel(x, y).0[3]])
    });
    let small =
        image::imageops::resize(&alpha, inner, inner, image::imageops::FilterType::Triangle);
    let mut mask = image::GrayImage::new(SIDE, SIDE);
    let offset = i64::from((SIDE - inner) / 2);
    image::imageops::overlay(&mut mask, &small, offset, offset);
    mask
}
