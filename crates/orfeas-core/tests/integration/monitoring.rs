//! The exported monitoring stack: committed files equal the generated ones,
//! the real tools accept them, and an alert travels end to end.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orfeas_core::monitoring;
use orfeas_core::telemetry::{Telemetry, alerts};
use parking_lot::Mutex;

use crate::http_metrics::{start_prometheus, start_server};
use crate::telemetry::support;

fn repo_monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitoring")
}

#[test]
fn committed_monitoring_folder_equals_what_the_code_generates() {
    let dir = repo_monitoring_dir();
    if std::env::var("ORFEAS_BLESS").as_deref() == Ok("1") {
        monitoring::export(&dir).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    monitoring::export(tmp.path()).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 14);
    for name in names {
        let want = std::fs::read_to_string(tmp.path().join(&name)).unwrap();
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            want == have,
            "monitoring/{} differs from the code; run `orfeas monitoring export monitoring` (or this test with ORFEAS_BLESS=1)",
            name.to_string_lossy()
        );
    }
}

#[test]
fn no_password_token_or_address_in_the_exported_files() {
    for (name, text) in monitoring::files() {
        for line in text.lines() {
            let lower = line.to_lowercase();
            let secretish = ["password", "token", "secret", "api_key"]
                .iter()
                .any(|w| lower.contains(w));
            let code = lower.trim_start();
            // Allowed: comments, values from the environment, secrets read from files, prose.
            let allowed = code.starts_with('#')
                || lower.contains("${")
                || lower.contains("_file:")
                || name == "README.md";
            assert!(!secretish || allowed, "{name}: {line}");
            for addr in ["@gmail", "@example.", "hooks.slack.com/services/"] {
                assert!(!lower.contains(addr), "{name}: {line}");
            }
        }
    }
    let compose = monitoring::compose_yaml();
    assert!(
        compose.contains("${GRAFANA_ADMIN_PASSWORD:?"),
        "password only from the environment"
    );
}

#[test]
fn promtool_and_amtool_accept_the_exported_configs() {
    let (Some(promtool), Some(amtool)) = (support::tool("promtool"), support::tool("amtool"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    monitoring::export(dir.path()).unwrap();
    let cfg = dir.path().join("prometheus.yml");
    let (ok, out) = support::run(&promtool, &["check", "config", cfg.to_str().unwrap()], None);
    assert!(ok && out.contains("SUCCESS: 12 rules found"), "{out}");
    let am = dir.path().join("alertmanager.yml");
    let (ok, out) = support::run(&amtool, &["check-config", am.to_str().unwrap()], None);
    assert!(ok, "{out}");
    assert!(out.contains("- 3 receivers"), "{out}");
}

#[test]
fn compose_file_fits_the_compose_spec_and_its_bind_mounts_exist() {
    let Some(check) = support::tool("check-jsonschema") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    monitoring::export(dir.path()).unwrap();
    let (text, mounts) = check_compose(&check, &dir.path().join("docker-compose-monitoring.yml"));
    assert!(mounts.len() >= 7, "{mounts:?}");
    for port in ["\"3001:3000\"", "\"9090:9090\"", "\"9093:9093\""] {
        assert!(text.contains(port), "{port}");
    }
    assert!(text.contains("--storage.tsdb.retention.time=30d"));
}

/// Checks a compose file against the Compose spec and that every file it
/// bind-mounts (`- ./NAME:…`) sits next to it; its text and those mounts.
pub(crate) fn check_compose(check: &PathBuf, compose: &Path) -> (String, Vec<String>) {
    let (ok, out) = support::run(
        check,
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            compose.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(compose).unwrap();
    let dir = compose.parent().unwrap();
    let mounts: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    for m in &mounts {
        // `./` alone mounts the whole exported folder.
        assert!(
            m.is_empty() || dir.join(m).is_file(),
            "bind-mounted {m} is not exported"
        );
    }
    (text, mounts)
}

/// Metric names a PromQL expression selects (identifiers right before `{`).
pub(crate) fn selected_metrics(promql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = promql.as_bytes();
    for (i, _) in promql.match_indices('{') {
        let mut j = i;
        while j > 0
            && (bytes[j - 1].is_ascii_alphanumeric()
                || bytes[j - 1] == b'_'
                || bytes[j - 1] == b':')
        {
            j -= 1;
        }
        if j < i {
            out.insert(promql[j..i].to_owned());
        }
    }
    out
}

pub(crate) fn grafana_macros(promql: &str) -> String {
    promql
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

#[test]
fn dashboard_fits_grafanas_schema_and_every_query_parses_and_names_scraped_metrics() {
    let (Some(check), Some(promtool)) =
        (support::tool("check-jsonschema"), support::tool("promtool"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    monitoring::export(dir.path()).unwrap();
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grafana-dashboard.schema.json");
    let dash = dir.path().join("grafana-dashboard.json");
    let (ok, out) = support::run(
        &check,
        &[
            "--schemafile",
            schema.to_str().unwrap(),
            dash.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dash).unwrap()).unwrap();
    let rows: Vec<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "System health",
            "Requests",
            "Generation",
            "Resources",
            "Business",
            "Fleet"
        ]
    );
    let types: BTreeSet<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("heatmap") && types.contains("piechart"),
        "{types:?}"
    );

    // Every query parses: each becomes a recording rule for promtool.
    let targets = monitoring::dashboard_targets();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, q)) in targets.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::Value::String(grafana_macros(q))
        ));
    }
    let rules_path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&rules_path, rules).unwrap();
    let (ok, out) = support::run(
        &promtool,
        &["check", "rules", rules_path.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");

    // Every metric they name is in a live scrape (GPU families are declared
    // even without a GPU; their series exist only with one).
    let data = tempfile::tempdir().unwrap();
    let telemetry = crate::telemetry::sampling_telemetry(data.path());
    let server = start_server(&telemetry);
    support::wait_for(Duration::from_secs(10), "a system sample", || {
        telemetry.latest("memory_used_percent")
    });
    let scrape = support::get(server.addr(), "/metrics").body;
    let exp = support::parse_exposition(&scrape);
    for (title, q) in &targets {
        for name in selected_metrics(q) {
            let base = name.trim_end_matches("_bucket").to_owned();
            assert!(
                exp.types.iter().any(|(n, _)| *n == base),
                "panel {title}: {name} is not in /metrics"
            );
            if !base.starts_with("gpu_") {
                assert!(
                    exp.samples.iter().any(|(n, _, _)| *n == name),
                    "panel {title}: no {name} samples"
                );
            }
        }
    }
}

/// A webhook receiver: collects the bodies Alertmanager posts.
pub(crate) fn webhook() -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    std::thread::Builder::new()
        .name("test-webhook".into())
        .spawn(move || {
            use std::io::{BufRead as _, BufReader, Read as _, Write as _};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().push(v);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        })
        .unwrap();
    (addr, got)
}

