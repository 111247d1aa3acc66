//! Job engine: typed jobs on tokio with a concurrency limit, progress, cancellation.
//!
//! A [`JobSpec`] is submitted to the [`Engine`], recorded in the history as
//! `queued`, waits for a slot (the concurrency limit), and runs on a blocking
//! thread through the [`JobRunner`] registered for its [`JobKind`]. Every
//! state change is published as a [`JobEvent`] to subscribers (the GUI, SSE)
//! and [`JobObserver`]s (telemetry), in order per job.

mod engine;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use engine::{Engine, EngineConfig, EngineError, ShutdownReport};

pub use crate::request::JobRequest;

/// A job's id: the history row id when the engine has a history, otherwise a
/// counter local to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a job makes. Also a bounded metric label (`as_str`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    ImageTo3d,
    TextToImage,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::ImageTo3d, JobKind::TextToImage];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::ImageTo3d => "image_to_3d",
            JobKind::TextToImage => "text_to_image",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown job kind or state name.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} '{name}'")]
pub struct ParseNameError {
    what: &'static str,
    name: String,
}

impl std::str::FromStr for JobKind {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "job kind",
                name: s.to_owned(),
            })
    }
}

/// Where a job is in its life. `Interrupted` only comes from the history: the
/// process stopped while the job was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    /// True once the job will not change any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseNameError {
                what: "job state",
                name: s.to_owned(),
            })
    }
}

/// What to run: a typed request (see [`crate::request`]), never a loose value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub request: JobRequest,
    /// Short human text for lists: a file name or a prompt excerpt.
    pub label: String,
    /// One of many submitted together (a folder batch): on the fleet it waits
    /// behind interactive jobs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

impl JobSpec {
    /// The spec for `request`, labelled with its file name or prompt start.
    pub fn new(request: JobRequest) -> JobSpec {
        JobSpec {
            label: request.label(),
            request,
            batch: false,
        }
    }

    pub fn kind(&self) -> JobKind {
        self.request.kind()
    }
}

impl From<crate::request::ImageTo3dRequest> for JobSpec {
    fn from(r: crate::request::ImageTo3dRequest) -> JobSpec {
        JobSpec::new(JobRequest::ImageTo3d(r))
    }
}

impl From<crate::request::TextToImageJob> for JobSpec {
    fn from(j: crate::request::TextToImageJob) -> JobSpec {
        JobSpec::new(JobRequest::TextToImage(j))
    }
}

/// What a successful job produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    pub files: Vec<PathBuf>,
    /// Quality score 0..1, when the job computes one.
    pub quality: Option<f32>,
    /// Kind-specific facts for display (vertex count, seed...).
    pub summary: serde_json::Value,
}

/// Why a job failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobFailure {
    /// A bounded label fit for metrics ("invalid_image", "panic", "timeout").
    pub reason: &'static str,
    /// For the user: what went wrong and what to do.
    pub message: String,
}

impl JobFailure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> JobFailure {
        JobFailure {
            reason,
            message: message.into(),
        }
    }

    /// What a runner returns when it stops because [`JobContext::is_cancelled`].
    pub fn cancelled() -> JobFailure {
        JobFailure::new("cancelled", "the job was cancelled")
    }
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

/// Runs one kind of job. Called on a blocking thread; may take seconds to
/// minutes. Should poll [`JobContext::is_cancelled`] between stages and
/// return [`JobFailure::cancelled`] promptly, writing no partial files.
pub trait JobRunner: Send + Sync + 'static {
    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure>;

    /// Called by [`Engine::submit`] before the job is queued: refuse here what
    /// can be known at once (the model is not installed, the method is not
    /// built in) so the caller hears it now, not after waiting in the queue.
    fn admit(&self, _spec: &JobSpec) -> Result<(), JobFailure> {
        Ok(())
    }
}

