//! The fleet on loopback, with Debian's real `nats-server`: a 3-node
//! JetStream cluster, two front nodes and three workers (`orfeas serve
//! --queue`, each its own process). Jobs go in through both fronts; one
//! worker is killed with SIGKILL while it runs a job and one NATS node is
//! stopped; every job must still finish exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `nats-server` from PATH; `None` (the test is skipped) only when the tools are not required.
fn nats_server() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("ORFEAS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("nats-server missing; run `eval \"$(scripts/install-tools.sh)\"`");
        }
        eprintln!("skipped: nats-server missing (run `eval \"$(scripts/install-tools.sh)\"`)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped, its output in `log`.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: what each process said last.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {} (last lines) ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A JetStream cluster of `n` nodes on loopback, once every node answers
/// JetStream requests: its processes, their client ports and the `--queue`
/// URL list naming them all.
fn start_cluster(nats: &Path, dir: &Path, n: usize) -> (Vec<Proc>, Vec<u16>, String) {
    let client: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let cluster: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let routes = cluster
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (0..n)
        .map(|i| {
            let mut cmd = Command::new(nats);
            cmd.args(["-a", "127.0.0.1", "-p", &client[i].to_string(), "-js"])
                .args(["-sd", dir.join(format!("nats-{i}")).to_str().unwrap()])
                .args(["--server_name", &format!("n{i}")]);
            if n > 1 {
                cmd.args(["--cluster_name", "orfeas"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{}", cluster[i])])
                    .args(["--routes", &routes]);
            }
            Proc::spawn(&format!("nats-{i}"), cmd, dir)
        })
        .collect();
    wait_jetstream(&client);
    let queue = urls(&client);
    (nodes, client, queue)
}

fn urls(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One `orfeas serve --queue` node.
struct Node {
    proc: Proc,
    base: String,
}

fn start_node(dir: &Path, name: &str, queue: &str, models: &Path, extra: &[&str]) -> Node {
    let port = free_port();
    let data = dir.join(format!("data-{name}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orfeas"));
    cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--queue", queue, "--node-name", name, "--no-rate-limit"])
        .args(extra)
        .env("ORFEAS_DATA_DIR", &data)
        .env("ORFEAS_MODELS", models)
        .env("HF_HUB_CACHE", dir.join("no-hf-cache"))
        .env("ORFEAS_LOG", "orfeas_core=debug,info");
    let proc = Proc::spawn(name, cmd, dir);
    Node {
        proc,
        base: format!("http://127.0.0.1:{port}"),
    }
}

impl Node {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it answered:\n{}",
                    self.proc.name,
                    self.proc.log()
                );
            }
            if get(&format!("{}/health", self.base)).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} never answered /health:\n{}",
            self.proc.name,
            self.proc.log()
        );
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

fn read(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> (u16, Vec<u8>, Option<String>) {
    match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.into_body().read_to_vec().unwrap_or_default();
            (status, body, retry)
        }
        Err(_) => (0, Vec::new(), None),
    }
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let (s, b, _) = read(agent().get(url).call());
    (s, b)
}

fn get_json(url: &str) -> Value {
    let (status, body) = get(url);
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn post_png(base: &str, png: &[u8], quality: &str) -> (u16, Value, Option<String>) {
    let (s, b, r) = read(
        agent()
            .post(format!("{base}/api/image-to-3d?quality={quality}"))
            .header("Content-Type", "image/png")
            .send(png),
    );
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null), r)
}

