//! `orfeas batch image-to-3d DIR --queue nats://… -o OUTDIR`: every picture
//! of a folder as a fleet job at batch priority, one progress bar for all,
//! each mesh written into OUTDIR as it finishes.
//!
//! Resumable: the job id of each picture is kept in `OUTDIR/.orfeas-batch.json`
//! (rewritten atomically after every submission). Jobs live on in the fleet
//! after Ctrl-C; the same command again collects them, submits only what has
//! no job yet (or whose job failed) and skips pictures whose mesh is there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use orfeas_core::export::ExportFormat;
use orfeas_core::fleet::{Fleet, FleetConfig, FleetError, Priority};
use orfeas_core::image_to_3d::ImageTo3dParams;
use orfeas_core::jobs::{JobId, JobSpec, JobState};
use orfeas_core::request::{ImageTo3dMethod, ImageTo3dRequest};
use serde::{Deserialize, Serialize};

use super::absolute;
use super::image_to_3d::{BackgroundArg, FormatArg, Method, QualityArg};

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Every picture (PNG, JPEG, WebP) of a folder to a mesh, on the fleet.
    #[command(name = "image-to-3d")]
    ImageTo3d(BatchImageTo3dArgs),
}

#[derive(Debug, Args)]
pub struct BatchImageTo3dArgs {
    /// The folder of pictures (not its subfolders).
    pub dir: PathBuf,
    /// Where the meshes go (created if missing), one per picture, named after it.
    #[arg(short, long, value_name = "OUTDIR")]
    pub output: PathBuf,
    /// The fleet's NATS server URLs, e.g. nats://10.0.0.5:4222 (workers: `orfeas serve --queue`).
    #[arg(long, env = "ORFEAS_QUEUE", value_name = "URLS")]
    pub queue: String,
    #[arg(long, value_enum, default_value = "glb")]
    pub format: FormatArg,
    /// Reconstruction method (the fleet needs a worker that has it).
    #[arg(long, value_enum, default_value = "inflate")]
    pub method: Method,
    /// Where the foreground comes from.
    #[arg(long, value_enum, default_value = "auto")]
    pub background: BackgroundArg,
    /// Mesh resolution preset.
    #[arg(long, value_enum, default_value = "standard")]
    pub quality: QualityArg,
}

/// The resume file in OUTDIR.
pub const MANIFEST: &str = ".orfeas-batch.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    /// Picture file name → its fleet job.
    jobs: BTreeMap<String, i64>,
}

