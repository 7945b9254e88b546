//! Property tests: the invariants that hold for every history, not just the examples.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use pl_ledger::{
    postings, Account, AsOf, BalanceFold, Explanation, Ledger, LedgerError, NormalSide, Page,
    PostingsRef, RecordedTransaction, RecordingPoint, Transaction,
};
use pl_money::{allocate, Currency, Decimal, Money};
use proptest::prelude::*;
use support::day;
use uuid::Uuid;

/// Generated postings use the first three; conversions also reach GBP.
const CURRENCIES: [Currency; 4] = [Currency::USD, Currency::EUR, Currency::JPY, Currency::GBP];
const PARTNERS: u128 = 3;
const PROGRAMS: u128 = 2;

fn hour(n: i64) -> DateTime<Utc> {
    day(0) + TimeDelta::hours(n)
}

/// One random posting, before it is built.
#[derive(Debug, Clone)]
struct Step {
    kind: usize,
    partner: u128,
    program: u128,
    currency: Currency,
    amount_minor_units: i64,
    other_currency: Currency,
    other_amount_minor_units: i64,
    negative: bool,
    /// How long before it is recorded the transaction happened.
    backdated_hours: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..11usize,
        (0..PARTNERS, 0..PROGRAMS),
        prop::sample::select(&CURRENCIES[..3]),
        1..10_000_000i64,
        prop::sample::select(&CURRENCIES[..3]),
        1..10_000_000i64,
        any::<bool>(),
        prop_oneof![3 => Just(0i64), 1 => 0..200i64],
    )
        .prop_map(
            |(kind, (partner, program), currency, amount, other, other_amount, negative, back)| {
                Step {
                    kind,
                    partner,
                    program,
                    currency,
                    amount_minor_units: amount,
                    other_currency: other,
                    other_amount_minor_units: other_amount,
                    negative,
                    backdated_hours: back,
                }
            },
        )
}

/// Builds the `index`th transaction of a history through the posting builders.
fn build(index: usize, step: &Step, occurred_at: DateTime<Utc>) -> Transaction {
    let id = Uuid::from_u128(0x1_0000 + index as u128);
    let partner = Uuid::from_u128(1 + step.partner);
    let program = Uuid::from_u128(0x100 + step.program);
    let amount = Money::from_minor_units(step.amount_minor_units, step.currency);
    let why = Explanation::new(Uuid::from_u128(0xE_0000 + index as u128), "generated");
    let at = occurred_at;
    let built = match step.kind {
        0 => postings::accrual(id, at, partner, program, amount, why),
        1 => postings::maturity(id, at, partner, amount, why),
        2 => postings::reversal(id, at, partner, program, amount, why),
        3 => postings::clawback(id, at, partner, program, amount, why),
        4 => postings::campaign_fee(id, at, partner, program, amount, why),
        5 => postings::mdf_reimbursement(id, at, partner, program, amount, why),
        6 => postings::payout_created(id, at, partner, program, amount, why),
        7 => postings::payout_settled(id, at, partner, program, amount, why),
        8 => postings::payout_failed(id, at, partner, program, amount, why),
        9 => {
            let target = if step.other_currency == step.currency {
                Currency::GBP
            } else {
                step.other_currency
            };
            let to = Money::from_minor_units(step.other_amount_minor_units, target);
            postings::conversion(id, at, partner, amount, to, why)
        }
        _ => {
            let signed = if step.negative { -amount } else { amount };
            postings::adjustment(id, at, partner, program, signed, why)
        }
    };
    built.unwrap()
}

/// A log of built transactions: position `3 * index` (the log holds other events too), recorded
/// one hour apart, each occurring up to 200 hours before it was recorded.
fn history(steps: &[Step]) -> Vec<RecordedTransaction> {
    steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let recorded_at = hour(index as i64);
            RecordedTransaction {
                transaction: build(
                    index,
                    step,
                    recorded_at - TimeDelta::hours(step.backdated_hours),
                ),
                position: 3 * index as u64,
                recorded_at,
            }
        })
        .collect()
}

