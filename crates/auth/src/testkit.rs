//! For tests only (feature `testkit`): a token issuer with a fresh Ed25519 key, its JWKS file
//! and the repository's policy written into a directory, the `--auth-*` arguments that point a
//! process at them, and tokens for any roles.

use std::path::{Path, PathBuf};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::{AuthSettings, TokenSettings};

pub const ISSUER: &str = "https://id.partner-ledger.test";
pub const AUDIENCE: &str = "partner-ledger";
/// Every role of the repository's policy: a token that may call anything a role may.
pub const ALL_ROLES: [&str; 7] = [
    "ingest",
    "partner-manager",
    "finance",
    "payout-approver",
    "compliance-officer",
    "auditor",
    "operator",
];

/// The repository's policy file (`deploy/base/policy.toml`, mounted from a ConfigMap).
pub fn repository_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/policy.toml")
}

#[derive(Debug)]
pub struct TestIssuer {
    pub policy_path: PathBuf,
    pub jwks_path: PathBuf,
    key: Vec<u8>,
}

impl TestIssuer {
    /// Writes a fresh key's JWKS into `dir` and uses the repository's policy.
    pub fn new(dir: &Path) -> Result<Self, String> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| e.to_string())?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        let jwks = serde_json::json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": "test", "use": "sig",
        }] });
        let jwks_path = dir.join("jwks.json");
        std::fs::write(&jwks_path, jwks.to_string()).map_err(|e| e.to_string())?;
        Ok(Self {
            policy_path: repository_policy(),
            jwks_path,
            key: pair.serialize_der(),
        })
    }

    /// A token for `subject` with `roles`, valid for an hour.
    pub fn token(&self, subject: &str, roles: &[&str]) -> Result<String, String> {
        #[allow(clippy::disallowed_methods)] // a token's times are the real clock's
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = serde_json::json!({
            "sub": subject, "iss": ISSUER, "aud": AUDIENCE, "roles": roles,
            "exp": now + 3600, "nbf": now - 60,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("test".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.key))
            .map_err(|e| e.to_string())
    }

    /// The command-line arguments that make a process check tokens from this issuer.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--auth-policy".into(),
            self.policy_path.to_string_lossy().into_owned(),
            "--auth-jwks".into(),
            self.jwks_path.to_string_lossy().into_owned(),
            "--auth-issuer".into(),
            ISSUER.into(),
            "--auth-audience".into(),
            AUDIENCE.into(),
        ]
    }

    pub fn settings(&self) -> AuthSettings {
        AuthSettings {
            policy_path: self.policy_path.clone(),
            token: TokenSettings {
                jwks_path: self.jwks_path.clone(),
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                leeway_s: 30,
            },
        }
    }
}
