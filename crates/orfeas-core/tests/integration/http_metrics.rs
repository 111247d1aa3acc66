//! `/health` and `/metrics` over HTTP, and a real Prometheus scraping them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use orfeas_core::http::{HttpState, ServeConfig, ServerHandle, serve};
use orfeas_core::telemetry::{GenerationKind, Outcome, Telemetry};

use crate::telemetry::support::{self, KillOnDrop, parse_exposition};

pub fn start_server(telemetry: &Telemetry) -> ServerHandle {
    serve(
        ServeConfig {
            bind: "127.0.0.1:0".into(),
            workers: 4,
            ..Default::default()
        },
        HttpState::new(telemetry.clone()),
    )
    .unwrap()
}

/// Starts Prometheus with `config` (rules and targets files beside it in `dir`).
pub fn start_prometheus(
    prometheus: &std::path::PathBuf,
    dir: &Path,
    config: &str,
) -> (KillOnDrop, SocketAddr) {
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = support::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let args = vec![
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={addr}"),
        "--web.enable-lifecycle".to_owned(),
    ];
    let child = support::spawn(prometheus, &args, &dir.join("prometheus.log"));
    support::wait_for(Duration::from_secs(30), "prometheus ready", || {
        std::net::TcpStream::connect(addr).ok()?;
        (support::get(addr, "/-/ready").status == 200).then_some(())
    });
    (child, addr)
}

#[test]
fn health_and_unknown_paths_are_answered_and_counted_once() {
    let telemetry = Telemetry::without_sampler().unwrap();
    let server = start_server(&telemetry);
    let health = support::get(server.addr(), "/health");
    assert_eq!(health.status, 200);
    let v: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(v["status"], "ok");
    for _ in 0..3 {
        let r = support::get(server.addr(), "/no/such/page?x=1");
        assert_eq!(r.status, 404);
        let e: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(e["error"]["code"], "not_found");
    }
    assert_eq!(
        support::http(server.addr(), "POST", "/metrics", "{}").status,
        405
    );
    let exp = parse_exposition(&support::get(server.addr(), "/metrics").body);
    assert_eq!(
        exp.sum(
            "http_requests_total",
            &[("endpoint", "/health"), ("status", "200")]
        ),
        1.0
    );
    // Raw paths never become label values.
    assert_eq!(
        exp.sum(
            "http_requests_total",
            &[("endpoint", "other"), ("status", "404")]
        ),
        3.0
    );
    assert!(
        !exp.samples
            .iter()
            .any(|(_, l, _)| l.iter().any(|(_, v)| v.contains("no/such")))
    );
    assert_eq!(exp.sum("errors_total", &[("type", "not_found")]), 4.0);
    assert_eq!(
        exp.sum(
            "http_request_duration_seconds_count",
            &[("endpoint", "/health")]
        ),
        1.0
    );
    // The scrape being answered is in flight while it is encoded.
    assert_eq!(exp.sum("concurrent_requests", &[]), 1.0);
}

#[test]
fn a_real_prometheus_scrapes_the_server_and_sees_a_failed_generation() {
    let Some(prometheus) = support::tool("prometheus") else {
        return;
    };
    let telemetry = Telemetry::without_sampler().unwrap();
    let server = start_server(&telemetry);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: orfeas\n    static_configs:\n      - targets: [\"{}\"]\n",
        server.addr()
    );
    let (_prom, addr) = start_prometheus(&prometheus, dir.path(), &config);
    support::wait_for(Duration::from_secs(30), "up == 1", || {
        let r = support::prom_query(addr, "up{job=\"orfeas\"} == 1");
        (!r.is_empty()).then_some(())
    });
    telemetry.record_generation(
        GenerationKind::ImageTo3d,
        "stl",
        "high",
        Outcome::Failed {
            reason: "out_of_memory",
            duration_secs: 4.0,
        },
    );
    let v = support::wait_for(
        Duration::from_secs(30),
        "the failed generation in Prometheus",
        || {
            let r = support::prom_query(
                addr,
                "failed_generations_total{kind=\"image_to_3d\", reason=\"out_of_memory\"} > 0",
            );
            r.first()
                .map(|s| s["value"][1].as_str().unwrap().to_owned())
        },
    );
    assert_eq!(v, "1");
    let m3d = support::prom_query(
        addr,
        "model_3d_generations_total{format=\"stl\", quality=\"high\", status=\"failure\"}",
    );
    assert_eq!(m3d[0]["value"][1], "1");
}
