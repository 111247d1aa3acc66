//! `orfeas history`: the most recent jobs.

use std::process::ExitCode;

use clap::Args;

use super::open_history;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// How many jobs to list, newest first.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
}

pub(super) fn history(args: &HistoryArgs) -> anyhow::Result<ExitCode> {
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
