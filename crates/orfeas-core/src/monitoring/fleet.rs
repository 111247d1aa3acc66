//! The fleet variant of the stack (`orfeas monitoring export DIR` writes it
//! next to the single-studio files):
//! two Prometheus replicas that find every worker through file-based service
//! discovery, both alerting a two-node Alertmanager cluster that
//! deduplicates, the fleet alert rules and the dashboard's Fleet row.
//!
//! Both replicas evaluate the same rules and send the same alerts; each
//! carries a `replica` external label for queries, dropped from alerts
//! (`alert_relabel_configs`) so that the Alertmanagers see one alert. The
//! Alertmanagers gossip their notification log (`--cluster.peer`), so the
//! receiver gets each notification once even though both got the alert.

use std::fmt::Write as _;

use super::{GENERATED, JOB};
use crate::telemetry::alerts::{push_rule, yaml_str};

/// Worker targets for file-based service discovery (re-read without a restart).
pub const WORKERS_FILE: &str = "fleet-workers.yml";
/// The fleet's alert rules, loaded next to `prometheus-rules.yml`.
pub const RULES_FILE: &str = "prometheus-fleet-rules.yml";
/// The compose file of the fleet stack.
pub const COMPOSE_FILE: &str = "docker-compose-fleet.yml";

/// What one replica's `prometheus-fleet-{replica}.yml` says.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// The replica's external label value (`a`, `b`).
    pub replica: String,
    pub scrape_interval_secs: u32,
    pub evaluation_interval_secs: u32,
    /// `host:port` of every Alertmanager of the cluster.
    pub alertmanagers: Vec<String>,
}

impl ReplicaOptions {
    /// The compose stack's settings for replica `replica`.
    pub fn compose(replica: &str) -> ReplicaOptions {
        ReplicaOptions {
            replica: replica.to_owned(),
            scrape_interval_secs: 10,
            evaluation_interval_secs: 10,
            alertmanagers: vec![
                "alertmanager-1:9093".to_owned(),
                "alertmanager-2:9093".to_owned(),
            ],
        }
    }
}

/// The configuration files of the two replicas.
pub const REPLICA_FILES: [(&str, &str); 2] = [
    ("a", "prometheus-fleet-a.yml"),
    ("b", "prometheus-fleet-b.yml"),
];

/// One replica's `prometheus.yml`: the studio rules plus the fleet rules,
/// every worker from [`WORKERS_FILE`], a `worker` label on each (the
/// target's host when the file gives none, so the label set stays as small
/// as the fleet).
pub fn prometheus_yaml(o: &ReplicaOptions) -> String {
    let mut s = String::from(GENERATED);
    let _ = write!(
        s,
        r#"global:
  scrape_interval: {si}s
  evaluation_interval: {ei}s
  external_labels:
    replica: {replica}

rule_files:
  - prometheus-rules.yml
  - {RULES_FILE}

alerting:
  # Both replicas send the same alerts; without `replica` they are one alert
  # to the Alertmanager cluster, which then notifies once.
  alert_relabel_configs:
    - action: labeldrop
      regex: replica
  alertmanagers:
    - static_configs:
        - targets: [{ams}]

scrape_configs:
  - job_name: {JOB}
    metrics_path: /metrics
    file_sd_configs:
      - files: [{WORKERS_FILE}]
        refresh_interval: 30s
    relabel_configs:
      # A target without a `worker` label gets its host name as one.
      - source_labels: [worker, __address__]
        separator: ";"
        regex: ";([^:]+)(:[0-9]+)?"
        target_label: worker
        replacement: "$1"
"#,
        si = o.scrape_interval_secs,
        ei = o.evaluation_interval_secs,
        replica = yaml_str(&o.replica),
        ams = o
            .alertmanagers
            .iter()
            .map(|a| yaml_str(a))
            .collect::<Vec<_>>()
            .join(", "),
    );
    s
}

/// The worker list, with commented examples.
pub fn workers_yaml() -> String {
    format!(
        "{GENERATED}# The fleet's workers (`orfeas serve --queue nats://… --bind 0.0.0.0:5000`), re-read every 30 s.\n# `worker` names each one on the dashboard; without it the host name is used.\n# - targets: [\"gpu-1.lan:5000\"]\n#   labels:\n#     worker: gpu-1\n# - targets: [\"gpu-2.lan:5000\"]\n#   labels:\n#     worker: gpu-2\n[]\n"
    )
}

