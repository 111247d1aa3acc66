//! Job engine: concurrency, cancellation, panics, progress order, queue limit,
//! timings, history agreement, observers, timeouts, shutdown and requeue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use orfeas_core::history::History;
use orfeas_core::jobs::{
    Engine, EngineConfig, EngineError, JobContext, JobEvent, JobEventKind, JobFailure, JobId,
    JobKind, JobObserver, JobOutput, JobRequest, JobRunner, JobSnapshot, JobSpec, JobState,
};
use orfeas_core::request::{ExportFormat, ImageTo3dRequest, TextToImageJob, TextToImageRequest};
use parking_lot::{Condvar, Mutex};

const WAIT: Duration = Duration::from_secs(10);

/// A job whose input file name carries what the test runner should do.
fn spec(label: &str, control: &str) -> JobSpec {
    let request = ImageTo3dRequest::new(
        PathBuf::from(format!("/in/{control}.png")),
        PathBuf::from("/out/x.glb"),
        ExportFormat::Glb,
    );
    JobSpec {
        request: JobRequest::ImageTo3d(request),
        label: label.to_owned(),
        batch: false,
    }
}

/// What [`spec`] asked the runner to do.
fn control(request: &JobRequest) -> String {
    match request {
        JobRequest::ImageTo3d(r) => r
            .input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        JobRequest::TextToImage(_) => String::new(),
    }
}

fn engine(concurrency: usize, queue_capacity: usize, history: Option<Arc<History>>) -> Engine {
    let config = EngineConfig {
        concurrency,
        queue_capacity,
        ..EngineConfig::default()
    };
    Engine::new(config, history).unwrap()
}

fn runner(
    f: impl Fn(&JobSpec, &JobContext) -> Result<JobOutput, JobFailure> + Send + Sync + 'static,
) -> Arc<dyn JobRunner> {
    Arc::new(f)
}

fn ok_output(name: &str) -> JobOutput {
    JobOutput {
        files: vec![format!("/out/{name}.glb").into()],
        quality: Some(0.75),
        summary: serde_json::json!({ "vertices": 8 }),
    }
}

/// A gate runners block on until the test opens it (or it times out, so a
/// broken engine fails the test instead of hanging it).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let mut open = self.open.lock();
        let deadline = Instant::now() + WAIT;
        while !*open && !self.cv.wait_until(&mut open, deadline).timed_out() {}
    }
}

