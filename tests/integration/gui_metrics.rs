//! GUI monitoring: the Metrics and Alerts tabs, and the metrics endpoint switch in Settings.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use orfeas::app::state::{Command, Tab};
use orfeas_core::telemetry::{Row, TimeRange};

use crate::gui::{drop_file, harness, step_until, write_disc_png};

/// The dashboard rows, as DESIGN.md names them.
const ROWS: [&str; 5] = [
    "System health",
    "Requests",
    "Generation",
    "Resources",
    "Business",
];

/// The 12 alert rules of DESIGN.md.
const ALERTS: [&str; 12] = [
    "ApplicationDown",
    "CriticalErrorRate",
    "CriticalLatency",
    "CriticalCPUUsage",
    "CriticalMemoryUsage",
    "PossibleDDoS",
    "HighErrorRate",
    "HighLatency",
    "HighCPUUsage",
    "HighMemoryUsage",
    "HighGenerationFailureRate",
    "LowDiskSpace",
];

#[test]
fn metrics_tab_shows_every_row_and_panel_of_the_dashboard() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path(), None);
    h.run();
    h.get_by_role_and_label(Role::Button, "Metrics").click();
    h.run();
    assert!(
        h.query_by_label_contains("Not in this build yet").is_none(),
        "no placeholder left"
    );
    for row in ROWS {
        assert!(
            h.query_all_by_label(row).next().is_some(),
            "row {row} is shown"
        );
    }
    let titles: Vec<&str> = h
        .state()
        .telemetry()
        .expect("telemetry runs")
        .panels()
        .iter()
        .map(|p| p.title)
        .collect();
    assert!(titles.len() >= 10, "a real dashboard: {titles:?}");
    for title in titles {
        assert!(
            h.query_all_by_label(title).next().is_some(),
            "panel {title:?} is shown"
        );
    }
    for range in ["5m", "1h", "24h", "7d", "30d"] {
        assert!(
            h.query_all_by_label(range).next().is_some(),
            "range {range} can be chosen"
        );
    }
}

/// Generation panels with a positive newest value somewhere in the last 5 minutes.
fn generation_panels_with_data(
    h: &egui_kittest::Harness<'static, orfeas::app::StudioApp>,
) -> usize {
    let t = h.state().telemetry().expect("telemetry runs");
    t.panels()
        .iter()
        .filter(|p| p.row == Row::Generation)
        .filter(|p| {
            p.series.iter().any(|s| {
                t.series(&s.id, TimeRange::M5)
                    .iter()
                    .any(|[_, v]| v.is_finite() && *v > 0.0)
            })
        })
        .count()
}

#[test]
fn a_generation_in_the_gui_moves_the_generation_panels() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("disc.png");
    write_disc_png(&input);
    let mut h = harness(&tmp.path().join("data"), None);
    h.run();
    assert_eq!(
        generation_panels_with_data(&h),
        0,
        "nothing was generated yet"
    );

    drop_file(&mut h, &input);
    step_until(&mut h, "the job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    // The sampler derives rates and quantiles once a second.
    step_until(&mut h, "generation panels to have data", |h| {
        generation_panels_with_data(h) >= 2
    });

    h.get_by_role_and_label(Role::Button, "Metrics").click();
    h.run();
    assert!(
        h.query_all_by_label("Generation").next().is_some(),
        "the Generation row is on screen"
    );
}

#[test]
fn alerts_tab_lists_all_twelve_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path(), None);
    h.run();
    h.get_by_role_and_label(Role::Button, "Alerts").click();
    h.run();
    for name in ALERTS {
        assert!(
            h.query_all_by_label(name).next().is_some(),
            "rule {name} is listed"
        );
    }
    assert!(
        h.query_by_label("History").is_some(),
        "history section shown"
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn metrics_endpoint_switch_serves_metrics_on_the_chosen_port() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut h = harness(tmp.path(), None);
    h.run();
    assert!(
        !h.state().saved_state().settings.metrics_endpoint,
        "off by default in the GUI"
    );
    assert!(
        http_get(port, "/metrics").is_err(),
        "nothing listens before it is switched on"
    );
    let mut settings = h.state().saved_state().settings.clone();
    settings.metrics_port = port;
    h.state_mut().apply(Command::SetSettings(settings));
    h.state_mut().apply(Command::SelectTab(Tab::Settings));
    h.run();
    h.get_by_role_and_label(Role::CheckBox, "Metrics endpoint")
        .click();
    h.run();
    assert!(h.state().saved_state().settings.metrics_endpoint);

    let start = Instant::now();
    let reply = loop {
        match http_get(port, "/metrics") {
            Ok(reply) => break reply,
            Err(err) if start.elapsed() > Duration::from_secs(10) => {
                panic!("/metrics did not answer on {port}: {err}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("app_uptime_seconds"), "{reply}");
    assert!(
        h.query_all_by_label_contains(&format!("127.0.0.1:{port}"))
            .next()
            .is_some(),
        "Settings shows where it listens"
    );
    let health = http_get(port, "/health").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // The API asks for the token shown in Settings.
    let jobs = http_get(port, "/api/jobs").unwrap();
    assert!(jobs.starts_with("HTTP/1.1 401"), "{jobs}");

    // Switching off closes the port.
    h.get_by_role_and_label(Role::CheckBox, "Metrics endpoint")
        .click();
    h.run();
    assert!(http_get(port, "/metrics").is_err(), "port closed again");
}
