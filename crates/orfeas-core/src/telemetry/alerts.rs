//! The 12 alert rules of DESIGN.md, defined once: the in-app engine evaluates
//! them on the derived series with Prometheus's `for` semantics, and
//! [`prometheus_rules_yaml`] writes the same rules for Prometheus.

mod notify;

use std::fmt::Write as _;

use super::derive::{Agg, Deriver, Expr, Matcher, sel};

pub use notify::{Notifier, alertmanager_payload, rfc3339};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Critical,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// How the value is compared with the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Above,
    Below,
    Equal,
}

impl Cmp {
    fn promql(self) -> &'static str {
        match self {
            Cmp::Above => ">",
            Cmp::Below => "<",
            Cmp::Equal => "==",
        }
    }

    /// PromQL comparison semantics: NaN never compares true.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Above => value > threshold,
            Cmp::Below => value < threshold,
            Cmp::Equal => value == threshold,
        }
    }
}

/// One alert rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    pub name: &'static str,
    pub severity: Severity,
    /// The PromQL of the watched value, per studio (`job`, `instance`).
    pub value_promql: &'static str,
    pub cmp: Cmp,
    pub threshold: f64,
    pub for_secs: u32,
    /// What the watched value measures, for showing it.
    pub unit: ValueUnit,
    pub summary: &'static str,
    /// May use `{{ $value | humanize }}` and `{{ $labels.instance }}` (Prometheus templates).
    pub description: &'static str,
    /// The same value computed in-app from the registry's snapshots.
    pub expr: Expr,
}

impl AlertRule {
    /// The full PromQL alert expression.
    pub fn promql(&self) -> String {
        format!(
            "{} {} {}",
            self.value_promql,
            self.cmp.promql(),
            fmt_num(self.threshold)
        )
    }

    /// The description with Prometheus's template fields filled in-app.
    pub fn render_description(&self, value: Option<f64>) -> String {
        let v = value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
        self.description
            .replace("{{ $value | humanize }}", &v)
            .replace("{{ $labels.instance }}", "this studio")
    }
}

/// The unit of an alert's watched value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueUnit {
    /// Prometheus's `up`: 1 reachable, 0 not.
    Up,
    PerSecond,
    Seconds,
    Percent,
    /// A fraction 0..1, shown as a percentage.
    Fraction,
}

