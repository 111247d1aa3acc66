//! `GET /api/jobs/{id}/events` (server-sent events of a job run by a fake
//! runner) and A1111's synchronous `POST /sdapi/v1/txt2img`.

use std::io::{BufRead, BufReader, Cursor};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use orfeas_core::http::ServeConfig;
use orfeas_core::jobs::{JobContext, JobFailure, JobKind, JobOutput, JobRequest, JobSpec};
use serde_json::Value;

use super::api::{WAIT, agent, get, held, png, post_json, send, start, test_config, wait_job};

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    event: String,
    data: Value,
}

/// Opens the event stream and reads it to its end (bounded by the agent's timeout).
fn read_events(url: &str) -> (u16, Option<String>, Vec<Sse>) {
    let response = agent().get(url).call().unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    for line in reader.lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if !event.is_empty() || !data.is_empty() {
                events.push(Sse {
                    event: std::mem::take(&mut event),
                    data: serde_json::from_str(&std::mem::take(&mut data)).unwrap_or(Value::Null),
                });
            }
        } else if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        }
        // Lines starting with ':' are keep-alive comments.
    }
    (status, content_type, events)
}

/// An image→3D runner that waits for `release`, reports three stages and writes its output.
fn staged(release: Arc<AtomicBool>) -> Arc<dyn orfeas_core::jobs::JobRunner> {
    Arc::new(move |spec: &JobSpec, ctx: &JobContext| {
        let deadline = Instant::now() + WAIT;
        while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (stage, fraction) in [("mask", 0.2), ("inflate", 0.6), ("export", 0.9)] {
            ctx.progress(stage, fraction, stage);
            std::thread::sleep(Duration::from_millis(30));
        }
        let out = spec.request.output().to_path_buf();
        orfeas_core::paths::write_bytes_atomic(&out, b"solid x\nendsolid x\n")
            .map_err(|e| JobFailure::new("io", e.to_string()))?;
        Ok(JobOutput {
            files: vec![out],
            quality: Some(0.7),
            summary: serde_json::json!({}),
        })
    })
}

fn submit_image(base: &str) -> i64 {
    let r = send(
        "POST",
        &format!("{base}/api/image-to-3d?format=stl"),
        &[("Content-Type", "image/png")],
        Some(&png(8, 8)),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_i64().unwrap()
}

#[test]
fn job_events_stream_stages_and_progress_until_done_then_end() {
    let release = Arc::new(AtomicBool::new(false));
    let s = start(
        test_config(),
        vec![(JobKind::ImageTo3d, staged(Arc::clone(&release)))],
    );
    let id = submit_image(&s.base);
    let url = s.url(&format!("/api/jobs/{id}/events"));
    let reader = std::thread::spawn(move || read_events(&url));
    // The stream is counted once its head is ready, which is after it
    // subscribed: from then on no event of the job can be missed.
    s.settled_metric(
        "http_requests_total",
        &[("endpoint", "/api/jobs/{id}/events"), ("status", "200")],
        1.0,
    );
    release.store(true, Ordering::SeqCst);
    let (status, content_type, events) = reader.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("text/event-stream"));
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"snapshot"), "{names:?}");
    assert_eq!(events[0].data["id"], id);
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let done = &events[events.len() - 1].data;
    assert_eq!(done["state"], "succeeded");
    assert!(
        done["outputs"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with(".stl")
    );
    // Each stage is announced once, in order, before its progress.
    let stages: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "stage")
        .map(|e| e.data["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["mask", "inflate", "export"], "{names:?}");
    let fractions: Vec<f64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["fraction"].as_f64().unwrap())
        .collect();
    assert!(fractions.len() >= 3, "{names:?}");
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert!((fractions[fractions.len() - 1] - 0.9).abs() < 1e-6);
    assert_eq!(
        s.settled_metric(
            "http_requests_total",
            &[("endpoint", "/api/jobs/{id}/events"), ("status", "200")],
            1.0
        ),
        1.0
    );

    // A late subscriber gets the finished job at once, and the stream ends.
    let started = Instant::now();
    let (status, _, late) = read_events(&s.url(&format!("/api/jobs/{id}/events")));
    assert_eq!(status, 200);
    let names: Vec<&str> = late.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["snapshot", "done"]);
    assert_eq!(late[0].data["state"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn job_events_end_with_failed_or_cancelled_and_unknown_jobs_are_404() {
    let release = Arc::new(AtomicBool::new(false));
    let s = start(
        test_config(),
        vec![(JobKind::ImageTo3d, held(Arc::clone(&release)))],
    );
    let r = get(&s.url("/api/jobs/4242/events"));
    assert_eq!(r.status, 404);
    assert_eq!(r.error().0, "job_not_found");

    let id = submit_image(&s.base);
    let url = s.url(&format!("/api/jobs/{id}/events"));
    let reader = std::thread::spawn(move || read_events(&url));
    let deadline = Instant::now() + WAIT;
    while s.engine.active_count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        send("DELETE", &s.url(&format!("/api/jobs/{id}")), &[], None).status,
        202
    );
    let (_, _, events) = reader.join().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.event, "cancelled", "{events:?}");
    assert_eq!(last.data["state"], "cancelled");

    s.engine.register(
        JobKind::ImageTo3d,
        Arc::new(|_: &JobSpec, _: &JobContext| {
            Err(JobFailure::new(
                "invalid_image",
                "the picture has no foreground",
            ))
        }),
    );
    let id = submit_image(&s.base);
    assert_eq!(wait_job(&s.base, id)["state"], "failed");
    let (_, _, events) = read_events(&s.url(&format!("/api/jobs/{id}/events")));
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["snapshot", "failed"]);
    assert_eq!(events[1].data["error"]["reason"], "invalid_image");
    release.store(true, Ordering::SeqCst);
}

