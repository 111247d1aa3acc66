//! The engine: queue, concurrency limit, lifecycle, events and history writes.
//!
//! Every state change happens under one mutex (`Inner::table`), and the event
//! for it is sent while that mutex is held, so each job's events are seen in
//! the order the changes happened. Sending never blocks: subscribers and the
//! observer thread read from bounded broadcast channels and lose the oldest
//! events if they fall behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{Notify, Semaphore, broadcast};

use super::{
    JobContext, JobEvent, JobEventKind, JobFailure, JobId, JobKind, JobObserver, JobOutput,
    JobRequest, JobRunner, JobSnapshot, JobSpec, JobState, StageTiming, secs,
};
use crate::history::{History, HistoryError};

/// How many events a subscriber may fall behind before it loses the oldest.
const SUBSCRIBER_CAPACITY: usize = 1024;
/// Same for the observer thread; larger because losing events there skews metrics.
const OBSERVER_CAPACITY: usize = 8192;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Jobs running at once (generation saturates a GPU; 1 is right for most machines).
    pub concurrency: usize,
    /// Jobs waiting for a slot; a submit beyond this is [`EngineError::QueueFull`].
    pub queue_capacity: usize,
    /// A job running longer fails with reason "timeout" (and is asked to stop).
    pub job_timeout: Option<Duration>,
    /// Finished jobs kept in memory for [`Engine::jobs`]; older ones are in the history only.
    pub keep_finished: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            concurrency: 1,
            queue_capacity: 64,
            job_timeout: None,
            keep_finished: 256,
        }
    }
}

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the job queue is full ({capacity} jobs waiting); wait for some to finish or cancel some"
    )]
    QueueFull { capacity: usize },
    #[error("no runner is registered for {0} jobs; this build cannot run them")]
    NoRunner(JobKind),
    #[error("the engine is shutting down and accepts no new jobs")]
    ShuttingDown,
    /// The runner refused the job before it was queued (see [`JobRunner::admit`]).
    #[error("{0}")]
    Refused(JobFailure),
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("cannot start the job engine's threads: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot record the job in the history: {0}")]
    History(#[from] HistoryError),
}

/// What [`Engine::shutdown`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Running jobs that were asked to stop because the timeout passed.
    pub cancelled: usize,
    /// Jobs still running when `shutdown` returned (their runners ignored
    /// cancellation); the next `History::open` marks them interrupted.
    pub still_running: usize,
    /// Queued jobs that never started; they stay `queued` in the history so
    /// [`Engine::requeue_from_history`] can run them after a restart.
    pub left_queued: usize,
}

/// The job engine. Cheap to clone; all clones drive the same queue.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    _runtime: Option<Arc<OwnedRuntime>>,
}

/// The runtime the engine made for itself. Dropped with the last `Engine`
/// clone (never from inside a task, which only hold `Inner`).
struct OwnedRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    inner: std::sync::Weak<Inner>,
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.accepting.store(false, Ordering::SeqCst);
            inner.cancel_running();
        }
        if let Some(runtime) = self.runtime.take() {
            // Runners on blocking threads finish on their own (they were asked to
            // stop); waiting for them here could hang the caller.
            runtime.shutdown_background();
        }
    }
}

pub(crate) struct Inner {
    config: EngineConfig,
    handle: tokio::runtime::Handle,
    history: Option<Arc<History>>,
    runners: RwLock<HashMap<JobKind, Arc<dyn JobRunner>>>,
    observers: Arc<RwLock<Vec<Arc<dyn JobObserver>>>>,
    table: Mutex<Table>,
    /// Notified after every terminal transition (for `wait` and `shutdown`).
    changed: Condvar,
    slots: Arc<Semaphore>,
    events: broadcast::Sender<JobEvent>,
    observer_events: broadcast::Sender<Arc<(JobEvent, JobSnapshot)>>,
    accepting: AtomicBool,
    next_local_id: AtomicI64,
}

#[derive(Default)]
struct Table {
    jobs: BTreeMap<JobId, Entry>,
    finished: VecDeque<JobId>,
    queued: usize,
    /// Submits between the capacity check and the history insert.
    reserved: usize,
    running: usize,
}

