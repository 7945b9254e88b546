//! `partner-ledger auth`: the JWKS of an Ed25519 public key, and tokens signed with its private
//! key, for operators without an identity provider. Reads the key files it is given; prints;
//! writes nothing.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::config::AuthCommand;

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What to print, or why not.
pub fn run(command: &AuthCommand) -> Result<String, String> {
    match command {
        AuthCommand::Jwks { public_key, kid } => {
            let key = VerifyingKey::from_public_key_pem(&read(public_key)?)
                .map_err(|e| format!("{}: not an Ed25519 public key: {e}", public_key.display()))?;
            Ok(pl_auth::issue::jwks_of_ed25519(key.as_bytes(), kid).to_string())
        }
        AuthCommand::Token {
            private_key,
            kid,
            subject,
            roles,
            partner_id,
            issuer,
            audience,
            ttl_s,
        } => {
            let key = SigningKey::from_pkcs8_pem(&read(private_key)?).map_err(|e| {
                format!("{}: not an Ed25519 private key: {e}", private_key.display())
            })?;
            let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            #[allow(clippy::disallowed_methods)] // a token's validity is the real clock's
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            let grant = pl_auth::issue::Grant {
                sub: subject.clone(),
                roles: roles.clone(),
                partner_id: partner_id.clone(),
                iss: issuer.clone(),
                aud: audience.clone(),
                nbf: now,
                exp: now.saturating_add(*ttl_s),
                // The token's id, named in the log's records of what it did.
                jti: format!("{subject}-{now}"),
            };
            pl_auth::issue::mint(&grant, der.as_bytes(), kid)
        }
    }
}
