//! Metrics contract, invariant, derived series, history downsampling, sampler.
//! Also the helpers the other telemetry test modules share (`support`).

use orfeas_core::telemetry::{
    GenerationKind, Outcome, SeriesStore, Telemetry, TelemetryConfig, TimeRange,
};
use std::time::Duration;

pub mod support {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Finds an external tool; `None` (after a loud note) when it is missing
    /// and ORFEAS_REQUIRE_TOOLS is not 1; a panic when it is required.
    pub fn tool(name: &str) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(t) = std::env::var_os("ORFEAS_TOOLS") {
            dirs.insert(0, PathBuf::from(t).join("venv/bin"));
        }
        if let Some(found) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            return Some(found);
        }
        if std::env::var("ORFEAS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{name} missing; run `eval \"$(scripts/install-tools.sh)\"`");
        }
        eprintln!("skipped: {name} missing (run `eval \"$(scripts/install-tools.sh)\"`)");
        None
    }

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A child process killed when the test ends, however it ends.
    pub struct KillOnDrop(pub Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub fn spawn(program: &PathBuf, args: &[String], log: &std::path::Path) -> KillOnDrop {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        KillOnDrop(
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display())),
        )
    }

    /// Runs a tool, returning (success, stdout + stderr).
    pub fn run(program: &PathBuf, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub struct HttpResponse {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl HttpResponse {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A plain HTTP/1.1 request (no client library: the bytes on the wire are
    /// what Prometheus sees too).
    pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> HttpResponse {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = body.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            body = rest[n..].trim_start_matches("\r\n");
        }
        out
    }

    pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
        http(addr, "GET", path, "")
    }

    /// Polls `f` until it returns Some, or panics after `timeout` with `what`.
    pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET /api/v1/query` on a Prometheus; the `data.result` array.
    pub fn prom_query(addr: SocketAddr, query: &str) -> Vec<serde_json::Value> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = get(addr, &format!("/api/v1/query?query={q}"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// (name, labels, value)
    pub type Sample = (String, Vec<(String, String)>, f64);

    /// Parses `# TYPE` lines and samples of an exposition.
    pub struct Exposition {
        pub types: Vec<(String, String)>,
        /// (name, labels, value)
        pub samples: Vec<Sample>,
    }

    pub fn parse_exposition(text: &str) -> Exposition {
        let mut types = Vec::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                types.push((it.next().unwrap().to_owned(), it.next().unwrap().to_owned()));
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.trim().to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                samples.push((name.to_owned(), labels, value.parse().unwrap()));
            }
        }
        Exposition { types, samples }
    }

    impl Exposition {
        pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
            self.samples
                .iter()
                .filter(|(n, l, _)| {
                    n == name
                        && filter
                            .iter()
                            .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|(_, _, v)| v)
                .sum()
        }
    }
}

use support::parse_exposition;

/// The contract of DESIGN.md, written out here by hand (not taken from the code).
const DESIGN_CONTRACT: [(&str, &str, &[&str]); 21] = [
    (
        "http_requests_total",
        "counter",
        &["method", "endpoint", "status"],
    ),
    (
        "http_request_duration_seconds",
        "histogram",
        &["method", "endpoint"],
    ),
    ("errors_total", "counter", &["type", "endpoint"]),
    ("validation_errors_total", "counter", &["endpoint", "field"]),
    ("rate_limit_rejections_total", "counter", &["endpoint"]),
    (
        "text_to_image_generations_total",
        "counter",
        &["style", "status"],
    ),
    ("text_to_image_duration_seconds", "histogram", &["style"]),
    (
        "model_3d_generations_total",
        "counter",
        &["format", "quality", "status"],
    ),
    (
        "model_3d_duration_seconds",
        "histogram",
        &["format", "quality"],
    ),
    ("successful_generations_total", "counter", &["kind"]),
    ("failed_generations_total", "counter", &["kind", "reason"]),
    ("cpu_usage_percent", "gauge", &["core"]),
    ("memory_usage_bytes", "gauge", &["type"]),
    ("disk_usage_bytes", "gauge", &["type", "mount"]),
    ("gpu_usage_percent", "gauge", &["gpu"]),
    ("gpu_memory_bytes", "gauge", &["gpu", "type"]),
    ("app_uptime_seconds", "gauge", &[]),
    ("active_jobs", "gauge", &[]),
    ("concurrent_requests", "gauge", &[]),
    ("generation_quality_score", "histogram", &["kind"]),
    (
        "generated_file_size_bytes",
        "histogram",
        &["kind", "format"],
    ),
];

