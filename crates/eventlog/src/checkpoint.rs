//! The embedded log's checkpoint: how far the log has been, kept beside it so that a log cut
//! short is refused at open instead of served as whole (in the manner of TigerBeetle's
//! superblock).
//!
//! `CHECKPOINT` holds two copies ("slots") in separate 4 KiB pages, so a torn write of one
//! leaves the other. A slot is `magic:[8] sequence:u64 events:u64 end_offset:u64
//! last_hash:[32] clean:u8 sha256(all before):[32]`, integers little-endian. Writers alternate
//! slots by sequence; the reader takes the valid slot with the highest sequence.
//!
//! The sync thread writes a slot after a group commit's `fdatasync`, once it has released the
//! group's appenders (a page-cache write), at most every [`WRITE_INTERVAL_MS`]: a commit in
//! between is written when the interval is up, so at rest the checkpoint is exact within it.
//! A slot never records more than is durable. It syncs the checkpoint file at most every [`SYNC_INTERVAL_MS`], and at open and
//! at every clean close. After a process crash the checkpoint lags by at most the write
//! interval; after a power loss by at most the sync interval; a lagging checkpoint is only a
//! lower bound, never a false alarm.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::LogError;
use crate::event::EventHash;

pub(crate) const CHECKPOINT_FILE: &str = "CHECKPOINT";
/// The checkpoint file reaches the disk at least this often while appends arrive.
pub(crate) const SYNC_INTERVAL_MS: u64 = 1_000;
/// The checkpoint is written at most this often (each write dirties its inode, which the next
/// `fdatasync` of the log then commits to the journal); a commit in between is written when
/// the interval is up.
pub(crate) const WRITE_INTERVAL_MS: u64 = 10;
const MAGIC: &[u8; 8] = b"PLCKPT\0\x01";
/// Each slot starts on its own page: a torn page write damages one copy at most.
const SLOT_STRIDE_BYTES: u64 = 4096;
const SLOTS: u64 = 2;
const BODY_BYTES: usize = 8 + 8 + 8 + 8 + 32 + 1;
const SLOT_BYTES: usize = BODY_BYTES + 32;

/// What the log had durably written when the checkpoint was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Events (positions `0..events`).
    pub events: u64,
    /// Byte offset just past the last of them.
    pub end_offset: u64,
    /// Hash of the event at `events - 1` (all zeros when empty).
    pub last_hash: EventHash,
    /// Written by a clean close: nothing follows `end_offset`.
    pub clean: bool,
}

/// What was found beside the log at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No checkpoint file (a new data directory, or one from before checkpoints).
    Missing,
    /// The file exists but no slot is intact.
    Unreadable,
    Mark {
        mark: Mark,
        sequence: u64,
    },
}

/// Reads the newest intact slot.
pub(crate) fn read(dir: &Path) -> Result<Found, LogError> {
    let file = match File::open(dir.join(CHECKPOINT_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e.into()),
    };
    let mut best: Option<(u64, Mark)> = None;
    for slot in 0..SLOTS {
        let mut buf = [0u8; SLOT_BYTES];
        if file
            .read_exact_at(&mut buf, slot * SLOT_STRIDE_BYTES)
            .is_err()
        {
            continue;
        }
        if let Some((sequence, mark)) = decode(&buf) {
            if best.is_none_or(|(s, _)| sequence > s) {
                best = Some((sequence, mark));
            }
        }
    }
    Ok(match best {
        Some((sequence, mark)) => Found::Mark { mark, sequence },
        None => Found::Unreadable,
    })
}

fn decode(buf: &[u8; SLOT_BYTES]) -> Option<(u64, Mark)> {
    let (body, digest) = buf.split_at(BODY_BYTES);
    if Sha256::digest(body).as_slice() != digest || &body[..8] != MAGIC {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut last_hash = [0u8; 32];
    last_hash.copy_from_slice(&body[32..64]);
    let clean = match body[64] {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some((
        u64_at(8),
        Mark {
            events: u64_at(16),
            end_offset: u64_at(24),
            last_hash: EventHash(last_hash),
            clean,
        },
    ))
}

fn encode(sequence: u64, mark: &Mark) -> [u8; SLOT_BYTES] {
    let mut buf = [0u8; SLOT_BYTES];
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&sequence.to_le_bytes());
    buf[16..24].copy_from_slice(&mark.events.to_le_bytes());
    buf[24..32].copy_from_slice(&mark.end_offset.to_le_bytes());
    buf[32..64].copy_from_slice(&mark.last_hash.0);
    buf[64] = u8::from(mark.clean);
    let digest = Sha256::digest(&buf[..BODY_BYTES]);
    buf[BODY_BYTES..].copy_from_slice(&digest);
    buf
}

/// The writer's handle on the checkpoint file.
#[derive(Debug)]
pub(crate) struct Writer {
    file: File,
    sequence: u64,
}

impl Writer {
    /// Opens (creating) the checkpoint file for writing; `after` is the sequence last read, so
    /// the next slot written is newer than any on disk.
    pub fn open(dir: &Path, after: u64) -> Result<Self, LogError> {
        let file = crate::embedded::private_file()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(CHECKPOINT_FILE))?;
        Ok(Self {
            file,
            sequence: after,
        })
    }

    /// Writes `mark` to the older slot, into the page cache only.
    pub fn write(&mut self, mark: &Mark) -> Result<(), LogError> {
        self.sequence += 1;
        let slot = self.sequence % SLOTS;
        self.file
            .write_all_at(&encode(self.sequence, mark), slot * SLOT_STRIDE_BYTES)?;
        Ok(())
    }

    /// Writes `mark` and waits until it is on disk.
    pub fn write_durably(&mut self, mark: &Mark) -> Result<(), LogError> {
        self.write(mark)?;
        self.sync()
    }

    pub fn sync(&self) -> Result<(), LogError> {
        self.file.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code fails loudly

    use super::*;
    use std::fs::OpenOptions;

    fn mark(events: u64) -> Mark {
        Mark {
            events,
            end_offset: events * 100,
            last_hash: EventHash([events as u8; 32]),
            clean: events.is_multiple_of(2),
        }
    }

    #[test]
    fn the_newest_intact_slot_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Missing);
        let mut w = Writer::open(dir.path(), 0).unwrap();
        for n in 1..=5 {
            w.write(&mark(n)).unwrap();
        }
        assert_eq!(
            read(dir.path()).unwrap(),
            Found::Mark {
                mark: mark(5),
                sequence: 5
            }
        );
    }

    #[test]
    fn a_torn_newest_slot_falls_back_to_the_other_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 0).unwrap();
        w.write(&mark(1)).unwrap();
        w.write(&mark(2)).unwrap();
        // Sequence 2 lives in slot 0: damage it.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(CHECKPOINT_FILE))
            .unwrap();
        f.write_all_at(&[0xff; 4], 20).unwrap();
        assert_eq!(
            read(dir.path()).unwrap(),
            Found::Mark {
                mark: mark(1),
                sequence: 1
            }
        );
        f.write_all_at(&[0xff; 4], SLOT_STRIDE_BYTES + 20).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Unreadable);
    }
}
