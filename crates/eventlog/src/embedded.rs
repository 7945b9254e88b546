//! The embedded adapter: a durable, append-only file log in a data directory.
//!
//! Layout of the directory: `events.log` (frames, see `codec`), `CHECKPOINT` (how far the log
//! has durably been, see `checkpoint`), `index.snap` (the in-memory index as of the last clean
//! close, so reopening does not rescan), and `LOCK` (held while open, so two processes never
//! write one log).
//!
//! Writes: appenders validate, sequence and encode under a short lock into a pending buffer; one
//! sync thread writes the buffer and `fdatasync`s it, so concurrent appends share one sync (group
//! commit). An append returns, and its events become visible to readers, only after that sync.
//! Under load the sync thread lingers a little before each sync, so that fewer, larger syncs
//! carry the same appends (`EmbeddedOptions::sync_linger_us`).
//! With `grow_ahead` (off by default), the file is grown ahead of the appends in zeros (up to
//! 1 MiB at a time), so that most syncs write data only; close trims it back to its last append.
//! A failed write or sync poisons the log: the page cache can no longer be trusted, so every later
//! append fails until the log is reopened (and recovery decides what is on disk).
//!
//! Recovery on open: frames are checked (length, CRC-32, position, version) from the end of the
//! snapshot on, up to the last non-zero byte (zeros after it are space grown ahead, dropped).
//! What follows the last complete append is a torn write only when it lies within the last
//! unsynced window (`MAX_UNSYNCED_BYTES`), starts like the frame the writer would have put
//! there, has nothing valid after it, and the checkpoint was not left clean: it is cut, and the
//! cut logged with its offset and size. Then the log is held to its checkpoint and snapshot: it
//! must hold at least the events they record, ending in the hash they record. Anything else
//! (a log cut short, rewritten, or followed by garbage) refuses the open, so no history is
//! served as whole that is not; only [`EmbeddedLog::accept_loss`], an operator's command,
//! opens it anyway and records the loss as an event. [`EmbeddedLog::open_read_only`] writes
//! nothing and reports the same findings.
//!
//! Limits: the index lives in memory, about 70 bytes per event plus the stream names (1M events
//! ≈ 70 MB); a single log file; reads verify each frame's CRC, `verify` checks the hash chains.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use crate::checkpoint;
use crate::codec::{self, FRAME_HEADER_BYTES};
use crate::error::LogError;
use crate::event::{
    AppendResult, EventHash, ExpectedVersion, NewEvent, RecordedEvent, StreamAppend,
};
use crate::finding::LogFinding;
use crate::index::{self, IdEntry, Index, Outcome, Part, StreamState};
use crate::limits::{Limits, MAX_UNSYNCED_BYTES};
use crate::sharded::ShardedMap;
use crate::store::EventStore;

const LOG_FILE: &str = "events.log";
const SNAPSHOT_FILE: &str = "index.snap";
const LOCK_FILE: &str = "LOCK";
const QUARANTINE_DIR: &str = "quarantine";
const SNAPSHOT_MAGIC: &[u8; 8] = b"PLIDX\0\0\x01";
/// One read never pulls more than this from disk (a page of `read_all` is cut short instead).
const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;
/// Reads larger than this leave the async runtime for a blocking thread.
const INLINE_READ_BYTES: u64 = 64 * 1024;
/// The recovery scan reads the file in chunks of this size.
const SCAN_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// With [`EmbeddedOptions::grow_ahead`], the log file is grown ahead of the appends, in zeros
/// written once, by an eighth of its size within these bounds: an append that stays inside the
/// file's length leaves `fdatasync` no inode or block map to write, only the data. The cap
/// bounds the one slower sync that writes the zeros; the floor keeps small logs (tests, fresh
/// installs) small. Close trims the file back to its events.
const MIN_PREALLOC_BYTES: u64 = 64 * 1024;
const MAX_PREALLOC_BYTES: u64 = 1024 * 1024;
/// The sync thread lingers ([`EmbeddedOptions::sync_linger_us`]) only after a sync that carried
/// at least this many appends: appenders are then arriving faster than syncs complete, and the
/// next group is worth waiting for. Fewer appenders at a time never wait for company. When load
/// drops, at most one sync waits out the linger: the first after the burst still expects the
/// burst's group, carries what came, and the syncs after it, carrying fewer, go at once.
const LINGER_MIN_GROUP_APPENDS: u64 = 8;
/// The most [`EmbeddedOptions::sync_linger_us`] may be: a linger adds to every append's
/// latency under load, so a configured one stays well below a request's deadline.
pub const MAX_SYNC_LINGER_US: u64 = 10_000;
/// What the services run with (`--log-sync-linger-us`): off, see
/// [`EmbeddedOptions::sync_linger_us`] for why.
pub const DEFAULT_SYNC_LINGER_US: u64 = 0;
/// The zeros the file grows by: static, so never allocated or faulted in per growth (the
/// kernel maps untouched zero pages to its shared zero page when `pwrite` reads them).
static PREALLOC_ZEROS: [u8; MAX_PREALLOC_BYTES as usize] = [0; MAX_PREALLOC_BYTES as usize];

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub limits: Limits,
    /// Grow the file ahead of the appends in zeros, so that most syncs write no inode. Faster
    /// for small events on an otherwise idle machine (the `pl-eventlog` bench's 300-byte
    /// appends: about a fifth more per second and a fifth less latency), slower for the
    /// services (each byte goes to disk twice, and the sync after a growth writes a megabyte of
    /// zeros: on the machine of 2026-12-04, accruals and attributions a sixth to a fifth
    /// faster without it). Off by default; recovery reads logs written either way.
    pub grow_ahead: bool,
    /// Under load (the last sync carried 8 appends or more, `LINGER_MIN_GROUP_APPENDS`), the
    /// sync thread waits before each sync until as many appends as the last sync carried are
    /// pending, or this long, whichever comes first (or until an append finds the pending
    /// buffer full), so one `fdatasync` covers more of them. Fewer than 8 appenders at a time
    /// never wait; once load drops, one sync at most waits it out.
    /// On a virtual disk a sync costs the CPU as much as dozens of appends (the VM exits on
    /// each request): on the machine of 2026-12-05 (Intel Xeon, 2 cores) 300 µs raised the
    /// service benches' accruals per second by about a quarter and conversions attributed by
    /// about a tenth, and cut the latter's p99 by a third; but the whole system in one
    /// process (`make bench-e2e`), where a conversion waits on several appends in a row,
    /// lost a fifth of its conversions per second (README, "The embedded adapter"). Hence
    /// off by default ([`DEFAULT_SYNC_LINGER_US`]); at most [`MAX_SYNC_LINGER_US`]. A fixed
    /// wait without the group target cost accruals a twentieth: a caller that waits for its
    /// append before the next pays every microsecond of it.
    pub sync_linger_us: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            grow_ahead: false,
            sync_linger_us: DEFAULT_SYNC_LINGER_US,
        }
    }
}

/// What the sync thread has done since the log was opened ([`EmbeddedLog::sync_stats`]): for
/// tests and diagnostics. Each count costs the sync thread one relaxed atomic increment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Groups of appends written and `fdatasync`ed.
    pub syncs: u64,
    /// Syncs before which the sync thread lingered ([`EmbeddedOptions::sync_linger_us`]),
    /// however briefly: the group it waited for may have been pending already.
    pub lingering_syncs: u64,
}