fn wait_state(engine: &Engine, id: JobId, state: JobState) {
    let deadline = Instant::now() + WAIT;
    while engine.snapshot(id).map(|s| s.state) != Some(state) {
        assert!(Instant::now() < deadline, "job {id} never reached {state}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn concurrency_limit_is_respected_and_really_concurrent() {
    #[derive(Default)]
    struct Counter {
        now: Mutex<usize>,
        cv: Condvar,
        max: AtomicUsize,
    }
    let counter = Arc::new(Counter::default());
    let engine = engine(2, 64, None);
    let c = Arc::clone(&counter);
    engine.register(
        JobKind::ImageTo3d,
        runner(move |_, _| {
            {
                let mut now = c.now.lock();
                *now += 1;
                c.max.fetch_max(*now, Ordering::SeqCst);
                c.cv.notify_all();
                // Wait for a partner so two jobs overlap for sure; a serial engine
                // times out here and fails the `max == 2` assertion below.
                let deadline = Instant::now() + Duration::from_secs(2);
                while *now < 2 && !c.cv.wait_until(&mut now, deadline).timed_out() {}
            }
            // Stay busy a little so a third job, if let in, would overlap too.
            std::thread::sleep(Duration::from_millis(20));
            *c.now.lock() -= 1;
            Ok(JobOutput::default())
        }),
    );
    let ids: Vec<_> = (0..6)
        .map(|i| engine.submit(spec(&format!("job {i}"), "")).unwrap())
        .collect();
    for id in ids {
        assert_eq!(engine.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    }
    assert_eq!(counter.max.load(Ordering::SeqCst), 2);
    assert_eq!(engine.active_count(), 0);
    assert_eq!(engine.queue_depth(), 0);
}

#[test]
fn cancelling_a_queued_job_ends_it_at_once_and_it_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::open(&dir.path().join("h.sqlite3")).unwrap());
    let engine = engine(1, 64, Some(Arc::clone(&history)));
    let gate = Arc::new(Gate::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let (g, r) = (Arc::clone(&gate), Arc::clone(&runs));
    engine.register(
        JobKind::ImageTo3d,
        runner(move |_, _| {
            r.fetch_add(1, Ordering::SeqCst);
            g.wait();
            Ok(ok_output("a"))
        }),
    );
    let first = engine.submit(spec("first", "")).unwrap();
    wait_state(&engine, first, JobState::Running);
    let second = engine.submit(spec("second", "")).unwrap();
    assert_eq!(engine.queue_depth(), 1);

    assert!(engine.cancel(second));
    assert_eq!(engine.snapshot(second).unwrap().state, JobState::Cancelled);
    assert_eq!(engine.queue_depth(), 0);
    assert_eq!(
        history.get(second).unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(
        !engine.cancel(second),
        "a finished job cannot be cancelled again"
    );

    gate.open();
    assert_eq!(engine.wait(first, WAIT).unwrap().state, JobState::Succeeded);
    // A third job runs after the cancelled one: the slot was not leaked.
    let third = engine.submit(spec("third", "")).unwrap();
    assert_eq!(engine.wait(third, WAIT).unwrap().state, JobState::Succeeded);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the cancelled job must never run"
    );
}

#[test]
fn cancelling_a_running_job_stops_it_and_records_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::open(&dir.path().join("h.sqlite3")).unwrap());
    let engine = engine(1, 64, Some(Arc::clone(&history)));
    let (started_tx, started_rx) = mpsc::sync_channel(1);
    engine.register(
        JobKind::ImageTo3d,
        runner(move |_, ctx| {
            let _ = started_tx.send(());
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                ctx.progress("inflate", 0.5, "working");
                ctx.check_cancelled()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(ok_output("never"))
        }),
    );
    let id = engine.submit(spec("long", "")).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    let asked = Instant::now();
    assert!(engine.cancel(id));
    let snap = engine.wait(id, WAIT).unwrap();
    assert_eq!(snap.state, JobState::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert!(snap.output.is_none());
    let row = history.get(id).unwrap().unwrap();
    assert_eq!(row.state, JobState::Cancelled);
    assert!(row.outputs.is_empty());
    assert!(row.quality.is_none());
}

#[test]
fn a_panicking_runner_fails_with_reason_panic_and_the_next_job_succeeds() {
    let engine = engine(1, 64, None);
    engine.register(
        JobKind::ImageTo3d,
        runner(|spec, _| {
            if control(&spec.request) == "explode" {
                panic!("synthetic crash in the mesher");
            }
            Ok(ok_output("fine"))
        }),
    );
    let bad = engine.submit(spec("bad", "explode")).unwrap();
    let good = engine.submit(spec("good", "")).unwrap();
    let bad = engine.wait(bad, WAIT).unwrap();
    assert_eq!(bad.state, JobState::Failed);
    let failure = bad.failure.unwrap();
    assert_eq!(failure.reason, "panic");
    assert!(
        failure.message.contains("synthetic crash"),
        "{}",
        failure.message
    );
    let good = engine.wait(good, WAIT).unwrap();
    assert_eq!(good.state, JobState::Succeeded);
    assert_eq!(good.output.unwrap().files.len(), 1);
}

#[test]
fn events_arrive_in_order_per_job_with_non_decreasing_progress() {
    let engine = engine(2, 64, None);
    let events = engine.subscribe();
    engine.register(
        JobKind::ImageTo3d,
        runner(|_, ctx| {
            ctx.progress("decode", 0.1, "decoding");
            ctx.progress("mask", 0.3, "masking");
            // A runner that reports a smaller fraction must not move the bar back.
            ctx.progress("mask", 0.2, "still masking");
            ctx.progress("inflate", 0.8, "inflating");
            std::thread::sleep(Duration::from_millis(2));
            ctx.progress("export", 0.95, "writing");
            Ok(ok_output("x"))
        }),
    );
    let ids: Vec<_> = (0..4)
        .map(|i| engine.submit(spec(&format!("j{i}"), "")).unwrap())
        .collect();
    for id in &ids {
        engine.wait(*id, WAIT).unwrap();
    }
    let mut per_job: HashMap<JobId, Vec<JobEventKind>> = HashMap::new();
    let mut events = events;
    while let Ok(event) = events.try_recv() {
        per_job.entry(event.id).or_default().push(event.event);
    }
    for id in &ids {
        let seq = &per_job[id];
        assert_eq!(seq.first(), Some(&JobEventKind::Queued), "{seq:?}");
        assert_eq!(seq.get(1), Some(&JobEventKind::Started), "{seq:?}");
        assert!(
            matches!(seq.last(), Some(JobEventKind::Succeeded(_))),
            "{seq:?}"
        );
        let progress: Vec<(String, f32)> = seq[2..seq.len() - 1]
            .iter()
            .map(|e| match e {
                JobEventKind::Progress {
                    stage, fraction, ..
                } => (stage.clone(), *fraction),
                other => panic!("unexpected {other:?} between Started and the end"),
            })
            .collect();
        assert_eq!(progress.len(), 5);
        assert!(
            progress.windows(2).all(|w| w[0].1 <= w[1].1),
            "{progress:?}"
        );
        assert_eq!(
            progress[2].1, 0.3,
            "a smaller fraction is held at the previous value"
        );
        let snap = engine.snapshot(*id).unwrap();
        let stages: Vec<_> = snap.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["decode", "mask", "inflate", "export"]);
        assert_eq!(snap.fraction, 1.0);
    }
}

