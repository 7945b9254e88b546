//! The conformance suite against the embedded file log, plus what only a file log can show:
//! durability across reopen, torn-tail recovery, refusal of mid-file corruption, the index
//! snapshot, and the directory lock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod conformance;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use conformance::{ev, Harness};
use pl_eventlog::{
    verify, EmbeddedLog, EmbeddedOptions, EventStore, ExpectedVersion, Limits, LogError,
    LogFinding, StreamAppend, LOG_INCIDENTS_STREAM, LOSS_EVENT_TYPE,
};

async fn embedded() -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    Some(Harness {
        store: Arc::new(log),
        guard: Box::new(dir),
    })
}

conformance_suite!(embedded());

fn open(dir: &Path) -> Result<Arc<EmbeddedLog>, LogError> {
    EmbeddedLog::open(dir, EmbeddedOptions::default()).map(Arc::new)
}

/// Opens with the file grown ahead of the appends in zeros.
fn open_growing(dir: &Path) -> Arc<EmbeddedLog> {
    let options = EmbeddedOptions {
        grow_ahead: true,
        ..EmbeddedOptions::default()
    };
    Arc::new(EmbeddedLog::open(dir, options).unwrap())
}

/// The operator's command: accepts what is wrong (bytes that are not a torn write go to
/// `quarantine/`), records it, and opens the log.
async fn accept_loss_and_open(dir: &Path) -> Arc<EmbeddedLog> {
    let accepted = EmbeddedLog::accept_loss(dir, EmbeddedOptions::default(), "disk replaced")
        .await
        .unwrap();
    assert!(!accepted.is_empty(), "there was a loss to accept");
    open(dir).unwrap()
}

/// The checkpoint as it is now: taken while the log is open, before an append that a test
/// then tears, it is what a crash during that append leaves beside the log.
fn checkpoint_now(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("CHECKPOINT")).unwrap()
}

/// Turns a closed log into the image a crash leaves: the checkpoint from before the appends
/// that were never acknowledged, and no index snapshot (it is written only at a clean close).
fn crash_image(dir: &Path, checkpoint: &[u8]) {
    std::fs::write(dir.join("CHECKPOINT"), checkpoint).unwrap();
    std::fs::remove_file(dir.join("index.snap")).unwrap();
}

async fn fill(log: &EmbeddedLog, streams: usize, per_stream: u64) {
    for s in 0..streams {
        for i in 0..per_stream {
            log.append(&format!("s-{s}"), ExpectedVersion::Any, vec![ev("E", i)])
                .await
                .unwrap();
        }
    }
}

async fn all_events(store: &dyn EventStore) -> Vec<pl_eventlog::RecordedEvent> {
    let mut out = Vec::new();
    loop {
        let page = store.read_all(out.len() as u64, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

#[tokio::test]
async fn events_survive_a_clean_reopen_with_positions_and_hashes_intact() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 3, 20).await;
    let before = all_events(log.as_ref()).await;
    log.close().unwrap();
    drop(log);
    assert!(dir.path().join("index.snap").exists());

    let log = open(dir.path()).unwrap();
    let after = all_events(log.as_ref()).await;
    assert_eq!(before, after);
    assert!(after
        .iter()
        .enumerate()
        .all(|(i, e)| e.position == i as u64));
    let r = log
        .append("s-0", ExpectedVersion::Exact(19), vec![ev("E", 99)])
        .await
        .unwrap();
    assert_eq!((r.last_version, r.first_position), (20, 60));
    assert!(verify(log.as_ref()).await.unwrap().is_intact());
}

#[tokio::test]
async fn a_reopen_without_the_snapshot_rebuilds_the_same_index_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 4, 10).await;
    let before = all_events(log.as_ref()).await;
    drop(log);
    std::fs::remove_file(dir.path().join("index.snap")).unwrap();
    let log = open(dir.path()).unwrap();
    assert_eq!(all_events(log.as_ref()).await, before);
    assert_eq!(log.stream_version("s-3").await.unwrap(), Some(9));
    // Idempotency survives the rebuild: the same event is recognised, not stored twice.
    let first = before[0].clone();
    let again = pl_eventlog::NewEvent {
        id: first.id,
        event_type: first.event_type,
        schema_version: first.schema_version,
        data: first.data,
        metadata: first.metadata,
    };
    let r = log
        .append("s-0", ExpectedVersion::NoStream, vec![again])
        .await
        .unwrap();
    assert_eq!(r.first_position, 0);
}

