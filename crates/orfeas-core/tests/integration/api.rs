//! HTTP API over real loopback HTTP: submission (202 + Location), status,
//! results, cancel, every validation error with its metric, 404/405, rate
//! limits, queue limit, token auth on a non-loopback bind, CORS, path
//! traversal, the OpenAPI document, and exact HTTP metric increments.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orfeas_core::history::History;
use orfeas_core::http::{self, Bucket, RateLimitConfig, ServeConfig, ServeError, ServerHandle};
use orfeas_core::jobs::{
    Engine, EngineConfig, JobContext, JobFailure, JobKind, JobOutput, JobRunner, JobSpec,
};
use orfeas_core::telemetry::Telemetry;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(20);

// ---- harness -----------------------------------------------------------

pub struct TestServer {
    pub dir: tempfile::TempDir,
    /// Dropping it stops the server.
    pub _handle: ServerHandle,
    pub engine: Engine,
    pub telemetry: Telemetry,
    pub history: Arc<History>,
    pub base: String,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits (bounded) until a series reaches `want`, and returns its value:
    /// HTTP requests are counted just after their response is written.
    pub fn settled_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(name, labels);
            if v >= want || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(20));
                return self.metric(name, labels);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Value of one series in the registry (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.telemetry.encode(), name, labels)
    }
}

/// Parses a sample out of Prometheus text: `name{labels...} value`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .next()
        .unwrap_or(0.0)
}

/// Tests' defaults: loopback, port 0, no rate limit, a temp data dir.
pub fn test_config() -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1:0".into(),
        rate_limit: None,
        queue_limit: 0,
        ..ServeConfig::default()
    }
}

pub fn start(config: ServeConfig, runners: Vec<(JobKind, Arc<dyn JobRunner>)>) -> TestServer {
    try_start(config, runners).unwrap()
}

pub fn try_start(
    mut config: ServeConfig,
    runners: Vec<(JobKind, Arc<dyn JobRunner>)>,
) -> Result<TestServer, ServeError> {
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = Some(dir.path().to_path_buf());
    let history = Arc::new(History::open(&dir.path().join("history.sqlite3")).unwrap());
    let engine = Engine::new(EngineConfig::default(), Some(Arc::clone(&history))).unwrap();
    for (kind, runner) in runners {
        engine.register(kind, runner);
    }
    let telemetry = Telemetry::without_sampler().unwrap();
    let handle = http::start(config, telemetry.clone(), engine.clone())?;
    let base = format!("http://{}", handle.addr());
    Ok(TestServer {
        dir,
        _handle: handle,
        engine,
        telemetry,
        history,
        base,
    })
}

/// A runner writing `bytes` to `params.output` (atomically) after `delay`.
pub fn writer(bytes: &'static [u8], delay: Duration) -> Arc<dyn JobRunner> {
    Arc::new(move |spec: &JobSpec, ctx: &JobContext| {
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = spec.request.output().to_path_buf();
        orfeas_core::paths::write_bytes_atomic(&out, bytes)
            .map_err(|e| JobFailure::new("io", e.to_string()))?;
        Ok(JobOutput {
            files: vec![out],
            quality: Some(0.8),
            summary: serde_json::json!({}),
        })
    })
}