/// The durable file-backed event log. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    sync_thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    file: File,
    state: Mutex<State>,
    wake_sync: Condvar,
    /// Committed count plus failure flags, for appenders waiting on their sync.
    commit: watch::Sender<CommitState>,
    /// Committed count only, for subscribers (the port's `watch_head`).
    head: watch::Sender<u64>,
    limits: Limits,
    /// [`EmbeddedOptions::grow_ahead`].
    grow_ahead: bool,
    /// [`EmbeddedOptions::sync_linger_us`].
    sync_linger: Duration,
    /// Appends wait (`Enqueued::Full`) rather than leave more than this unsynced:
    /// [`MAX_UNSYNCED_BYTES`], which recovery relies on, or less in tests.
    max_unsynced_bytes: usize,
    /// [`SyncStats`].
    syncs: AtomicU64,
    lingering_syncs: AtomicU64,
    /// Written by the sync thread after each group commit and by close; `None` read-only.
    checkpoint: Mutex<Option<checkpoint::Writer>>,
    /// Held while open: exclusive for a writer, shared for a reader (absent in a read-only
    /// copy of a data directory that has no lock file).
    _lock: Option<File>,
}

/// The write path's bounds: what [`EmbeddedLog::open`] derives from its options, and what
/// tests set beyond them (a linger longer than any configuration may ask for, a small
/// pending buffer).
#[derive(Debug, Clone, Copy)]
struct Tuning {
    sync_linger: Duration,
    max_unsynced_bytes: usize,
}

impl Tuning {
    fn of(options: &EmbeddedOptions) -> Result<Self, LogError> {
        if options.sync_linger_us > MAX_SYNC_LINGER_US {
            return Err(LogError::LimitExceeded {
                what: "configured sync_linger_us",
                actual: options.sync_linger_us,
                limit: MAX_SYNC_LINGER_US,
            });
        }
        Ok(Self {
            sync_linger: Duration::from_micros(options.sync_linger_us),
            max_unsynced_bytes: MAX_UNSYNCED_BYTES,
        })
    }
}

/// What an open may do with what it finds (see [`EmbeddedLog::open`],
/// [`EmbeddedLog::open_read_only`], [`EmbeddedLog::accept_loss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Write,
    ReadOnly,
    AcceptLoss,
}

/// The stream where the log records what happened to the log itself (an accepted loss).
pub const LOG_INCIDENTS_STREAM: &str = "log-incidents";
/// The event type of an accepted loss in [`LOG_INCIDENTS_STREAM`] (schema version 1, JSON:
/// `reason`, `findings`, `found_events`, `found_hash`).
pub const LOSS_EVENT_TYPE: &str = "LogLossAccepted";
/// An accepted loss's reason is a sentence or a ticket, not a document.
const MAX_LOSS_REASON_BYTES: usize = 2_000;

