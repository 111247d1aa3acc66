//! `orfeas serve`: the HTTP API, `/metrics` and `/health` over the job engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use orfeas_core::fleet::worker::WorkerConfig;
use orfeas_core::fleet::{Capability, Fleet, FleetConfig};
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
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Queue mode: share jobs with other nodes through NATS JetStream.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Run jobs on the fleet: NATS server URLs, e.g. nats://10.0.0.5:4222,nats://10.0.0.6:4222.
    /// Submissions go to the shared queue; this node also works jobs off it (see --no-work).
    #[arg(long, env = "ORFEAS_QUEUE", value_name = "URLS")]
    pub queue: Option<String>,
    /// Only accept and report jobs; run none here (a front node).
    #[arg(long, requires = "queue")]
    pub no_work: bool,
    /// This node's name in job records and logs (default: host name and process id).
    #[arg(long, requires = "queue")]
    pub node_name: Option<String>,
    /// Copies JetStream keeps of the queue and the job records (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1, requires = "queue")]
    pub replicas: usize,
    /// Jobs the fleet queue holds before submissions get 503 + Retry-After.
    #[arg(long, default_value_t = 10_000, requires = "queue")]
    pub fleet_queue_limit: i64,
    /// Seconds a worker may go silent before its job is given to another worker.
    #[arg(long, default_value_t = 30.0, requires = "queue")]
    pub ack_wait_secs: f64,
    /// Deliveries of one job before the queue gives up on it.
    #[arg(long, default_value_t = 5, requires = "queue")]
    pub max_deliver: i64,
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
    let fleet = match &args.fleet.queue {
        Some(urls) => Some(connect_fleet(&args.fleet, urls)?),
        None => None,
    };
    // In queue mode the fleet's records are the history; this node's engine
    // only runs the jobs its worker takes.
    let history = match fleet {
        Some(_) => None,
        None => Some(Arc::new(
            History::open(&data_dir.join(orfeas_core::telemetry::HISTORY_DB_FILE))
                .context("cannot open the history database")?,
        )),
    };
    let engine = Engine::new(
        EngineConfig {
            concurrency: args.concurrency,
            queue_capacity: args.queue_limit.max(1),
            ..EngineConfig::default()
        },
        history,
    )?;
    let kinds =
        orfeas_ml::register_runners(&engine, orfeas_ml::models::SearchRoots::from_env(), None);
    tracing::info!(?kinds, "job runners registered");
    engine.add_observer(Arc::new(telemetry.clone()));
    let worker = match &fleet {
        Some(fleet) => {
            fleet
                .metrics()
                .register(telemetry.metrics().registry())
                .context("cannot register the fleet metrics")?;
            if args.fleet.no_work {
                None
            } else {
                Some(start_worker(fleet, &engine, args.concurrency, &data_dir)?)
            }
        }
        None => None,
    };
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
        requeue_on_start: !args.no_requeue && fleet.is_none(),
        drain_timeout: Duration::from_secs(args.drain_secs),
        cors_origin: args.cors_origin.clone(),
        data_dir: Some(data_dir),
        fleet: fleet.clone(),
        ..ServeConfig::default()
    };
    eprintln!(
        "ORFEAS Studio serving on http://{} (/health, /metrics, /api/*); Ctrl-C stops",
        args.bind
    );
    match worker {
        None => orfeas_core::http::run_server(config, telemetry, engine)?,
        Some(worker) => {
            // As run_server, with the worker stopped first: no new fleet job
            // starts while running ones get the drain time (unfinished ones go
            // back to the queue for another worker).
            let drain = config.drain_timeout;
            let handle = orfeas_core::http::start(config, telemetry, engine.clone())?;
            orfeas_core::http::wait_for_signal()?;
            worker.stop(Duration::from_secs(2));
            handle.shutdown(drain);
            let report = engine.shutdown(drain);
            tracing::info!(
                cancelled = report.cancelled,
                "stopped; unfinished fleet jobs go to other workers"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn connect_fleet(args: &FleetArgs, urls: &str) -> anyhow::Result<Arc<Fleet>> {
    anyhow::ensure!(
        args.ack_wait_secs.is_finite() && args.ack_wait_secs >= 1.0,
        "--ack-wait-secs must be at least 1"
    );
    anyhow::ensure!(args.max_deliver >= 1, "--max-deliver must be at least 1");
    anyhow::ensure!(
        (1..=5).contains(&args.replicas),
        "--replicas must be between 1 and 5"
    );
    let config = FleetConfig {
        urls: orfeas_core::fleet::parse_urls(urls)?,
        node_name: args
            .node_name
            .clone()
            .unwrap_or_else(orfeas_core::fleet::default_node_name),
        replicas: args.replicas,
        max_queued: args.fleet_queue_limit.max(1),
        ack_wait: Duration::from_secs_f64(args.ack_wait_secs),
        max_deliver: args.max_deliver,
        ..FleetConfig::default()
    };
    let fleet = Fleet::connect(config)?;
    eprintln!(
        "fleet node {} on {}",
        fleet.config().node_name,
        fleet.config().urls.join(",")
    );
    Ok(fleet)
}

/// Starts pulling the jobs this node's runners can run.
fn start_worker(
    fleet: &Arc<Fleet>,
    engine: &Engine,
    concurrency: usize,
    data_dir: &std::path::Path,
) -> anyhow::Result<orfeas_core::fleet::worker::WorkerHandle> {
    let capabilities = capabilities(engine);
    eprintln!(
        "fleet worker runs: {}",
        capabilities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let handle = orfeas_core::fleet::worker::start(
        Arc::clone(fleet),
        engine.clone(),
        WorkerConfig {
            capabilities,
            concurrency,
            scratch_dir: data_dir.join("fleet-jobs"),
        },
    )?;
    Ok(handle)
}

/// Every (kind, method or model) this node's runners admit right now: the
/// built-in methods always, learned ones when their weights are installed.
pub(crate) fn capabilities(engine: &Engine) -> Vec<Capability> {
    use orfeas_core::jobs::{JobKind, JobSpec};
    use orfeas_core::request::{
        ImageTo3dMethod, ImageTo3dRequest, TextToImageJob, TextToImageRequest,
    };
    let mut out = Vec::new();
    for method in ImageTo3dMethod::ALL {
        let mut request = ImageTo3dRequest::new(
            "probe.png".into(),
            "probe.glb".into(),
            orfeas_core::export::ExportFormat::Glb,
        );
        request.method = method;
        if engine.admit(&JobSpec::from(request)).is_ok() {
            out.push(Capability::new(JobKind::ImageTo3d, method.as_str()));
        }
    }
    for model in orfeas_ml::models::KNOWN_MODELS {
        let mut request = TextToImageRequest::new("probe");
        request.model = model.name.to_owned();
        let job = TextToImageJob {
            request,
            output: "probe.png".into(),
        };
        if engine.admit(&JobSpec::from(job)).is_ok() {
            out.push(Capability::new(JobKind::TextToImage, model.name));
        }
    }
    out
}