impl ValueUnit {
    /// The value as a person reads it: "48.0 %", "0.25 /s", "up"; "no data" when there is none.
    pub fn format(self, value: Option<f64>) -> String {
        let Some(v) = value.filter(|v| v.is_finite()) else {
            return "no data".to_owned();
        };
        let num = |v: f64| {
            if v == 0.0 {
                "0".to_owned()
            } else if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else if v.abs() >= 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.3}")
            }
        };
        match self {
            ValueUnit::Up if v >= 1.0 => "up".to_owned(),
            ValueUnit::Up => "down".to_owned(),
            ValueUnit::PerSecond => format!("{} /s", num(v)),
            ValueUnit::Seconds => format!("{} s", num(v)),
            ValueUnit::Percent => format!("{} %", num(v)),
            ValueUnit::Fraction => format!("{} %", num(v * 100.0)),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The 12 rules, in DESIGN.md's order.
pub fn rules() -> Vec<AlertRule> {
    let errors = |w| Expr::Rate(sel("errors_total", &[]), w);
    let p95 = || Expr::Quantile(0.95, sel("http_request_duration_seconds", &[]), 300);
    let cpu = || {
        Expr::Value(
            sel("cpu_usage_percent", &[Matcher::Eq("core", "total")]),
            Agg::Max,
        )
    };
    let mem = || {
        Expr::Value(
            sel("memory_usage_bytes", &[Matcher::Eq("type", "used")]),
            Agg::Sum,
        )
        .over(Expr::Value(
            sel("memory_usage_bytes", &[Matcher::Eq("type", "total")]),
            Agg::Sum,
        ))
        .scale(100.0)
    };
    let failed = || Expr::Rate(sel("failed_generations_total", &[]), 300);
    let succeeded = || Expr::Rate(sel("successful_generations_total", &[]), 300);
    vec![
        AlertRule {
            name: "ApplicationDown",
            severity: Severity::Critical,
            value_promql: r#"up{job="orfeas"}"#,
            cmp: Cmp::Equal,
            threshold: 0.0,
            for_secs: 60,
            unit: ValueUnit::Up,
            summary: "ORFEAS Studio is unreachable",
            description: "Prometheus cannot scrape /metrics of {{ $labels.instance }}; check that `orfeas serve` runs and the port is reachable.",
            expr: Expr::Value(sel("up", &[]), Agg::Min),
        },
        AlertRule {
            name: "CriticalErrorRate",
            severity: Severity::Critical,
            value_promql: "sum by (job, instance) (rate(errors_total[1m]))",
            cmp: Cmp::Above,
            threshold: 1.0,
            for_secs: 120,
            unit: ValueUnit::PerSecond,
            summary: "More than 1 error per second",
            description: "{{ $labels.instance }} counts {{ $value | humanize }} errors/s; see the Errors by type panel and the log.",
            expr: errors(60),
        },
        AlertRule {
            name: "CriticalLatency",
            severity: Severity::Critical,
            value_promql: "histogram_quantile(0.95, sum by (job, instance, le) (rate(http_request_duration_seconds_bucket[5m])))",
            cmp: Cmp::Above,
            threshold: 30.0,
            for_secs: 120,
            unit: ValueUnit::Seconds,
            summary: "HTTP p95 latency above 30 s",
            description: "p95 request latency of {{ $labels.instance }} is {{ $value | humanize }} s; the server is overloaded or blocked.",
            expr: p95(),
        },
        AlertRule {
            name: "CriticalCPUUsage",
            severity: Severity::Critical,
            value_promql: r#"max by (job, instance) (cpu_usage_percent{core="total"})"#,
            cmp: Cmp::Above,
            threshold: 95.0,
            for_secs: 120,
            unit: ValueUnit::Percent,
            summary: "CPU above 95 %",
            description: "CPU of {{ $labels.instance }} is at {{ $value | humanize }} %; lower the job concurrency or move work to a GPU.",
            expr: cpu(),
        },
        AlertRule {
            name: "CriticalMemoryUsage",
            severity: Severity::Critical,
            value_promql: r#"100 * sum by (job, instance) (memory_usage_bytes{type="used"}) / sum by (job, instance) (memory_usage_bytes{type="total"})"#,
            cmp: Cmp::Above,
            threshold: 95.0,
            for_secs: 120,
            unit: ValueUnit::Percent,
            summary: "Memory above 95 %",
            description: "Memory of {{ $labels.instance }} is {{ $value | humanize }} % used; the system may start swapping or kill the studio.",
            expr: mem(),
        },
        AlertRule {
            name: "PossibleDDoS",
            severity: Severity::Critical,
            value_promql: "sum by (job, instance) (rate(rate_limit_rejections_total[1m]))",
            cmp: Cmp::Above,
            threshold: 10.0,
            for_secs: 60,
            unit: ValueUnit::PerSecond,
            summary: "More than 10 rate-limit rejections per second",
            description: "{{ $labels.instance }} rejects {{ $value | humanize }} requests/s with 429; check the clients hitting the API.",
            expr: Expr::Rate(sel("rate_limit_rejections_total", &[]), 60),
        },
        AlertRule {
            name: "HighErrorRate",
            severity: Severity::Warning,
            value_promql: "sum by (job, instance) (rate(errors_total[5m]))",
            cmp: Cmp::Above,
            threshold: 0.1,
            for_secs: 300,
            unit: ValueUnit::PerSecond,
            summary: "More than 0.1 errors per second",
            description: "{{ $labels.instance }} counts {{ $value | humanize }} errors/s over 5 minutes; see the Errors by type panel.",
            expr: errors(300),
        },
        AlertRule {
            name: "HighLatency",
            severity: Severity::Warning,
            value_promql: "histogram_quantile(0.95, sum by (job, instance, le) (rate(http_request_duration_seconds_bucket[5m])))",
            cmp: Cmp::Above,
            threshold: 5.0,
            for_secs: 300,
            unit: ValueUnit::Seconds,
            summary: "HTTP p95 latency above 5 s",
            description: "p95 request latency of {{ $labels.instance }} is {{ $value | humanize }} s.",
            expr: p95(),
        },
        AlertRule {
            name: "HighCPUUsage",
            severity: Severity::Warning,
            value_promql: r#"max by (job, instance) (cpu_usage_percent{core="total"})"#,
            cmp: Cmp::Above,
            threshold: 80.0,
            for_secs: 300,
            unit: ValueUnit::Percent,
            summary: "CPU above 80 %",
            description: "CPU of {{ $labels.instance }} is at {{ $value | humanize }} %.",
            expr: cpu(),
        },
        AlertRule {
            name: "HighMemoryUsage",
            severity: Severity::Warning,
            value_promql: r#"100 * sum by (job, instance) (memory_usage_bytes{type="used"}) / sum by (job, instance) (memory_usage_bytes{type="total"})"#,
            cmp: Cmp::Above,
            threshold: 85.0,
            for_secs: 300,
            unit: ValueUnit::Percent,
            summary: "Memory above 85 %",
            description: "Memory of {{ $labels.instance }} is {{ $value | humanize }} % used.",
            expr: mem(),
        },
        AlertRule {
            name: "HighGenerationFailureRate",
            severity: Severity::Warning,
            value_promql: "sum by (job, instance) (rate(failed_generations_total[5m])) / (sum by (job, instance) (rate(successful_generations_total[5m])) + sum by (job, instance) (rate(failed_generations_total[5m])))",
            cmp: Cmp::Above,
            threshold: 0.2,
            for_secs: 300,
            unit: ValueUnit::Fraction,
            summary: "More than 20 % of generations fail",
            description: "{{ $value | humanize }} of the generations of {{ $labels.instance }} failed over 5 minutes; see failed_generations_total by reason.",
            expr: failed().over(succeeded().plus(failed())),
        },
        AlertRule {
            name: "LowDiskSpace",
            severity: Severity::Warning,
            value_promql: r#"100 * sum by (job, instance, mount) (disk_usage_bytes{type="free"}) / sum by (job, instance, mount) (disk_usage_bytes{type="total"})"#,
            cmp: Cmp::Below,
            threshold: 20.0,
            for_secs: 300,
            unit: ValueUnit::Percent,
            summary: "Less than 20 % disk space free",
            description: "Only {{ $value | humanize }} % of the data disk of {{ $labels.instance }} is free; delete old outputs or move the data dir (ORFEAS_DATA_DIR).",
            expr: Expr::Value(
                sel("disk_usage_bytes", &[Matcher::Eq("type", "free")]),
                Agg::Sum,
            )
            .over(Expr::Value(
                sel("disk_usage_bytes", &[Matcher::Eq("type", "total")]),
                Agg::Sum,
            ))
            .scale(100.0),
        },
    ]
}

/// Formats seconds as a Prometheus duration (`90s`, `2m`).
pub fn prom_duration(secs: u32) -> String {
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

pub(crate) fn yaml_str(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `prometheus-rules.yml` for the given rules; `for_override_secs` shortens
/// every `for` (end-to-end tests); `annotations: false` leaves out summary and
/// description (rule unit tests compare labels only).
pub fn rules_yaml(
    rules: &[AlertRule],
    for_override_secs: Option<u32>,
    annotations: bool,
) -> String {
    let mut out = String::new();
    out.push_str(
        "# Generated by `orfeas monitoring rules` from orfeas-core's telemetry/alerts.rs.\n",
    );
    out.push_str("# Do not edit: change the definitions in code and re-export.\n");
    out.push_str("groups:\n  - name: orfeas\n    rules:\n");
    for r in rules {
        push_rule(
            &mut out,
            r.name,
            &r.promql(),
            for_override_secs.unwrap_or(r.for_secs),
            r.severity.as_str(),
            annotations.then_some((r.summary, r.description)),
        );
    }
    out
}

/// One alerting rule as an item of a rule group's `rules:` list.
pub(crate) fn push_rule(
    out: &mut String,
    name: &str,
    expr: &str,
    for_secs: u32,
    severity: &str,
    annotations: Option<(&str, &str)>,
) {
    let _ = writeln!(out, "      - alert: {name}");
    let _ = writeln!(out, "        expr: {}", yaml_str(expr));
    let _ = writeln!(out, "        for: {}", prom_duration(for_secs));
    let _ = writeln!(out, "        labels:\n          severity: {severity}");
    if let Some((summary, description)) = annotations {
        let _ = writeln!(out, "        annotations:");
        let _ = writeln!(out, "          summary: {}", yaml_str(summary));
        let _ = writeln!(out, "          description: {}", yaml_str(description));
    }
}

/// The rules file Prometheus loads (`orfeas monitoring rules` prints it).
pub fn prometheus_rules_yaml() -> String {
    rules_yaml(&rules(), None, true)
}

/// An alert's state, as in Prometheus plus `Resolved` (inactive after firing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One rule's live status, for the Alerts tab.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertStatus {
    pub name: &'static str,
    pub severity: Severity,
    pub state: AlertState,
    /// Unix seconds of the last state change.
    pub since_unix_secs: f64,
    /// When the condition became true (Prometheus's `activeAt`).
    pub active_at_unix_secs: Option<f64>,
    /// The watched value at the last evaluation (`None`: no data).
    pub value: Option<f64>,
    pub unit: ValueUnit,
    pub summary: &'static str,
    pub description: String,
}

/// A state change.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub name: &'static str,
    pub severity: Severity,
    pub from: AlertState,
    pub to: AlertState,
    pub at_unix_secs: f64,
    pub value: Option<f64>,
    pub unit: ValueUnit,
}

/// How many transitions the engine keeps.
pub const HISTORY_LEN: usize = 1000;

/// Evaluates the rules with Prometheus's semantics: true → pending (active
/// since now); pending for at least `for` → firing; false → inactive, or
/// resolved if it was firing.
pub struct AlertEngine {
    rules: Vec<AlertRule>,
    status: Vec<AlertStatus>,
    history: std::collections::VecDeque<Transition>,
}

impl AlertEngine {
    pub fn new(rules: Vec<AlertRule>) -> AlertEngine {
        let status = rules
            .iter()
            .map(|r| AlertStatus {
                name: r.name,
                severity: r.severity,
                state: AlertState::Inactive,
                since_unix_secs: 0.0,
                active_at_unix_secs: None,
                value: None,
                unit: r.unit,
                summary: r.summary,
                description: r.render_description(None),
            })
            .collect();
        AlertEngine {
            rules,
            status,
            history: std::collections::VecDeque::new(),
        }
    }

    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// Evaluates every rule at `now_unix_secs`; returns the transitions made.
    pub fn evaluate(&mut self, deriver: &Deriver, now_unix_secs: f64) -> Vec<Transition> {
        let mut changes = Vec::new();
        for (rule, st) in self.rules.iter().zip(self.status.iter_mut()) {
            let value = deriver.eval(&rule.expr);
            let active = value.is_some_and(|v| rule.cmp.holds(v, rule.threshold));
            st.value = value;
            st.description = rule.render_description(value);
            let from = st.state;
            let to = match (from, active) {
                (AlertState::Inactive | AlertState::Resolved, true) => {
                    st.active_at_unix_secs = Some(now_unix_secs);
                    if rule.for_secs == 0 {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    }
                }
                (AlertState::Pending, true) => {
                    let since = st.active_at_unix_secs.unwrap_or(now_unix_secs);
                    // Small tolerance: evaluation ticks drift by microseconds.
                    if now_unix_secs - since + 1e-6 >= f64::from(rule.for_secs) {
                        AlertState::Firing
                    } else {
                        AlertState::Pending
                    }
                }
                (AlertState::Firing, true) => AlertState::Firing,
                (AlertState::Pending, false) => {
                    st.active_at_unix_secs = None;
                    AlertState::Inactive
                }
                (AlertState::Firing, false) => {
                    st.active_at_unix_secs = None;
                    AlertState::Resolved
                }
                (s @ (AlertState::Inactive | AlertState::Resolved), false) => s,
            };
            if to != from {
                st.state = to;
                st.since_unix_secs = now_unix_secs;
                let t = Transition {
                    name: rule.name,
                    severity: rule.severity,
                    from,
                    to,
                    at_unix_secs: now_unix_secs,
                    value,
                    unit: rule.unit,
                };
                if self.history.len() >= HISTORY_LEN {
                    self.history.pop_front();
                }
                self.history.push_back(t.clone());
                changes.push(t);
            }
        }
        changes
    }

    pub fn status(&self) -> &[AlertStatus] {
        &self.status
    }

    pub fn firing(&self) -> impl Iterator<Item = &AlertStatus> {
        self.status.iter().filter(|s| s.state == AlertState::Firing)
    }

    /// Transitions, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Transition> {
        self.history.iter()
    }
}