struct Entry {
    spec: Arc<JobSpec>,
    state: JobState,
    stage: String,
    fraction: f32,
    message: String,
    queued_at: SystemTime,
    queued_instant: Instant,
    started: Option<(SystemTime, Instant)>,
    finished: Option<(SystemTime, Instant)>,
    stage_started: Option<Instant>,
    stages: Vec<StageTiming>,
    output: Option<JobOutput>,
    failure: Option<JobFailure>,
    cancel: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl Entry {
    fn new(spec: JobSpec, queued_at: SystemTime, queued_instant: Instant) -> Entry {
        Entry {
            spec: Arc::new(spec),
            state: JobState::Queued,
            stage: String::new(),
            fraction: 0.0,
            message: String::new(),
            queued_at,
            queued_instant,
            started: None,
            finished: None,
            stage_started: None,
            stages: Vec::new(),
            output: None,
            failure: None,
            cancel: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
        }
    }

    fn snapshot(&self, id: JobId) -> JobSnapshot {
        let now = Instant::now();
        let end = self.finished.map_or(now, |(_, i)| i);
        let queue_end = self.started.map_or(end, |(_, i)| i);
        JobSnapshot {
            id,
            kind: self.spec.kind(),
            label: self.spec.label.clone(),
            state: self.state,
            stage: self.stage.clone(),
            fraction: self.fraction,
            message: self.message.clone(),
            queued_at: self.queued_at,
            started_at: self.started.map(|(t, _)| t),
            finished_at: self.finished.map(|(t, _)| t),
            queue_secs: secs(queue_end.saturating_duration_since(self.queued_instant)),
            run_secs: self
                .started
                .map(|(_, start)| secs(end.saturating_duration_since(start))),
            stages: self.stages.clone(),
            output: self.output.clone(),
            failure: self.failure.clone(),
        }
    }

    /// Closes the open stage's timing.
    fn close_stage(&mut self, now: Instant) {
        if let Some(start) = self.stage_started.take()
            && !self.stage.is_empty()
        {
            self.stages.push(StageTiming {
                stage: self.stage.clone(),
                duration_secs: secs(now.saturating_duration_since(start)),
            });
        }
    }
}

/// How a run ended, before it is recorded.
enum Outcome {
    Succeeded(JobOutput),
    Failed(JobFailure),
    Cancelled,
}

impl Engine {
    /// An engine with its own small tokio runtime (threads `orfeas-jobs`).
    pub fn new(config: EngineConfig, history: Option<Arc<History>>) -> Result<Engine, EngineError> {
        validate(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Runners are the only blocking work; a timed-out runner may hold a
            // thread (and its slot) until it notices the cancel flag.
            .max_blocking_threads(config.concurrency + 2)
            .thread_name("orfeas-jobs")
            .enable_all()
            .build()
            .map_err(EngineError::Runtime)?;
        let inner = Inner::new(config, history, runtime.handle().clone())?;
        let owned = OwnedRuntime {
            runtime: Some(runtime),
            inner: Arc::downgrade(&inner),
        };
        Ok(Engine {
            inner,
            _runtime: Some(Arc::new(owned)),
        })
    }

    /// An engine on an existing runtime (which must have time enabled when a
    /// job timeout is set).
    pub fn with_handle(
        config: EngineConfig,
        history: Option<Arc<History>>,
        handle: tokio::runtime::Handle,
    ) -> Result<Engine, EngineError> {
        validate(&config)?;
        Ok(Engine {
            inner: Inner::new(config, history, handle)?,
            _runtime: None,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn history(&self) -> Option<&Arc<History>> {
        self.inner.history.as_ref()
    }

    /// Sets the runner for `kind` (replacing any earlier one for new jobs).
    pub fn register(&self, kind: JobKind, runner: Arc<dyn JobRunner>) {
        self.inner.runners.write().insert(kind, runner);
    }

    /// The job kinds a runner is registered for, in [`JobKind::ALL`] order.
    pub fn registered_kinds(&self) -> Vec<JobKind> {
        let runners = self.inner.runners.read();
        JobKind::ALL
            .into_iter()
            .filter(|k| runners.contains_key(k))
            .collect()
    }

    /// Adds an observer; it sees events from now on.
    pub fn add_observer(&self, observer: Arc<dyn JobObserver>) {
        self.inner.observers.write().push(observer);
    }

    /// Whether this engine would take `spec` now: a runner is registered for
    /// its kind and admits it (see [`JobRunner::admit`]). Queues nothing.
    pub fn admit(&self, spec: &JobSpec) -> Result<(), EngineError> {
        let runner = self
            .inner
            .runners
            .read()
            .get(&spec.kind())
            .cloned()
            .ok_or(EngineError::NoRunner(spec.kind()))?;
        runner.admit(spec).map_err(EngineError::Refused)
    }

    /// Queues a job. It is recorded in the history (state `queued`) before
    /// this returns, so an accepted job survives a crash.
    pub fn submit(&self, spec: JobSpec) -> Result<JobId, EngineError> {
        let inner = &self.inner;
        if !inner.accepting.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        let runner = inner
            .runners
            .read()
            .get(&spec.kind())
            .cloned()
            .ok_or(EngineError::NoRunner(spec.kind()))?;
        runner.admit(&spec).map_err(EngineError::Refused)?;
        {
            let mut table = inner.table.lock();
            if table.queued + table.reserved >= inner.config.queue_capacity {
                return Err(EngineError::QueueFull {
                    capacity: inner.config.queue_capacity,
                });
            }
            table.reserved += 1;
        }
        // The history write happens outside the table lock so a slow disk
        // never stalls the UI reading snapshots.
        let id = match &inner.history {
            Some(history) => {
                history.insert_job(spec.kind(), &spec.label, &spec.request.params_json())
            }
            None => Ok(JobId(inner.next_local_id.fetch_add(1, Ordering::Relaxed))),
        };
        let mut table = inner.table.lock();
        table.reserved -= 1;
        let id = id?;
        inner.enqueue(
            &mut table,
            id,
            spec,
            SystemTime::now(),
            Instant::now(),
            runner,
        );
        Ok(id)
    }

    /// Re-queues jobs the history holds as `queued` (accepted by an earlier
    /// process that stopped before running them), oldest first. Jobs whose
    /// kind has no runner stay queued. Returns how many were queued.
    pub fn requeue_from_history(&self) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let Some(history) = &inner.history else {
            return Ok(0);
        };
        if !inner.accepting.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        let records = history.queued_jobs()?;
        let runners = inner.runners.read().clone();
        let mut table = inner.table.lock();
        let mut count = 0;
        for record in records {
            if table.jobs.contains_key(&record.id) {
                continue;
            }
            let Some(runner) = runners.get(&record.kind).cloned() else {
                tracing::warn!(id = %record.id, kind = %record.kind, "no runner; job left queued");
                continue;
            };
            let queued_at = UNIX_EPOCH
                + Duration::from_millis(u64::try_from(record.created_at_ms).unwrap_or(0));
            let waited = SystemTime::now()
                .duration_since(queued_at)
                .unwrap_or_default();
            let queued_instant = Instant::now()
                .checked_sub(waited)
                .unwrap_or_else(Instant::now);
            let request = match JobRequest::from_params_json(record.kind, &record.params) {
                Ok(request) => request,
                Err(err) => {
                    // A row from another version that no longer parses: it stays
                    // in the history, marked failed, instead of running a guess.
                    tracing::warn!(id = %record.id, "stored job parameters do not parse: {err}");
                    if let Some(history) = &inner.history {
                        let message = format!(
                            "the stored parameters do not parse ({err}); submit the job again"
                        );
                        let timings = super::JobTimings::default();
                        if let Err(e) =
                            history.mark_failed(record.id, "invalid_parameter", &message, &timings)
                        {
                            tracing::warn!(id = %record.id, "cannot mark the job failed: {e}");
                        }
                    }
                    continue;
                }
            };
            let spec = JobSpec {
                request,
                label: record.label,
                batch: false,
            };
            inner.enqueue(
                &mut table,
                record.id,
                spec,
                queued_at,
                queued_instant,
                runner,
            );
            count += 1;
        }
        Ok(count)
    }

    /// Cancels a job: a queued one ends `cancelled` at once; a running one is
    /// asked to stop (its runner sees [`JobContext::is_cancelled`]) and ends
    /// `cancelled` when it returns. False when the job is unknown or finished.
    pub fn cancel(&self, id: JobId) -> bool {
        let inner = &self.inner;
        let mut table = inner.table.lock();
        let Some(entry) = table.jobs.get(&id) else {
            return false;
        };
        match entry.state {
            JobState::Queued => {
                entry.wake.notify_one();
                inner.finish(&mut table, id, Outcome::Cancelled);
                true
            }
            JobState::Running => {
                entry.cancel.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// A receiver of every job's events. Bounded: a receiver that falls more
    /// than 1024 events behind loses the oldest (`TryRecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.events.subscribe()
    }

    pub fn snapshot(&self, id: JobId) -> Option<JobSnapshot> {
        let table = self.inner.table.lock();
        table.jobs.get(&id).map(|e| e.snapshot(id))
    }

    /// Active and recently finished jobs, oldest first.
    pub fn jobs(&self) -> Vec<JobSnapshot> {
        let table = self.inner.table.lock();
        table.jobs.iter().map(|(id, e)| e.snapshot(*id)).collect()
    }

    /// Jobs running now.
    pub fn active_count(&self) -> usize {
        self.inner.table.lock().running
    }

    /// Jobs waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.inner.table.lock().queued
    }

    /// Blocks until the job has finished or `timeout` passed, and returns its
    /// snapshot then (check `state.is_terminal()`); `None` for an unknown id.
    pub fn wait(&self, id: JobId, timeout: Duration) -> Option<JobSnapshot> {
        let deadline = Instant::now() + timeout;
        let mut table = self.inner.table.lock();
        loop {
            let entry = table.jobs.get(&id)?;
            if entry.state.is_terminal() {
                return Some(entry.snapshot(id));
            }
            if self
                .inner
                .changed
                .wait_until(&mut table, deadline)
                .timed_out()
            {
                return table.jobs.get(&id).map(|e| e.snapshot(id));
            }
        }
    }

    /// Stops accepting jobs; queued jobs are not started (they stay `queued`
    /// in the history); running jobs get `timeout` to finish, are then asked
    /// to stop and get `timeout` more. Blocks meanwhile.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.accepting.store(false, Ordering::SeqCst);
        // Queued tasks waiting for a slot wake up with an error and return.
        inner.slots.close();
        let mut report = ShutdownReport::default();
        let mut table = inner.table.lock();
        let deadline = Instant::now() + timeout;
        while table.running > 0 && !inner.changed.wait_until(&mut table, deadline).timed_out() {}
        if table.running > 0 {
            for entry in table.jobs.values() {
                if entry.state == JobState::Running {
                    entry.cancel.store(true, Ordering::SeqCst);
                    report.cancelled += 1;
                }
            }
            let deadline = Instant::now() + timeout;
            while table.running > 0 && !inner.changed.wait_until(&mut table, deadline).timed_out() {
            }
        }
        report.still_running = table.running;
        report.left_queued = table.queued;
        report
    }
}

fn validate(config: &EngineConfig) -> Result<(), EngineError> {
    if config.concurrency == 0 {
        return Err(EngineError::InvalidConfig("concurrency must be at least 1"));
    }
    if config.queue_capacity == 0 {
        return Err(EngineError::InvalidConfig(
            "queue_capacity must be at least 1",
        ));
    }
    Ok(())
}

impl Inner {
    fn new(
        config: EngineConfig,
        history: Option<Arc<History>>,
        handle: tokio::runtime::Handle,
    ) -> Result<Arc<Inner>, EngineError> {
        let (events, _) = broadcast::channel(SUBSCRIBER_CAPACITY);
        let (observer_events, observer_rx) = broadcast::channel(OBSERVER_CAPACITY);
        let observers: Arc<RwLock<Vec<Arc<dyn JobObserver>>>> = Arc::default();
        spawn_observer_thread(observer_rx, Arc::clone(&observers))?;
        Ok(Arc::new(Inner {
            slots: Arc::new(Semaphore::new(config.concurrency)),
            config,
            handle,
            history,
            runners: RwLock::default(),
            observers,
            table: Mutex::default(),
            changed: Condvar::new(),
            events,
            observer_events,
            accepting: AtomicBool::new(true),
            next_local_id: AtomicI64::new(1),
        }))
    }

    /// Adds a queued entry, announces it and starts its task.
    fn enqueue(
        self: &Arc<Self>,
        table: &mut Table,
        id: JobId,
        spec: JobSpec,
        queued_at: SystemTime,
        queued_instant: Instant,
        runner: Arc<dyn JobRunner>,
    ) {
        let entry = Entry::new(spec, queued_at, queued_instant);
        let wake = Arc::clone(&entry.wake);
        table.jobs.insert(id, entry);
        table.queued += 1;
        self.emit(table, id, JobEventKind::Queued);
        let inner = Arc::clone(self);
        self.handle.spawn(inner.drive(id, runner, wake));
    }

    /// One job's task: wait for a slot, run, record.
    async fn drive(self: Arc<Self>, id: JobId, runner: Arc<dyn JobRunner>, wake: Arc<Notify>) {
        let permit = tokio::select! {
            biased;
            // Cancelled while queued: `cancel` already recorded it.
            () = wake.notified() => return,
            permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Closed by shutdown: the job stays queued for a restart.
                Err(_) => return,
            },
        };
        let (spec, cancel) = {
            let mut table = self.table.lock();
            if !self.accepting.load(Ordering::SeqCst) {
                return;
            }
            let Some(entry) = table.jobs.get_mut(&id) else {
                return;
            };
            if entry.state != JobState::Queued {
                return;
            }
            if let Some(history) = &self.history
                && let Err(err) = history.mark_running(id)
            {
                tracing::warn!(%id, "cannot record job start: {err:#}");
            }
            let now = Instant::now();
            entry.state = JobState::Running;
            entry.started = Some((SystemTime::now(), now));
            let spec = Arc::clone(&entry.spec);
            let cancel = Arc::clone(&entry.cancel);
            table.queued -= 1;
            table.running += 1;
            self.emit(&table, id, JobEventKind::Started);
            (spec, cancel)
        };

        let ctx = JobContext {
            id,
            cancelled: Arc::clone(&cancel),
            engine: Arc::downgrade(&self),
        };
        let kind = spec.kind();
        let mut run = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| runner.run(&spec, &ctx)))
        });
        let joined = match self.config.job_timeout {
            None => (&mut run).await,
            Some(limit) => match tokio::time::timeout(limit, &mut run).await {
                Ok(joined) => joined,
                Err(_elapsed) => {
                    cancel.store(true, Ordering::SeqCst);
                    let failure = JobFailure::new(
                        "timeout",
                        format!(
                            "the job ran longer than the {:.0} s limit and was stopped; \
                             try a lower quality setting or raise the job timeout",
                            limit.as_secs_f64()
                        ),
                    );
                    self.finish(&mut self.table.lock(), id, Outcome::Failed(failure));
                    // Keep the slot until the runner really returns, so the
                    // concurrency limit holds for the CPU/GPU too.
                    let _ = run.await;
                    drop(permit);
                    return;
                }
            },
        };
        let outcome = match joined {
            Ok(Ok(Ok(output))) => Outcome::Succeeded(output),
            Ok(Ok(Err(_))) if cancel.load(Ordering::SeqCst) => Outcome::Cancelled,
            Ok(Ok(Err(failure))) => Outcome::Failed(failure),
            Ok(Err(payload)) => Outcome::Failed(panic_failure(kind, &*payload)),
            Err(join) => Outcome::Failed(JobFailure::new(
                "panic",
                format!("the {kind} job stopped unexpectedly ({join}); run it again"),
            )),
        };
        self.finish(&mut self.table.lock(), id, outcome);
        drop(permit);
    }

    /// Records a terminal state (history first, then memory) and announces it.
    /// Does nothing when the job already ended (a timeout beat the runner).
    fn finish(&self, table: &mut Table, id: JobId, outcome: Outcome) {
        let Some(entry) = table.jobs.get_mut(&id) else {
            return;
        };
        let was = entry.state;
        if was.is_terminal() {
            return;
        }
        let now = Instant::now();
        entry.finished = Some((SystemTime::now(), now));
        entry.close_stage(now);
        let timings = entry.snapshot(id).timings();
        let (state, event) = match outcome {
            Outcome::Succeeded(output) => {
                if let Some(history) = &self.history
                    && let Err(err) = history.mark_succeeded(id, &output, &timings)
                {
                    tracing::warn!(%id, "cannot record job success: {err:#}");
                }
                entry.fraction = 1.0;
                entry.output = Some(output.clone());
                (JobState::Succeeded, JobEventKind::Succeeded(output))
            }
            Outcome::Failed(failure) => {
                if let Some(history) = &self.history
                    && let Err(err) =
                        history.mark_failed(id, failure.reason, &failure.message, &timings)
                {
                    tracing::warn!(%id, "cannot record job failure: {err:#}");
                }
                entry.failure = Some(failure.clone());
                (JobState::Failed, JobEventKind::Failed(failure))
            }
            Outcome::Cancelled => {
                if let Some(history) = &self.history
                    && let Err(err) = history.mark_cancelled(id, &timings)
                {
                    tracing::warn!(%id, "cannot record job cancellation: {err:#}");
                }
                (JobState::Cancelled, JobEventKind::Cancelled)
            }
        };
        entry.state = state;
        match was {
            JobState::Queued => table.queued -= 1,
            _ => table.running -= 1,
        }
        self.emit(table, id, event);
        table.finished.push_back(id);
        while table.finished.len() > self.config.keep_finished {
            if let Some(old) = table.finished.pop_front() {
                table.jobs.remove(&old);
            }
        }
        self.changed.notify_all();
    }

    /// Called through [`JobContext::progress`] on the runner's thread.
    pub(super) fn progress(&self, id: JobId, stage: &str, fraction: f32, message: &str) {
        let mut table = self.table.lock();
        let Some(entry) = table.jobs.get_mut(&id) else {
            return;
        };
        if entry.state != JobState::Running {
            return;
        }
        let fraction = if fraction.is_nan() {
            entry.fraction
        } else {
            fraction.clamp(0.0, 1.0).max(entry.fraction)
        };
        if entry.stage != stage {
            let now = Instant::now();
            entry.close_stage(now);
            entry.stage = stage.to_owned();
            entry.stage_started = Some(now);
        }
        entry.fraction = fraction;
        message.clone_into(&mut entry.message);
        self.emit(
            &table,
            id,
            JobEventKind::Progress {
                stage: stage.to_owned(),
                fraction,
                message: message.to_owned(),
            },
        );
    }

    /// Publishes an event for `id`. Must be called with the table locked (it
    /// is: `table` is the guarded value) so events keep the order of changes.
    fn emit(&self, table: &Table, id: JobId, event: JobEventKind) {
        let Some(entry) = table.jobs.get(&id) else {
            return;
        };
        let event = JobEvent {
            id,
            kind: entry.spec.kind(),
            event,
            at: SystemTime::now(),
        };
        // An error only means nobody is subscribed right now.
        let _ = self.events.send(event.clone());
        let _ = self
            .observer_events
            .send(Arc::new((event, entry.snapshot(id))));
    }

    fn cancel_running(&self) {
        let table = self.table.lock();
        for entry in table.jobs.values() {
            if entry.state == JobState::Running {
                entry.cancel.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Observers run on their own thread so a slow one never holds the engine's
/// lock, and so they may call back into the engine.
fn spawn_observer_thread(
    mut rx: broadcast::Receiver<Arc<(JobEvent, JobSnapshot)>>,
    observers: Arc<RwLock<Vec<Arc<dyn JobObserver>>>>,
) -> Result<(), EngineError> {
    std::thread::Builder::new()
        .name("orfeas-job-events".into())
        .spawn(move || {
            loop {
                match rx.blocking_recv() {
                    Ok(item) => {
                        let (event, snapshot) = &*item;
                        let current = observers.read().clone();
                        for observer in current {
                            let call = AssertUnwindSafe(|| observer.on_event(event, snapshot));
                            if std::panic::catch_unwind(call).is_err() {
                                tracing::error!("a job observer panicked; event skipped for it");
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        tracing::warn!(lost, "job observers fell behind; events lost");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
        .map(|_| ())
        .map_err(EngineError::Runtime)
}

fn panic_failure(kind: JobKind, payload: &(dyn std::any::Any + Send)) -> JobFailure {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no details".to_owned());
    JobFailure::new(
        "panic",
        format!(
            "the {kind} job crashed ({detail}); this is a bug in ORFEAS, please report it. \
             Other jobs are not affected; you can run it again"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_config_is_rejected_with_a_reason() {
        let config = EngineConfig {
            concurrency: 0,
            ..EngineConfig::default()
        };
        let err = Engine::new(config, None).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("concurrency")));
    }

    #[test]
    fn panic_payloads_become_readable_messages() {
        let failure = panic_failure(JobKind::ImageTo3d, &"boom");
        assert_eq!(failure.reason, "panic");
        assert!(failure.message.contains("boom"));
        let failure = panic_failure(JobKind::ImageTo3d, &String::from("kaput"));
        assert!(failure.message.contains("kaput"));
    }
}
