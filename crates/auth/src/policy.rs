//! The policy file: which roles may call which RPC. Default deny: an RPC the file does not
//! name is refused to everyone, and a file that leaves out an RPC the process serves is refused
//! at start, so no RPC can be added without a decision about who may call it.
//!
//! ```toml
//! roles = ["finance", "auditor"]
//!
//! [rpcs]
//! "grpc.health.v1.Health/Check" = ["anonymous"]
//! "partnerledger.commissions.v1.CommissionsService/PublishPlanVersion" = ["finance"]
//! "partnerledger.commissions.v1.CommissionsService/GetBalances" = ["finance", "auditor"]
//! "partnerledger.commissions.v1.CommissionsService/SettlePayoutItem" = []   # nobody
//! ```

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use serde::Deserialize;

/// The pseudo-role of calls that need no credential (health probes).
pub const ANONYMOUS: &str = "anonymous";
/// Bounds on what a policy file may hold.
pub const MAX_ROLES: usize = 64;
pub const MAX_RPCS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    roles: Vec<String>,
    rpcs: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    roles: BTreeSet<String>,
    rpcs: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy: {0}")]
    Syntax(String),
    #[error("policy: role {role:?} of {rpc} is not declared in `roles`")]
    UndeclaredRole { rpc: String, role: String },
    #[error("policy: at most {MAX_ROLES} roles and {MAX_RPCS} rpcs")]
    TooLarge,
    #[error(
        "policy: these rpcs are served but not in the policy (list each, with [] for nobody): {0}"
    )]
    Missing(String),
    #[error("policy: these rpcs are not served by any service (a typo?): {0}")]
    Unknown(String),
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: File = toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        if file.roles.len() > MAX_ROLES || file.rpcs.len() > MAX_RPCS {
            return Err(PolicyError::TooLarge);
        }
        let roles: BTreeSet<String> = file.roles.into_iter().collect();
        for (rpc, allowed) in &file.rpcs {
            if let Some(role) = allowed
                .iter()
                .find(|r| *r != ANONYMOUS && !roles.contains(*r))
            {
                return Err(PolicyError::UndeclaredRole {
                    rpc: rpc.clone(),
                    role: role.clone(),
                });
            }
        }
        Ok(Self {
            roles,
            rpcs: file.rpcs,
        })
    }

    /// The roles that may call `rpc` (`package.Service/Method`); `None` when the policy does
    /// not name it.
    pub fn roles_for(&self, rpc: &str) -> Option<&[String]> {
        self.rpcs.get(rpc).map(Vec::as_slice)
    }

    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(String::as_str)
    }

    /// Refuses a policy that leaves out one of `served`, or names an RPC not among them.
    pub fn check_complete(&self, served: &[String]) -> Result<(), PolicyError> {
        let missing: Vec<&str> = served
            .iter()
            .filter(|rpc| !self.rpcs.contains_key(*rpc))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(PolicyError::Missing(missing.join(", ")));
        }
        let unknown: Vec<&str> = self
            .rpcs
            .keys()
            .filter(|rpc| !served.contains(rpc))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(PolicyError::Unknown(unknown.join(", ")));
        }
        Ok(())
    }
}

/// Every RPC (`package.Service/Method`) of the services in an encoded `FileDescriptorSet`.
pub fn rpcs_of(descriptor_set: &[u8]) -> Result<Vec<String>, prost::DecodeError> {
    let set = prost_types::FileDescriptorSet::decode(descriptor_set)?;
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(format!(
                    "{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    Ok(rpcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVED: [&str; 2] = ["a.S/Get", "a.S/Put"];

    fn served() -> Vec<String> {
        SERVED.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_policy_naming_every_rpc_gives_each_its_roles_and_nobody_the_others() {
        let p = Policy::parse(
            r#"
            roles = ["finance", "auditor"]
            [rpcs]
            "a.S/Get" = ["finance", "auditor"]
            "a.S/Put" = []
            "#,
        )
        .unwrap();
        p.check_complete(&served()).unwrap();
        assert_eq!(p.roles_for("a.S/Get").unwrap(), ["finance", "auditor"]);
        assert!(p.roles_for("a.S/Put").unwrap().is_empty());
        assert_eq!(p.roles_for("a.S/Delete"), None);
    }

    #[test]
    fn a_policy_that_leaves_out_a_served_rpc_or_names_an_unknown_one_is_refused() {
        let p = Policy::parse("roles = []\n[rpcs]\n\"a.S/Get\" = []\n").unwrap();
        assert_eq!(
            p.check_complete(&served()),
            Err(PolicyError::Missing("a.S/Put".into()))
        );
        let p = Policy::parse(
            "roles = []\n[rpcs]\n\"a.S/Get\" = []\n\"a.S/Put\" = []\n\"a.S/Pot\" = []\n",
        )
        .unwrap();
        assert_eq!(
            p.check_complete(&served()),
            Err(PolicyError::Unknown("a.S/Pot".into()))
        );
    }

    #[test]
    fn a_role_not_declared_and_an_unknown_key_are_refused() {
        assert!(matches!(
            Policy::parse("roles = []\n[rpcs]\n\"a.S/Get\" = [\"fnance\"]\n"),
            Err(PolicyError::UndeclaredRole { .. })
        ));
        assert!(matches!(
            Policy::parse("roles = []\nrpc = {}\n"),
            Err(PolicyError::Syntax(_))
        ));
    }

    #[test]
    fn every_rpc_of_the_descriptor_set_is_listed_with_its_package_and_service() {
        let rpcs = rpcs_of(pl_proto::FILE_DESCRIPTOR_SET).unwrap();
        assert!(rpcs.contains(
            &"partnerledger.commissions.v1.CommissionsService/PublishPlanVersion".into()
        ));
        assert!(rpcs.len() > 50, "{}", rpcs.len());
    }
}
