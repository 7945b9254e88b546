//! Stream names and derived ids of compliance. Its one job is naming: free-text keys (hashed
//! IPs, email hashes) never appear in a stream name, they are folded into a UUIDv5, and no
//! compliance stream other than a partner's file may start with [`PARTNER_PREFIX`] (the relay
//! publishes from those streams only).

use uuid::Uuid;

/// A partner's compliance file: verifications, holds, approvals, screenings, flags and the
/// published eligibility. The only streams whose events are published (the name is historical:
/// the file began as the verification history).
pub const PARTNER_PREFIX: &str = "verification-";

/// Namespace of every id derived here: UUIDv5 of `urn:partner-ledger:compliance` (URL ns).
const NS: Uuid = Uuid::from_u128(0x0c6f_2b1d_7e44_5a39_b1d2_6f0e_9a8c_3d17);

pub fn derive(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&NS, parts.join("\u{1f}").as_bytes())
}

pub fn partner(partner_id: Uuid) -> String {
    format!("{PARTNER_PREFIX}{partner_id}")
}

/// A program's regulation and fraud-rule settings.
pub fn program(program_id: Uuid) -> String {
    format!("compliance-program-{program_id}")
}

/// What compliance noted of one conversion (its partners, refunds), to route refunds.
pub fn conversion(conversion_id: Uuid) -> String {
    format!("compliance-conversion-{conversion_id}")
}

/// A partner's conversions and refunded conversions per day (refund-rate rule).
pub fn activity(partner_id: Uuid) -> String {
    format!("compliance-activity-{partner_id}")
}

/// Clicks from one hashed IP in one program (click-velocity rule).
pub fn clicks(program_id: Uuid, ip_hash: &str) -> String {
    let id = derive(&["clicks", &program_id.to_string(), ip_hash]);
    format!("compliance-clicks-{id}")
}

/// The partners of a program that share one identifier (duplicate-accounts rule).
pub fn identity(program_id: Uuid, kind: &str, value: &str) -> String {
    let id = derive(&["identity", &program_id.to_string(), kind, value]);
    format!("compliance-identity-{id}")
}

/// A flag's id: one per (rule, partner, subject), so a redelivered event raises nothing new.
pub fn flag_id(rule: &str, partner_id: Uuid, subject: &str) -> Uuid {
    derive(&["flag", rule, &partner_id.to_string(), subject])
}

/// A screening's id, from the request or consumed event that caused it.
pub fn screening_id(seed: Uuid) -> Uuid {
    derive(&["screening", &seed.to_string()])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn no_other_stream_starts_with_the_published_prefix() {
        let p = Uuid::from_u128(7);
        for name in [
            program(p),
            conversion(p),
            activity(p),
            clicks(p, "ab"),
            identity(p, "email", "x"),
        ] {
            assert!(!name.starts_with(PARTNER_PREFIX), "{name}");
        }
        assert!(partner(p).starts_with(PARTNER_PREFIX));
    }

    #[test]
    fn derived_ids_are_stable_and_keep_their_parts_apart() {
        let p = Uuid::from_u128(7);
        assert_eq!(flag_id("r", p, "x"), flag_id("r", p, "x"));
        assert_ne!(flag_id("r", p, "x"), flag_id("s", p, "x"));
        assert_ne!(derive(&["a", "bc"]), derive(&["ab", "c"]));
    }
}
