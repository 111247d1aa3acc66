//! The fleet: many `orfeas serve` nodes sharing one job queue on NATS JetStream.
//!
//! A front node (any node started with `--queue`) turns an accepted request
//! into a [`FleetJob`] message on the work-queue stream [`JOBS_STREAM`], one
//! subject per priority, job kind and method ([`subject`]), after storing its
//! input in the file stream [`FILES_STREAM`] ([`files`]) and the job's record
//! ([`FleetRecord`]) in the key-value bucket [`JOBS_BUCKET`]. Workers pull
//! from durable consumers that filter the subjects they can run
//! ([`worker`]), so a worker without a model never sees its jobs. The record
//! and the result files live in JetStream, so `GET /api/jobs/{id}` and its
//! result work from every node with no shared disk.
//!
//! Delivery is at least once: a worker acks a job only after its result is
//! stored and its record is final, and keeps a long job's message with
//! in-progress acks. A job whose worker dies is delivered again after
//! `ack_wait`; the record's compare-and-set update lets only one delivery
//! finish it, and results are written once under the job id, so a
//! redelivered job never yields two results or two history entries.

pub mod files;
pub mod relay;
pub mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use prometheus::{CounterVec, Gauge, GaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::jobs::{JobId, JobKind, JobRequest, JobSpec, JobState, StageTiming};

/// The work-queue stream holding every queued job.
pub const JOBS_STREAM: &str = "ORFEAS_JOBS";
/// Messages no worker could read, kept for an operator to inspect.
pub const DEAD_STREAM: &str = "ORFEAS_DEAD";
/// Job records ([`FleetRecord`] as JSON), keyed by job id.
pub const JOBS_BUCKET: &str = "orfeas_jobs";
pub use files::{FILES_STREAM, FileStore};
/// How long a JetStream API request may take before it counts as failed.
const JS_TIMEOUT: Duration = Duration::from_secs(15);
/// Subject prefix of dead letters (`orfeas.dead.{reason}`).
pub const DEAD_PREFIX: &str = "orfeas.dead";

/// Which queue a job waits in. Workers take interactive jobs first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A person waits for it (the GUI, one API call).
    #[default]
    Interactive,
    /// A folder submitted as a batch.
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }

    /// The first subject token: `orfeas.jobs.…` or `orfeas.batch.…`.
    fn subject_root(self) -> &'static str {
        match self {
            Priority::Interactive => "orfeas.jobs",
            Priority::Batch => "orfeas.batch",
        }
    }
}

/// What a worker can run: a job kind and its method (image→3D) or model (text→image).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability {
    pub kind: JobKind,
    /// `inflate`, `triposr`, or a model's registry name.
    pub method: String,
}

impl Capability {
    pub fn new(kind: JobKind, method: &str) -> Capability {
        Capability {
            kind,
            method: subject_token(method),
        }
    }

    /// The capability a job needs.
    pub fn of(spec: &JobSpec) -> Capability {
        match &spec.request {
            JobRequest::ImageTo3d(r) => Capability::new(JobKind::ImageTo3d, r.method.as_str()),
            JobRequest::TextToImage(j) => Capability::new(JobKind::TextToImage, &j.request.model),
        }
    }

    fn kind_token(&self) -> &'static str {
        match self.kind {
            JobKind::ImageTo3d => "image-to-3d",
            JobKind::TextToImage => "text-to-image",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind_token(), self.method)
    }
}

