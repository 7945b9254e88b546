//! The fraud rules: each rule's switch, outcome and threshold per program, and the pure checks
//! that say whether a rule fires and with what evidence. It never decides what happens to a
//! flag (the partner's file does), never reads a clock, and never uses floats: the refund rate
//! is an exact decimal comparison. Every rule fires only strictly beyond its threshold.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pl_money::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Upper bounds of the configurable thresholds (and of what the deciders keep in memory).
pub const MAX_CLICKS_PER_IP: u32 = 1000;
pub const MAX_VELOCITY_WINDOW_SECONDS: u32 = 7 * 24 * 3600;
pub const MAX_CLICK_TO_CONVERSION_SECONDS: u32 = 24 * 3600;
pub const MAX_ACCOUNTS_PER_IDENTIFIER: u32 = 100;
pub const MAX_REFUND_WINDOW_DAYS: u32 = 90;
pub const MAX_MIN_CONVERSIONS: u32 = 100_000;
pub const MAX_IGNORED_DOMAINS: usize = 500;
pub const MAX_DOMAIN_CHARS: usize = 253;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    SelfReferral,
    ClickToConversion,
    ClickVelocity,
    DuplicateAccounts,
    RefundRate,
    UnlicensedJurisdiction,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SelfReferral => "self_referral",
            Rule::ClickToConversion => "click_to_conversion",
            Rule::ClickVelocity => "click_velocity",
            Rule::DuplicateAccounts => "duplicate_accounts",
            Rule::RefundRate => "refund_rate",
            Rule::UnlicensedJurisdiction => "unlicensed_jurisdiction",
        }
    }

    /// Rules about one conversion may reject it; rules about the partner may not.
    pub fn about_conversion(self) -> bool {
        !matches!(self, Rule::DuplicateAccounts | Rule::RefundRate)
    }
}

/// What happens when a rule fires, besides recording the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Only the flag, for a reviewer.
    Review,
    /// Hold the partner's payouts until the flag is cleared.
    Hold,
    /// Reject the conversion: commissions reverses its commission in full.
    Reject,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Review => "review",
            Outcome::Hold => "hold",
            Outcome::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSetting {
    pub enabled: bool,
    pub outcome: Outcome,
}

impl RuleSetting {
    const fn on(outcome: Outcome) -> Self {
        Self {
            enabled: true,
            outcome,
        }
    }
}

/// A decimal as a JSON string (exact, whatever serde features are unified in).
mod dec_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let s = String::deserialize(d)?;
        Decimal::from_str_exact(&s).map_err(serde::de::Error::custom)
    }
}

/// Every rule of a program. Stored in the program's settings events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FraudRules {
    pub self_referral: RuleSetting,
    pub ignored_email_domains: Vec<String>,
    pub click_to_conversion: RuleSetting,
    pub min_click_to_conversion_seconds: u32,
    pub click_velocity: RuleSetting,
    pub max_clicks_per_ip: u32,
    pub velocity_window_seconds: u32,
    pub duplicate_accounts: RuleSetting,
    pub max_accounts_per_identifier: u32,
    pub refund_rate: RuleSetting,
    #[serde(with = "dec_str")]
    pub max_refund_rate: Decimal,
    pub refund_window_days: u32,
    pub min_conversions: u32,
    pub unlicensed_jurisdiction: RuleSetting,
}

/// Public mail providers: a customer and a partner both on one of them are not related.
pub const DEFAULT_IGNORED_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "mail.ru",
    "yandex.ru",
    "qq.com",
];

impl Default for FraudRules {
    fn default() -> Self {
        Self {
            self_referral: RuleSetting::on(Outcome::Reject),
            ignored_email_domains: DEFAULT_IGNORED_DOMAINS
                .iter()
                .map(|d| (*d).to_owned())
                .collect(),
            click_to_conversion: RuleSetting::on(Outcome::Review),
            min_click_to_conversion_seconds: 10,
            click_velocity: RuleSetting::on(Outcome::Review),
            max_clicks_per_ip: 20,
            velocity_window_seconds: 3600,
            duplicate_accounts: RuleSetting::on(Outcome::Hold),
            max_accounts_per_identifier: 1,
            refund_rate: RuleSetting::on(Outcome::Hold),
            max_refund_rate: Decimal::new(25, 2),
            refund_window_days: 30,
            min_conversions: 10,
            unlicensed_jurisdiction: RuleSetting::on(Outcome::Review),
        }
    }
}