#[test]
fn submitting_beyond_the_queue_capacity_is_refused() {
    let engine = engine(1, 2, None);
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    engine.register(
        JobKind::ImageTo3d,
        runner(move |_, _| {
            g.wait();
            Ok(JobOutput::default())
        }),
    );
    let running = engine.submit(spec("r", "")).unwrap();
    wait_state(&engine, running, JobState::Running);
    let a = engine.submit(spec("a", "")).unwrap();
    let b = engine.submit(spec("b", "")).unwrap();
    let refused = engine.submit(spec("c", ""));
    assert!(
        matches!(refused, Err(EngineError::QueueFull { capacity: 2 })),
        "{refused:?}"
    );
    assert_eq!(engine.queue_depth(), 2);
    // Space frees up once a queued job leaves the queue.
    assert!(engine.cancel(a));
    let d = engine.submit(spec("d", "")).unwrap();
    gate.open();
    for id in [running, b, d] {
        assert_eq!(engine.wait(id, WAIT).unwrap().state, JobState::Succeeded);
    }
}

#[test]
fn a_kind_without_runner_is_refused() {
    let engine = engine(1, 4, None);
    let err = engine.submit(JobSpec::from(TextToImageJob {
        request: TextToImageRequest::new("a cat"),
        output: PathBuf::from("/out/cat.png"),
    }));
    assert!(matches!(
        err,
        Err(EngineError::NoRunner(JobKind::TextToImage))
    ));
}

#[test]
fn timings_cover_queue_wait_run_time_and_stages() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::open(&dir.path().join("h.sqlite3")).unwrap());
    let engine = engine(1, 64, Some(Arc::clone(&history)));
    engine.register(
        JobKind::ImageTo3d,
        runner(|_, ctx| {
            ctx.progress("first", 0.2, "");
            std::thread::sleep(Duration::from_millis(30));
            ctx.progress("second", 0.6, "");
            std::thread::sleep(Duration::from_millis(10));
            Ok(ok_output("t"))
        }),
    );
    let a = engine.submit(spec("a", "")).unwrap();
    let b = engine.submit(spec("b", "")).unwrap();
    let a = engine.wait(a, WAIT).unwrap();
    let b = engine.wait(b, WAIT).unwrap();
    let run_a = a.run_secs.unwrap();
    assert!(run_a >= 0.040, "run {run_a}");
    assert!(a.started_at.unwrap() <= a.finished_at.unwrap());
    // `b` waited for `a` to finish.
    assert!(b.queue_secs >= 0.035, "queue {}", b.queue_secs);
    assert_eq!(a.stages.len(), 2);
    assert!(a.stages[0].duration_secs >= 0.030, "{:?}", a.stages);
    assert!(a.stages[1].duration_secs >= 0.010, "{:?}", a.stages);
    let row = history.get(b.id).unwrap().unwrap();
    assert!(row.queue_secs.unwrap() >= 0.035);
    assert!(row.duration_secs.unwrap() >= 0.040);
    assert_eq!(row.stage_secs.len(), 2);
    assert!(row.started_at_ms.unwrap() >= row.created_at_ms);
    assert!(row.finished_at_ms.unwrap() >= row.started_at_ms.unwrap());
}

