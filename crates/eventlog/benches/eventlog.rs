//! `make bench`: durable appends (1 and 64 writers) against the embedded log and SQLite in the
//! same run (and the embedded log again with its file grown ahead in zeros), replay and verify
//! of a 1M-event log, and the disk's own fdatasync time as the yardstick for single-writer
//! latency. Prints one table; numbers are for issue notes, not tests.
//!
//! A stream per append (`BENCH_NEW_STREAMS`, default 600,000 one-event appends from 64 writers,
//! each into a stream of its own, as visitors' and conversions' streams come): the index grows
//! through several doublings under the log's lock, so the slowest append shows what one growth
//! stalls.
//!
//! Environment: `BENCH_SECONDS` per append workload (default 3), `BENCH_REPLAY_EVENTS` (default
//! 1,000,000), `BENCH_DIR` for the data (default a temporary directory under /var/tmp).

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::float_arithmetic
)] // timing code
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use pl_bench_support::{env_num, fmt_rate, machine};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pl_eventlog::{
    verify, EmbeddedLog, EmbeddedOptions, EventMetadata, EventStore, ExpectedVersion, NewEvent,
};
use uuid::Uuid;

/// A 300-byte JSON event body, like a commission accrual.
fn payload(n: u64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "partner_id": "7d3f5a52-1c4e-4a4b-9d61-3c2f1e0b9a77",
        "conversion_id": format!("conv-{n:012}"),
        "plan_id": "plan-affiliate-cpa", "plan_version": 3, "rule": "sale-us",
        "amount": "125.40", "currency": "USD", "base": "1254.00", "rate": "0.10",
        "pad": "",
    });
    let len = serde_json::to_vec(&v).unwrap().len();
    v["pad"] = serde_json::Value::String("x".repeat(300usize.saturating_sub(len)));
    v
}

fn new_event(n: u64) -> NewEvent {
    let md = EventMetadata::at(chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap());
    NewEvent::json(Uuid::new_v4(), "CommissionAccrued", 1, &payload(n), md).unwrap()
}

struct Row {
    workload: String,
    ours: String,
    peer: String,
    ratio: String,
}

#[derive(Clone, Copy)]
struct AppendStats {
    per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

impl AppendStats {
    fn from(count: u64, elapsed: Duration, hist: &Histogram<u64>) -> Self {
        Self {
            per_sec: count as f64 / elapsed.as_secs_f64(),
            p50_us: hist.value_at_quantile(0.50),
            p99_us: hist.value_at_quantile(0.99),
        }
    }
}

async fn embedded_appends(
    dir: &std::path::Path,
    writers: usize,
    run_for: Duration,
    grow_ahead: bool,
) -> AppendStats {
    let options = EmbeddedOptions {
        grow_ahead,
        ..EmbeddedOptions::default()
    };
    let log = Arc::new(EmbeddedLog::open(dir, options).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (log, stop, hist) = (log.clone(), stop.clone(), hist.clone());
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ev = new_event(n);
                    let t = Instant::now();
                    log.append(&format!("partner-{w}"), ExpectedVersion::Any, vec![ev])
                        .await
                        .unwrap();
                    local.record(t.elapsed().as_micros() as u64).unwrap();
                    n += 1;
                }
                hist.lock().unwrap().add(&local).unwrap();
                n
            })
        })
        .collect();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    log.close().unwrap();
    let hist = hist.lock().unwrap();
    AppendStats::from(total, elapsed, &hist)
}

