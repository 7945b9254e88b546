//! The real binary: prints where it listens, and on SIGTERM drains, flushes the log and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn sigterm_drains_flushes_the_log_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--grace-period-ms",
            "2000",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("partner-ledger listening on 127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("crm, attribution, commissions, compliance"),
        "{line}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    // A clean shutdown persists the index, so the next start does not rescan the log.
    assert!(dir.path().join("index.snap").exists());
}

/// What `serve` needs to know to check tokens (`--check-config` reads no file).
const AUTH_ENV: [(&str, &str); 4] = [
    ("PL_AUTH_POLICY", "/etc/partner-ledger/policy.toml"),
    ("PL_AUTH_JWKS", "/etc/partner-ledger/jwks.json"),
    ("PL_AUTH_ISSUER", "https://id.example"),
    ("PL_AUTH_AUDIENCE", "partner-ledger"),
];

#[test]
fn check_config_validates_and_exits_without_serving() {
    let out = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args(["serve", "attribution", "--bus", "nats", "--check-config"])
        .envs(AUTH_ENV)
        .env("PL_ATTRIBUTION_HASH_SALT", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("s3cret"),
        "secrets are not printed"
    );
    let no_salt = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args(["serve", "attribution", "--check-config"])
        .envs(AUTH_ENV)
        .env_remove("PL_ATTRIBUTION_HASH_SALT")
        .output()
        .unwrap();
    assert!(!no_salt.status.success());
    assert!(String::from_utf8_lossy(&no_salt.stderr).contains("attribution-hash-salt"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    let no_auth = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args(["serve", "commissions", "--check-config"])
        .output()
        .unwrap();
    assert!(!no_auth.status.success());
    assert!(String::from_utf8_lossy(&no_auth.stderr).contains("authentication"));
    let bad = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args([
            "serve",
            "attribution",
            "--listen",
            "not-an-address",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"));
}

#[test]
fn check_config_rejects_an_environment_variable_the_mode_does_not_read() {
    let typo = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args(["serve", "crm", "--check-config"])
        .env("PL_NATS_ULR", "nats://nats:4222")
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("PL_NATS_ULR"));
    let other_mode = Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args(["up", "--check-config"])
        .env("PL_STORE", "eventstoredb")
        .output()
        .unwrap();
    assert!(!other_mode.status.success());
    assert!(String::from_utf8_lossy(&other_mode.stderr).contains("PL_STORE"));
}