#[tokio::test]
async fn a_torn_tail_is_truncated_to_the_last_complete_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 1, 5).await;
    let before = checkpoint_now(dir.path());
    log.append(
        "s-1",
        ExpectedVersion::Any,
        vec![ev("Batch", 1), ev("Batch", 2), ev("Batch", 3)],
    )
    .await
    .unwrap();
    drop(log);
    crash_image(dir.path(), &before);
    let path = dir.path().join("events.log");
    let full = std::fs::metadata(&path).unwrap().len();

    // Cut inside the last frame of the three-event append: the whole append must go.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 10).unwrap();
    drop(f);
    let log = open(dir.path()).unwrap();
    let events = all_events(log.as_ref()).await;
    assert_eq!(events.len(), 5, "half an append must never be visible");
    assert_eq!(log.stream_version("s-1").await.unwrap(), None);
    assert!(verify(log.as_ref()).await.unwrap().is_intact());
    // The log keeps working after recovery.
    log.append("s-1", ExpectedVersion::NoStream, vec![ev("After", 1)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_multi_stream_append_torn_after_its_first_part_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 1, 3).await;
    let path = dir.path().join("events.log");
    let before = std::fs::metadata(&path).unwrap().len();
    let checkpoint = checkpoint_now(dir.path());
    log.append_streams(vec![
        StreamAppend {
            stream: "decisions".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![ev("Decided", 1), ev("Decided", 2)],
        },
        StreamAppend {
            stream: "outbox".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![ev("Published", 3)],
        },
    ])
    .await
    .unwrap();
    drop(log);
    crash_image(dir.path(), &checkpoint);
    let full = std::fs::metadata(&path).unwrap().len();
    // Cut where the second part begins: the first part's frames stay whole, and only the
    // frame that closes the append is missing.
    let first_part_end = frame_start(&path, before, 2);
    assert!(before < first_part_end && first_part_end < full);

    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(first_part_end).unwrap();
    drop(f);
    let log = open(dir.path()).unwrap();
    assert_eq!(
        all_events(log.as_ref()).await.len(),
        3,
        "neither part is visible"
    );
    assert_eq!(log.stream_version("decisions").await.unwrap(), None);
    assert!(verify(log.as_ref()).await.unwrap().is_intact());
    log.append("decisions", ExpectedVersion::NoStream, vec![ev("After", 1)])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_append_torn_at_a_frame_boundary_is_dropped_whole_not_taken_for_corruption() {
    // Before, whole frames of an unclosed append counted as valid data after the damage, so
    // such a crash made the log refuse to open until repaired.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 1, 2).await;
    let path = dir.path().join("events.log");
    let before = std::fs::metadata(&path).unwrap().len();
    let checkpoint = checkpoint_now(dir.path());
    log.append(
        "batch",
        ExpectedVersion::NoStream,
        vec![ev("B", 1), ev("B", 2), ev("B", 3)],
    )
    .await
    .unwrap();
    drop(log);
    crash_image(dir.path(), &checkpoint);
    let two_frames_in = frame_start(&path, before, 2);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(two_frames_in).unwrap();
    drop(f);
    let log = open(dir.path()).unwrap();
    assert_eq!(all_events(log.as_ref()).await.len(), 2);
    assert_eq!(log.stream_version("batch").await.unwrap(), None);
}

/// Offset of the frame `n` frames after the one at `from`. A frame is `payload_len:u32 (LE)
/// crc32:u32 payload` (the format `codec` documents for auditors).
fn frame_start(path: &Path, from: u64, n: usize) -> u64 {
    const FRAME_HEADER_BYTES: usize = 8;
    let bytes = std::fs::read(path).unwrap();
    let mut at = from as usize;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += FRAME_HEADER_BYTES + len;
    }
    at as u64
}

#[tokio::test]
async fn zeros_after_a_clean_close_are_dropped_but_garbage_is_refused_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 2, 5).await;
    drop(log);
    let path = dir.path().join("events.log");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let log = open(dir.path()).unwrap();
    assert_eq!(all_events(log.as_ref()).await.len(), 10);
    drop(log);

    // 16 MiB of garbage: within what one unsynced buffer could span, so only the checkpoint's
    // clean close and the garbage's shape tell it from a torn write.
    let events_end = std::fs::metadata(&path).unwrap().len();
    let mut garbage = vec![0u8; 16 * 1024 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for b in &mut garbage {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&garbage).unwrap();
    drop(f);
    let image = std::fs::read(&path).unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "trailing bytes: 16777216 bytes from byte offset {events_end}"
        )),
        "{err}"
    );
    assert!(std::fs::read(&path).unwrap() == image, "refused, not cut");
}

