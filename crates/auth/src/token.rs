//! Bearer tokens: JWTs signed with one of the keys of the operator's JWKS file, asymmetric
//! algorithms only (RSA, RSA-PSS, ECDSA, EdDSA: a shared secret would let every service that
//! checks tokens also mint them). A token must name the configured issuer and audience, carry
//! `sub` and `exp`, and be within its `nbf`..`exp` window give or take the configured leeway;
//! its header's algorithm must be the key's (no algorithm confusion, no `alg: none`). Roles
//! come from the `roles` claim, a partner scope from `partner_id`.

use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Actor, AuthError};

/// The largest clock skew allowed between token issuers and this process.
pub const MAX_LEEWAY_S: u64 = 300;
/// Keys one JWKS file may hold, and the longest token accepted.
pub const MAX_KEYS: usize = 64;
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Roles one token may carry.
pub const MAX_ROLES: usize = 32;

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub jwks_path: PathBuf,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, at most [`MAX_LEEWAY_S`].
    pub leeway_s: u64,
}

#[derive(Clone)]
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    leeway_s: u64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    partner_id: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Verifier {
    /// Reads the JWKS file. Every key must be asymmetric and state its algorithm (`alg`), so
    /// that a token's header cannot choose how its signature is checked.
    pub fn load(settings: &TokenSettings) -> Result<Self, AuthError> {
        let path = &settings.jwks_path;
        let bad = |reason: String| AuthError::Keys {
            path: path.clone(),
            reason,
        };
        if settings.leeway_s > MAX_LEEWAY_S {
            return Err(bad(format!("a leeway above {MAX_LEEWAY_S} s is refused")));
        }
        if settings.issuer.is_empty() || settings.audience.is_empty() {
            return Err(bad("an issuer and an audience are required".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.clone(),
            source,
        })?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
            return Err(bad(format!("1 to {MAX_KEYS} keys are needed")));
        }
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(bad(format!(
                    "key {name} is symmetric (oct); only public keys are accepted"
                )));
            }
            let algorithm = jwk
                .common
                .key_algorithm
                .ok_or_else(|| bad(format!("key {name} states no `alg`")))
                .and_then(|a| {
                    Algorithm::from_str(&a.to_string())
                        .map_err(|_| bad(format!("key {name}: {a} is not a signing algorithm")))
                })?;
            if !ASYMMETRIC.contains(&algorithm) {
                return Err(bad(format!("key {name}: {algorithm:?} is not asymmetric")));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("key {name}: {e}")))?;
            keys.push(Key {
                id: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        Ok(Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_s: settings.leeway_s,
        })
    }

    /// The actor a token proves, or why it proves nothing.
    pub fn verify(&self, token: &str) -> Result<Actor, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!("longer than {MAX_TOKEN_BYTES} bytes"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed: {e}"))?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.id == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "no key {} in the key set",
                header.kid.as_deref().unwrap_or("")
            ));
        }
        let mut last = String::from("no key for its algorithm");
        for key in candidates {
            if key.algorithm != header.alg {
                last = format!(
                    "signed with {:?}, the key is {:?}",
                    header.alg, key.algorithm
                );
                continue;
            }
            let mut validation = Validation::new(key.algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.leeway = self.leeway_s;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return actor(data.claims, token),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }
}

fn actor(claims: Claims, token: &str) -> Result<Actor, String> {
    if claims.roles.len() > MAX_ROLES {
        return Err(format!("more than {MAX_ROLES} roles"));
    }
    let credential = claims.jti.unwrap_or_else(|| {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        digest.get(..16).unwrap_or(&digest).to_owned()
    });
    Ok(Actor {
        subject: claims.sub,
        roles: claims.roles,
        partner_id: claims.partner_id,
        credential,
    })
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("no `{c}` claim"),
        _ => e.to_string(),
    }
}
