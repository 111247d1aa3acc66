//! Job history in SQLite (WAL): jobs, parameters, outputs, scores, errors.
//!
//! The database lives at `paths::data_dir()/history.sqlite3`. The schema is
//! versioned with `PRAGMA user_version` and the ordered [`MIGRATIONS`] list.
//! Telemetry keeps its own `metric_*` tables in the same file; this module
//! never touches them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use crate::jobs::{JobId, JobKind, JobOutput, JobState};
// The timings are the engine's; the history stores them as they are.
pub use crate::jobs::{JobTimings, StageTiming, system_time_ms};

/// File name of the history database inside the data directory.
pub const HISTORY_FILE_NAME: &str = "history.sqlite3";

/// Schema migrations, applied in order; after applying entry `i` the
/// database's `user_version` is `i + 1`. Never edit a released entry: append.
pub const MIGRATIONS: &[&str] = &[
    // v1: jobs with their parameters, state, timestamps (unix ms) and outputs.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        started_at_ms INTEGER,
        finished_at_ms INTEGER,
        outputs TEXT NOT NULL DEFAULT '[]',
        error_message TEXT
    );",
    // v2: quality score, bounded error reason, timings and a result summary;
    // indexes for the gallery (newest first per kind) and restart recovery.
    "ALTER TABLE jobs ADD COLUMN error_reason TEXT;
     ALTER TABLE jobs ADD COLUMN quality REAL;
     ALTER TABLE jobs ADD COLUMN queue_secs REAL;
     ALTER TABLE jobs ADD COLUMN duration_secs REAL;
     ALTER TABLE jobs ADD COLUMN stage_secs TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE jobs ADD COLUMN summary TEXT NOT NULL DEFAULT 'null';
     CREATE INDEX jobs_kind_id ON jobs (kind, id);
     CREATE INDEX jobs_state ON jobs (state);",
];

/// How long a statement waits for another connection's write lock (the
/// telemetry downsampler, a second ORFEAS process) before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Errors from the history database.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "history database {path} is not a readable SQLite database ({source}); \
         it was left untouched: move it aside to start a fresh history, or set ORFEAS_DATA_DIR"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "history database {path} was written by a newer ORFEAS (schema version {found}, \
         this build knows up to {supported}); upgrade ORFEAS or set ORFEAS_DATA_DIR"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "cannot create the data folder {dir}: {source}; check permissions or set ORFEAS_DATA_DIR"
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open history database {path}: {source}; check permissions or set ORFEAS_DATA_DIR"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("history database migration to version {version} failed: {source}")]
    Migration {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("history row {id} is unreadable: {what}")]
    BadRow { id: i64, what: String },
    #[error("history database error: {0}; if it persists, check disk space and permissions")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Path(#[from] crate::paths::PathError),
}

/// One job as stored. Timestamps are unix epoch milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: JobKind,
    pub label: String,
    pub params: serde_json::Value,
    pub state: JobState,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub queue_secs: Option<f64>,
    /// Run time of the job (start to finish).
    pub duration_secs: Option<f64>,
    pub stage_secs: Vec<StageTiming>,
    pub outputs: Vec<PathBuf>,
    pub quality: Option<f32>,
    pub summary: serde_json::Value,
    pub error_reason: Option<String>,
    pub error_message: Option<String>,
}

/// The history database. `Send + Sync`; one connection behind a mutex (each
/// call is a short statement, and SQLite serialises writers anyway).
#[derive(Debug)]
pub struct History {
    conn: Mutex<Connection>,
    path: PathBuf,
    interrupted_at_open: usize,
}

/// Current time as unix epoch milliseconds.
pub fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

const RECORD_COLUMNS: &str = "id, kind, label, params, state, created_at_ms, started_at_ms, \
     finished_at_ms, queue_secs, duration_secs, stage_secs, outputs, quality, summary, \
     error_reason, error_message";

