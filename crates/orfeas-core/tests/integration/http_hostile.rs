//! More hostile HTTP against a live server: many concurrent lies about the
//! body size (memory stays flat), thousands of half-open connections
//! (`/health` still answers fast), HTTP/1.0, pipelining and paths that are
//! not UTF-8. After each, the server still answers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::api::{TestServer, get, start, test_config};

fn addr(s: &TestServer) -> SocketAddr {
    s.base.trim_start_matches("http://").parse().unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Everything the server sends until it closes (or 10 s pass).
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !out.is_empty() => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading: {e}"),
        }
    }
    out
}

fn status_of(response: &[u8]) -> u16 {
    String::from_utf8_lossy(response)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn assert_healthy(s: &TestServer) {
    let r = get(&s.url("/health"));
    assert_eq!(r.status, 200, "the server stopped answering");
}

#[test]
fn concurrent_lies_about_the_body_size_cost_no_memory() {
    let s = start(test_config(), Vec::new());
    let before = rss_bytes();
    let lengths = ["100000000000", "18446744073709551615", "4000000000"];
    let threads: Vec<_> = (0..48)
        .map(|n| {
            let (addr, length) = (addr(&s), lengths[n % lengths.len()]);
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                let path = [
                    "/api/text-to-image",
                    "/api/image-to-3d",
                    "/sdapi/v1/txt2img",
                ][n % 3];
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {length}\r\n\r\n{{\"pro"
                );
                stream.write_all(head.as_bytes()).unwrap();
                (length, status_of(&read_all(&mut stream)))
            })
        })
        .collect();
    for t in threads {
        let (length, status) = t.join().unwrap();
        // 2^64-1 overflows hyper's length parser, which refuses the head
        // itself (431); every length it can read gets our 413.
        let want: &[u16] = if length.len() >= 20 {
            &[400, 413, 431]
        } else {
            &[413]
        };
        assert!(
            want.contains(&status),
            "Content-Length {length}: status {status}"
        );
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "48 requests declaring up to 2^64 bytes grew the process by {} MiB",
        grown >> 20
    );
    assert_healthy(&s);
}

/// The soft open-file limit of this process.
fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

#[test]
fn five_thousand_half_open_connections_do_not_lock_out_health() {
    // Client and server live in this process: two descriptors per connection.
    let limit = fd_limit();
    let wanted = 5_000;
    let n = wanted.min((limit.saturating_sub(500) / 2) as usize);
    assert!(
        n >= 1_000,
        "the open-file limit ({limit}) is too low for this test; raise it (ulimit -n 12000)"
    );
    let s = start(test_config(), Vec::new()); // the default cap: 256
    let mut half_open = Vec::with_capacity(n);
    for _ in 0..n {
        // Connected, never a byte sent.
        half_open.push(TcpStream::connect(addr(&s)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut stream = connect(addr(&s));
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let response = read_all(&mut stream);
        times.push(t.elapsed());
        assert_eq!(
            status_of(&response),
            200,
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    times.sort();
    eprintln!("{n} half-open connections: /health in {times:?}");
    assert!(
        times[2] < Duration::from_millis(100),
        "median /health time {:?} with {n} half-open connections",
        times[2]
    );
    drop(half_open);
    assert_healthy(&s);
}

#[test]
fn http_1_0_and_pipelined_requests_are_answered_in_order() {
    let s = start(test_config(), Vec::new());
    // HTTP/1.0 without Host: answered, then closed.
    let mut old = connect(addr(&s));
    old.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let response = read_all(&mut old);
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("\"status\":\"ok\""), "{text}");
    // Three requests in one write on one connection: three answers, in order.
    let mut conn = connect(addr(&s));
    conn.write_all(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /api/nothing-here HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let text = String::from_utf8_lossy(&read_all(&mut conn)).to_string();
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{text}");
    assert!(
        text.contains("http_requests_total"),
        "the third answer is the scrape"
    );
    assert_healthy(&s);
}

#[test]
fn paths_that_are_not_utf8_get_a_client_error() {
    let s = start(test_config(), Vec::new());
    for path in [
        &b"/api/jobs/%FF%FE"[..],
        &b"/api/jobs/\xff\xfe"[..],
        &b"/%C0%AF%C0%AF/health"[..],
        &b"/api/jobs/1/../../etc/passwd"[..],
    ] {
        let mut stream = connect(addr(&s));
        let mut head = b"GET ".to_vec();
        head.extend_from_slice(path);
        head.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(&head).unwrap();
        let status = status_of(&read_all(&mut stream));
        assert!(
            (400..500).contains(&status),
            "{}: status {status}",
            String::from_utf8_lossy(path)
        );
    }
    assert_healthy(&s);
}