/// A text→image runner that draws a real PNG of the requested size for each picture.
fn painter() -> Arc<dyn orfeas_core::jobs::JobRunner> {
    Arc::new(|spec: &JobSpec, _: &JobContext| {
        let JobRequest::TextToImage(job) = &spec.request else {
            return Err(JobFailure::new("invalid_input", "not a text→image job"));
        };
        let (w, h) = (
            job.request.width.unwrap_or(512),
            job.request.height.unwrap_or(512),
        );
        let mut files = Vec::new();
        for i in 0..job.request.batch as usize {
            let path = job.output_for(i);
            orfeas_core::paths::write_bytes_atomic(&path, &png(w, h))
                .map_err(|e| JobFailure::new("io", e.to_string()))?;
            files.push(path);
        }
        Ok(JobOutput {
            files,
            quality: None,
            summary: serde_json::json!({
                "seed": job.request.seed,
                "steps": job.request.steps.unwrap_or(1),
                "size": format!("{w}x{h}"),
                "model": "fake-sd",
            }),
        })
    })
}

#[test]
fn txt2img_answers_base64_pngs_and_a1111_info() {
    let s = start(test_config(), vec![(JobKind::TextToImage, painter())]);
    let r = post_json(
        &s.url("/sdapi/v1/txt2img"),
        r#"{"prompt":"a red fox","negative_prompt":"blur","seed":42,"steps":4,"cfg_scale":7.0,
            "width":64,"height":80,"sampler_name":"Euler a","batch_size":2,"n_iter":1,
            "enable_hr":false,"restore_faces":false,"styles":[],"override_settings":{}}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(image.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        let decoded = image::load(Cursor::new(&bytes), image::ImageFormat::Png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 80));
    }
    let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["seed"], 42);
    assert_eq!(info["all_seeds"], serde_json::json!([42, 43]));
    assert_eq!(info["prompt"], "a red fox");
    assert_eq!(info["negative_prompt"], "blur");
    assert_eq!(info["steps"], 4);
    assert_eq!(info["cfg_scale"], 7.0);
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(64), Some(80))
    );
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(v["parameters"]["seed"], 42);
    // The job is an ordinary one too.
    let job = get(&s.url(&format!("/api/jobs/{}", info["job_id"]))).json();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["kind"], "text_to_image");

    // Seed -1 is random (and reported).
    let r = post_json(
        &s.url("/sdapi/v1/txt2img"),
        r#"{"prompt":"x","seed":-1,"width":64,"height":64}"#,
    );
    assert_eq!(r.status, 200);
    let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert!(
        info["seed"]
            .as_u64()
            .is_some_and(|s| s <= u64::from(u32::MAX))
    );
}

#[test]
fn txt2img_errors_use_the_api_error_body() {
    let release = Arc::new(AtomicBool::new(false));
    let config = ServeConfig {
        txt2img_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let s = start(config, Vec::new());
    let url = s.url("/sdapi/v1/txt2img");
    let r = post_json(&url, r#"{"prompt":"x"}"#);
    assert_eq!((r.status, r.error().0.as_str()), (503, "model_unavailable"));
    s.engine
        .register(JobKind::TextToImage, held(Arc::clone(&release)));
    for (body, status, code, field) in [
        ("{nope", 400, "invalid_json", Some("body")),
        (
            r#"{"prompt":"x","enable_hr":true}"#,
            422,
            "unsupported_option",
            Some("other"),
        ),
        (
            r#"{"prompt":"x","sampler_name":"LMS"}"#,
            422,
            "out_of_range",
            Some("scheduler"),
        ),
        (
            r#"{"prompt":"x","steps":151}"#,
            422,
            "out_of_range",
            Some("steps"),
        ),
        (r#"{"prompt":""}"#, 422, "out_of_range", Some("prompt")),
    ] {
        let r = post_json(&url, body);
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.error(),
            (code.to_owned(), field.map(str::to_owned)),
            "{body}"
        );
    }
    let r = send("POST", &url, &[("Content-Type", "text/plain")], Some(b"{}"));
    assert_eq!(
        (r.status, r.error().0.as_str()),
        (415, "unsupported_media_type")
    );
    assert_eq!(send("GET", &url, &[], None).status, 405);
    // The held job is not ready within the timeout: 504, and it goes on.
    let r = post_json(&url, r#"{"prompt":"slow"}"#);
    assert_eq!((r.status, r.error().0.as_str()), (504, "timeout"));
    assert_eq!(s.engine.active_count(), 1);
    release.store(true, Ordering::SeqCst);
    assert_eq!(
        s.settled_metric(
            "validation_errors_total",
            &[("endpoint", "/sdapi/v1/txt2img"), ("field", "steps")],
            1.0
        ),
        1.0
    );
}