impl History {
    /// Opens (creating if needed) the history at `path`: runs pending
    /// migrations, then marks jobs left `running` by a previous process as
    /// `interrupted` (see [`History::interrupted_at_open`]).
    ///
    /// A file that is not a SQLite database is reported and never modified.
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(|source| HistoryError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Read the header before anything writes: a foreign or damaged file
        // fails here ("file is not a database") and stays as it was.
        let version = read_user_version(&conn).map_err(|source| classify(path, source))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported,
            });
        }
        // journal_mode answers with the mode now in force; a file system
        // without shared memory may refuse WAL, which still works, only slower.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|source| classify(path, source))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "history database is not in WAL mode");
        }
        // WAL + NORMAL survives a process crash (kill -9); only a power loss
        // can drop the last commits, which is acceptable for a history.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, path)?;
        let interrupted = conn.execute(
            "UPDATE jobs SET state = 'interrupted', finished_at_ms = ?1,
                 error_reason = 'interrupted',
                 error_message = 'ORFEAS stopped while this job was running; run it again'
             WHERE state = 'running'",
            params![now_ms()],
        )?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "jobs left running by a previous run marked interrupted"
            );
        }
        Ok(History {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            interrupted_at_open: interrupted,
        })
    }

    /// Opens `paths::data_dir()/history.sqlite3`.
    pub fn open_default() -> Result<History, HistoryError> {
        History::open(&crate::paths::data_dir()?.join(HISTORY_FILE_NAME))
    }

    /// Where the database file is (telemetry opens its own connection to it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version this build writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// How many jobs were found `running` (left by a crashed process) and
    /// marked `interrupted` when this history was opened.
    pub fn interrupted_at_open(&self) -> usize {
        self.interrupted_at_open
    }

    /// Records a new job in state `queued` and returns its id.
    pub fn insert_job(
        &self,
        kind: JobKind,
        label: &str,
        params: &serde_json::Value,
    ) -> Result<JobId, HistoryError> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO jobs (kind, label, params, state, created_at_ms) VALUES (?1, ?2, ?3, 'queued', ?4)",
            params![kind.as_str(), label, params.to_string(), now_ms()],
        )?;
        Ok(JobId(conn.last_insert_rowid()))
    }

    /// `queued` → `running`. Returns false when the job is not queued (it was
    /// cancelled or deleted meanwhile).
    pub fn mark_running(&self, id: JobId) -> Result<bool, HistoryError> {
        let n = self.conn.lock().execute(
            "UPDATE jobs SET state = 'running', started_at_ms = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id.0, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Records success with the outputs, quality score and timings.
    pub fn mark_succeeded(
        &self,
        id: JobId,
        output: &JobOutput,
        timings: &JobTimings,
    ) -> Result<bool, HistoryError> {
        let outputs = serde_json::to_string(&output.files).unwrap_or_else(|_| "[]".into());
        let stages = serde_json::to_string(&timings.stages).unwrap_or_else(|_| "[]".into());
        let n = self.conn.lock().execute(
            "UPDATE jobs SET state = 'succeeded', finished_at_ms = ?2, outputs = ?3, quality = ?4,
                 summary = ?5, queue_secs = ?6, duration_secs = ?7, stage_secs = ?8,
                 error_reason = NULL, error_message = NULL
             WHERE id = ?1",
            params![
                id.0,
                now_ms(),
                outputs,
                output.quality.map(f64::from),
                output.summary.to_string(),
                timings.queue_secs,
                timings.run_secs,
                stages,
            ],
        )?;
        Ok(n == 1)
    }

    /// Records a failure. No outputs are recorded for failed jobs.
    pub fn mark_failed(
        &self,
        id: JobId,
        reason: &str,
        message: &str,
        timings: &JobTimings,
    ) -> Result<bool, HistoryError> {
        self.mark_ended(id, JobState::Failed, Some(reason), Some(message), timings)
    }

    /// Records a cancellation. No outputs are recorded for cancelled jobs.
    pub fn mark_cancelled(&self, id: JobId, timings: &JobTimings) -> Result<bool, HistoryError> {
        self.mark_ended(id, JobState::Cancelled, None, None, timings)
    }

    fn mark_ended(
        &self,
        id: JobId,
        state: JobState,
        reason: Option<&str>,
        message: Option<&str>,
        timings: &JobTimings,
    ) -> Result<bool, HistoryError> {
        let stages = serde_json::to_string(&timings.stages).unwrap_or_else(|_| "[]".into());
        let n = self.conn.lock().execute(
            "UPDATE jobs SET state = ?2, finished_at_ms = ?3, outputs = '[]', quality = NULL,
                 error_reason = ?4, error_message = ?5, queue_secs = ?6, duration_secs = ?7,
                 stage_secs = ?8
             WHERE id = ?1",
            params![
                id.0,
                state.as_str(),
                now_ms(),
                reason,
                message,
                timings.queue_secs,
                timings.run_secs,
                stages,
            ],
        )?;
        Ok(n == 1)
    }

    /// One job, or `None` when there is no such id.
    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, HistoryError> {
        let conn = self.conn.lock();
        let raw = conn
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id.0],
                RawRecord::from_row,
            )
            .optional()?;
        raw.map(RawRecord::into_record).transpose()
    }

    /// Jobs newest first, optionally of one kind. Rows this build cannot read
    /// are skipped with a warning rather than hiding the whole history.
    pub fn list(
        &self,
        limit: usize,
        offset: usize,
        kind: Option<JobKind>,
    ) -> Result<Vec<JobRecord>, HistoryError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE (?1 IS NULL OR kind = ?1)
             ORDER BY id DESC LIMIT ?2 OFFSET ?3"
        ))?;
        let rows = stmt.query_map(
            params![
                kind.map(JobKind::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX),
                i64::try_from(offset).unwrap_or(i64::MAX),
            ],
            RawRecord::from_row,
        )?;
        collect_readable(rows)
    }

    /// Number of jobs, optionally of one kind.
    pub fn count(&self, kind: Option<JobKind>) -> Result<usize, HistoryError> {
        let n: i64 = self.conn.lock().query_row(
            "SELECT COUNT(*) FROM jobs WHERE (?1 IS NULL OR kind = ?1)",
            params![kind.map(JobKind::as_str)],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Removes the record. Output files are the caller's to keep or delete.
    pub fn delete(&self, id: JobId) -> Result<bool, HistoryError> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM jobs WHERE id = ?1", params![id.0])?;
        Ok(n == 1)
    }

    /// Jobs still `queued` (accepted but never started), oldest first: what a
    /// restarted server re-queues.
    pub fn queued_jobs(&self) -> Result<Vec<JobRecord>, HistoryError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY id ASC"
        ))?;
        let rows = stmt.query_map([], RawRecord::from_row)?;
        collect_readable(rows)
    }
}