/// A name made safe for one subject token (and a consumer name): lower-case
/// letters, digits, `-` and `_`; anything else becomes `_`.
fn subject_token(name: &str) -> String {
    let token: String = name
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// The subject jobs of `capability` wait on at `priority`, e.g.
/// `orfeas.jobs.image-to-3d.triposr` or `orfeas.batch.text-to-image.sd-turbo`.
pub fn subject(priority: Priority, capability: &Capability) -> String {
    format!("{}.{capability}", priority.subject_root())
}

/// The durable consumer every worker able to run `capability` shares.
pub fn consumer_name(priority: Priority, capability: &Capability) -> String {
    format!(
        "orfeas-{}-{}-{}",
        priority.as_str(),
        capability.kind_token(),
        capability.method
    )
}

/// Settings of a fleet node.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// `nats://host:port` of one or more cluster nodes.
    pub urls: Vec<String>,
    /// This node's name in records, logs and the `worker` label.
    pub node_name: String,
    /// Copies JetStream keeps of the stream, bucket and store (3 on a 3-node cluster).
    pub replicas: usize,
    /// Queued jobs beyond which a submission is refused (503 + Retry-After).
    pub max_queued: i64,
    /// A delivered job not acked (or marked in progress) within this is delivered again.
    pub ack_wait: Duration,
    /// Deliveries of one job before JetStream gives up on it.
    pub max_deliver: i64,
    /// How long the first connection may take before the node gives up.
    pub connect_timeout: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            node_name: default_node_name(),
            replicas: 1,
            max_queued: 10_000,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl FleetConfig {
    /// A node that only submits and follows jobs (the studio, the CLI):
    /// the fleet at `urls`, named `{role}-{host}-{pid}`.
    pub fn client(urls: &str, role: &str) -> Result<FleetConfig, FleetError> {
        Ok(FleetConfig {
            urls: parse_urls(urls)?,
            node_name: format!("{role}-{}", default_node_name()),
            ..FleetConfig::default()
        })
    }
}

/// `host-pid`, unique among the nodes of one machine.
pub fn default_node_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "orfeas".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Parses `--queue`: comma-separated `nats://host:port` URLs.
pub fn parse_urls(list: &str) -> Result<Vec<String>, FleetError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(FleetError::BadUrl {
            url: list.to_owned(),
        });
    }
    for url in &urls {
        let rest = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("tls://"));
        let ok = rest.is_some_and(|r| {
            r.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
        if !ok {
            return Err(FleetError::BadUrl { url: url.clone() });
        }
    }
    Ok(urls)
}

/// What can go wrong talking to the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("'{url}' is not a NATS URL; write nats://HOST:PORT (several separated by commas)")]
    BadUrl { url: String },
    #[error(
        "cannot reach the NATS server at {urls}: {reason}; check the address and that \
         nats-server runs with JetStream (-js), or start without --queue to run jobs on this machine"
    )]
    Unreachable { urls: String, reason: String },
    #[error(
        "the NATS server at {urls} answers but JetStream is not ready ({reason}); start \
         nats-server with -js (in a cluster, every node with JetStream and a quorum up)"
    )]
    NoJetStream { urls: String, reason: String },
    #[error("the fleet queue is full ({max} jobs waiting); retry later")]
    QueueFull { max: i64 },
    #[error("the fleet queue is unavailable: {0}; retry shortly")]
    Unavailable(String),
    #[error("this job cannot be sent to the fleet: {0}")]
    NotShippable(String),
    #[error("cannot read the job's input {path}: {reason}")]
    Input { path: String, reason: String },
    #[error("cannot save the result {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("the job record of {id} is unreadable: {reason}")]
    BadRecord { id: i64, reason: String },
}

/// The message a worker receives.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetJob {
    pub id: JobId,
    pub priority: Priority,
    /// Paths in it are the front node's; the worker puts the input (from
    /// `input/{id}` in the files bucket) and the outputs in a folder of its own.
    pub spec: JobSpec,
}

/// One delivery of a job to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub worker: String,
    /// JetStream's delivery count (1 = first delivery).
    pub delivery: u64,
    pub started_at_ms: i64,
}

/// Why a fleet job failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetFailure {
    pub reason: String,
    pub message: String,
}

