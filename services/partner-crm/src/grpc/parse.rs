//! Field validators: each turns one protobuf field into domain input or a precise field
//! violation naming the field. Bounds live here, so every text, list and amount accepted has a
//! limit. They never read state or the clock.

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money};
use pl_proto::common::v1 as common;
use pl_proto::crm::v1 as pb;
use pl_proto::prost_types::Timestamp;
use pl_runtime::request::{parse_text, parse_uuid, to_datetime};
use pl_runtime::{FieldViolation, Violations};
use uuid::Uuid;

use crate::marketing::AssetKind;
use crate::partner::{Disclosure, PartnerType, Platform, Profile, Stage};
use crate::read::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_REASON_CHARS: usize = 1000;
pub const MAX_NOTE_CHARS: usize = 2000;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_DOMAIN_CHARS: usize = 253;
pub const MAX_CODE_CHARS: usize = 64;
pub const MIN_CODE_CHARS: usize = 3;
pub const MAX_TIER_CHARS: usize = 32;
pub const MAX_LABEL_CHARS: usize = 64;
pub const MAX_JURISDICTIONS: usize = 50;
pub const MAX_PLAN_IDS: usize = 100;
pub const MAX_PLATFORMS: usize = 20;
pub const MAX_NICHES: usize = 10;
pub const MAX_ID_CHARS: usize = 128;

pub fn opt_uuid(v: &mut Violations, field: &str, value: &str) -> Option<Option<Uuid>> {
    if value.is_empty() {
        Some(None)
    } else {
        v.check(parse_uuid(field, value)).map(Some)
    }
}

pub fn uuid(v: &mut Violations, field: &str, value: &str) -> Option<Uuid> {
    v.check(parse_uuid(field, value))
}

pub fn text(v: &mut Violations, field: &str, value: &str, max: usize) -> Option<String> {
    v.check(parse_text(field, value, max))
}

/// Optional free text: empty is none (returned as the empty string).
pub fn opt_text(v: &mut Violations, field: &str, value: &str, max: usize) -> Option<String> {
    if value.is_empty() {
        Some(String::new())
    } else {
        v.check(parse_text(field, value, max))
    }
}

/// A required reason (rejections, suspensions, terminations...).
pub fn reason(v: &mut Violations, field: &str, value: &str) -> Option<String> {
    text(v, field, value, MAX_REASON_CHARS)
}

pub fn email(field: &str, value: &str) -> Result<String, FieldViolation> {
    let email = parse_text(field, value, MAX_EMAIL_CHARS)?;
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !email.contains(char::is_whitespace) =>
        {
            Ok(email.to_ascii_lowercase())
        }
        _ => Err(FieldViolation::new(field, "not an email address")),
    }
}

pub fn country(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err(FieldViolation::new(
            field,
            "an ISO 3166-1 alpha-2 code such as DE",
        ))
    }
}

/// Tier codes: 1 to 32 letters, digits, '-' and '_', compared lower-cased.
pub fn tier_code(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.is_empty() || value.len() > MAX_TIER_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("1 to {MAX_TIER_CHARS} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(FieldViolation::new(field, "only letters, digits, - and _"));
    }
    Ok(value.to_ascii_lowercase())
}

pub fn opt_tier(v: &mut Violations, field: &str, value: &str) -> Option<Option<String>> {
    if value.is_empty() {
        Some(None)
    } else {
        v.check(tier_code(field, value)).map(Some)
    }
}

/// Jurisdictions: an ISO country code, optionally with a region ("US-NJ"), upper-case.
pub fn jurisdiction(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok = (2..=10).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        && value.bytes().take(2).all(|b| b.is_ascii_uppercase());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(FieldViolation::new(
            field,
            "an upper-case ISO 3166 code such as GB or US-NJ",
        ))
    }
}

/// Coupon codes: 3 to 64 letters, digits, '-' and '_' (kept as written, compared upper-cased).
pub fn coupon_code(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.len() < MIN_CODE_CHARS || value.len() > MAX_CODE_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("{MIN_CODE_CHARS} to {MAX_CODE_CHARS} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(FieldViolation::new(field, "only letters, digits, - and _"));
    }
    Ok(value.to_owned())
}