fn post_prompt(base: &str, body: &Value) -> (u16, Value) {
    let (s, b, _) = read(
        agent()
            .post(format!("{base}/api/text-to-image"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes()),
    );
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// The sum of every `name{labels…}` sample whose labels contain `filter` in `/metrics`.
fn metric_sum(base: &str, name: &str, filter: &str) -> f64 {
    let (status, body) = get(&format!("{base}/metrics"));
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Publishes `payload` on `subject` over NATS' text protocol (a plain core
/// publish, as any client could send), waiting for the server's PONG.
fn nats_publish(port: u16, subject: &str, payload: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // INFO
    write!(
        stream,
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .unwrap();
    stream.write_all(payload).unwrap();
    stream.write_all(b"\r\nPING\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// Sends a request over NATS' text protocol and returns the reply's payload.
fn nats_request(port: u16, subject: &str, payload: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?; // INFO
    write!(
        stream,
        "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n",
        payload.len()
    )
    .ok()?;
    stream.write_all(payload).ok()?;
    stream.write_all(b"\r\n").ok()?;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        if line.starts_with("PING") {
            stream.write_all(b"PONG\r\n").ok()?;
        } else if line.starts_with("MSG") {
            let len: usize = line.split_whitespace().last()?.parse().ok()?;
            let mut body = vec![0; len + 2];
            std::io::Read::read_exact(&mut reader, &mut body).ok()?;
            body.truncate(len);
            return String::from_utf8(body).ok();
        }
    }
}

/// Waits until every node of the cluster answers JetStream API requests.
fn wait_jetstream(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for &port in ports {
        loop {
            let reply = nats_request(port, "$JS.API.INFO", b"");
            if reply
                .is_some_and(|r| r.contains("account_info_response") && !r.contains("\"error\""))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "JetStream on port {port} never became ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The completed tiny SD fixture installed as `sd-turbo` under `models`.
fn install_tiny_sd(models: &Path) {
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/orfeas-ml/tests/fixtures/sd-tiny");
    orfeas_ml::fixture::complete_model_dir(&src, &models.join("sd-turbo")).unwrap();
}

fn example_png() -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/examples/object.png"))
        .unwrap()
}

/// Waits until at least `at_least` of the jobs in `ids` are finished.
fn wait_finished(front: &str, ids: &BTreeSet<i64>, at_least: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = get(&format!("{front}/api/jobs?limit=200"));
        if status == 200 {
            let list: Value = serde_json::from_slice(&body).unwrap();
            let done = list["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| ids.contains(&j["id"].as_i64().unwrap()))
                .filter(|j| !matches!(j["state"].as_str(), Some("queued" | "running")))
                .count();
            if done >= at_least {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {at_least} jobs finished in {} s",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until every job in `ids` is finished (as `front` sees the fleet).
fn wait_all_done(front: &str, ids: &BTreeSet<i64>, limit: Duration) -> BTreeMap<i64, Value> {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = get(&format!("{front}/api/jobs?limit=200"));
        if status == 503 {
            // The front is moving to another NATS node: ask again.
            assert!(Instant::now() < deadline, "the front stayed unavailable");
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let list: Value = serde_json::from_slice(&body).unwrap();
        let jobs: BTreeMap<i64, Value> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| (j["id"].as_i64().unwrap(), j.clone()))
            .collect();
        let done = ids
            .iter()
            .filter(|id| {
                jobs.get(id)
                    .is_some_and(|j| !matches!(j["state"].as_str(), Some("queued" | "running")))
            })
            .count();
        if done == ids.len() {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {} jobs finished in {} s",
            ids.len(),
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_three_node_fleet_runs_every_job_exactly_once_through_a_killed_worker_and_a_lost_nats_node() {
    let Some(nats) = nats_server() else {
        return;
    };
    let mut dir = tempfile::tempdir().unwrap();
    // ORFEAS_KEEP_TEST_DIRS=1 keeps the logs and data for a look after the run.
    dir.disable_cleanup(std::env::var_os("ORFEAS_KEEP_TEST_DIRS").is_some());
    eprintln!("fleet test folder: {}", dir.path().display());
    let dir = dir.path();
    let models = dir.join("models");
    install_tiny_sd(&models);
    let no_models = dir.join("no-models");
    std::fs::create_dir_all(&no_models).unwrap();

    let (mut cluster, ports, queue) = start_cluster(&nats, dir, 3);
    let fleet_args = [
        "--replicas",
        "3",
        "--ack-wait-secs",
        "6",
        "--concurrency",
        "1",
    ];
    let front_args = [&fleet_args[..], &["--no-work"]].concat();
    // The first node creates the streams; the others find them.
    let mut first = start_node(dir, "front-1", &queue, &models, &front_args);
    first.wait_ready();
    let mut nodes = vec![
        first,
        start_node(dir, "front-2", &queue, &models, &front_args),
        start_node(dir, "w1", &queue, &models, &fleet_args),
        start_node(dir, "w2", &queue, &models, &fleet_args),
        // No models: this worker must never take a text→image job.
        start_node(dir, "w3", &queue, &no_models, &fleet_args),
    ];
    for node in &mut nodes {
        node.wait_ready();
    }
    let [f1, f2, w1, w2, w3] = [0, 1, 2, 3, 4].map(|i| nodes[i].base.clone());
    assert!(
        nodes[4]
            .proc
            .log()
            .contains("fleet worker runs: image-to-3d.inflate")
            && !nodes[4].proc.log().contains("text-to-image"),
        "w3 subscribes to what it cannot run:\n{}",
        nodes[4].proc.log()
    );
    assert!(
        nodes[2].proc.log().contains("text-to-image.sd-turbo"),
        "{}",
        nodes[2].proc.log()
    );
    let health = get_json(&format!("{w1}/health"));
    assert_eq!(health["queue"]["connected"], true, "{health}");

    // SIGKILL w1 as soon as it runs a job (its engine reports one active),
    // watched from another thread while the jobs go in.
    let w1_pid = nodes[2].proc.child.id();
    let watch_w1 = w1.clone();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let (status, body) = get(&format!("{watch_w1}/health"));
            let active = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|h| h["active_jobs"].as_u64())
                .unwrap_or(0);
            if status == 200 && active >= 1 {
                let killed = Command::new("kill")
                    .args(["-KILL", &w1_pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                return killed;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });

    // 60 image→3D and 10 text→image jobs, alternating between the two fronts;
    // halfway, one NATS node goes away (R3 streams keep their quorum on the
    // other two) and the fronts must go on accepting.
    let png = example_png();
    let mut ids = BTreeSet::new();
    let mut kinds = BTreeMap::new();
    for i in 0..70 {
        if i == 35 {
            // Halfway, once the fleet is busy (a few jobs finished), a NATS node goes.
            wait_finished(&f1, &ids, 5, Duration::from_secs(240));
            cluster[2].terminate();
        }
        let front = if i % 2 == 0 { &f1 } else { &f2 };
        let text = i % 7 == 3;
        let deadline = Instant::now() + Duration::from_secs(30);
        let body = loop {
            let (status, body, retry) = if text {
                let prompt = json!({
                    "prompt": "a red ceramic teapot, studio lighting",
                    "width": 64, "height": 64, "steps": 1, "seed": i,
                });
                let (s, b) = post_prompt(front, &prompt);
                (s, b, None)
            } else {
                post_png(front, &png, "standard")
            };
            if status == 202 {
                break body;
            }
            // While a front moves to another NATS node it answers 503: retry, as a client would.
            assert!(
                status == 503 && Instant::now() < deadline,
                "job {i}: {status} {body} (Retry-After {retry:?})"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let id = body["id"].as_i64().unwrap();
        assert!(ids.insert(id), "id {id} given twice");
        kinds.insert(id, if text { "text_to_image" } else { "image_to_3d" });
    }
    assert_eq!(
        kinds.values().filter(|k| **k == "text_to_image").count(),
        10
    );
    assert!(
        killer.join().unwrap(),
        "w1 never ran a job, so it was not killed mid-job:\n{}\n{}",
        nodes[2].proc.log(),
        nodes[3].proc.log()
    );
    nodes[2].proc.kill9(); // reaps it
    // A message no worker can read: dead-lettered once, never retried.
    nats_publish(ports[0], "orfeas.jobs.image-to-3d.inflate", b"{not a job");

    let jobs = wait_all_done(&f2, &ids, Duration::from_secs(420));
    assert_eq!(
        jobs.len(),
        70,
        "the fleet's history must hold each job once"
    );
    let mut by_w1 = 0;
    let mut redelivered_from_w1 = Vec::new();
    for (id, job) in &jobs {
        assert_eq!(job["state"], "succeeded", "job {id}: {job}");
        assert_eq!(job["kind"], kinds[id], "job {id}");
        let worker = job["fleet"]["worker"].as_str().unwrap();
        let attempts = job["fleet"]["attempts"].as_array().unwrap();
        let workers: Vec<&str> = attempts
            .iter()
            .map(|a| a["worker"].as_str().unwrap())
            .collect();
        if job["kind"] == "text_to_image" {
            assert!(
                !workers.contains(&"w3"),
                "w3 has no model but ran job {id}: {job}"
            );
        }
        if worker == "w1" {
            by_w1 += 1;
        }
        if workers.first() == Some(&"w1") && worker != "w1" {
            assert!(job["fleet"]["redeliveries"].as_u64().unwrap() >= 1, "{job}");
            redelivered_from_w1.push(*id);
        }
        // Every result is whole and valid, fetched from the other front.
        let outputs = job["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "job {id}: {job}");
        let (status, bytes) = get(&format!("{f1}{}", outputs[0]["url"].as_str().unwrap()));
        assert_eq!(status, 200, "job {id}");
        if job["kind"] == "text_to_image" {
            let image = image::load_from_memory(&bytes).unwrap();
            assert_eq!((image.width(), image.height()), (64, 64));
        } else {
            let mesh = orfeas_core::import::import_bytes(
                &bytes,
                orfeas_core::import::MeshFormat::Glb,
                "result.glb",
            )
            .unwrap_or_else(|e| panic!("job {id}: {e}"));
            assert!(!mesh.indices.is_empty(), "job {id}");
        }
    }
    assert!(
        !redelivered_from_w1.is_empty(),
        "the job w1 was killed in must show a redelivery to another worker"
    );
    // Its events, from both fronts (neither ran it): the snapshot, then done.
    for front in [&f1, &f2] {
        let (status, body) = get(&format!(
            "{front}/api/jobs/{}/events",
            redelivered_from_w1[0]
        ));
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{text}");
        let snapshot = text.find("event: snapshot").expect(&text);
        let done = text.find("event: done").expect(&text);
        assert!(snapshot < done, "{text}");
    }
    // Exactly once: the survivors' successes plus what w1 finished before it died.
    let succeeded =
        |base: &str| metric_sum(base, "fleet_jobs_processed_total", "outcome=\"succeeded\"");
    assert_eq!(
        succeeded(&w2) + succeeded(&w3) + f64::from(by_w1),
        70.0,
        "a job was finished twice or not at all"
    );
    let dead = |base: &str| metric_sum(base, "fleet_dead_letters_total", "reason=\"malformed\"");
    assert_eq!(
        dead(&w2) + dead(&w3),
        1.0,
        "the malformed message must be dead-lettered once"
    );
    std::thread::sleep(Duration::from_secs(7)); // longer than ack_wait: a retry would show now
    assert_eq!(dead(&w2) + dead(&w3), 1.0, "a dead letter was retried");
    let submitted = |base: &str| metric_sum(base, "fleet_jobs_submitted_total", "");
    assert_eq!(submitted(&f1) + submitted(&f2), 70.0);
}

#[test]
fn the_fleet_refuses_clearly_a_dead_queue_a_full_queue_and_a_lost_connection() {
    let Some(nats) = nats_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();

    // Nothing listens there: a clear error, at once.
    let nobody = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--queue", &format!("nats://127.0.0.1:{nobody}")])
        .env("ORFEAS_DATA_DIR", dir.join("data-dead"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the NATS server") && err.contains("without --queue"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(["serve", "--queue", "http://127.0.0.1:4222"])
        .env("ORFEAS_DATA_DIR", dir.join("data-dead"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats://HOST:PORT"));

    // A front with no workers and room for two jobs: the third gets 503 + Retry-After.
    let (mut cluster, _, queue) = start_cluster(&nats, dir, 1);
    let mut front = start_node(
        dir,
        "front",
        &queue,
        &models,
        &["--no-work", "--fleet-queue-limit", "2"],
    );
    front.wait_ready();
    let png = example_png();
    for _ in 0..2 {
        let (status, body, _) = post_png(&front.base, &png, "draft");
        assert_eq!(status, 202, "{body}");
    }
    let (status, body, retry) = post_png(&front.base, &png, "draft");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() > 0));
    let jobs = get_json(&format!("{}/api/jobs", front.base));
    assert_eq!(jobs["total"], 2, "a refused job left a record: {jobs}");
    assert_eq!(
        metric_sum(
            &front.base,
            "fleet_submit_rejections_total",
            "reason=\"queue_full\""
        ),
        1.0
    );

    // NATS goes away: /health says so (503), and submissions are refused.
    cluster[0].kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&format!("{}/health", front.base));
        if status == 503 {
            let health: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(health["status"], "degraded");
            assert_eq!(health["queue"]["connected"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health never noticed the lost queue"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body, retry) = post_png(&front.base, &png, "draft");
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some(), "{body}");
}

/// `orfeas batch image-to-3d` with the fleet at `queue`; its exit status and stderr.
fn run_batch(dir: &Path, pictures: &Path, out: &Path, queue: &str) -> (Option<i32>, String) {
    let output = batch_command(dir, pictures, out, queue).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn batch_command(dir: &Path, pictures: &Path, out: &Path, queue: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orfeas"));
    cmd.args(["batch", "image-to-3d"])
        .arg(pictures)
        .arg("-o")
        .arg(out)
        .args(["--queue", queue, "--quality", "draft"])
        .env("ORFEAS_DATA_DIR", dir.join("data-batch"))
        .env("ORFEAS_LOG", "warn");
    cmd
}

fn assert_glb(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mesh =
        orfeas_core::import::import_bytes(&bytes, orfeas_core::import::MeshFormat::Glb, "m.glb")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!mesh.indices.is_empty(), "{}", path.display());
}

#[test]
fn a_folder_goes_through_the_fleet_as_a_batch_and_the_same_command_resumes_it() {
    let Some(nats) = nats_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let pictures = dir.join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    let png = example_png();
    for name in ["a.png", "b.png", "c.PNG"] {
        std::fs::write(pictures.join(name), &png).unwrap();
    }
    std::fs::write(pictures.join("notes.txt"), "not a picture").unwrap();
    let out = dir.join("meshes");
    let (_nats, _, queue) = start_cluster(&nats, dir, 1);

    // No worker yet: the batch queues all three and is stopped with Ctrl-C while they wait.
    let first = batch_command(dir, &pictures, &out, &queue)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = out.join(".orfeas-batch.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = std::fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map_or(0, |m| m["jobs"].as_object().map_or(0, |j| j.len()));
        if jobs == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch never queued its three pictures"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    let stopped = first.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{err}");
    assert!(err.contains("3 jobs go on in the fleet"), "{err}");
    assert!(!out.join("a.glb").exists());

    // A worker joins; the same command collects the three and submits none again.
    let mut worker = start_node(dir, "w", &queue, &models, &["--concurrency", "1"]);
    worker.wait_ready();
    let (code, err) = run_batch(dir, &pictures, &out, &queue);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("0 already done, 3 resumed"), "{err}");
    assert!(err.contains("(0 submitted now, 3 resumed"), "{err}");
    for name in ["a.glb", "b.glb", "c.glb"] {
        assert_glb(&out.join(name));
    }
    assert!(!out.join("notes.glb").exists());
    let processed = |base: &str| metric_sum(base, "fleet_jobs_processed_total", "");
    assert_eq!(processed(&worker.base), 3.0);

    // A mesh lost on disk: fetched again from the fleet, nothing run twice.
    std::fs::remove_file(out.join("b.glb")).unwrap();
    let (code, err) = run_batch(dir, &pictures, &out, &queue);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("2 already done, 1 resumed"), "{err}");
    assert_glb(&out.join("b.glb"));
    assert_eq!(processed(&worker.base), 3.0);

    // A damaged resume file: a clear error that says what to do; the meshes stay.
    std::fs::write(&manifest, "{ half").unwrap();
    let (code, err) = run_batch(dir, &pictures, &out, &queue);
    assert_ne!(code, Some(0));
    assert!(err.contains("delete it to start the batch afresh"), "{err}");
    assert_glb(&out.join("a.glb"));
}

/// The studio with `run_on: Fleet` at `url`, in `data`.
fn fleet_studio(data: &Path, url: &str) -> egui_kittest::Harness<'static, orfeas::app::StudioApp> {
    use orfeas::app::state::{RunOn, SavedState, Settings};
    let saved = SavedState {
        settings: Settings {
            run_on: RunOn::Fleet,
            fleet_url: url.to_owned(),
            ..Settings::default()
        },
        ..SavedState::default()
    };
    let mut storage = crate::gui::MemStorage::default();
    eframe::set_value(&mut storage, SavedState::STORAGE_KEY, &saved);
    crate::gui::harness(data, Some(&storage))
}

#[test]
fn the_studio_and_the_cli_run_jobs_on_the_fleet_when_asked_and_here_when_it_is_unreachable() {
    use egui::accesskit::Role;
    use egui_kittest::kittest::Queryable as _;
    use orfeas::app::job_views::JobPhase;
    let Some(nats) = nats_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let models = dir.join("models");
    install_tiny_sd(&models);
    let (_nats, _, queue) = start_cluster(&nats, dir, 1);
    let mut worker = start_node(dir, "w", &queue, &models, &["--concurrency", "1"]);
    worker.wait_ready();
    let processed =
        |base: &str| metric_sum(base, "fleet_jobs_processed_total", "outcome=\"succeeded\"");
    let picture = dir.join("disc.png");
    crate::gui::write_disc_png(&picture);

    // The studio set to the fleet: a dropped picture runs on the worker and
    // lands in the studio's own outputs, job list and Gallery as usual.
    let data = dir.join("studio");
    let mut h = fleet_studio(&data, &queue);
    crate::gui::drop_file(&mut h, &picture);
    crate::gui::step_until(&mut h, "the fleet job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    let job = h.state().jobs()[0].clone();
    assert_eq!(job.phase, JobPhase::Succeeded, "{:?}", job.error);
    let glb = job.outputs.first().unwrap();
    assert!(glb.starts_with(data.join("outputs")), "{}", glb.display());
    assert_glb(glb);
    assert_eq!(
        processed(&worker.base),
        1.0,
        "the worker ran the studio's job"
    );

    // Gallery → Open folder as batch: every picture of the folder, one progress bar.
    let folder = dir.join("props");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["one.png", "two.png", "three.png"] {
        std::fs::copy(&picture, folder.join(name)).unwrap();
    }
    std::fs::write(folder.join("readme.txt"), "not a picture").unwrap();
    h.state_mut()
        .apply(orfeas::app::state::Command::GenerateFolder(folder.clone()));
    crate::gui::step_until(&mut h, "the batch's progress bar to fill", |h| {
        h.query_by_label_contains("Batch props: 3 of 3 finished")
            .is_some()
    });
    let jobs = h.state().jobs();
    assert_eq!(jobs.len(), 4, "one job per picture, the text file skipped");
    assert!(
        jobs.iter().all(|j| j.phase == JobPhase::Succeeded),
        "{jobs:?}"
    );
    assert_eq!(processed(&worker.base), 4.0, "the batch ran on the fleet");
    let records = get_json(&format!("{}/api/jobs?limit=200", worker.base));
    let batch = records["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["fleet"]["priority"] == "batch")
        .count();
    assert_eq!(
        batch, 3,
        "the folder's jobs wait behind interactive ones: {records}"
    );
    h.get_by_role_and_label(Role::Button, "Settings").click();
    crate::gui::step_until(&mut h, "the fleet line in Settings", |h| {
        h.query_by_label_contains("Jobs go to the fleet at nats://127.0.0.1")
            .is_some()
    });
    drop(h);

    // The command line with --queue: the same, the files where -o says.
    let out = dir.join("cli.glb");
    let run = Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(["image-to-3d"])
        .arg(&picture)
        .arg("-o")
        .arg(&out)
        .args(["--quality", "draft", "--queue", &queue])
        .env("ORFEAS_DATA_DIR", dir.join("data-cli"))
        .env("ORFEAS_MODELS", dir.join("no-models"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_glb(&out);
    let png = dir.join("cli.png");
    let run = Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(["text-to-image", "a red ceramic teapot", "-o"])
        .arg(&png)
        .args([
            "--size", "64x64", "--steps", "1", "--seed", "7", "--queue", &queue,
        ])
        .env("ORFEAS_DATA_DIR", dir.join("data-cli"))
        .env("ORFEAS_MODELS", dir.join("no-models"))
        .env("HF_HUB_CACHE", dir.join("no-hf-cache"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let image = image::open(&png).unwrap();
    assert_eq!((image.width(), image.height()), (64, 64));
    assert_eq!(processed(&worker.base), 6.0, "the worker ran both CLI jobs");

    // A fleet that does not answer: the studio says so in Settings and runs here.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let data = dir.join("studio-offline");
    let mut h = fleet_studio(&data, &dead);
    h.get_by_role_and_label(Role::Button, "Settings").click();
    crate::gui::step_until(&mut h, "the unreachable fleet in Settings", |h| {
        h.query_by_label_contains("Cannot reach the fleet at nats://127.0.0.1")
            .is_some()
    });
    crate::gui::drop_file(&mut h, &picture);
    crate::gui::step_until(&mut h, "the local job to finish", |h| {
        h.state().jobs().iter().any(|j| j.phase.is_finished())
    });
    assert_eq!(h.state().jobs()[0].phase, JobPhase::Succeeded);
    assert_eq!(
        processed(&worker.base),
        6.0,
        "the offline studio's job ran here"
    );
}
