//! History database: restart, interrupted jobs, migrations, newer and corrupt files.

use std::path::{Path, PathBuf};

use orfeas_core::history::{History, HistoryError, JobTimings, StageTiming};
use orfeas_core::jobs::{JobKind, JobOutput, JobState};

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("history.sqlite3")
}

fn output() -> JobOutput {
    JobOutput {
        files: vec![
            PathBuf::from("/data/outputs/cat.glb"),
            PathBuf::from("/data/outputs/cat.png"),
        ],
        quality: Some(0.5),
        summary: serde_json::json!({ "vertices": 1234, "triangles": 2464 }),
    }
}

fn user_version(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let params = serde_json::json!({ "input": "cat.png", "quality": "high" });
    let (done, failed, waiting) = {
        let history = History::open(&path).unwrap();
        let done = history
            .insert_job(JobKind::ImageTo3d, "cat.png", &params)
            .unwrap();
        history.mark_running(done).unwrap();
        let timings = JobTimings {
            queue_secs: Some(0.25),
            run_secs: Some(1.5),
            stages: vec![StageTiming {
                stage: "inflate".into(),
                duration_secs: 1.0,
            }],
        };
        assert!(history.mark_succeeded(done, &output(), &timings).unwrap());
        let failed = history
            .insert_job(
                JobKind::TextToImage,
                "a red fox",
                &serde_json::json!({ "prompt": "a red fox" }),
            )
            .unwrap();
        history.mark_running(failed).unwrap();
        history
            .mark_failed(
                failed,
                "model_missing",
                "run `orfeas models download sd-turbo`",
                &JobTimings::default(),
            )
            .unwrap();
        let waiting = history
            .insert_job(JobKind::ImageTo3d, "dog.png", &params)
            .unwrap();
        (done, failed, waiting)
    };
    assert!(path.exists(), "the parent folder is created");

    let history = History::open(&path).unwrap();
    assert_eq!(history.interrupted_at_open(), 0);
    assert_eq!(history.count(None).unwrap(), 3);
    let row = history.get(done).unwrap().unwrap();
    assert_eq!(row.state, JobState::Succeeded);
    assert_eq!(row.label, "cat.png");
    assert_eq!(row.params, params);
    assert_eq!(row.outputs, output().files);
    assert_eq!(row.quality, Some(0.5));
    assert_eq!(row.summary["triangles"], 2464);
    assert_eq!(row.queue_secs, Some(0.25));
    assert_eq!(row.duration_secs, Some(1.5));
    assert_eq!(row.stage_secs[0].stage, "inflate");
    assert!(row.finished_at_ms.is_some());
    let row = history.get(failed).unwrap().unwrap();
    assert_eq!(
        (row.kind, row.state),
        (JobKind::TextToImage, JobState::Failed)
    );
    assert_eq!(row.error_reason.as_deref(), Some("model_missing"));
    assert!(row.outputs.is_empty());
    let queued = history.queued_jobs().unwrap();
    assert_eq!(queued.iter().map(|r| r.id).collect::<Vec<_>>(), [waiting]);
}

#[test]
fn a_job_left_running_is_interrupted_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let (running, queued) = {
        let history = History::open(&path).unwrap();
        let running = history
            .insert_job(JobKind::ImageTo3d, "a", &serde_json::json!({}))
            .unwrap();
        assert!(history.mark_running(running).unwrap());
        let queued = history
            .insert_job(JobKind::ImageTo3d, "b", &serde_json::json!({}))
            .unwrap();
        // The process "dies" here: no terminal state is written.
        (running, queued)
    };
    let history = History::open(&path).unwrap();
    assert_eq!(history.interrupted_at_open(), 1);
    let row = history.get(running).unwrap().unwrap();
    assert_eq!(row.state, JobState::Interrupted);
    assert!(row.finished_at_ms.is_some());
    assert!(row.error_message.unwrap().contains("run it again"));
    assert_eq!(
        history.get(queued).unwrap().unwrap().state,
        JobState::Queued
    );
    drop(history);
    assert_eq!(
        History::open(&path).unwrap().interrupted_at_open(),
        0,
        "only once"
    );
}