fn as_of() -> impl Strategy<Value = AsOf> {
    let time = || (-220..60i64).prop_map(hour);
    let point = prop_oneof![
        (0..180u64).prop_map(RecordingPoint::Position),
        time().prop_map(RecordingPoint::At),
    ];
    prop_oneof![
        Just(AsOf::Latest),
        time().prop_map(AsOf::BusinessDate),
        (0..180u64).prop_map(|position| AsOf::Recorded { position }),
        time().prop_map(AsOf::RecordedAt),
        (time(), point).prop_map(|(business_date, recorded)| AsOf::Bitemporal {
            business_date,
            recorded
        }),
    ]
}

/// Whether a naive reading of `as_of` includes the transaction (recording times are monotonic
/// here, so a recording time is a plain filter).
fn inside(recorded: &RecordedTransaction, as_of: AsOf) -> bool {
    let known = |point: RecordingPoint| match point {
        RecordingPoint::Position(position) => recorded.position <= position,
        RecordingPoint::At(time) => recorded.recorded_at <= time,
    };
    let dated = |date: DateTime<Utc>| recorded.transaction.occurred_at() <= date;
    match as_of {
        AsOf::Latest => true,
        AsOf::BusinessDate(date) => dated(date),
        AsOf::Recorded { position } => known(RecordingPoint::Position(position)),
        AsOf::RecordedAt(time) => known(RecordingPoint::At(time)),
        AsOf::Bitemporal {
            business_date,
            recorded,
        } => dated(business_date) && known(recorded),
    }
}

/// Every account's balance by summing the transfers inside the cut one by one.
fn naive_balances(log: &[RecordedTransaction], as_of: AsOf) -> BTreeMap<Account, Money> {
    let mut balances: BTreeMap<Account, Money> = BTreeMap::new();
    for recorded in log.iter().filter(|r| inside(r, as_of)) {
        for t in recorded.transaction.transfers() {
            for (account, amount) in [(t.debit, t.amount), (t.credit, -t.amount)] {
                let shown = match account.normal_side() {
                    NormalSide::Debit => amount,
                    NormalSide::Credit => -amount,
                };
                let balance = balances
                    .entry(account)
                    .or_insert(Money::zero(amount.currency()));
                *balance = balance.checked_add(shown).unwrap();
            }
        }
    }
    balances
}

fn partners() -> impl Iterator<Item = Uuid> {
    (0..PARTNERS).map(|p| Uuid::from_u128(1 + p))
}

