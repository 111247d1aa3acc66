//! A headless API server with stand-in runners, for the process-level tests
//! (kill -9, SIGTERM drain) and `scripts/load.sh`. The runners write a 256 KiB
//! patterned file slowly, so a kill lands in the middle of a write.
//!
//! usage: orfeas-api-fixture --data-dir DIR [--bind ADDR] [--runner-ms N]
//!        [--token T] [--no-rate-limit] [--queue-limit N] [--no-requeue] [--drain-secs N]
//!        [--output-bytes N]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use orfeas_core::history::History;
use orfeas_core::http::{self, ServeConfig};
use orfeas_core::jobs::{
    Engine, EngineConfig, JobContext, JobFailure, JobKind, JobOutput, JobSpec,
};
use orfeas_core::telemetry::{Telemetry, TelemetryConfig};

/// Size of every output file the stand-in runners write (by default).
const OUTPUT_BYTES: usize = 256 * 1024;
const CHUNKS: usize = 16;

fn main() -> anyhow::Result<()> {
    let mut config = ServeConfig {
        requeue_on_start: true,
        ..ServeConfig::default()
    };
    let mut runner_ms = 200u64;
    let mut output_bytes = OUTPUT_BYTES;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--data-dir" => config.data_dir = Some(PathBuf::from(value()?)),
            "--bind" => config.bind = value()?,
            "--runner-ms" => runner_ms = value()?.parse()?,
            "--token" => config.token = Some(value()?),
            "--no-rate-limit" => config.rate_limit = None,
            "--queue-limit" => config.queue_limit = value()?.parse()?,
            "--no-requeue" => config.requeue_on_start = false,
            "--output-bytes" => output_bytes = value()?.parse()?,
            "--drain-secs" => config.drain_timeout = Duration::from_secs(value()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    let data_dir = config.data_dir.clone().context("--data-dir is required")?;
    let history = Arc::new(History::open(&data_dir.join("history.sqlite3"))?);
    let engine = Engine::new(
        EngineConfig {
            queue_capacity: 100_000,
            ..EngineConfig::default()
        },
        Some(history),
    )?;
    let runner = Arc::new(move |spec: &JobSpec, ctx: &JobContext| {
        slow_write(spec, ctx, runner_ms, output_bytes)
    });
    engine.register(JobKind::ImageTo3d, runner.clone());
    engine.register(JobKind::TextToImage, runner);
    let telemetry = Telemetry::start(TelemetryConfig {
        sampling: false,
        history: false,
        ..TelemetryConfig::default()
    })?;
    http::run_server(config, telemetry, engine)?;
    Ok(())
}

/// Writes `params.output` atomically, one chunk every `total_ms / CHUNKS`.
fn slow_write(
    spec: &JobSpec,
    ctx: &JobContext,
    total_ms: u64,
    output_bytes: usize,
) -> Result<JobOutput, JobFailure> {
    let output = spec.request.output().to_path_buf();
    let pause = Duration::from_millis(total_ms / CHUNKS as u64);
    let chunk: Vec<u8> = (0..output_bytes / CHUNKS)
        .map(|i| (i % 251) as u8)
        .collect();
    orfeas_core::paths::write_atomic(&output, |w| {
        for i in 0..CHUNKS {
            if ctx.is_cancelled() {
                return Err(std::io::Error::other("cancelled"));
            }
            w.write_all(&chunk)?;
            // Push the bytes to the temporary file, so a kill leaves it behind.
            w.flush()?;
            ctx.progress("write", (i + 1) as f32 / CHUNKS as f32, "writing");
            std::thread::sleep(pause);
        }
        Ok(())
    })
    .map_err(|e| {
        if ctx.is_cancelled() {
            JobFailure::cancelled()
        } else {
            JobFailure::new("io", e.to_string())
        }
    })?;
    Ok(JobOutput {
        files: vec![output],
        quality: Some(0.5),
        summary: serde_json::json!({ "bytes": chunk.len() * CHUNKS }),
    })
}
