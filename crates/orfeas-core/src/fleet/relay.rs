//! Running a node's jobs on the fleet: a [`JobRunner`] for the local engine
//! that hands each job to the fleet queue, reports the remote progress as its
//! own and writes the result where the job asked for it.
//!
//! With it registered in place of the local runners, everything built on the
//! engine (the studio's Create tab, its job list, the Gallery and the history,
//! `orfeas image-to-3d --queue`) runs on the fleet unchanged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Fleet, FleetError, Priority, shippable};
use crate::jobs::{JobContext, JobFailure, JobOutput, JobRequest, JobRunner, JobSpec, JobState};
use crate::telemetry::metrics::FAILURE_REASONS;

/// How often the remote record is read while the job runs.
const POLL: Duration = Duration::from_millis(250);

/// Hands jobs to the fleet (see the module doc): a batch job
/// ([`JobSpec::batch`]) at batch priority, any other at interactive.
pub struct FleetRelay {
    fleet: Arc<Fleet>,
}

impl FleetRelay {
    pub fn new(fleet: Arc<Fleet>) -> FleetRelay {
        FleetRelay { fleet }
    }
}

/// The local failure for a fleet error.
fn failure(e: &FleetError) -> JobFailure {
    let reason = match e {
        FleetError::NotShippable(_) | FleetError::Input { .. } => "invalid_input",
        FleetError::Output { .. } => "io",
        _ => "other",
    };
    JobFailure::new(reason, e.to_string())
}

/// The engine's bounded reason for a reason a worker reported.
fn bounded(reason: &str) -> &'static str {
    FAILURE_REASONS
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or("other")
}

fn output_path(spec: &JobSpec) -> &Path {
    match &spec.request {
        JobRequest::ImageTo3d(r) => &r.output,
        JobRequest::TextToImage(j) => &j.output,
    }
}

impl JobRunner for FleetRelay {
    fn admit(&self, spec: &JobSpec) -> Result<(), JobFailure> {
        shippable(spec).map_err(|e| failure(&e))
    }

    fn run(&self, spec: &JobSpec, ctx: &JobContext) -> Result<JobOutput, JobFailure> {
        ctx.progress("queue", 0.0, "waiting in the fleet queue");
        let priority = if spec.batch {
            Priority::Batch
        } else {
            Priority::Interactive
        };
        let id = self.fleet.submit(spec, priority).map_err(|e| failure(&e))?;
        let mut last = (String::new(), -1.0_f32);
        let record = loop {
            if ctx.is_cancelled() {
                // A queued job is withdrawn; one a worker has started runs to
                // its end there, and its result is left in the fleet.
                let _ = self.fleet.cancel(id);
                return Err(JobFailure::cancelled());
            }
            match self.fleet.record(id) {
                Ok(Some(record)) if record.state.is_terminal() => break record,
                Ok(Some(record)) => {
                    let (stage, message) = match (&record.worker, record.state) {
                        (Some(worker), JobState::Running) => {
                            let stage = if record.stage.is_empty() {
                                "remote".to_owned()
                            } else {
                                record.stage.clone()
                            };
                            (stage, format!("on {worker}"))
                        }
                        _ => ("queue".to_owned(), "waiting in the fleet queue".to_owned()),
                    };
                    if stage != last.0 || record.fraction != last.1 {
                        ctx.progress(&stage, record.fraction, &message);
                        last = (stage, record.fraction);
                    }
                }
                Ok(None) => {
                    return Err(JobFailure::new(
                        "other",
                        format!("the fleet lost the record of job {id}"),
                    ));
                }
                // NATS is moving to another server: keep asking.
                Err(e) => tracing::debug!(job = %id, "cannot read the fleet record: {e}"),
            }
            std::thread::sleep(POLL);
        };
        match record.state {
            JobState::Succeeded => {
                let files = self
                    .fleet
                    .save_results(id, &record.files, output_path(spec))
                    .map_err(|e| failure(&e))?;
                if files.is_empty() {
                    return Err(JobFailure::new(
                        "other",
                        format!("job {id} finished on the fleet without a file"),
                    ));
                }
                Ok(JobOutput {
                    files,
                    quality: record.quality,
                    summary: record.summary,
                })
            }
            JobState::Cancelled => Err(JobFailure::cancelled()),
            _ => {
                let error = record.error.unwrap_or_else(|| super::FleetFailure {
                    reason: "other".into(),
                    message: "the job failed on the fleet".into(),
                });
                Err(JobFailure::new(bounded(&error.reason), error.message))
            }
        }
    }
}

/// Makes `engine` run every job kind on the fleet (replacing its local runners).
pub fn register_relay(engine: &crate::jobs::Engine, fleet: &Arc<Fleet>) {
    for kind in crate::jobs::JobKind::ALL {
        engine.register(kind, Arc::new(FleetRelay::new(Arc::clone(fleet))));
    }
}
