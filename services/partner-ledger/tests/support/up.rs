//! `partner-ledger up` inside the test's process, on a data directory, and a channel to it.

// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use partner_ledger::app::{self, Running};
use partner_ledger::config::{Cli, Command};
use tonic::transport::Channel;

pub async fn start(dir: &std::path::Path) -> (Running, Channel) {
    start_with(dir, &[]).await
}

/// [`start`] with more command-line arguments (`--auth-*`).
pub async fn start_with(dir: &std::path::Path, extra: &[String]) -> (Running, Channel) {
    let mut args: Vec<String> = [
        "partner-ledger",
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--grace-period-ms",
        "2000",
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(extra);
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
    let Command::Up(args) = cli.command else {
        unreachable!()
    };
    let running = app::start_up(&args).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", running.local_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (running, channel)
}