#[derive(serde::Serialize)]
struct LossRecord<'a> {
    reason: &'a str,
    findings: Vec<String>,
    found_events: u64,
    found_hash: String,
}
enum Enqueued {
    /// Sequenced into the pending buffer (each part's result): wait on the receiver for the
    /// sync covering it.
    Sequenced(Vec<AppendResult>, watch::Receiver<CommitState>),
    /// The pending buffer is full: wait for the next sync, then try again.
    Full(watch::Receiver<CommitState>),
    /// The expected version did not hold: report it once every position assigned so far (the
    /// winning append among them) is committed, so the caller's next read sees what it lost
    /// to. Reads show committed events only; answering at once would send an optimistic
    /// retry back to the same stale state for a whole sync.
    Conflict(LogError, watch::Receiver<CommitState>, u64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CommitState {
    committed: u64,
    failed: bool,
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    /// Byte offset of every assigned frame, committed or pending, by position.
    offsets: Vec<u64>,
    /// Frames assigned but not yet handed to the sync thread; they end at `assigned_end`.
    pending: Vec<u8>,
    /// Byte offset just past the last assigned frame. Between `committed_offset` and the start
    /// of `pending` lies the buffer the sync thread is writing right now.
    assigned_end: u64,
    spare: Vec<u8>,
    /// Appends sequenced into `pending` since the sync thread last took it.
    pending_appends: u64,
    /// An append found `pending` full since the sync thread last took it: a lingering sync
    /// thread stops waiting for more (there is no room for them).
    pending_full: bool,
    /// Appends the last sync carried: whether appenders are queueing (see the linger). Only
    /// the sync thread writes it; it lives here so that a test can set it.
    last_group_appends: u64,
    /// While the sync thread lingers: the count of `pending_appends` that ends the linger
    /// early (the size of the last group); 0 otherwise.
    linger_target: u64,
    /// Positions below this are durable and visible to readers.
    committed: u64,
    committed_offset: u64,
    poisoned: Option<String>,
    closing: bool,
}

impl State {
    fn assigned_end_offset(&self) -> u64 {
        self.assigned_end
    }

    /// End offset of the frame at `position` (which must be assigned).
    fn frame_end(&self, position: u64) -> u64 {
        self.offsets
            .get(position as usize + 1)
            .copied()
            .unwrap_or_else(|| self.assigned_end_offset())
    }
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `dir`, recovering from any crash: a torn tail
    /// past the last durable commit is cut (and logged with its offset and size). A log cut
    /// short of its checkpoint, rewritten, or followed by bytes no crash leaves is refused
    /// with [`LogError::Damaged`]; [`EmbeddedLog::accept_loss`] opens it anyway.
    pub fn open(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, LogError> {
        let tuning = Tuning::of(&options)?;
        Self::open_tuned(dir.as_ref(), options, tuning)
    }

    fn open_tuned(dir: &Path, options: EmbeddedOptions, tuning: Tuning) -> Result<Self, LogError> {
        Self::open_as(dir, options, tuning, Mode::Write).map(|(log, _)| log)
    }

    /// Opens the log for reading only: no file is created, written, cut or locked for
    /// writing (a read-only copy of a data directory will do), and what is wrong is returned
    /// as findings instead of refused or repaired. Reads serve the complete appends found;
    /// appends fail with [`LogError::Closed`]. For `audit verify` and the other audit reads.
    pub fn open_read_only(
        dir: impl AsRef<Path>,
        limits: Limits,
    ) -> Result<(Self, Vec<LogFinding>), LogError> {
        let options = EmbeddedOptions {
            limits,
            ..EmbeddedOptions::default()
        };
        let tuning = Tuning::of(&options)?;
        Self::open_as(dir.as_ref(), options, tuning, Mode::ReadOnly)
    }

    /// The operator's way past [`LogError::Damaged`]: opens the log as it is found, moves
    /// bytes that are not a torn write to `quarantine/`, cuts them, starts a new checkpoint
    /// at what is left, and records the accepted loss, with `reason`, as a `LogLossAccepted`
    /// event in the stream [`LOG_INCIDENTS_STREAM`]. Returns what was accepted; empty when
    /// the log needed no acceptance (then nothing is recorded).
    pub async fn accept_loss(
        dir: impl AsRef<Path>,
        options: EmbeddedOptions,
        reason: &str,
    ) -> Result<Vec<LogFinding>, LogError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > MAX_LOSS_REASON_BYTES {
            return Err(LogError::LimitExceeded {
                what: "accepted loss reason bytes (must be 1 or more)",
                actual: reason.len() as u64,
                limit: MAX_LOSS_REASON_BYTES as u64,
            });
        }
        let tuning = Tuning::of(&options)?;
        let (log, findings) = Self::open_as(dir.as_ref(), options, tuning, Mode::AcceptLoss)?;
        let accepted: Vec<LogFinding> = findings
            .into_iter()
            .filter(|f| !f.repaired_at_open())
            .collect();
        if !accepted.is_empty() {
            let (events, hash) = {
                let st = log.shared.state.lock();
                (st.committed, last_hash(&log.shared.file, &st)?)
            };
            let record = LossRecord {
                reason,
                findings: accepted.iter().map(ToString::to_string).collect(),
                found_events: events,
                found_hash: hash.to_hex(),
            };
            let id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("partner-ledger/log-loss/{events}/{hash}/{reason}").as_bytes(),
            );
            let at = chrono::DateTime::from_timestamp_nanos(Shared::now_ns());
            let event = NewEvent::json(
                id,
                LOSS_EVENT_TYPE,
                1,
                &record,
                crate::event::EventMetadata::at(at),
            )?;
            log.append(LOG_INCIDENTS_STREAM, ExpectedVersion::Any, vec![event])
                .await?;
            tracing::warn!(
                events,
                hash = %hash,
                reason,
                findings = accepted.len(),
                "operator accepted a loss in the event log"
            );
        }
        let closing = tokio::task::spawn_blocking(move || log.close());
        closing
            .await
            .map_err(|e| LogError::Io(format!("close task failed: {e}")))??;
        Ok(accepted)
    }

    fn open_as(
        dir: &Path,
        options: EmbeddedOptions,
        tuning: Tuning,
        mode: Mode,
    ) -> Result<(Self, Vec<LogFinding>), LogError> {
        let limits = options.limits;
        if limits.max_append_bytes > MAX_UNSYNCED_BYTES
            || limits.max_event_bytes > limits.max_append_bytes
        {
            return Err(LogError::LimitExceeded {
                what: "configured max_append_bytes (must hold one event and stay within the unsynced window)",
                actual: limits.max_append_bytes as u64,
                limit: MAX_UNSYNCED_BYTES as u64,
            });
        }
        let dir = dir.to_path_buf();
        let (lock, file, created) = match mode {
            Mode::ReadOnly => open_files_read_only(&dir)?,
            Mode::Write | Mode::AcceptLoss => open_files(&dir)?,
        };
        let found_checkpoint = checkpoint::read(&dir)?;
        if mode == Mode::AcceptLoss {
            // The snapshot may describe the events being given up: the log is rescanned.
            match std::fs::remove_file(dir.join(SNAPSHOT_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        let (snapshot, claim) = load_snapshot(&dir, &file);
        let mut state = snapshot.unwrap_or_default();
        let tail = recover(&file, &mut state, &limits)?;
        let findings = assess(&file, &state, found_checkpoint, claim, &tail)?;
        match mode {
            Mode::ReadOnly => {
                // Nothing is ever written: appends fail as on a closed log.
                state.closing = true;
            }
            Mode::Write => {
                let refused: Vec<String> = findings
                    .iter()
                    .filter(|f| !f.repaired_at_open())
                    .map(ToString::to_string)
                    .collect();
                if !refused.is_empty() {
                    return Err(LogError::Damaged {
                        findings: refused.join("; "),
                    });
                }
                cut_tail(&dir, &file, &findings, false)?;
            }
            Mode::AcceptLoss => cut_tail(&dir, &file, &findings, true)?,
        }
        let checkpoint = match mode {
            Mode::ReadOnly => None,
            Mode::Write | Mode::AcceptLoss => {
                let after = match found_checkpoint {
                    checkpoint::Found::Mark { sequence, .. } => sequence,
                    _ => 0,
                };
                let mut writer = checkpoint::Writer::open(&dir, after)?;
                // Open, not clean: a crash from here on must not pass for a clean close.
                writer.write_durably(&mark_of(&file, &state, false)?)?;
                Some(writer)
            }
        };
        if created {
            sync_dir(&dir)?;
        }
        let committed = state.committed;
        tracing::info!(
            dir = %dir.display(),
            events = committed,
            streams = state.index.streams.len(),
            bytes = state.committed_offset,
            read_only = mode == Mode::ReadOnly,
            "event log opened"
        );
        let shared = Arc::new(Shared {
            dir,
            file,
            state: Mutex::new(state),
            wake_sync: Condvar::new(),
            commit: watch::Sender::new(CommitState {
                committed,
                failed: false,
            }),
            head: watch::Sender::new(committed),
            limits,
            grow_ahead: options.grow_ahead,
            sync_linger: tuning.sync_linger,
            max_unsynced_bytes: tuning.max_unsynced_bytes,
            syncs: AtomicU64::new(0),
            lingering_syncs: AtomicU64::new(0),
            checkpoint: Mutex::new(checkpoint),
            _lock: lock,
        });
        let sync_thread = if mode == Mode::ReadOnly {
            None
        } else {
            let worker = Arc::clone(&shared);
            Some(
                std::thread::Builder::new()
                    .name("eventlog-sync".into())
                    .spawn(move || worker.sync_loop())?,
            )
        };
        Ok((
            Self {
                shared,
                sync_thread: Mutex::new(sync_thread),
            },
            findings,
        ))
    }

    /// Flushes pending appends, stops the sync thread, writes the index snapshot (so the next
    /// open is fast) and marks the checkpoint clean. Appends after this fail with
    /// [`LogError::Closed`]. Idempotent; a read-only log writes nothing.
    pub fn close(&self) -> Result<(), LogError> {
        let Some(handle) = self.sync_thread.lock().take() else {
            return Ok(());
        };
        self.shared.state.lock().closing = true;
        self.shared.wake_sync.notify_one();
        if handle.join().is_err() {
            return Err(LogError::Io("sync thread panicked".into()));
        }
        let state = self.shared.state.lock();
        if state.poisoned.is_some() {
            // What is on disk is decided by recovery on the next open, not by our memory.
            return Ok(());
        }
        // Trim the zeroed space grown ahead of the appends: a closed log is exactly its events.
        let file = &self.shared.file;
        if file.metadata()?.len() > state.committed_offset {
            file.set_len(state.committed_offset)?;
            file.sync_all()?;
        }
        write_snapshot(&self.shared.dir, file, &state)?;
        let mark = mark_of(file, &state, true)?;
        if let Some(checkpoint) = self.shared.checkpoint.lock().as_mut() {
            checkpoint.write_durably(&mark)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What the sync thread has done since open (see [`SyncStats`]).
    pub fn sync_stats(&self) -> SyncStats {
        SyncStats {
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            lingering_syncs: self.shared.lingering_syncs.load(Ordering::Relaxed),
        }
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "event log close failed");
        }
    }
}

impl Shared {
    #[allow(clippy::disallowed_methods)] // the store stamps recorded_at; domain code never does
    fn now_ns() -> i64 {
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
    }

    fn failure(&self) -> LogError {
        let st = self.state.lock();
        match &st.poisoned {
            Some(reason) => LogError::Poisoned {
                reason: reason.clone(),
            },
            None => LogError::Closed,
        }
    }

    /// Sequences the append (one part per stream, all or none) into the pending buffer and
    /// returns what to wait for. Validation happens before the lock; nothing is buffered when
    /// it fails.
    fn enqueue(&self, parts: &[Part<'_>]) -> Result<Enqueued, LogError> {
        let bytes: usize = parts.iter().map(|p| p.v.bytes).sum();
        let rx = self.commit.subscribe();
        let mut st = self.state.lock();
        if let Some(reason) = &st.poisoned {
            return Err(LogError::Poisoned {
                reason: reason.clone(),
            });
        }
        if st.closing {
            return Err(LogError::Closed);
        }
        // Bound the bytes written but not yet synced (recovery relies on the bound).
        if !st.pending.is_empty() && st.pending.len() + bytes > self.max_unsynced_bytes {
            // A full buffer is as large a group as a sync may carry: a lingering sync thread
            // goes now instead of holding this append for the rest of the linger. The flag
            // also stops a linger that has not begun yet.
            st.pending_full = true;
            let lingering = st.linger_target != 0;
            drop(st);
            if lingering {
                self.wake_sync.notify_one();
            }
            return Ok(Enqueued::Full(rx));
        }
        let base_offset = st.assigned_end;
        let State {
            index,
            offsets,
            pending,
            assigned_end,
            ..
        } = &mut *st;
        let pending_start = pending.len();
        let appended = index.append_parts(parts, Self::now_ns(), |_, flags, c| {
            offsets.push(base_offset + (pending.len() - pending_start) as u64);
            codec::encode_frame(pending, offsets.len() as u64 - 1, flags, c)
        });
        let outcomes = match appended {
            Ok(outcomes) => outcomes,
            Err(e) if e.is_conflict() => {
                let assigned = offsets.len() as u64;
                return Ok(Enqueued::Conflict(e, rx, assigned));
            }
            Err(e) => return Err(e),
        };
        *assigned_end = base_offset + (pending.len() - pending_start) as u64;
        if outcomes.iter().any(|o| matches!(o, Outcome::Appended(_))) {
            st.pending_appends += 1;
            // Only the first append of a group wakes the sync thread (it takes everything
            // pending when it wakes, and checks again after each sync before it waits), or
            // the one that completes the group a lingering sync thread waits for.
            let wake = pending_start == 0 || st.pending_appends == st.linger_target;
            drop(st);
            if wake {
                self.wake_sync.notify_one();
            }
        }
        let results = outcomes
            .into_iter()
            .map(|o| match o {
                // A duplicate's original may still be pending: the caller waits for it too.
                Outcome::Duplicate(r) | Outcome::Appended(r) => r,
            })
            .collect();
        Ok(Enqueued::Sequenced(results, rx))
    }

    /// Sequences the parts and waits until the sync that covers them (or their originals, for
    /// an identical retry) has committed.
    async fn append_parts(&self, parts: &[Part<'_>]) -> Result<Vec<AppendResult>, LogError> {
        let (results, mut rx) = loop {
            match self.enqueue(parts)? {
                Enqueued::Sequenced(results, rx) => break (results, rx),
                Enqueued::Full(mut rx) => {
                    // Wait for the sync thread to drain the pending buffer, then try again.
                    rx.changed().await.map_err(|_| LogError::Closed)?;
                }
                Enqueued::Conflict(conflict, mut rx, assigned) => {
                    rx.wait_for(|c| c.committed >= assigned || c.failed)
                        .await
                        .map_err(|_| LogError::Closed)?;
                    return Err(conflict);
                }
            }
        };
        let last = results.iter().map(|r| r.last_position).max().unwrap_or(0);
        let state = rx
            .wait_for(|c| c.committed > last || c.failed)
            .await
            .map_err(|_| LogError::Closed)?;
        if state.committed > last {
            Ok(results)
        } else {
            Err(self.failure())
        }
    }

    /// The group-commit loop: write whatever is pending, sync once, publish.
    fn sync_loop(&self) {
        // Where the file's zeroed space ends; only this thread grows the file.
        // Recovery left the file ending at its last append.
        let mut allocated_end = self.state.lock().committed_offset;
        let mut checkpoint_synced = std::time::Instant::now();
        let mut checkpoint_written = std::time::Instant::now();
        let write_interval = Duration::from_millis(checkpoint::WRITE_INTERVAL_MS);
        // The last commit's mark, when the checkpoint does not record it yet.
        let mut owed: Option<checkpoint::Mark> = None;
        loop {
            let (mut buf, end_position, write_offset) = {
                let mut st = self.state.lock();
                while st.pending.is_empty() && !st.closing {
                    let Some(mark) = owed else {
                        self.wake_sync.wait(&mut st);
                        continue;
                    };
                    // Idle with a checkpoint owed: write it when its interval is up, unless
                    // appends come first (then it goes after their sync).
                    let due = checkpoint_written + write_interval;
                    if !self.wake_sync.wait_until(&mut st, due).timed_out() {
                        continue;
                    }
                    let written = parking_lot::MutexGuard::unlocked(&mut st, || {
                        self.advance_checkpoint(&mark, &mut checkpoint_synced)
                    });
                    if let Err(e) = written {
                        tracing::error!(error = %e, "event log checkpoint write failed; log poisoned");
                        st.poisoned = Some(e.to_string());
                        drop(st);
                        self.commit.send_modify(|c| c.failed = true);
                        return;
                    }
                    checkpoint_written = std::time::Instant::now();
                    owed = None;
                }
                if st.pending.is_empty() {
                    return;
                }
                if !self.sync_linger.is_zero() && st.last_group_appends >= LINGER_MIN_GROUP_APPENDS
                {
                    // Appenders keep coming: let as many join this sync as joined the last one,
                    // or as many as arrive within the linger. Only close, the append that
                    // completes the group and one that finds the buffer full wake this wait.
                    self.lingering_syncs.fetch_add(1, Ordering::Relaxed);
                    let deadline = std::time::Instant::now() + self.sync_linger;
                    st.linger_target = st.last_group_appends;
                    while !st.closing && !st.pending_full && st.pending_appends < st.linger_target {
                        if self.wake_sync.wait_until(&mut st, deadline).timed_out() {
                            break;
                        }
                    }
                    st.linger_target = 0;
                }
                st.last_group_appends = std::mem::take(&mut st.pending_appends);
                st.pending_full = false;
                let spare = std::mem::take(&mut st.spare);
                let buf = std::mem::replace(&mut st.pending, spare);
                let write_offset = st.assigned_end - buf.len() as u64;
                debug_assert_eq!(write_offset, st.committed_offset);
                (buf, st.index.next_position, write_offset)
            };
            let write_end = write_offset + buf.len() as u64;
            if self.grow_ahead {
                self.preallocate(&mut allocated_end, write_end);
            }
            let written = self
                .file
                .write_all_at(&buf, write_offset)
                .and_then(|()| self.file.sync_data());
            let mut st = self.state.lock();
            if let Err(e) = written {
                tracing::error!(error = %e, offset = write_offset, "event log write failed; log poisoned");
                st.poisoned = Some(e.to_string());
                drop(st);
                self.commit.send_modify(|c| c.failed = true);
                return;
            }
            self.syncs.fetch_add(1, Ordering::Relaxed);
            // The data is durable: the checkpoint may say so (never before, so it never
            // records more than a crash keeps). A frame ends with its event's hash.
            let mark = checkpoint::Mark {
                events: end_position,
                end_offset: write_end,
                last_hash: frame_tail_hash(&buf),
                clean: false,
            };
            st.committed = end_position;
            st.committed_offset = write_end;
            buf.clear();
            if buf.capacity() <= 2 * MAX_UNSYNCED_BYTES {
                st.spare = buf;
            }
            drop(st);
            self.commit.send_modify(|c| c.committed = end_position);
            self.head.send_replace(end_position);
            // After the appenders are released, so the write is off their path, and at most
            // every `checkpoint::WRITE_INTERVAL_MS` (the rest wait in `owed`, written when the
            // interval is up): each write dirties the checkpoint's inode, which the log's next
            // `fdatasync` then commits to the journal. A write per group cost a lone writer
            // about a twentieth of its appends, and 64 writers about a fifteenth.
            if checkpoint_written.elapsed() < write_interval {
                owed = Some(mark);
                continue;
            }
            owed = None;
            checkpoint_written = std::time::Instant::now();
            if let Err(e) = self.advance_checkpoint(&mark, &mut checkpoint_synced) {
                tracing::error!(error = %e, "event log checkpoint write failed; log poisoned");
                self.state.lock().poisoned = Some(e.to_string());
                self.commit.send_modify(|c| c.failed = true);
                return;
            }
        }
    }

    /// Writes the checkpoint after a group commit (to the page cache), and syncs it when
    /// [`checkpoint::SYNC_INTERVAL_MS`] has passed since it last was.
    fn advance_checkpoint(
        &self,
        mark: &checkpoint::Mark,
        synced: &mut std::time::Instant,
    ) -> Result<(), LogError> {
        let mut guard = self.checkpoint.lock();
        let Some(checkpoint) = guard.as_mut() else {
            return Ok(());
        };
        checkpoint.write(mark)?;
        if synced.elapsed() >= Duration::from_millis(checkpoint::SYNC_INTERVAL_MS) {
            checkpoint.sync()?;
            *synced = std::time::Instant::now();
        }
        Ok(())
    }

    /// Grows the file with zeros so that it reaches past `needed_end` (see
    /// [`MAX_PREALLOC_BYTES`]). Recovery treats zeros after the last append as free space, so
    /// a failure here (a nearly full disk) is only a missed optimisation: the append goes on
    /// and its own write decides.
    fn preallocate(&self, allocated_end: &mut u64, needed_end: u64) {
        if needed_end <= *allocated_end {
            return;
        }
        let ahead = (needed_end / 8).clamp(MIN_PREALLOC_BYTES, MAX_PREALLOC_BYTES);
        let new_end = needed_end + ahead;
        // Up to `needed_end` the append's own write follows at once. The zeros come from one
        // static buffer: a fresh one per growth cost the sync thread a page fault per page.
        let zeros = &PREALLOC_ZEROS[..ahead as usize];
        match self.file.write_all_at(zeros, needed_end) {
            Ok(()) => *allocated_end = new_end,
            Err(e) => {
                tracing::warn!(error = %e, bytes = zeros.len(), "event log could not grow ahead; appending without");
            }
        }
    }

    fn read_range(&self, start: u64, end: u64) -> Result<Bytes, LogError> {
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(Bytes::from(buf))
    }

    fn read_all_sync(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, LogError> {
        let (from, end, start_off, end_off) = {
            let st = self.state.lock();
            let end = from.saturating_add(limit as u64).min(st.committed);
            if from >= end {
                return Ok(Vec::new());
            }
            let start_off = st.offsets[from as usize];
            // Cut the page short rather than read more than MAX_READ_BYTES (but always one).
            let window = &st.offsets[from as usize + 1..end as usize];
            let fits = window.partition_point(|&o| o - start_off <= MAX_READ_BYTES);
            let end = from + 1 + fits as u64;
            (from, end, start_off, st.frame_end(end - 1))
        };
        let chunk = self.read_range(start_off, end_off)?;
        let mut events = Vec::with_capacity((end - from) as usize);
        let mut at = 0usize;
        for position in from..end {
            let ev = decode_at(&chunk, at, start_off, position, &self.limits)?;
            at += FRAME_HEADER_BYTES
                + u32::from_le_bytes([chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]])
                    as usize;
            events.push(ev);
        }
        Ok(events)
    }

    /// (position, start offset, end offset) of each wanted frame of a stream.
    fn stream_frames(&self, stream: &str, from_version: u64, limit: usize) -> Vec<(u64, u64, u64)> {
        let st = self.state.lock();
        let Some(s) = st.index.streams.get(stream) else {
            return Vec::new();
        };
        let from = usize::try_from(from_version).unwrap_or(usize::MAX);
        s.positions
            .iter()
            .skip(from)
            .take_while(|&&p| p < st.committed)
            .take(limit)
            .map(|&p| (p, st.offsets[p as usize], st.frame_end(p)))
            .collect()
    }

    fn read_frames(&self, frames: &[(u64, u64, u64)]) -> Result<Vec<RecordedEvent>, LogError> {
        let mut events = Vec::with_capacity(frames.len());
        let mut i = 0;
        while i < frames.len() {
            // Coalesce frames that sit next to each other on disk into one read.
            let (_, run_start, mut run_end) = frames[i];
            let mut j = i + 1;
            while j < frames.len()
                && frames[j].1 == run_end
                && frames[j].2 - run_start <= MAX_READ_BYTES
            {
                run_end = frames[j].2;
                j += 1;
            }
            let chunk = self.read_range(run_start, run_end)?;
            for &(position, start, _) in &frames[i..j] {
                events.push(decode_at(
                    &chunk,
                    (start - run_start) as usize,
                    run_start,
                    position,
                    &self.limits,
                )?);
            }
            i = j;
        }
        Ok(events)
    }
}

fn decode_at(
    chunk: &Bytes,
    at: usize,
    chunk_offset: u64,
    position: u64,
    limits: &Limits,
) -> Result<RecordedEvent, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        offset: chunk_offset + at as u64,
        reason,
    };
    let range =
        codec::frame_payload(chunk, at, limits.max_event_bytes).map_err(|e| corrupt(e.reason))?;
    let decoded = codec::decode_payload(&chunk.slice(range)).map_err(|e| corrupt(e.reason))?;
    if decoded.event.position != position {
        return Err(corrupt(format!(
            "frame holds position {}, index expects {position}",
            decoded.event.position
        )));
    }
    Ok(decoded.event)
}

#[async_trait]
impl EventStore for EmbeddedLog {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, LogError> {
        let v = index::validate(stream, &events, &self.shared.limits)?;
        let part = Part {
            stream,
            expected,
            events: &events,
            v: &v,
        };
        index::single(
            self.shared
                .append_parts(std::slice::from_ref(&part))
                .await?,
        )
    }

    async fn append_streams(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>, LogError> {
        let validated = index::validate_parts(&appends, &self.shared.limits)?;
        let parts: Vec<Part<'_>> = appends
            .iter()
            .zip(&validated)
            .map(|(a, v)| Part {
                stream: &a.stream,
                expected: a.expected,
                events: &a.events,
                v,
            })
            .collect();
        self.shared.append_parts(&parts).await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        index::validate_stream_name(stream, &self.shared.limits)?;
        let limit = self.shared.limits.read_limit(limit);
        let frames = self.shared.stream_frames(stream, from_version, limit);
        // What will be read: the frames themselves, not the span of the file between the first
        // and the last (a stream's events lie far apart in a busy log; measuring the span sent
        // every read of such a stream, however small, to the blocking pool).
        let bytes: u64 = frames
            .iter()
            .map(|(_, start, end)| end.saturating_sub(*start))
            .sum();
        // Catching up on a stream is usually an empty or tiny read: answer it on this thread
        // (from the page cache) rather than paying for a blocking-pool hand-off.
        if bytes <= INLINE_READ_BYTES {
            return self.shared.read_frames(&frames);
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.read_frames(&frames))
            .await
            .map_err(|e| LogError::Io(format!("read task failed: {e}")))?
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let limit = self.shared.limits.read_limit(limit);
        let small = {
            let st = self.shared.state.lock();
            let end = from_position.saturating_add(limit as u64).min(st.committed);
            from_position >= end
                || st.frame_end(end - 1) - st.offsets[from_position as usize] <= INLINE_READ_BYTES
        };
        if small {
            return self.shared.read_all_sync(from_position, limit);
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.read_all_sync(from_position, limit))
            .await
            .map_err(|e| LogError::Io(format!("read task failed: {e}")))?
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, LogError> {
        let st = self.shared.state.lock();
        let Some(s) = st.index.streams.get(stream) else {
            return Ok(None);
        };
        let visible = s.positions.partition_point(|&p| p < st.committed);
        Ok(visible.checked_sub(1).map(|v| v as u64))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Mode of the directories the log creates: partner data and money are for the service's user
/// alone.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of the files it creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) readable by the owner alone. An existing directory keeps its
/// mode (a volume mounted for a group, as Kubernetes' `fsGroup` does, must stay usable); one
/// open to others is reported.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o007 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the log's directory is open to every user of the machine; make it 0700");
    }
    Ok(())
}

/// Options that create a file readable by the owner alone.
pub(crate) fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates the directory if needed, takes the writer's lock, opens the log for writing.
/// Returns whether the log file was created (the directory then needs a sync).
fn open_files(dir: &Path) -> Result<(Option<File>, File, bool), LogError> {
    create_private_dir(dir)?;
    let lock = private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    if lock.try_lock().is_err() {
        return Err(LogError::Locked {
            path: dir.display().to_string(),
        });
    }
    let log_path = dir.join(LOG_FILE);
    let created = !log_path.exists();
    let file = private_file()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&log_path)?;
    Ok((Some(lock), file, created))
}

/// Opens the log for reading without creating or writing anything; a shared lock keeps a
/// writer out while it is read (none is taken in a copy that has no lock file).
fn open_files_read_only(dir: &Path) -> Result<(Option<File>, File, bool), LogError> {
    let lock = match File::open(dir.join(LOCK_FILE)) {
        Ok(lock) => {
            if lock.try_lock_shared().is_err() {
                return Err(LogError::Locked {
                    path: dir.display().to_string(),
                });
            }
            Some(lock)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let file = File::open(dir.join(LOG_FILE))
        .map_err(|e| LogError::Io(format!("{}: {e}", dir.join(LOG_FILE).display())))?;
    Ok((lock, file, false))
}

/// The hash a frame ends with (the last 32 bytes of a buffer of whole frames).
fn frame_tail_hash(frames: &[u8]) -> EventHash {
    let mut h = [0u8; 32];
    if let Some(tail) = frames.len().checked_sub(32).and_then(|at| frames.get(at..)) {
        h.copy_from_slice(tail);
    }
    EventHash(h)
}

/// Hash of the event at `position` (which must be committed).
fn hash_at(file: &File, st: &State, position: u64) -> Result<EventHash, LogError> {
    let start = st.offsets[position as usize];
    let end = if position + 1 == st.committed {
        st.committed_offset
    } else {
        st.frame_end(position)
    };
    read_frame_hash(file, start, end)
}

/// Hash of the last committed event; zeros when the log is empty.
fn last_hash(file: &File, st: &State) -> Result<EventHash, LogError> {
    match st.committed.checked_sub(1) {
        Some(p) => hash_at(file, st, p),
        None => Ok(EventHash([0; 32])),
    }
}

fn mark_of(file: &File, st: &State, clean: bool) -> Result<checkpoint::Mark, LogError> {
    Ok(checkpoint::Mark {
        events: st.committed,
        end_offset: st.committed_offset,
        last_hash: last_hash(file, st)?,
        clean,
    })
}

/// Compares what recovery found with what the checkpoint and the index snapshot recorded,
/// and names what follows the last append.
fn assess(
    file: &File,
    st: &State,
    found: checkpoint::Found,
    snapshot_claim: Option<checkpoint::Mark>,
    tail: &Tail,
) -> Result<Vec<LogFinding>, LogError> {
    let mut findings = Vec::new();
    let mut records = Vec::with_capacity(2);
    match found {
        checkpoint::Found::Mark { mark, .. } => records.push(("checkpoint", mark)),
        checkpoint::Found::Missing if st.committed > 0 => {
            findings.push(LogFinding::CheckpointMissing {
                events: st.committed,
            });
        }
        checkpoint::Found::Missing => {}
        // An empty log's checkpoint may be torn by a crash during its very first write.
        checkpoint::Found::Unreadable if st.committed > 0 => {
            findings.push(LogFinding::CheckpointUnreadable);
        }
        checkpoint::Found::Unreadable => {}
    }
    if let Some(claim) = snapshot_claim {
        // The snapshot is written at a clean close, as is a clean checkpoint: it adds
        // something only when it knows of more events than the checkpoint.
        if records.first().is_none_or(|(_, m)| claim.events > m.events) {
            records.push(("index snapshot", claim));
        }
    }
    let found_hash = last_hash(file, st)?;
    for (recorded_by, mark) in &records {
        if mark.events > st.committed {
            findings.push(LogFinding::Truncated {
                recorded_by,
                expected_events: mark.events,
                expected_hash: mark.last_hash,
                found_events: st.committed,
                found_hash,
            });
        } else if let Some(position) = mark.events.checked_sub(1) {
            let at = hash_at(file, st, position)?;
            if at != mark.last_hash {
                findings.push(LogFinding::Diverged {
                    recorded_by,
                    position,
                    expected_hash: mark.last_hash,
                    found_hash: at,
                });
            }
        }
    }
    // After a clean close no torn append can follow the log, as no writer was running (a
    // writer marks the checkpoint open before its first append).
    let clean = matches!(found, checkpoint::Found::Mark { mark, .. } if mark.clean);
    match tail.clone() {
        Tail::None => {}
        Tail::Zeros { offset, bytes } => findings.push(LogFinding::ZeroTail { offset, bytes }),
        Tail::Torn {
            offset,
            bytes,
            reason,
        } if clean => findings.push(LogFinding::TrailingBytes {
            offset,
            bytes,
            reason: format!("after a clean close: {reason}"),
        }),
        Tail::Torn {
            offset,
            bytes,
            reason,
        } => findings.push(LogFinding::TornTail {
            offset,
            bytes,
            reason,
        }),
        Tail::Damaged {
            offset,
            bytes,
            reason,
        } => findings.push(LogFinding::TrailingBytes {
            offset,
            bytes,
            reason,
        }),
    }
    Ok(findings)
}

/// Cuts what follows the last complete append: a torn tail or zeros always (logged with the
/// offset and the bytes dropped); other trailing bytes only when an operator accepts the
/// loss, after moving them to `quarantine/`.
fn cut_tail(
    dir: &Path,
    file: &File,
    findings: &[LogFinding],
    accepting: bool,
) -> Result<(), LogError> {
    for finding in findings {
        let (offset, bytes) = match finding {
            LogFinding::TornTail { offset, bytes, .. } | LogFinding::ZeroTail { offset, bytes } => {
                (*offset, *bytes)
            }
            LogFinding::TrailingBytes { offset, bytes, .. } if accepting => {
                quarantine(dir, file, *offset, offset + bytes)?;
                (*offset, *bytes)
            }
            _ => continue,
        };
        tracing::warn!(offset, bytes, finding = %finding, "cutting the event log's tail");
        file.set_len(offset)?;
        file.sync_all()?;
    }
    Ok(())
}

/// What follows the last complete append, as recovery found it. Recovery only reads: the
/// caller decides what to do with it ([`EmbeddedLog::open`] cuts a torn tail, refuses
/// damage; a read-only open reports both).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tail {
    /// The file ends with its last complete append.
    None,
    /// Only zeros follow: space grown ahead of the appends, or never written.
    Zeros { offset: u64, bytes: u64 },
    /// What a crash leaves: the start of an append that was never acknowledged.
    Torn {
        offset: u64,
        bytes: u64,
        reason: String,
    },
    /// Anything else that does not decode: not something a crash leaves.
    Damaged {
        offset: u64,
        bytes: u64,
        reason: String,
    },
}

/// Replays frames from `state.committed_offset` to the end of the file into `state`, and
/// classifies what follows the last complete append (see the module docs). Writes nothing.
fn recover(file: &File, state: &mut State, limits: &Limits) -> Result<Tail, LogError> {
    let file_len = file.metadata()?.len();
    // Zeros after the last written byte are space grown ahead of the appends (or never
    // written): no frame starts there, and a torn write is judged by what was written.
    let data_end = written_end(file, state.committed_offset, file_len)?;
    let mut batch: Vec<(u64, RecordedEvent)> = Vec::new();
    let mut batch_start = state.committed_offset;
    let max_payload = limits.max_event_bytes.max(MAX_UNSYNCED_BYTES);
    let mut scan = Scan {
        file,
        file_len,
        chunk: Vec::new(),
        chunk_offset: state.committed_offset,
        at: 0,
    };
    let failure: Option<(u64, String)> = loop {
        let frame_offset = scan.offset();
        // A frame starts with its non-zero length, so none starts at or after `data_end`.
        if frame_offset >= data_end {
            break None;
        }
        if !scan.ensure(FRAME_HEADER_BYTES)? {
            break Some((
                frame_offset,
                "frame header runs past the end of the file".into(),
            ));
        }
        let len = scan.frame_len();
        if len > max_payload {
            break Some((frame_offset, format!("implausible frame length {len}")));
        }
        if !scan.ensure(FRAME_HEADER_BYTES + len)? {
            break Some((frame_offset, "frame runs past the end of the file".into()));
        }
        let (chunk, at) = (&scan.chunk, scan.at);
        let range = match codec::frame_payload(chunk, at, max_payload) {
            Ok(r) => r,
            Err(e) => break Some((frame_offset, e.reason)),
        };
        let payload = Bytes::copy_from_slice(&chunk[range.clone()]);
        let decoded = match codec::decode_payload(&payload) {
            Ok(d) => d,
            Err(e) => break Some((frame_offset, e.reason)),
        };
        let expected_position = state.index.next_position + batch.len() as u64;
        if decoded.event.position != expected_position {
            break Some((
                frame_offset,
                format!(
                    "frame holds position {}, expected {expected_position}",
                    decoded.event.position
                ),
            ));
        }
        let last_in_append = decoded.flags & codec::FLAG_LAST_IN_APPEND != 0;
        batch.push((frame_offset, decoded.event));
        scan.at = range.end;
        if last_in_append {
            for (offset, ev) in batch.drain(..) {
                restore(state, offset, &ev)?;
            }
            batch_start = scan.offset();
            state.committed_offset = batch_start;
            state.assigned_end = batch_start;
        }
    };
    debug_assert_eq!(state.committed_offset, batch_start);
    if batch_start == file_len {
        return Ok(Tail::None);
    }
    // What the writer can leave after its last synced append: one unsynced buffer and the
    // space grown ahead of it. A longer tail, even of zeros, is damage, not a crash.
    let tail_bytes = file_len - batch_start;
    let within_window = tail_bytes <= MAX_UNSYNCED_BYTES as u64 + MAX_PREALLOC_BYTES;
    if batch_start >= data_end && within_window {
        return Ok(Tail::Zeros {
            offset: batch_start,
            bytes: tail_bytes,
        });
    }
    // Valid frames are looked for only past where the scan stopped: the whole frames between
    // the last good append and that point belong to the append the crash cut short (its last
    // frame, which closes it, is missing), so they are no sign of corruption.
    let search_from = match &failure {
        Some((offset, _)) => offset + 1,
        None => scan.offset(),
    };
    let (bad_offset, reason) = failure.unwrap_or_else(|| {
        let reason = if batch_start >= data_end {
            "only zeros follow the last append"
        } else {
            "the last append is incomplete"
        };
        (batch_start, reason.into())
    });
    let next_position = state.index.next_position;
    let torn = within_window
        && starts_like_a_frame(file, batch_start, file_len, next_position, max_payload)?
        // Up to the end of the file, not `data_end`: a valid frame may end in zero bytes.
        && !any_valid_frame_after(file, search_from, file_len, max_payload)?;
    let reason = format!("{reason} (at byte offset {bad_offset})");
    Ok(if torn {
        Tail::Torn {
            offset: batch_start,
            bytes: tail_bytes,
            reason,
        }
    } else {
        Tail::Damaged {
            offset: batch_start,
            bytes: tail_bytes,
            reason,
        }
    })
}

/// Whether the bytes at `offset` can be the start of the frame the writer would have put
/// there (the append at `position` that a crash cut short): a plausible length, format 1,
/// known flags and the expected position, as far as the bytes reach; or a hole of zeros (a
/// power loss may persist later pages before the first). Random bytes fail this at once, so
/// garbage after the log is refused instead of cut as if a crash had left it.
fn starts_like_a_frame(
    file: &File,
    offset: u64,
    file_len: u64,
    position: u64,
    max_payload: usize,
) -> Result<bool, LogError> {
    const PREFIX_BYTES: usize = FRAME_HEADER_BYTES + 2 + 8;
    let available = usize::try_from(file_len - offset).unwrap_or(usize::MAX);
    let mut head = vec![0u8; available.min(PREFIX_BYTES)];
    file.read_exact_at(&mut head, offset)?;
    if head.iter().all(|&b| b == 0) {
        return Ok(true);
    }
    let mut ok = true;
    if head.len() >= 4 {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        ok &= len > 0 && len <= max_payload;
    }
    if head.len() > FRAME_HEADER_BYTES {
        ok &= head[FRAME_HEADER_BYTES] == codec::FORMAT_V1;
    }
    if head.len() > FRAME_HEADER_BYTES + 1 {
        ok &= head[FRAME_HEADER_BYTES + 1] & !codec::FLAG_LAST_IN_APPEND == 0;
    }
    if head.len() == PREFIX_BYTES {
        let mut p = [0u8; 8];
        p.copy_from_slice(&head[FRAME_HEADER_BYTES + 2..]);
        ok &= u64::from_le_bytes(p) == position;
    }
    Ok(ok)
}

/// The end of the last non-zero byte of the file at or after `from` (`from` when there is none).
fn written_end(file: &File, from: u64, file_len: u64) -> Result<u64, LogError> {
    let mut end = file_len;
    let mut chunk = Vec::new();
    while end > from {
        let start = end.saturating_sub(SCAN_CHUNK_BYTES as u64).max(from);
        chunk.resize((end - start) as usize, 0);
        file.read_exact_at(&mut chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(from)
}

/// A forward reader over the log file for the recovery scan.
struct Scan<'a> {
    file: &'a File,
    file_len: u64,
    chunk: Vec<u8>,
    /// File offset of `chunk[0]`.
    chunk_offset: u64,
    /// Parse cursor within `chunk`.
    at: usize,
}

impl Scan<'_> {
    fn offset(&self) -> u64 {
        self.chunk_offset + self.at as u64
    }

    /// Makes `n` bytes from the cursor available; false when the file ends first.
    fn ensure(&mut self, n: usize) -> Result<bool, LogError> {
        if self.chunk.len() - self.at >= n {
            return Ok(true);
        }
        self.chunk.drain(..self.at);
        self.chunk_offset += self.at as u64;
        self.at = 0;
        let read_from = self.chunk_offset + self.chunk.len() as u64;
        let want = (n.max(SCAN_CHUNK_BYTES) - self.chunk.len()) as u64;
        let take = want.min(self.file_len - read_from) as usize;
        let old = self.chunk.len();
        self.chunk.resize(old + take, 0);
        self.file.read_exact_at(&mut self.chunk[old..], read_from)?;
        Ok(self.chunk.len() >= n)
    }

    fn frame_len(&self) -> usize {
        let h = &self.chunk[self.at..self.at + 4];
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize
    }
}

fn restore(state: &mut State, offset: u64, ev: &RecordedEvent) -> Result<(), LogError> {
    let corrupt = |reason: String| LogError::Corrupt { offset, reason };
    let fingerprint = codec::fingerprint_recorded(ev)?;
    let stream = state.index.streams.get_or_default(ev.stream.as_str());
    if ev.version != stream.positions.len() as u64 {
        return Err(corrupt(format!(
            "stream {} jumps to version {} after {} events",
            ev.stream,
            ev.version,
            stream.positions.len()
        )));
    }
    stream.positions.push(ev.position);
    stream.last_hash = ev.hash;
    let previous = state.index.ids.insert(
        ev.id,
        IdEntry {
            position: ev.position,
            fingerprint,
        },
    );
    if previous.is_some() {
        return Err(corrupt(format!("event id {} is stored twice", ev.id)));
    }
    let recorded_at_ns = ev.recorded_at.timestamp_nanos_opt().unwrap_or(i64::MAX);
    state.index.last_recorded_at_ns = state.index.last_recorded_at_ns.max(recorded_at_ns);
    state.index.next_position += 1;
    state.offsets.push(offset);
    state.committed = state.index.next_position;
    Ok(())
}

/// Is there any frame with a valid checksum in `[from, end)`? If so the bad bytes before it are
/// not a torn tail but damage in the middle of acknowledged data.
fn any_valid_frame_after(
    file: &File,
    from: u64,
    end: u64,
    max_payload: usize,
) -> Result<bool, LogError> {
    if from >= end {
        return Ok(false);
    }
    let mut buf = vec![0u8; (end - from) as usize];
    file.read_exact_at(&mut buf, from)?;
    Ok((0..buf.len()).any(|at| codec::frame_payload(&buf, at, max_payload).is_ok()))
}

fn quarantine(dir: &Path, file: &File, from: u64, end: u64) -> Result<(), LogError> {
    let qdir = dir.join(QUARANTINE_DIR);
    create_private_dir(&qdir)?;
    let path = qdir.join(format!("events.log.{from}-{end}"));
    let mut out = private_file()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let mut src = file.try_clone()?;
    std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(from))?;
    std::io::copy(&mut src.take(end - from), &mut out)?;
    out.sync_all()?;
    sync_dir(&qdir)?;
    tracing::error!(path = %path.display(), bytes = end - from, "quarantined damaged log tail");
    Ok(())
}

// ----- index snapshot -------------------------------------------------------------------------

fn write_snapshot(dir: &Path, file: &File, st: &State) -> Result<(), LogError> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut hasher = Sha256::new();
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(
            1 << 20,
            private_file()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)?,
        ),
        hasher: &mut hasher,
    };
    w.put(SNAPSHOT_MAGIC)?;
    w.put(&st.committed.to_le_bytes())?;
    w.put(&st.committed_offset.to_le_bytes())?;
    w.put(&st.index.last_recorded_at_ns.to_le_bytes())?;
    // The hash of the last event ties the snapshot to this very log file.
    let last_hash = match st.committed.checked_sub(1) {
        Some(p) => read_frame_hash(file, st.offsets[p as usize], st.frame_end(p))?,
        None => EventHash([0; 32]),
    };
    w.put(&last_hash.0)?;
    for &o in &st.offsets[..st.committed as usize] {
        w.put(&o.to_le_bytes())?;
    }
    w.put(&(st.index.streams.len() as u64).to_le_bytes())?;
    for (name, s) in st.index.streams.iter() {
        w.put(&(name.len() as u16).to_le_bytes())?;
        w.put(name.as_bytes())?;
        w.put(&s.last_hash.0)?;
        w.put(&(s.positions.len() as u64).to_le_bytes())?;
        for p in &s.positions {
            w.put(&p.to_le_bytes())?;
        }
    }
    for (id, e) in st.index.ids.iter() {
        w.put(id.as_bytes())?;
        w.put(&e.position.to_le_bytes())?;
        w.put(&e.fingerprint)?;
    }
    let HashingWriter { mut inner, .. } = w;
    let digest: [u8; 32] = hasher.finalize().into();
    inner.write_all(&digest)?;
    let out = inner
        .into_inner()
        .map_err(|e| LogError::Io(e.to_string()))?;
    out.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    sync_dir(dir)
}

struct HashingWriter<'a> {
    inner: BufWriter<File>,
    hasher: &'a mut Sha256,
}

impl HashingWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.hasher.update(bytes);
        self.inner.write_all(bytes)?;
        Ok(())
    }
}

