//! `orfeas image-to-3d`: a picture to a mesh, as one job with a progress bar.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use orfeas_core::export::ExportFormat;
use orfeas_core::image_to_3d::{ImageTo3dParams, Quality};
use orfeas_core::jobs::{Engine, EngineConfig, JobKind, JobSpec};
use orfeas_core::request::{ImageTo3dMethod, ImageTo3dRequest};

use super::{absolute, open_history, report_job, run_job};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Built-in silhouette inflation: no weights, runs anywhere.
    Inflate,
    /// TripoSR neural reconstruction (`orfeas models download triposr`, MIT licence).
    Triposr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackgroundArg {
    /// The alpha channel if the picture has one, else the neural segmenter if installed, else the border colour.
    Auto,
    /// The picture's transparency.
    Alpha,
    /// The neural segmenter (BiRefNet; `orfeas models download birefnet-lite`).
    Neural,
    /// Flood fill from the border through the border's colour (plain backdrops).
    Border,
    /// Keep the whole picture.
    None,
}

impl From<BackgroundArg> for orfeas_core::request::Background {
    fn from(b: BackgroundArg) -> Self {
        use orfeas_core::request::Background;
        match b {
            BackgroundArg::Auto => Background::Auto,
            BackgroundArg::Alpha => Background::Alpha,
            BackgroundArg::Neural => Background::Neural,
            BackgroundArg::Border => Background::Border,
            BackgroundArg::None => Background::None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QualityArg {
    Draft,
    Standard,
    High,
}

impl From<QualityArg> for Quality {
    fn from(q: QualityArg) -> Quality {
        match q {
            QualityArg::Draft => Quality::Draft,
            QualityArg::Standard => Quality::Standard,
            QualityArg::High => Quality::High,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Glb,
    Obj,
    Ply,
    Stl,
}

impl From<FormatArg> for ExportFormat {
    fn from(f: FormatArg) -> ExportFormat {
        match f {
            FormatArg::Glb => ExportFormat::Glb,
            FormatArg::Obj => ExportFormat::Obj,
            FormatArg::Ply => ExportFormat::Ply,
            FormatArg::Stl => ExportFormat::Stl,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImageTo3dArgs {
    /// The input image: PNG, JPEG or WebP. Transparent pixels (or the border colour) are background.
    pub input: PathBuf,
    /// Where to write the mesh; the extension picks the format unless --format is given.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output format (default: from the output file's extension).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Reconstruction method.
    #[arg(long, value_enum, default_value = "inflate")]
    pub method: Method,
    /// Where the foreground comes from (the choice made is printed).
    #[arg(long, value_enum, default_value = "auto")]
    pub background: BackgroundArg,
    /// Mesh resolution preset.
    #[arg(long, value_enum, default_value = "standard")]
    pub quality: QualityArg,
    /// Share of the frame the object fills after cropping (0.1–1.0).
    #[arg(long, default_value_t = 0.85)]
    pub foreground_ratio: f32,
    /// Alpha (0–255) above which a pixel counts as foreground.
    #[arg(long)]
    pub mask_threshold: Option<u8>,
    /// Shrink the mask by this many pixels before meshing (removes halos).
    #[arg(long)]
    pub erode: Option<u32>,
    /// Smoothing passes over the finished mesh.
    #[arg(long)]
    pub smooth: Option<u32>,
    /// Keep this share of the triangles (0.05–1.0; 1 = no decimation).
    #[arg(long)]
    pub decimate: Option<f32>,
    /// TripoSR: points per axis of the density grid the surface is taken from
    /// (32–1024; memory and time grow with its cube).
    #[arg(long, default_value_t = orfeas_core::request::DEFAULT_MC_RESOLUTION)]
    pub mc_resolution: u32,
    /// TripoSR: the density the surface is drawn at (lower: fuller, puffier shapes).
    #[arg(long, default_value_t = orfeas_core::request::DEFAULT_MC_THRESHOLD)]
    pub mc_threshold: f32,
    /// TripoSR: a model folder (config.yaml + model.ckpt or model.safetensors)
    /// instead of the registry's `triposr`.
    #[arg(long, value_name = "DIR")]
    pub model_path: Option<PathBuf>,
    /// Run the job on a fleet instead of here: its NATS URLs (nats://HOST:4222,…;
    /// the workers run `orfeas serve --queue`). The mesh still lands at --output.
    #[arg(long, value_name = "URLS")]
    pub queue: Option<String>,
}

pub(super) fn image_to_3d(args: ImageTo3dArgs) -> anyhow::Result<ExitCode> {
    let history = open_history()?;
    let mut params = ImageTo3dParams {
        background: args.background.into(),
        quality: args.quality.into(),
        foreground_ratio: args.foreground_ratio,
        ..ImageTo3dParams::default()
    };
    if let Some(v) = args.mask_threshold {
        params.mask_threshold = v;
    }
    if let Some(v) = args.erode {
        params.erode_px = v;
    }
    if let Some(v) = args.smooth {
        params.smooth_iterations = v;
    }
    if let Some(v) = args.decimate {
        params.decimate_ratio = v;
    }
    let input = absolute(&args.input);
    let output = absolute(&args.output);
    let format = match args.format {
        Some(f) => ExportFormat::from(f),
        None => match ExportFormat::from_path(&output) {
            Ok(f) => f,
            Err(err) => {
                // Record the refusal like any other failed job, so the history tells the whole story.
                let label = input
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let params =
                    serde_json::json!({"input": input, "output": output, "params": params});
                if let Ok(id) = history.insert_job(JobKind::ImageTo3d, &label, &params) {
                    let _ = history.mark_failed(
                        id,
                        err.reason(),
                        &err.to_string(),
                        &Default::default(),
                    );
                }
                return Err(err.into());
            }
        },
    };
    let request = ImageTo3dRequest {
        method: match args.method {
            Method::Inflate => ImageTo3dMethod::Inflate,
            Method::Triposr => ImageTo3dMethod::TripoSr,
        },
        params,
        triposr: orfeas_core::request::TripoSrOptions {
            model_path: args.model_path.as_deref().map(absolute),
            mc_resolution: args.mc_resolution,
            mc_threshold: args.mc_threshold,
            bake_texture: false,
        },
        ..ImageTo3dRequest::new(input, output, format)
    };
    request.check()?;
    let spec = JobSpec::from(request);

    let engine = Engine::new(
        EngineConfig {
            concurrency: 1,
            ..EngineConfig::default()
        },
        Some(history),
    )?;
    orfeas_ml::register_runners(&engine, orfeas_ml::models::SearchRoots::from_env(), None);
    let _fleet = super::use_fleet(&engine, args.queue.as_deref())?;
    let (id, outcome, elapsed_ms) = run_job(&engine, spec)?;
    Ok(report_job(id, outcome, |output| {
        let s = &output.summary;
        let main_file = output
            .files
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(background) = s["background"].as_str() {
            println!("background: {background}");
        }
        if let Some(agreement) = s["report"]["mask_agreement"].as_f64() {
            println!(
                "mask agreement: {agreement:.3} (the foreground against the segmenter's; it \
                 multiplies the quality)"
            );
        }
        if let Some(why) = s["mask_check"].as_str() {
            eprintln!("warning: the mask was not checked against the segmenter: {why}");
        }
        println!(
            "wrote {main_file}: {} vertices, {} faces, quality {:.2}, {elapsed_ms:.0} ms (job {id})",
            s["vertices"],
            s["triangles"],
            output.quality.unwrap_or(0.0),
        );
    }))
}
