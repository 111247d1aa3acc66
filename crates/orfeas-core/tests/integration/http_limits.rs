//! Hostile HTTP over raw TCP against a started server: a huge declared body,
//! an oversized chunked body, huge headers and URIs, a slowloris client and
//! more connections than the cap. After each, the server still answers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use orfeas_core::http::ServeConfig;
use orfeas_core::jobs::JobKind;
use serde_json::Value;

use super::api::{TestServer, WAIT, get, start, test_config, writer};

/// A raw response: status and body (headers are not needed here).
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn addr(s: &TestServer) -> SocketAddr {
    s.base.trim_start_matches("http://").parse().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Reads one response (the server closes after these, or sends a length).
fn read_response(stream: &mut TcpStream) -> Raw {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the whole response arrived is fine.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("reading the response: {e} (got {} bytes)", raw.len()),
        }
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            if length.is_some_and(|n| raw.len() >= end + 4 + n) {
                break;
            }
        }
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    }
}

/// Sends `head` (and nothing else) and reads the answer.
fn exchange(addr: SocketAddr, head: &str) -> Raw {
    let mut stream = connect(addr);
    stream.write_all(head.as_bytes()).unwrap();
    read_response(&mut stream)
}

fn assert_healthy(s: &TestServer) {
    let r = get(&s.url("/health"));
    assert_eq!(r.status, 200, "the server stopped answering");
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn a_huge_declared_content_length_is_refused_at_once_and_costs_nothing() {
    let s = start(test_config(), Vec::new());
    let before = s.metric(
        "validation_errors_total",
        &[("endpoint", "/api/text-to-image"), ("field", "body")],
    );
    for (path, content_type, status) in [
        ("/api/text-to-image", "application/json", 413),
        ("/api/image-to-3d", "image/png", 413),
        ("/sdapi/v1/txt2img", "application/json", 413),
        // Routes without a body answer as usual; the body is never read.
        ("/health", "application/json", 405),
    ] {
        let started = Instant::now();
        let r = exchange(
            addr(&s),
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 99999999999\r\n\r\n"
            ),
        );
        assert_eq!(r.status, status, "{path}: {}", r.head);
        if status == 413 {
            assert_eq!(r.json()["error"]["code"], "body_too_large", "{path}");
        }
        // Answered without waiting for (or allocating) the announced body.
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
        assert_healthy(&s);
    }
    assert_eq!(
        s.settled_metric(
            "validation_errors_total",
            &[("endpoint", "/api/text-to-image"), ("field", "body")],
            before + 1.0,
        ),
        before + 1.0
    );
}

