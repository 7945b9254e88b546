//! Trust at the gRPC boundary: who is calling (a bearer token, a JWT verified against the keys
//! of the operator's JWKS file) and whether they may call this RPC (the policy file: the roles
//! allowed per RPC, default deny). [`AuthLayer`] applies both in front of every service, refuses
//! with `UNAUTHENTICATED` or `PERMISSION_DENIED` before any handler runs (so a refused call
//! appends nothing), and makes the caller's [`Actor`] available to the handler's task
//! ([`current_actor`]). It reads its files only when built or reloaded, never writes, never
//! reads the log, and implements no cryptography itself (jsonwebtoken does).

#![forbid(unsafe_code)]

pub mod issue;
mod layer;
pub mod policy;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod token;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use layer::{AuthLayer, AuthService};
pub use policy::{Policy, PolicyError, ANONYMOUS};
pub use token::{TokenSettings, Verifier};

/// Who made a call, as its credential proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's subject (`sub`); `anonymous` for a call the policy lets anyone make without
    /// a credential; `local` when the process runs without authentication (`up` on loopback).
    pub subject: String,
    pub roles: Vec<String>,
    /// Set for a partner-scoped token: the partner it speaks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    /// Which credential: the token's id (`jti`), else the first 16 hex digits of its SHA-256.
    pub credential: String,
}

impl Actor {
    pub fn anonymous() -> Self {
        Self {
            subject: ANONYMOUS.to_owned(),
            roles: vec![],
            partner_id: None,
            credential: String::new(),
        }
    }

    /// The caller of a process that runs without authentication (loopback only).
    pub fn local() -> Self {
        Self {
            subject: "local".to_owned(),
            roles: vec![],
            partner_id: None,
            credential: String::new(),
        }
    }
}

tokio::task_local! {
    static ACTOR: Actor;
}

/// The actor of the call whose handler is running, when called inside one.
pub fn current_actor() -> Option<Actor> {
    ACTOR.try_with(Clone::clone).ok()
}

/// Why the authorizer could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("jwks {path}: {reason}")]
    Keys { path: PathBuf, reason: String },
}

/// Where the authorizer's files are and what tokens must say.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub policy_path: PathBuf,
    pub token: TokenSettings,
}

/// The policy and the token verifier, reloadable from their files without a restart.
#[derive(Debug)]
pub struct Authorizer {
    settings: AuthSettings,
    /// Every RPC the process may serve: a policy that leaves one out is refused.
    rpcs: Vec<String>,
    current: RwLock<Arc<(Policy, Verifier)>>,
    /// The files' modification times when last read, for [`Authorizer::reload_if_changed`].
    read_at: std::sync::Mutex<[Option<std::time::SystemTime>; 2]>,
}

impl Authorizer {
    /// Loads the policy (which must name every one of `rpcs`) and the keys.
    pub fn load(settings: AuthSettings, rpcs: Vec<String>) -> Result<Self, AuthError> {
        let read_at = std::sync::Mutex::new(Self::modified(&settings));
        let loaded = Self::read(&settings, &rpcs)?;
        Ok(Self {
            settings,
            rpcs,
            current: RwLock::new(Arc::new(loaded)),
            read_at,
        })
    }

    fn modified(settings: &AuthSettings) -> [Option<std::time::SystemTime>; 2] {
        [&settings.policy_path, &settings.token.jwks_path]
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }

    /// [`Authorizer::reload`] when either file changed since it was last read (a rotated key,
    /// a policy edited through its ConfigMap). `Ok(true)` when it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, AuthError> {
        let now = Self::modified(&self.settings);
        let mut read_at = self
            .read_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *read_at == now {
            return Ok(false);
        }
        // Recorded first: a broken file is reported once, not on every check until it changes.
        *read_at = now;
        drop(read_at);
        self.reload().map(|()| true)
    }

    fn read(settings: &AuthSettings, rpcs: &[String]) -> Result<(Policy, Verifier), AuthError> {
        let text =
            std::fs::read_to_string(&settings.policy_path).map_err(|source| AuthError::Read {
                path: settings.policy_path.clone(),
                source,
            })?;
        let policy = Policy::parse(&text)?;
        policy.check_complete(rpcs)?;
        let verifier = Verifier::load(&settings.token)?;
        Ok((policy, verifier))
    }

    /// Reads both files again and puts them in use; on any error the ones in use stay (a
    /// half-written file during a rotation must not lock everyone out) and the error is
    /// returned for the caller to log.
    pub fn reload(&self) -> Result<(), AuthError> {
        let loaded = Self::read(&self.settings, &self.rpcs)?;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Arc::new(loaded);
        Ok(())
    }

    fn snapshot(&self) -> Arc<(Policy, Verifier)> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Who calls `path` (`/package.Service/Method`) with these headers, if they may.
    pub fn decide(&self, path: &str, headers: &http::HeaderMap) -> Result<Actor, tonic::Status> {
        let rpc = path.trim_start_matches('/');
        let state = self.snapshot();
        let (policy, verifier) = (&state.0, &state.1);
        let Some(allowed) = policy.roles_for(rpc) else {
            return Err(tonic::Status::permission_denied(format!(
                "{rpc} is not in the policy: nobody may call it"
            )));
        };
        let anyone = allowed.iter().any(|r| r == ANONYMOUS);
        let token = match bearer(headers) {
            Ok(token) => token,
            // No credential where anyone may call; a malformed one is refused everywhere.
            Err(Missing::None) if anyone => return Ok(Actor::anonymous()),
            Err(reason) => return Err(tonic::Status::unauthenticated(reason.message())),
        };
        let actor = verifier.verify(token).map_err(|reason| {
            tracing::info!(rpc, %reason, "call refused: token");
            tonic::Status::unauthenticated(format!("token refused: {reason}"))
        })?;
        if anyone || actor.roles.iter().any(|r| allowed.contains(r)) {
            return Ok(actor);
        }
        tracing::info!(rpc, subject = %actor.subject, roles = ?actor.roles, "call refused: role");
        Err(tonic::Status::permission_denied(format!(
            "{} with roles [{}] may not call {rpc} (roles allowed: [{}])",
            actor.subject,
            actor.roles.join(", "),
            allowed.join(", ")
        )))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    None,
    NotBearer,
}

impl Missing {
    fn message(self) -> &'static str {
        match self {
            Missing::None => "no credentials: send `authorization: Bearer <token>`",
            Missing::NotBearer => "the authorization header is not `Bearer <token>`",
        }
    }
}

fn bearer(headers: &http::HeaderMap) -> Result<&str, Missing> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Missing::None);
    };
    let value = value.to_str().map_err(|_| Missing::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(Missing::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Missing::NotBearer);
    }
    Ok(token.trim())
}
