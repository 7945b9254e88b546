//! A bounded fuzz pass over every RPC's request validation: each RPC the descriptors list
//! gets plausible bodies flipped, cut, extended or replaced at random (a seeded generator:
//! the seed is printed). No answer may be a fault (INTERNAL, UNKNOWN, CANCELLED), the server
//! must keep answering, and a mutating RPC that refused every body appended nothing.
//!
//! A longer run: `PL_FUZZ_ROUNDS=2000 PL_FUZZ_SEED=<n> cargo test -p partner-ledger --test
//! fuzz` (CI runs `DEFAULT_ROUNDS` per RPC).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

#[path = "support/raw.rs"]
mod raw;
#[path = "support/requests.rs"]
mod requests;
#[path = "support/up.rs"]
mod up;

use pl_proto::audit::v1::audit_service_client::AuditServiceClient;
use pl_proto::audit::v1::VerifyRequest;
use raw::{call, call_streaming, is_fault};
use requests::{Api, XorShift};
use tonic::transport::Channel;

const DEFAULT_ROUNDS: u64 = 12;
const DEFAULT_SEED: u64 = 0x5eed_f00d_cafe_0001;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Events in the log, as the audit service counts them.
async fn events(channel: &Channel) -> u64 {
    AuditServiceClient::new(channel.clone())
        .verify(VerifyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events_checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_given_mangled_bodies_answers_a_documented_code_and_a_refusal_appends_nothing() {
    let rounds = env_u64("PL_FUZZ_ROUNDS", DEFAULT_ROUNDS);
    let seed = env_u64("PL_FUZZ_SEED", DEFAULT_SEED);
    eprintln!("fuzz: {rounds} rounds per RPC, seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let (running, channel) = up::start(dir.path()).await;
    let api = Api::load();
    let mut rng = XorShift(seed | 1);
    let mut calls = 0u64;
    for (n, rpc) in api.rpcs.iter().enumerate() {
        let before = events(&channel).await;
        let mut accepted = 0;
        for round in 0..rounds {
            let body = api.plausible(rpc, &format!("fuzz-{n}-{round}"));
            let mangled = rng.mutate(&body);
            let answer = if rpc.streaming {
                call_streaming(channel.clone(), rpc.path.clone(), mangled.clone()).await
            } else {
                call(channel.clone(), rpc.path.clone(), mangled.clone()).await
            };
            calls += 1;
            match answer {
                Ok(_) => accepted += 1,
                Err((code, message)) => assert!(
                    !is_fault(code),
                    "{} (seed {seed}, round {round}) answered {code:?}: {message}\nbody: {mangled:02x?}",
                    rpc.path
                ),
            }
        }
        if rpc.mutating && accepted == 0 {
            assert_eq!(
                events(&channel).await,
                before,
                "{}: refused every body, yet the log grew",
                rpc.path
            );
        }
    }
    eprintln!("fuzz: {calls} calls over {} RPCs", api.rpcs.len());
    running.shutdown();
    running.wait().await.unwrap();
}