pub(crate) fn alert_state(prom: SocketAddr, name: &str) -> Option<String> {
    let r = support::get(prom, "/api/v1/alerts");
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .map(|a| a["state"].as_str().unwrap_or("").to_owned())
}

#[test]
fn bad_requests_fire_an_alert_through_prometheus_and_alertmanager_to_a_webhook_then_resolve() {
    let (Some(prometheus), Some(alertmanager)) = (
        support::tool("prometheus"),
        support::tool("prometheus-alertmanager"),
    ) else {
        return;
    };
    let telemetry = Telemetry::without_sampler().unwrap();
    let server = start_server(&telemetry);
    let (hook, received) = webhook();
    let dir = tempfile::tempdir().unwrap();

    // Alertmanager with the exported config, pointed at the test webhook and
    // with short grouping waits.
    let am_port = support::free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().unwrap();
    let am_cfg = monitoring::alertmanager_yaml(&format!("http://{hook}/alerts"))
        .replace("group_wait: 10s", "group_wait: 1s")
        .replace("group_interval: 1m", "group_interval: 1s");
    std::fs::write(dir.path().join("alertmanager.yml"), am_cfg).unwrap();
    let _am = support::spawn(
        &alertmanager,
        &[
            format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ),
            format!("--storage.path={}", dir.path().join("am").display()),
            format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=".to_owned(),
        ],
        &dir.path().join("alertmanager.log"),
    );
    support::wait_for(Duration::from_secs(30), "alertmanager ready", || {
        std::net::TcpStream::connect(am_addr).ok()?;
        (support::get(am_addr, "/-/ready").status == 200).then_some(())
    });

    // Prometheus with the generated rules, `for` shortened to 5 s, 1 s scrape.
    std::fs::write(
        dir.path().join("prometheus-rules.yml"),
        alerts::rules_yaml(&alerts::rules(), Some(5), true),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(monitoring::TARGETS_FILE),
        monitoring::targets_yaml(),
    )
    .unwrap();
    let config = monitoring::prometheus_yaml(&monitoring::PrometheusOptions {
        scrape_interval_secs: 1,
        evaluation_interval_secs: 1,
        studio_targets: vec![server.addr().to_string()],
        alertmanager: am_addr.to_string(),
        stack_jobs: false,
    });
    let (_prom, prom) = start_prometheus(&prometheus, dir.path(), &config);
    support::wait_for(Duration::from_secs(30), "the studio scraped", || {
        (!support::prom_query(prom, "up{job=\"orfeas\"} == 1").is_empty()).then_some(())
    });

    // Scripted bad requests: ~20 per second (404s count as errors).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let addr = server.addr();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                support::get(addr, "/api/does-not-exist");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    support::wait_for(Duration::from_secs(40), "CriticalErrorRate pending", || {
        (alert_state(prom, "CriticalErrorRate")? == "pending").then_some(())
    });
    support::wait_for(Duration::from_secs(40), "CriticalErrorRate firing", || {
        (alert_state(prom, "CriticalErrorRate")? == "firing").then_some(())
    });
    let delivered = |status: &str| {
        received.lock().iter().any(|b| {
            b["status"] == status
                && b["alerts"].as_array().is_some_and(|a| {
                    a.iter().any(|x| {
                        x["labels"]["alertname"] == "CriticalErrorRate" && x["status"] == status
                    })
                })
        })
    };
    support::wait_for(
        Duration::from_secs(60),
        "the firing alert at the webhook",
        || delivered("firing").then_some(()),
    );

    // Every dashboard query returns data from this Prometheus (GPU panels
    // only where a GPU exists).
    for (title, q) in monitoring::dashboard_targets() {
        if q.contains("gpu_")
            || q.contains("cpu_usage")
            || q.contains("memory_usage")
            || q.contains("disk_usage")
        {
            continue; // The sampler is off in this test; those are checked in a sampled scrape.
        }
        let r = support::prom_query(prom, &grafana_macros(&q));
        assert!(!r.is_empty(), "panel {title}: no data for {q}");
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    support::wait_for(
        Duration::from_secs(120),
        "the resolved alert at the webhook",
        || delivered("resolved").then_some(()),
    );
}
