//! Stream names and derived ids. Its one job: say where each aggregate lives. Free text (coupon
//! codes, company domains, periods) never appears in a stream name: it is hashed into a UUIDv5
//! after normalising (codes upper-cased, domains lower-cased), so names stay short, hold no
//! personal data, and two spellings of one key land on one stream.

use uuid::Uuid;

/// Namespace of every id derived here: never change it, stored names were derived with it.
const NS: Uuid = Uuid::from_u128(0x7c0e_5a52_3b1d_5f0e_9d6c_2a4b_8e1f_3c5d);

fn derive(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&NS, parts.join("\u{1f}").as_bytes())
}

pub fn partner(partner_id: Uuid) -> String {
    format!("partner-{partner_id}")
}

pub fn program(program_id: Uuid) -> String {
    format!("partner-program-{program_id}")
}

/// Every parent link of one program: the consistency boundary that keeps hierarchies acyclic.
pub fn hierarchy(program_id: Uuid) -> String {
    format!("partner-hierarchy-{program_id}")
}

pub fn link(tracking_link_id: Uuid) -> String {
    format!("partner-link-{tracking_link_id}")
}

/// The key of a coupon code in a program: codes compare upper-cased.
pub fn code_key(program_id: Uuid, code: &str) -> Uuid {
    derive(&["coupon", &program_id.to_string(), &code.to_uppercase()])
}

/// Every coupon ever issued under one code of one program: the code's uniqueness boundary.
pub fn code(program_id: Uuid, code: &str) -> String {
    format!("partner-code-{}", code_key(program_id, code))
}

/// The id of the `n`-th coupon issued under a code (0-based).
pub fn coupon_id(code_key: Uuid, n: usize) -> Uuid {
    Uuid::new_v5(&code_key, format!("coupon:{n}").as_bytes())
}

/// Where a deal's registry is (written first: it also makes deal ids unique).
pub fn deal_ref(deal_id: Uuid) -> String {
    format!("partner-dealref-{deal_id}")
}

/// Every registration of one company domain in one program: first valid registration wins.
pub fn deals(program_id: Uuid, domain: &str) -> String {
    let id = derive(&[
        "deal-domain",
        &program_id.to_string(),
        &domain.to_lowercase(),
    ]);
    format!("partner-deals-{id}")
}

/// A partner's MDF budget for a period.
pub fn budget_id(partner_id: Uuid, period: &str) -> Uuid {
    derive(&["mdf", &partner_id.to_string(), period])
}

pub fn budget(budget_id: Uuid) -> String {
    format!("partner-mdf-{budget_id}")
}

pub fn campaign(campaign_id: Uuid) -> String {
    format!("partner-campaign-{campaign_id}")
}

pub fn asset(asset_id: Uuid) -> String {
    format!("partner-asset-{asset_id}")
}

/// The kind of a CRM stream, from its name (for the read model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Partner,
    Program,
    Hierarchy,
    Link,
    Code,
    DealRef,
    Deals,
    Budget,
    Campaign,
    Asset,
}

/// Which aggregate a stream holds; `None` for anything that is not a CRM stream.
pub fn kind_of(stream: &str) -> Option<Kind> {
    let rest = stream.strip_prefix("partner-")?;
    let prefixed = [
        ("program-", Kind::Program),
        ("hierarchy-", Kind::Hierarchy),
        ("link-", Kind::Link),
        ("code-", Kind::Code),
        ("dealref-", Kind::DealRef),
        ("deals-", Kind::Deals),
        ("mdf-", Kind::Budget),
        ("campaign-", Kind::Campaign),
        ("asset-", Kind::Asset),
    ];
    for (p, k) in prefixed {
        if rest.starts_with(p) {
            return Some(k);
        }
    }
    Uuid::try_parse(rest).ok().map(|_| Kind::Partner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn codes_differing_only_in_case_share_one_stream_and_no_text_leaks_into_it() {
        let p = Uuid::from_u128(1);
        assert_eq!(code(p, "Summer-10"), code(p, "SUMMER-10"));
        assert_ne!(code(p, "SUMMER-10"), code(Uuid::from_u128(2), "SUMMER-10"));
        assert!(!code(p, "SUMMER-10").to_lowercase().contains("summer"));
        assert_eq!(deals(p, "Acme.Example"), deals(p, "acme.example"));
    }

    #[test]
    fn every_stream_name_tells_its_kind() {
        let id = Uuid::from_u128(9);
        assert_eq!(kind_of(&partner(id)), Some(Kind::Partner));
        assert_eq!(kind_of(&program(id)), Some(Kind::Program));
        assert_eq!(kind_of(&hierarchy(id)), Some(Kind::Hierarchy));
        assert_eq!(kind_of(&link(id)), Some(Kind::Link));
        assert_eq!(kind_of(&code(id, "X")), Some(Kind::Code));
        assert_eq!(kind_of(&deal_ref(id)), Some(Kind::DealRef));
        assert_eq!(kind_of(&deals(id, "a.example")), Some(Kind::Deals));
        assert_eq!(kind_of(&budget(id)), Some(Kind::Budget));
        assert_eq!(kind_of(&campaign(id)), Some(Kind::Campaign));
        assert_eq!(kind_of(&asset(id)), Some(Kind::Asset));
        assert_eq!(kind_of("conversion-1"), None);
        assert_eq!(kind_of("partner-nonsense"), None);
    }
}