#[tokio::test]
async fn after_a_crash_bytes_that_cannot_start_the_next_frame_are_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 2, 5).await;
    let checkpoint = checkpoint_now(dir.path());
    drop(log);
    crash_image(dir.path(), &checkpoint);
    let path = dir.path().join("events.log");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"\x55\x01\x00\x00garbage-after-crash").unwrap();
    drop(f);
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains("not a torn write"), "{err}");
}

/// Writes 10 events with or without growing ahead and returns the file's length while open and
/// once closed; then reopens it the other way, adds 5, and checks that all 15 read back intact
/// (a log written either way opens either way).
async fn lengths_open_and_closed(grow_ahead: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    let reopen = |grow: bool| {
        if grow {
            open_growing(dir.path())
        } else {
            open(dir.path()).unwrap()
        }
    };
    let log = reopen(grow_ahead);
    fill(&log, 2, 5).await;
    let while_open = std::fs::metadata(&path).unwrap().len();
    drop(log);
    let closed = std::fs::metadata(&path).unwrap().len();

    let log = reopen(!grow_ahead);
    assert_eq!(all_events(log.as_ref()).await.len(), 10);
    fill(&log, 1, 5).await;
    drop(log);
    let log = reopen(grow_ahead);
    assert_eq!(all_events(log.as_ref()).await.len(), 15);
    assert!(verify(log.as_ref()).await.unwrap().is_intact());
    (while_open, closed)
}

#[tokio::test]
async fn by_default_the_file_holds_its_events_and_nothing_more_while_open() {
    let (while_open, closed) = lengths_open_and_closed(false).await;
    assert_eq!(while_open, closed);
}

#[tokio::test]
async fn grown_ahead_the_file_outruns_its_appends_and_a_close_trims_it_to_its_events() {
    let (while_open, closed) = lengths_open_and_closed(true).await;
    assert!(
        while_open > closed,
        "grown ahead: {while_open} bytes open, {closed} closed"
    );
}

#[tokio::test]
async fn a_crash_inside_space_grown_ahead_recovers_to_the_last_complete_append() {
    // A crash image: the files as they are while the log is open (grown ahead, no snapshot),
    // maybe with the first bytes of the next append, which the crash cut short.
    for torn_bytes in [0, 30] {
        let dir = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let path = image.path().join("events.log");
        let log = open_growing(dir.path());
        fill(&log, 2, 5).await;
        std::fs::copy(dir.path().join("events.log"), &path).unwrap();
        std::fs::copy(
            dir.path().join("CHECKPOINT"),
            image.path().join("CHECKPOINT"),
        )
        .unwrap();
        // The append the crash interrupts: its frame is what the image's tail starts with.
        log.append("s-9", ExpectedVersion::NoStream, vec![ev("Lost", 1)])
            .await
            .unwrap();
        drop(log);
        let full = std::fs::read(dir.path().join("events.log")).unwrap();
        let events_end = frame_start(&dir.path().join("events.log"), 0, 10);
        let grown = std::fs::metadata(&path).unwrap().len();
        assert!(grown > events_end, "the image holds space grown ahead");
        let torn = &full[events_end as usize..events_end as usize + torn_bytes];
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, torn, events_end).unwrap();
        drop(f);

        let log = open(image.path()).unwrap();
        assert_eq!(all_events(log.as_ref()).await.len(), 10);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), events_end);
        log.append("s-9", ExpectedVersion::NoStream, vec![ev("After", 1)])
            .await
            .unwrap();
        drop(log);
        let log = open(image.path()).unwrap();
        assert_eq!(all_events(log.as_ref()).await.len(), 11);
        assert!(verify(log.as_ref()).await.unwrap().is_intact());
    }
}

#[tokio::test]
async fn more_zeros_after_the_last_append_than_a_crash_can_leave_refuse_to_open() {
    // 40 MiB of zeros: more than one unsynced buffer and the space grown ahead of it, so
    // something that was written has been lost; accepting the loss keeps the good prefix.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 2, 5).await;
    drop(log);
    let path = dir.path().join("events.log");
    let events_end = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(events_end + 40 * 1024 * 1024).unwrap();
    drop(f);

    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Damaged { .. }), "{err:?}");
    let repaired = accept_loss_and_open(dir.path()).await;
    assert_eq!(
        all_events(repaired.as_ref()).await.len(),
        11,
        "and the loss"
    );
}

