//! The audit commands of the real binary on a data directory: seal, verify (exit 0 intact,
//! exit 1 at the first break, printed precisely), replay as JSON, and precise usage errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::process::{Command, Output};

use chrono::{TimeZone, Utc};
use ed25519_dalek::pkcs8::{spki::EncodePublicKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use pl_eventlog::{
    EmbeddedLog, EmbeddedOptions, EventMetadata, EventStore, ExpectedVersion, NewEvent,
};
use uuid::Uuid;

fn audit(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .arg("audit")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Given: a data directory with a few events in two streams, and a key pair on disk.
async fn given(dir: &std::path::Path) -> (String, String) {
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap();
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    for (n, stream) in [(1u128, "notes-a"), (2, "notes-b"), (3, "notes-a")] {
        let e = NewEvent::json(
            Uuid::from_u128(n),
            "NoteTaken",
            1,
            &serde_json::json!({"text": format!("note number {n}")}),
            EventMetadata::at(at),
        )
        .unwrap();
        log.append(stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    log.close().unwrap();
    let key = SigningKey::from_bytes(&[9; 32]);
    let private = dir.join("../seal.pem");
    let public = dir.join("../seal.pub.pem");
    std::fs::write(
        &private,
        key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();
    (
        private.to_string_lossy().into_owned(),
        public.to_string_lossy().into_owned(),
    )
}

#[tokio::test]
async fn seal_then_verify_passes_and_a_forged_byte_fails_verify_with_exit_1() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let (private, public) = given(&dir).await;

    let sealed = audit(&dir, &["seal", "--key-file", &private]);
    assert!(sealed.status.success(), "{sealed:?}");
    assert!(String::from_utf8_lossy(&sealed.stdout).contains("sealed up to position 2"));

    let ok = audit(&dir, &["verify", "--public-key", &public]);
    assert!(ok.status.success(), "{ok:?}");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.starts_with("intact: checked 4 events"), "{text}");
    assert!(text.contains("1 seals (1 signatures)"), "{text}");

    // Flip one byte of an event's data without fixing its frame checksum.
    let log_file = dir.join("events.log");
    let mut bytes = std::fs::read(&log_file).unwrap();
    let at = bytes
        .windows(13)
        .position(|w| w == b"note number 2")
        .unwrap();
    bytes[at] = b'N';
    std::fs::write(&log_file, bytes).unwrap();
    let broken = audit(&dir, &["verify", "--public-key", &public]);
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(
        err.contains("BROKEN") && err.contains("byte offset"),
        "{err}"
    );
}

#[tokio::test]
async fn replay_prints_json_and_bad_arguments_exit_2_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    given(&dir).await;
    let out = audit(&dir, &["replay", "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows, serde_json::json!([]), "no partner books in this log");

    let bad = audit(&dir, &["replay", "--business-date", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--business-date"));
    let missing = audit(&root.path().join("nowhere"), &["verify"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such directory"));
}

/// Cuts the last `n` bytes off a file, as `truncate` would.
fn cut_last_bytes(path: &std::path::Path, n: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len - n)
        .unwrap();
}

/// Every file of a directory, by name, with its bytes and permissions.
fn files_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            let bytes = if p.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (name, bytes, mode)
        })
        .collect();
    files.sort();
    files
}

fn make_read_only(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
}

#[tokio::test]
async fn verify_reports_a_log_cut_short_on_a_read_only_copy_exits_1_and_changes_no_byte() {
    // The log holds 3 events, one per append; the checkpoint of its clean close records them.
    // Cut at the last frame's start, at the second's (the middle), and inside the last one.
    for (place, kept, into_next) in [
        ("the last event", 2, 0),
        ("the middle", 1, 0),
        ("inside the last event", 2, 5),
    ] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        given(&dir).await;
        let log_file = dir.join("events.log");
        let cut = frames_end(&log_file, kept) + into_next;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log_file)
            .unwrap()
            .set_len(cut)
            .unwrap();
        make_read_only(&dir);
        let before = files_of(&dir);

        let out = audit(&dir, &["verify"]);
        assert_eq!(out.status.code(), Some(1), "{place}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("FINDING: log cut short: the checkpoint records 3 events")
                && err.contains(&format!("the log holds {kept} ending in hash")),
            "{place}: {err}"
        );
        if into_next > 0 {
            assert!(
                err.contains(&format!(
                    "FINDING: trailing bytes: {into_next} bytes from byte offset"
                )),
                "{place}: {err}"
            );
        }
        assert!(
            files_of(&dir) == before,
            "{place}: verify changed the directory"
        );

        // The other reads refuse to report on a log the services would refuse to serve.
        let replay = audit(&dir, &["replay", "--format", "json"]);
        assert_eq!(replay.status.code(), Some(2), "{place}: {replay:?}");
        assert!(String::from_utf8_lossy(&replay.stderr).contains("log cut short"));
        assert!(
            files_of(&dir) == before,
            "{place}: replay changed the directory"
        );
        // A read-only directory stays readable for the temporary directory's cleanup.
        make_writable(&dir);
    }
}

/// End offset of the first `n` frames of a log file (a frame is `payload_len:u32 (LE)
/// crc32:u32 payload`, as `pl-eventlog`'s codec documents for auditors).
fn frames_end(path: &std::path::Path, n: usize) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0usize;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    at as u64
}

fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn accept_loss_records_the_reason_and_verify_then_passes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    given(&dir).await;
    cut_last_bytes(&dir.join("events.log"), 5);
    assert_eq!(audit(&dir, &["verify"]).status.code(), Some(1));

    let accepted = audit(&dir, &["accept-loss", "--reason", "INC-7 disk swap"]);
    assert!(accepted.status.success(), "{accepted:?}");
    let text = String::from_utf8_lossy(&accepted.stdout);
    assert!(text.contains("accepted: log cut short"), "{text}");
    assert!(
        text.contains("recorded as LogLossAccepted in stream log-incidents"),
        "{text}"
    );

    let ok = audit(&dir, &["verify"]);
    assert!(ok.status.success(), "{ok:?}");
    let export = audit(
        &dir,
        &[
            "export",
            "--what",
            "events",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
    );
    assert!(export.status.success(), "{export:?}");
    let lines = String::from_utf8_lossy(&export.stdout);
    assert!(
        lines.contains("LogLossAccepted") && lines.contains("INC-7 disk swap"),
        "{lines}"
    );
    let nothing = audit(&dir, &["accept-loss", "--reason", "again"]);
    assert!(String::from_utf8_lossy(&nothing.stdout).contains("nothing to accept"));
}
