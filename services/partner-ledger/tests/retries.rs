//! Every retry gets the original answer: every mutating RPC the API's descriptors list (so a
//! new one is covered without touching this file) is called 50 times at once with one key and
//! one body, in one process and then across a `kill -9` of the real binary; the answers must
//! agree, a recorded answer must come back unchanged after the crash, and none may be a fault
//! (INTERNAL, UNKNOWN, CANCELLED).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

#[path = "support/raw.rs"]
mod raw;
#[path = "support/requests.rs"]
mod requests;
#[path = "support/up.rs"]
mod up;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use raw::{call, is_fault, Answer};
use requests::{Api, Rpc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

const TWINS: usize = 50;
/// The binary prints where it listens within this after start.
const START_TIMEOUT_MS: u64 = 60_000;

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `TWINS` identical calls at once; their answers in the order they were sent.
async fn twins(channel: &Channel, rpc: &Rpc, body: &[u8]) -> Vec<Answer> {
    let calls: Vec<_> = (0..TWINS)
        .map(|_| tokio::spawn(call(channel.clone(), rpc.path.clone(), body.to_vec())))
        .collect();
    let mut answers = Vec::with_capacity(TWINS);
    for c in calls {
        answers.push(c.await.unwrap());
    }
    answers
}

fn key_of(rpc: &Rpc) -> String {
    format!("twins-{}", rpc.path.rsplit('/').next().unwrap())
}

/// Asserts that the twins agree and that none is a fault; returns their one answer.
fn agreed(rpc: &Rpc, answers: Vec<Answer>) -> Answer {
    let first = answers[0].clone();
    for a in &answers {
        assert_eq!(a, &first, "{}: twins answered differently", rpc.path);
    }
    if let Err((code, message)) = &first {
        assert!(!is_fault(*code), "{}: {code:?} {message}", rpc.path);
    }
    first
}

fn mutating(api: &Api) -> Vec<Rpc> {
    let mut rpcs: Vec<Rpc> = api.rpcs.iter().filter(|r| r.mutating).cloned().collect();
    requests::closing_last(&mut rpcs);
    assert!(
        rpcs.len() >= 40,
        "the descriptors list {} mutating RPCs",
        rpcs.len()
    );
    rpcs
}

/// Every mutating RPC in descriptor order, each as `TWINS` twins, on a fresh `up` in this
/// process: the reference answers.
async fn reference(api: &Api, rpcs: &[Rpc]) -> BTreeMap<String, Answer> {
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = up::start(dir.path()).await;
    let mut out = BTreeMap::new();
    for rpc in rpcs {
        let body = api.plausible(rpc, &key_of(rpc));
        let answer = agreed(rpc, twins(&channel, rpc, &body).await);
        out.insert(rpc.path.clone(), answer);
    }
    running.shutdown();
    running.wait().await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_rpc_called_fifty_times_at_once_with_one_key_answers_the_same_every_time() {
    let api = Api::load();
    let rpcs = mutating(&api);
    let answers = reference(&api, &rpcs).await;
    let succeeded = answers.values().filter(|a| a.is_ok()).count();
    eprintln!("{succeeded} of {} mutating RPCs succeeded", rpcs.len());
    // Plausible bodies reach the decision of most RPCs: the twins race where it matters.
    assert!(
        succeeded * 2 >= rpcs.len(),
        "only {succeeded} of {} RPCs succeeded: {:#?}",
        rpcs.len(),
        answers
            .iter()
            .map(|(p, a)| (p, a.as_ref().err()))
            .collect::<Vec<_>>()
    );
}

/// `partner-ledger up` as a child process (so it can be killed with SIGKILL).
async fn spawn_up(dir: &std::path::Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_partner-ledger"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("PL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_millis(START_TIMEOUT_MS), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("partner-ledger listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    // Keep reading so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_in_the_middle_every_retry_gets_the_original_answer() {
    let api = Api::load();
    let rpcs = mutating(&api);
    let expected = reference(&api, &rpcs).await;
    let dir = tempfile::tempdir().unwrap();

    // Before the crash: the first half in order, each as twins; then the next RPC's twins,
    // killed with SIGKILL as soon as the first of them is answered.
    let (mut child, addr) = spawn_up(dir.path()).await;
    let channel = connect(&addr).await;
    let middle = rpcs.len() / 2;
    let mut before = BTreeMap::new();
    for rpc in &rpcs[..middle] {
        let body = api.plausible(rpc, &key_of(rpc));
        before.insert(
            rpc.path.clone(),
            agreed(rpc, twins(&channel, rpc, &body).await),
        );
    }
    let killed = &rpcs[middle];
    let body = api.plausible(killed, &key_of(killed));
    let (first_answer, mut answered) = tokio::sync::mpsc::channel::<()>(TWINS);
    let calls: Vec<_> = (0..TWINS)
        .map(|_| {
            let (channel, path, body, done) = (
                channel.clone(),
                killed.path.clone(),
                body.clone(),
                first_answer.clone(),
            );
            tokio::spawn(async move {
                let answer = call(channel, path, body).await;
                let _ = done.send(()).await;
                answer
            })
        })
        .collect();
    answered.recv().await.unwrap();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let mut cut_short = Vec::new();
    for c in calls {
        cut_short.push(c.await.unwrap());
    }

    // After the restart: every RPC again, same keys, same bodies.
    let (child, addr) = spawn_up(dir.path()).await;
    let channel = connect(&addr).await;
    for rpc in &rpcs {
        let body = api.plausible(rpc, &key_of(rpc));
        let after = agreed(rpc, twins(&channel, rpc, &body).await);
        // A recorded answer comes back unchanged.
        if let Some(Ok(original)) = before.get(&rpc.path) {
            assert_eq!(after.as_ref().ok(), Some(original), "{}", rpc.path);
        }
        if rpc.path == killed.path {
            for a in cut_short.iter().filter(|a| a.is_ok()) {
                assert_eq!(&after, a, "{}: answered before the kill", rpc.path);
            }
        }
        // And what succeeded without a crash succeeds across one: a crash between an effect
        // and its record never turns a retry into ALREADY_EXISTS or FAILED_PRECONDITION.
        // (A failure may turn into a success: the second pass finds what the first made.)
        if expected[&rpc.path].is_ok() {
            assert!(after.is_ok(), "{}: after the crash {after:?}", rpc.path);
        }
    }
    drop(child);
}