fn read_user_version(conn: &Connection) -> rusqlite::Result<i64> {
    // Touching sqlite_master makes SQLite read and check the header and the
    // schema page, so damage is found now rather than at the first insert.
    conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))?;
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn classify(path: &Path, source: rusqlite::Error) -> HistoryError {
    use rusqlite::ffi::ErrorCode;
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => HistoryError::Corrupt {
            path: path.to_path_buf(),
            source,
        },
        _ => HistoryError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index + 1;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| HistoryError::Migration { version, source })?;
        // Re-read inside the write lock: another process may have migrated
        // between our first look and now.
        let current: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| HistoryError::Migration { version, source })?;
        if current > MIGRATIONS.len() as i64 {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: current,
                supported: MIGRATIONS.len() as i64,
            });
        }
        if current >= version as i64 {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|source| HistoryError::Migration { version, source })?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(|source| HistoryError::Migration { version, source })?;
        tx.commit()
            .map_err(|source| HistoryError::Migration { version, source })?;
        tracing::info!(version, "history database migrated");
    }
    Ok(())
}

fn collect_readable(
    rows: impl Iterator<Item = rusqlite::Result<RawRecord>>,
) -> Result<Vec<JobRecord>, HistoryError> {
    let mut out = Vec::new();
    for row in rows {
        match row?.into_record() {
            Ok(record) => out.push(record),
            Err(err) => tracing::warn!("skipping history row: {err:#}"),
        }
    }
    Ok(out)
}

/// A row as SQLite gives it, before the text columns are parsed.
struct RawRecord {
    id: i64,
    kind: String,
    label: String,
    params: String,
    state: String,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    queue_secs: Option<f64>,
    duration_secs: Option<f64>,
    stage_secs: String,
    outputs: String,
    quality: Option<f64>,
    summary: String,
    error_reason: Option<String>,
    error_message: Option<String>,
}

impl RawRecord {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
        Ok(RawRecord {
            id: row.get(0)?,
            kind: row.get(1)?,
            label: row.get(2)?,
            params: row.get(3)?,
            state: row.get(4)?,
            created_at_ms: row.get(5)?,
            started_at_ms: row.get(6)?,
            finished_at_ms: row.get(7)?,
            queue_secs: row.get(8)?,
            duration_secs: row.get(9)?,
            stage_secs: row.get(10)?,
            outputs: row.get(11)?,
            quality: row.get(12)?,
            summary: row.get(13)?,
            error_reason: row.get(14)?,
            error_message: row.get(15)?,
        })
    }

    fn into_record(self) -> Result<JobRecord, HistoryError> {
        let id = self.id;
        let bad = |what: String| HistoryError::BadRow { id, what };
        let kind = self
            .kind
            .parse::<JobKind>()
            .map_err(|_| bad(format!("unknown job kind '{}'", self.kind)))?;
        let state = self
            .state
            .parse::<JobState>()
            .map_err(|_| bad(format!("unknown job state '{}'", self.state)))?;
        let json = |text: &str, column: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| bad(format!("column {column}: {e}")))
        };
        Ok(JobRecord {
            id: JobId(id),
            kind,
            label: self.label,
            params: json(&self.params, "params")?,
            state,
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            queue_secs: self.queue_secs,
            duration_secs: self.duration_secs,
            stage_secs: serde_json::from_str(&self.stage_secs)
                .map_err(|e| bad(format!("column stage_secs: {e}")))?,
            outputs: serde_json::from_str(&self.outputs)
                .map_err(|e| bad(format!("column outputs: {e}")))?,
            // f32 is the precision scores are produced in.
            quality: self.quality.map(|q| q as f32),
            summary: json(&self.summary, "summary")?,
            error_reason: self.error_reason,
            error_message: self.error_message,
        })
    }
}