#[test]
fn a_chunked_body_is_cut_off_at_the_limit_and_smaller_ones_pass() {
    let config = ServeConfig {
        max_body_bytes: 64 * 1024,
        ..test_config()
    };
    let s = start(
        config,
        vec![(JobKind::TextToImage, writer(b"png", Duration::ZERO))],
    );
    let chunked = |payload: Vec<u8>| {
        let mut stream = connect(addr(&s));
        let mut writer = stream.try_clone().unwrap();
        // Written from another thread: the server answers before the upload ends.
        let upload = std::thread::spawn(move || {
            let head = "POST /api/text-to-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let mut ok = writer.write_all(head.as_bytes()).is_ok();
            for piece in payload.chunks(16 * 1024) {
                ok = ok
                    && writer
                        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .is_ok()
                    && writer.write_all(piece).is_ok()
                    && writer.write_all(b"\r\n").is_ok();
            }
            ok && writer.write_all(b"0\r\n\r\n").is_ok()
        });
        let r = read_response(&mut stream);
        // The upload may have been cut short by the server's close; that is its right.
        let _completed = upload.join().unwrap();
        r
    };
    // 256 KiB of JSON-ish padding: four times the limit.
    let mut big = br#"{"prompt":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 256 * 1024));
    big.extend_from_slice(br#""}"#);
    let r = chunked(big);
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    assert_healthy(&s);

    let r = chunked(br#"{"prompt":"a small fox","seed":1}"#.to_vec());
    assert_eq!(
        r.status,
        202,
        "{} {}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn oversized_headers_get_431_and_long_uris_414() {
    let s = start(test_config(), Vec::new());
    let big = "a".repeat(100 * 1024);
    let mut stream = connect(addr(&s));
    let mut writer = stream.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        // The server may stop reading once the limit is passed.
        let _ = writer.write_all(
            format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        );
    });
    let r = read_response(&mut stream);
    upload.join().unwrap();
    assert_eq!(r.status, 431, "{}", r.head);
    assert_healthy(&s);

    let before = s.metric(
        "http_requests_total",
        &[("endpoint", "/api/jobs"), ("status", "414")],
    );
    let query = "x".repeat(20 * 1024);
    let r = exchange(
        addr(&s),
        &format!("GET /api/jobs?q={query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 414, "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "uri_too_long");
    assert_eq!(
        s.settled_metric(
            "http_requests_total",
            &[("endpoint", "/api/jobs"), ("status", "414")],
            before + 1.0
        ),
        before + 1.0,
        "the 414 is counted under its route's label, not the raw path"
    );
    assert_healthy(&s);
}

#[test]
fn a_slowloris_client_is_dropped_after_the_read_timeout_while_others_are_served() {
    let config = ServeConfig {
        header_read_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let s = start(config, Vec::new());
    let mut slow = connect(addr(&s));
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let opened = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    // Others are answered while it stalls.
    for _ in 0..3 {
        assert_healthy(&s);
    }
    let mut buf = [0u8; 256];
    let closed = match slow.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true, // an error status before the close is fine too
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
    };
    let after = opened.elapsed();
    assert!(closed, "the stalled connection was not closed");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(8),
        "closed after {after:?}, the timeout is 1 s"
    );
    assert_healthy(&s);
}

/// A connection in the middle of a request: the head of a POST whose body
/// is still to come, so a handler is waiting on it.
fn busy(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    stream
        .write_all(
            b"POST /api/text-to-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 64\r\n\r\n{\"prompt\":",
        )
        .unwrap();
    stream
}

/// What a connection has been sent within `wait`: `None` when nothing
/// arrived and it is still open, `Some(bytes)` otherwise (empty: closed).
fn pending(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(Vec::new()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("unexpected read error {e}"),
    }
}

#[test]
fn connections_over_the_cap_get_503_when_every_slot_is_mid_request() {
    let config = ServeConfig {
        max_connections: 4,
        ..test_config()
    };
    let s = start(config, Vec::new());
    let held: Vec<TcpStream> = (0..4).map(|_| busy(addr(&s))).collect();
    std::thread::sleep(Duration::from_millis(200));
    // No slot is idle, so nothing can be pushed out: a 503 with the usual body.
    let mut refused = 0;
    for _ in 0..6 {
        let mut extra = connect(addr(&s));
        let text = pending(&mut extra, Duration::from_secs(2)).expect("an answer");
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("too_many_connections"), "{text}");
        refused += 1;
    }
    assert_eq!(refused, 6);
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = exchange(
            addr(&s),
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.head);
        assert!(
            Instant::now() < deadline,
            "/health never answered after the connections closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.metric(
            "errors_total",
            &[("type", "server_error"), ("endpoint", "other")]
        ) >= 6.0,
        "refused connections are counted"
    );
}

#[test]
fn idle_connections_are_pushed_out_oldest_first_so_real_clients_get_in() {
    let config = ServeConfig {
        max_connections: 4,
        ..test_config()
    };
    let s = start(config, Vec::new());
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..10 {
        idle.push(connect(addr(&s)));
        // Accepted one by one, so "oldest" is well defined.
        std::thread::sleep(Duration::from_millis(30));
    }
    let closed: Vec<bool> = idle
        .iter_mut()
        .map(|c| pending(c, Duration::from_millis(300)).is_some_and(|b| b.is_empty()))
        .collect();
    assert_eq!(
        closed,
        [vec![true; 6], vec![false; 4]].concat(),
        "the six oldest are closed without an answer, the four newest held"
    );
    // A real client gets in at once (it pushes out the oldest idle one).
    let t = Instant::now();
    let r = exchange(
        addr(&s),
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
