//! The command line: `orfeas [COMMAND]`. With no command the desktop studio opens.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use orfeas_core::export::ExportFormat;
use orfeas_core::history::History;
use orfeas_core::image_to_3d::{ImageTo3dParams, Quality};
use orfeas_core::jobs::{Engine, EngineConfig, JobEventKind, JobKind, JobSpec};
use orfeas_core::request::{ImageTo3dMethod, ImageTo3dRequest, TextToImageRequest};

#[derive(Debug, Parser)]
#[command(
    name = "orfeas",
    version,
    about = "ORFEAS Studio: text → image → 3D mesh on your own GPU, with live monitoring.",
    long_about = "ORFEAS Studio: text → image → 3D mesh on your own GPU, with live monitoring.\n\n\
        Run without a command to open the desktop studio. Every generation is recorded in the \
        history database in the data folder (ORFEAS_DATA_DIR overrides it).",
    after_help = "Examples:\n  orfeas                                   open the studio\n  \
        orfeas image-to-3d cat.png -o cat.glb    turn a picture into a mesh (no weights needed)\n  \
        orfeas history                           list recent jobs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop studio (the default).
    Gui,
    /// Turn an image (PNG, JPEG, WebP) into a 3D mesh (GLB, OBJ, PLY, STL).
    #[command(name = "image-to-3d")]
    ImageTo3d(ImageTo3dArgs),
    /// Generate images from a prompt with Stable Diffusion (needs downloaded weights).
    #[command(name = "text-to-image")]
    TextToImage(TextToImageArgs),
    /// Installed and known models: list, download, verify.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// List recent jobs from the history database.
    History(HistoryArgs),
    /// Render a mesh (GLB, glTF, OBJ, PLY, STL) to a PNG offscreen, without a window.
    Render(RenderArgs),
    /// Open the studio on the Viewer tab with this mesh.
    View {
        /// The mesh to show: GLB, glTF, OBJ, PLY or STL.
        mesh: PathBuf,
    },
    /// Run headless: the HTTP API and `/metrics` for Prometheus.
    Serve(ServeArgs),
    /// The Prometheus + Alertmanager + Grafana stack for watching studios.
    #[command(subcommand)]
    Monitoring(MonitoringCommand),
}