impl FraudRules {
    pub fn setting(&self, rule: Rule) -> RuleSetting {
        match rule {
            Rule::SelfReferral => self.self_referral,
            Rule::ClickToConversion => self.click_to_conversion,
            Rule::ClickVelocity => self.click_velocity,
            Rule::DuplicateAccounts => self.duplicate_accounts,
            Rule::RefundRate => self.refund_rate,
            Rule::UnlicensedJurisdiction => self.unlicensed_jurisdiction,
        }
    }

    /// Every problem, as (field, description), so a request can report them all.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut range = |field: &str, v: u32, min: u32, max: u32| {
            if v < min || v > max {
                out.push((field.to_owned(), format!("must be {min} to {max}, got {v}")));
            }
        };
        range(
            "min_click_to_conversion_seconds",
            self.min_click_to_conversion_seconds,
            1,
            MAX_CLICK_TO_CONVERSION_SECONDS,
        );
        range(
            "max_clicks_per_ip",
            self.max_clicks_per_ip,
            1,
            MAX_CLICKS_PER_IP,
        );
        range(
            "velocity_window_seconds",
            self.velocity_window_seconds,
            1,
            MAX_VELOCITY_WINDOW_SECONDS,
        );
        range(
            "max_accounts_per_identifier",
            self.max_accounts_per_identifier,
            1,
            MAX_ACCOUNTS_PER_IDENTIFIER,
        );
        range(
            "refund_window_days",
            self.refund_window_days,
            1,
            MAX_REFUND_WINDOW_DAYS,
        );
        range(
            "min_conversions",
            self.min_conversions,
            1,
            MAX_MIN_CONVERSIONS,
        );
        if self.max_refund_rate < Decimal::ZERO || self.max_refund_rate > Decimal::ONE {
            out.push((
                "max_refund_rate".to_owned(),
                "must be a decimal in [0, 1]".to_owned(),
            ));
        }
        if self.ignored_email_domains.len() > MAX_IGNORED_DOMAINS {
            out.push((
                "ignored_email_domains".to_owned(),
                format!("at most {MAX_IGNORED_DOMAINS}"),
            ));
        }
        for (i, d) in self.ignored_email_domains.iter().enumerate() {
            if !is_domain(d) {
                out.push((
                    format!("ignored_email_domains[{i}]"),
                    "a lower-case domain name".to_owned(),
                ));
            }
        }
        for rule in [Rule::DuplicateAccounts, Rule::RefundRate] {
            if self.setting(rule).outcome == Outcome::Reject {
                out.push((
                    format!("{}.outcome", rule.as_str()),
                    "a rule about the partner cannot reject a conversion: review or hold"
                        .to_owned(),
                ));
            }
        }
        out
    }
}

/// A lower-case DNS name: labels of `[a-z0-9-]`, dot-separated, at most 253 characters.
pub fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= MAX_DOMAIN_CHARS
        && d.split('.').count() >= 2
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A rule that fired: its evidence by name (observed values and thresholds) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: Rule,
    pub evidence: BTreeMap<String, String>,
    pub summary: String,
}

fn evidence<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// What the partner is known by (from partner CRM), for the self-referral rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerIdentity<'a> {
    pub email_sha256: Option<&'a str>,
    pub email_domain: Option<&'a str>,
    pub ip_hashes: Vec<&'a str>,
}

/// What the conversion says about its customer, for the self-referral rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerIdentity<'a> {
    pub email_sha256: Option<&'a str>,
    pub domain: Option<&'a str>,
    /// Hashed IPs of the partner's credited touchpoints.
    pub ip_hashes: Vec<(&'a str, &'a str)>,
}