/// A job as the fleet's history keeps it (the value in [`JOBS_BUCKET`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetRecord {
    pub id: JobId,
    pub kind: JobKind,
    pub method: String,
    pub priority: Priority,
    pub label: String,
    pub state: JobState,
    /// The node that accepted it.
    pub front: String,
    pub created_at_ms: i64,
    #[serde(default)]
    pub started_at_ms: Option<i64>,
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
    /// The worker that ran (or runs) it.
    #[serde(default)]
    pub worker: Option<String>,
    /// Every delivery, in order: more than one means the job was redelivered.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub fraction: f32,
    #[serde(default)]
    pub message: String,
    /// Result file names, under `result/{id}/` in [`FILES_STREAM`].
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub quality: Option<f32>,
    #[serde(default)]
    pub summary: serde_json::Value,
    #[serde(default)]
    pub error: Option<FleetFailure>,
    #[serde(default)]
    pub run_secs: Option<f64>,
    #[serde(default)]
    pub stages: Vec<StageTiming>,
}

impl FleetRecord {
    /// Deliveries after the first.
    pub fn redeliveries(&self) -> u64 {
        self.attempts
            .iter()
            .map(|a| a.delivery)
            .max()
            .unwrap_or(0)
            .saturating_sub(1)
    }
}

/// The result object of job `id`'s file `name`.
pub fn result_object(id: JobId, name: &str) -> String {
    format!("result/{id}/{name}")
}

/// The uploaded input of job `id`.
pub fn input_object(id: JobId) -> String {
    format!("input/{id}")
}

/// The fleet's series, registered in the node's metrics registry (see docs/fleet.md).
#[derive(Clone)]
pub struct FleetMetrics {
    /// `fleet_queue_depth{priority}`: jobs in the stream, waiting or in flight.
    pub queue_depth: GaugeVec,
    /// `fleet_consumer_pending{consumer}`: jobs not yet delivered, per consumer this node pulls from.
    pub consumer_pending: GaugeVec,
    /// `fleet_consumer_ack_pending{consumer}`: delivered, not yet acked.
    pub consumer_ack_pending: GaugeVec,
    /// `fleet_jobs_submitted_total{kind,priority}` (fronts).
    pub submitted: CounterVec,
    /// `fleet_submit_rejections_total{reason}` (fronts: queue_full, unavailable).
    pub rejected: CounterVec,
    /// `fleet_jobs_processed_total{kind,outcome}` (workers: succeeded, failed, cancelled, duplicate).
    pub processed: CounterVec,
    /// `fleet_redeliveries_total{kind}` (workers): deliveries after the first that reached this worker.
    pub redeliveries: CounterVec,
    /// `fleet_dead_letters_total{reason}` (workers): messages set aside, never retried.
    pub dead_letters: CounterVec,
    /// `fleet_connected`: 1 while this node's NATS connection is up.
    pub connected: Gauge,
}