pub fn sampling_telemetry(dir: &std::path::Path) -> Telemetry {
    Telemetry::start(TelemetryConfig {
        sample_interval: Duration::from_millis(200),
        data_dir: Some(dir.to_path_buf()),
        ..TelemetryConfig::default()
    })
    .unwrap()
}

#[test]
fn scrape_declares_all_21_metrics_with_their_types_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = sampling_telemetry(dir.path());
    // Let the sampler fill CPU, memory and disk once.
    support::wait_for(Duration::from_secs(10), "first system sample", || {
        telemetry.latest("memory_used_percent")
    });
    let server = orfeas_core::http::serve(
        orfeas_core::http::ServeConfig {
            bind: "127.0.0.1:0".into(),
            workers: 2,
            ..Default::default()
        },
        orfeas_core::http::HttpState::new(telemetry.clone()),
    )
    .unwrap();
    let r = support::get(server.addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.body.ends_with('\n'), "exposition must end with a newline");
    let exp = parse_exposition(&r.body);
    let has_gpu = exp.samples.iter().any(|(n, _, _)| n == "gpu_usage_percent");
    for (name, ty, labels) in DESIGN_CONTRACT {
        let declared = exp.types.iter().find(|(n, _)| n == name);
        assert_eq!(declared.map(|(_, t)| t.as_str()), Some(ty), "{name} type");
        let sample_name = if ty == "histogram" {
            format!("{name}_bucket")
        } else {
            name.to_owned()
        };
        let series: Vec<_> = exp
            .samples
            .iter()
            .filter(|(n, _, _)| *n == sample_name)
            .collect();
        if name.starts_with("gpu_") && !has_gpu {
            assert!(
                telemetry.gpu_note().is_some(),
                "no GPU series needs a note for the UI"
            );
            continue;
        }
        assert!(!series.is_empty(), "{name} has no series at start-up");
        for (_, l, _) in series {
            let mut got: Vec<&str> = l
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| *k != "le")
                .collect();
            got.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "label names of {name}");
        }
    }
    // Every known label combination exists before its first event.
    assert_eq!(
        exp.sum(
            "failed_generations_total",
            &[("kind", "image_to_3d"), ("reason", "timeout")]
        ),
        0.0
    );
    assert!(
        exp.samples
            .iter()
            .any(|(n, l, _)| n == "model_3d_generations_total"
                && l.iter().any(|(k, v)| k == "format" && v == "stl")
                && l.iter().any(|(k, v)| k == "quality" && v == "draft")
                && l.iter().any(|(k, v)| k == "status" && v == "failure"))
    );
    let cpu_total = exp.sum("cpu_usage_percent", &[("core", "total")]);
    assert!((0.0..=100.0).contains(&cpu_total));
    assert!(exp.sum("memory_usage_bytes", &[("type", "total")]) > 0.0);
    assert!(exp.sum("disk_usage_bytes", &[("type", "total")]) > 0.0);
}

/// Lint lines promtool prints that the contract's fixed names force:
/// `cpu_usage_percent`, `gpu_usage_percent`: promtool wants ratios (0..1) named
/// without `_percent`, but the contract fixes 0–100 percent gauges.
const ALLOWED_LINT: [&str; 2] = [
    "cpu_usage_percent use base unit \"ratio\" instead of \"percent\"",
    "gpu_usage_percent use base unit \"ratio\" instead of \"percent\"",
];

#[test]
fn exposition_passes_promtool_check_metrics() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let telemetry = sampling_telemetry(dir.path());
    support::wait_for(Duration::from_secs(10), "first system sample", || {
        telemetry.latest("memory_used_percent")
    });
    telemetry.record_generation(
        GenerationKind::ImageTo3d,
        "glb",
        "high",
        Outcome::Succeeded {
            duration_secs: 3.0,
            quality_score: Some(0.8),
            file_sizes: &[("glb", 120_000)],
        },
    );
    let text = telemetry.encode();
    let (_, out) = support::run(&promtool, &["check", "metrics"], Some(&text));
    let unexpected: Vec<&str> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !ALLOWED_LINT.iter().any(|a| l.contains(a)))
        .collect();
    assert!(unexpected.is_empty(), "promtool check metrics:\n{out}");
}

fn success(
    kind: GenerationKind,
    variant: &str,
    secs: f64,
) -> (GenerationKind, String, Outcome<'static>) {
    (
        kind,
        variant.to_owned(),
        Outcome::Succeeded {
            duration_secs: secs,
            quality_score: Some(0.7),
            file_sizes: &[("glb", 50_000), ("png", 20_000)],
        },
    )
}