/// Self-referral: the customer's email hash, email domain (unless a public provider) or a
/// credited click's hashed IP equals the partner's.
pub fn self_referral(
    partner: &PartnerIdentity<'_>,
    customer: &CustomerIdentity<'_>,
    ignored_domains: &[String],
) -> Option<Finding> {
    if let (Some(p), Some(c)) = (partner.email_sha256, customer.email_sha256) {
        if p == c {
            return Some(Finding {
                rule: Rule::SelfReferral,
                evidence: evidence([("matched", "email".into()), ("email_sha256", c.into())]),
                summary: "the customer's email is the partner's".into(),
            });
        }
    }
    if let (Some(p), Some(c)) = (partner.email_domain, customer.domain) {
        if p.eq_ignore_ascii_case(c) && !ignored_domains.iter().any(|d| d.eq_ignore_ascii_case(c)) {
            return Some(Finding {
                rule: Rule::SelfReferral,
                evidence: evidence([("matched", "domain".into()), ("domain", c.to_lowercase())]),
                summary: format!("the customer's domain {c} is the partner's"),
            });
        }
    }
    for (touchpoint_id, ip) in &customer.ip_hashes {
        if partner.ip_hashes.contains(ip) {
            return Some(Finding {
                rule: Rule::SelfReferral,
                evidence: evidence([
                    ("matched", "ip_hash".into()),
                    ("ip_hash", (*ip).into()),
                    ("touchpoint_id", (*touchpoint_id).into()),
                ]),
                summary: "a credited click came from the partner's own IP".into(),
            });
        }
    }
    None
}

/// Cookie stuffing: a credited click less than `min_seconds` before the conversion (a click
/// exactly `min_seconds` before does not fire). Clicks after the conversion are ignored.
pub fn click_to_conversion(
    clicks: &[(String, DateTime<Utc>)],
    converted_at: DateTime<Utc>,
    min_seconds: u32,
) -> Option<Finding> {
    let (touchpoint_id, clicked_at) = clicks
        .iter()
        .filter(|(_, at)| *at <= converted_at)
        .max_by_key(|(_, at)| *at)?;
    let elapsed = converted_at - *clicked_at;
    if elapsed.num_milliseconds() >= i64::from(min_seconds) * 1000 {
        return None;
    }
    Some(Finding {
        rule: Rule::ClickToConversion,
        evidence: evidence([
            ("touchpoint_id", touchpoint_id.clone()),
            ("clicked_at", clicked_at.to_rfc3339()),
            ("converted_at", converted_at.to_rfc3339()),
            ("elapsed_ms", elapsed.num_milliseconds().to_string()),
            ("min_seconds", min_seconds.to_string()),
        ]),
        summary: format!(
            "converted {} ms after the credited click (minimum {min_seconds} s)",
            elapsed.num_milliseconds()
        ),
    })
}

/// Click velocity: more than `max_clicks` clicks from one hashed IP in the window up to a
/// credited click (`clicks_in_window` includes that click).
pub fn click_velocity(
    touchpoint_id: &str,
    ip_hash: &str,
    clicks_in_window: u32,
    max_clicks: u32,
    window_seconds: u32,
) -> Option<Finding> {
    (clicks_in_window > max_clicks).then(|| Finding {
        rule: Rule::ClickVelocity,
        evidence: evidence([
            ("touchpoint_id", touchpoint_id.into()),
            ("ip_hash", ip_hash.into()),
            ("clicks_in_window", clicks_in_window.to_string()),
            ("max_clicks_per_ip", max_clicks.to_string()),
            ("window_seconds", window_seconds.to_string()),
        ]),
        summary: format!(
            "{clicks_in_window} clicks from one IP within {window_seconds} s of the credited click (maximum {max_clicks})"
        ),
    })
}

/// Duplicate accounts: more than `max_accounts` partners of the program share an identifier.
pub fn duplicate_accounts(
    identifier: &str,
    accounts: u32,
    max_accounts: u32,
    others: &[String],
) -> Option<Finding> {
    (accounts > max_accounts).then(|| Finding {
        rule: Rule::DuplicateAccounts,
        evidence: evidence([
            ("identifier", identifier.into()),
            ("accounts", accounts.to_string()),
            ("max_accounts_per_identifier", max_accounts.to_string()),
            ("other_partners", others.join(",")),
        ]),
        summary: format!(
            "{accounts} partner accounts share one {identifier} (maximum {max_accounts})"
        ),
    })
}

