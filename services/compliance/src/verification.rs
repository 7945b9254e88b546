//! What one verification of a partner is, and the rules every verification obeys before it is
//! recorded: licences name a jurisdiction, a W-8BEN is valid at most until the end of the third
//! calendar year after it was signed, nothing expires before it was made. Pure: it never reads
//! a clock — validity is always judged at an instant the caller passes in.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationKind {
    Kyc,
    Kyb,
    TaxFormW9,
    TaxFormW8ben,
    Licence,
    DataSharingAgreement,
    DisclosureAcknowledgement,
}

impl VerificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationKind::Kyc => "kyc",
            VerificationKind::Kyb => "kyb",
            VerificationKind::TaxFormW9 => "tax_form_w9",
            VerificationKind::TaxFormW8ben => "tax_form_w8ben",
            VerificationKind::Licence => "licence",
            VerificationKind::DataSharingAgreement => "data_sharing_agreement",
            VerificationKind::DisclosureAcknowledgement => "disclosure_acknowledgement",
        }
    }

    fn is_tax_form(self) -> bool {
        matches!(
            self,
            VerificationKind::TaxFormW9 | VerificationKind::TaxFormW8ben
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Verified,
    Rejected,
    Pending,
}

/// One verification outcome. The serialised shape is the published `VerificationRecorded`
/// (`proto/partnerledger/compliance/v1/events.proto`); the optional fields are left out when
/// absent, so events written before they existed read the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub partner_id: Uuid,
    pub kind: VerificationKind,
    pub status: VerificationStatus,
    pub reference: String,
    pub recorded_by: String,
    pub occurred_at: DateTime<Utc>,
    pub valid_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<DateTime<Utc>>,
}

impl Verification {
    /// Verified, and not expired at `at` (expiry is exclusive).
    pub fn valid_at(&self, at: DateTime<Utc>) -> bool {
        self.status == VerificationStatus::Verified
            && self.valid_until.is_none_or(|until| until > at)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerificationError {
    #[error("valid_until {valid_until} is not after the verification time {occurred_at}")]
    ExpiresBeforeRecorded {
        occurred_at: DateTime<Utc>,
        valid_until: DateTime<Utc>,
    },
    #[error("a licence names the jurisdiction it is valid in")]
    LicenceWithoutJurisdiction,
    #[error("only licences name a jurisdiction")]
    JurisdictionOnNonLicence,
    #[error("only tax forms have a signing date")]
    SignedAtOnNonTaxForm,
    #[error(
        "a W-8BEN signed at {signed_at} is valid until {limit} at the latest, not {valid_until}"
    )]
    W8benTooLong {
        signed_at: DateTime<Utc>,
        limit: DateTime<Utc>,
        valid_until: DateTime<Utc>,
    },
    #[error("signed_at {signed_at} is after the verification time {occurred_at}")]
    SignedAfterRecorded {
        signed_at: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
    },
}

/// The end (exclusive) of a W-8BEN's validity: it remains in effect until the last day of the
/// third calendar year after the year it was signed (signed 2026-03-15: valid through
/// 2029-12-31, so no longer at 2030-01-01T00:00:00Z).
pub fn w8ben_expiry(signed_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Utc.with_ymd_and_hms(signed_at.year() + 4, 1, 1, 0, 0, 0)
        .single()
}

/// Checks a verification before it is recorded and fills in what the rules imply (a verified
/// W-8BEN's expiry when none was given).
pub fn complete(mut v: Verification) -> Result<Verification, VerificationError> {
    match (v.kind, &v.jurisdiction) {
        (VerificationKind::Licence, None) => {
            return Err(VerificationError::LicenceWithoutJurisdiction)
        }
        (kind, Some(_)) if kind != VerificationKind::Licence => {
            return Err(VerificationError::JurisdictionOnNonLicence)
        }
        _ => {}
    }
    if v.signed_at.is_some() && !v.kind.is_tax_form() {
        return Err(VerificationError::SignedAtOnNonTaxForm);
    }
    if let Some(signed_at) = v.signed_at {
        if signed_at > v.occurred_at {
            return Err(VerificationError::SignedAfterRecorded {
                signed_at,
                occurred_at: v.occurred_at,
            });
        }
    }
    if v.kind == VerificationKind::TaxFormW8ben && v.status == VerificationStatus::Verified {
        let signed_at = *v.signed_at.get_or_insert(v.occurred_at);
        if let Some(limit) = w8ben_expiry(signed_at) {
            match v.valid_until {
                None => v.valid_until = Some(limit),
                Some(valid_until) if valid_until > limit => {
                    return Err(VerificationError::W8benTooLong {
                        signed_at,
                        limit,
                        valid_until,
                    })
                }
                Some(_) => {}
            }
        }
    }
    if let Some(valid_until) = v.valid_until {
        if valid_until <= v.occurred_at {
            return Err(VerificationError::ExpiresBeforeRecorded {
                occurred_at: v.occurred_at,
                valid_until,
            });
        }
    }
    Ok(v)
}