fn sqlite_appends(path: &std::path::Path, writers: usize, run_for: Duration) -> AppendStats {
    {
        let c = rusqlite::Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
                id BLOB NOT NULL UNIQUE, type TEXT NOT NULL, data BLOB NOT NULL,
                UNIQUE(stream, version));",
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (stop, hist, path) = (stop.clone(), hist.clone(), path.to_path_buf());
            std::thread::spawn(move || {
                let mut c = rusqlite::Connection::open(&path).unwrap();
                c.pragma_update(None, "synchronous", "FULL").unwrap();
                c.busy_timeout(Duration::from_secs(30)).unwrap();
                let mut local = Histogram::<u64>::new(3).unwrap();
                let stream = format!("partner-{w}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ev = new_event(n);
                    let t = Instant::now();
                    // One transaction per append, with the same version check the log does.
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    let version: i64 = tx
                        .query_row(
                            "SELECT COALESCE(MAX(version) + 1, 0) FROM events WHERE stream = ?1",
                            [&stream],
                            |r| r.get(0),
                        )
                        .unwrap();
                    tx.execute(
                        "INSERT INTO events (stream, version, id, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![stream, version, ev.id.as_bytes(), ev.event_type, &ev.data[..]],
                    )
                    .unwrap();
                    tx.commit().unwrap();
                    local.record(t.elapsed().as_micros() as u64).unwrap();
                    n += 1;
                }
                hist.lock().unwrap().add(&local).unwrap();
                n
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let hist = hist.lock().unwrap();
    AppendStats::from(total, elapsed, &hist)
}

/// The disk's own cost: a 300-byte write plus fdatasync, in microseconds (p50).
fn fsync_p50_us(dir: &std::path::Path) -> u64 {
    let path = dir.join("fsync-probe");
    let f = std::fs::File::create(&path).unwrap();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let buf = [7u8; 300];
    for i in 0..2000u64 {
        f.write_all_at(&buf, i * 300).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        hist.record(t.elapsed().as_micros() as u64).unwrap();
    }
    std::fs::remove_file(path).unwrap();
    hist.value_at_quantile(0.5)
}

async fn fill(dir: &std::path::Path, events: u64) -> Duration {
    let log = Arc::new(EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap());
    let started = Instant::now();
    const BATCH: u64 = 100;
    const WRITERS: u64 = 8;
    let per_writer = events / WRITERS;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while n < per_writer {
                    let batch: Vec<_> = (n..(n + BATCH).min(per_writer)).map(new_event).collect();
                    n += batch.len() as u64;
                    let stream = format!("partner-{}", (w * 7919 + n) % 5000);
                    log.append(&stream, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    log.close().unwrap();
    took
}

/// `appends` one-event appends from `writers` tasks, each into a new stream; the latency of
/// each append and the time for all.
async fn new_streams(
    dir: &std::path::Path,
    appends: u64,
    writers: u64,
) -> (Duration, Histogram<u64>) {
    let log = Arc::new(EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).unwrap();
                for n in (w..appends).step_by(writers as usize) {
                    let t = Instant::now();
                    log.append(
                        &format!("visitor-{n}"),
                        ExpectedVersion::NoStream,
                        vec![new_event(n)],
                    )
                    .await
                    .unwrap();
                    hist.record(t.elapsed().as_micros() as u64).unwrap();
                }
                hist
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        hist.add(t.await.unwrap()).unwrap();
    }
    let took = started.elapsed();
    log.close().unwrap();
    (took, hist)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; there is nothing to filter.
    let run_for = Duration::from_secs(env_num("BENCH_SECONDS", 3));
    let replay_events = env_num("BENCH_REPLAY_EVENTS", 1_000_000);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let dir = tmp.path();
    println!(
        "event log benchmark on {} (data in {})",
        machine(),
        dir.display()
    );

    let fsync_us = fsync_p50_us(dir);
    let mut rows = Vec::new();
    for writers in [1usize, 64] {
        let ours =
            embedded_appends(&dir.join(format!("log-{writers}")), writers, run_for, false).await;
        let sqlite_path = dir.join(format!("sqlite-{writers}.db"));
        let peer =
            tokio::task::spawn_blocking(move || sqlite_appends(&sqlite_path, writers, run_for))
                .await
                .unwrap();
        rows.push(Row {
            workload: format!("durable appends/s, {writers} writer(s), 300 B, 1 event/append"),
            ours: fmt_rate(ours.per_sec),
            peer: fmt_rate(peer.per_sec),
            ratio: format!("{:.1}x", ours.per_sec / peer.per_sec),
        });
        rows.push(Row {
            workload: format!("append latency p50 / p99, {writers} writer(s)"),
            ours: format!("{} / {} us", ours.p50_us, ours.p99_us),
            peer: format!("{} / {} us", peer.p50_us, peer.p99_us),
            ratio: format!("{:.1}x", peer.p50_us as f64 / ours.p50_us.max(1) as f64),
        });
        // The option the services leave off (see `EmbeddedOptions::grow_ahead`), beside it.
        let grown = embedded_appends(
            &dir.join(format!("log-grown-{writers}")),
            writers,
            run_for,
            true,
        )
        .await;
        rows.push(Row {
            workload: "the same with the file grown ahead in zeros: appends/s, p50 / p99 (ratio: against the default)".into(),
            ours: format!(
                "{}, {} / {} us",
                fmt_rate(grown.per_sec),
                grown.p50_us,
                grown.p99_us
            ),
            peer: String::new(),
            ratio: format!("{:.2}x", grown.per_sec / ours.per_sec),
        });
        if writers == 1 {
            rows.push(Row {
                workload: "single-writer p50 vs the disk's fdatasync p50".into(),
                ours: format!("{} us", ours.p50_us),
                peer: format!("{fsync_us} us (raw fdatasync)"),
                ratio: format!("{:.2}x", ours.p50_us as f64 / fsync_us.max(1) as f64),
            });
        }
    }

    let streams = env_num("BENCH_NEW_STREAMS", 600_000);
    let (took, hist) = new_streams(&dir.join("new-streams"), streams, 64).await;
    rows.push(Row {
        workload: format!(
            "a new stream per append: {streams} appends, 64 writers; p50 / p99 / slowest"
        ),
        ours: format!(
            "{} ({} / {} / {} µs)",
            fmt_rate(streams as f64 / took.as_secs_f64()),
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.max()
        ),
        peer: String::new(),
        ratio: String::new(),
    });

    let replay_dir = dir.join("replay");
    let fill_took = fill(&replay_dir, replay_events).await;
    let t = Instant::now();
    let log = EmbeddedLog::open(&replay_dir, EmbeddedOptions::default()).unwrap();
    let reopen = t.elapsed();
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        let page = log.read_all(n, 4096).await.unwrap();
        if page.is_empty() {
            break;
        }
        n += page.len() as u64;
    }
    let replay = t.elapsed();
    assert_eq!(n, replay_events / 8 * 8);
    let t = Instant::now();
    let report = verify(&log).await.unwrap();
    let verify_took = t.elapsed();
    assert!(report.is_intact());
    log.close().unwrap();
    drop(log);
    std::fs::remove_file(replay_dir.join("index.snap")).unwrap();
    let t = Instant::now();
    let log = EmbeddedLog::open(&replay_dir, EmbeddedOptions::default()).unwrap();
    let rescan = t.elapsed();
    drop(log);
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64();
    rows.push(Row {
        workload: format!("replay read_all, {n} events"),
        ours: fmt_rate(per_sec(replay)),
        peer: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        workload: format!("verify hash chains, {n} events"),
        ours: fmt_rate(per_sec(verify_took)),
        peer: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        workload: format!("load {n} events (100/append, 8 writers)"),
        ours: fmt_rate(per_sec(fill_took)),
        peer: String::new(),
        ratio: String::new(),
    });
    rows.push(Row {
        workload: "reopen: with index snapshot / full rescan".into(),
        ours: format!("{} ms / {} ms", reopen.as_millis(), rescan.as_millis()),
        peer: String::new(),
        ratio: String::new(),
    });

    println!();
    println!("| workload | embedded log | SQLite (WAL, synchronous=FULL) | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.workload, r.ours, r.peer, r.ratio);
    }
}