#[test]
fn history_rows_agree_with_engine_states() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::open(&dir.path().join("h.sqlite3")).unwrap());
    let engine = engine(2, 64, Some(Arc::clone(&history)));
    engine.register(
        JobKind::ImageTo3d,
        runner(|spec, ctx| match control(&spec.request).as_str() {
            "fail" => Err(JobFailure::new(
                "invalid_image",
                "not an image; choose a PNG",
            )),
            "panic" => panic!("bug"),
            "wait" => {
                while !ctx.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(JobFailure::cancelled())
            }
            _ => Ok(ok_output(&spec.label)),
        }),
    );
    let submit = |label: &str, outcome: &str| {
        let id = engine.submit(spec(label, outcome)).unwrap();
        // Queued is in the history before submit returns.
        assert_eq!(history.get(id).unwrap().unwrap().state, JobState::Queued);
        id
    };
    let ok = submit("ok", "ok");
    let fail = submit("fail", "fail");
    let boom = submit("boom", "panic");
    let slow = submit("slow", "wait");
    wait_state(&engine, slow, JobState::Running);
    assert_eq!(history.get(slow).unwrap().unwrap().state, JobState::Running);
    engine.cancel(slow);
    for id in [ok, fail, boom, slow] {
        let snap = engine.wait(id, WAIT).unwrap();
        let row = history.get(id).unwrap().unwrap();
        assert_eq!(row.state, snap.state, "job {id}");
        assert_eq!(row.label, snap.label);
        assert_eq!(row.kind, JobKind::ImageTo3d);
    }
    let row = history.get(ok).unwrap().unwrap();
    assert_eq!(row.state, JobState::Succeeded);
    assert_eq!(row.outputs, vec![std::path::PathBuf::from("/out/ok.glb")]);
    assert_eq!(row.quality, Some(0.75));
    assert_eq!(row.summary["vertices"], 8);
    assert_eq!(row.params["input"], "/in/ok.png");
    let row = history.get(fail).unwrap().unwrap();
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(row.error_reason.as_deref(), Some("invalid_image"));
    assert!(row.error_message.unwrap().contains("choose a PNG"));
    assert!(row.outputs.is_empty());
    let row = history.get(boom).unwrap().unwrap();
    assert_eq!(row.error_reason.as_deref(), Some("panic"));
    assert_eq!(
        history.get(slow).unwrap().unwrap().state,
        JobState::Cancelled
    );
}

#[test]
fn observers_see_every_terminal_event_exactly_once() {
    struct Recorder {
        terminal: Mutex<HashMap<JobId, usize>>,
        tx: Mutex<mpsc::Sender<(JobId, JobState)>>,
    }
    impl JobObserver for Recorder {
        fn on_event(&self, event: &JobEvent, snapshot: &JobSnapshot) {
            assert_eq!(event.id, snapshot.id);
            if event.event.is_terminal() {
                assert!(snapshot.state.is_terminal());
                *self.terminal.lock().entry(event.id).or_default() += 1;
                let _ = self.tx.lock().send((event.id, snapshot.state));
            }
        }
    }
    let (tx, rx) = mpsc::channel();
    let recorder = Arc::new(Recorder {
        terminal: Mutex::default(),
        tx: Mutex::new(tx),
    });
    let engine = engine(2, 64, None);
    engine.add_observer(Arc::clone(&recorder) as Arc<dyn JobObserver>);
    engine.register(
        JobKind::ImageTo3d,
        runner(|spec, _| match control(&spec.request).parse::<u64>().ok() {
            Some(n) if n % 3 == 1 => Err(JobFailure::new("invalid_image", "bad")),
            Some(n) if n % 3 == 2 => panic!("observer test panic"),
            _ => Ok(JobOutput::default()),
        }),
    );
    let mut expected = HashMap::new();
    for n in 0..9u64 {
        let id = engine.submit(spec("o", &n.to_string())).unwrap();
        expected.insert(id, n);
    }
    let mut seen = HashMap::new();
    for _ in 0..9 {
        let (id, state) = rx.recv_timeout(WAIT).unwrap();
        seen.insert(id, state);
    }
    // A sentinel job: observers get events in order, so once its terminal event
    // arrives any duplicate of the earlier ones would have arrived too.
    let sentinel = engine.submit(spec("s", "0")).unwrap();
    let (last, _) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(last, sentinel);
    for (id, n) in &expected {
        let want = match n % 3 {
            0 => JobState::Succeeded,
            _ => JobState::Failed,
        };
        assert_eq!(seen.get(id), Some(&want), "job {id}");
        assert_eq!(recorder.terminal.lock().get(id), Some(&1), "job {id}");
    }
}