/// ISO 3166-1 alpha-2 (`MT`) or ISO 3166-2 (`US-NJ`): two capital letters, optionally a dash
/// and one to three capital letters or digits.
pub fn is_jurisdiction(code: &str) -> bool {
    let (country, sub) = match code.split_once('-') {
        Some((c, s)) => (c, Some(s)),
        None => (code, None),
    };
    country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && sub.is_none_or(|s| {
            (1..=3).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn w8(occurred_at: DateTime<Utc>, valid_until: Option<DateTime<Utc>>) -> Verification {
        Verification {
            partner_id: Uuid::from_u128(1),
            kind: VerificationKind::TaxFormW8ben,
            status: VerificationStatus::Verified,
            reference: "w8-123".into(),
            recorded_by: "reviewer@ops".into(),
            occurred_at,
            valid_until,
            jurisdiction: None,
            signed_at: None,
        }
    }

    #[test]
    fn given_a_w8ben_signed_in_march_2026_when_recorded_without_expiry_then_it_is_valid_through_2029(
    ) {
        let v = complete(w8(at(2026, 3, 15), None)).unwrap();
        assert_eq!(v.valid_until, Some(at(2030, 1, 1)));
        assert_eq!(v.signed_at, Some(at(2026, 3, 15)));
        assert!(v.valid_at(at(2029, 12, 31)));
        assert!(!v.valid_at(at(2030, 1, 1)));
    }

    #[test]
    fn given_a_w8ben_when_its_expiry_is_past_the_three_year_limit_then_it_is_refused() {
        let err = complete(w8(at(2026, 3, 15), Some(at(2030, 1, 2)))).unwrap_err();
        assert!(
            matches!(err, VerificationError::W8benTooLong { .. }),
            "{err}"
        );
        assert!(complete(w8(at(2026, 3, 15), Some(at(2030, 1, 1)))).is_ok());
        assert!(complete(w8(at(2026, 3, 15), Some(at(2027, 1, 1)))).is_ok());
    }

    #[test]
    fn given_a_verification_when_it_expires_before_it_was_made_then_it_is_refused() {
        let mut v = w8(at(2026, 1, 1), Some(at(2026, 1, 1)));
        v.kind = VerificationKind::Kyc;
        assert!(matches!(
            complete(v).unwrap_err(),
            VerificationError::ExpiresBeforeRecorded { .. }
        ));
    }

    #[test]
    fn given_a_licence_when_it_names_no_jurisdiction_then_it_is_refused_and_others_may_not_name_one(
    ) {
        let mut v = w8(at(2026, 1, 1), None);
        v.kind = VerificationKind::Licence;
        assert_eq!(
            complete(v.clone()).unwrap_err(),
            VerificationError::LicenceWithoutJurisdiction
        );
        v.jurisdiction = Some("MT".into());
        assert!(complete(v.clone()).is_ok());
        v.kind = VerificationKind::Kyc;
        assert_eq!(
            complete(v).unwrap_err(),
            VerificationError::JurisdictionOnNonLicence
        );
    }

    #[test]
    fn jurisdictions_are_iso_country_or_subdivision_codes() {
        for ok in ["MT", "GB", "US-NJ", "CA-ON", "FR-75"] {
            assert!(is_jurisdiction(ok), "{ok}");
        }
        for bad in ["", "mt", "M", "MLT", "US-", "US-NJXX", "US_NJ", "ÜS"] {
            assert!(!is_jurisdiction(bad), "{bad}");
        }
    }

    #[test]
    fn a_verification_written_before_the_optional_fields_existed_still_reads() {
        let old = r#"{"partner_id":"00000000-0000-0000-0000-000000000001","kind":"kyc",
            "status":"verified","reference":"r","recorded_by":"x",
            "occurred_at":"2026-01-01T00:00:00Z","valid_until":null}"#;
        let v: Verification = serde_json::from_str(old).unwrap();
        assert_eq!(v.jurisdiction, None);
        let again = serde_json::to_string(&v).unwrap();
        assert!(!again.contains("jurisdiction"), "{again}");
    }
}