fn read_frame_hash(file: &File, start: u64, end: u64) -> Result<EventHash, LogError> {
    if end < start + 32 {
        return Err(LogError::Corrupt {
            offset: start,
            reason: "frame too short".into(),
        });
    }
    let mut h = [0u8; 32];
    file.read_exact_at(&mut h, end - 32)?;
    Ok(EventHash(h))
}

/// Loads the snapshot: the index to start from when it is intact and matches the log (`None`
/// means "scan from the start", always correct, only slower), and, whenever it is intact,
/// what it records of the log (events and the last hash), for [`assess`] to hold the log to.
fn load_snapshot(dir: &Path, file: &File) -> (Option<State>, Option<checkpoint::Mark>) {
    let Some((claim, state)) = read_snapshot(dir) else {
        return (None, None);
    };
    // The snapshot must describe a prefix of this file: same length covered, same last event.
    let Ok(meta) = file.metadata() else {
        return (None, Some(claim));
    };
    if claim.end_offset > meta.len() {
        return (None, Some(claim));
    }
    if let Some(p) = claim.events.checked_sub(1) {
        match read_frame_hash(file, state.offsets[p as usize], claim.end_offset) {
            Ok(found) if found == claim.last_hash => {}
            _ => {
                tracing::warn!("index snapshot does not match the log; rescanning");
                return (None, Some(claim));
            }
        }
    }
    (Some(state), Some(claim))
}