#[test]
fn a_job_over_the_timeout_fails_and_the_engine_goes_on() {
    let config = EngineConfig {
        concurrency: 1,
        job_timeout: Some(Duration::from_millis(50)),
        ..EngineConfig::default()
    };
    let engine = Engine::new(config, None).unwrap();
    engine.register(
        JobKind::ImageTo3d,
        runner(|spec, ctx| {
            if control(&spec.request) == "hang" {
                while !ctx.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                return Err(JobFailure::cancelled());
            }
            Ok(JobOutput::default())
        }),
    );
    let hung = engine.submit(spec("hung", "hang")).unwrap();
    let next = engine.submit(spec("next", "")).unwrap();
    let hung = engine.wait(hung, WAIT).unwrap();
    assert_eq!(hung.state, JobState::Failed);
    assert_eq!(hung.failure.unwrap().reason, "timeout");
    assert_eq!(engine.wait(next, WAIT).unwrap().state, JobState::Succeeded);
}

#[test]
fn shutdown_leaves_queued_jobs_for_a_restart_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sqlite3");
    let history = Arc::new(History::open(&path).unwrap());
    let first_engine = engine(1, 64, Some(Arc::clone(&history)));
    first_engine.register(
        JobKind::ImageTo3d,
        runner(|_, ctx| {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(JobFailure::cancelled())
        }),
    );
    let running = first_engine.submit(spec("running", "")).unwrap();
    wait_state(&first_engine, running, JobState::Running);
    let waiting = first_engine.submit(spec("waiting", "k1")).unwrap();
    let report = first_engine.shutdown(Duration::from_millis(20));
    assert_eq!(report.cancelled, 1);
    assert_eq!(report.still_running, 0);
    assert_eq!(report.left_queued, 1);
    assert!(matches!(
        first_engine.submit(spec("late", "")),
        Err(EngineError::ShuttingDown)
    ));
    drop(first_engine);
    drop(history);
    assert_eq!(
        History::open(&path)
            .unwrap()
            .get(running)
            .unwrap()
            .unwrap()
            .state,
        JobState::Cancelled
    );

    // "Restart": a new engine on the same database runs the job left queued.
    let history = Arc::new(History::open(&path).unwrap());
    let second_engine = engine(1, 64, Some(Arc::clone(&history)));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    second_engine.register(
        JobKind::ImageTo3d,
        runner(move |spec, _| {
            let _ = tx.lock().send(spec.request.clone());
            Ok(ok_output("requeued"))
        }),
    );
    assert_eq!(second_engine.requeue_from_history().unwrap(), 1);
    let snap = second_engine.wait(waiting, WAIT).unwrap();
    assert_eq!(snap.state, JobState::Succeeded);
    assert_eq!(snap.label, "waiting");
    assert_eq!(
        control(&rx.recv_timeout(WAIT).unwrap()),
        "k1",
        "the runner got the saved request"
    );
    assert_eq!(
        history.get(waiting).unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert_eq!(
        second_engine.requeue_from_history().unwrap(),
        0,
        "nothing left to requeue"
    );
}