#[test]
fn successful_plus_failed_equals_all_generations_with_mixed_outcomes() {
    let telemetry = Telemetry::without_sampler().unwrap();
    let mut events = Vec::new();
    for i in 0..7 {
        events.push(success(
            GenerationKind::ImageTo3d,
            ["glb", "obj", "ply", "stl"][i % 4],
            2.0,
        ));
    }
    for _ in 0..4 {
        events.push(success(GenerationKind::TextToImage, "anime", 8.0));
    }
    let failures = [
        (GenerationKind::ImageTo3d, "glb", "invalid_image"),
        (GenerationKind::ImageTo3d, "stl", "timeout"),
        (GenerationKind::TextToImage, "photographic", "model_missing"),
        (
            GenerationKind::TextToImage,
            "no-such-style",
            "some new reason",
        ),
        (GenerationKind::ImageTo3d, "OBJ", "panic"),
    ];
    for (kind, variant, reason) in failures {
        events.push((
            kind,
            variant.to_owned(),
            Outcome::Failed {
                reason,
                duration_secs: 1.0,
            },
        ));
    }
    for (kind, variant, outcome) in &events {
        telemetry.record_generation(*kind, variant, "standard", *outcome);
    }
    let exp = parse_exposition(&telemetry.encode());
    let ok = exp.sum("successful_generations_total", &[]);
    let failed = exp.sum("failed_generations_total", &[]);
    let t2i = exp.sum("text_to_image_generations_total", &[]);
    let m3d = exp.sum("model_3d_generations_total", &[]);
    assert_eq!(ok, 11.0);
    assert_eq!(failed, 5.0);
    assert_eq!(
        ok + failed,
        t2i + m3d,
        "invariant successful + failed = all generations"
    );
    // Unknown reasons and styles land in bounded `other` series.
    assert_eq!(
        exp.sum("failed_generations_total", &[("reason", "other")]),
        1.0
    );
    assert_eq!(
        exp.sum("text_to_image_generations_total", &[("style", "other")]),
        1.0
    );
    assert_eq!(
        exp.sum(
            "model_3d_generations_total",
            &[("format", "obj"), ("status", "failure")]
        ),
        1.0
    );
    // File sizes are counted per kind and format: 7 GLB sizes for 3D, 4 PNG for images.
    assert_eq!(
        exp.sum(
            "generated_file_size_bytes_count",
            &[("kind", "image_to_3d"), ("format", "glb")]
        ),
        7.0
    );
    assert_eq!(
        exp.sum(
            "generated_file_size_bytes_count",
            &[("kind", "text_to_image"), ("format", "png")]
        ),
        4.0
    );
    // A 2 s generation falls into the le="2.5" bucket, not le="1".
    assert_eq!(
        exp.sum("model_3d_duration_seconds_bucket", &[("le", "1")]),
        0.0
    );
    assert_eq!(
        exp.sum("model_3d_duration_seconds_bucket", &[("le", "2.5")]),
        7.0
    );
    // Quality 0.7 lands in the 0.7 bucket.
    assert_eq!(
        exp.sum("generation_quality_score_bucket", &[("le", "0.6")]),
        0.0
    );
    assert_eq!(
        exp.sum("generation_quality_score_bucket", &[("le", "0.7")]),
        11.0
    );
    telemetry.job_started();
    telemetry.job_started();
    telemetry.job_finished();
    assert_eq!(
        parse_exposition(&telemetry.encode()).sum("active_jobs", &[]),
        1.0
    );
}

