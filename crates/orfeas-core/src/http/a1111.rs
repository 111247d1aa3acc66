//! `POST /sdapi/v1/txt2img`, the synchronous text→image call of A1111's web
//! UI API, so its clients (`webuiapi`, scripts, plug-ins) work unchanged.
//!
//! The body becomes a [`TextToImageRequest`] in `request::a1111`, the one
//! conversion; the job runs on the engine like any other, and the answer
//! waits for it: `{"images": [base64 PNG...], "parameters": {...}, "info":
//! "<JSON text>"}`, A1111's shape.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::api::{Api, internal, mime_is, random_seed};
use super::validate::{self, ApiError};
use super::{Reply, RequestInfo};
use crate::jobs::{Engine, JobEvent, JobId, JobSnapshot, JobState};
use crate::request::{A1111Txt2Img, SchedulerKind, TextToImageRequest, sampler_to_a1111};

/// Answers one txt2img call: queue the job, wait for it, return its pictures.
pub(super) async fn txt2img(
    api: Arc<Api>,
    request: &RequestInfo,
    body: Body,
) -> Result<Response, ApiError> {
    if api.fleet().is_some() {
        return Err(ApiError::new(
            501,
            "not_in_queue_mode",
            "this node sends jobs to the fleet queue, and the synchronous txt2img call is not \
             relayed there yet; use POST /api/text-to-image and GET /api/jobs/{id}/result",
        ));
    }
    // A1111 takes JSON; clients that send no Content-Type at all are let through.
    if let Some(ct) = request.header("Content-Type")
        && !mime_is(ct, "application/json")
    {
        return Err(ApiError::invalid(
            415,
            "unsupported_media_type",
            "body",
            "send the parameters as JSON with `Content-Type: application/json`",
        ));
    }
    api.check_queue()?;
    let body = api.read_body(request, body).await?;
    let parsed = A1111Txt2Img::from_json(&body)
        .map_err(|e| ApiError::invalid(400, "invalid_json", "body", e.message))?;
    let t2i = parsed.into_request(random_seed).map_err(|e| {
        if e.field == "other" {
            // An A1111 option ORFEAS does not do (hires fix, face restoration...).
            ApiError::invalid(422, "unsupported_option", "other", e.message)
        } else {
            validate::request_error(e)
        }
    })?;
    // Subscribed before the submission, so the job's end cannot be missed.
    let events = api.engine().subscribe();
    let submitted = t2i.clone();
    let id = api
        .blocking(move |api| api.submit_text_to_image(t2i))
        .await?;
    let timeout = api.txt2img_timeout();
    let finished = wait_terminal(api.engine(), id, events, timeout)
        .await
        .ok_or_else(|| internal(format!("job {id} vanished while txt2img waited for it")))?;
    match finished.state {
        JobState::Succeeded => {
            let files = finished
                .output
                .as_ref()
                .map(|o| o.files.clone())
                .unwrap_or_default();
            let images = api
                .blocking(move |_| {
                    files
                        .iter()
                        .map(|f| {
                            std::fs::read(f)
                                .map(|bytes| {
                                    base64::engine::general_purpose::STANDARD.encode(bytes)
                                })
                                .map_err(|e| {
                                    internal(format!("cannot read a generated picture: {e}"))
                                })
                        })
                        .collect::<Result<Vec<String>, ApiError>>()
                })
                .await?;
            Ok(Reply::json(200, &answer(&submitted, &finished, images)).into_response())
        }
        JobState::Cancelled => Err(ApiError::new(
            409,
            "job_cancelled",
            format!("job {id} was cancelled before its picture was ready"),
        )),
        JobState::Failed | JobState::Interrupted => {
            let (reason, message) = finished
                .failure
                .as_ref()
                .map_or(("other", String::new()), |f| {
                    (f.reason, api.redact(&f.message))
                });
            Err(match reason {
                "model_missing" | "model_unavailable" | "device" => {
                    ApiError::new(503, "model_unavailable", message)
                }
                "invalid_parameter" | "invalid_input" => {
                    ApiError::new(400, "invalid_parameter", message)
                }
                "timeout" => ApiError::new(504, "generation_timeout", message),
                _ => ApiError::new(
                    500,
                    "generation_failed",
                    format!("the generation failed ({reason}): {message}"),
                ),
            })
        }
        JobState::Queued | JobState::Running => Err(ApiError::new(
            504,
            "timeout",
            format!(
                "the picture was not ready within {} s; the job goes on: follow it at /api/jobs/{id}",
                timeout.as_secs()
            ),
        )),
    }
}

/// The job's snapshot once it is terminal, or as it is when `timeout` passed;
/// `None` when the engine does not know it.
async fn wait_terminal(
    engine: &Engine,
    id: JobId,
    mut events: broadcast::Receiver<JobEvent>,
    timeout: Duration,
) -> Option<JobSnapshot> {
    let wait = async {
        loop {
            let snapshot = engine.snapshot(id)?;
            if snapshot.state.is_terminal() {
                return Some(snapshot);
            }
            loop {
                match events.recv().await {
                    Ok(event) if event.id == id && event.event.is_terminal() => break,
                    Ok(_) => {}
                    // Lost events may hold the end: look again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return engine.snapshot(id),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(snapshot) => snapshot,
        Err(_) => engine.snapshot(id),
    }
}

/// A1111's answer: the pictures, the parameters as used, and `info` as JSON text.
fn answer(request: &TextToImageRequest, job: &JobSnapshot, images: Vec<String>) -> Value {
    let summary = job.output.as_ref().map_or(&Value::Null, |o| &o.summary);
    let seed = summary
        .get("seed")
        .and_then(Value::as_u64)
        .unwrap_or(request.seed);
    let steps = summary
        .get("steps")
        .and_then(Value::as_u64)
        .or(request.steps.map(u64::from));
    let size = summary
        .get("size")
        .and_then(Value::as_str)
        .and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)));
    let width = size.map(|s| s.0).or(request.width.map(u64::from));
    let height = size.map(|s| s.1).or(request.height.map(u64::from));
    let cfg_scale = request
        .guidance
        .or_else(|| summary.get("guidance").and_then(Value::as_f64));
    let sampler = request
        .scheduler
        .or_else(|| {
            summary
                .get("scheduler")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<SchedulerKind>().ok())
        })
        .map(sampler_to_a1111);
    // Picture i of a batch uses seed + i.
    let all_seeds: Vec<u64> = (0..images.len().max(1) as u64).map(|i| seed + i).collect();
    let info = json!({
        "prompt": request.prompt,
        "all_prompts": vec![&request.prompt; all_seeds.len()],
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": vec![&request.negative_prompt; all_seeds.len()],
        "seed": seed,
        "all_seeds": all_seeds,
        "steps": steps,
        "cfg_scale": cfg_scale,
        "width": width,
        "height": height,
        "sampler_name": sampler,
        "batch_size": request.batch,
        "sd_model_name": summary.get("model").and_then(Value::as_str).unwrap_or(&request.model),
        "job_id": job.id,
    });
    json!({
        "images": images,
        "parameters": {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": seed,
            "steps": steps,
            "cfg_scale": cfg_scale,
            "width": width,
            "height": height,
            "sampler_name": sampler,
            "batch_size": request.batch,
            "n_iter": 1,
        },
        "info": info.to_string(),
    })
}
