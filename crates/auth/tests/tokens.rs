//! Tokens as a caller presents them, against a key set and a policy as an operator writes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use pl_auth::{AuthSettings, Authorizer, TokenSettings};

const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "partner-ledger";

struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn ed25519(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
    Signer {
        kid: kid.into(),
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": kid, "use": "sig" }),
    }
}

fn now() -> u64 {
    #[allow(clippy::disallowed_methods)] // tokens are judged at the real clock
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(roles: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "sub": "ana@finance", "iss": ISSUER, "aud": AUDIENCE, "roles": roles,
        "exp": now() + 600, "nbf": now() - 10, "jti": "tok-1",
    })
}

fn sign(signer: &Signer, claims: &serde_json::Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

const POLICY: &str = r#"
roles = ["finance", "auditor"]
[rpcs]
"a.S/Health" = ["anonymous"]
"a.S/Publish" = ["finance"]
"a.S/Read" = ["finance", "auditor"]
"a.S/Nobody" = []
"#;

fn authorizer(dir: &Path, keys: &[&Signer]) -> Authorizer {
    let jwks =
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    Authorizer::load(
        AuthSettings {
            policy_path: dir.join("policy.toml"),
            token: TokenSettings {
                jwks_path: dir.join("jwks.json"),
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                leeway_s: 30,
            },
        },
        ["a.S/Health", "a.S/Publish", "a.S/Read", "a.S/Nobody"]
            .map(String::from)
            .to_vec(),
    )
    .unwrap()
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

fn refusal(a: &Authorizer, rpc: &str, token: &str) -> (tonic::Code, String) {
    let s = a.decide(rpc, &bearer(token)).unwrap_err();
    (s.code(), s.message().to_owned())
}

#[test]
fn a_valid_token_with_an_allowed_role_is_the_calls_actor() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519("k1");
    let a = authorizer(dir.path(), &[&key]);
    let actor = a
        .decide("/a.S/Publish", &bearer(&sign(&key, &claims(&["finance"]))))
        .unwrap();
    assert_eq!(actor.subject, "ana@finance");
    assert_eq!(actor.roles, ["finance"]);
    assert_eq!(actor.credential, "tok-1");
}

#[test]
fn a_role_not_allowed_is_permission_denied_naming_the_roles_and_the_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519("k1");
    let a = authorizer(dir.path(), &[&key]);
    let (code, message) = refusal(&a, "/a.S/Publish", &sign(&key, &claims(&["auditor"])));
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(
        message.contains("[auditor]")
            && message.contains("a.S/Publish")
            && message.contains("[finance]"),
        "{message}"
    );
    let (code, _) = refusal(
        &a,
        "/a.S/Nobody",
        &sign(&key, &claims(&["finance", "auditor"])),
    );
    assert_eq!(code, tonic::Code::PermissionDenied);
    let (code, message) = refusal(&a, "/a.S/Unlisted", &sign(&key, &claims(&["finance"])));
    assert_eq!(code, tonic::Code::PermissionDenied);
    assert!(message.contains("not in the policy"), "{message}");
}

