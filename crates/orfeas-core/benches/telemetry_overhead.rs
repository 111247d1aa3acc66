//! Telemetry overhead: CPU and RSS of an idle studio process with the sampler
//! and in-app history on vs off, and `/metrics` latency under `wrk`.
//! Run: `cargo bench -p orfeas-core --bench telemetry_overhead` (needs `wrk` for the latency part).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::process::Command;
use std::time::{Duration, Instant};

use orfeas_core::http::{HttpState, ServeConfig, serve};
use orfeas_core::telemetry::{Telemetry, TelemetryConfig};

const IDLE_SECS: u64 = 20;

fn proc_cpu_secs() -> f64 {
    // utime + stime (fields 14 and 15) in clock ticks; 100 Hz on Linux.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The child: a studio with /metrics served, idle for IDLE_SECS; prints cpu% and RSS.
fn child(sampling: bool) {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start(TelemetryConfig {
        sampling,
        history: sampling,
        data_dir: Some(dir.path().to_path_buf()),
        ..TelemetryConfig::default()
    })
    .unwrap();
    let _server = serve(
        ServeConfig {
            bind: "127.0.0.1:0".into(),
            workers: 4,
            ..ServeConfig::default()
        },
        HttpState::new(telemetry),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3)); // warm-up: first samples, NVML init
    let (cpu0, t0) = (proc_cpu_secs(), Instant::now());
    std::thread::sleep(Duration::from_secs(IDLE_SECS));
    let cpu_percent = (proc_cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    println!("{cpu_percent:.3} {:.0}", rss_kib());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args.get(i + 1).map(String::as_str) == Some("on"));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut results = Vec::new();
    for mode in ["off", "on"] {
        let out = Command::new(&exe).args(["--child", mode]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace();
        let cpu: f64 = it.next().unwrap().parse().unwrap();
        let rss: f64 = it.next().unwrap().parse().unwrap();
        println!(
            "idle {IDLE_SECS} s, sampler + history {mode:>3}: cpu {cpu:.3} % of one core, RSS {:.1} MiB",
            rss / 1024.0
        );
        results.push((cpu, rss));
    }
    println!(
        "overhead of sampler + history: cpu {:+.3} % of one core, RSS {:+.1} MiB",
        results[1].0 - results[0].0,
        (results[1].1 - results[0].1) / 1024.0
    );

    // /metrics latency under wrk -t1 -c4 -d10s, with the sampler on.
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Telemetry::start(TelemetryConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..TelemetryConfig::default()
    })
    .unwrap();
    let server = serve(
        ServeConfig {
            bind: "127.0.0.1:0".into(),
            workers: 4,
            ..ServeConfig::default()
        },
        HttpState::new(telemetry.clone()),
    )
    .unwrap();
    let bytes = telemetry.encode().len();
    let mut encode_ms: Vec<f64> = (0..500)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(telemetry.encode());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    encode_ms.sort_by(f64::total_cmp);
    println!(
        "encode /metrics in-process ({bytes} bytes): p50 {:.3} ms p99 {:.3} ms",
        encode_ms[250], encode_ms[495]
    );
    match Command::new("wrk")
        .args([
            "-t1",
            "-c4",
            "-d10s",
            "--latency",
            &format!("http://{}/metrics", server.addr()),
        ])
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let pick = |p: &str| {
                text.lines()
                    .find(|l| l.trim_start().starts_with(p))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("?")
                    .to_owned()
            };
            let rps = text
                .lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?");
            println!(
                "/metrics ({bytes} bytes) under wrk -t1 -c4 -d10s: p50 {} p99 {} ({rps} req/s)",
                pick("50%"),
                pick("99%")
            );
        }
        Err(err) => println!("wrk not found ({err}); install it with scripts/install-tools.sh"),
    }
}
