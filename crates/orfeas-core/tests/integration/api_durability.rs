//! The API server as a separate process (`orfeas-api-fixture`): kill -9 during
//! a running job then restart, and SIGTERM draining.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orfeas_core::history::History;
use orfeas_core::jobs::{JobId, JobState};

use super::api::{WAIT, get, png, send};

const FIXTURE: &str = env!("CARGO_BIN_EXE_orfeas-api-fixture");
/// What the fixture's runners write.
const OUTPUT_BYTES: u64 = 256 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Fixture {
    child: Child,
    base: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(data_dir: &Path, runner_ms: u64) -> Fixture {
    let port = free_port();
    let child = Command::new(FIXTURE)
        .args(["--data-dir", &data_dir.to_string_lossy()])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--runner-ms", &runner_ms.to_string(), "--no-rate-limit"])
        .args(["--drain-secs", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "fixture did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Fixture { child, base }
}

fn submit(base: &str) -> i64 {
    let r = send(
        "POST",
        &format!("{base}/api/image-to-3d"),
        &[("Content-Type", "image/png")],
        Some(&png(16, 16)),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_i64().unwrap()
}

fn state(base: &str, id: i64) -> String {
    get(&format!("{base}/api/jobs/{id}")).json()["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn wait_state(base: &str, id: i64, want: &str) {
    let deadline = Instant::now() + WAIT;
    while state(base, id) != want {
        assert!(Instant::now() < deadline, "job {id} never became {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file in outputs/ is complete, and no temporary file is left.
fn outputs_are_whole(data_dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(data_dir.join("outputs")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file left: {name}");
        assert_eq!(
            entry.metadata().unwrap().len(),
            OUTPUT_BYTES,
            "partial output {name}"
        );
        n += 1;
    }
    n
}

#[test]
fn kill_9_during_a_running_job_then_restart_keeps_history_and_runs_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(dir.path(), 20_000);
    let running = submit(&first.base);
    let queued = [submit(&first.base), submit(&first.base)];
    wait_state(&first.base, running, "running");
    // Let the runner get well into its write, so a temp file exists.
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get(&format!("{}/api/jobs/{running}", first.base)).json();
        if v["progress"]["fraction"].as_f64().unwrap() >= 0.1 {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let tmp_before = std::fs::read_dir(dir.path().join("outputs"))
        .unwrap()
        .count();
    assert_eq!(tmp_before, 1, "the runner should be mid-write");
    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    drop(first);

    let second = spawn(dir.path(), 100);
    assert_eq!(state(&second.base, running), "interrupted");
    let v = get(&format!("{}/api/jobs/{running}", second.base)).json();
    assert_eq!(v["error"]["reason"], "interrupted");
    for id in queued {
        wait_state(&second.base, id, "succeeded");
        let r = get(&format!("{}/api/jobs/{id}/result", second.base));
        assert_eq!(r.body.len() as u64, OUTPUT_BYTES);
    }
    // Only the two finished outputs exist; the killed write left nothing.
    assert_eq!(outputs_are_whole(dir.path()), 2);
    let r = get(&format!("{}/api/jobs", second.base)).json();
    assert_eq!(r["total"], 3);
}

#[test]
fn sigterm_drains_the_running_job_and_keeps_queued_ones_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut fx = spawn(dir.path(), 1500);
    let running = submit(&fx.base);
    let queued = submit(&fx.base);
    wait_state(&fx.base, running, "running");
    let status = Command::new("kill")
        .args(["-TERM", &fx.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = fx.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    // New connections are refused once it has stopped.
    assert!(std::net::TcpStream::connect(fx.base.trim_start_matches("http://")).is_err());
    drop(fx);
    let history = History::open(&dir.path().join("history.sqlite3")).unwrap();
    assert_eq!(
        history.get(JobId(running)).unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        history.get(JobId(queued)).unwrap().unwrap().state,
        JobState::Queued
    );
    assert_eq!(outputs_are_whole(dir.path()), 1);
    drop(history);
    let next = spawn(dir.path(), 100);
    wait_state(&next.base, queued, "succeeded");
    assert_eq!(outputs_are_whole(dir.path()), 2);
}