#[derive(Debug, Subcommand)]
pub enum MonitoringCommand {
    /// Write the monitoring stack (compose file, Prometheus, Alertmanager, Grafana) into DIR.
    Export {
        /// Target folder (created if missing; existing files are replaced).
        dir: PathBuf,
    },
    /// Print the Prometheus alerting rules generated from the studio's alert definitions.
    Rules,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but 127.0.0.1 or ::1 requires an API token.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub bind: String,
    /// Bearer token for `/api/*` (prefer the environment or --token-file over the command line).
    #[arg(long, env = "ORFEAS_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from the first line of this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Require the token on `/health` and `/metrics` as well.
    #[arg(long)]
    pub protect_metrics: bool,
    /// Turn the per-client rate limit off.
    #[arg(long)]
    pub no_rate_limit: bool,
    /// Generation requests per second per client (token bucket refill).
    #[arg(long, default_value_t = 1.0)]
    pub generate_rate: f64,
    /// Generation requests a client may send in a burst.
    #[arg(long, default_value_t = 10.0)]
    pub generate_burst: f64,
    /// Read requests (GET/DELETE) per second per client.
    #[arg(long, default_value_t = 50.0)]
    pub read_rate: f64,
    /// Read requests a client may send in a burst.
    #[arg(long, default_value_t = 100.0)]
    pub read_burst: f64,
    /// Jobs run at the same time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Queued jobs beyond which submissions get 503 + Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue_limit: usize,
    /// Largest request body in MiB (uploads included).
    #[arg(long, default_value_t = 64)]
    pub max_body_mib: u64,
    /// Do not re-run jobs that a previous process accepted but never started.
    #[arg(long)]
    pub no_requeue: bool,
    /// Seconds running jobs get to finish on SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
    /// `Access-Control-Allow-Origin` value (CORS is off without it).
    #[arg(long)]
    pub cors_origin: Option<String>,
    /// Seconds between system samples (CPU, memory, disk, GPU).
    #[arg(long, default_value_t = 1.0)]
    pub sample_interval_secs: f64,
    /// Alertmanager base URL to send firing and resolved alerts to (e.g. http://127.0.0.1:9093).
    #[arg(long)]
    pub alertmanager_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Built-in silhouette inflation: no weights, runs anywhere.
    Inflate,
    /// TripoSR neural reconstruction (needs its weights).
    Triposr,
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
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The mesh: GLB, glTF, OBJ, PLY or STL.
    pub mesh: PathBuf,
    /// The PNG to write. With --turntable N, frames go to NAME-000.png … NAME-(N-1).png.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Camera: front, back, left, right, top, bottom or iso.
    #[arg(long, default_value = "iso")]
    pub view: String,
    /// Image size as WIDTHxHEIGHT.
    #[arg(long, default_value = "1024x768")]
    pub size: String,
    /// Shading: lit, flat, clay, textured, vertex-color or normals.
    #[arg(long, default_value = "lit")]
    pub mode: String,
    /// Draw the triangle edges over the shading.
    #[arg(long)]
    pub wireframe: bool,
    /// Leave out the ground grid and axes.
    #[arg(long)]
    pub no_grid: bool,
    /// Render N frames around the object instead of one.
    #[arg(long)]
    pub turntable: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Every known model: installed or missing, where, size, licence.
    List,
    /// Fetch a model's files (resumable, size-checked, atomic). The only command that downloads.
    Download {
        /// Model name, e.g. sd-turbo (see `orfeas models list`).
        name: String,
        /// Folder to put it in (default: the app's models folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check that an installed model is complete and its weight files are readable.
    Verify {
        /// Model name, e.g. sd-turbo.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct TextToImageArgs {
    /// What to draw. Must not be empty (optional with --from-png).
    #[arg(required_unless_present = "from_png")]
    pub prompt: Option<String>,
    /// Where to write the PNG (with --batch N: NAME-0.png … NAME-(N-1).png).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Re-create a PNG that ORFEAS or A1111 generated from its own text chunks
    /// (prompt, seed, model, scheduler, size, strength); any other flag given
    /// changes that one field.
    #[arg(long, value_name = "PIC")]
    pub from_png: Option<PathBuf>,
    /// Model name from `orfeas models list` (default: sd-turbo).
    #[arg(long)]
    pub model: Option<String>,
    /// A diffusers-format model folder, or an SD 1.x or SDXL single-file .safetensors
    /// checkpoint, to use instead of a registry model.
    #[arg(long, visible_aliases = ["model-dir", "checkpoint"], value_name = "DIR|FILE")]
    pub model_path: Option<PathBuf>,
    /// What not to draw (used with guidance > 1).
    #[arg(long)]
    pub negative: Option<String>,
    /// Denoising steps (default: the model's, e.g. 1 for SD-Turbo).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (default: the model's; 0 turns it off).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Random seed; the same seed and parameters give the same image (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image size as WIDTHxHEIGHT, multiples of 8 (default: the model's).
    #[arg(long)]
    pub size: Option<String>,
    /// Images to generate (default 1).
    #[arg(long)]
    pub batch: Option<u32>,
    /// Scheduler: euler, euler-a, ddim or dpm++2m (default: the model's scheduler config).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Image→image: start from this picture (cropped to the output's aspect and
    /// resized) instead of pure noise.
    #[arg(long, value_name = "IMAGE")]
    pub init_image: Option<PathBuf>,
    /// With --init-image: how much of the schedule runs over the picture (0-1;
    /// 0.3 keeps most of it, 0.8 little). Steps run = steps x strength.
    #[arg(long)]
    pub strength: Option<f64>,
    /// A safetensors file with the initial noise tensor `latents` (reproducibility tests).
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Decode the image in tiles (less memory for large sizes).
    #[arg(long, conflicts_with_all = ["tiny_decoder", "tiny_decoder_dir"])]
    pub tiled_decode: bool,
    /// Decode with the tiny decoder (TAESD; `orfeas models download taesd`, or
    /// taesdxl for SDXL) instead of the VAE: much faster, a little less detail.
    #[arg(long)]
    pub tiny_decoder: bool,
    /// A TAESD folder (diffusers AutoencoderTiny) to decode with; implies --tiny-decoder.
    #[arg(long, value_name = "DIR")]
    pub tiny_decoder_dir: Option<PathBuf>,
    /// Style preset: none, photographic, digital-art, anime, 3d-model, pixel-art
    /// (adds its words to the prompt and the negative prompt; default none).
    #[arg(long)]
    pub style: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// How many jobs to list, newest first.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
}

/// Runs the parsed command line and says how the process should exit.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None | Some(Command::Gui) => {
            crate::run_gui()?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::ImageTo3d(args)) => image_to_3d(args),
        Some(Command::TextToImage(args)) => text_to_image(args),
        Some(Command::Models(command)) => models(command),
        Some(Command::History(args)) => history(&args),
        Some(Command::Render(args)) => render(&args),
        Some(Command::View { mesh }) => {
            crate::app::run_gui(crate::app::AppConfig {
                open_mesh: Some(absolute(&mesh)),
                start_tab: Some(crate::app::state::Tab::Viewer),
                ..crate::app::AppConfig::from_env()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve(args)) => serve(&args),
        Some(Command::Monitoring(MonitoringCommand::Export { dir })) => {
            orfeas_core::monitoring::export(&dir).with_context(|| {
                format!("cannot export the monitoring stack to {}", dir.display())
            })?;
            println!(
                "wrote the monitoring stack to {}; see its README.md",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Monitoring(MonitoringCommand::Rules)) => {
            print!(
                "{}",
                orfeas_core::telemetry::alerts::prometheus_rules_yaml()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_history() -> anyhow::Result<Arc<History>> {
    let history = History::open_default().context("cannot open the history database")?;
    Ok(Arc::new(history))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn image_to_3d(args: ImageTo3dArgs) -> anyhow::Result<ExitCode> {
    let history = open_history()?;
    let mut params = ImageTo3dParams {
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
    let (id, outcome, elapsed_ms) = run_job(&engine, spec)?;
    Ok(report_job(id, outcome, |output| {
        let s = &output.summary;
        let main_file = output
            .files
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!(
            "wrote {main_file}: {} vertices, {} faces, quality {:.2}, {elapsed_ms:.0} ms (job {id})",
            s["vertices"],
            s["triangles"],
            output.quality.unwrap_or(0.0),
        );
    }))
}

fn history(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let history = open_history()?;
    let jobs = history.list(args.limit, 0, None)?;
    if jobs.is_empty() {
        println!("no jobs yet; try `orfeas image-to-3d IMAGE -o mesh.glb`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<13} {:<11} {:>8} {:>7}  input → output / error",
        "id", "kind", "state", "secs", "quality"
    );
    for job in jobs {
        let secs = job
            .duration_secs
            .map(|d| format!("{d:.2}"))
            .unwrap_or_else(|| "-".into());
        let quality = job
            .quality
            .map(|q| format!("{q:.2}"))
            .unwrap_or_else(|| "-".into());
        let detail = match (&job.error_message, job.outputs.first()) {
            (Some(err), _) => format!("{}: {err}", job.label),
            (None, Some(out)) => format!("{} → {}", job.label, out.display()),
            (None, None) => job.label.clone(),
        };
        println!(
            "{:>5}  {:<13} {:<11} {:>8} {:>7}  {detail}",
            job.id.0,
            job.kind.as_str(),
            job.state.as_str(),
            secs,
            quality
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A one-line progress bar on stderr; plain lines when stderr is not a terminal.
struct ProgressBar {
    tty: bool,
    last_stage: String,
}

impl ProgressBar {
    fn new() -> ProgressBar {
        ProgressBar {
            tty: std::io::stderr().is_terminal(),
            last_stage: String::new(),
        }
    }

    fn update(&mut self, stage: &str, fraction: f32) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = 30;
            let filled = ((fraction.clamp(0.0, 1.0) * width as f32).round() as usize).min(width);
            let _ = write!(
                err,
                "\r[{}{}] {:>3.0}% {stage:<12}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                fraction * 100.0
            );
            let _ = err.flush();
        } else if stage != self.last_stage {
            let _ = writeln!(err, "{:>3.0}% {stage}", fraction * 100.0);
        }
        self.last_stage = stage.to_owned();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    use orfeas_core::http::{Bucket, RateLimitConfig, ServeConfig};
    use orfeas_core::telemetry::{Telemetry, TelemetryConfig};
    anyhow::ensure!(
        args.sample_interval_secs.is_finite() && args.sample_interval_secs >= 0.1,
        "--sample-interval-secs must be at least 0.1"
    );
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    for (name, value) in [
        ("--generate-rate", args.generate_rate),
        ("--generate-burst", args.generate_burst),
        ("--read-rate", args.read_rate),
        ("--read-burst", args.read_burst),
    ] {
        anyhow::ensure!(
            value.is_finite() && value > 0.0,
            "{name} must be a positive number"
        );
    }
    let data_dir = orfeas_core::paths::data_dir()?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
    let telemetry = Telemetry::start(TelemetryConfig {
        sample_interval: Duration::from_secs_f64(args.sample_interval_secs),
        data_dir: Some(data_dir.clone()),
        alertmanager_url: args.alertmanager_url.clone(),
        ..TelemetryConfig::default()
    })?;
    let history = Arc::new(
        History::open(&data_dir.join(orfeas_core::telemetry::HISTORY_DB_FILE))
            .context("cannot open the history database")?,
    );
    let engine = Engine::new(
        EngineConfig {
            concurrency: args.concurrency,
            queue_capacity: args.queue_limit.max(1),
            ..EngineConfig::default()
        },
        Some(history),
    )?;
    let kinds =
        orfeas_ml::register_runners(&engine, orfeas_ml::models::SearchRoots::from_env(), None);
    tracing::info!(?kinds, "job runners registered");
    engine.add_observer(Arc::new(telemetry.clone()));
    let config = ServeConfig {
        bind: args.bind.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        token_file: args.token_file.clone(),
        protect_metrics: args.protect_metrics,
        rate_limit: (!args.no_rate_limit).then_some(RateLimitConfig {
            read: Bucket {
                per_sec: args.read_rate,
                burst: args.read_burst,
            },
            generate: Bucket {
                per_sec: args.generate_rate,
                burst: args.generate_burst,
            },
        }),
        queue_limit: args.queue_limit,
        max_body_bytes: args.max_body_mib.saturating_mul(1024 * 1024),
        requeue_on_start: !args.no_requeue,
        drain_timeout: Duration::from_secs(args.drain_secs),
        cors_origin: args.cors_origin.clone(),
        data_dir: Some(data_dir),
        ..ServeConfig::default()
    };
    eprintln!(
        "ORFEAS Studio serving on http://{} (/health, /metrics, /api/*); Ctrl-C stops",
        args.bind
    );
    orfeas_core::http::run_server(config, telemetry, engine)?;
    Ok(ExitCode::SUCCESS)
}

/// Parses `WIDTHxHEIGHT`.
pub fn parse_size(text: &str) -> anyhow::Result<(u32, u32)> {
    let parsed = text
        .split_once(['x', 'X', '×'])
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => anyhow::bail!("size {text:?} is not WIDTHxHEIGHT (e.g. 1024x768)"),
    }
}

fn render(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    use crate::viewport::{RenderOptions, ShadingMode, View};
    let view = View::from_name(&args.view).with_context(|| {
        format!(
            "unknown view {:?}; use front, back, left, right, top, bottom or iso",
            args.view
        )
    })?;
    let mode = ShadingMode::from_name(&args.mode).with_context(|| {
        format!(
            "unknown mode {:?}; use lit, flat, clay, textured, vertex-color or normals",
            args.mode
        )
    })?;
    let (width, height) = parse_size(&args.size)?;
    let ext = args
        .output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    anyhow::ensure!(
        ext.as_deref() == Some("png"),
        "the output {} must end in .png",
        args.output.display()
    );
    let mesh = crate::viewport::open_mesh_file(&args.mesh)?;
    let options = RenderOptions {
        width,
        height,
        view,
        mode,
        wireframe: args.wireframe,
        grid: !args.no_grid,
        ..RenderOptions::default()
    };
    let frames = match args.turntable {
        None => vec![(
            args.output.clone(),
            crate::viewport::render_mesh_to_image(&mesh, &options)?,
        )],
        Some(0) => anyhow::bail!("--turntable needs at least 1 frame"),
        Some(n) => {
            let stem = args.output.with_extension("");
            crate::viewport::render_turntable(&mesh, &options, n)?
                .into_iter()
                .enumerate()
                .map(|(i, img)| (PathBuf::from(format!("{}-{i:03}.png", stem.display())), img))
                .collect()
        }
    };
    for (path, image) in &frames {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("cannot encode the PNG")?;
        orfeas_core::paths::write_bytes_atomic(path, &png)?;
    }
    println!(
        "wrote {} ({width}×{height}, {} triangles, {} view, {} shading{})",
        match frames.as_slice() {
            [(path, _)] => path.display().to_string(),
            _ => format!("{} frames", frames.len()),
        },
        mesh.triangle_count(),
        view.name(),
        mode.name(),
        if args.wireframe { ", wireframe" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs one job on `engine` with a progress bar on stderr; returns how it ended.
fn run_job(
    engine: &Engine,
    spec: orfeas_core::jobs::JobSpec,
) -> anyhow::Result<(orfeas_core::jobs::JobId, JobEventKind, f64)> {
    let mut events = engine.subscribe();
    let started = Instant::now();
    let id = engine.submit(spec)?;
    let mut bar = ProgressBar::new();
    let outcome = loop {
        let event = match events.blocking_recv() {
            Ok(event) => event,
            // A lagging receiver skipped some progress events; the terminal one still comes.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                anyhow::bail!("the job engine stopped before job {id} finished")
            }
        };
        if event.id != id {
            continue;
        }
        match event.event {
            JobEventKind::Progress {
                stage, fraction, ..
            } => bar.update(&stage, fraction),
            kind if kind.is_terminal() => break kind,
            _ => {}
        }
    };
    bar.finish();
    engine.shutdown(Duration::from_secs(5));
    Ok((id, outcome, started.elapsed().as_secs_f64() * 1000.0))
}

/// The one conversion from the command line to a request: the PNG's request
/// (with `--from-png`) or the defaults, then every flag given.
pub fn text_to_image_request(args: &TextToImageArgs) -> anyhow::Result<TextToImageRequest> {
    use orfeas_core::request::{Decoder, text_to_image_from_png};
    let mut r = match &args.from_png {
        Some(pic) => {
            let info = text_to_image_from_png(pic)?;
            if let Some(name) = &info.model_name
                && orfeas_ml::models::known(name).is_err()
                && args.model.is_none()
                && args.model_path.is_none()
            {
                anyhow::bail!(
                    "{} was made with the model {name:?}, which is not a registry model; \
                     pass the same model with --model-dir (or choose one with --model)",
                    pic.display()
                );
            }
            if let Some(name) = &info.init_image_name
                && args.init_image.is_none()
            {
                anyhow::bail!(
                    "{} was made from the start picture {name:?}, which a PNG does not hold; \
                     pass it with --init-image",
                    pic.display()
                );
            }
            info.request
        }
        None => TextToImageRequest::default(),
    };
    if let Some(prompt) = &args.prompt {
        r.prompt = prompt.clone();
    }
    if let Some(model) = &args.model {
        r.model = model.clone();
        r.model_path = None;
    }
    if let Some(dir) = &args.model_path {
        r.model_path = Some(absolute(dir));
        if orfeas_ml::models::known(&r.model).is_err() {
            // A PNG's folder name: the model comes from the path.
            r.model = orfeas_core::request::DEFAULT_MODEL.to_owned();
        }
    }
    if let Some(negative) = &args.negative {
        r.negative_prompt = negative.clone();
    }
    if let Some(style) = &args.style {
        r.style = style.trim().to_ascii_lowercase();
    }
    r.steps = args.steps.or(r.steps);
    r.guidance = args.guidance.or(r.guidance);
    if let Some(seed) = args.seed {
        r.seed = seed;
    }
    if let Some(size) = &args.size {
        let (w, h) = parse_size(size)?;
        (r.width, r.height) = (Some(w), Some(h));
    }
    if let Some(batch) = args.batch {
        r.batch = batch;
    }
    if let Some(name) = &args.scheduler {
        r.scheduler = Some(name.parse()?);
    }
    if let Some(init) = &args.init_image {
        r.init_image = Some(absolute(init));
    }
    r.strength = args.strength.or(r.strength);
    if let Some(latents) = &args.init_latents {
        r.init_latents = Some(absolute(latents));
    }
    if args.tiled_decode {
        r.decoder = Decoder::VaeTiled;
    }
    if args.tiny_decoder || args.tiny_decoder_dir.is_some() {
        r.decoder = Decoder::Taesd;
    }
    r.tiny_decoder_path = args.tiny_decoder_dir.as_deref().map(absolute);
    r.device = args.device.clone();
    r.check()?;
    Ok(r)
}

fn text_to_image(args: TextToImageArgs) -> anyhow::Result<ExitCode> {
    use orfeas_core::request::TextToImageJob;
    use orfeas_ml::text_to_image::TextToImageParams;
    // Refuse bad parameters before a job or a model load.
    let request = text_to_image_request(&args)?;
    TextToImageParams::from_request(&request)?;
    let ext = args
        .output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    anyhow::ensure!(
        ext.as_deref() == Some("png"),
        "the output {} must end in .png",
        args.output.display()
    );
    let job = TextToImageJob {
        request,
        output: absolute(&args.output),
    };
    let history = open_history()?;
    let engine = Engine::new(
        EngineConfig {
            concurrency: 1,
            ..EngineConfig::default()
        },
        Some(history),
    )?;
    orfeas_ml::register_runners(&engine, orfeas_ml::models::SearchRoots::from_env(), None);
    let (id, outcome, elapsed_ms) = run_job(&engine, JobSpec::from(job))?;
    Ok(report_job(id, outcome, |output| {
        for file in &output.files {
            println!("wrote {}", file.display());
        }
        println!(
            "seed {}, {} step(s), {elapsed_ms:.0} ms (job {id})",
            output.summary["seed"], output.summary["steps"]
        );
    }))
}

fn models(command: ModelsCommand) -> anyhow::Result<ExitCode> {
    use orfeas_ml::models;
    match command {
        ModelsCommand::List => {
            println!(
                "{:<12} {:<10} {:>9}  {:<34} where",
                "model", "state", "size", "licence"
            );
            for status in models::list() {
                let m = status.model;
                let (state, size, place) = match &status.installed {
                    Some(dir) => (
                        "installed",
                        format!("{:.1} GB", status.size_bytes as f64 / 1e9),
                        dir.display().to_string(),
                    ),
                    None => (
                        "missing",
                        format!("~{:.1} GB", m.approx_size_bytes() as f64 / 1e9),
                        format!("orfeas models download {}", m.name),
                    ),
                };
                let licence = if m.non_commercial {
                    format!("{} (non-commercial)", m.licence)
                } else {
                    m.licence.to_owned()
                };
                println!(
                    "{:<12} {:<10} {:>9}  {:<34} {place}",
                    m.name, state, size, licence
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCommand::Verify { name } => {
            let report = models::verify(&name)?;
            if report.ok() {
                println!("{name}: complete and readable in {}", report.dir.display());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{name} in {} has problems:", report.dir.display());
                for problem in &report.problems {
                    eprintln!("  - {problem}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        ModelsCommand::Download { name, dir } => {
            let model = models::known(&name)?;
            if model.non_commercial {
                eprintln!(
                    "note: {} is licensed for non-commercial use only ({})",
                    model.name, model.licence
                );
            }
            let cancelled = std::sync::atomic::AtomicBool::new(false);
            let mut bar = ProgressBar::new();
            let path = models::download::download(
                model,
                dir.as_deref(),
                None,
                &mut |p| {
                    let fraction = p
                        .total_bytes
                        .map_or(0.0, |t| p.done_bytes as f32 / t.max(1) as f32);
                    bar.update(
                        &format!("{}/{} {}", p.file_index + 1, p.file_count, p.file),
                        fraction,
                    );
                },
                &cancelled,
            )?;
            bar.finish();
            println!("{} is ready in {}", model.name, path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints how a job ended (`on_success` prints the summary) and picks the exit code.
fn report_job(
    id: orfeas_core::jobs::JobId,
    outcome: JobEventKind,
    on_success: impl FnOnce(&orfeas_core::jobs::JobOutput),
) -> ExitCode {
    match outcome {
        JobEventKind::Succeeded(output) => {
            on_success(&output);
            ExitCode::SUCCESS
        }
        JobEventKind::Failed(failure) => {
            eprintln!("error: {} (job {id})", failure.message);
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("job {id} was cancelled; nothing was written");
            ExitCode::FAILURE
        }
    }
}
