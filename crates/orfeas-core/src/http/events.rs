//! `GET /api/jobs/{id}/events`: one job's life as server-sent events.
//!
//! The stream opens with `snapshot` (the job as `GET /api/jobs/{id}` shows
//! it), so a late subscriber sees a finished job at once; then `state`
//! (running), `stage` (a new stage name) and `progress` (stage, fraction,
//! message) as the engine reports them; and ends after one of `done`,
//! `failed` or `cancelled`, whose data is the final job. Step previews are
//! not sent: runners hand them to the GUI only, not to the engine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::api::{Api, no_job};
use super::validate::ApiError;
use crate::jobs::{JobEvent, JobEventKind, JobId, JobState};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event stream of job `id`; 404 when there is no such job.
pub(super) async fn stream(
    api: Arc<Api>,
    id: JobId,
    shutdown: watch::Receiver<bool>,
) -> Result<Response, ApiError> {
    if api.fleet().is_some() {
        return fleet_stream(api, id, shutdown).await;
    }
    // Subscribed before the snapshot is taken, so no change falls between
    // the two; a change seen twice (in the snapshot and as an event) only
    // repeats a progress value, which never goes backwards.
    let events = api.engine().subscribe();
    let first = api
        .blocking(move |api| api.job_view(id))
        .await?
        .ok_or_else(|| no_job(id.0))?;
    let state = first
        .get("state")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<JobState>().ok());
    let tracked = api.engine().snapshot(id).is_some();
    let last_stage = first["progress"]["stage"].as_str().unwrap_or("").to_owned();
    let mut stream = JobStream {
        api,
        id,
        events,
        shutdown,
        pending: VecDeque::new(),
        last_stage,
        done: false,
    };
    stream.push("snapshot", &first);
    match state {
        Some(state) if state.is_terminal() => stream.finish(terminal_name(state), first),
        // The engine no longer knows it (a record left by an earlier run):
        // nothing will change, so the snapshot is all there is.
        _ if !tracked => stream.done = true,
        _ => {}
    }
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next()
            .await
            .map(|event| (Ok::<Event, Infallible>(event), s))
    });
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The SSE event name that ends a job in `state`.
fn terminal_name(state: JobState) -> &'static str {
    match state {
        JobState::Succeeded => "done",
        JobState::Cancelled => "cancelled",
        _ => "failed",
    }
}

struct JobStream {
    api: Arc<Api>,
    id: JobId,
    events: broadcast::Receiver<JobEvent>,
    shutdown: watch::Receiver<bool>,
    pending: VecDeque<Event>,
    last_stage: String,
    /// Set once the terminal event is queued: the stream ends after `pending`.
    done: bool,
}

impl JobStream {
    fn push(&mut self, name: &'static str, data: &Value) {
        self.pending
            .push_back(Event::default().event(name).data(data.to_string()));
    }

    fn finish(&mut self, name: &'static str, job: Value) {
        self.push(name, &job);
        self.done = true;
    }

    /// The job as it is now (for the terminal event).
    fn view(&self) -> Value {
        self.api
            .engine()
            .snapshot(self.id)
            .map_or_else(|| json!({ "id": self.id }), |s| self.api.snapshot_view(&s))
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let received = tokio::select! {
                () = super::server::stopping(&mut self.shutdown) => return None,
                received = self.events.recv() => received,
            };
            match received {
                Ok(event) if event.id == self.id => self.translate(event.event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    tracing::debug!("job {} event stream lost {lost} events", self.id);
                    self.resync();
                }
                // The engine is gone: nothing more will come.
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn translate(&mut self, event: JobEventKind) {
        match event {
            JobEventKind::Queued => {}
            JobEventKind::Started => self.push("state", &json!({ "state": "running" })),
            JobEventKind::Progress {
                stage,
                fraction,
                message,
            } => self.progress(stage, fraction, &message),
            JobEventKind::Succeeded(_) => self.finish("done", self.view()),
            JobEventKind::Failed(_) => self.finish("failed", self.view()),
            JobEventKind::Cancelled => self.finish("cancelled", self.view()),
        }
    }

    fn progress(&mut self, stage: String, fraction: f32, message: &str) {
        if stage != self.last_stage {
            self.push("stage", &json!({ "stage": stage }));
            self.last_stage.clone_from(&stage);
        }
        let message = self.api.redact(message);
        self.push(
            "progress",
            &json!({ "stage": stage, "fraction": fraction, "message": message }),
        );
    }

    /// After lost events: the current state stands in for what was missed.
    fn resync(&mut self) {
        let Some(snapshot) = self.api.engine().snapshot(self.id) else {
            self.done = true;
            return;
        };
        if snapshot.state.is_terminal() {
            self.finish(
                terminal_name(snapshot.state),
                self.api.snapshot_view(&snapshot),
            );
        } else {
            self.progress(snapshot.stage, snapshot.fraction, &snapshot.message);
        }
    }
}

/// How often a fleet job's record is read for its event stream.
const FLEET_POLL: Duration = Duration::from_millis(500);

/// The same events for a fleet job, from its record (which any worker may
/// change): read every [`FLEET_POLL`], and each change becomes `state`,
/// `stage` and `progress` events, the end `done`, `failed` or `cancelled`.
async fn fleet_stream(
    api: Arc<Api>,
    id: JobId,
    shutdown: watch::Receiver<bool>,
) -> Result<Response, ApiError> {
    let first = api
        .blocking(move |api| api.job_view(id))
        .await?
        .ok_or_else(|| no_job(id.0))?;
    let mut poll = FleetPoll {
        api,
        id,
        shutdown,
        pending: VecDeque::new(),
        last: Value::Null,
        done: false,
    };
    poll.pending
        .push_back(Event::default().event("snapshot").data(first.to_string()));
    poll.compare(first);
    let body = futures_util::stream::unfold(poll, |mut p| async move {
        p.next()
            .await
            .map(|event| (Ok::<Event, Infallible>(event), p))
    });
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

struct FleetPoll {
    api: Arc<Api>,
    id: JobId,
    shutdown: watch::Receiver<bool>,
    pending: VecDeque<Event>,
    /// The view last compared (`Null` before the first).
    last: Value,
    done: bool,
}

impl FleetPoll {
    fn push(&mut self, name: &'static str, data: &Value) {
        self.pending
            .push_back(Event::default().event(name).data(data.to_string()));
    }

    /// Queues the events that lead from the last view to `now`.
    fn compare(&mut self, now: Value) {
        let state = now["state"]
            .as_str()
            .and_then(|s| s.parse::<JobState>().ok());
        if let Some(state) = state.filter(|s| s.is_terminal()) {
            self.push(terminal_name(state), &now);
            self.done = true;
            return;
        }
        if !self.last.is_null() {
            if now["state"] != self.last["state"] {
                self.push("state", &json!({ "state": now["state"] }));
            }
            if now["progress"]["stage"] != self.last["progress"]["stage"] {
                self.push("stage", &json!({ "stage": now["progress"]["stage"] }));
            }
            if now["progress"] != self.last["progress"] {
                let progress = now["progress"].clone();
                self.push("progress", &progress);
            }
        }
        self.last = now;
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                () = super::server::stopping(&mut self.shutdown) => return None,
                () = tokio::time::sleep(FLEET_POLL) => {}
            }
            let id = self.id;
            match self.api.blocking(move |api| api.job_view(id)).await {
                Ok(Some(now)) => self.compare(now),
                // The record is gone: nothing more will come.
                Ok(None) => return None,
                // The queue is unreachable for now: try again at the next poll.
                Err(_) => {}
            }
        }
    }
}
