//! The alert rules: promtool accepts them, a hand-written `promtool test rules`
//! file proves each alert fires when it should and not otherwise, and the
//! in-app engine reaches the same decisions on the same series.

use std::collections::{BTreeMap, BTreeSet};

use orfeas_core::telemetry::alerts::{self, AlertEngine, AlertState};
use orfeas_core::telemetry::{Deriver, FlatSample};

use crate::telemetry::support;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn generated_rules_pass_promtool_check_rules() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus-rules.yml");
    std::fs::write(&path, alerts::prometheus_rules_yaml()).unwrap();
    let (ok, out) = support::run(&promtool, &["check", "rules", path.to_str().unwrap()], None);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
}

/// Expands promtool's series notation (`a+bxn`, `a-bxn`, `axn`, plain values).
fn expand(values: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for tok in values.split_whitespace() {
        if let Some((head, n)) = tok.split_once('x') {
            let n: usize = n.parse().unwrap();
            let (start, step) = if let Some(i) = head[1..].find(['+', '-']).map(|i| i + 1) {
                let (a, b) = head.split_at(i);
                (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap())
            } else {
                (head.parse::<f64>().unwrap(), 0.0)
            };
            out.extend((0..=n).map(|i| start + step * i as f64));
        } else {
            out.push(tok.parse().unwrap());
        }
    }
    out
}

fn parse_series(s: &str) -> (String, Vec<(String, String)>) {
    let (name, rest) = s.split_once('{').unwrap();
    let labels = rest
        .trim_end_matches('}')
        .split(',')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect();
    (name.to_owned(), labels)
}

/// (metric name, labels, values per minute)
type InputSeries = (String, Vec<(String, String)>, Vec<f64>);

