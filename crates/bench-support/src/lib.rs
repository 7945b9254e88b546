//! What every benchmark (`make bench`, `make bench-e2e`) reports besides its own figures: the
//! machine it ran on, rates in one format, the process's CPU time and memory, and its `BENCH_*`
//! settings. Benchmarks only: never a dependency of a service, and nothing here is a pass/fail
//! check. Linux: CPU time and memory come from `/proc/self`; elsewhere they read as zero.
//! Every benchmark linking this runs on the allocator the `partner-ledger` binary runs on
//! (mimalloc), so what a bench measures is what production runs.

#![forbid(unsafe_code)]
#![allow(clippy::float_arithmetic, clippy::disallowed_types)] // rates are for people to read, never money

use std::time::Duration;

/// The `partner-ledger` binary's allocator (see its `main.rs` for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A `BENCH_*` setting, or `default` when it is unset or not a number.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A rate as "2.63M/s", "10.8k/s" or "659/s".
pub fn fmt_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// The CPU model and the cores this process may use, e.g. "AMD EPYC, 2 cores".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// User plus system CPU time of this process so far, every thread included.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// A `kB` field of `/proc/self/status`, e.g. `"VmHWM:"` (peak resident memory).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_millions_thousands_or_units() {
        assert_eq!(fmt_rate(2_634_000.0), "2.63M/s");
        assert_eq!(fmt_rate(10_840.0), "10.8k/s");
        assert_eq!(fmt_rate(659.4), "659/s");
    }

    #[test]
    fn an_unset_setting_reads_as_its_default() {
        assert_eq!(env_num("BENCH_SURELY_UNSET_FOR_THIS_TEST", 7), 7);
    }
}