fn load_manifest(path: &Path) -> anyhow::Result<Manifest> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is unreadable; delete it to start the batch afresh (finished meshes are kept)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_manifest(path: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(manifest)?;
    orfeas_core::paths::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

/// The pictures of `dir`, sorted by name; at least one.
fn pictures(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = orfeas_core::image_input::pictures_in(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    anyhow::ensure!(
        !out.is_empty(),
        "{} holds no pictures (PNG, JPEG or WebP)",
        dir.display()
    );
    Ok(out)
}

/// One picture's place in the batch.
struct Item {
    name: String,
    input: PathBuf,
    output: PathBuf,
    job: Option<JobId>,
    state: ItemState,
}

#[derive(Clone, Debug, PartialEq)]
enum ItemState {
    Waiting,
    Running,
    Done,
    Failed(String),
}

pub(super) fn batch(command: BatchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BatchCommand::ImageTo3d(args) => image_to_3d(&args),
    }
}

fn image_to_3d(args: &BatchImageTo3dArgs) -> anyhow::Result<ExitCode> {
    let dir = absolute(&args.dir);
    let out_dir = absolute(&args.output);
    let pictures = pictures(&dir)?;
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let manifest_path = out_dir.join(MANIFEST);
    let mut manifest = load_manifest(&manifest_path)?;
    let format = ExportFormat::from(args.format);
    let params = ImageTo3dParams {
        background: args.background.into(),
        quality: args.quality.into(),
        ..ImageTo3dParams::default()
    };
    let method = match args.method {
        Method::Inflate => ImageTo3dMethod::Inflate,
        Method::Triposr => ImageTo3dMethod::TripoSr,
    };

    let fleet = Fleet::connect(FleetConfig::client(&args.queue, "batch")?)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Jobs already queued stay in the fleet: stopping here loses nothing.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }

    let mut items: Vec<Item> = pictures
        .iter()
        .map(|input| {
            let name = input
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = input
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone());
            let output = out_dir.join(format!("{stem}.{}", format.extension()));
            let job = manifest.jobs.get(&name).copied().map(JobId);
            let state = if output.is_file() {
                ItemState::Done
            } else {
                ItemState::Waiting
            };
            Item {
                name,
                input: input.clone(),
                output,
                job,
                state,
            }
        })
        .collect();
    let already = items.iter().filter(|i| i.state == ItemState::Done).count();
    let mut resumed = 0;
    let mut submitted = 0;

    // Jobs from an earlier run: collect them unless they failed.
    for item in items.iter_mut().filter(|i| i.state != ItemState::Done) {
        let Some(id) = item.job else { continue };
        match fleet.record(id)? {
            Some(r) if !matches!(r.state, JobState::Failed | JobState::Cancelled) => {
                item.state = ItemState::Running;
                resumed += 1;
            }
            _ => item.job = None,
        }
    }
    eprintln!(
        "{} pictures in {}: {already} already done, {resumed} resumed from an earlier run",
        items.len(),
        dir.display()
    );

    let mut bar = Bar::new(items.len());
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    loop {
        if stop.load(Ordering::SeqCst) {
            save_manifest(&manifest_path, &manifest)?;
            bar.finish();
            let open = items
                .iter()
                .filter(|i| i.state == ItemState::Running)
                .count();
            eprintln!(
                "stopped; {open} jobs go on in the fleet. Run the same command again to collect them."
            );
            return Ok(ExitCode::from(130));
        }
        // Submit what has no job, stopping while the queue is full.
        for item in items
            .iter_mut()
            .filter(|i| i.state == ItemState::Waiting && i.job.is_none())
        {
            let request = ImageTo3dRequest {
                method,
                params: params.clone(),
                ..ImageTo3dRequest::new(item.input.clone(), item.output.clone(), format)
            };
            if let Err(e) = request.check() {
                item.state = ItemState::Failed(e.to_string());
                continue;
            }
            match fleet.submit(&JobSpec::from(request), Priority::Batch) {
                Ok(id) => {
                    item.job = Some(id);
                    item.state = ItemState::Running;
                    manifest.jobs.insert(item.name.clone(), id.0);
                    save_manifest(&manifest_path, &manifest)?;
                    submitted += 1;
                }
                Err(FleetError::QueueFull { .. }) => break,
                Err(FleetError::Input { path, reason }) => {
                    item.state = ItemState::Failed(format!("cannot read {path}: {reason}"));
                }
                Err(e) => return Err(e.into()),
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        if last_poll.elapsed() >= Duration::from_millis(500) {
            last_poll = Instant::now();
            for item in items.iter_mut().filter(|i| i.state == ItemState::Running) {
                let Some(id) = item.job else { continue };
                let Some(record) = fleet.record(id)? else {
                    // Gone from the fleet (its records were removed): submit again.
                    item.job = None;
                    item.state = ItemState::Waiting;
                    continue;
                };
                match record.state {
                    JobState::Succeeded => {
                        collect(&fleet, id, &record.files, &item.output)?;
                        item.state = ItemState::Done;
                    }
                    JobState::Failed | JobState::Cancelled => {
                        let why = record
                            .error
                            .map_or_else(|| record.state.to_string(), |e| e.message);
                        bar.note(&format!("{}: {why}", item.name));
                        item.state = ItemState::Failed(why);
                    }
                    _ => {}
                }
            }
        }
        let count = |s: fn(&ItemState) -> bool| items.iter().filter(|i| s(&i.state)).count();
        let done = count(|s| *s == ItemState::Done);
        let failed = count(|s| matches!(s, ItemState::Failed(_)));
        bar.draw(done, failed, count(|s| *s == ItemState::Running));
        if done + failed == items.len() {
            bar.finish();
            eprintln!(
                "{done} meshes in {} ({submitted} submitted now, {resumed} resumed, {already} already there), {failed} failed",
                out_dir.display()
            );
            if failed > 0 {
                for item in &items {
                    if let ItemState::Failed(why) = &item.state {
                        eprintln!("  {}: {why}", item.name);
                    }
                }
                eprintln!("Run the same command again to retry the failed pictures.");
                return Ok(ExitCode::FAILURE);
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the job's result into `output` (atomically); files beside the mesh
/// (an OBJ's material) keep their names.
fn collect(fleet: &Fleet, id: JobId, files: &[String], output: &Path) -> anyhow::Result<()> {
    let written = fleet.save_results(id, files, output)?;
    anyhow::ensure!(!written.is_empty(), "job {id} finished without a file");
    Ok(())
}

/// One progress line for the whole batch on stderr (plain lines when it is not a terminal).
struct Bar {
    total: usize,
    tty: bool,
    last: (usize, usize, usize),
}

impl Bar {
    fn new(total: usize) -> Bar {
        use std::io::IsTerminal as _;
        Bar {
            total,
            tty: std::io::stderr().is_terminal(),
            last: (usize::MAX, 0, 0),
        }
    }

    fn draw(&mut self, done: usize, failed: usize, running: usize) {
        if self.last == (done, failed, running) {
            return;
        }
        self.last = (done, failed, running);
        const WIDTH: usize = 30;
        let filled = (done + failed) * WIDTH / self.total.max(1);
        let line = format!(
            "[{}{}] {}/{} done, {failed} failed, {running} in the fleet",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            done,
            self.total
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn note(&mut self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
        self.last = (usize::MAX, 0, 0);
    }

    fn finish(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}