#[tokio::test]
async fn corruption_followed_by_valid_events_refuses_to_open_instead_of_serving_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 2, 20).await;
    drop(log);
    std::fs::remove_file(dir.path().join("index.snap")).unwrap();
    let path = dir.path().join("events.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Damaged { .. }), "{err:?}");

    // An operator can accept the loss: the damaged tail is quarantined, the good prefix
    // served, and the loss recorded as the last event.
    let repaired = accept_loss_and_open(dir.path()).await;
    let events = all_events(repaired.as_ref()).await;
    assert!(events.len() > 1 && events.len() < 41);
    assert_eq!(events.last().unwrap().event_type, "LogLossAccepted");
    assert!(verify(repaired.as_ref()).await.unwrap().is_intact());
    assert_eq!(
        std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .count(),
        1
    );
}

#[tokio::test]
async fn a_corrupted_frame_is_reported_on_read_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 1, 10).await;
    // Damage a committed frame behind the running log's back (bit rot on disk).
    let path = dir.path().join("events.log");
    let bytes = std::fs::read(&path).unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[40] ^ 0x01], 40).unwrap();
    let err = log.read_all(0, 10).await.unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { offset: 0, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_second_process_cannot_open_a_log_that_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path()).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err:?}");
}

#[tokio::test]
async fn appends_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    log.close().unwrap();
    let err = log
        .append("s", ExpectedVersion::Any, vec![ev("E", 1)])
        .await
        .unwrap_err();
    assert_eq!(err, LogError::Closed);
}

#[tokio::test]
async fn positions_are_dense_from_zero_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    closed_loop(&log, 32, 20).await;
    let events = all_events(log.as_ref()).await;
    assert_eq!(events.len(), 640);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.position == i as u64));
    assert!(verify(log.as_ref()).await.unwrap().is_intact());
}

/// Regression: frames sequenced while the sync thread was writing the previous group got
/// offsets that ignored the in-flight bytes, so reads (and the snapshot) pointed mid-frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sequenced_during_a_sync_are_readable_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                for i in 0..40 {
                    let batch = (0..1 + (i + w) % 3).map(|k| ev("E", i * 10 + k)).collect();
                    log.append(&format!("w-{w}"), ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let live = all_events(log.as_ref()).await;
    assert!(live.iter().enumerate().all(|(i, e)| e.position == i as u64));
    log.close().unwrap();
    drop(log);
    let log = open(dir.path()).unwrap();
    assert_eq!(all_events(log.as_ref()).await, live);
    for w in 0..64 {
        let s = log.read_stream(&format!("w-{w}"), 0, 4096).await.unwrap();
        assert!(s.iter().enumerate().all(|(v, e)| e.version == v as u64));
    }
}

/// Rewrites one byte of the event at `position` inside `events.log` and fixes up the frame's
/// CRC, as a careful forger would: only the hash chain can catch it.
fn forge(dir: &Path, position: u64, from: &[u8], to: &[u8]) {
    let path = dir.join("events.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut at = 0usize;
    for _ in 0..position {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let payload = &mut bytes[at + 8..at + 8 + len];
    let i = payload
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in frame");
    payload[i..i + to.len()].copy_from_slice(to);
    let crc = crc32fast::hash(payload);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn verify_reports_the_first_forged_event_with_stream_version_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 3, 4).await; // positions 0..12; stream s-1 holds positions 4..8
    drop(log);
    forge(
        dir.path(),
        6,
        br#""amount":"12.34""#,
        br#""amount":"92.34""#,
    );

    let log = open(dir.path()).unwrap();
    let report = verify(log.as_ref()).await.unwrap();
    let brk = report.first_break.expect("forgery detected");
    assert_eq!(
        (brk.stream.as_str(), brk.version, brk.position),
        ("s-1", 2, 6)
    );
    assert!(
        matches!(brk.kind, pl_eventlog::ChainBreakKind::HashMismatch { .. }),
        "{brk}"
    );
    assert_eq!(report.events_checked, 7);
    let stream_report = pl_eventlog::verify_stream(log.as_ref(), "s-0")
        .await
        .unwrap();
    assert!(stream_report.is_intact(), "other streams still verify");
}

/// Regression: a conflict was reported while the winning append was still waiting for its
/// sync, so the loser's immediate re-read showed the old version and every optimistic retry
/// lost again until the sync (a gRPC request then failed with ABORTED under load).
#[tokio::test]
async fn after_a_conflict_a_read_already_shows_the_append_that_won() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    log.append("s", ExpectedVersion::NoStream, vec![ev("E", 0)])
        .await
        .unwrap();
    for round in 1..50u64 {
        let expected = ExpectedVersion::Exact(round - 1);
        // Each writer, on losing, reads the stream's version at once.
        let race = |log: Arc<EmbeddedLog>, n: u64| async move {
            match log.append("s", expected, vec![ev("E", n)]).await {
                Ok(_) => None,
                Err(e) => {
                    assert!(e.is_conflict(), "{e}");
                    Some(log.stream_version("s").await.unwrap())
                }
            }
        };
        let (x, y) = tokio::join!(
            tokio::spawn(race(log.clone(), round * 2)),
            tokio::spawn(race(log.clone(), round * 2 + 1)),
        );
        let seen: Vec<Option<u64>> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
        assert_eq!(seen.len(), 1, "exactly one of two racing appends wins");
        assert_eq!(seen[0], Some(round), "the loser sees the winner at once");
    }
}

