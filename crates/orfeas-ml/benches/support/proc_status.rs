//! What /proc says about this bench process (shared by the benches with
//! `#[path]`; not a bench itself).

/// Peak resident set size so far (`VmHWM`), in MiB; 0 where /proc is absent.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