/// Refund rate: of `conversions` in the window, `refunded` were refunded or charged back; fires
/// when there are at least `min_conversions` and `refunded / conversions > max_rate`, compared
/// exactly as `refunded > max_rate × conversions`.
pub fn refund_rate(
    conversions: u32,
    refunded: u32,
    rules: &FraudRules,
    window_end: chrono::NaiveDate,
) -> Option<Finding> {
    if conversions == 0 || conversions < rules.min_conversions {
        return None;
    }
    if Decimal::from(refunded) <= rules.max_refund_rate * Decimal::from(conversions) {
        return None;
    }
    let rate = (Decimal::from(refunded) / Decimal::from(conversions)).round_dp(4);
    Some(Finding {
        rule: Rule::RefundRate,
        evidence: evidence([
            ("conversions", conversions.to_string()),
            ("refunded", refunded.to_string()),
            ("rate", rate.normalize().to_string()),
            ("max_refund_rate", rules.max_refund_rate.to_string()),
            ("window_days", rules.refund_window_days.to_string()),
            ("window_end", window_end.to_string()),
            ("min_conversions", rules.min_conversions.to_string()),
        ]),
        summary: format!(
            "{refunded} of {conversions} conversions in the last {} days refunded (maximum rate {})",
            rules.refund_window_days, rules.max_refund_rate
        ),
    })
}