#[test]
fn a_version_1_database_is_migrated_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        // The schema as the first release wrote it, typed out by hand.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, label TEXT NOT NULL,
                params TEXT NOT NULL, state TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
                started_at_ms INTEGER, finished_at_ms INTEGER,
                outputs TEXT NOT NULL DEFAULT '[]', error_message TEXT);
             INSERT INTO jobs (kind, label, params, state, created_at_ms, started_at_ms, finished_at_ms, outputs)
                VALUES ('image_to_3d', 'old.png', '{\"quality\":\"draft\"}', 'succeeded',
                        1700000000000, 1700000001000, 1700000002000, '[\"/old/old.glb\"]');
             INSERT INTO jobs (kind, label, params, state, created_at_ms, started_at_ms)
                VALUES ('image_to_3d', 'crashed.png', '{}', 'running', 1700000003000, 1700000004000);
             CREATE TABLE metric_samples (ts INTEGER, value REAL);
             INSERT INTO metric_samples VALUES (1, 2.0);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let history = History::open(&path).unwrap();
    assert_eq!(user_version(&path), History::schema_version());
    assert!(History::schema_version() > 1);
    let all = history.list(10, 0, None).unwrap();
    assert_eq!(all.len(), 2);
    let old = all.iter().find(|r| r.label == "old.png").unwrap();
    assert_eq!(old.state, JobState::Succeeded);
    assert_eq!(old.params["quality"], "draft");
    assert_eq!(old.outputs, [PathBuf::from("/old/old.glb")]);
    assert_eq!(old.created_at_ms, 1_700_000_000_000);
    assert_eq!(old.quality, None);
    assert_eq!(old.error_reason, None);
    let crashed = all.iter().find(|r| r.label == "crashed.png").unwrap();
    assert_eq!(crashed.state, JobState::Interrupted);
    // The columns the migration added are usable.
    let id = history
        .insert_job(JobKind::ImageTo3d, "new.png", &serde_json::json!({}))
        .unwrap();
    history
        .mark_succeeded(id, &output(), &JobTimings::default())
        .unwrap();
    assert_eq!(history.get(id).unwrap().unwrap().quality, Some(0.5));
    // Telemetry's tables are left alone.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM metric_samples", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_database_from_a_newer_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    drop(History::open(&path).unwrap());
    let future = History::schema_version() + 5;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", future).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = History::open(&path).unwrap_err();
    assert!(
        matches!(err, HistoryError::TooNew { found, .. } if found == future),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("newer ORFEAS"), "{text}");
    assert!(text.contains("ORFEAS_DATA_DIR"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(user_version(&path), future);
}

#[test]
fn a_corrupt_file_is_reported_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = History::open(&path).unwrap_err();
    assert!(matches!(err, HistoryError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("untouched") && text.contains("ORFEAS_DATA_DIR"),
        "{text}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
    // Still refused on a second try (nothing was "repaired" behind our back).
    assert!(matches!(
        History::open(&path),
        Err(HistoryError::Corrupt { .. })
    ));
}

#[test]
fn list_pages_newest_first_filters_by_kind_and_delete_removes() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(&db(&dir)).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let kind = if i % 2 == 0 {
            JobKind::ImageTo3d
        } else {
            JobKind::TextToImage
        };
        ids.push(
            history
                .insert_job(kind, &format!("job {i}"), &serde_json::json!({ "i": i }))
                .unwrap(),
        );
    }
    let page: Vec<_> = history
        .list(2, 0, None)
        .unwrap()
        .iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(page, ["job 4", "job 3"]);
    let page: Vec<_> = history
        .list(2, 2, None)
        .unwrap()
        .iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(page, ["job 2", "job 1"]);
    let meshes: Vec<_> = history
        .list(10, 0, Some(JobKind::ImageTo3d))
        .unwrap()
        .iter()
        .map(|r| r.label.clone())
        .collect();
    assert_eq!(meshes, ["job 4", "job 2", "job 0"]);
    assert_eq!(history.count(Some(JobKind::TextToImage)).unwrap(), 2);
    assert!(history.delete(ids[0]).unwrap());
    assert!(!history.delete(ids[0]).unwrap(), "already gone");
    assert!(history.get(ids[0]).unwrap().is_none());
    assert_eq!(history.count(None).unwrap(), 4);
}
