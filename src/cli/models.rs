//! `orfeas models`: list, verify and download the registry's weights.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::ProgressBar;

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

pub(super) fn models(command: ModelsCommand) -> anyhow::Result<ExitCode> {
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
