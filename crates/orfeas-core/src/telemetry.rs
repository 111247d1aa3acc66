//! Live monitoring: the metrics registry (the contract), the system sampler,
//! the dashboard's time series and the alert engine. Everything reads from ONE
//! `prometheus` registry, so `/metrics`, the Metrics tab and the alerts agree.
//!
//! `Telemetry::start` is the one call the app makes; the returned handle is
//! cheap to clone and is what the HTTP server, the job observer and the UI hold.

pub mod alerts;
pub mod derive;
pub mod metrics;
mod observer;
pub mod panels;
pub mod sampler;
pub mod store;

use std::path::PathBuf;
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub use alerts::{
    AlertEngine, AlertRule, AlertState, AlertStatus, Severity, Transition, ValueUnit,
};
pub use derive::{Deriver, FlatSample};
pub use metrics::{GenerationKind, Metrics, MetricsError, Outcome};
pub use panels::{Panel, PanelKind, Row, Unit};
pub use store::{SeriesStore, TimeRange};

/// How telemetry runs.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// Sampling and dashboard/alert evaluation period.
    pub sample_interval: Duration,
    /// Run the sampler thread (system metrics, time series, alerts). Off:
    /// only the registry, for `/metrics` (uptime is still current there).
    pub sampling: bool,
    /// The data directory: its disk is watched, and with `history` the
    /// downsampled series go into its `history.sqlite3`.
    pub data_dir: Option<PathBuf>,
    /// Keep downsampled series (1 min, 10 min) for 30 days in SQLite.
    pub history: bool,
    /// Alertmanager base URL (`http://host:9093`) to POST alerts to.
    pub alertmanager_url: Option<String>,
    /// The `instance` label the in-app alerts carry.
    pub instance: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            sample_interval: Duration::from_secs(1),
            sampling: true,
            data_dir: None,
            history: true,
            alertmanager_url: None,
            instance: "localhost".to_owned(),
        }
    }
}

/// The file the job history and the downsampled metrics share.
pub const HISTORY_DB_FILE: &str = "history.sqlite3";

/// Errors starting telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot start the telemetry thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct Live {
    deriver: Deriver,
    engine: AlertEngine,
    store: SeriesStore,
    notifier: Option<alerts::Notifier>,
}

struct Inner {
    metrics: Metrics,
    panels: Vec<Panel>,
    started: Instant,
    live: Mutex<Live>,
    gpu_note: Mutex<Option<String>>,
    /// The last `/metrics` body and when its encoding began (see [`Telemetry::scrape`]).
    last_scrape: Mutex<Option<(Instant, Arc<Vec<u8>>)>>,
    instance: String,
    // Dropping the sender (with the last handle) stops the sampler thread.
    _stop: Mutex<Option<SyncSender<()>>>,
}

/// The telemetry handle. Clones share one registry.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