proptest! {
    #[test]
    fn every_built_transaction_balances_per_currency(steps in prop::collection::vec(step(), 1..40)) {
        for recorded in history(&steps) {
            let transaction = &recorded.transaction;
            prop_assert_eq!(transaction.validate(), Ok(()));
            for currency in CURRENCIES {
                let side = |debit: bool| {
                    let amounts = transaction.transfers().iter().filter(|t| {
                        let account = if debit { t.debit } else { t.credit };
                        account.currency() == currency
                    });
                    Money::try_sum(currency, amounts.map(|t| t.amount)).unwrap()
                };
                prop_assert_eq!(side(true), side(false));
            }
        }
    }

    #[test]
    fn replaying_the_same_log_twice_gives_byte_identical_balances(
        steps in prop::collection::vec(step(), 0..60),
        as_of in as_of(),
    ) {
        let log = history(&steps);
        let first = Ledger::replay(&log).unwrap();
        let second = Ledger::replay(&log).unwrap();
        prop_assert_eq!(&first, &second);
        let render = |ledger: &Ledger| {
            let partners: Vec<_> = partners()
                .map(|p| ledger.balances_of_partner(p, as_of).unwrap())
                .collect();
            serde_json::to_vec(&(partners, ledger.trial_balance(as_of).unwrap())).unwrap()
        };
        prop_assert_eq!(render(&first), render(&second));
    }

    #[test]
    fn the_trial_balance_is_zero_in_every_currency_whatever_the_cut(
        steps in prop::collection::vec(step(), 0..60),
        as_of in as_of(),
    ) {
        let ledger = Ledger::replay(&history(&steps)).unwrap();
        for (currency, total) in ledger.trial_balance(as_of).unwrap() {
            prop_assert!(total.is_zero(), "{} {}", currency, total);
        }
    }

    #[test]
    fn every_balance_as_of_any_cut_equals_the_naive_sum_of_the_transactions_inside_it(
        steps in prop::collection::vec(step(), 0..60),
        as_of in as_of(),
    ) {
        let log = history(&steps);
        let ledger = Ledger::replay(&log).unwrap();
        let expected = naive_balances(&log, as_of);
        for account in ledger.accounts() {
            let naive = expected.get(&account).copied().unwrap_or(Money::zero(account.currency()));
            prop_assert_eq!(ledger.balance(account, as_of).unwrap(), naive, "{}", account);
        }
    }

    #[test]
    fn the_explained_entries_of_a_partner_sum_to_their_balances(
        steps in prop::collection::vec(step(), 0..60),
        as_of in as_of(),
        limit in 1..7usize,
    ) {
        let ledger = Ledger::replay(&history(&steps)).unwrap();
        for partner in partners() {
            for currency in CURRENCIES {
                let mut sums: BTreeMap<Account, Money> = BTreeMap::new();
                let mut offset = Some(0);
                let mut balance = None;
                while let Some(from) = offset {
                    let page = Page { offset: from, limit };
                    let explained = ledger.explain(partner, currency, as_of, page).unwrap();
                    prop_assert!(explained.entries.len() <= limit);
                    for entry in &explained.entries {
                        let sum = sums.entry(entry.account).or_insert(Money::zero(currency));
                        *sum = sum.checked_add(entry.amount).unwrap();
                    }
                    balance = Some(explained.balance);
                    offset = explained.next_offset;
                }
                let zero = Money::zero(currency);
                let sum_of = |account: Account| sums.get(&account).copied().unwrap_or(zero);
                let balance = balance.unwrap();
                let partner_id = partner;
                prop_assert_eq!(balance.pending, sum_of(Account::PartnerPending { partner_id, currency }));
                prop_assert_eq!(balance.payable, sum_of(Account::PartnerPayable { partner_id, currency }));
                prop_assert_eq!(balance.paid, sum_of(Account::PartnerPaid { partner_id, currency }));
            }
        }
    }

    #[test]
    fn a_reversal_split_with_allocate_sums_exactly_to_the_amount_reversed(
        accrued_minor_units in 1..100_000_000i64,
        reversed_per_mille in 1..=1000i64,
        weights in prop::collection::vec(0..1000u32, 1..8),
        currency in prop::sample::select(&CURRENCIES[..]),
    ) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let (partner, program) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let accrued = Money::from_minor_units(accrued_minor_units, currency);
        let reversed = Money::from_minor_units(accrued_minor_units * reversed_per_mille / 1000, currency);
        prop_assume!(reversed.is_positive());
        let weights: Vec<Decimal> = weights.into_iter().map(Decimal::from).collect();
        let parts = allocate(reversed, &weights).unwrap();
        prop_assert_eq!(Money::try_sum(currency, parts.iter().copied()).unwrap(), reversed);

        let why = || Explanation::new(Uuid::from_u128(3), "pro-rata refund");
        let mut log = vec![postings::accrual(Uuid::from_u128(10), day(1), partner, program, accrued, why()).unwrap()];
        for (index, part) in parts.into_iter().filter(|p| p.is_positive()).enumerate() {
            let id = Uuid::from_u128(100 + index as u128);
            log.push(postings::reversal(id, day(2), partner, program, part, why()).unwrap());
        }
        let log: Vec<_> = log.into_iter().enumerate().map(|(position, transaction)| {
            RecordedTransaction { transaction, position: position as u64, recorded_at: day(2) }
        }).collect();
        let ledger = Ledger::replay(&log).unwrap();
        let pending = ledger.balance(Account::PartnerPending { partner_id: partner, currency }, AsOf::Latest).unwrap();
        prop_assert_eq!(pending, accrued.checked_sub(reversed).unwrap());
    }

    #[test]
    fn a_stored_transaction_tampered_to_be_unbalanced_is_rejected_on_replay(
        steps in prop::collection::vec(step(), 1..20),
        victim in any::<prop::sample::Index>(),
        transfer in any::<prop::sample::Index>(),
        currency in prop::sample::select(&CURRENCIES[..]),
    ) {
        let mut log = history(&steps);
        let victim = victim.index(log.len());
        let mut json = serde_json::to_value(&log[victim]).unwrap();
        let transfers = json["transaction"]["transfers"].as_array_mut().unwrap();
        let transfer = transfer.index(transfers.len());
        let credit = &mut transfers[transfer]["credit"]["currency"];
        prop_assume!(credit.as_str() != Some(currency.code()));
        *credit = serde_json::Value::from(currency.code());
        log[victim] = serde_json::from_value(json).unwrap();

        let mut ledger = Ledger::replay(&log[..victim]).unwrap();
        let before = ledger.clone();
        let refused = ledger.apply(&log[victim]);
        prop_assert!(
            matches!(
                &refused,
                Err(LedgerError::InvalidRecorded { source, .. })
                    if matches!(**source, LedgerError::Unbalanced { .. })
            ),
            "{:?}",
            refused
        );
        prop_assert_eq!(ledger, before);
        prop_assert!(Ledger::replay(&log).is_err());
    }
}