/// Any `Fn(&JobSpec, &JobContext) -> Result<JobOutput, JobFailure>` is a runner.
impl<F> JobRunner for F
where
    F: Fn(&JobSpec, &JobContext) -> Result<JobOutput, JobFailure> + Send + Sync + 'static,
{
    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
        self(spec, ctx)
    }
}

/// A running job's line back to the engine.
pub struct JobContext {
    id: JobId,
    cancelled: Arc<AtomicBool>,
    engine: std::sync::Weak<engine::Inner>,
}

impl JobContext {
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Reports progress. `fraction` is the whole job's progress in 0..=1; the
    /// engine clamps it and never lets it go backwards. A new `stage` name
    /// closes the previous stage's timing.
    pub fn progress(&self, stage: &str, fraction: f32, message: &str) {
        if let Some(engine) = self.engine.upgrade() {
            engine.progress(self.id, stage, fraction, message);
        }
    }

    /// True once the user (or a timeout, or shutdown) asked the job to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `Err(JobFailure::cancelled())` when cancelled, for `?` between stages.
    pub fn check_cancelled(&self) -> Result<(), JobFailure> {
        if self.is_cancelled() {
            Err(JobFailure::cancelled())
        } else {
            Ok(())
        }
    }
}

/// What happened to a job.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    Queued,
    Started,
    Progress {
        stage: String,
        fraction: f32,
        message: String,
    },
    Succeeded(JobOutput),
    Failed(JobFailure),
    Cancelled,
}

impl JobEventKind {
    /// True for the last event a job gets.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEventKind::Succeeded(_) | JobEventKind::Failed(_) | JobEventKind::Cancelled
        )
    }
}

/// One event, as published to subscribers and observers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobEvent {
    pub id: JobId,
    pub kind: JobKind,
    pub event: JobEventKind,
    #[serde(serialize_with = "ser_time_ms")]
    pub at: SystemTime,
}

/// A job's state at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSnapshot {
    pub id: JobId,
    pub kind: JobKind,
    pub label: String,
    pub state: JobState,
    /// The stage last reported (empty before the first progress).
    pub stage: String,
    /// Whole-job progress 0..=1, non-decreasing.
    pub fraction: f32,
    pub message: String,
    #[serde(serialize_with = "ser_time_ms")]
    pub queued_at: SystemTime,
    #[serde(serialize_with = "ser_opt_time_ms")]
    pub started_at: Option<SystemTime>,
    #[serde(serialize_with = "ser_opt_time_ms")]
    pub finished_at: Option<SystemTime>,
    /// Time waited for a slot (so far, while queued).
    pub queue_secs: f64,
    /// Time running (so far, while running); `None` before the start.
    pub run_secs: Option<f64>,
    /// Closed stages with their durations, in report order.
    pub stages: Vec<StageTiming>,
    pub output: Option<JobOutput>,
    pub failure: Option<JobFailure>,
}

impl JobSnapshot {
    /// The timings as stored in the history.
    pub fn timings(&self) -> JobTimings {
        JobTimings {
            queue_secs: Some(self.queue_secs),
            run_secs: self.run_secs,
            stages: self.stages.clone(),
        }
    }
}

/// Sees every event with the job's snapshot right after it. Called on the
/// engine's event thread, in order; must return quickly (update a metric,
/// push to a bounded channel). May call back into the engine.
pub trait JobObserver: Send + Sync {
    fn on_event(&self, event: &JobEvent, snapshot: &JobSnapshot);
}

fn ser_time_ms<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(system_time_ms(*t))
}

fn ser_opt_time_ms<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&system_time_ms(*t)),
        None => s.serialize_none(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Time spent in one reported stage of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub duration_secs: f64,
}

/// Timings recorded with a finished job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTimings {
    /// Time from submission to start.
    pub queue_secs: Option<f64>,
    /// Time the runner took.
    pub run_secs: Option<f64>,
    /// Per-stage times, in the order the runner reported the stages.
    pub stages: Vec<StageTiming>,
}

/// A `SystemTime` as unix epoch milliseconds (0 before the epoch).
pub fn system_time_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
