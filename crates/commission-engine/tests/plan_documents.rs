//! The plan document decoder on input nobody meant: arbitrary text, and valid plans with
//! bytes flipped, cut or spliced. It returns an error or a plan that validation accepts or
//! refuses; it never panics. More cases: `PROPTEST_CASES=100000 cargo test -p
//! pl-commission-engine --test plan_documents`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use pl_commission_engine::{validate_plan, PlanVersion};
use proptest::prelude::*;

/// The plan reference's examples: every reward kind the fuzzing mutates from.
const PLANS: &[&str] = &[
    r#"{"plan_id": "3f2a9c1e-7b4d-4e8a-9c21-5d6e7f800001", "version": 1,
        "effective_from": "2026-01-01T00:00:00Z", "payout_currency": "USD", "hold_days": 30,
        "minimum_payout": {"amount": "50.00", "currency": "USD"},
        "rules": [
          {"id": "sale", "conditions": {"conversion_kind": "sale"}, "reward": {"percent_of_gross": "8"},
           "cap_per_conversion": {"amount": "200.00", "currency": "USD"}},
          {"id": "fee", "conditions": {"conversion_kind": "sale", "product": "premium"},
           "reward": {"flat": {"amount": "150.00", "currency": "USD"}}},
          {"id": "first-year", "conditions": {"conversion_kind": "subscription_invoice"},
           "reward": {"first_year_percent": {"percent": "20", "of": "gross"}}},
          {"id": "tiered", "conditions": {"conversion_kind": "sale", "product": "volume"},
           "reward": {"tiered_volume": {"basis": "gross", "mode": "tiered", "tiers": [
             {"from": "0", "price": {"percent": "5"}},
             {"from": "10000", "price": {"percent": "8"}}]}}},
          {"id": "recurring", "conditions": {"conversion_kind": "subscription_invoice", "product": "pro"},
           "reward": {"recurring": {"duration": "lifetime", "of": "gross", "schedule": [
             {"from_month": 1, "to_month": 3, "percent": "40"},
             {"from_month": 4, "percent": "20"}]}}}
        ]}"#,
];

fn decode(text: &str) {
    if let Ok(plan) = serde_json::from_str::<PlanVersion>(text) {
        let _ = validate_plan(&plan);
    }
}

#[test]
fn the_examples_decode_and_validate() {
    for p in PLANS {
        let plan: PlanVersion = serde_json::from_str(p).unwrap();
        validate_plan(&plan).unwrap();
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_plan_decoder(text in any::<String>()) {
        decode(&text);
    }

    #[test]
    fn mutated_plans_never_panic_the_decoder_or_validation(
        which in 0..PLANS.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let mut bytes = PLANS[which].as_bytes().to_vec();
        for (at, byte, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                2 => bytes.insert(i, byte),
                // Digits where digits were: amounts, percents and months out of range.
                _ if bytes[i].is_ascii_digit() => bytes[i] = b'0' + byte % 10,
                _ => {
                    bytes.remove(i);
                }
            }
        }
        decode(&String::from_utf8_lossy(&bytes));
    }
}
