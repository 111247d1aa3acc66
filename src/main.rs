//! `orfeas`: the ORFEAS Studio desktop app (GUI by default) and its command line.

use std::process::ExitCode;

use clap::Parser as _;

/// Large blocks on transparent huge pages (`orfeas_ml::memory`).
#[global_allocator]
static HEAP: orfeas_ml::memory::HugePageHeap = orfeas_ml::memory::HugePageHeap;

fn main() -> ExitCode {
    orfeas_ml::memory::keep_freed_memory();
    orfeas_ml::memory::huge_pages_from_env();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORFEAS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = orfeas::cli::Cli::parse();
    match orfeas::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