/// `/metrics` bodies are shared between concurrent scrapers, but a scrape
/// never returns values from before it arrived.
#[test]
fn shared_scrapes_never_return_values_older_than_the_request() {
    let telemetry = Telemetry::without_sampler().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Other scrapers keep encoding, so bodies get shared.
        for _ in 0..3 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(telemetry.scrape());
                }
            });
        }
        for i in 1..=200u32 {
            telemetry.job_started();
            let body = telemetry.scrape();
            let text = std::str::from_utf8(&body).unwrap();
            assert_eq!(
                parse_exposition(text).sum("active_jobs", &[]),
                f64::from(i),
                "scrape {i} missed a job started before it"
            );
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

#[test]
fn dashboard_series_are_rates_and_quantiles_of_what_happened() {
    let telemetry = Telemetry::without_sampler().unwrap();
    let m = telemetry.metrics();
    let t0 = orfeas_core::telemetry::unix_now_secs() - 120.0;
    // Two minutes at 1 s: 3 requests per second, one in three a 404, each
    // taking 20 ms; one failed generation every 10 s.
    for s in 0..=120 {
        if s > 0 {
            for i in 0..3 {
                let status = if i == 0 { 404 } else { 200 };
                m.observe_http("GET", "/metrics", status, 0.02);
            }
            if s % 10 == 0 {
                telemetry.record_generation(
                    GenerationKind::ImageTo3d,
                    "glb",
                    "draft",
                    Outcome::Failed {
                        reason: "timeout",
                        duration_secs: 1.0,
                    },
                );
            }
        }
        telemetry.tick(t0 + f64::from(s));
    }
    let latest = |id: &str| {
        telemetry
            .latest(id)
            .unwrap_or_else(|| panic!("no value for {id}"))
    };
    assert!(
        (latest("requests_per_sec") - 3.0).abs() < 1e-6,
        "{}",
        latest("requests_per_sec")
    );
    assert!((latest("responses_per_sec:4xx") - 1.0).abs() < 1e-6);
    // 404s (1/s) + failed generations (0.1/s) are errors.
    assert!(
        (latest("errors_per_sec") - 1.1).abs() < 1e-6,
        "{}",
        latest("errors_per_sec")
    );
    // 20 ms falls in (10 ms, 25 ms]: p50 and p95 interpolate inside it.
    let p95 = latest("http_latency_p95_secs");
    assert!(p95 > 0.01 && p95 <= 0.025, "{p95}");
    assert!(latest("http_latency_p50_secs") < p95);
    assert_eq!(latest("generations_total:failure"), 12.0);
    let points = telemetry.series("requests_per_sec", TimeRange::M5);
    assert!(
        points.len() >= 100 && points.len() <= 121,
        "{}",
        points.len()
    );
    assert!(
        points.windows(2).all(|w| w[0][0] < w[1][0]),
        "time goes forward"
    );
    // The in-app HighErrorRate sees the 1.1 errors/s (it needs 5 minutes to fire).
    let alerts = telemetry.alerts();
    let high = alerts.iter().find(|a| a.name == "HighErrorRate").unwrap();
    assert_eq!(high.state, orfeas_core::telemetry::AlertState::Pending);
}

#[test]
fn older_data_is_downsampled_into_sqlite_and_served_for_long_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.sqlite3");
    let now = orfeas_core::telemetry::unix_now_secs();
    let start = (now - 3.0 * 3600.0).floor();
    {
        let mut store = SeriesStore::new(vec!["a".into(), "b".into()], Some(&db)).unwrap();
        // Three hours at 1 s: series a is the minute of the hour (a ramp), b is NaN (no data).
        for s in 0..(3 * 3600) {
            let t = start + f64::from(s);
            store.push(t, vec![((t as i64 / 60) % 60) as f64, f64::NAN]);
        }
        // The last hour is in memory, at 1 s.
        let recent = store.series("a", TimeRange::H1, start + 3.0 * 3600.0);
        assert!(
            recent.len() <= 1000 && recent.len() > 500,
            "{}",
            recent.len()
        );
        assert!(
            store.series("b", TimeRange::H1, now).is_empty(),
            "gaps stay gaps"
        );
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM metric_1m WHERE series = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (170..=180).contains(&rows),
        "one row per finished minute, got {rows}"
    );
    // Each 1 min row is the average of that minute: the minute-of-hour itself.
    let bad: i64 = conn
        .query_row(
            "SELECT count(*) FROM metric_1m WHERE series = 'a' AND abs(value - ((ts / 60) % 60)) > 1e-9",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0);
    let tens: i64 = conn
        .query_row(
            "SELECT count(*) FROM metric_10m WHERE series = 'a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!((16..=18).contains(&tens), "{tens}");
    // A reopened store (a restart) serves 24 h from the database.
    let store = SeriesStore::new(vec!["a".into(), "b".into()], Some(&db)).unwrap();
    let day = store.series("a", TimeRange::H24, start + 3.0 * 3600.0);
    assert!(day.len() >= 170, "{}", day.len());
    assert!(
        day[0][0] >= start - 60.0,
        "minute rows start at the first minute"
    );
    let month = store.series("a", TimeRange::D30, start + 3.0 * 3600.0);
    assert!(month.len() >= 16 && month.len() <= 1000);
    // Rows older than 30 days are pruned on the next 10 min roll-over.
    conn.execute(
        "INSERT INTO metric_10m (series, ts, value) VALUES ('a', ?1, 1.0)",
        [(now - 40.0 * 86_400.0) as i64],
    )
    .unwrap();
    drop(store);
    let mut store = SeriesStore::new(vec!["a".into(), "b".into()], Some(&db)).unwrap();
    for s in 0..1300 {
        store.push(now + f64::from(s), vec![1.0, 1.0]);
    }
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM metric_10m WHERE ts < ?1",
            [(now - 31.0 * 86_400.0) as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0, "30-day retention");
}

#[test]
fn sampler_reports_cpu_memory_disk_and_explains_missing_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = sampling_telemetry(dir.path());
    let mem = support::wait_for(Duration::from_secs(10), "memory sample", || {
        telemetry.latest("memory_used_percent")
    });
    assert!(mem > 0.0 && mem < 100.0, "{mem}");
    let disk = support::wait_for(Duration::from_secs(10), "disk sample", || {
        telemetry.latest("disk_used_percent")
    });
    assert!(disk > 0.0 && disk < 100.0, "{disk}");
    let cpu = support::wait_for(Duration::from_secs(10), "cpu sample", || {
        telemetry.latest("cpu_avg_percent")
    });
    assert!((0.0..=100.0).contains(&cpu));
    let uptime = support::wait_for(Duration::from_secs(10), "uptime > 0.3 s", || {
        telemetry.latest("uptime_secs").filter(|u| *u > 0.3)
    });
    assert!(uptime < 60.0);
    let has_gpu = telemetry.encode().contains("\ngpu_usage_percent{");
    assert_eq!(
        has_gpu,
        telemetry.gpu_note().is_none(),
        "either GPU series or a note, never neither"
    );
    if let Some(note) = telemetry.gpu_note() {
        assert!(!note.contains('\n') && note.contains("NVIDIA"), "{note}");
    }
}

