//! The fleet variant of the stack: the real tools accept it, `promtool test
//! rules` shows each fleet alert fires when it should and not otherwise, and
//! two Prometheus replicas alerting a two-node Alertmanager cluster notify a
//! webhook once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use orfeas_core::monitoring::{self, fleet};

use crate::http_metrics::start_prometheus;
use crate::monitoring::{alert_state, webhook};
use crate::telemetry::support;

#[test]
fn the_fleet_stack_passes_promtool_amtool_and_the_compose_spec() {
    let (Some(promtool), Some(amtool), Some(check)) = (
        support::tool("promtool"),
        support::tool("amtool"),
        support::tool("check-jsonschema"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    monitoring::export(dir.path()).unwrap();
    for (_, file) in fleet::REPLICA_FILES {
        let cfg = dir.path().join(file);
        let (ok, out) = support::run(&promtool, &["check", "config", cfg.to_str().unwrap()], None);
        assert!(ok, "{file}: {out}");
        // The studio rules and the fleet rules, both loaded.
        assert!(out.contains("SUCCESS: 12 rules found"), "{file}: {out}");
        assert!(out.contains("SUCCESS: 3 rules found"), "{file}: {out}");
    }
    let rules = dir.path().join(fleet::RULES_FILE);
    let (ok, out) = support::run(
        &promtool,
        &["check", "rules", rules.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}");
    let am = dir.path().join("alertmanager.yml");
    let (ok, out) = support::run(&amtool, &["check-config", am.to_str().unwrap()], None);
    assert!(ok, "{out}");

    let (text, _) = crate::monitoring::check_compose(&check, &dir.path().join(fleet::COMPOSE_FILE));
    // Each Alertmanager names the other as its peer.
    assert!(
        text.contains("--cluster.peer=alertmanager-2:9094"),
        "{text}"
    );
    assert!(
        text.contains("--cluster.peer=alertmanager-1:9094"),
        "{text}"
    );
    for (_, file) in fleet::REPLICA_FILES {
        assert!(
            text.contains(&format!("--config.file=/etc/prometheus/{file}")),
            "{file}"
        );
    }
}

/// A `promtool test rules` file written by hand from what each rule means.
const FLEET_RULE_TESTS: &str = r#"rule_files:
  - prometheus-fleet-rules.yml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # gpu-1 stops answering at minute 2; a studio without a worker label is down all along.
      - series: 'up{job="orfeas", instance="gpu-1:5000", worker="gpu-1"}'
        values: '1 1 0 0 0 0 0 0'
      - series: 'up{job="orfeas", instance="studio:5000"}'
        values: '0 0 0 0 0 0 0 0'
      # gpu-2 answers but loses NATS at minute 1; gpu-3 keeps it.
      - series: 'fleet_connected{job="orfeas", instance="gpu-2:5000", worker="gpu-2"}'
        values: '1 0 0 0 0 0 0 0'
      - series: 'fleet_connected{job="orfeas", instance="gpu-3:5000", worker="gpu-3"}'
        values: '1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 2m
        alertname: FleetWorkerDown
      - eval_time: 5m
        alertname: FleetWorkerDown
        exp_alerts:
          - exp_labels: {severity: critical, job: orfeas, instance: "gpu-1:5000", worker: gpu-1}
          - exp_labels: {severity: critical, job: orfeas, instance: "gpu-2:5000", worker: gpu-2}
  - interval: 1m
    input_series:
      # Seen by two workers (the same stream): a backlog that grows for the whole window,
      - series: 'fleet_consumer_pending{job="orfeas", instance="w1:5000", consumer="orfeas-batch-image-to-3d-triposr"}'
        values: '1+1x20'
      - series: 'fleet_consumer_pending{job="orfeas", instance="w2:5000", consumer="orfeas-batch-image-to-3d-triposr"}'
        values: '1+1x20'
      # one that drains, one that is steady (workers keep up), one emptied at minute 8.
      - series: 'fleet_consumer_pending{job="orfeas", instance="w1:5000", consumer="orfeas-interactive-text-to-image-sd-turbo"}'
        values: '20-1x20'
      - series: 'fleet_consumer_pending{job="orfeas", instance="w1:5000", consumer="orfeas-interactive-image-to-3d-inflate"}'
        values: '3x20'
      - series: 'fleet_consumer_pending{job="orfeas", instance="w1:5000", consumer="orfeas-batch-text-to-image-sd-turbo"}'
        values: '1+1x7 0 1+1x11'
    alert_rule_test:
      - eval_time: 5m
        alertname: FleetQueueStuck
      - eval_time: 15m
        alertname: FleetQueueStuck
        exp_alerts:
          - exp_labels: {severity: warning, consumer: orfeas-batch-image-to-3d-triposr}
  - interval: 1m
    input_series:
      - series: 'fleet_dead_letters_total{job="orfeas", instance="w1:5000", reason="malformed"}'
        values: '0 0 0 1 1 1'
      - series: 'fleet_dead_letters_total{job="orfeas", instance="w1:5000", reason="wrong_subject"}'
        values: '0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 2m
        alertname: FleetDeadLetters
      - eval_time: 5m
        alertname: FleetDeadLetters
        exp_alerts:
          - exp_labels: {severity: warning, reason: malformed}
"#;

#[test]
fn fleet_alerts_fire_when_a_worker_is_down_the_queue_is_stuck_or_messages_die() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(fleet::RULES_FILE),
        fleet::rules_yaml(None, false),
    )
    .unwrap();
    let tests = dir.path().join("fleet_test.yml");
    std::fs::write(&tests, FLEET_RULE_TESTS).unwrap();
    let (ok, out) = support::run(&promtool, &["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok, "promtool test rules failed:\n{out}");
}

/// An Alertmanager of a two-node cluster, on loopback.
fn start_alertmanager(
    alertmanager: &std::path::PathBuf,
    dir: &Path,
    name: &str,
    cluster: u16,
    peer: u16,
) -> (support::KillOnDrop, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let child = support::spawn(
        alertmanager,
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join(name).display()),
            format!("--web.listen-address={addr}"),
            format!("--cluster.listen-address=127.0.0.1:{cluster}"),
            format!("--cluster.peer=127.0.0.1:{peer}"),
            // The second node waits this long for the first one's notification
            // to reach it by gossip before it would send its own.
            "--cluster.peer-timeout=5s".to_owned(),
            "--cluster.gossip-interval=100ms".to_owned(),
            "--cluster.pushpull-interval=2s".to_owned(),
        ],
        &dir.join(format!("{name}.log")),
    );
    support::wait_for(Duration::from_secs(30), "alertmanager ready", || {
        std::net::TcpStream::connect(addr).ok()?;
        (support::get(addr, "/-/ready").status == 200).then_some(())
    });
    (child, addr)
}

/// Alert names an Alertmanager holds (active, from any sender).
fn am_alerts(am: SocketAddr) -> Vec<serde_json::Value> {
    let r = support::get(am, "/api/v2/alerts");
    serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn two_prometheus_replicas_and_two_clustered_alertmanagers_notify_the_webhook_once() {
    let (Some(prometheus), Some(alertmanager)) = (
        support::tool("prometheus"),
        support::tool("prometheus-alertmanager"),
    ) else {
        return;
    };
    let (hook, received) = webhook();
    let dir = tempfile::tempdir().unwrap();
    let am_cfg = monitoring::alertmanager_yaml(&format!("http://{hook}/alerts"))
        .replace("group_wait: 10s", "group_wait: 1s")
        .replace("group_interval: 1m", "group_interval: 1s");
    std::fs::write(dir.path().join("alertmanager.yml"), am_cfg).unwrap();
    let (c1, c2) = (support::free_port(), support::free_port());
    let (_am1, am1) = start_alertmanager(&alertmanager, dir.path(), "am1", c1, c2);
    let (_am2, am2) = start_alertmanager(&alertmanager, dir.path(), "am2", c2, c1);
    support::wait_for(
        Duration::from_secs(30),
        "the two Alertmanagers see each other",
        || {
            let r = support::get(am1, "/api/v2/status");
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            (v["cluster"]["peers"].as_array()?.len() == 2).then_some(())
        },
    );

    // One worker listed that nothing answers on: FleetWorkerDown (for shortened to 1 s).
    let dead = support::free_port();
    let mut replicas = Vec::new();
    for (replica, _) in fleet::REPLICA_FILES {
        let rdir = dir.path().join(format!("prometheus-{replica}"));
        std::fs::create_dir_all(&rdir).unwrap();
        std::fs::write(
            rdir.join(fleet::RULES_FILE),
            fleet::rules_yaml(Some(1), true),
        )
        .unwrap();
        // The studio rules would fire ApplicationDown for the same target: left out here.
        std::fs::write(rdir.join("prometheus-rules.yml"), "groups: []\n").unwrap();
        std::fs::write(
            rdir.join(fleet::WORKERS_FILE),
            format!("- targets: [\"127.0.0.1:{dead}\"]\n  labels:\n    worker: ghost\n"),
        )
        .unwrap();
        let config = fleet::prometheus_yaml(&fleet::ReplicaOptions {
            replica: replica.to_owned(),
            scrape_interval_secs: 1,
            evaluation_interval_secs: 1,
            alertmanagers: vec![am1.to_string(), am2.to_string()],
        });
        replicas.push(start_prometheus(&prometheus, &rdir, &config));
    }
    for (_, prom) in &replicas {
        support::wait_for(Duration::from_secs(40), "FleetWorkerDown firing", || {
            (alert_state(*prom, "FleetWorkerDown")? == "firing").then_some(())
        });
        // Prometheus queries keep the replica label; the alerts drop it.
        let up = support::prom_query(*prom, "up{worker=\"ghost\"}");
        assert_eq!(up.len(), 1, "{up:?}");
    }
    // Both Alertmanagers hold the alert (each got it from both replicas) ...
    for am in [am1, am2] {
        support::wait_for(
            Duration::from_secs(30),
            "the alert in each Alertmanager",
            || {
                am_alerts(am)
                    .iter()
                    .any(|a| a["labels"]["alertname"] == "FleetWorkerDown")
                    .then_some(())
            },
        );
    }
    let firing = || {
        received
            .lock()
            .iter()
            .filter(|b| {
                b["status"] == "firing"
                    && b["alerts"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|x| x["labels"]["alertname"] == "FleetWorkerDown")
                    })
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    support::wait_for(
        Duration::from_secs(60),
        "the notification at the webhook",
        || (!firing().is_empty()).then_some(()),
    );
    // ... and the webhook hears of it once: longer than the peer timeout and
    // many group intervals, so a second node's notification would be here.
    std::thread::sleep(Duration::from_secs(12));
    let got = firing();
    assert_eq!(
        got.len(),
        1,
        "the webhook was notified {} times: {got:#?}",
        got.len()
    );
    // One alert in it: the replicas' copies were one alert to the cluster.
    assert_eq!(got[0]["alerts"].as_array().unwrap().len(), 1, "{got:#?}");
    let alert = &got[0]["alerts"][0];
    assert_eq!(alert["labels"]["worker"], "ghost", "{alert}");
    assert!(alert["labels"].get("replica").is_none(), "{alert}");
}

#[test]
fn the_fleet_row_queries_parse_and_name_series_a_fleet_node_exports() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let panels = fleet::panels();
    let mut rules = String::from("groups:\n  - name: fleet-dashboard\n    rules:\n");
    let mut i = 0;
    for p in &panels {
        for t in &p.targets {
            rules.push_str(&format!(
                "      - record: dashboard:fleet{i}\n        expr: {}\n",
                serde_json::Value::String(crate::monitoring::grafana_macros(&t.promql))
            ));
            i += 1;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet-dashboard.yml");
    std::fs::write(&path, rules).unwrap();
    let (ok, out) = support::run(&promtool, &["check", "rules", path.to_str().unwrap()], None);
    assert!(ok, "{out}");

    // The series they name are what a fleet node registers.
    let registry = prometheus::Registry::new();
    let metrics = orfeas_core::fleet::FleetMetrics::new();
    metrics.register(&registry).unwrap();
    // Per-consumer and per-outcome series appear once a worker has a consumer and a result.
    metrics
        .consumer_pending
        .with_label_values(&["orfeas-interactive-image-to-3d-inflate"])
        .set(2.0);
    metrics
        .processed
        .with_label_values(&["image_to_3d", "succeeded"])
        .inc();
    let exposition = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for p in &panels {
        for t in &p.targets {
            for name in crate::monitoring::selected_metrics(&t.promql) {
                assert!(
                    exposition.contains(&format!("# TYPE {name} ")),
                    "panel {}: {name} is not a fleet series",
                    p.title
                );
            }
        }
    }
    // The dashboard holds the row.
    let dash = monitoring::dashboard_json();
    for p in &panels {
        assert!(
            dash.contains(p.title),
            "{} missing from the dashboard",
            p.title
        );
    }
}
