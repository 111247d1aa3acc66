//! A fleet worker: pulls the jobs it can run from JetStream and runs them on
//! this node's engine.
//!
//! One durable pull consumer per (priority, capability), shared by every
//! worker with that capability, so JetStream hands each job to one of them.
//! A worker asks for one message at a time and only while it has a free slot
//! (its `--concurrency`), interactive consumers before batch ones. While a
//! job runs, its message gets an in-progress ack every third of `ack_wait`;
//! the message is acked only once the result files are in the fleet's file
//! stream
//! and the record is final. A message that cannot be read, or that sits on a
//! subject its job does not belong to, is published to `orfeas.dead.{reason}`
//! and terminated: counted, kept for inspection, never retried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt as _;
use tokio::sync::{Semaphore, watch};

use super::{
    Attempt, Capability, DEAD_PREFIX, Fleet, FleetError, FleetFailure, FleetJob, JOBS_STREAM,
    Priority, consumer_name, error_chain, input_object, result_object, subject,
};
use crate::jobs::{Engine, JobEventKind, JobId, JobKind, JobOutput, JobRequest, JobState};

/// The `reason` label values of `fleet_dead_letters_total`.
pub const DEAD_REASONS: [&str; 3] = ["malformed", "wrong_subject", "unknown_job"];

/// How long an idle worker waits before asking the queue again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long the server keeps one pull request.
const FETCH_EXPIRES: Duration = Duration::from_secs(2);
/// How often queue and consumer gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// Progress reaches the job record at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What this worker runs and where it keeps a job's files while it runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub capabilities: Vec<Capability>,
    /// Jobs run at once (the local engine's concurrency).
    pub concurrency: usize,
    /// Inputs and outputs of running jobs; each job's folder is removed after it.
    pub scratch_dir: PathBuf,
}

/// A running worker; [`WorkerHandle::stop`] (or dropping it) stops taking jobs.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerHandle")
    }
}

