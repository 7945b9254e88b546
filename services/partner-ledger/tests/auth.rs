//! Who may call what, proved on the running system: every RPC of every service (from the API's
//! descriptors, so a new one is covered without touching this file) called as every role and
//! without credentials, each answer checked against the repository's policy; the anonymous
//! payout chain refused at its first privileged step; and the modes that must not start
//! without authentication refusing to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

#[path = "support/raw.rs"]
mod raw;
#[path = "support/requests.rs"]
mod requests;
#[path = "support/up.rs"]
mod up;

use pl_auth::testkit::{TestIssuer, ALL_ROLES};
use pl_auth::Policy;
use raw::{call_as, call_streaming_as, Answer};
use requests::Api;
use tonic::Code;

fn refused(answer: &Answer) -> Option<Code> {
    match answer {
        Err((code @ (Code::Unauthenticated | Code::PermissionDenied), _)) => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_role_and_no_credential_exactly_as_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(dir.path()).unwrap();
    let policy = Policy::parse(&std::fs::read_to_string(&issuer.policy_path).unwrap()).unwrap();
    let (running, channel) = up::start_with(&dir.path().join("data"), &issuer.args()).await;
    let api = Api::load();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for rpc in &api.rpcs {
        let name = rpc.path.trim_start_matches('/');
        let allowed = policy
            .roles_for(name)
            .unwrap_or_else(|| panic!("{name} is not in deploy/base/policy.toml"));
        let callers = ALL_ROLES.iter().map(|r| Some(*r)).chain([None]);
        for role in callers {
            let token = role.map(|r| issuer.token(&format!("{r}-tester"), &[r]).unwrap());
            let key = format!("auth-{name}-{}", role.unwrap_or("none"));
            let body = api.plausible(rpc, &key);
            let answer = if rpc.streaming {
                call_streaming_as(channel.clone(), rpc.path.clone(), body, token.as_deref()).await
            } else {
                call_as(channel.clone(), rpc.path.clone(), body, token.as_deref()).await
            };
            let expected = match role {
                None if allowed.iter().any(|r| r == pl_auth::ANONYMOUS) => None,
                None => Some(Code::Unauthenticated),
                Some(r) if allowed.iter().any(|a| a == r || a == pl_auth::ANONYMOUS) => None,
                Some(_) => Some(Code::PermissionDenied),
            };
            if refused(&answer) != expected {
                mismatches.push(format!(
                    "{name} as {role:?}: expected {expected:?}, got {answer:?}"
                ));
            }
            checked += 1;
        }
    }
    running.shutdown();
    running.wait().await.unwrap();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(checked >= api.rpcs.len() * 8, "{checked}");
}

/// The chain an anonymous client once ran to pay itself 1,000,000.00: publish a plan, apply,
/// assign it, record a sale, record its own KYC and tax form, mature, create a payout run,
/// settle. Without credentials, and as every role but finance and payout-approver, it stops at
/// its first step that role may not take, with nothing written by the refused call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anonymous_payout_chain_is_refused_at_its_first_privileged_step_for_every_other_role() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(dir.path()).unwrap();
    let policy = Policy::parse(&std::fs::read_to_string(&issuer.policy_path).unwrap()).unwrap();
    let (running, channel) = up::start_with(&dir.path().join("data"), &issuer.args()).await;
    let api = Api::load();
    let chain = [
        "partnerledger.commissions.v1.CommissionsService/PublishPlanVersion",
        "partnerledger.crm.v1.PartnerCrmService/ApplyPartner",
        "partnerledger.commissions.v1.CommissionsService/AssignPlan",
        "partnerledger.attribution.v1.AttributionService/RecordConversion",
        "partnerledger.compliance.v1.ComplianceService/RecordVerification",
        "partnerledger.commissions.v1.CommissionsService/MatureCommissions",
        "partnerledger.commissions.v1.CommissionsService/CreatePayoutRun",
        "partnerledger.commissions.v1.CommissionsService/SettlePayoutItem",
    ];
    let callers = ALL_ROLES
        .iter()
        .filter(|r| !["finance", "payout-approver"].contains(r))
        .map(|r| Some(*r))
        .chain([None]);
    for role in callers {
        let token = role.map(|r| issuer.token("chain", &[r]).unwrap());
        let first_refused = chain.iter().find_map(|name| {
            let allowed = policy.roles_for(name).unwrap();
            let may = role.is_some_and(|r| allowed.iter().any(|a| a == r));
            (!may).then_some(*name)
        });
        let name = first_refused.unwrap_or_else(|| panic!("{role:?} may run the whole chain"));
        let rpc = api
            .rpcs
            .iter()
            .find(|r| r.path == format!("/{name}"))
            .unwrap();
        let answer = call_as(
            channel.clone(),
            rpc.path.clone(),
            api.plausible(rpc, "chain"),
            token.as_deref(),
        )
        .await;
        let want = if role.is_none() {
            Code::Unauthenticated
        } else {
            Code::PermissionDenied
        };
        assert_eq!(
            refused(&answer),
            Some(want),
            "{role:?} at {name}: {answer:?}"
        );
        // No role but finance may publish the plan the chain starts with.
        assert_eq!(name, chain[0], "{role:?}");
    }
    running.shutdown();
    running.wait().await.unwrap();
}