/// A conversion in a regulated program from a country the partner holds no valid licence for
/// (or from an unknown country). A subdivision licence (`US-NJ`) does not cover a conversion
/// known only by its country (`US`).
pub fn unlicensed_jurisdiction(
    customer_country: Option<&str>,
    licensed: &[String],
    program_jurisdictions: &[String],
) -> Option<Finding> {
    let licensed_list = licensed.join(",");
    match customer_country {
        Some(c) if licensed.iter().any(|j| j == c) => None,
        Some(c) => Some(Finding {
            rule: Rule::UnlicensedJurisdiction,
            evidence: evidence([
                ("customer_country", c.into()),
                ("licensed_jurisdictions", licensed_list),
                ("program_jurisdictions", program_jurisdictions.join(",")),
            ]),
            summary: format!("conversion from {c}, where the partner holds no valid licence"),
        }),
        None => Some(Finding {
            rule: Rule::UnlicensedJurisdiction,
            evidence: evidence([
                ("customer_country", String::new()),
                ("licensed_jurisdictions", licensed_list),
                ("program_jurisdictions", program_jurisdictions.join(",")),
            ]),
            summary: "conversion from an unknown country in a regulated program".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap()
    }

    fn day() -> chrono::NaiveDate {
        t(0).date_naive()
    }

    #[test]
    fn given_the_default_rules_then_they_are_valid_and_partner_rules_cannot_reject() {
        assert!(FraudRules::default().problems().is_empty());
        let mut r = FraudRules::default();
        r.refund_rate.outcome = Outcome::Reject;
        r.max_clicks_per_ip = 0;
        r.max_refund_rate = Decimal::new(101, 2);
        r.ignored_email_domains.push("Gmail.COM".into());
        let fields: Vec<_> = r.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "max_clicks_per_ip",
                "max_refund_rate",
                "ignored_email_domains[18]",
                "refund_rate.outcome"
            ]
        );
    }

    #[test]
    fn given_a_click_exactly_the_minimum_before_the_conversion_then_it_does_not_fire() {
        let clicks = vec![("tp1".to_owned(), t(0))];
        assert_eq!(click_to_conversion(&clicks, t(10), 10), None);
    }

    #[test]
    fn given_a_click_one_millisecond_under_the_minimum_when_the_conversion_arrives_then_it_fires() {
        let clicks = vec![("tp1".to_owned(), t(0))];
        let at = t(10) - chrono::Duration::milliseconds(1);
        let f = click_to_conversion(&clicks, at, 10).unwrap();
        assert_eq!(f.evidence["elapsed_ms"], "9999");
        assert_eq!(f.evidence["touchpoint_id"], "tp1");
    }

    #[test]
    fn given_several_clicks_then_the_last_one_before_the_conversion_is_judged() {
        let clicks = vec![("old".to_owned(), t(0)), ("late".to_owned(), t(95))];
        let f = click_to_conversion(&clicks, t(100), 10).unwrap();
        assert_eq!(f.evidence["touchpoint_id"], "late");
        assert_eq!(click_to_conversion(&clicks[..1], t(100), 10), None);
    }

    #[test]
    fn given_exactly_the_maximum_clicks_from_one_ip_then_velocity_does_not_fire_and_one_more_does()
    {
        assert_eq!(click_velocity("tp", "ip", 20, 20, 3600), None);
        let f = click_velocity("tp", "ip", 21, 20, 3600).unwrap();
        assert_eq!(f.evidence["clicks_in_window"], "21");
    }

    #[test]
    fn given_a_refund_rate_of_exactly_25_percent_then_it_does_not_fire() {
        let rules = FraudRules::default();
        assert_eq!(refund_rate(40, 10, &rules, day()), None);
    }

    #[test]
    fn given_a_refund_rate_just_over_25_percent_then_it_fires_with_the_exact_rate() {
        let rules = FraudRules::default();
        let f = refund_rate(39, 10, &rules, day()).unwrap();
        assert_eq!(f.evidence["rate"], "0.2564");
        assert_eq!(f.evidence["conversions"], "39");
        let f = refund_rate(400, 101, &rules, day()).unwrap();
        assert_eq!(f.evidence["rate"], "0.2525");
    }

    #[test]
    fn given_fewer_conversions_than_the_minimum_then_the_refund_rate_is_not_judged() {
        let rules = FraudRules::default();
        assert_eq!(refund_rate(9, 9, &rules, day()), None);
        assert!(refund_rate(10, 3, &rules, day()).is_some());
    }

    #[test]
    fn given_as_many_accounts_as_allowed_then_duplicates_do_not_fire_and_one_more_does() {
        assert_eq!(duplicate_accounts("email", 1, 1, &[]), None);
        let f = duplicate_accounts("email", 2, 1, &["p1".into()]).unwrap();
        assert_eq!(f.evidence["other_partners"], "p1");
    }

    #[test]
    fn given_a_customer_email_equal_to_the_partners_then_self_referral_fires() {
        let partner = PartnerIdentity {
            email_sha256: Some("abc"),
            email_domain: Some("acme.io"),
            ip_hashes: vec!["ip1"],
        };
        let by_email = CustomerIdentity {
            email_sha256: Some("abc"),
            ..Default::default()
        };
        let ignored = FraudRules::default().ignored_email_domains;
        assert_eq!(
            self_referral(&partner, &by_email, &ignored)
                .unwrap()
                .evidence["matched"],
            "email"
        );
        let by_domain = CustomerIdentity {
            domain: Some("ACME.io"),
            ..Default::default()
        };
        assert_eq!(
            self_referral(&partner, &by_domain, &ignored)
                .unwrap()
                .evidence["matched"],
            "domain"
        );
        let by_ip = CustomerIdentity {
            ip_hashes: vec![("tp9", "ip1")],
            ..Default::default()
        };
        assert_eq!(
            self_referral(&partner, &by_ip, &ignored).unwrap().evidence["touchpoint_id"],
            "tp9"
        );
        let stranger = CustomerIdentity {
            email_sha256: Some("zzz"),
            domain: Some("other.io"),
            ip_hashes: vec![("tp9", "ip2")],
        };
        assert_eq!(self_referral(&partner, &stranger, &ignored), None);
    }

    #[test]
    fn given_partner_and_customer_on_a_public_mail_provider_then_the_domain_is_not_compared() {
        let partner = PartnerIdentity {
            email_domain: Some("gmail.com"),
            ..Default::default()
        };
        let customer = CustomerIdentity {
            domain: Some("gmail.com"),
            ..Default::default()
        };
        let ignored = FraudRules::default().ignored_email_domains;
        assert_eq!(self_referral(&partner, &customer, &ignored), None);
    }

    #[test]
    fn given_a_licence_for_the_country_then_no_flag_and_a_subdivision_licence_does_not_cover_it() {
        let licensed = vec!["MT".to_owned(), "US-NJ".to_owned()];
        assert_eq!(unlicensed_jurisdiction(Some("MT"), &licensed, &[]), None);
        assert!(unlicensed_jurisdiction(Some("US"), &licensed, &[]).is_some());
        assert!(unlicensed_jurisdiction(None, &licensed, &[]).is_some());
    }
}
