//! Optional delivery of firing and resolved alerts to an Alertmanager
//! (`POST /api/v2/alerts`) from a named thread, so evaluation never waits on
//! the network. Firing alerts are re-sent every minute, as Prometheus does,
//! so Alertmanager does not time them out.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use super::{AlertState, Transition};

const RESEND: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// One alert as Alertmanager's v2 API takes it.
#[derive(Clone, Debug, PartialEq)]
struct Pending {
    name: &'static str,
    severity: &'static str,
    summary: String,
    description: String,
    starts_at_unix_secs: f64,
    ends_at_unix_secs: Option<f64>,
}

enum Msg {
    Transition(Transition, String, String),
    Stop,
}

/// Sends alert transitions to Alertmanager; dropping it stops the thread.
pub struct Notifier {
    tx: SyncSender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notifier {
    /// `url` is the Alertmanager base URL, e.g. `http://127.0.0.1:9093`.
    pub fn start(url: &str, instance: &str) -> std::io::Result<Notifier> {
        let (tx, rx) = std::sync::mpsc::sync_channel(256);
        let url = url.trim_end_matches('/').to_owned();
        let instance = instance.to_owned();
        let thread = std::thread::Builder::new()
            .name("orfeas-alert-notify".into())
            .spawn(move || run(rx, &url, &instance))?;
        Ok(Notifier {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues a firing or resolved transition (others are ignored).
    pub fn send(&self, t: &Transition, summary: &str, description: &str) {
        if !matches!(t.to, AlertState::Firing | AlertState::Resolved) {
            return;
        }
        let msg = Msg::Transition(t.clone(), summary.to_owned(), description.to_owned());
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            tracing::warn!(
                "alert notification queue full; dropping {} {}",
                t.name,
                t.to.as_str()
            );
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.tx.try_send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<Msg>, url: &str, instance: &str) {
    let mut firing: BTreeMap<&'static str, Pending> = BTreeMap::new();
    let mut last_error: Option<String> = None;
    loop {
        let mut batch: Vec<Pending> = Vec::new();
        match rx.recv_timeout(RESEND) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Msg::Transition(t, summary, description)) => {
                let p = Pending {
                    name: t.name,
                    severity: t.severity.as_str(),
                    summary,
                    description,
                    starts_at_unix_secs: firing
                        .get(t.name)
                        .map_or(t.at_unix_secs, |p| p.starts_at_unix_secs),
                    ends_at_unix_secs: (t.to == AlertState::Resolved).then_some(t.at_unix_secs),
                };
                if t.to == AlertState::Firing {
                    firing.insert(t.name, p.clone());
                } else {
                    firing.remove(t.name);
                }
                batch.push(p);
            }
            Err(RecvTimeoutError::Timeout) => batch.extend(firing.values().cloned()),
        }
        if batch.is_empty() {
            continue;
        }
        let body = alertmanager_payload_inner(&batch, instance);
        match post_json(url, "/api/v2/alerts", &body) {
            Ok(()) => last_error = None,
            Err(err) => {
                let text = format!("{err:#}");
                // Log a failing Alertmanager once, not on every retry.
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        "cannot deliver alerts to {url}: {text}; check the Alertmanager URL in Settings"
                    );
                }
                last_error = Some(text);
            }
        }
    }
}

/// The JSON body Alertmanager's `POST /api/v2/alerts` takes, for one transition.
pub fn alertmanager_payload(
    t: &Transition,
    summary: &str,
    description: &str,
    instance: &str,
) -> String {
    alertmanager_payload_inner(
        &[Pending {
            name: t.name,
            severity: t.severity.as_str(),
            summary: summary.to_owned(),
            description: description.to_owned(),
            starts_at_unix_secs: t.at_unix_secs,
            ends_at_unix_secs: (t.to == AlertState::Resolved).then_some(t.at_unix_secs),
        }],
        instance,
    )
}

fn alertmanager_payload_inner(alerts: &[Pending], instance: &str) -> String {
    let list: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| {
            let mut v = serde_json::json!({
                "labels": {
                    "alertname": a.name,
                    "severity": a.severity,
                    "job": "orfeas",
                    "instance": instance,
                    "source": "orfeas-in-app",
                },
                "annotations": { "summary": a.summary, "description": a.description },
                "startsAt": rfc3339(a.starts_at_unix_secs),
            });
            if let (Some(end), Some(obj)) = (a.ends_at_unix_secs, v.as_object_mut()) {
                obj.insert("endsAt".into(), rfc3339(end).into());
            }
            v
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Unix seconds as RFC 3339 UTC (`2024-05-01T12:00:00.000Z`).
pub fn rfc3339(unix_secs: f64) -> String {
    let millis = (unix_secs * 1000.0).round() as i64;
    let (days, ms_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// Why an HTTP POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("only http:// URLs are supported, got '{0}'")]
    Scheme(String),
    #[error("cannot reach {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} answered '{status_line}'")]
    Status { addr: String, status_line: String },
}

/// A minimal blocking HTTP/1.1 POST of a JSON body (keeps the dependency
/// list short; Alertmanager speaks plain HTTP on a LAN).
pub fn post_json(base_url: &str, path: &str, body: &str) -> Result<(), PostError> {
    let rest = base_url
        .strip_prefix("http://")
        .ok_or_else(|| PostError::Scheme(base_url.to_owned()))?;
    let (hostport, prefix) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let io = |source| PostError::Io {
        addr: hostport.clone(),
        source,
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let full_path = if prefix.is_empty() {
        path.to_owned()
    } else {
        format!("/{}{path}", prefix.trim_end_matches('/'))
    };
    let request = format!(
        "POST {full_path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or("").to_owned();
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok {
        Ok(())
    } else {
        Err(PostError::Status {
            addr: hostport,
            status_line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z (a leap day) is 951827696.789.
        assert_eq!(rfc3339(951_827_696.789), "2000-02-29T12:34:56.789Z");
    }
}