#[test]
fn serve_never_runs_and_up_off_loopback_never_runs_without_authentication() {
    use partner_ledger::config::{Cli, Command};
    let parse = |args: &[&str]| <Cli as clap::Parser>::try_parse_from(args).unwrap().command;
    let Command::Serve(serve) = parse(&["partner-ledger", "serve", "commissions"]) else {
        unreachable!()
    };
    let err = partner_ledger::app::validate_serve(&serve).unwrap_err();
    assert!(
        err.to_string()
            .contains("never runs without authentication"),
        "{err}"
    );
    let Command::Up(up) = parse(&["partner-ledger", "up", "--listen", "0.0.0.0:50051"]) else {
        unreachable!()
    };
    let err = partner_ledger::app::validate_up(&up).unwrap_err();
    assert!(err.to_string().contains("needs authentication"), "{err}");
    let Command::Up(up) = parse(&[
        "partner-ledger",
        "up",
        "--listen",
        "0.0.0.0:50051",
        "--auth-policy",
        "p.toml",
        "--auth-jwks",
        "k.json",
        "--auth-issuer",
        "i",
        "--auth-audience",
        "a",
    ]) else {
        unreachable!()
    };
    let err = partner_ledger::app::validate_up(&up).unwrap_err();
    assert!(err.to_string().contains("development salt"), "{err}");
    let Command::Up(up) = parse(&["partner-ledger", "up"]) else {
        unreachable!()
    };
    partner_ledger::app::validate_up(&up).unwrap();
    let Command::Up(half) = parse(&["partner-ledger", "up", "--auth-policy", "p.toml"]) else {
        unreachable!()
    };
    let err = partner_ledger::app::validate_up(&half).unwrap_err();
    assert!(err.to_string().contains("needs all of"), "{err}");
}

/// Nothing in the log said who paid whom. Every request's record now names its actor: the
/// token's subject, roles and id, hash-chained with the rest of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_records_who_made_each_request() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new(dir.path()).unwrap();
    let data = dir.path().join("data");
    let (running, channel) = up::start_with(&data, &issuer.args()).await;
    let api = Api::load();
    let name = "partnerledger.crm.v1.PartnerCrmService/CreateProgram";
    let rpc = api
        .rpcs
        .iter()
        .find(|r| r.path == format!("/{name}"))
        .unwrap();
    let token = issuer.token("mia@partners", &["partner-manager"]).unwrap();
    let answer = call_as(
        channel.clone(),
        rpc.path.clone(),
        api.plausible(rpc, "actor-trail"),
        Some(&token),
    )
    .await;
    assert!(answer.is_ok(), "{answer:?}");
    running.shutdown();
    running.wait().await.unwrap();
    let (log, _) =
        pl_eventlog::EmbeddedLog::open_read_only(&data, pl_eventlog::Limits::default()).unwrap();
    let records = pl_eventlog::EventStore::read_stream(&log, "idempotency-crm-actor-trail", 0, 1)
        .await
        .unwrap();
    let record: serde_json::Value = records[0].data_as().unwrap();
    assert_eq!(record["actor"]["subject"], "mia@partners");
    assert_eq!(
        record["actor"]["roles"],
        serde_json::json!(["partner-manager"])
    );
    assert_eq!(record["actor"]["credential"].as_str().unwrap().len(), 16);
}

/// An operator without an identity provider: an Ed25519 key pair (as `openssl genpkey` writes
/// it), `partner-ledger auth jwks` for the service, `partner-ledger auth token` for a person;
/// the token is accepted with the role it names, and only that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pair_the_auth_commands_turn_into_a_key_set_and_a_token_lets_a_person_in() {
    use ed25519_dalek::pkcs8::{spki::EncodePublicKey, EncodePrivateKey};
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[11; 32]);
    let (private, public) = (dir.path().join("key.pem"), dir.path().join("key.pub.pem"));
    std::fs::write(
        &private,
        key.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
    )
    .unwrap();
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    std::fs::write(&public, public_pem).unwrap();
    let bin = env!("CARGO_BIN_EXE_partner-ledger");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let jwks = run(&[
        "auth",
        "jwks",
        "--public-key",
        public.to_str().unwrap(),
        "--kid",
        "ops-1",
    ]);
    std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
    let token = run(&[
        "auth",
        "token",
        "--private-key",
        private.to_str().unwrap(),
        "--kid",
        "ops-1",
        "--subject",
        "ana@example.com",
        "--role",
        "finance",
        "--issuer",
        "https://id.example.com",
    ]);
    let policy = pl_auth::testkit::repository_policy();
    let args: Vec<String> = [
        "--auth-policy",
        policy.to_str().unwrap(),
        "--auth-jwks",
        dir.path().join("jwks.json").to_str().unwrap(),
        "--auth-issuer",
        "https://id.example.com",
        "--auth-audience",
        "partner-ledger",
    ]
    .map(String::from)
    .to_vec();
    let (running, channel) = up::start_with(&dir.path().join("data"), &args).await;
    let api = Api::load();
    let call = |name: &str| {
        let rpc = api
            .rpcs
            .iter()
            .find(|r| r.path == format!("/{name}"))
            .unwrap();
        call_as(
            channel.clone(),
            rpc.path.clone(),
            api.plausible(rpc, "ops"),
            Some(&token),
        )
    };
    let finance = call("partnerledger.commissions.v1.CommissionsService/GetPayoutRun").await;
    assert_eq!(refused(&finance), None, "{finance:?}");
    let crm = call("partnerledger.crm.v1.PartnerCrmService/ApplyPartner").await;
    assert_eq!(refused(&crm), Some(Code::PermissionDenied), "{crm:?}");
    running.shutdown();
    running.wait().await.unwrap();
}