impl FleetMetrics {
    pub fn new() -> FleetMetrics {
        fn vec<T>(make: impl FnOnce(Opts) -> prometheus::Result<T>, name: &str, help: &str) -> T
        where
            T: Clone,
        {
            match make(Opts::new(name, help)) {
                Ok(v) => v,
                // Static names and label sets: only a programming error lands here.
                Err(err) => unreachable!("fleet metric {name}: {err}"),
            }
        }
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| vec(|o| GaugeVec::new(o, labels), name, help);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            vec(|o| CounterVec::new(o, labels), name, help)
        };
        let m = FleetMetrics {
            queue_depth: gauge_vec(
                "fleet_queue_depth",
                "Jobs in the fleet's work-queue stream (waiting or in flight), by priority.",
                &["priority"],
            ),
            consumer_pending: gauge_vec(
                "fleet_consumer_pending",
                "Jobs not yet delivered, per durable consumer this node pulls from.",
                &["consumer"],
            ),
            consumer_ack_pending: gauge_vec(
                "fleet_consumer_ack_pending",
                "Jobs delivered and not yet acknowledged, per durable consumer.",
                &["consumer"],
            ),
            submitted: counter_vec(
                "fleet_jobs_submitted_total",
                "Jobs this node put on the fleet queue, by kind and priority.",
                &["kind", "priority"],
            ),
            rejected: counter_vec(
                "fleet_submit_rejections_total",
                "Submissions this node refused because the fleet queue was full or unreachable.",
                &["reason"],
            ),
            processed: counter_vec(
                "fleet_jobs_processed_total",
                "Fleet jobs this worker finished, by kind and outcome.",
                &["kind", "outcome"],
            ),
            redeliveries: counter_vec(
                "fleet_redeliveries_total",
                "Deliveries after the first that reached this worker, by kind.",
                &["kind"],
            ),
            dead_letters: counter_vec(
                "fleet_dead_letters_total",
                "Queue messages this worker set aside as dead letters, by reason.",
                &["reason"],
            ),
            connected: vec(
                Gauge::with_opts,
                "fleet_connected",
                "1 while this node is connected to NATS, else 0.",
            ),
        };
        for p in Priority::ALL {
            m.queue_depth.with_label_values(&[p.as_str()]);
            for k in JobKind::ALL {
                m.submitted.with_label_values(&[k.as_str(), p.as_str()]);
            }
        }
        for k in JobKind::ALL {
            m.redeliveries.with_label_values(&[k.as_str()]);
            for o in ["succeeded", "failed", "cancelled", "duplicate"] {
                m.processed.with_label_values(&[k.as_str(), o]);
            }
        }
        for r in ["queue_full", "unavailable"] {
            m.rejected.with_label_values(&[r]);
        }
        for r in worker::DEAD_REASONS {
            m.dead_letters.with_label_values(&[r]);
        }
        m
    }

    /// Adds every series to `registry` (a node's `/metrics`).
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.queue_depth.clone()))?;
        registry.register(Box::new(self.consumer_pending.clone()))?;
        registry.register(Box::new(self.consumer_ack_pending.clone()))?;
        registry.register(Box::new(self.submitted.clone()))?;
        registry.register(Box::new(self.rejected.clone()))?;
        registry.register(Box::new(self.processed.clone()))?;
        registry.register(Box::new(self.redeliveries.clone()))?;
        registry.register(Box::new(self.dead_letters.clone()))?;
        registry.register(Box::new(self.connected.clone()))?;
        Ok(())
    }
}

impl Default for FleetMetrics {
    fn default() -> Self {
        FleetMetrics::new()
    }
}

/// A connection to the fleet: the queue, the job records and the files.
pub struct Fleet {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: jetstream::Context,
    records: kv::Store,
    files: FileStore,
    config: FleetConfig,
    metrics: FleetMetrics,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects and makes sure the stream, the bucket and the store exist
    /// (creating them with `config.replicas` copies when missing).
    pub fn connect(config: FleetConfig) -> Result<Arc<Fleet>, FleetError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orfeas-fleet")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Unavailable(format!("cannot start its threads: {e}")))?;
        let (client, js, records, files) = runtime.block_on(setup(&config))?;
        let metrics = FleetMetrics::new();
        metrics.connected.set(1.0);
        Ok(Arc::new(Fleet {
            runtime,
            client,
            js,
            records,
            files,
            config,
            metrics,
        }))
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    pub fn metrics(&self) -> &FleetMetrics {
        &self.metrics
    }

    /// True while the NATS connection is up.
    pub fn connected(&self) -> bool {
        let up = self.client.connection_state() == async_nats::connection::State::Connected;
        self.metrics.connected.set(if up { 1.0 } else { 0.0 });
        up
    }

    /// Runs `future` on the fleet's own runtime and waits for it. Call it from
    /// plain threads or a blocking pool, never from async code.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The fleet runtime's handle (workers and timers run there).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Queues `spec` at `priority`: stores its input, writes its record as
    /// `queued`, then publishes it. Returns the new job id.
    pub fn submit(&self, spec: &JobSpec, priority: Priority) -> Result<JobId, FleetError> {
        shippable(spec)?;
        let input = match &spec.request {
            JobRequest::ImageTo3d(r) => {
                Some(std::fs::read(&r.input).map_err(|e| FleetError::Input {
                    path: r.input.display().to_string(),
                    reason: e.to_string(),
                })?)
            }
            JobRequest::TextToImage(_) => None,
        };
        let result = self.block_on(self.submit_async(spec, priority, input));
        match &result {
            Ok(_) => self
                .metrics
                .submitted
                .with_label_values(&[spec.kind().as_str(), priority.as_str()])
                .inc(),
            Err(FleetError::QueueFull { .. }) => {
                self.metrics
                    .rejected
                    .with_label_values(&["queue_full"])
                    .inc();
            }
            Err(_) => self
                .metrics
                .rejected
                .with_label_values(&["unavailable"])
                .inc(),
        }
        result
    }