impl WorkerHandle {
    /// Stops taking jobs and waits up to `grace` for the loop to end (jobs in
    /// flight are left to the engine's own shutdown).
    pub fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(grace);
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts pulling jobs for `config.capabilities`. Fails when the consumers
/// cannot be created (the queue is unreachable).
pub fn start(
    fleet: Arc<Fleet>,
    engine: Engine,
    config: WorkerConfig,
) -> Result<WorkerHandle, FleetError> {
    if config.capabilities.is_empty() {
        return Err(FleetError::Unavailable(
            "this node can run no job kind, so it cannot be a worker".to_owned(),
        ));
    }
    std::fs::create_dir_all(&config.scratch_dir).map_err(|e| FleetError::Input {
        path: config.scratch_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let consumers = fleet.block_on(super::settle(
        fleet.config(),
        "the fleet's consumers",
        || consumers(&fleet, &config.capabilities),
    ))?;
    let (stop, stopped) = watch::channel(false);
    let (done_tx, done) = std::sync::mpsc::sync_channel(1);
    let worker = Arc::new(Worker {
        fleet: Arc::clone(&fleet),
        engine,
        config,
    });
    tracing::info!(
        node = %fleet.config().node_name,
        capabilities = ?worker.config.capabilities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "fleet worker pulling jobs"
    );
    fleet.handle().spawn(stats(
        Arc::clone(&worker),
        consumers.clone(),
        stopped.clone(),
    ));
    fleet.handle().spawn(async move {
        worker.pull(consumers, stopped).await;
        let _ = done_tx.send(());
    });
    Ok(WorkerHandle {
        stop,
        done: Some(done),
    })
}

/// One consumer this worker pulls from.
#[derive(Clone)]
struct Source {
    priority: Priority,
    capability: Capability,
    name: String,
    consumer: PullConsumer,
}

async fn consumers(fleet: &Fleet, capabilities: &[Capability]) -> Result<Vec<Source>, FleetError> {
    let stream = fleet
        .js()
        .get_stream(JOBS_STREAM)
        .await
        .map_err(|e| FleetError::Unavailable(error_chain(&e)))?;
    let mut out = Vec::new();
    // Interactive first: the pull loop asks them in this order.
    for priority in Priority::ALL {
        for capability in capabilities {
            let name = consumer_name(priority, capability);
            let consumer: PullConsumer = stream
                .get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        description: Some(format!("ORFEAS workers that run {capability}")),
                        filter_subject: subject(priority, capability),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: fleet.config().ack_wait,
                        max_deliver: fleet.config().max_deliver,
                        max_ack_pending: 10_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| FleetError::Unavailable(error_chain(&e)))?;
            out.push(Source {
                priority,
                capability: capability.clone(),
                name,
                consumer,
            });
        }
    }
    Ok(out)
}

struct Worker {
    fleet: Arc<Fleet>,
    engine: Engine,
    config: WorkerConfig,
}

impl Worker {
    fn name(&self) -> &str {
        &self.fleet.config().node_name
    }

    /// Takes a message whenever a slot is free, until `stopped`.
    async fn pull(self: Arc<Self>, sources: Vec<Source>, mut stopped: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut was_connected = true;
        loop {
            if *stopped.borrow() {
                return;
            }
            let permit = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stopped.changed() => return,
            };
            let connected = self.fleet.connected();
            if connected != was_connected {
                if connected {
                    tracing::info!("reconnected to NATS; taking fleet jobs again");
                } else {
                    tracing::warn!(
                        "lost the NATS connection; taking no fleet jobs until it is back"
                    );
                }
                was_connected = connected;
            }
            let mut taken = None;
            if connected {
                for source in &sources {
                    match next_message(&source.consumer).await {
                        Ok(Some(message)) => {
                            taken = Some((source.clone(), message));
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(consumer = %source.name, "fetch failed: {e}"),
                    }
                }
            }
            match taken {
                Some((source, message)) => {
                    let worker = Arc::clone(&self);
                    tokio::spawn(async move {
                        worker.handle(&source, message).await;
                        drop(permit);
                    });
                }
                None => {
                    drop(permit);
                    tokio::select! {
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        _ = stopped.changed() => return,
                    }
                }
            }
        }
    }

    /// Runs one delivered job to its end (or sets the message aside).
    async fn handle(&self, source: &Source, message: Message) {
        let delivery = message.info().map_or(1, |i| i.delivered.max(1) as u64);
        let job: FleetJob = match serde_json::from_slice(&message.payload) {
            Ok(job) => job,
            Err(e) => {
                self.dead_letter(&message, "malformed", &e.to_string())
                    .await;
                return;
            }
        };
        if Capability::of(&job.spec) != source.capability || job.priority != source.priority {
            let why = format!(
                "a {} job at {} priority on {}",
                Capability::of(&job.spec),
                job.priority.as_str(),
                message.subject
            );
            self.dead_letter(&message, "wrong_subject", &why).await;
            return;
        }
        let kind = job.spec.kind();
        if delivery > 1 {
            self.fleet
                .metrics()
                .redeliveries
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        if let Err(e) = self.engine.admit(&job.spec) {
            // Its model went away since this worker subscribed: let another take it.
            tracing::warn!(job = %job.id, "cannot run a fleet job here: {e}");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
        let name = self.name().to_owned();
        let claimed = self
            .fleet
            .change_record(job.id, |r| {
                if r.state.is_terminal() {
                    return false;
                }
                r.state = JobState::Running;
                r.worker = Some(name.clone());
                let now = crate::history::now_ms();
                r.started_at_ms = Some(now);
                r.attempts.push(Attempt {
                    worker: name.clone(),
                    delivery,
                    started_at_ms: now,
                });
                r.stage.clear();
                r.fraction = 0.0;
                r.message.clear();
                true
            })
            .await;
        match claimed {
            Ok(Some((_, true))) => {}
            Ok(Some((record, false))) => {
                // Finished (or cancelled) before this delivery: nothing to do twice.
                tracing::info!(job = %job.id, state = %record.state, "fleet job already finished; acking the redelivery");
                self.count(kind, "duplicate");
                let _ = message.double_ack().await;
                return;
            }
            Ok(None) => {
                self.dead_letter(&message, "unknown_job", "the job has no record")
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(job = %job.id, "cannot claim a fleet job: {e}");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
                return;
            }
        }
        tracing::info!(job = %job.id, delivery, consumer = %source.name, "fleet job taken");
        let folder = self
            .config
            .scratch_dir
            .join(format!("job-{}-{delivery}", job.id));
        // In-progress acks for as long as this delivery is busy (fetching the
        // input, running, storing the result), so JetStream does not hand the
        // job to a second worker while this one still works on it.
        let outcome = {
            let run = self.run(&job, &folder);
            tokio::pin!(run);
            let every = (self.fleet.config().ack_wait / 3).max(Duration::from_millis(200));
            let mut heartbeat = tokio::time::interval(every);
            heartbeat.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    _ = heartbeat.tick() => {
                        if let Err(e) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(job = %job.id, "in-progress ack failed: {e}");
                        }
                    }
                }
            }
        };
        if let Err(e) = std::fs::remove_dir_all(&folder)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the scratch folder {}: {e}", folder.display());
        }
        match outcome {
            Ok(outcome) => {
                tracing::info!(job = %job.id, outcome, "fleet job done");
                self.count(kind, outcome);
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(job = %job.id, "the ack of a finished job was lost ({e}); a redelivery will find it finished");
                }
            }
            Err(Retry(reason)) => {
                tracing::warn!(job = %job.id, "fleet job handed back: {reason}");
                let _ = self
                    .fleet
                    .change_record(job.id, |r| {
                        if r.state != JobState::Running || r.worker.as_deref() != Some(self.name())
                        {
                            return false;
                        }
                        r.state = JobState::Queued;
                        r.message = reason.clone();
                        true
                    })
                    .await;
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
    }

    /// Fetches the input, runs the job locally, stores the result and
    /// finishes the record. `Ok(outcome)` once the record is final.
    async fn run(&self, job: &FleetJob, folder: &Path) -> Result<&'static str, Retry> {
        let spec = self.localise(job, folder).await?;
        let mut events = self.engine.subscribe();
        let local = match self.engine.submit(spec) {
            Ok(id) => id,
            Err(crate::jobs::EngineError::Refused(failure)) => {
                let failure = FleetFailure {
                    reason: failure.reason.to_owned(),
                    message: failure.message,
                };
                return self.finish_failed(job.id, failure, JobState::Failed).await;
            }
            Err(e) => return Err(Retry(e.to_string())),
        };
        let mut last_progress = Instant::now() - PROGRESS_EVERY;
        loop {
            match events.recv().await {
                Ok(event) if event.id == local => {
                    if event.event.is_terminal() {
                        break;
                    }
                    if let JobEventKind::Progress {
                        stage,
                        fraction,
                        message: text,
                    } = event.event
                        && last_progress.elapsed() >= PROGRESS_EVERY
                    {
                        last_progress = Instant::now();
                        self.progress(job.id, stage, fraction, text).await;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if self
                        .engine
                        .snapshot(local)
                        .is_none_or(|s| s.state.is_terminal())
                    {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        let Some(snapshot) = self.engine.snapshot(local) else {
            return Err(Retry("the local engine lost the job".to_owned()));
        };
        match snapshot.state {
            JobState::Succeeded => {
                let output = snapshot.output.clone().unwrap_or_default();
                self.store_results(job.id, &output).await?;
                let name = self.name().to_owned();
                let changed = self
                    .fleet
                    .change_record(job.id, |r| {
                        if r.state.is_terminal() {
                            return false;
                        }
                        r.state = JobState::Succeeded;
                        r.worker = Some(name.clone());
                        r.finished_at_ms = Some(crate::history::now_ms());
                        r.files = file_names(&output);
                        r.quality = output.quality;
                        r.summary = output.summary.clone();
                        r.stage = snapshot.stage.clone();
                        r.fraction = 1.0;
                        r.run_secs = snapshot.run_secs;
                        r.stages = snapshot.stages.clone();
                        true
                    })
                    .await
                    .map_err(|e| Retry(e.to_string()))?;
                Ok(match changed {
                    Some((_, true)) => "succeeded",
                    _ => "duplicate",
                })
            }
            JobState::Failed => {
                let failure = snapshot.failure.map_or_else(
                    || FleetFailure {
                        reason: "other".into(),
                        message: "the job failed".into(),
                    },
                    |f| FleetFailure {
                        reason: f.reason.to_owned(),
                        message: redact(&f.message, folder),
                    },
                );
                if failure.reason == "cancelled" {
                    return Err(Retry("this worker is stopping".to_owned()));
                }
                self.finish_failed(job.id, failure, JobState::Failed).await
            }
            // Cancelled here means this node is shutting down: another worker runs it.
            _ => Err(Retry("this worker is stopping".to_owned())),
        }
    }

    /// The job with its paths in this worker's scratch folder, its input fetched.
    async fn localise(&self, job: &FleetJob, folder: &Path) -> Result<crate::jobs::JobSpec, Retry> {
        let out_dir = folder.join("out");
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(|e| Retry(format!("cannot create {}: {e}", out_dir.display())))?;
        let mut spec = job.spec.clone();
        let file_name = |p: &Path, fallback: &str| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty() && !n.starts_with('.'))
                .unwrap_or_else(|| fallback.to_owned())
        };
        match &mut spec.request {
            JobRequest::ImageTo3d(r) => {
                let input = folder.join(file_name(&r.input, "input.png"));
                let bytes = self
                    .fleet
                    .files()
                    .get(&input_object(job.id))
                    .await
                    .map_err(|e| Retry(format!("cannot fetch the input: {e}")))?
                    .ok_or_else(|| Retry("its input is not in the fleet's files yet".to_owned()))?;
                tokio::fs::write(&input, &bytes)
                    .await
                    .map_err(|e| Retry(format!("cannot write the input: {e}")))?;
                r.output = out_dir.join(file_name(&r.output, "model.glb"));
                r.input = input;
            }
            JobRequest::TextToImage(j) => {
                j.output = out_dir.join(file_name(&j.output, "image.png"));
            }
        }
        Ok(spec)
    }

    /// Puts each output under `result/{id}/` unless a delivery before this one already did.
    async fn store_results(&self, id: JobId, output: &JobOutput) -> Result<(), Retry> {
        for path in &output.files {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let object = result_object(id, &name);
            if self.fleet.files().exists(&object).await.unwrap_or(false) {
                continue;
            }
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| Retry(format!("cannot read the result {name}: {e}")))?;
            self.fleet
                .files()
                .put(&object, &bytes)
                .await
                .map_err(|e| Retry(format!("cannot store the result {name}: {e}")))?;
        }
        Ok(())
    }

    async fn finish_failed(
        &self,
        id: JobId,
        failure: FleetFailure,
        state: JobState,
    ) -> Result<&'static str, Retry> {
        let changed = self
            .fleet
            .change_record(id, |r| {
                if r.state.is_terminal() {
                    return false;
                }
                r.state = state;
                r.finished_at_ms = Some(crate::history::now_ms());
                r.error = Some(failure.clone());
                true
            })
            .await
            .map_err(|e| Retry(e.to_string()))?;
        Ok(match changed {
            Some((_, true)) => "failed",
            _ => "duplicate",
        })
    }

    async fn progress(&self, id: JobId, stage: String, fraction: f32, text: String) {
        let name = self.name().to_owned();
        let result = self
            .fleet
            .change_record(id, |r| {
                if r.state != JobState::Running || r.worker.as_deref() != Some(name.as_str()) {
                    return false;
                }
                r.stage.clone_from(&stage);
                r.fraction = r.fraction.max(fraction.clamp(0.0, 1.0));
                r.message.clone_from(&text);
                true
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(job = %id, "progress not recorded: {e}");
        }
    }

    /// Publishes the message to `orfeas.dead.{reason}` and terminates it.
    async fn dead_letter(&self, message: &Message, reason: &'static str, detail: &str) {
        tracing::warn!(subject = %message.subject, reason, "dead-lettering a fleet message: {detail}");
        self.fleet
            .metrics()
            .dead_letters
            .with_label_values(&[reason])
            .inc();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Orfeas-Dead-Reason", reason);
        headers.insert("Orfeas-Original-Subject", message.subject.as_str());
        headers.insert("Orfeas-Worker", self.name());
        headers.insert(
            "Orfeas-Detail",
            detail
                .replace(['\r', '\n'], " ")
                .chars()
                .take(200)
                .collect::<String>()
                .as_str(),
        );
        let published = self
            .fleet
            .js()
            .publish_with_headers(
                format!("{DEAD_PREFIX}.{reason}"),
                headers,
                message.payload.clone(),
            )
            .await;
        match published {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::warn!("the dead letter was not stored: {e}");
                }
            }
            Err(e) => tracing::warn!("the dead letter was not stored: {e}"),
        }
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::warn!("cannot terminate a dead letter: {e}");
        }
    }

    fn count(&self, kind: JobKind, outcome: &str) {
        self.fleet
            .metrics()
            .processed
            .with_label_values(&[kind.as_str(), outcome])
            .inc();
    }
}