#[test]
fn job_engine_events_update_generation_metrics_and_active_jobs() {
    use orfeas_core::jobs::{Engine, EngineConfig, JobFailure, JobKind, JobOutput, JobSpec};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("out.stl");
    std::fs::write(&mesh, vec![0u8; 5000]).unwrap();
    let telemetry = Telemetry::without_sampler().unwrap();
    let engine = Engine::new(EngineConfig::default(), None).unwrap();
    engine.add_observer(Arc::new(telemetry.clone()));
    let mesh_path = mesh.clone();
    engine.register(
        JobKind::ImageTo3d,
        Arc::new(move |spec: &JobSpec, _: &orfeas_core::jobs::JobContext| {
            if spec.label == "bad" {
                Err(JobFailure::new("invalid_image", "not an image"))
            } else {
                Ok(JobOutput {
                    files: vec![mesh_path.clone()],
                    quality: Some(0.35),
                    summary: serde_json::json!({ "quality": "high" }),
                })
            }
        }),
    );
    let mut ids = Vec::new();
    for label in ["good", "bad", "good"] {
        ids.push(
            engine
                .submit(JobSpec {
                    request: orfeas_core::jobs::JobRequest::ImageTo3d(
                        orfeas_core::request::ImageTo3dRequest::new(
                            format!("/in/{label}.png").into(),
                            "/out/x.glb".into(),
                            orfeas_core::export::ExportFormat::Glb,
                        ),
                    ),
                    label: label.into(),
                    batch: false,
                })
                .unwrap(),
        );
    }
    support::wait_for(Duration::from_secs(20), "jobs finished", || {
        let exp = parse_exposition(&telemetry.encode());
        (exp.sum("successful_generations_total", &[]) + exp.sum("failed_generations_total", &[])
            == 3.0)
            .then_some(())
    });
    let exp = parse_exposition(&telemetry.encode());
    assert_eq!(
        exp.sum(
            "model_3d_generations_total",
            &[
                ("format", "stl"),
                ("quality", "high"),
                ("status", "success")
            ]
        ),
        2.0
    );
    assert_eq!(
        exp.sum(
            "failed_generations_total",
            &[("kind", "image_to_3d"), ("reason", "invalid_image")]
        ),
        1.0
    );
    assert_eq!(
        exp.sum(
            "generated_file_size_bytes_bucket",
            &[("format", "stl"), ("le", "16384")]
        ),
        2.0
    );
    assert_eq!(
        exp.sum("generation_quality_score_bucket", &[("le", "0.4")]),
        2.0
    );
    support::wait_for(Duration::from_secs(5), "active_jobs back to 0", || {
        (parse_exposition(&telemetry.encode()).sum("active_jobs", &[]) == 0.0).then_some(())
    });
}
