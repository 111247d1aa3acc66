//! Time series of the dashboard's derived values: the last hour in memory at
//! the sample rate, older data averaged per minute and per 10 minutes into
//! SQLite tables `metric_1m` / `metric_10m` of the history database.

use std::collections::VecDeque;
use std::path::Path;

/// A dashboard time range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeRange {
    M5,
    H1,
    H24,
    D7,
    D30,
}

impl TimeRange {
    pub const ALL: [TimeRange; 5] = [
        TimeRange::M5,
        TimeRange::H1,
        TimeRange::H24,
        TimeRange::D7,
        TimeRange::D30,
    ];

    pub fn secs(self) -> f64 {
        match self {
            TimeRange::M5 => 300.0,
            TimeRange::H1 => 3600.0,
            TimeRange::H24 => 86_400.0,
            TimeRange::D7 => 7.0 * 86_400.0,
            TimeRange::D30 => 30.0 * 86_400.0,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TimeRange::M5 => "5m",
            TimeRange::H1 => "1h",
            TimeRange::H24 => "24h",
            TimeRange::D7 => "7d",
            TimeRange::D30 => "30d",
        }
    }
}

/// At most this many points come back from a query (charts stay smooth).
pub const MAX_POINTS: usize = 1000;
const MEMORY_SECS: f64 = 3600.0;
const KEEP_1M_SECS: f64 = 2.0 * 86_400.0;
const KEEP_10M_SECS: f64 = 30.0 * 86_400.0;

/// Database errors of the downsampled history.
#[derive(Debug, thiserror::Error)]
#[error(
    "metric history database {path}: {source}; delete the metric_* tables or the file if it is corrupt"
)]
pub struct StoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

struct Bucket {
    start: i64,
    sums: Vec<f64>,
    counts: Vec<u32>,
}

impl Bucket {
    fn new(start: i64, n: usize) -> Bucket {
        Bucket {
            start,
            sums: vec![0.0; n],
            counts: vec![0; n],
        }
    }

    fn add(&mut self, values: &[f64]) {
        for (i, v) in values.iter().enumerate() {
            if v.is_finite() {
                self.sums[i] += v;
                self.counts[i] += 1;
            }
        }
    }

    fn averages(&self) -> Vec<f64> {
        self.sums
            .iter()
            .zip(&self.counts)
            .map(|(s, c)| if *c > 0 { s / f64::from(*c) } else { f64::NAN })
            .collect()
    }
}

pub struct SeriesStore {
    ids: Vec<String>,
    memory: VecDeque<(f64, Vec<f64>)>,
    db: Option<rusqlite::Connection>,
    minute: Option<Bucket>,
    ten: Option<Bucket>,
}

