//! Balances as of each kind of point in business and recording time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly
//!
//! The history used throughout: a 10.00 USD sale on day 10 recorded on day 10 (position 0), and a
//! 4.00 USD sale that happened on day 5 but was only recorded on day 20 (position 1, backdated).

mod support;

use pl_ledger::{postings, Account, AsOf, RecordingPoint};
use pl_money::{Currency, Money};
use support::{day, id, usd, why, Books, PARTNER, PROGRAM};

const PENDING: Account = Account::PartnerPending {
    partner_id: PARTNER,
    currency: Currency::USD,
};

fn history() -> Books {
    let mut books = Books::default();
    let on_time = postings::accrual(id(1), day(10), PARTNER, PROGRAM, usd("10.00"), why("a"));
    books.record(on_time.unwrap(), 10);
    let backdated = postings::accrual(id(2), day(5), PARTNER, PROGRAM, usd("4.00"), why("b"));
    books.record(backdated.unwrap(), 20);
    books
}

fn pending(books: &Books, as_of: AsOf) -> Money {
    let balance = books.ledger.balance(PENDING, as_of).unwrap();
    let trial = books.ledger.trial_balance(as_of).unwrap();
    assert!(trial.values().all(|total| total.is_zero()), "{trial:?}");
    balance
}

#[test]
fn given_the_history_when_asked_for_the_latest_balance_then_it_includes_everything() {
    assert_eq!(pending(&history(), AsOf::Latest), usd("14.00"));
}

#[test]
fn given_a_backdated_sale_when_asked_as_of_a_business_date_then_it_counts_once_recorded() {
    let books = history();
    assert_eq!(pending(&books, AsOf::BusinessDate(day(4))), usd("0"));
    assert_eq!(pending(&books, AsOf::BusinessDate(day(5))), usd("4.00"));
    assert_eq!(pending(&books, AsOf::BusinessDate(day(9))), usd("4.00"));
    assert_eq!(pending(&books, AsOf::BusinessDate(day(10))), usd("14.00"));
}

#[test]
fn given_the_history_when_asked_as_of_a_log_position_then_later_records_are_unknown() {
    let books = history();
    assert_eq!(
        pending(&books, AsOf::Recorded { position: 0 }),
        usd("10.00")
    );
    assert_eq!(
        pending(&books, AsOf::Recorded { position: 1 }),
        usd("14.00")
    );
    assert_eq!(
        pending(&books, AsOf::Recorded { position: 99 }),
        usd("14.00")
    );
}

#[test]
fn given_the_history_when_asked_as_of_a_recording_time_then_later_records_are_unknown() {
    let books = history();
    assert_eq!(pending(&books, AsOf::RecordedAt(day(9))), usd("0"));
    assert_eq!(pending(&books, AsOf::RecordedAt(day(10))), usd("10.00"));
    assert_eq!(pending(&books, AsOf::RecordedAt(day(19))), usd("10.00"));
    assert_eq!(pending(&books, AsOf::RecordedAt(day(20))), usd("14.00"));
}

#[test]
fn given_a_backdated_sale_recorded_later_when_asked_bitemporally_then_it_is_invisible_before_recording_and_visible_after(
) {
    let books = history();
    let as_known_on = |business: i64, recorded: RecordingPoint| AsOf::Bitemporal {
        business_date: day(business),
        recorded,
    };

    // Day 15 as the ledger knew it on day 15: only the on-time sale.
    let before = as_known_on(15, RecordingPoint::At(day(15)));
    assert_eq!(pending(&books, before), usd("10.00"));
    // The same business date once the backdated sale was recorded.
    let after = as_known_on(15, RecordingPoint::At(day(20)));
    assert_eq!(pending(&books, after), usd("14.00"));
    // Day 7 as known at position 0: nothing had happened by day 7 as far as the ledger knew.
    assert_eq!(
        pending(&books, as_known_on(7, RecordingPoint::Position(0))),
        usd("0")
    );
    assert_eq!(
        pending(&books, as_known_on(7, RecordingPoint::Position(1))),
        usd("4.00")
    );
}

#[test]
fn given_a_partner_with_entries_only_after_the_cut_when_asked_then_no_currency_is_listed() {
    let books = history();
    let balances = books
        .ledger
        .balances_of_partner(PARTNER, AsOf::RecordedAt(day(1)))
        .unwrap();
    assert!(balances.currencies.is_empty());
    let balances = books
        .ledger
        .balances_of_partner(PARTNER, AsOf::BusinessDate(day(5)))
        .unwrap();
    assert_eq!(balances.currencies[&Currency::USD].pending, usd("4.00"));
}