/// Seconds since the Unix epoch, as alerts and series timestamps use.
pub fn unix_now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Telemetry {
    /// Creates the registry and, when `config.sampling`, starts the named
    /// sampler thread (`orfeas-telemetry`).
    pub fn start(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let metrics = Metrics::new()?;
        let panels = panels::panels();
        let rules = alerts::rules();
        let series = panels::all_series(&panels);
        let exprs = series
            .iter()
            .map(|s| &s.expr)
            .chain(rules.iter().map(|r| &r.expr));
        let deriver = Deriver::new(exprs);
        let ids = series.iter().map(|s| s.id.clone()).collect();
        let db_path = match (&config.data_dir, config.history && config.sampling) {
            (Some(dir), true) => {
                if let Err(err) = std::fs::create_dir_all(dir) {
                    tracing::warn!("cannot create data dir {}: {err}", dir.display());
                }
                Some(dir.join(HISTORY_DB_FILE))
            }
            _ => None,
        };
        let store = SeriesStore::new(ids, db_path.as_deref())?;
        let notifier = match &config.alertmanager_url {
            Some(url) if config.sampling => Some(
                alerts::Notifier::start(url, &config.instance).map_err(TelemetryError::Thread)?,
            ),
            _ => None,
        };
        let telemetry = Telemetry {
            inner: Arc::new(Inner {
                metrics,
                panels,
                started: Instant::now(),
                live: Mutex::new(Live {
                    deriver,
                    engine: AlertEngine::new(rules),
                    store,
                    notifier,
                }),
                gpu_note: Mutex::new(None),
                last_scrape: Mutex::new(None),
                instance: config.instance.clone(),
                _stop: Mutex::new(None),
            }),
        };
        if config.sampling {
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            *telemetry.inner._stop.lock() = Some(tx);
            let weak = Arc::downgrade(&telemetry.inner);
            let interval = config.sample_interval.max(Duration::from_millis(10));
            let data_dir = config.data_dir.clone();
            let started = telemetry.inner.started;
            std::thread::Builder::new()
                .name("orfeas-telemetry".into())
                .spawn(move || {
                    let mut sampler = sampler::SystemSampler::new(data_dir, started);
                    if let Some(inner) = weak.upgrade() {
                        *inner.gpu_note.lock() = sampler.gpu_note().map(str::to_owned);
                    }
                    run_sampler(&weak, &mut sampler, &rx, interval);
                })
                .map_err(TelemetryError::Thread)?;
        }
        Ok(telemetry)
    }

    /// A registry without a sampler thread (tests, `sampling: false`).
    pub fn without_sampler() -> Result<Telemetry, TelemetryError> {
        Telemetry::start(TelemetryConfig {
            sampling: false,
            history: false,
            ..TelemetryConfig::default()
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `/metrics` text (format 0.0.4, final newline).
    pub fn encode(&self) -> String {
        let m = &self.inner.metrics;
        m.app_uptime_seconds
            .set(self.inner.started.elapsed().as_secs_f64());
        m.encode()
    }

    /// The `/metrics` body. Scrapes that arrive while another is encoding
    /// wait for it and then share the next encoding, whose values were all
    /// read after they arrived; no scrape ever gets values from before its
    /// own arrival. Under concurrent scrapers this encodes once per batch.
    pub fn scrape(&self) -> Arc<Vec<u8>> {
        self.scrape_arrived(Instant::now())
    }

    /// [`Telemetry::scrape`] for a request that arrived at `arrived` (and may
    /// have waited since): an encode begun after that serves it.
    pub fn scrape_arrived(&self, arrived: Instant) -> Arc<Vec<u8>> {
        let mut last = self.inner.last_scrape.lock();
        if let Some((began, body)) = last.as_ref()
            && *began >= arrived
        {
            return Arc::clone(body);
        }
        let began = Instant::now();
        let body = Arc::new(self.encode().into_bytes());
        *last = Some((began, Arc::clone(&body)));
        body
    }

    /// One sampling step without the system sampler: snapshot the registry,
    /// derive the series, evaluate alerts. The sampler thread calls this each
    /// tick; tests call it directly.
    pub fn tick(&self, now_unix_secs: f64) {
        tick(&self.inner, now_unix_secs);
    }

    // ---- events -------------------------------------------------------

    /// See [`Metrics::record_generation`].
    pub fn record_generation(
        &self,
        kind: GenerationKind,
        format_or_style: &str,
        quality: &str,
        outcome: Outcome<'_>,
    ) {
        self.inner
            .metrics
            .record_generation(kind, format_or_style, quality, outcome);
    }

    pub fn job_started(&self) {
        self.inner.metrics.job_started();
    }

    pub fn job_finished(&self) {
        self.inner.metrics.job_finished();
    }

    // ---- dashboard data -----------------------------------------------

    /// The dashboard definition (rows, panels, series ids).
    pub fn panels(&self) -> &[Panel] {
        &self.inner.panels
    }

    /// `[unix_secs, value]` points of an in-app series (see `Panel::series`),
    /// oldest first, at most [`store::MAX_POINTS`].
    pub fn series(&self, id: &str, range: TimeRange) -> Vec<[f64; 2]> {
        self.inner
            .live
            .lock()
            .store
            .series(id, range, unix_now_secs())
    }

    /// The newest value of a series (stat panels).
    pub fn latest(&self, id: &str) -> Option<f64> {
        self.inner.live.lock().store.latest(id)
    }

    /// Why there are no GPU series, when there are none.
    pub fn gpu_note(&self) -> Option<String> {
        self.inner.gpu_note.lock().clone()
    }

    // ---- alerts ---------------------------------------------------------

    pub fn alerts(&self) -> Vec<AlertStatus> {
        self.inner.live.lock().engine.status().to_vec()
    }

    /// Alert transitions, newest first.
    pub fn alert_history(&self) -> Vec<Transition> {
        self.inner
            .live
            .lock()
            .engine
            .history()
            .rev()
            .cloned()
            .collect()
    }

    pub fn firing_count(&self) -> usize {
        self.inner.live.lock().engine.firing().count()
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }
}

fn run_sampler(
    weak: &Weak<Inner>,
    sampler: &mut sampler::SystemSampler,
    stop: &std::sync::mpsc::Receiver<()>,
    interval: Duration,
) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        sampler.sample(&inner.metrics);
        tick(&inner, unix_now_secs());
        drop(inner);
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn tick(inner: &Inner, now: f64) {
    let mut samples = derive::flatten(&inner.metrics.registry().gather());
    // The app is up by definition when it samples itself (`up` is what
    // Prometheus adds to every scrape).
    samples.push(FlatSample {
        name: "up".to_owned(),
        labels: Vec::new(),
        value: 1.0,
    });
    let mut live = inner.live.lock();
    let live = &mut *live;
    live.deriver.push(now, &samples);
    let values: Vec<f64> = inner
        .panels
        .iter()
        .flat_map(|p| p.series.iter())
        .map(|s| live.deriver.eval(&s.expr).unwrap_or(f64::NAN))
        .collect();
    live.store.push(now, values);
    let changes = live.engine.evaluate(&live.deriver, now);
    for t in &changes {
        tracing::info!(
            alert = t.name,
            from = t.from.as_str(),
            to = t.to.as_str(),
            "alert state changed"
        );
        if let Some(n) = live.notifier.as_ref() {
            let (summary, description) = live
                .engine
                .status()
                .iter()
                .find(|s| s.name == t.name)
                .map(|s| (s.summary, s.description.clone()))
                .unwrap_or_default();
            n.send(t, summary, &description);
        }
    }
}