    async fn submit_async(
        &self,
        spec: &JobSpec,
        priority: Priority,
        input: Option<Vec<u8>>,
    ) -> Result<JobId, FleetError> {
        let capability = Capability::of(spec);
        let mut record = FleetRecord {
            id: JobId(0),
            kind: spec.kind(),
            method: capability.method.clone(),
            priority,
            label: spec.label.clone(),
            state: JobState::Queued,
            front: self.config.node_name.clone(),
            created_at_ms: crate::history::now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            worker: None,
            attempts: Vec::new(),
            stage: String::new(),
            fraction: 0.0,
            message: String::new(),
            files: Vec::new(),
            quality: None,
            summary: serde_json::Value::Null,
            error: None,
            run_secs: None,
            stages: Vec::new(),
        };
        // A fresh id: `create` fails when the key exists, so two fronts never share one.
        let mut id = JobId(0);
        for _ in 0..8 {
            id = new_job_id();
            record.id = id;
            match self
                .records
                .create(id.to_string(), record_bytes(&record))
                .await
            {
                Ok(_) => break,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        if let Some(bytes) = input
            && let Err(e) = self.files.put(&input_object(id), &bytes).await
        {
            self.forget(id).await;
            return Err(e);
        }
        let message = FleetJob {
            id,
            priority,
            spec: spec.clone(),
        };
        let payload =
            serde_json::to_vec(&message).map_err(|e| FleetError::NotShippable(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        // JetStream drops a second publish with the same id inside its duplicate window.
        headers.insert("Nats-Msg-Id", format!("orfeas-job-{id}").as_str());
        let published = match self
            .js
            .publish_with_headers(subject(priority, &capability), headers, payload.into())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            self.forget(id).await;
            let text = error_chain(&e);
            if text.contains("maximum messages exceeded") || text.contains("maximum bytes exceeded")
            {
                return Err(FleetError::QueueFull {
                    max: self.config.max_queued,
                });
            }
            return Err(FleetError::Unavailable(text));
        }
        Ok(id)
    }

    /// Removes what a refused submission left (its record and input).
    async fn forget(&self, id: JobId) {
        if let Err(e) = self.records.purge(id.to_string()).await {
            tracing::warn!("cannot remove the record of refused fleet job {id}: {e}");
        }
        let _ = self.files.delete(&input_object(id)).await;
    }

    /// The record of job `id`, if the fleet has one.
    pub fn record(&self, id: JobId) -> Result<Option<FleetRecord>, FleetError> {
        self.block_on(self.record_async(id))
            .map(|entry| entry.map(|(record, _)| record))
    }

    pub(crate) async fn record_async(
        &self,
        id: JobId,
    ) -> Result<Option<(FleetRecord, u64)>, FleetError> {
        let entry = self
            .records
            .entry(id.to_string())
            .await
            .map_err(unavailable)?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record: FleetRecord =
                    serde_json::from_slice(&e.value).map_err(|err| FleetError::BadRecord {
                        id: id.0,
                        reason: err.to_string(),
                    })?;
                Ok(Some((record, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Every record, newest first.
    pub fn records(&self) -> Result<Vec<FleetRecord>, FleetError> {
        self.block_on(async {
            // The bucket's subjects, from one stream-info request: listing
            // keys through a consumer costs the cluster a consumer per call.
            let stream = self
                .js
                .get_stream_no_info(format!("KV_{JOBS_BUCKET}"))
                .await
                .map_err(unavailable)?;
            let prefix = format!("$KV.{JOBS_BUCKET}.");
            let mut subjects = stream
                .info_with_subjects(format!("{prefix}>"))
                .await
                .map_err(unavailable)?;
            let mut ids = Vec::new();
            while let Some(entry) = subjects.next().await {
                let (subject, _) = entry.map_err(unavailable)?;
                if let Some(Ok(id)) = subject.strip_prefix(&prefix).map(str::parse::<i64>) {
                    ids.push(JobId(id));
                }
            }
            ids.sort_unstable_by(|a, b| b.cmp(a));
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                match self.record_async(id).await {
                    Ok(Some((record, _))) => out.push(record),
                    Ok(None) => {}
                    Err(FleetError::BadRecord { id, reason }) => {
                        tracing::warn!("skipping the unreadable fleet record {id}: {reason}");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    /// Replaces the record at `revision` (compare and set). `Ok(false)`: it
    /// changed meanwhile (read it again).
    pub(crate) async fn update_record(
        &self,
        record: &FleetRecord,
        revision: u64,
    ) -> Result<Option<u64>, FleetError> {
        match self
            .records
            .update(record.id.to_string(), record_bytes(record), revision)
            .await
        {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Applies `change` to job `id`'s record with compare-and-set, retrying
    /// when another node changed it meanwhile. `change` returns false to leave
    /// the record as it is. Returns the record as stored (or as found).
    pub(crate) async fn change_record(
        &self,
        id: JobId,
        mut change: impl FnMut(&mut FleetRecord) -> bool,
    ) -> Result<Option<(FleetRecord, bool)>, FleetError> {
        for _ in 0..16 {
            let Some((mut record, revision)) = self.record_async(id).await? else {
                return Ok(None);
            };
            if !change(&mut record) {
                return Ok(Some((record, false)));
            }
            if self.update_record(&record, revision).await?.is_some() {
                return Ok(Some((record, true)));
            }
        }
        Err(FleetError::Unavailable(format!(
            "the record of job {id} keeps changing under this node"
        )))
    }

    /// Cancels a job that no worker has started. `Ok(None)`: no such job;
    /// `Ok(Some(record))` with the record's state after the attempt.
    pub fn cancel(&self, id: JobId) -> Result<Option<FleetRecord>, FleetError> {
        self.block_on(async {
            let changed = self
                .change_record(id, |r| {
                    if r.state != JobState::Queued {
                        return false;
                    }
                    r.state = JobState::Cancelled;
                    r.finished_at_ms = Some(crate::history::now_ms());
                    r.error = Some(FleetFailure {
                        reason: "cancelled".into(),
                        message: "the job was cancelled".into(),
                    });
                    true
                })
                .await?;
            Ok(changed.map(|(r, _)| r))
        })
    }

    /// The bytes of result file `name` of job `id`.
    pub fn result_bytes(&self, id: JobId, name: &str) -> Result<Option<Vec<u8>>, FleetError> {
        self.block_on(self.files.get(&result_object(id, name)))
    }

    /// Writes job `id`'s result files atomically: the first at `output`, the
    /// rest (an OBJ's material and texture) beside it under their own names.
    /// Returns the paths written (none when the job has no file).
    pub fn save_results(
        &self,
        id: JobId,
        files: &[String],
        output: &std::path::Path,
    ) -> Result<Vec<std::path::PathBuf>, FleetError> {
        let dir = output.parent().unwrap_or(std::path::Path::new("."));
        let mut written = Vec::with_capacity(files.len());
        for (i, name) in files.iter().enumerate() {
            let target = if i == 0 {
                output.to_path_buf()
            } else {
                dir.join(name)
            };
            let cannot = |reason: String| FleetError::Output {
                path: target.display().to_string(),
                reason,
            };
            let bytes = self.result_bytes(id, name)?.ok_or_else(|| {
                cannot(format!(
                    "job {id} finished but its file {name} is not in the fleet"
                ))
            })?;
            crate::paths::write_bytes_atomic(&target, &bytes).map_err(|e| cannot(e.to_string()))?;
            written.push(target);
        }
        Ok(written)
    }

    /// Jobs in the stream per priority (waiting or in flight); also sets `fleet_queue_depth`.
    pub fn queue_depth(&self) -> Result<BTreeMap<Priority, u64>, FleetError> {
        self.block_on(self.queue_depth_async())
    }

    pub(crate) async fn queue_depth_async(&self) -> Result<BTreeMap<Priority, u64>, FleetError> {
        {
            let stream = self
                .js
                .get_stream_no_info(JOBS_STREAM)
                .await
                .map_err(unavailable)?;
            let mut depth = BTreeMap::new();
            for p in Priority::ALL {
                let info = stream
                    .info_with_subjects(format!("{}.>", p.subject_root()))
                    .await;
                let mut n = 0;
                if let Ok(mut subjects) = info {
                    while let Some(Ok((_, count))) = subjects.next().await {
                        n += count as u64;
                    }
                }
                self.metrics
                    .queue_depth
                    .with_label_values(&[p.as_str()])
                    .set(n as f64);
                depth.insert(p, n);
            }
            Ok(depth)
        }
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    pub(crate) fn files(&self) -> &FileStore {
        &self.files
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

async fn setup(
    config: &FleetConfig,
) -> Result<(async_nats::Client, jetstream::Context, kv::Store, FileStore), FleetError> {
    let urls = config.urls.join(",");
    let addrs: Vec<async_nats::ServerAddr> = config
        .urls
        .iter()
        .map(|u| u.parse().map_err(|_| FleetError::BadUrl { url: u.clone() }))
        .collect::<Result<_, _>>()?;
    let connect = async_nats::ConnectOptions::new()
        .name(format!("orfeas {}", config.node_name))
        .connection_timeout(config.connect_timeout)
        // After the first connection: keep trying for ever (a node restart is routine).
        .max_reconnects(None)
        .connect(addrs);
    let client = match tokio::time::timeout(
        config.connect_timeout + Duration::from_secs(1),
        connect,
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return Err(FleetError::Unreachable {
                urls,
                reason: error_chain(&e),
            });
        }
        Err(_) => {
            return Err(FleetError::Unreachable {
                urls,
                reason: format!("no answer in {} s", config.connect_timeout.as_secs()),
            });
        }
    };
    // A loaded cluster (a Raft proposal per consumer, CPU-bound jobs beside
    // it) can take longer than the client's default 5 s to answer.
    let js = jetstream::ContextBuilder::new()
        .timeout(JS_TIMEOUT)
        .build(client.clone());
    let (records, files) = settle(config, "JetStream", || prepare(&js, config, &urls)).await?;
    Ok((client, js, records, files))
}

/// Runs `attempt` until it succeeds or six connect timeouts have passed: a
/// cluster that has just started (or lost a node) refuses requests for a few
/// seconds while it elects its leaders.
pub(crate) async fn settle<T, Fut>(
    config: &FleetConfig,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, FleetError>
where
    Fut: std::future::Future<Output = Result<T, FleetError>>,
{
    let deadline = std::time::Instant::now() + config.connect_timeout * 6;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::info!("{what} not ready yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates the streams, the bucket and the store where missing.
async fn prepare(
    js: &jetstream::Context,
    config: &FleetConfig,
    urls: &str,
) -> Result<(kv::Store, FileStore), FleetError> {
    let no_js = |e: &dyn std::error::Error| FleetError::NoJetStream {
        urls: urls.to_owned(),
        reason: error_chain(e),
    };
    let replicas = config.replicas.max(1);
    js.get_or_create_stream(stream::Config {
        name: JOBS_STREAM.to_owned(),
        subjects: Priority::ALL
            .iter()
            .map(|p| format!("{}.>", p.subject_root()))
            .collect(),
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_messages: config.max_queued.max(1),
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| no_js(&e))?;
    js.get_or_create_stream(stream::Config {
        name: DEAD_STREAM.to_owned(),
        subjects: vec![format!("{DEAD_PREFIX}.>")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages: 10_000,
        max_age: Duration::from_secs(14 * 24 * 3600),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| no_js(&e))?;
    let records = match js.get_key_value(JOBS_BUCKET).await {
        Ok(store) => store,
        Err(_) => {
            // The bucket's stream is made here, as the KV layout prescribes:
            // async-nats's `create_key_value` first reads account fields that
            // 2.9 servers (Debian's) do not send, and fails on them.
            js.get_or_create_stream(stream::Config {
                name: format!("KV_{JOBS_BUCKET}"),
                description: Some("ORFEAS fleet job records".to_owned()),
                subjects: vec![format!("$KV.{JOBS_BUCKET}.>")],
                max_messages_per_subject: 1,
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| no_js(&e))?;
            js.get_key_value(JOBS_BUCKET).await.map_err(|e| no_js(&e))?
        }
    };
    let files = FileStore::open(js, replicas)
        .await
        .map_err(|e| no_js(e.as_ref()))?;
    Ok((records, files))
}

/// Refuses jobs that name files only the submitting machine has.
fn shippable(spec: &JobSpec) -> Result<(), FleetError> {
    let local = match &spec.request {
        JobRequest::ImageTo3d(r) => {
            if r.mask.is_some() {
                Some("a painted mask")
            } else if r.triposr.model_path.is_some() {
                Some("a TripoSR model path")
            } else {
                None
            }
        }
        JobRequest::TextToImage(j) => {
            let r = &j.request;
            if r.model_path.is_some() {
                Some("a model path")
            } else if r.tiny_decoder_path.is_some() {
                Some("a tiny decoder path")
            } else if r.init_image.is_some() {
                Some("an init image")
            } else if r.init_latents.is_some() {
                Some("an init latents file")
            } else {
                None
            }
        }
    };
    match local {
        Some(what) => Err(FleetError::NotShippable(format!(
            "it names {what} on this machine; run it here (without --queue) or use registry models"
        ))),
        None => Ok(()),
    }
}

/// Unique enough across fronts: milliseconds since the epoch × 4096 + 12
/// random bits (positive, fits JavaScript's safe integers until 2100),
/// made unique for sure by the bucket's `create`.
fn new_job_id() -> JobId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let ms = crate::history::now_ms().max(1);
    JobId((ms << 12) | (h.finish() & 0xfff) as i64)
}

fn record_bytes(record: &FleetRecord) -> bytes::Bytes {
    // A record is plain data (strings, numbers, JSON values): serialising cannot fail.
    serde_json::to_vec(record).unwrap_or_default().into()
}

fn unavailable(e: impl std::error::Error) -> FleetError {
    FleetError::Unavailable(error_chain(&e))
}

/// An error and its sources, joined.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_priority_kind_and_method() {
        let c = Capability::new(JobKind::ImageTo3d, "triposr");
        assert_eq!(
            subject(Priority::Interactive, &c),
            "orfeas.jobs.image-to-3d.triposr"
        );
        let c = Capability::new(JobKind::TextToImage, "SD-1.5");
        assert_eq!(
            subject(Priority::Batch, &c),
            "orfeas.batch.text-to-image.sd-1_5"
        );
        assert_eq!(
            consumer_name(Priority::Batch, &c),
            "orfeas-batch-text-to-image-sd-1_5"
        );
        assert_eq!(subject_token("a b.c>*"), "a_b_c__");
    }

    #[test]
    fn queue_urls_are_checked() {
        assert_eq!(
            parse_urls("nats://a:4222, nats://b:4223").unwrap(),
            vec!["nats://a:4222", "nats://b:4223"]
        );
        for bad in [
            "",
            "http://a:4222",
            "nats://a",
            "nats://:4222",
            "nats://a:99999",
        ] {
            let e = parse_urls(bad).unwrap_err();
            assert!(e.to_string().contains("nats://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn ids_are_positive_and_fit_javascript() {
        let a = new_job_id();
        let b = new_job_id();
        assert!(a.0 > 0 && b.0 > 0);
        assert!(a.0 < (1 << 53), "{a} must survive a JavaScript client");
    }

    #[test]
    fn local_paths_are_not_shipped() {
        let mut job = crate::request::TextToImageJob {
            request: crate::request::TextToImageRequest::new("a cat"),
            output: "out.png".into(),
        };
        assert!(shippable(&JobSpec::from(job.clone())).is_ok());
        job.request.model_path = Some("/models/x".into());
        let e = shippable(&JobSpec::from(job)).unwrap_err();
        assert!(e.to_string().contains("model path"), "{e}");
    }
}
