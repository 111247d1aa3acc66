//! `orfeas serve`: the HTTP API, `/metrics` and `/health` over the job engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use orfeas_core::history::History;
use orfeas_core::jobs::{Engine, EngineConfig};

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

pub(super) fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
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