fn read_snapshot(dir: &Path) -> Option<(checkpoint::Mark, State)> {
    let bytes = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
    let (body, digest) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    let computed: [u8; 32] = Sha256::digest(body).into();
    if computed.as_slice() != digest {
        tracing::warn!("index snapshot checksum mismatch; rescanning the log");
        return None;
    }
    let mut r = SnapReader { buf: body, at: 0 };
    if r.take(8)? != SNAPSHOT_MAGIC {
        return None;
    }
    let committed = r.u64()?;
    let committed_offset = r.u64()?;
    let last_recorded_at_ns = i64::from_le_bytes(r.array()?);
    let last_hash = EventHash(r.array()?);
    let n = usize::try_from(committed).ok()?;
    if n.checked_mul(8)? > body.len() {
        return None;
    }
    let mut offsets = Vec::with_capacity(n);
    for _ in 0..n {
        offsets.push(r.u64()?);
    }
    let n_streams = r.u64()?;
    // Sized up front as `ids` below, so a reopen never grows either map; capped at the event
    // count (already checked against the file's size), so a damaged count allocates nothing.
    let mut streams = ShardedMap::with_capacity(usize::try_from(n_streams).ok()?.min(n));
    for _ in 0..n_streams {
        let len = usize::from(u16::from_le_bytes(r.array()?));
        let name = std::str::from_utf8(r.take(len)?).ok()?.to_owned();
        let last = EventHash(r.array()?);
        let count = usize::try_from(r.u64()?).ok()?;
        if count > n {
            return None;
        }
        let mut positions = Vec::with_capacity(count);
        for _ in 0..count {
            positions.push(r.u64()?);
        }
        streams.insert(
            name,
            StreamState {
                positions,
                last_hash: last,
            },
        );
    }
    let mut ids = ShardedMap::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::from_bytes(r.array()?);
        let position = r.u64()?;
        let fingerprint = r.array()?;
        ids.insert(
            id,
            IdEntry {
                position,
                fingerprint,
            },
        );
    }
    if r.at != body.len() {
        return None;
    }
    let state = State {
        index: Index {
            streams,
            ids,
            next_position: committed,
            last_recorded_at_ns,
        },
        offsets,
        committed,
        committed_offset,
        assigned_end: committed_offset,
        ..State::default()
    };
    let claim = checkpoint::Mark {
        events: committed,
        end_offset: committed_offset,
        last_hash,
        clean: true,
    };
    Some((claim, state))
}