fn open_lingering(dir: &Path, sync_linger_us: u64) -> Result<Arc<EmbeddedLog>, LogError> {
    let options = EmbeddedOptions {
        sync_linger_us,
        ..EmbeddedOptions::default()
    };
    EmbeddedLog::open(dir, options).map(Arc::new)
}

#[tokio::test]
async fn a_sync_linger_above_its_bound_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_lingering(dir.path(), pl_eventlog::MAX_SYNC_LINGER_US + 1).unwrap_err();
    assert!(
        matches!(err, LogError::LimitExceeded { what, .. } if what.contains("sync_linger_us")),
        "{err:?}"
    );
    assert!(open_lingering(dir.path(), pl_eventlog::MAX_SYNC_LINGER_US).is_ok());
}

/// Sequential appends, one at a time: the wall time they take.
async fn one_at_a_time(log: &EmbeddedLog, appends: u64) -> std::time::Duration {
    #[allow(clippy::disallowed_methods)] // the test measures a wait, not a figure
    let started = std::time::Instant::now();
    for i in 0..appends {
        log.append("alone", ExpectedVersion::Any, vec![ev("E", i)])
            .await
            .unwrap();
    }
    started.elapsed()
}

#[tokio::test]
async fn a_lone_appender_never_waits_for_the_linger() {
    const APPENDS: u64 = 40;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = one_at_a_time(&open_lingering(plain_dir.path(), 0).unwrap(), APPENDS).await;
    let dir = tempfile::tempdir().unwrap();
    let max = pl_eventlog::MAX_SYNC_LINGER_US;
    let lingering = one_at_a_time(&open_lingering(dir.path(), max).unwrap(), APPENDS).await;
    // Lingering once per append would add 40 × 10 ms; allow half of that for a noisy disk.
    let slack = std::time::Duration::from_micros(max * APPENDS / 2);
    assert!(
        lingering < plain + slack,
        "one appender took {lingering:?} with the longest linger, {plain:?} without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_longest_linger_concurrent_appends_all_land_dense_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_lingering(dir.path(), pl_eventlog::MAX_SYNC_LINGER_US).unwrap();
    closed_loop(&log, 32, 10).await;
    let live = all_events(log.as_ref()).await;
    assert_eq!(live.len(), 320);
    assert!(live.iter().enumerate().all(|(i, e)| e.position == i as u64));
    log.close().unwrap();
    drop(log);
    let log = open(dir.path()).unwrap();
    assert_eq!(all_events(log.as_ref()).await, live);
}

/// `writers` tasks, each appending `appends` times one after the other: the wall time.
async fn closed_loop(log: &Arc<EmbeddedLog>, writers: u64, appends: u64) -> std::time::Duration {
    #[allow(clippy::disallowed_methods)] // the test measures a wait, not a figure
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = Arc::clone(log);
            tokio::spawn(async move {
                for i in 0..appends {
                    log.append(&format!("w-{w}"), ExpectedVersion::Any, vec![ev("E", i)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_each_wait_for_their_append_are_not_held_for_the_whole_linger() {
    const ROUNDS: u64 = 20;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = closed_loop(&open_lingering(plain_dir.path(), 0).unwrap(), 16, ROUNDS).await;
    let dir = tempfile::tempdir().unwrap();
    let max = pl_eventlog::MAX_SYNC_LINGER_US;
    let lingering = closed_loop(&open_lingering(dir.path(), max).unwrap(), 16, ROUNDS).await;
    // Once all 16 are back (the size of the last group), the sync goes: waiting out 10 ms a
    // round instead would add 200 ms. Allow half of that for a noisy disk.
    let slack = std::time::Duration::from_micros(max * ROUNDS / 2);
    assert!(
        lingering < plain + slack,
        "16 writers took {lingering:?} with the longest linger, {plain:?} without"
    );
}

/// `writers` tasks, each appending `appends` times one after the other and pausing 0 to 7 ms
/// (by its number) after each: arrivals spread over several milliseconds, as requests' are,
/// rather than all at once.
async fn staggered_closed_loop(log: &Arc<EmbeddedLog>, writers: u64, appends: u64) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = Arc::clone(log);
            let pause = std::time::Duration::from_millis(w % 8);
            tokio::spawn(async move {
                for i in 0..appends {
                    log.append(&format!("w-{w}"), ExpectedVersion::Any, vec![ev("E", i)])
                        .await
                        .unwrap();
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_linger_concurrent_writers_share_far_fewer_syncs_than_without() {
    const WRITERS: u64 = 32;
    const APPENDS: u64 = 20;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = open_lingering(plain_dir.path(), 0).unwrap();
    staggered_closed_loop(&plain, WRITERS, APPENDS).await;
    let plain = plain.sync_stats();
    let dir = tempfile::tempdir().unwrap();
    let log = open_lingering(dir.path(), pl_eventlog::MAX_SYNC_LINGER_US).unwrap();
    staggered_closed_loop(&log, WRITERS, APPENDS).await;
    let lingering = log.sync_stats();
    let appends = WRITERS * APPENDS;
    eprintln!("syncs for {appends} appends: {plain:?} without a linger, {lingering:?} with");
    assert_eq!(plain.lingering_syncs, 0, "no linger, no lingering");
    // The writers' pauses end within 8 ms, inside the 10 ms linger: one sync a round would
    // do. Measured on 2 cores, alone or beside other test runs: 20 to 60 syncs with the
    // linger, 84 to 247 without.
    assert!(
        lingering.syncs * 6 <= appends,
        "{} syncs for {appends} appends",
        lingering.syncs
    );
    assert!(
        lingering.syncs * 2 < plain.syncs,
        "{} syncs with the linger, {} without",
        lingering.syncs,
        plain.syncs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_than_eight_writers_at_a_time_never_wait_for_the_linger() {
    const APPENDS: u64 = 20;
    let max = pl_eventlog::MAX_SYNC_LINGER_US;
    for writers in [2, 7] {
        let plain_dir = tempfile::tempdir().unwrap();
        let plain_log = open_lingering(plain_dir.path(), 0).unwrap();
        let plain = closed_loop(&plain_log, writers, APPENDS).await;
        let dir = tempfile::tempdir().unwrap();
        let log = open_lingering(dir.path(), max).unwrap();
        let took = closed_loop(&log, writers, APPENDS).await;
        // No sync can carry more appends than there are writers, so none reaches the floor
        // of 8 that the linger follows.
        assert_eq!(log.sync_stats().lingering_syncs, 0, "{writers} writers");
        // A backstop, the count above decides: a linger waited out at every sync would add
        // 20 × 10 ms; allow that much for a loaded machine.
        let slack = std::time::Duration::from_micros(max * APPENDS);
        assert!(
            took < plain + slack,
            "{writers} writers took {took:?} with the longest linger, {plain:?} without"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_at_most_one_sync_waits_out_the_linger() {
    const LONE_APPENDS: u64 = 20;
    let max = pl_eventlog::MAX_SYNC_LINGER_US;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = open_lingering(plain_dir.path(), 0).unwrap();
    let plain = one_at_a_time(&plain, LONE_APPENDS).await;
    let dir = tempfile::tempdir().unwrap();
    let log = open_lingering(dir.path(), max).unwrap();
    closed_loop(&log, 32, 10).await;
    let burst = log.sync_stats();
    assert!(
        burst.lingering_syncs > 0,
        "the burst never lingered: {burst:?}"
    );
    // The first sync after the burst may still expect the burst's group: it waits out one
    // linger (10 ms) at most. Allow twenty for a slow disk.
    let first = one_at_a_time(&log, 1).await;
    assert!(
        first < std::time::Duration::from_micros(max * 20),
        "the first append after the burst took {first:?}"
    );
    let first_lingered = log.sync_stats().lingering_syncs - burst.lingering_syncs;
    assert!(first_lingered <= 1, "{first_lingered} syncs lingered");
    // It carried one append, below the floor of 8: the next lone appends never linger.
    let rest = one_at_a_time(&log, LONE_APPENDS).await;
    let after = log.sync_stats();
    assert_eq!(
        after.lingering_syncs - burst.lingering_syncs,
        first_lingered,
        "lone appends after the first lingered"
    );
    let slack = std::time::Duration::from_micros(max * LONE_APPENDS / 2);
    assert!(
        rest < plain + slack,
        "{LONE_APPENDS} lone appends took {rest:?} after a burst, {plain:?} on a fresh log"
    );
}

/// Cuts (or extends with zeros) the file to `len` bytes, as `truncate` would.
fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Every file of the data directory, by name, with its bytes.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_log_cut_short_anywhere_is_refused_at_open_naming_the_expected_and_found_events_and_hashes(
) {
    // 40 events, one per append; cut at a frame boundary 8 events from the end, at a frame
    // boundary in the middle, and inside the last event.
    for (place, kept_frames, into_next) in [
        ("the last 8 events", 32, 0),
        ("the middle", 20, 0),
        ("inside the last event", 39, 10),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path()).unwrap();
        fill(&log, 2, 20).await;
        let events = all_events(log.as_ref()).await;
        drop(log);
        let path = dir.path().join("events.log");
        let cut = frame_start(&path, 0, kept_frames) + into_next;
        set_len(&path, cut);
        let before = files_of(dir.path());

        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::Damaged { .. }), "{place}: {err:?}");
        let expected = format!(
            "log cut short: the checkpoint records 40 events ending in hash {}, the log holds \
             {kept} ending in hash {}",
            events[39].hash,
            events[kept_frames - 1].hash,
            kept = if into_next > 0 { 39 } else { kept_frames }
        );
        assert!(err.to_string().contains(&expected), "{place}: {err}");
        assert!(
            files_of(dir.path()) == before,
            "{place}: the refusal wrote nothing"
        );

        // A read-only look reports the same, and writes nothing either.
        let (reader, findings) =
            EmbeddedLog::open_read_only(dir.path(), Limits::default()).unwrap();
        assert!(
            findings.iter().any(|f| matches!(
                f,
                LogFinding::Truncated {
                    expected_events: 40,
                    ..
                }
            )),
            "{place}: {findings:?}"
        );
        if into_next > 0 {
            assert!(
                findings
                    .iter()
                    .any(|f| matches!(f, LogFinding::TrailingBytes { bytes: 10, .. })),
                "{place}: a partial frame after a clean close is no torn write: {findings:?}"
            );
        }
        drop(reader);
        assert!(
            files_of(dir.path()) == before,
            "{place}: read-only wrote nothing"
        );
    }
}

#[tokio::test]
async fn a_log_rewritten_under_its_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    for d in [dir.path(), other.path()] {
        let log = open(d).unwrap();
        fill(&log, 1, 5).await;
    }
    // Another log's events, as many, in place of these: same length, other history.
    let log = open(other.path()).unwrap();
    log.append("s-0", ExpectedVersion::Any, vec![ev("Other", 9)])
        .await
        .unwrap();
    drop(log);
    std::fs::copy(
        other.path().join("events.log"),
        dir.path().join("events.log"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("index.snap")).unwrap();
    let err = open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("log rewritten: the checkpoint records hash"),
        "{err}"
    );
}

#[tokio::test]
async fn accepting_a_loss_records_it_with_its_reason_and_the_log_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 1, 10).await;
    drop(log);
    let path = dir.path().join("events.log");
    let cut = frame_start(&path, 0, 6);
    set_len(&path, cut);
    assert!(open(dir.path()).is_err());

    let accepted = EmbeddedLog::accept_loss(
        dir.path(),
        EmbeddedOptions::default(),
        "INC-42: restored from the 02:00 backup",
    )
    .await
    .unwrap();
    assert!(matches!(
        accepted.as_slice(),
        [LogFinding::Truncated {
            expected_events: 10,
            found_events: 6,
            ..
        }]
    ));
    let log = open(dir.path()).unwrap();
    let incidents = log.read_stream(LOG_INCIDENTS_STREAM, 0, 10).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].event_type, LOSS_EVENT_TYPE);
    assert_eq!(
        incidents[0].position, 6,
        "recorded right after what is left"
    );
    let record: serde_json::Value = serde_json::from_slice(&incidents[0].data).unwrap();
    assert_eq!(record["reason"], "INC-42: restored from the 02:00 backup");
    assert_eq!(record["found_events"], 6);
    assert!(record["findings"][0]
        .as_str()
        .unwrap()
        .contains("records 10 events"));
    assert!(verify(log.as_ref()).await.unwrap().is_intact());
    drop(log);

    // Nothing left to accept: nothing is recorded twice.
    let again = EmbeddedLog::accept_loss(dir.path(), EmbeddedOptions::default(), "again")
        .await
        .unwrap();
    assert!(again.is_empty());
    assert!(
        EmbeddedLog::accept_loss(dir.path(), EmbeddedOptions::default(), " ")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_read_only_open_serves_a_torn_log_without_cutting_it_and_reports_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    fill(&log, 1, 5).await;
    let checkpoint = checkpoint_now(dir.path());
    log.append("s-0", ExpectedVersion::Any, vec![ev("Torn", 9)])
        .await
        .unwrap();
    drop(log);
    crash_image(dir.path(), &checkpoint);
    let path = dir.path().join("events.log");
    let len = std::fs::metadata(&path).unwrap().len();
    set_len(&path, len - 7);
    let before = files_of(dir.path());

    let (reader, findings) = EmbeddedLog::open_read_only(dir.path(), Limits::default()).unwrap();
    assert_eq!(all_events(&reader).await.len(), 5);
    let torn_at = frame_start(&path, 0, 5);
    assert!(
        matches!(findings.as_slice(), [LogFinding::TornTail { offset, .. }] if *offset == torn_at),
        "{findings:?}"
    );
    let refused = reader
        .append("s-0", ExpectedVersion::Any, vec![ev("New", 10)])
        .await;
    assert!(refused.is_err(), "a read-only log takes no appends");
    drop(reader);
    assert!(files_of(dir.path()) == before);

    // The writer's open cuts the torn tail, as a crash recovery.
    let log = open(dir.path()).unwrap();
    assert_eq!(all_events(log.as_ref()).await.len(), 5);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), torn_at);
}

/// Partner data and money sat in a directory every user of the machine could read. A log
/// created now is the service user's alone: the directory 0700, every file 0600.
#[tokio::test]
async fn a_new_log_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    let log = open(&dir).unwrap();
    log.append("s-1", ExpectedVersion::Any, vec![ev("A", 1)])
        .await
        .unwrap();
    log.close().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the directory");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

mod damaged_files {
    //! The recovery scan on files nobody wrote: a closed log cut, extended or flipped at
    //! random. Opening never panics, and a log that opens serves only events that verify.
    //! More cases: `PROPTEST_CASES=20000 cargo test -p pl-eventlog --test embedded damaged`.

    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// The files of a closed log of 12 events in 3 streams.
    fn base() -> &'static Vec<(String, Vec<u8>)> {
        static BASE: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
        BASE.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let log = open(dir.path()).unwrap();
                fill(&log, 3, 4).await;
            });
            files_of(dir.path())
        })
    }

    fn check(dir: &Path) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        if let Ok((log, _findings)) = EmbeddedLog::open_read_only(dir, Limits::default()) {
            rt.block_on(async {
                if let Ok(events) = log.read_all(0, 100).await {
                    assert!(events.len() <= 12);
                }
            });
        }
        match EmbeddedLog::open(dir, EmbeddedOptions::default()) {
            // A frame damaged under an intact index snapshot is found on read (its CRC),
            // never served.
            Ok(log) => rt.block_on(async {
                match log.read_all(0, 100).await {
                    Ok(events) => {
                        assert!(events.len() <= 12);
                        if let Ok(report) = verify(&log).await {
                            assert!(report.is_intact(), "{report:?}");
                        }
                    }
                    Err(e) => assert!(matches!(e, LogError::Corrupt { .. }), "{e:?}"),
                }
            }),
            Err(e) => assert!(
                matches!(e, LogError::Damaged { .. } | LogError::Corrupt { .. }),
                "{e:?}"
            ),
        }
    }

    proptest! {
        #[test]
        fn opening_a_log_damaged_at_random_never_panics_and_serves_only_what_verifies(
            file in 0usize..3,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let names = ["events.log", "CHECKPOINT", "index.snap"];
            for (name, bytes) in base() {
                let mut bytes = bytes.clone();
                if name == names[file] {
                    for (at, byte, how) in &edits {
                        let i = if bytes.is_empty() { 0 } else { at.index(bytes.len()) };
                        match how {
                            0 if !bytes.is_empty() => bytes[i] ^= byte | 1,
                            1 => bytes.truncate(i),
                            _ => bytes.extend(std::iter::repeat_n(*byte, i % 300 + 1)),
                        }
                    }
                }
                std::fs::write(dir.path().join(name), bytes).unwrap();
            }
            check(dir.path());
        }
    }
}
