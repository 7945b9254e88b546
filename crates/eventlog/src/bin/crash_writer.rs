//! Test helper for the crash test (`tests/crash.rs`): appends to an embedded log from many
//! concurrent tasks and prints one line per acknowledged append, `ack <id> <stream> <version>
//! <position>` per event, flushed before the next append is acknowledged, and every 32 appends
//! `stats <syncs> <lingering syncs>` (`EmbeddedLog::sync_stats`), so the parent can tell that a
//! mode did what it names. The parent kills it with SIGKILL at random moments and checks that
//! every printed event survived.
//!
//! Usage: `pl-eventlog-crash-writer <data-dir> <writers> [default|grow-ahead|linger]`
//! (`grow-ahead`: the file grown ahead of the appends in zeros, `EmbeddedOptions::grow_ahead`;
//! `linger`: the longest sync linger, `EmbeddedOptions::sync_linger_us`). Stops by itself after
//! 60 s or when stdout closes, so an orphan never outlives its test.

use std::io::Write;
use std::time::{Duration, Instant};

use pl_eventlog::{
    EmbeddedLog, EmbeddedOptions, EventMetadata, EventStore, ExpectedVersion, NewEvent,
    MAX_SYNC_LINGER_US,
};
use tokio::sync::mpsc;
use uuid::Uuid;

const MAX_RUN: Duration = Duration::from_secs(60);
const USAGE: &str = "usage: pl-eventlog-crash-writer <dir> <writers> [default|grow-ahead|linger]";
/// Appends between two `stats` lines.
const STATS_EVERY_APPENDS: u64 = 32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or(USAGE)?;
    let writers: u32 = args.next().unwrap_or_else(|| "8".into()).parse()?;
    let options = match args.next().as_deref() {
        None | Some("default") => EmbeddedOptions::default(),
        Some("grow-ahead") => EmbeddedOptions {
            grow_ahead: true,
            ..EmbeddedOptions::default()
        },
        Some("linger") => EmbeddedOptions {
            sync_linger_us: MAX_SYNC_LINGER_US,
            ..EmbeddedOptions::default()
        },
        Some(other) => return Err(format!("unknown mode {other}; {USAGE}").into()),
    };
    let log = std::sync::Arc::new(EmbeddedLog::open(&dir, options)?);
    let (tx, mut rx) = mpsc::channel::<String>(1024);
    // Each run gets its own id space: a restarted writer must not reuse ids.
    #[allow(clippy::disallowed_methods)] // a test helper, not domain code
    let run = Uuid::new_v4();
    for w in 0..writers {
        let log = log.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n: u64 = 0;
            while started.elapsed() < MAX_RUN {
                n += 1;
                let stream = format!("crash-{w}");
                // Every fifth append carries three events, to exercise atomic multi-event appends.
                let count = if n.is_multiple_of(5) { 3 } else { 1 };
                let events: Vec<NewEvent> = (0..count)
                    .map(|i| {
                        let id = Uuid::new_v5(&run, format!("{w}-{n}-{i}").as_bytes());
                        let pad = "x".repeat(((n * 37 + u64::from(w)) % 1500) as usize);
                        let md = EventMetadata::at(chrono::DateTime::UNIX_EPOCH);
                        NewEvent::json(
                            id,
                            "CrashTest",
                            1,
                            &serde_json::json!({ "run": run, "n": n, "pad": pad }),
                            md,
                        )
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
                let r = log
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut line = String::new();
                for (i, id) in ids.iter().enumerate() {
                    let version = r.last_version + 1 + i as u64 - ids.len() as u64;
                    let position = r.first_position + i as u64;
                    line.push_str(&format!("ack {id} {stream} {version} {position}\n"));
                }
                if tx.send(line).await.is_err() {
                    break;
                }
            }
            Ok::<(), String>(())
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    let mut appends: u64 = 0;
    while let Some(mut line) = rx.recv().await {
        appends += 1;
        if appends.is_multiple_of(STATS_EVERY_APPENDS) {
            let stats = log.sync_stats();
            line.push_str(&format!(
                "stats {} {}\n",
                stats.syncs, stats.lingering_syncs
            ));
        }
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