/// A company domain such as `acme.example`, lower-cased.
pub fn domain(field: &str, value: &str) -> Result<String, FieldViolation> {
    let d = value.to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let ok = !d.is_empty()
        && d.len() <= MAX_DOMAIN_CHARS
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(d)
    } else {
        Err(FieldViolation::new(
            field,
            "a domain name such as acme.example",
        ))
    }
}

pub fn http_url(field: &str, value: &str) -> Result<String, FieldViolation> {
    let url = parse_text(field, value, MAX_URL_CHARS)?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !url.contains(char::is_whitespace) => Ok(url),
        _ => Err(FieldViolation::new(field, "an absolute http(s) url")),
    }
}

/// Any absolute URI (`scheme://...` or `scheme:...`), e.g. https, s3, urn.
pub fn uri(field: &str, value: &str) -> Result<String, FieldViolation> {
    let uri = parse_text(field, value, MAX_URL_CHARS)?;
    let ok = uri.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    }) && !uri.contains(char::is_whitespace);
    if ok {
        Ok(uri)
    } else {
        Err(FieldViolation::new(
            field,
            "an absolute URI such as https://...",
        ))
    }
}

/// "2026", "2026-H1", "2026-Q1" or "2026-03".
pub fn period(field: &str, value: &str) -> Result<String, FieldViolation> {
    let bad = || FieldViolation::new(field, "a period: 2026, 2026-H1, 2026-Q1 or 2026-03");
    let (year, part) = match value.split_once('-') {
        Some((y, p)) => (y, Some(p)),
        None => (value, None),
    };
    if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ok = match part {
        None => true,
        Some("H1" | "H2" | "Q1" | "Q2" | "Q3" | "Q4") => true,
        Some(m) => m.len() == 2 && m.parse::<u8>().is_ok_and(|n| (1..=12).contains(&n)),
    };
    if ok {
        Ok(value.to_owned())
    } else {
        Err(bad())
    }
}

fn money_of(field: &str, m: &common::Money) -> Result<Money, FieldViolation> {
    let currency: Currency = m.currency.parse().map_err(|_| {
        FieldViolation::new(
            format!("{field}.currency"),
            "an ISO 4217 currency code such as USD",
        )
    })?;
    let money = Money::parse_exact(&m.amount, currency)
        .map_err(|e| FieldViolation::new(format!("{field}.amount"), e.to_string()))?;
    if money.is_negative() {
        return Err(FieldViolation::new(
            format!("{field}.amount"),
            "must not be negative",
        ));
    }
    Ok(money)
}

/// A required, non-negative amount in its currency's minor unit.
pub fn money(field: &str, m: Option<&common::Money>) -> Result<Money, FieldViolation> {
    money_of(
        field,
        m.ok_or_else(|| FieldViolation::new(field, "required"))?,
    )
}

/// A required amount above zero.
pub fn positive(field: &str, m: Option<&common::Money>) -> Result<Money, FieldViolation> {
    let money = money(field, m)?;
    if money.is_positive() {
        Ok(money)
    } else {
        Err(FieldViolation::new(
            format!("{field}.amount"),
            "must be above zero",
        ))
    }
}

pub fn opt_positive(
    v: &mut Violations,
    field: &str,
    m: Option<&common::Money>,
) -> Option<Option<Money>> {
    match m {
        None => Some(None),
        Some(m) => v.check(positive(field, Some(m))).map(Some),
    }
}

pub fn time(v: &mut Violations, field: &str, ts: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    match ts {
        Some(ts) => v.check(to_datetime(field, ts)),
        None => {
            v.add(field, "required");
            None
        }
    }
}

pub fn opt_time(
    v: &mut Violations,
    field: &str,
    ts: Option<&Timestamp>,
) -> Option<Option<DateTime<Utc>>> {
    match ts {
        Some(ts) => v.check(to_datetime(field, ts)).map(Some),
        None => Some(None),
    }
}

/// Offset and size of a page; the token is an offset this service issued.
pub fn page(v: &mut Violations, field: &str, page: Option<&common::PageRequest>) -> (usize, usize) {
    pl_runtime::request::page(
        v,
        field,
        page,
        pl_runtime::request::PageBounds {
            default_size: DEFAULT_PAGE_SIZE,
            max_size: MAX_PAGE_SIZE,
        },
    )
}

