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

/// Minor page faults of this process so far (`/proc/self/stat`'s `minflt`): each
/// is a page the kernel had to map in, mostly fresh heap it had to zero; 0 where
/// /proc is absent.
pub fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name: state is field 3,
            // minflt field 10.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}