/// One fleet alert rule.
#[derive(Clone, Debug)]
pub struct FleetRule {
    pub name: &'static str,
    pub expr: &'static str,
    pub for_secs: u32,
    pub severity: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
}

/// The fleet's alert rules.
pub fn rules() -> Vec<FleetRule> {
    vec![
        FleetRule {
            name: "FleetWorkerDown",
            // A listed worker Prometheus cannot scrape, or one that lost NATS.
            expr: r#"up{job="orfeas", worker!=""} == 0 or fleet_connected{job="orfeas"} == 0"#,
            for_secs: 120,
            severity: "critical",
            summary: "A fleet worker is down",
            description: "{{ $labels.instance }} takes no fleet jobs: Prometheus cannot scrape it, or it lost its NATS connection (see its /health).",
        },
        FleetRule {
            name: "FleetQueueStuck",
            // Work waited through the whole 10 minutes (a full window of
            // samples, never empty) and the backlog grew: no worker keeps up.
            expr: r#"min_over_time((max by (consumer) (fleet_consumer_pending{job="orfeas"}))[10m:1m]) > 0 and delta((max by (consumer) (fleet_consumer_pending{job="orfeas"}))[10m:1m]) > 0 and count_over_time((max by (consumer) (fleet_consumer_pending{job="orfeas"}))[10m:1m]) >= 10"#,
            for_secs: 0,
            severity: "warning",
            summary: "The fleet queue is stuck",
            description: "Jobs for {{ $labels.consumer }} have waited for 10 minutes and their number keeps growing: no worker that can run them is keeping up (are any up, with the model?).",
        },
        FleetRule {
            name: "FleetDeadLetters",
            expr: r#"sum by (reason) (increase(fleet_dead_letters_total{job="orfeas"}[15m])) > 0"#,
            for_secs: 0,
            severity: "warning",
            summary: "Fleet messages were set aside as dead letters",
            description: "{{ $value }} queue messages ({{ $labels.reason }}) could not be run in 15 minutes; inspect the ORFEAS_DEAD stream (`nats stream view ORFEAS_DEAD`).",
        },
    ]
}

/// `prometheus-fleet-rules.yml`; `for_override_secs` shortens every `for`
/// (end-to-end tests); `annotations: false` leaves out summary and
/// description (rule unit tests compare labels only).
pub fn rules_yaml(for_override_secs: Option<u32>, annotations: bool) -> String {
    let mut out = String::from(GENERATED);
    out.push_str("groups:\n  - name: orfeas-fleet\n    rules:\n");
    for r in rules() {
        push_rule(
            &mut out,
            r.name,
            r.expr,
            for_override_secs.map_or(r.for_secs, |o| o.min(r.for_secs)),
            r.severity,
            annotations.then_some((r.summary, r.description)),
        );
    }
    out
}

/// The compose file: the two replicas, the Alertmanager cluster, Grafana.
pub fn compose_yaml() -> String {
    format!(
        r#"{GENERATED}# The fleet stack: two Prometheus replicas, a 2-node Alertmanager cluster, Grafana.
# List the workers in {WORKERS_FILE}, then:
#   GRAFANA_ADMIN_PASSWORD=... docker compose -f {COMPOSE_FILE} up -d
# Prometheus a: http://localhost:9090, b: http://localhost:9091;
# Alertmanager: http://localhost:9093 and :9094; Grafana: http://localhost:3001.
services:
  prometheus-a:
    image: prom/prometheus:v2.53.0
    command: ["--config.file=/etc/prometheus/{a}", "--storage.tsdb.retention.time=15d", "--web.enable-lifecycle"]
    volumes:
      - ./:/etc/prometheus:ro
      - prometheus-a-data:/prometheus
    ports: ["9090:9090"]
    networks:
      default:
        aliases: [prometheus]
    restart: unless-stopped
  prometheus-b:
    image: prom/prometheus:v2.53.0
    command: ["--config.file=/etc/prometheus/{b}", "--storage.tsdb.retention.time=15d", "--web.enable-lifecycle"]
    volumes:
      - ./:/etc/prometheus:ro
      - prometheus-b-data:/prometheus
    ports: ["9091:9090"]
    restart: unless-stopped
  alertmanager-1:
    image: prom/alertmanager:v0.27.0
    command: ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager", "--cluster.listen-address=0.0.0.0:9094", "--cluster.peer=alertmanager-2:9094"]
    volumes:
      - ./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro
    ports: ["9093:9093"]
    extra_hosts: ["host.docker.internal:host-gateway"]
    restart: unless-stopped
  alertmanager-2:
    image: prom/alertmanager:v0.27.0
    command: ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager", "--cluster.listen-address=0.0.0.0:9094", "--cluster.peer=alertmanager-1:9094"]
    volumes:
      - ./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro
    ports: ["9094:9093"]
    extra_hosts: ["host.docker.internal:host-gateway"]
    restart: unless-stopped
  grafana:
    image: grafana/grafana:11.1.0
    environment:
      GF_SECURITY_ADMIN_PASSWORD: ${{GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}}
      GF_USERS_ALLOW_SIGN_UP: "false"
    volumes:
      - ./grafana-datasources.yml:/etc/grafana/provisioning/datasources/datasources.yml:ro
      - ./grafana-dashboards.yml:/etc/grafana/provisioning/dashboards/dashboards.yml:ro
      - ./grafana-dashboard.json:/var/lib/grafana/dashboards/orfeas.json:ro
      - grafana-data:/var/lib/grafana
    ports: ["3001:3000"]
    depends_on: [prometheus-a]
    restart: unless-stopped
volumes:
  prometheus-a-data:
  prometheus-b-data:
  grafana-data:
"#,
        a = REPLICA_FILES[0].1,
        b = REPLICA_FILES[1].1,
    )
}