#[test]
fn no_credentials_are_unauthenticated_except_where_the_policy_allows_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519("k1");
    let a = authorizer(dir.path(), &[&key]);
    let none = http::HeaderMap::new();
    assert_eq!(
        a.decide("/a.S/Read", &none).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(a.decide("/a.S/Health", &none).unwrap().subject, "anonymous");
    let mut basic = http::HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        "Basic YWRtaW46YWRtaW4=".parse().unwrap(),
    );
    assert_eq!(
        a.decide("/a.S/Health", &basic).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

#[test]
fn expired_early_wrong_audience_wrong_issuer_and_foreign_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519("k1");
    let a = authorizer(dir.path(), &[&key]);
    let with = |field: &str, value: serde_json::Value| {
        let mut c = claims(&["finance"]);
        c[field] = value;
        sign(&key, &c)
    };
    let cases = [
        ("expired", with("exp", (now() - 120).into())),
        ("not valid yet", with("nbf", (now() + 120).into())),
        ("wrong audience", with("aud", "someone-else".into())),
        ("wrong issuer", with("iss", "https://evil.example".into())),
    ];
    for (why, token) in cases {
        let (code, message) = refusal(&a, "/a.S/Read", &token);
        assert_eq!(code, tonic::Code::Unauthenticated, "{why}");
        assert!(message.contains(why), "{why}: {message}");
    }
    // Signed by a key that is not in the set, under the set's key id.
    let stranger = ed25519("k1");
    let (code, message) = refusal(&a, "/a.S/Read", &sign(&stranger, &claims(&["finance"])));
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(message.contains("bad signature"), "{message}");
    // Within the leeway an expired token still passes.
    let (_, _) = (
        a.decide("/a.S/Read", &bearer(&with("exp", (now() - 10).into())))
            .unwrap(),
        (),
    );
}

#[test]
fn alg_none_and_a_symmetric_signature_over_the_public_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519("k1");
    let a = authorizer(dir.path(), &[&key]);
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&serde_json::json!({ "alg": "none", "typ": "JWT", "kid": "k1" })),
        b64(&claims(&["finance"]))
    );
    assert_eq!(
        refusal(&a, "/a.S/Read", &unsigned).0,
        tonic::Code::Unauthenticated
    );
    // HS256 keyed with the public key's bytes: the classic algorithm confusion.
    let x = key.jwk["x"].as_str().unwrap();
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(&["finance"]),
        &EncodingKey::from_secret(x.as_bytes()).unwrap(),
    )
    .unwrap();
    let (code, message) = refusal(&a, "/a.S/Read", &forged);
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(message.contains("HS256"), "{message}");
}

#[test]
fn a_key_set_with_a_shared_secret_or_a_policy_missing_an_rpc_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519("k1");
    let _ = authorizer(dir.path(), &[&key]);
    std::fs::write(
        dir.path().join("jwks.json"),
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"s"}]}"#,
    )
    .unwrap();
    let settings = AuthSettings {
        policy_path: dir.path().join("policy.toml"),
        token: TokenSettings {
            jwks_path: dir.path().join("jwks.json"),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_s: 30,
        },
    };
    let rpcs = ["a.S/Health", "a.S/Publish", "a.S/Read", "a.S/Nobody"]
        .map(String::from)
        .to_vec();
    let err = Authorizer::load(settings.clone(), rpcs).unwrap_err();
    assert!(err.to_string().contains("symmetric"), "{err}");
    std::fs::write(
        dir.path().join("jwks.json"),
        serde_json::json!({ "keys": [key.jwk] }).to_string(),
    )
    .unwrap();
    let err = Authorizer::load(
        settings,
        ["a.S/Health", "a.S/Extra"].map(String::from).to_vec(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("a.S/Extra"), "{err}");
}

#[test]
fn a_reload_puts_a_rotated_key_in_use_and_a_broken_file_leaves_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (ed25519("k1"), ed25519("k2"));
    let a = authorizer(dir.path(), &[&old]);
    let by_new = sign(&new, &claims(&["finance"]));
    assert!(a.decide("/a.S/Read", &bearer(&by_new)).is_err());
    std::fs::write(
        dir.path().join("jwks.json"),
        serde_json::json!({ "keys": [old.jwk, new.jwk] }).to_string(),
    )
    .unwrap();
    a.reload().unwrap();
    assert!(a.decide("/a.S/Read", &bearer(&by_new)).is_ok());
    std::fs::write(dir.path().join("jwks.json"), "{ half written").unwrap();
    assert!(a.reload().is_err());
    assert!(
        a.decide("/a.S/Read", &bearer(&by_new)).is_ok(),
        "the keys in use stay"
    );
}
