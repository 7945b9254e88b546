//! Crash test: a child process appends concurrently and reports every acknowledged append; we
//! kill it with SIGKILL at random moments, reopen the log, and check that every acknowledged
//! event is there, nothing torn is visible, positions are gap-free and every hash chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pl_eventlog::{verify, EmbeddedLog, EmbeddedOptions, EventStore};
use uuid::Uuid;

const KILLS: usize = 24;

/// Small deterministic generator; the seed is printed so a failure can be replayed.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    version: u64,
    position: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_survives_repeated_sigkill() {
    // Every other writer grows the file ahead in zeros, so each way's crash is recovered,
    // and reopened by a writer of the other way.
    let mode = |round: usize| {
        if round % 2 == 1 {
            "grow-ahead"
        } else {
            "default"
        }
    };
    kill_and_check(KILLS, 8, mode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sync_linger_on_every_acknowledged_append_survives_repeated_sigkill() {
    // 16 writers: enough that syncs carry the 8 appends or more that a linger follows.
    let lingering_syncs = kill_and_check(KILLS / 2, 16, |_| "linger").await;
    assert!(lingering_syncs > 0, "the writers never lingered");
}

/// Runs the crash writer `rounds` times with `writers` tasks, in the mode `mode(round)` names,
/// killing it at a random moment each time; after each kill, reopens the log and checks it
/// (see the module docs). Returns the most lingering syncs a writer reported.
async fn kill_and_check(rounds: usize, writers: u32, mode: impl Fn(usize) -> &'static str) -> u64 {
    #[allow(clippy::disallowed_methods)] // a seed for the test's own randomness
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<Uuid, Ack> = HashMap::new();
    let mut most_lingering_syncs = 0;

    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pl-eventlog-crash-writer"))
            .arg(dir.path())
            .arg(writers.to_string())
            .arg(mode(round))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledgements (sometimes before the first one, to
        // hit start-up and recovery too), or after a bounded wait if acks stall.
        let kill_after = rng.next() % 400;
        let mut lines = Vec::new();
        while (lines.len() as u64) < kill_after {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in &lines {
            // Only complete lines were delivered by `lines()`; a line cut by the kill is an
            // append whose acknowledgement never fully reached us, so it is not counted.
            let parts: Vec<&str> = line.split(' ').collect();
            if let ["stats", _, lingering] = parts[..] {
                most_lingering_syncs = most_lingering_syncs.max(lingering.parse().unwrap());
                continue;
            }
            let [_, id, stream, version, position] = parts[..] else {
                continue;
            };
            let ack = Ack {
                stream: stream.to_owned(),
                version: version.parse().unwrap(),
                position: position.parse().unwrap(),
            };
            acked.insert(id.parse().unwrap(), ack);
        }

        let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let mut all = Vec::new();
        loop {
            let page = log.read_all(all.len() as u64, 4096).await.unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page);
        }
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.position, i as u64, "round {round}: gap in positions");
        }
        let by_id: HashMap<Uuid, &pl_eventlog::RecordedEvent> =
            all.iter().map(|e| (e.id, e)).collect();
        for (id, ack) in &acked {
            let e = by_id
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged event {id} {ack:?} lost"));
            assert_eq!(
                (&e.stream, e.version, e.position),
                (&ack.stream, ack.version, ack.position),
                "round {round}: event {id} moved"
            );
        }
        // Atomic appends: every three-event append is whole or absent.
        let mut batches: HashMap<(String, String, u64), usize> = HashMap::new();
        for e in &all {
            let data = e.data_as::<serde_json::Value>().unwrap();
            let n = data["n"].as_u64().unwrap();
            if n.is_multiple_of(5) {
                let run = data["run"].as_str().unwrap().to_owned();
                *batches.entry((run, e.stream.clone(), n)).or_default() += 1;
            }
        }
        for (key, count) in &batches {
            assert_eq!(*count, 3, "round {round}: append {key:?} is torn");
        }
        let report = verify(&log).await.unwrap();
        assert!(report.is_intact(), "round {round}: {report:?}");
        eprintln!(
            "round {round}: killed after {} acks; log holds {} events",
            lines.iter().filter(|l| l.starts_with("ack ")).count(),
            all.len()
        );
        drop(log);
    }
    assert!(!acked.is_empty(), "the writer never acknowledged anything");
    most_lingering_syncs
}