pub fn partner_type(field: &str, value: i32) -> Result<PartnerType, FieldViolation> {
    opt_partner_type(field, value)?
        .ok_or_else(|| FieldViolation::new(field, "required: one of the partner types"))
}

pub fn opt_partner_type(field: &str, value: i32) -> Result<Option<PartnerType>, FieldViolation> {
    use pb::PartnerType as P;
    match P::try_from(value) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Affiliate) => Ok(Some(PartnerType::Affiliate)),
        Ok(P::Referral) => Ok(Some(PartnerType::Referral)),
        Ok(P::Reseller) => Ok(Some(PartnerType::Reseller)),
        Ok(P::Technology) => Ok(Some(PartnerType::Technology)),
        Ok(P::Outsourcing) => Ok(Some(PartnerType::Outsourcing)),
        Ok(P::Influencer) => Ok(Some(PartnerType::Influencer)),
        Ok(P::IntroducingBroker) => Ok(Some(PartnerType::IntroducingBroker)),
        Err(_) => Err(FieldViolation::new(field, "not a partner type")),
    }
}

pub fn opt_stage(field: &str, value: i32) -> Result<Option<Stage>, FieldViolation> {
    use pb::PartnerStage as S;
    match S::try_from(value) {
        Ok(S::Unspecified) => Ok(None),
        Ok(S::Applied) => Ok(Some(Stage::Applied)),
        Ok(S::InReview) => Ok(Some(Stage::InReview)),
        Ok(S::AwaitingCompliance) => Ok(Some(Stage::AwaitingCompliance)),
        Ok(S::Approved) => Ok(Some(Stage::Approved)),
        Ok(S::Rejected) => Ok(Some(Stage::Rejected)),
        Ok(S::Suspended) => Ok(Some(Stage::Suspended)),
        Ok(S::Terminated) => Ok(Some(Stage::Terminated)),
        Err(_) => Err(FieldViolation::new(field, "not a partner stage")),
    }
}

pub fn opt_disclosure(field: &str, value: i32) -> Result<Option<Disclosure>, FieldViolation> {
    use pb::DisclosureStatus as D;
    match D::try_from(value) {
        Ok(D::Unspecified) => Ok(None),
        Ok(D::Unknown) => Ok(Some(Disclosure::Unknown)),
        Ok(D::Pending) => Ok(Some(Disclosure::Pending)),
        Ok(D::Acknowledged) => Ok(Some(Disclosure::Acknowledged)),
        Ok(D::Refused) => Ok(Some(Disclosure::Refused)),
        Err(_) => Err(FieldViolation::new(field, "not a disclosure status")),
    }
}

pub fn asset_kind(field: &str, value: i32) -> Result<AssetKind, FieldViolation> {
    use pb::MarketingAssetKind as K;
    match K::try_from(value) {
        Ok(K::Banner) => Ok(AssetKind::Banner),
        Ok(K::Logo) => Ok(AssetKind::Logo),
        Ok(K::Video) => Ok(AssetKind::Video),
        Ok(K::Document) => Ok(AssetKind::Document),
        Ok(K::EmailTemplate) => Ok(AssetKind::EmailTemplate),
        Ok(K::LandingPage) => Ok(AssetKind::LandingPage),
        Ok(K::SocialPost) => Ok(AssetKind::SocialPost),
        Ok(K::Other) => Ok(AssetKind::Other),
        Ok(K::Unspecified) | Err(_) => Err(FieldViolation::new(
            field,
            "required: one of the MARKETING_ASSET_KIND_ values",
        )),
    }
}

/// A lower-case label (platform, niche, vertical): 1 to 64 of `[a-z0-9 _-]`.
pub fn label(field: &str, value: &str) -> Result<String, FieldViolation> {
    let l = value.to_lowercase();
    if l.is_empty()
        || l.len() > MAX_LABEL_CHARS
        || l.trim() != l
        || !l.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'_')
        })
    {
        return Err(FieldViolation::new(
            field,
            format!("1 to {MAX_LABEL_CHARS} letters, digits, spaces, - and _"),
        ));
    }
    Ok(l)
}