/// A runner that runs until `release` is set (or it is cancelled).
pub fn held(release: Arc<AtomicBool>) -> Arc<dyn JobRunner> {
    Arc::new(move |_: &JobSpec, ctx: &JobContext| {
        let deadline = Instant::now() + WAIT;
        while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(JobOutput::default())
    })
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the error shape and returns (code, field).
    pub fn error(&self) -> (String, Option<String>) {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        (
            e["code"].as_str().unwrap().to_owned(),
            e["field"].as_str().map(str::to_owned),
        )
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(Some(WAIT))
        .build()
        .new_agent()
}

/// One request; `body: None` sends none.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let agent = agent();
    let resp = match body {
        Some(body) => agent.run(b.body(body.to_vec()).unwrap()),
        None => agent.run(b.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp
        .into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Resp {
    send("GET", url, &[], None)
}

pub fn post_json(url: &str, body: &str) -> Resp {
    send(
        "POST",
        url,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([(x * 7) as u8, (y * 5) as u8, 90, 255])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "orfeasTestBoundary7";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Polls a job until its state is terminal.
pub fn wait_job(base: &str, id: i64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get(&format!("{base}/api/jobs/{id}")).json();
        let state = v["state"].as_str().unwrap_or("").to_owned();
        if !matches!(state.as_str(), "queued" | "running") || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mesh_runner() -> Vec<(JobKind, Arc<dyn JobRunner>)> {
    vec![(
        JobKind::ImageTo3d,
        writer(b"solid fake\nendsolid fake\n", Duration::ZERO),
    )]
}

// ---- endpoints -----------------------------------------------------------

#[test]
fn image_upload_is_accepted_run_and_downloadable_raw_and_multipart() {
    let s = start(test_config(), mesh_runner());
    let image = png(32, 24);
    let r = send(
        "POST",
        &s.url("/api/image-to-3d?format=stl&quality=draft"),
        &[("Content-Type", "image/png")],
        Some(&image),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        r.header("Location"),
        Some(format!("/api/jobs/{id}").as_str())
    );
    // Persisted before the 202 was sent.
    assert!(
        s.history
            .get(orfeas_core::jobs::JobId(id))
            .unwrap()
            .is_some()
    );

    let job = wait_job(&s.base, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "image_to_3d");
    let file = job["outputs"][0]["file"].as_str().unwrap().to_owned();
    assert!(file.ends_with(".stl"), "{file}");
    let download = get(&s.url(&format!("/api/jobs/{id}/result")));
    assert_eq!(download.status, 200);
    assert_eq!(download.header("Content-Type"), Some("model/stl"));
    assert_eq!(download.body, b"solid fake\nendsolid fake\n");
    let by_name = get(&s.url(job["outputs"][0]["url"].as_str().unwrap()));
    assert_eq!(by_name.body, download.body);
    // The upload is kept under uploads/, the output under outputs/.
    let uploads: Vec<_> = std::fs::read_dir(s.data_dir().join("uploads"))
        .unwrap()
        .collect();
    assert_eq!(uploads.len(), 1);
    assert!(s.data_dir().join("outputs").join(&file).is_file());

    let (ct, body) = multipart(&[("image", Some("cat.png"), &image), ("format", None, b"obj")]);
    let r = send(
        "POST",
        &s.url("/api/image-to-3d"),
        &[("Content-Type", &ct)],
        Some(&body),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let job = wait_job(&s.base, r.json()["id"].as_i64().unwrap());
    assert_eq!(job["label"], "cat.png");
    assert!(
        job["outputs"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with(".obj")
    );
    let download = get(&s.url(&format!("/api/jobs/{}/result", job["id"])));
    assert_eq!(download.header("Content-Type"), Some("model/obj"));
}

#[test]
fn text_to_image_needs_a_runner_then_queues_with_its_parameters() {
    let s = start(test_config(), Vec::new());
    let r = post_json(&s.url("/api/text-to-image"), r#"{"prompt":"a red fox"}"#);
    assert_eq!(r.status, 503);
    assert_eq!(r.error().0, "model_unavailable");

    let seen = Arc::new(parking_lot::Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    s.engine.register(
        JobKind::TextToImage,
        Arc::new(move |spec: &JobSpec, _: &JobContext| {
            *seen2.lock() = Some(spec.request.clone());
            Ok(JobOutput::default())
        }),
    );
    let r = post_json(
        &s.url("/api/text-to-image"),
        r#"{"prompt":"a red fox","steps":4,"guidance":7.5,"seed":42,"width":512,"height":768,"batch":2,"negative_prompt":"blur","model":"sd-turbo","scheduler":"euler-a","style":"anime"}"#,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let job = wait_job(&s.base, r.json()["id"].as_i64().unwrap());
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["kind"], "text_to_image");
    let Some(orfeas_core::jobs::JobRequest::TextToImage(t2i)) = seen.lock().clone() else {
        panic!("the runner got no text→image request");
    };
    let want = orfeas_core::request::TextToImageRequest {
        negative_prompt: "blur".into(),
        style: "anime".into(),
        steps: Some(4),
        guidance: Some(7.5),
        width: Some(512),
        height: Some(768),
        seed: 42,
        batch: 2,
        scheduler: Some(orfeas_core::request::SchedulerKind::EulerAncestral),
        ..orfeas_core::request::TextToImageRequest::new("a red fox")
    };
    assert_eq!(
        t2i.request, want,
        "every field, the negative prompt included, reaches the runner"
    );
    assert!(t2i.output.to_string_lossy().ends_with(".png"));
}

#[test]
fn health_reports_version_device_and_queue_depth() {
    let release = Arc::new(AtomicBool::new(false));
    let s = start(
        test_config(),
        vec![(JobKind::ImageTo3d, held(Arc::clone(&release)))],
    );
    for _ in 0..3 {
        let r = send(
            "POST",
            &s.url("/api/image-to-3d"),
            &[("Content-Type", "image/png")],
            Some(&png(8, 8)),
        );
        assert_eq!(r.status, 202);
    }
    let deadline = Instant::now() + WAIT;
    while s.engine.active_count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let h = get(&s.url("/health")).json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["device"], "cpu");
    assert_eq!(h["queue_depth"], 2);
    assert_eq!(h["active_jobs"], 1);
    release.store(true, Ordering::SeqCst);
}

#[test]
fn jobs_are_listed_newest_first_with_pagination() {
    let s = start(test_config(), mesh_runner());
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = send(
            "POST",
            &s.url("/api/image-to-3d"),
            &[("Content-Type", "image/png")],
            Some(&png(8, 8)),
        );
        ids.push(r.json()["id"].as_i64().unwrap());
    }
    let page = get(&s.url("/api/jobs?limit=2&offset=1")).json();
    assert_eq!(page["total"], 5);
    let listed: Vec<i64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[3], ids[2]]);
    assert_eq!(
        get(&s.url("/api/jobs?kind=text_to_image")).json()["total"],
        0
    );
    let bad = get(&s.url("/api/jobs?limit=0"));
    assert_eq!((bad.status, bad.error().1.as_deref()), (422, Some("limit")));
}

#[test]
fn cancel_answers_by_job_state() {
    let release = Arc::new(AtomicBool::new(false));
    let s = start(
        test_config(),
        vec![(JobKind::ImageTo3d, held(Arc::clone(&release)))],
    );
    let submit = || {
        send(
            "POST",
            &s.url("/api/image-to-3d"),
            &[("Content-Type", "image/png")],
            Some(&png(8, 8)),
        )
        .json()["id"]
            .as_i64()
            .unwrap()
    };
    let running = submit();
    let queued = submit();
    let deadline = Instant::now() + WAIT;
    while s.engine.active_count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = send("DELETE", &s.url(&format!("/api/jobs/{queued}")), &[], None);
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("cancelled"))
    );
    let r = send("DELETE", &s.url(&format!("/api/jobs/{running}")), &[], None);
    assert_eq!(r.status, 202);
    assert_eq!(wait_job(&s.base, running)["state"], "cancelled");
    let r = send("DELETE", &s.url(&format!("/api/jobs/{running}")), &[], None);
    assert_eq!((r.status, r.error().0.as_str()), (409, "job_finished"));
    let r = send("DELETE", &s.url("/api/jobs/99999"), &[], None);
    assert_eq!((r.status, r.error().0.as_str()), (404, "job_not_found"));
    let r = get(&s.url(&format!("/api/jobs/{running}/result")));
    assert_eq!((r.status, r.error().0.as_str()), (409, "job_not_succeeded"));
}

// ---- rejections ----------------------------------------------------------

#[test]
fn every_validation_error_is_json_with_its_field_and_counted() {
    let config = ServeConfig {
        max_body_bytes: 64 * 1024,
        image_limits: http::ImageLimits {
            max_side_px: 256,
            max_pixels: 256 * 256,
        },
        ..test_config()
    };
    let s = start(config, mesh_runner());
    s.engine
        .register(JobKind::TextToImage, writer(b"png", Duration::ZERO));
    let t2i = s.url("/api/text-to-image");
    let i23d = s.url("/api/image-to-3d");
    let mut truncated = png(64, 64);
    truncated.truncate(truncated.len() / 2);
    let big_png = png(300, 20);
    let huge_body = vec![b' '; 100 * 1024];
    let (ct_noimg, noimg) = multipart(&[("format", None, b"glb")]);
    let (ct_bad, _) = multipart(&[]);
    // (method, url, content-type, body, status, code, field, metric endpoint, metric field)
    type Case<'a> = (
        &'a str,
        String,
        &'a str,
        Vec<u8>,
        u16,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            t2i.clone(),
            "text/plain",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
            "body",
            "/api/text-to-image",
            "body",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            b"{not json".to_vec(),
            400,
            "invalid_json",
            "body",
            "/api/text-to-image",
            "body",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            br#"{"prompt":"x","colour":1}"#.to_vec(),
            422,
            "unknown_field",
            "colour",
            "/api/text-to-image",
            "other",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            br#"{"steps":4}"#.to_vec(),
            422,
            "missing_field",
            "prompt",
            "/api/text-to-image",
            "prompt",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            br#"{"prompt":"x","steps":151}"#.to_vec(),
            422,
            "out_of_range",
            "steps",
            "/api/text-to-image",
            "steps",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            br#"{"prompt":"x","width":65}"#.to_vec(),
            422,
            "out_of_range",
            "width",
            "/api/text-to-image",
            "size",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            br#"{"prompt":"x","guidance":"high"}"#.to_vec(),
            422,
            "invalid_type",
            "guidance",
            "/api/text-to-image",
            "guidance",
        ),
        (
            "POST",
            t2i.clone(),
            "application/json",
            huge_body.clone(),
            413,
            "body_too_large",
            "body",
            "/api/text-to-image",
            "body",
        ),
        (
            "POST",
            i23d.clone(),
            "application/json",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
            "body",
            "/api/image-to-3d",
            "body",
        ),
        (
            "POST",
            i23d.clone(),
            "image/png",
            b"GIF89a not a png".to_vec(),
            415,
            "unsupported_image",
            "image",
            "/api/image-to-3d",
            "image",
        ),
        (
            "POST",
            i23d.clone(),
            "image/png",
            truncated,
            422,
            "invalid_image",
            "image",
            "/api/image-to-3d",
            "image",
        ),
        (
            "POST",
            i23d.clone(),
            "image/png",
            big_png,
            413,
            "image_too_large",
            "image",
            "/api/image-to-3d",
            "image",
        ),
        (
            "POST",
            i23d.clone(),
            "image/png",
            huge_body,
            413,
            "body_too_large",
            "body",
            "/api/image-to-3d",
            "body",
        ),
        (
            "POST",
            format!("{i23d}?format=fbx"),
            "image/png",
            png(8, 8),
            422,
            "invalid_value",
            "format",
            "/api/image-to-3d",
            "format",
        ),
        (
            "POST",
            format!("{i23d}?quality=ultra"),
            "image/png",
            png(8, 8),
            422,
            "invalid_value",
            "quality",
            "/api/image-to-3d",
            "quality",
        ),
        (
            "POST",
            format!("{i23d}?scale=2"),
            "image/png",
            png(8, 8),
            422,
            "unknown_parameter",
            "scale",
            "/api/image-to-3d",
            "other",
        ),
        (
            "POST",
            i23d.clone(),
            ct_noimg.as_str(),
            noimg,
            422,
            "missing_image",
            "image",
            "/api/image-to-3d",
            "image",
        ),
        (
            "POST",
            i23d.clone(),
            ct_bad.as_str(),
            b"--wrong\r\n".to_vec(),
            400,
            "invalid_multipart",
            "body",
            "/api/image-to-3d",
            "body",
        ),
    ];
    let data_dir = s.data_dir().to_string_lossy().into_owned();
    for (method, url, ct, body, status, code, field, endpoint, label) in cases {
        let before = s.metric(
            "validation_errors_total",
            &[("endpoint", endpoint), ("field", label)],
        );
        let r = send(method, &url, &[("Content-Type", ct)], Some(&body));
        assert_eq!(
            r.status,
            status,
            "{url} {ct}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.error(),
            (code.to_owned(), Some(field.to_owned())),
            "{url} {ct}"
        );
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            !text.contains(&data_dir) && !text.contains("/tmp"),
            "path leaked: {text}"
        );
        let after = s.metric(
            "validation_errors_total",
            &[("endpoint", endpoint), ("field", label)],
        );
        assert_eq!(after - before, 1.0, "{url} {ct} {code}");
    }
    // Nothing was queued and no upload was kept for rejected requests.
    assert_eq!(s.history.count(None).unwrap(), 0);
    assert_eq!(
        std::fs::read_dir(s.data_dir().join("uploads"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
    let s = start(test_config(), Vec::new());
    for path in [
        "/nope",
        "/api",
        "/api/nope",
        "/api/jobs/abc",
        "/api/jobs/1/other",
        "/api/jobs/0",
    ] {
        let r = get(&s.url(path));
        assert_eq!(r.status, 404, "{path}");
        assert!(r.error().0.contains("not_found"), "{path}");
    }
    let r = get(&s.url("/api/jobs/12345"));
    assert_eq!((r.status, r.error().0.as_str()), (404, "job_not_found"));
    for (method, path, allow) in [
        ("GET", "/api/text-to-image", "POST"),
        ("PUT", "/api/image-to-3d", "POST"),
        ("POST", "/api/jobs", "GET, HEAD"),
        ("PATCH", "/api/jobs/1", "GET, HEAD, DELETE"),
        ("DELETE", "/api/jobs/1/result", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ] {
        let r = send(method, &s.url(path), &[], None);
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}");
        assert_eq!(r.error().0, "method_not_allowed");
    }
}

#[test]
fn rate_limits_answer_429_with_retry_after_per_bucket_and_are_counted() {
    let config = ServeConfig {
        rate_limit: Some(RateLimitConfig {
            read: Bucket {
                per_sec: 0.2,
                burst: 3.0,
            },
            generate: Bucket {
                per_sec: 0.1,
                burst: 1.0,
            },
        }),
        ..test_config()
    };
    let s = start(config, mesh_runner());
    for _ in 0..3 {
        assert_eq!(get(&s.url("/health")).status, 200);
    }
    let r = get(&s.url("/api/jobs"));
    assert_eq!(r.status, 429);
    assert_eq!(r.error().0, "rate_limited");
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    // Generation has its own bucket: reads being exhausted does not block it.
    let ok = send(
        "POST",
        &s.url("/api/image-to-3d"),
        &[("Content-Type", "image/png")],
        Some(&png(8, 8)),
    );
    assert_eq!(ok.status, 202);
    let limited = send(
        "POST",
        &s.url("/api/image-to-3d"),
        &[("Content-Type", "image/png")],
        Some(&png(8, 8)),
    );
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .header("Retry-After")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        s.metric("rate_limit_rejections_total", &[("endpoint", "/api/jobs")]),
        1.0
    );
    assert_eq!(
        s.metric(
            "rate_limit_rejections_total",
            &[("endpoint", "/api/image-to-3d")]
        ),
        1.0
    );
    // The rejected submission was not recorded.
    assert_eq!(s.history.count(None).unwrap(), 1);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let release = Arc::new(AtomicBool::new(false));
    let config = ServeConfig {
        queue_limit: 2,
        ..test_config()
    };
    let s = start(
        config,
        vec![(JobKind::ImageTo3d, held(Arc::clone(&release)))],
    );
    let submit = || {
        send(
            "POST",
            &s.url("/api/image-to-3d"),
            &[("Content-Type", "image/png")],
            Some(&png(8, 8)),
        )
    };
    assert_eq!(submit().status, 202);
    let deadline = Instant::now() + WAIT;
    while s.engine.active_count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(submit().status, 202);
    assert_eq!(submit().status, 202);
    let r = submit();
    assert_eq!(r.status, 503);
    assert_eq!(r.error().0, "queue_full");
    assert!(r.header("Retry-After").is_some());
    assert_eq!(s.history.count(None).unwrap(), 3);
    release.store(true, Ordering::SeqCst);
}

// ---- security --------------------------------------------------------------

#[test]
fn a_non_loopback_bind_needs_a_token_and_checks_it() {
    let open = ServeConfig {
        bind: "127.0.0.2:0".into(),
        ..test_config()
    };
    assert!(matches!(
        try_start(open, Vec::new()),
        Err(ServeError::TokenRequired { .. })
    ));

    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let config = ServeConfig {
        bind: "127.0.0.2:0".into(),
        token_file: Some(token_file),
        ..test_config()
    };
    let s = start(config, mesh_runner());
    assert!(s.base.starts_with("http://127.0.0.2:"), "{}", s.base);
    let jobs = s.url("/api/jobs");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-toke"),
        Some("Basic s3cret-token"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = send("GET", &jobs, &headers, None);
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.error().0, "unauthorized");
    }
    let good = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(send("GET", &jobs, &good, None).status, 200);
    // Unknown paths need the token too (no probing without it).
    assert_eq!(get(&s.url("/api/nope")).status, 401);
    // /health and /metrics stay open unless protected.
    assert_eq!(get(&s.url("/health")).status, 200);
    assert_eq!(get(&s.url("/metrics")).status, 200);
    assert_eq!(
        s.settled_metric(
            "errors_total",
            &[("type", "unauthorized"), ("endpoint", "/api/jobs")],
            4.0
        ),
        4.0
    );

    let protected = ServeConfig {
        bind: "127.0.0.2:0".into(),
        token: Some("tok".into()),
        protect_metrics: true,
        ..test_config()
    };
    let p = start(protected, Vec::new());
    assert_eq!(get(&p.url("/health")).status, 401);
    assert_eq!(get(&p.url("/metrics")).status, 401);
    assert_eq!(
        send(
            "GET",
            &p.url("/metrics"),
            &[("Authorization", "Bearer tok")],
            None
        )
        .status,
        200
    );
}

#[test]
fn cors_is_off_by_default_and_exact_when_configured() {
    let s = start(test_config(), Vec::new());
    let r = send(
        "GET",
        &s.url("/api/jobs"),
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    let pre = send(
        "OPTIONS",
        &s.url("/api/jobs"),
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(pre.status, 405);

    let config = ServeConfig {
        cors_origin: Some("https://studio.example".into()),
        ..test_config()
    };
    let c = start(config, Vec::new());
    let pre = send(
        "OPTIONS",
        &c.url("/api/text-to-image"),
        &[("Origin", "https://studio.example")],
        None,
    );
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("Access-Control-Allow-Origin"),
        Some("https://studio.example")
    );
    assert!(
        pre.header("Access-Control-Allow-Headers")
            .unwrap()
            .contains("Authorization")
    );
    let r = get(&c.url("/api/jobs"));
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://studio.example")
    );
}

#[test]
fn result_downloads_cannot_escape_the_data_dir() {
    let s = start(test_config(), mesh_runner());
    let r = send(
        "POST",
        &s.url("/api/image-to-3d"),
        &[("Content-Type", "image/png")],
        Some(&png(8, 8)),
    );
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(wait_job(&s.base, id)["state"], "succeeded");
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    for file in [
        "../history.sqlite3",
        "..%2Fhistory.sqlite3",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/etc/passwd",
        &secret.to_string_lossy(),
        "outputs/../../secret.txt",
    ] {
        let r = get(&s.url(&format!("/api/jobs/{id}/result?file={file}")));
        assert_eq!(r.status, 404, "{file}");
        assert!(!String::from_utf8_lossy(&r.body).contains("secret"));
    }
    // A record pointing outside (edited database, or a symlink swapped in
    // after the job) is never served either.
    let jid = s
        .history
        .insert_job(JobKind::ImageTo3d, "evil", &serde_json::json!({}))
        .unwrap();
    s.history
        .mark_succeeded(
            jid,
            &JobOutput {
                files: vec![secret.clone()],
                quality: None,
                summary: Value::Null,
            },
            &Default::default(),
        )
        .unwrap();
    let r = get(&s.url(&format!("/api/jobs/{}/result", jid.0)));
    assert_eq!(r.status, 404);
    #[cfg(unix)]
    {
        let link = s.data_dir().join("outputs").join("link.glb");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let jid = s
            .history
            .insert_job(JobKind::ImageTo3d, "link", &serde_json::json!({}))
            .unwrap();
        s.history
            .mark_succeeded(
                jid,
                &JobOutput {
                    files: vec![link],
                    quality: None,
                    summary: Value::Null,
                },
                &Default::default(),
            )
            .unwrap();
        let r = get(&s.url(&format!("/api/jobs/{}/result", jid.0)));
        assert_eq!(r.status, 404);
        assert!(!String::from_utf8_lossy(&r.body).contains("top secret"));
    }
}

#[test]
fn failure_messages_shown_to_clients_carry_no_local_paths() {
    let s = start(test_config(), Vec::new());
    s.engine.register(
        JobKind::ImageTo3d,
        Arc::new(|spec: &JobSpec, _: &JobContext| {
            Err(JobFailure::new(
                "io",
                format!("cannot write {}", spec.request.output().display()),
            ))
        }),
    );
    let r = send(
        "POST",
        &s.url("/api/image-to-3d"),
        &[("Content-Type", "image/png")],
        Some(&png(8, 8)),
    );
    let job = wait_job(&s.base, r.json()["id"].as_i64().unwrap());
    assert_eq!(job["state"], "failed");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("cannot write <data dir>"), "{message}");
    assert!(!job.to_string().contains(&*s.data_dir().to_string_lossy()));
}

// ---- contract ----------------------------------------------------------------

#[test]
fn the_openapi_document_is_served_and_matches_the_router() {
    let s = start(test_config(), Vec::new());
    let r = get(&s.url("/api/openapi.json"));
    assert_eq!(r.status, 200);
    let doc = r.json();
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, on_disk);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
            // Every documented operation is routed (not 404, not 405).
            let concrete = path.replace("{id}", "1");
            let r = send(&method.to_uppercase(), &s.url(&concrete), &[], None);
            assert!(
                r.status != 405,
                "{method} {path} is documented but not routed"
            );
            if !path.contains("{id}") {
                assert!(
                    r.status != 404,
                    "{method} {path} is documented but not routed"
                );
            }
            // Every documented operation documents the errors every request can get.
            let responses = ops[method]["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("429") && responses.contains_key("401"),
                "{method} {path}"
            );
        }
    }
    // Every route the metrics contract knows is documented.
    for (method, endpoint) in orfeas_core::telemetry::metrics::ROUTES {
        if endpoint != "other" {
            assert!(
                documented.contains(&(method.to_owned(), endpoint.to_owned())),
                "{method} {endpoint} is not in docs/openapi.json"
            );
        }
    }
    // The documented request schema agrees with the validator's limits.
    let t2i = &doc["components"]["schemas"]["TextToImageRequest"]["properties"];
    assert_eq!(t2i["steps"]["maximum"], 150);
    assert_eq!(t2i["width"]["multipleOf"], 8);
    let ok = post_json(
        &s.url("/api/text-to-image"),
        r#"{"prompt":"p","steps":150,"width":2048}"#,
    );
    assert_ne!(ok.status, 422);
    let over = post_json(
        &s.url("/api/text-to-image"),
        r#"{"prompt":"p","steps":151}"#,
    );
    assert_eq!(over.status, 422);
}

