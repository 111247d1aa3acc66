//! The command line: `orfeas [COMMAND]`. With no command the desktop studio opens.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use orfeas_core::history::History;
use orfeas_core::jobs::{Engine, JobEventKind};

mod batch;
mod history;
mod image_to_3d;
mod models;
mod remove_background;
mod render;
mod serve;
mod text_to_image;

pub use history::HistoryArgs;
pub use image_to_3d::{BackgroundArg, FormatArg, ImageTo3dArgs, Method, QualityArg};
pub use models::ModelsCommand;
pub use remove_background::{RemoveBackgroundArgs, SegmenterArg};
pub use render::RenderArgs;
pub use serve::ServeArgs;
pub use text_to_image::{TextToImageArgs, text_to_image_request};

#[derive(Debug, Parser)]
#[command(
    name = "orfeas",
    version = crate::about::short_version(),
    long_version = crate::about::long_version(),
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
    /// Graphics API for the window and offscreen rendering (default: the best
    /// one found; OpenGL is the fallback on machines without Vulkan/Metal/DX12).
    #[arg(long, global = true, env = "ORFEAS_BACKEND", value_enum)]
    pub backend: Option<crate::viewport::GpuBackend>,
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
    /// Cut the background out of a picture with the neural segmenter (BiRefNet):
    /// a PNG with the mask in its alpha channel.
    #[command(name = "remove-background")]
    RemoveBackground(RemoveBackgroundArgs),
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
    /// Open the studio with a file: a mesh on the Viewer tab, a picture as the
    /// image→3D input (what the desktop menu entry and "Open with" run).
    Open {
        /// A mesh (GLB, glTF, OBJ, PLY, STL) or an image (PNG, JPEG, WebP); none: just open.
        file: Option<PathBuf>,
    },
    /// Run headless: the HTTP API and `/metrics` for Prometheus.
    Serve(ServeArgs),
    /// A folder of pictures as jobs on a fleet (`--queue`), collected into one folder; resumable.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
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

/// Runs the parsed command line and says how the process should exit.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let backend = cli.backend;
    match cli.command {
        None | Some(Command::Gui) => {
            crate::app::run_gui(crate::app::AppConfig {
                backend,
                ..crate::app::AppConfig::from_env()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::ImageTo3d(args)) => image_to_3d::image_to_3d(args),
        Some(Command::TextToImage(args)) => text_to_image::text_to_image(args),
        Some(Command::Models(command)) => models::models(command),
        Some(Command::RemoveBackground(args)) => remove_background::remove_background(&args),
        Some(Command::History(args)) => history::history(&args),
        Some(Command::Render(args)) => render::render(&args, backend),
        Some(Command::View { mesh }) => {
            crate::app::run_gui(crate::app::AppConfig {
                open_mesh: Some(absolute(&mesh)),
                start_tab: Some(crate::app::state::Tab::Viewer),
                backend,
                ..crate::app::AppConfig::from_env()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Open { file }) => {
            let config = crate::app::AppConfig {
                backend,
                ..crate::app::AppConfig::from_env()
            };
            crate::app::run_gui(open_config(config, file.as_deref())?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve(args)) => serve::serve(&args),
        Some(Command::Batch(command)) => batch::batch(command),
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

/// Where `orfeas open FILE` shows `file`: meshes in the Viewer, pictures as
/// the Create tab's input. Anything else is refused before a window opens.
pub fn open_config(
    mut config: crate::app::AppConfig,
    file: Option<&Path>,
) -> anyhow::Result<crate::app::AppConfig> {
    let Some(file) = file else {
        return Ok(config);
    };
    anyhow::ensure!(
        file.is_file(),
        "{} does not exist or is not a file",
        file.display()
    );
    if orfeas_core::import::MeshFormat::from_path(file).is_some() {
        config.open_mesh = Some(absolute(file));
        config.start_tab = Some(crate::app::state::Tab::Viewer);
    } else if image::ImageFormat::from_path(file).is_ok_and(|format| {
        matches!(
            format,
            image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP
        )
    }) {
        config.open_image = Some(absolute(file));
    } else {
        anyhow::bail!(
            "cannot open {}: use a mesh (.glb, .gltf, .obj, .ply, .stl) or a picture \
             (.png, .jpg, .webp)",
            file.display()
        );
    }
    Ok(config)
}

fn open_history() -> anyhow::Result<Arc<History>> {
    let history = History::open_default().context("cannot open the history database")?;
    Ok(Arc::new(history))
}

/// Refuses an output path that does not end in `.png`.
fn ensure_png(output: &Path) -> anyhow::Result<()> {
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    anyhow::ensure!(
        ext.as_deref() == Some("png"),
        "the output {} must end in .png",
        output.display()
    );
    Ok(())
}

/// With `--queue URLS`, makes `engine` run its jobs on that fleet; the
/// connection lives as long as the returned handle.
fn use_fleet(
    engine: &orfeas_core::jobs::Engine,
    queue: Option<&str>,
) -> anyhow::Result<Option<std::sync::Arc<orfeas_core::fleet::Fleet>>> {
    use orfeas_core::fleet::{Fleet, FleetConfig};
    let Some(urls) = queue else {
        return Ok(None);
    };
    let fleet = Fleet::connect(FleetConfig::client(urls, "cli")?)?;
    orfeas_core::fleet::relay::register_relay(engine, &fleet);
    Ok(Some(fleet))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