/// Why a job goes back to the queue for another delivery.
struct Retry(String);

/// The next message of `consumer`, without waiting when there is none.
async fn next_message(consumer: &PullConsumer) -> Result<Option<Message>, String> {
    // A pull request's answer can be lost (a cluster that has not yet learned
    // of the reply subscription): the server forgets the request after
    // `expires`, and this side stops waiting soon after.
    let fetch = async {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(|e| error_chain(&e))?;
        match batch.next().await {
            Some(Ok(message)) => Ok(Some(message)),
            Some(Err(e)) => Err(error_chain(&*e)),
            None => Ok(None),
        }
    };
    tokio::time::timeout(FETCH_EXPIRES * 2, fetch)
        .await
        .unwrap_or_else(|_| Err("no answer to the pull request".to_owned()))
}

/// Refreshes the queue-depth and consumer gauges until `stopped`.
async fn stats(worker: Arc<Worker>, sources: Vec<Source>, mut stopped: watch::Receiver<bool>) {
    loop {
        let fleet = Arc::clone(&worker.fleet);
        if fleet.connected() {
            for source in &sources {
                if let Ok(info) = source.consumer.get_info().await {
                    let m = fleet.metrics();
                    m.consumer_pending
                        .with_label_values(&[source.name.as_str()])
                        .set(info.num_pending as f64);
                    m.consumer_ack_pending
                        .with_label_values(&[source.name.as_str()])
                        .set(info.num_ack_pending as f64);
                }
            }
            let _ = fleet.queue_depth_async().await;
        }
        tokio::select! {
            () = tokio::time::sleep(STATS_EVERY) => {}
            _ = stopped.changed() => return,
        }
    }
}

fn file_names(output: &JobOutput) -> Vec<String> {
    output
        .files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// A failure message without this worker's scratch paths.
fn redact(message: &str, folder: &Path) -> String {
    message.replace(folder.to_string_lossy().as_ref(), "<job folder>")
}