pub fn profile(v: &mut Violations, field: &str, p: Option<&pb::PartnerProfile>) -> Option<Profile> {
    let Some(p) = p else {
        v.add(field, "required");
        return None;
    };
    let website = if p.website.is_empty() {
        Some(None)
    } else {
        v.check(http_url(&format!("{field}.website"), &p.website))
            .map(Some)
    };
    let mut platforms = Vec::new();
    let mut ok = true;
    if p.platforms.len() > MAX_PLATFORMS {
        v.add(
            format!("{field}.platforms"),
            format!("at most {MAX_PLATFORMS}"),
        );
        ok = false;
    }
    for (i, pl) in p.platforms.iter().take(MAX_PLATFORMS).enumerate() {
        let name = v.check(label(
            &format!("{field}.platforms[{i}].platform"),
            &pl.platform,
        ));
        let handle = v.check(parse_text(
            &format!("{field}.platforms[{i}].handle"),
            &pl.handle,
            MAX_NAME_CHARS,
        ));
        match (name, handle) {
            (Some(platform), Some(handle)) => platforms.push(Platform {
                platform,
                handle,
                audience_size: pl.audience_size,
            }),
            _ => ok = false,
        }
    }
    let mut niches: Vec<String> = Vec::new();
    if p.niches.len() > MAX_NICHES {
        v.add(format!("{field}.niches"), format!("at most {MAX_NICHES}"));
        ok = false;
    }
    for (i, n) in p.niches.iter().take(MAX_NICHES).enumerate() {
        match v.check(label(&format!("{field}.niches[{i}]"), n)) {
            Some(n) if !niches.contains(&n) => niches.push(n),
            Some(_) => {}
            None => ok = false,
        }
    }
    let disclosure = v
        .check(opt_disclosure(
            &format!("{field}.disclosure_status"),
            p.disclosure_status,
        ))
        .map(Option::unwrap_or_default);
    let description = if p.description.is_empty() {
        Some(None)
    } else {
        v.check(parse_text(
            &format!("{field}.description"),
            &p.description,
            MAX_NOTE_CHARS,
        ))
        .map(Some)
    };
    if !ok {
        return None;
    }
    Some(Profile {
        website: website?,
        platforms,
        niches,
        disclosure: disclosure?,
        description: description?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn periods_domains_codes_and_jurisdictions_are_checked_precisely() {
        for ok in ["2026", "2026-H2", "2026-Q4", "2026-03"] {
            assert!(period("p", ok).is_ok(), "{ok}");
        }
        for bad in ["26", "2026-13", "2026-Q5", "2026-3", "2026-", "q1"] {
            assert!(period("p", bad).is_err(), "{bad}");
        }
        assert_eq!(domain("d", "Acme.Example").unwrap(), "acme.example");
        for bad in [
            "acme",
            "-a.example",
            "a..example",
            "a b.example",
            "ex@mple.com",
        ] {
            assert!(domain("d", bad).is_err(), "{bad}");
        }
        assert!(coupon_code("c", "SUMMER-10_a").is_ok());
        for bad in ["ab", "has space", "ünï", &"x".repeat(65)] {
            assert!(coupon_code("c", bad).is_err(), "{bad}");
        }
        assert!(jurisdiction("j", "US-NJ").is_ok());
        assert!(jurisdiction("j", "gb").is_err());
        assert_eq!(tier_code("t", "Gold").unwrap(), "gold");
        assert!(uri("u", "s3://bucket/logo.zip").is_ok());
        assert!(uri("u", "logo.zip").is_err());
    }

    #[test]
    fn money_must_be_exact_in_the_minor_unit_and_not_negative() {
        let m = |a: &str, c: &str| common::Money {
            amount: a.into(),
            currency: c.into(),
        };
        assert!(positive("x", Some(&m("10.00", "USD"))).is_ok());
        assert!(positive("x", Some(&m("0.00", "USD"))).is_err());
        assert!(money("x", Some(&m("-1.00", "USD"))).is_err());
        assert!(money("x", Some(&m("1.001", "USD"))).is_err());
        assert_eq!(
            money("x", Some(&m("1", "usd"))).unwrap_err().field,
            "x.currency"
        );
        assert_eq!(money("x", None).unwrap_err().field, "x");
    }
}