proptest! {
    #[test]
    fn a_balance_fold_for_an_as_of_point_reports_what_the_ledger_reports_for_it(
        steps in prop::collection::vec(step(), 0..60),
        as_of in as_of(),
        zigzag in any::<bool>(),
    ) {
        let mut log = history(&steps);
        if zigzag {
            // Recording times that go back and forth, as a store's clock may.
            for (index, recorded) in log.iter_mut().enumerate() {
                recorded.recorded_at = hour(index as i64 - 2 * (index as i64 % 2));
            }
        }
        let ledger = Ledger::replay(&log).unwrap();
        let mut fold = BalanceFold::new(as_of);
        for recorded in &log {
            fold.apply_recorded(recorded).unwrap();
        }
        prop_assert_eq!(fold.len(), log.len() as u64);
        let from_ledger: Vec<Uuid> = ledger.accounts().iter().filter_map(Account::partner_id).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        prop_assert_eq!(fold.partners().collect::<Vec<_>>(), from_ledger);
        for partner in partners() {
            prop_assert_eq!(
                fold.balances_of_partner(partner).unwrap(),
                ledger.balances_of_partner(partner, as_of).unwrap()
            );
        }
    }
}

proptest! {
    #[test]
    fn balance_folds_of_the_partners_books_split_over_threads_merge_into_what_one_fold_reports(
        steps in prop::collection::vec(step(), 0..60),
        as_of in as_of(),
        zigzag in any::<bool>(),
        shards in 1..4usize,
    ) {
        let mut log = history(&steps);
        if zigzag {
            for (index, recorded) in log.iter_mut().enumerate() {
                recorded.recorded_at = hour(index as i64 - 2 * (index as i64 % 2));
            }
        }
        let mut whole = BalanceFold::new(as_of);
        let mut parts: Vec<BalanceFold> = (0..shards).map(|_| BalanceFold::new(as_of)).collect();
        // Each part sees its partners' transactions with the log's running latest recorded_at,
        // as the audit replay hands them to its folding threads.
        let mut recorded_at_max: Option<DateTime<Utc>> = None;
        for recorded in &log {
            whole.apply_recorded(recorded).unwrap();
            let max = recorded_at_max.map_or(recorded.recorded_at, |m| m.max(recorded.recorded_at));
            recorded_at_max = Some(max);
            let t = &recorded.transaction;
            let partner = t.transfers().iter().find_map(|x| x.debit.partner_id().or(x.credit.partner_id()));
            let shard = partner.map_or(0, |p| (p.as_u128() % shards as u128) as usize);
            parts[shard]
                .apply(recorded.position, max, PostingsRef { id: t.id(), kind: t.kind(), occurred_at: t.occurred_at(), transfers: t.transfers() })
                .unwrap();
        }
        let mut merged = BalanceFold::new(as_of);
        for part in parts {
            merged.merge(part).unwrap();
        }
        prop_assert_eq!(merged.len(), whole.len());
        prop_assert_eq!(merged.partners().collect::<Vec<_>>(), whole.partners().collect::<Vec<_>>());
        for partner in partners() {
            prop_assert_eq!(merged.balances_of_partner(partner).unwrap(), whole.balances_of_partner(partner).unwrap());
        }
    }
}