struct SnapReader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl SnapReader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code fails loudly

    use std::time::Instant;

    use super::*;
    use crate::event::EventMetadata;

    fn event_of(n: u128, data_bytes: usize) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(n),
            event_type: "E".into(),
            schema_version: 1,
            data: Bytes::from(vec![b'x'; data_bytes]),
            metadata: EventMetadata::at(chrono::DateTime::UNIX_EPOCH),
        }
    }

    /// The pending buffer's bound is 32 MiB in production, more than a test should write: here
    /// it is 64 KiB, so two 40 KiB appends overflow it, and the linger is long enough that
    /// waiting it out cannot pass for a slow disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_that_overflow_the_pending_buffer_end_a_linger_instead_of_waiting_it_out() {
        const LINGER: Duration = Duration::from_secs(5);
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            sync_linger: LINGER,
            max_unsynced_bytes: 64 * 1024,
        };
        let log = EmbeddedLog::open_tuned(dir.path(), EmbeddedOptions::default(), tuning);
        let log = Arc::new(log.unwrap());
        // As after a burst: the next sync waits for a group of 32 appends.
        log.shared.state.lock().last_group_appends = 32;
        let started = Instant::now();
        let appends: Vec<_> = (0..3_u128)
            .map(|i| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let events = vec![event_of(i + 1, 40 * 1024)];
                    log.append(&format!("big-{i}"), ExpectedVersion::Any, events)
                        .await
                })
            })
            .collect();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        let took = started.elapsed();
        assert!(
            took < LINGER / 2,
            "three appends that overflow the buffer took {took:?} under a {LINGER:?} linger"
        );
        assert_eq!(log.sync_stats().lingering_syncs, 1);
        assert_eq!(log.sync_stats().syncs, 3, "one append fits a sync");
    }
}