/// Every file of the fleet variant with its contents.
pub fn files() -> Vec<(&'static str, String)> {
    let [(a, a_file), (b, b_file)] = REPLICA_FILES;
    vec![
        (COMPOSE_FILE, compose_yaml()),
        (a_file, prometheus_yaml(&ReplicaOptions::compose(a))),
        (b_file, prometheus_yaml(&ReplicaOptions::compose(b))),
        (WORKERS_FILE, workers_yaml()),
        (RULES_FILE, rules_yaml(None, true)),
    ]
}

/// The dashboard's Fleet row (Grafana only: the in-app Metrics tab shows one node).
pub fn panels() -> Vec<crate::telemetry::panels::Panel> {
    use crate::telemetry::panels::{Panel, PanelKind, Row, SCOPE, Target, Unit};
    let target = |promql: &str, legend: &str| Target {
        promql: promql.replace("SCOPE", SCOPE),
        legend: legend.to_owned(),
        heatmap: false,
    };
    let panel = |id, title, kind, unit, description, targets| Panel {
        id,
        title,
        // Placed by the dashboard after the studio rows.
        row: Row::Business,
        kind,
        unit,
        description,
        targets,
        series: Vec::new(),
    };
    vec![
        panel(
            "fleet_queue_depth",
            "Queue depth",
            PanelKind::TimeSeries,
            Unit::Count,
            "Jobs in the fleet queue (waiting or running), per priority; every node reports the same stream.",
            vec![target(
                "max by (priority) (fleet_queue_depth{SCOPE})",
                "{{priority}}",
            )],
        ),
        panel(
            "fleet_jobs_per_worker",
            "Jobs/s per worker",
            PanelKind::TimeSeries,
            Unit::PerSecond,
            "Fleet jobs each worker finished per second.",
            vec![target(
                "sum by (instance) (rate(fleet_jobs_processed_total{SCOPE, outcome=\"succeeded\"}[$__rate_interval]))",
                "{{instance}}",
            )],
        ),
        panel(
            "fleet_consumer_lag",
            "Consumer lag",
            PanelKind::TimeSeries,
            Unit::Count,
            "Jobs no worker has taken yet, per consumer (priority, kind, method).",
            vec![target(
                "max by (consumer) (fleet_consumer_pending{SCOPE})",
                "{{consumer}}",
            )],
        ),
        panel(
            "fleet_redeliveries",
            "Redeliveries and dead letters",
            PanelKind::TimeSeries,
            Unit::PerSecond,
            "Jobs delivered again after a worker went silent, and messages set aside as dead letters.",
            vec![
                target(
                    "sum by (kind) (rate(fleet_redeliveries_total{SCOPE}[$__rate_interval]))",
                    "redelivered {{kind}}",
                ),
                target(
                    "sum by (reason) (rate(fleet_dead_letters_total{SCOPE}[$__rate_interval]))",
                    "dead {{reason}}",
                ),
            ],
        ),
    ]
}