#[test]
fn promtool_and_the_in_app_engine_fire_the_same_alerts_at_the_same_times() {
    let text = std::fs::read_to_string(fixture("alerts_test.yml")).unwrap();
    // The fixture is YAML written in JSON syntax, so both tools read one file.
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let test = &doc["tests"][0];

    // 1. promtool, with the generated rules (annotations left out: the test
    //    compares labels).
    if let Some(promtool) = support::tool("promtool") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("prometheus-rules.yml"),
            alerts::rules_yaml(&alerts::rules(), None, false),
        )
        .unwrap();
        let test_path = dir.path().join("alerts_test.yml");
        std::fs::write(&test_path, &text).unwrap();
        let (ok, out) = support::run(
            &promtool,
            &["test", "rules", test_path.to_str().unwrap()],
            None,
        );
        assert!(ok, "promtool test rules failed:\n{out}");
    }

    // 2. The in-app engine: one deriver and engine per instance (the rules
    //    group by job and instance), evaluated every minute like Prometheus.
    let mut by_instance: BTreeMap<String, Vec<InputSeries>> = BTreeMap::new();
    for s in test["input_series"].as_array().unwrap() {
        let (name, labels) = parse_series(s["series"].as_str().unwrap());
        let instance = labels
            .iter()
            .find(|(k, _)| k == "instance")
            .unwrap()
            .1
            .clone();
        by_instance.entry(instance).or_default().push((
            name,
            labels,
            expand(s["values"].as_str().unwrap()),
        ));
    }
    let rules = alerts::rules();
    // (minute, alert) -> instances firing
    let mut in_app: BTreeMap<(u32, String), BTreeSet<String>> = BTreeMap::new();
    let mut saw_pending_without_firing = false;
    for (instance, series) in &by_instance {
        let mut deriver = Deriver::new(rules.iter().map(|r| &r.expr));
        let mut engine = AlertEngine::new(rules.clone());
        let steps = series.iter().map(|s| s.2.len()).max().unwrap();
        for minute in 0..steps as u32 {
            let samples: Vec<FlatSample> = series
                .iter()
                .filter_map(|(name, labels, values)| {
                    values.get(minute as usize).map(|v| FlatSample {
                        name: name.clone(),
                        labels: labels.clone(),
                        value: *v,
                    })
                })
                .collect();
            let t = f64::from(minute) * 60.0;
            deriver.push(t, &samples);
            engine.evaluate(&deriver, t);
            for st in engine.status() {
                if st.state == AlertState::Firing {
                    in_app
                        .entry((minute, st.name.to_owned()))
                        .or_default()
                        .insert(instance.clone());
                }
            }
        }
        if engine
            .history()
            .any(|t| t.from == AlertState::Pending && t.to == AlertState::Inactive)
        {
            saw_pending_without_firing = true;
        }
    }
    assert!(
        saw_pending_without_firing,
        "the fixture has a spike shorter than `for`"
    );

    // Same decisions as the fixture's expectations, which promtool just confirmed.
    let mut checked = BTreeSet::new();
    for case in test["alert_rule_test"].as_array().unwrap() {
        let minute: u32 = case["eval_time"]
            .as_str()
            .unwrap()
            .trim_end_matches('m')
            .parse()
            .unwrap();
        let name = case["alertname"].as_str().unwrap().to_owned();
        let want: BTreeSet<String> = case["exp_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["exp_labels"]["instance"].as_str().unwrap().to_owned())
            .collect();
        let got = in_app
            .get(&(minute, name.clone()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            got, want,
            "{name} at {minute}m: in-app firing instances differ from promtool's"
        );
        if !want.is_empty() {
            checked.insert(name);
        }
    }
    assert_eq!(
        checked.len(),
        12,
        "every alert fires somewhere in the fixture: {checked:?}"
    );
}

#[test]
fn engine_goes_pending_firing_resolved_with_for() {
    let rules: Vec<_> = alerts::rules()
        .into_iter()
        .filter(|r| r.name == "CriticalCPUUsage")
        .collect();
    let mut deriver = Deriver::new(rules.iter().map(|r| &r.expr));
    let mut engine = AlertEngine::new(rules);
    let cpu = |v: f64| {
        vec![FlatSample {
            name: "cpu_usage_percent".into(),
            labels: vec![("core".into(), "total".into())],
            value: v,
        }]
    };
    let mut states = Vec::new();
    for (t, v) in [
        (0.0, 50.0),
        (10.0, 99.0),
        (70.0, 99.0),
        (129.0, 99.0),
        (130.0, 99.0),
        (140.0, 20.0),
        (150.0, 20.0),
    ] {
        deriver.push(t, &cpu(v));
        engine.evaluate(&deriver, t);
        states.push(engine.status()[0].state);
    }
    use AlertState::*;
    assert_eq!(
        states,
        [
            Inactive, Pending, Pending, Pending, Firing, Resolved, Resolved
        ]
    );
    let history: Vec<_> = engine
        .history()
        .map(|t| (t.from, t.to, t.at_unix_secs))
        .collect();
    assert_eq!(
        history,
        [
            (Inactive, Pending, 10.0),
            (Pending, Firing, 130.0),
            (Firing, Resolved, 140.0)
        ]
    );
}

#[test]
fn alertmanager_payload_is_what_the_v2_api_takes() {
    let t = orfeas_core::telemetry::Transition {
        name: "HighCPUUsage",
        severity: orfeas_core::telemetry::Severity::Warning,
        from: AlertState::Firing,
        to: AlertState::Resolved,
        at_unix_secs: 1_700_000_000.0,
        value: Some(12.0),
        unit: orfeas_core::telemetry::ValueUnit::Percent,
    };
    let body: serde_json::Value = serde_json::from_str(&alerts::alertmanager_payload(
        &t,
        "CPU above 80 %",
        "details",
        "studio-1:5000",
    ))
    .unwrap();
    assert_eq!(body[0]["labels"]["alertname"], "HighCPUUsage");
    assert_eq!(body[0]["labels"]["severity"], "warning");
    assert_eq!(body[0]["endsAt"], "2023-11-14T22:13:20.000Z");
}

#[test]
fn alert_values_are_shown_with_their_units() {
    use orfeas_core::telemetry::ValueUnit;
    assert_eq!(ValueUnit::Percent.format(Some(48.02)), "48.0 %");
    assert_eq!(ValueUnit::Fraction.format(Some(0.25)), "25.0 %");
    assert_eq!(ValueUnit::Up.format(Some(1.0)), "up");
    assert_eq!(ValueUnit::Up.format(Some(0.0)), "down");
    assert_eq!(ValueUnit::PerSecond.format(Some(0.0)), "0 /s");
    assert_eq!(ValueUnit::Seconds.format(Some(0.1234)), "0.123 s");
    assert_eq!(ValueUnit::PerSecond.format(Some(250.4)), "250 /s");
    assert_eq!(ValueUnit::Percent.format(None), "no data");
    assert_eq!(ValueUnit::Seconds.format(Some(f64::NAN)), "no data");
    // Every rule says what its value measures, matching its PromQL.
    for rule in orfeas_core::telemetry::alerts::rules() {
        let expected = if rule.value_promql.starts_with("up{") {
            ValueUnit::Up
        } else if rule.value_promql.starts_with("histogram_quantile") {
            ValueUnit::Seconds
        } else if rule.value_promql.contains("100 *") || rule.value_promql.contains("percent") {
            ValueUnit::Percent
        } else if rule.value_promql.contains(") / (") {
            ValueUnit::Fraction
        } else {
            ValueUnit::PerSecond
        };
        assert_eq!(rule.unit, expected, "{}", rule.name);
    }
}