impl SeriesStore {
    /// `db_path`: the history database; `None` keeps only the last hour in memory.
    pub fn new(ids: Vec<String>, db_path: Option<&Path>) -> Result<SeriesStore, StoreError> {
        let db = db_path.map(open).transpose()?;
        Ok(SeriesStore {
            ids,
            memory: VecDeque::new(),
            db,
            minute: None,
            ten: None,
        })
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Adds one sample of every series (same order as `ids`).
    pub fn push(&mut self, t_unix_secs: f64, values: Vec<f64>) {
        let t = t_unix_secs.floor() as i64;
        self.roll(t, &values);
        self.memory.push_back((t_unix_secs, values));
        while self
            .memory
            .front()
            .is_some_and(|(t0, _)| *t0 < t_unix_secs - MEMORY_SECS)
        {
            self.memory.pop_front();
        }
    }

    fn roll(&mut self, t: i64, values: &[f64]) {
        let n = self.ids.len();
        let minute_start = t - t.rem_euclid(60);
        let finished = match self.minute.as_ref() {
            Some(b) if b.start != minute_start => self.minute.take(),
            _ => None,
        };
        if let Some(done) = finished {
            let avg = done.averages();
            self.write("metric_1m", done.start, &avg);
            let ten_start = done.start - done.start.rem_euclid(600);
            let ten_done = match self.ten.as_ref() {
                Some(b) if b.start != ten_start => self.ten.take(),
                _ => None,
            };
            if let Some(ten) = ten_done {
                self.write("metric_10m", ten.start, &ten.averages());
                self.prune(ten.start as f64);
            }
            self.ten
                .get_or_insert_with(|| Bucket::new(ten_start, n))
                .add(&avg);
        }
        self.minute
            .get_or_insert_with(|| Bucket::new(minute_start, n))
            .add(values);
    }

    fn write(&self, table: &str, ts: i64, values: &[f64]) {
        let Some(db) = self.db.as_ref() else { return };
        let result = (|| -> rusqlite::Result<()> {
            let tx = db.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO {table} (series, ts, value) VALUES (?1, ?2, ?3)"
                ))?;
                for (id, v) in self.ids.iter().zip(values) {
                    if v.is_finite() {
                        stmt.execute(rusqlite::params![id, ts, v])?;
                    }
                }
            }
            tx.commit()
        })();
        if let Err(err) = result {
            tracing::warn!("writing metric history failed: {err:#}");
        }
    }

    fn prune(&self, now: f64) {
        let Some(db) = self.db.as_ref() else { return };
        let r = db
            .execute(
                "DELETE FROM metric_1m WHERE ts < ?1",
                [(now - KEEP_1M_SECS) as i64],
            )
            .and_then(|_| {
                db.execute(
                    "DELETE FROM metric_10m WHERE ts < ?1",
                    [(now - KEEP_10M_SECS) as i64],
                )
            });
        if let Err(err) = r {
            tracing::warn!("pruning metric history failed: {err:#}");
        }
    }

    /// Newest value of a series.
    pub fn latest(&self, id: &str) -> Option<f64> {
        let i = self.ids.iter().position(|s| s == id)?;
        self.memory
            .iter()
            .rev()
            .find_map(|(_, v)| v.get(i).copied().filter(|x| x.is_finite()))
    }

    /// `[unix_secs, value]` points of a series over `range` ending at `now`,
    /// at most [`MAX_POINTS`], oldest first; gaps (no data) are left out.
    pub fn series(&self, id: &str, range: TimeRange, now_unix_secs: f64) -> Vec<[f64; 2]> {
        let Some(i) = self.ids.iter().position(|s| s == id) else {
            return Vec::new();
        };
        let from = now_unix_secs - range.secs();
        let mut points: Vec<[f64; 2]> = Vec::new();
        let tables: &[&str] = match range {
            TimeRange::M5 | TimeRange::H1 => &[],
            TimeRange::H24 => &["metric_1m"],
            TimeRange::D7 | TimeRange::D30 => &["metric_10m", "metric_1m"],
        };
        for table in tables {
            let after = points.last().map_or(from, |p| p[0] + 1.0);
            points.extend(self.query(table, id, after));
        }
        let after = points.last().map_or(from, |p| p[0] + 1.0);
        points.extend(
            self.memory
                .iter()
                .filter(|(t, _)| *t >= after)
                .filter_map(|(t, v)| v.get(i).filter(|x| x.is_finite()).map(|x| [*t, *x])),
        );
        decimate(points, MAX_POINTS)
    }

    fn query(&self, table: &str, id: &str, from: f64) -> Vec<[f64; 2]> {
        let Some(db) = self.db.as_ref() else {
            return Vec::new();
        };
        let result = (|| -> rusqlite::Result<Vec<[f64; 2]>> {
            let mut stmt = db.prepare_cached(&format!(
                "SELECT ts, value FROM {table} WHERE series = ?1 AND ts >= ?2 ORDER BY ts"
            ))?;
            let rows = stmt.query_map(rusqlite::params![id, from.ceil() as i64], |r| {
                Ok([r.get::<_, i64>(0)? as f64, r.get::<_, f64>(1)?])
            })?;
            rows.collect()
        })();
        result.unwrap_or_else(|err| {
            tracing::warn!("reading metric history failed: {err:#}");
            Vec::new()
        })
    }
}

fn open(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let err = |source| StoreError {
        path: path.display().to_string(),
        source,
    };
    let db = rusqlite::Connection::open(path).map_err(err)?;
    db.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS metric_1m (series TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (series, ts)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS metric_10m (series TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (series, ts)) WITHOUT ROWID;",
    )
    .map_err(err)?;
    Ok(db)
}

/// Averages neighbouring points so at most `max` remain.
pub fn decimate(points: Vec<[f64; 2]>, max: usize) -> Vec<[f64; 2]> {
    if points.len() <= max || max == 0 {
        return points;
    }
    let chunk = points.len().div_ceil(max);
    points
        .chunks(chunk)
        .map(|c| {
            let n = c.len() as f64;
            let (t, v) = c.iter().fold((0.0, 0.0), |(t, v), p| (t + p[0], v + p[1]));
            [t / n, v / n]
        })
        .collect()
}