/// A 10.00 USD accrual to the first partner.
fn usd_accrual() -> Step {
    Step {
        kind: 0,
        partner: 0,
        program: 0,
        currency: Currency::USD,
        amount_minor_units: 1000,
        other_currency: Currency::EUR,
        other_amount_minor_units: 1000,
        negative: false,
        backdated_hours: 0,
    }
}

#[test]
fn merging_balance_folds_that_share_a_transaction_is_refused_and_changes_nothing() {
    let accrual = usd_accrual();
    let log = history(&[accrual.clone(), accrual]);
    let (mut a, mut b) = (
        BalanceFold::new(AsOf::Latest),
        BalanceFold::new(AsOf::Latest),
    );
    a.apply_recorded(&log[0]).unwrap();
    a.apply_recorded(&log[1]).unwrap();
    b.apply_recorded(&log[1]).unwrap();
    let before = a.balances_of_partner(Uuid::from_u128(1)).unwrap();
    assert!(matches!(
        a.merge(b),
        Err(LedgerError::DuplicateTransaction { transaction_id }) if transaction_id == log[1].transaction.id()
    ));
    assert_eq!(a.len(), 2);
    assert_eq!(a.balances_of_partner(Uuid::from_u128(1)).unwrap(), before);
}

#[test]
fn a_balance_fold_refuses_a_disallowed_posting_a_repeated_or_an_out_of_order_transaction_and_keeps_its_balances(
) {
    let accrual = usd_accrual();
    let log = history(&[accrual.clone(), accrual.clone(), accrual]);
    let mut fold = BalanceFold::new(AsOf::Latest);
    fold.apply_recorded(&log[1]).unwrap();
    let before = fold.balances_of_partner(Uuid::from_u128(1)).unwrap();
    assert!(matches!(
        fold.apply_recorded(&log[1]),
        Err(LedgerError::DuplicateTransaction { .. })
    ));
    assert!(matches!(
        fold.apply_recorded(&log[0]),
        Err(LedgerError::PositionOutOfOrder { .. })
    ));
    let t = &log[2].transaction;
    // An accrual that takes from the partner's pending: not a posting an accrual may make.
    let mut swapped = t.transfers().to_vec();
    let first = &mut swapped[0];
    (first.debit, first.credit) = (first.credit, first.debit);
    let refused = fold.apply(
        log[2].position,
        log[2].recorded_at,
        PostingsRef {
            id: t.id(),
            kind: t.kind(),
            occurred_at: t.occurred_at(),
            transfers: &swapped,
        },
    );
    assert!(
        matches!(refused, Err(LedgerError::InvalidRecorded { .. })),
        "{refused:?}"
    );
    assert_eq!(
        fold.balances_of_partner(Uuid::from_u128(1)).unwrap(),
        before
    );
    assert_eq!(fold.len(), 1);
}