#[test]
fn http_metrics_move_exactly_as_the_scripted_traffic_says() {
    let s = start(test_config(), mesh_runner());
    let before = s.telemetry.encode();
    let v = |text: &str, name: &str, labels: &[(&str, &str)]| metric_value(text, name, labels);
    // The script.
    assert_eq!(get(&s.url("/health")).status, 200);
    assert_eq!(get(&s.url("/health")).status, 200);
    assert_eq!(get(&s.url("/nope")).status, 404);
    assert_eq!(post_json(&s.url("/api/text-to-image"), "{").status, 400);
    assert_eq!(
        post_json(&s.url("/api/text-to-image"), r#"{"prompt":"x","steps":0}"#).status,
        422
    );
    let r = send(
        "POST",
        &s.url("/api/image-to-3d"),
        &[("Content-Type", "image/png")],
        Some(&png(8, 8)),
    );
    assert_eq!(r.status, 202);
    assert_eq!(get(&s.url("/api/jobs/424242")).status, 404);
    assert_eq!(send("PUT", &s.url("/api/jobs"), &[], None).status, 405);
    // A request is counted right after its response is written, so the last
    // one may still be on its way into the registry: wait for it (bounded).
    let total = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("http_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + WAIT;
    let mut after = s.telemetry.encode();
    while total(&after) - total(&before) < 8.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        after = s.telemetry.encode();
    }
    std::thread::sleep(Duration::from_millis(50));
    let after = s.telemetry.encode();

    let delta =
        |name: &str, labels: &[(&str, &str)]| v(&after, name, labels) - v(&before, name, labels);
    let req = |m, e, st| {
        delta(
            "http_requests_total",
            &[("method", m), ("endpoint", e), ("status", st)],
        )
    };
    assert_eq!(req("GET", "/health", "200"), 2.0);
    assert_eq!(req("GET", "other", "404"), 1.0);
    assert_eq!(req("POST", "/api/text-to-image", "400"), 1.0);
    assert_eq!(req("POST", "/api/text-to-image", "422"), 1.0);
    assert_eq!(req("POST", "/api/image-to-3d", "202"), 1.0);
    assert_eq!(req("GET", "/api/jobs/{id}", "404"), 1.0);
    assert_eq!(req("OTHER", "/api/jobs", "405"), 1.0);
    assert_eq!(total(&after) - total(&before), 8.0);
    let hist = |e| delta("http_request_duration_seconds_count", &[("endpoint", e)]);
    assert_eq!(hist("/health"), 2.0);
    assert_eq!(hist("/api/text-to-image"), 2.0);
    let err = |t, e| delta("errors_total", &[("type", t), ("endpoint", e)]);
    assert_eq!(err("not_found", "other"), 1.0);
    assert_eq!(err("bad_request", "/api/text-to-image"), 1.0);
    assert_eq!(err("validation", "/api/text-to-image"), 1.0);
    assert_eq!(err("not_found", "/api/jobs/{id}"), 1.0);
    assert_eq!(err("not_found", "/api/jobs"), 1.0);
    assert_eq!(
        delta(
            "validation_errors_total",
            &[("endpoint", "/api/text-to-image"), ("field", "body")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "validation_errors_total",
            &[("endpoint", "/api/text-to-image"), ("field", "steps")]
        ),
        1.0
    );
    assert_eq!(v(&after, "concurrent_requests", &[]), 0.0);
}
