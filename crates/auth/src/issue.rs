//! Tokens for operators without an identity provider (service accounts, tools, a first
//! administrator): the JWKS entry of an Ed25519 public key, and tokens signed with its private
//! key. The keys themselves come from `openssl genpkey -algorithm ed25519`; nothing here
//! generates or stores one.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The longest token this mints: a day. Longer-lived credentials belong in the identity
/// provider, where they can be revoked.
pub const MAX_TTL_S: u64 = 24 * 3600;

/// The JWKS document (one key) of a raw 32-byte Ed25519 public key.
pub fn jwks_of_ed25519(public_key: &[u8; 32], kid: &str) -> serde_json::Value {
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key);
    serde_json::json!({ "keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": kid, "use": "sig",
    }] })
}

/// What a minted token says.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub sub: String,
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    pub iss: String,
    pub aud: String,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

/// Signs `grant` with the PKCS#8 DER Ed25519 key `key_der`, under key id `kid`.
pub fn mint(grant: &Grant, key_der: &[u8], kid: &str) -> Result<String, String> {
    if grant.exp <= grant.nbf || grant.exp - grant.nbf > MAX_TTL_S {
        return Err(format!("a token lives 1 s to {MAX_TTL_S} s"));
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, grant, &EncodingKey::from_ed_der(key_der))
        .map_err(|e| e.to_string())
}
