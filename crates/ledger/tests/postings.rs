//! Each posting, given a history, when it is recorded, then the balances it must produce.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

mod support;

use pl_ledger::{
    postings, Account, AsOf, FormulaInputs, LedgerError, Page, PartnerBalance, TransactionKind,
    MAX_PAGE_ENTRIES,
};
use pl_money::{Currency, Decimal, Money};
use support::{day, eur, id, usd, why, Books, OTHER_PARTNER, PARTNER, PROGRAM};

fn partner(books: &Books, currency: Currency) -> PartnerBalance {
    books
        .ledger
        .balances_of_partner(PARTNER, AsOf::Latest)
        .unwrap()
        .currencies[&currency]
}

fn program(books: &Books, account: fn(uuid::Uuid, Currency) -> Account) -> Money {
    books
        .ledger
        .balance(account(PROGRAM, Currency::USD), AsOf::Latest)
        .unwrap()
}

fn expense(program_id: uuid::Uuid, currency: Currency) -> Account {
    Account::CommissionExpense {
        program_id,
        currency,
    }
}

fn clearing(program_id: uuid::Uuid, currency: Currency) -> Account {
    Account::PayoutsClearing {
        program_id,
        currency,
    }
}

fn balance(pending: &str, payable: &str, paid: &str) -> PartnerBalance {
    PartnerBalance {
        pending: usd(pending),
        payable: usd(payable),
        paid: usd(paid),
    }
}

/// Given 10.00 USD accrued and matured for the partner.
fn with_payable() -> Books {
    let mut books = Books::default();
    let accrual = postings::accrual(id(1), day(1), PARTNER, PROGRAM, usd("10.00"), why("sale"));
    books.record(accrual.unwrap(), 1);
    let maturity = postings::maturity(id(2), day(31), PARTNER, usd("10.00"), why("hold over"));
    books.record(maturity.unwrap(), 31);
    books
}

fn assert_trial_balance_is_zero(books: &Books) {
    for (currency, total) in books.ledger.trial_balance(AsOf::Latest).unwrap() {
        assert!(total.is_zero(), "{currency}: {total}");
    }
}

#[test]
fn given_a_sale_when_commission_accrues_then_it_is_pending_for_the_partner_and_an_expense_of_the_program(
) {
    let mut books = Books::default();
    let accrual = postings::accrual(id(1), day(1), PARTNER, PROGRAM, usd("10.00"), why("sale"));
    books.record(accrual.unwrap(), 1);

    assert_eq!(partner(&books, Currency::USD), balance("10.00", "0", "0"));
    assert_eq!(program(&books, expense), usd("10.00"));
    assert_trial_balance_is_zero(&books);
}

#[test]
fn given_a_pending_commission_when_the_hold_is_over_then_it_becomes_payable() {
    let books = with_payable();

    assert_eq!(partner(&books, Currency::USD), balance("0", "10.00", "0"));
    assert_eq!(program(&books, expense), usd("10.00"));
}

#[test]
fn given_a_pending_commission_when_the_sale_is_refunded_then_the_reversal_undoes_it() {
    let mut books = Books::default();
    let accrual = postings::accrual(id(1), day(1), PARTNER, PROGRAM, usd("10.00"), why("sale"));
    books.record(accrual.unwrap(), 1);

    let reversal = postings::reversal(id(2), day(5), PARTNER, PROGRAM, usd("4.00"), why("refund"));
    books.record(reversal.unwrap(), 5);

    assert_eq!(partner(&books, Currency::USD), balance("6.00", "0", "0"));
    assert_eq!(program(&books, expense), usd("6.00"));
    assert_trial_balance_is_zero(&books);
}

#[test]
fn given_a_paid_commission_when_it_is_clawed_back_then_the_payable_goes_negative() {
    let mut books = with_payable();
    let created =
        postings::payout_created(id(3), day(32), PARTNER, PROGRAM, usd("10.00"), why("p"));
    books.record(created.unwrap(), 32);
    let settled =
        postings::payout_settled(id(4), day(33), PARTNER, PROGRAM, usd("10.00"), why("p"));
    books.record(settled.unwrap(), 33);

    let clawback = postings::clawback(id(5), day(40), PARTNER, PROGRAM, usd("3.00"), why("fraud"));
    books.record(clawback.unwrap(), 40);

    assert_eq!(
        partner(&books, Currency::USD),
        balance("0", "-3.00", "10.00")
    );
    assert_eq!(program(&books, expense), usd("7.00"));
    assert_trial_balance_is_zero(&books);
}

#[test]
fn given_a_payable_when_a_payout_is_created_then_it_is_in_clearing_until_it_settles() {
    let mut books = with_payable();

    let created =
        postings::payout_created(id(3), day(32), PARTNER, PROGRAM, usd("10.00"), why("p"));
    books.record(created.unwrap(), 32);
    assert_eq!(partner(&books, Currency::USD), balance("0", "0", "0"));
    assert_eq!(program(&books, clearing), usd("10.00"));

    let settled =
        postings::payout_settled(id(4), day(33), PARTNER, PROGRAM, usd("10.00"), why("p"));
    books.record(settled.unwrap(), 33);
    assert_eq!(partner(&books, Currency::USD), balance("0", "0", "10.00"));
    assert_eq!(program(&books, clearing), usd("0"));
    assert_trial_balance_is_zero(&books);
}

#[test]
fn given_a_payout_in_clearing_when_the_rail_returns_it_then_the_money_is_payable_again() {
    let mut books = with_payable();
    let created =
        postings::payout_created(id(3), day(32), PARTNER, PROGRAM, usd("10.00"), why("p"));
    books.record(created.unwrap(), 32);

    let failed =
        postings::payout_failed(id(4), day(34), PARTNER, PROGRAM, usd("10.00"), why("iban"));
    books.record(failed.unwrap(), 34);

    assert_eq!(partner(&books, Currency::USD), balance("0", "10.00", "0"));
    assert_eq!(program(&books, clearing), usd("0"));
}

#[test]
fn given_an_approved_mdf_claim_when_it_is_reimbursed_then_the_budget_is_drawn_and_the_partner_is_owed(
) {
    let mut books = Books::default();
    let mdf =
        postings::mdf_reimbursement(id(1), day(3), PARTNER, PROGRAM, usd("250.00"), why("ad"));
    books.record(mdf.unwrap(), 3);

    assert_eq!(partner(&books, Currency::USD), balance("0", "250.00", "0"));
    let drawn = |program_id, currency| Account::MdfBudget {
        program_id,
        currency,
    };
    assert_eq!(program(&books, drawn), usd("250.00"));
}

#[test]
fn given_a_delivered_campaign_when_the_fee_is_booked_then_it_is_payable_without_hold() {
    let mut books = Books::default();
    let fee = postings::campaign_fee(id(1), day(3), PARTNER, PROGRAM, usd("500.00"), why("post"));
    books.record(fee.unwrap(), 3);

    assert_eq!(partner(&books, Currency::USD), balance("0", "500.00", "0"));
    assert_eq!(program(&books, expense), usd("500.00"));
}

#[test]
fn given_a_payable_in_eur_when_it_is_converted_to_usd_then_each_currency_balances_on_its_own() {
    let mut books = Books::default();
    let accrual = postings::accrual(id(1), day(1), PARTNER, PROGRAM, eur("100.00"), why("sale"));
    books.record(accrual.unwrap(), 1);
    let maturity = postings::maturity(id(2), day(2), PARTNER, eur("100.00"), why("hold over"));
    books.record(maturity.unwrap(), 2);

    let rate = FormulaInputs {
        fx_rate: Some(Decimal::new(10_850, 4)),
        ..FormulaInputs::default()
    };
    let explanation = why("100.00 EUR at 1.0850").with_inputs(rate);
    let conversion = postings::conversion(
        id(3),
        day(3),
        PARTNER,
        eur("100.00"),
        usd("108.50"),
        explanation,
    );
    books.record(conversion.unwrap(), 3);

    let balances = books
        .ledger
        .balances_of_partner(PARTNER, AsOf::Latest)
        .unwrap();
    assert_eq!(balances.currencies[&Currency::EUR].payable, eur("0"));
    assert_eq!(
        balances.currencies[&Currency::USD],
        balance("0", "108.50", "0")
    );
    assert_trial_balance_is_zero(&books);
}

#[test]
fn given_a_payable_when_converted_into_its_own_currency_then_it_is_refused() {
    let conversion = postings::conversion(
        id(1),
        day(1),
        PARTNER,
        usd("1.00"),
        usd("1.00"),
        why("noop"),
    );
    assert_eq!(conversion, Err(LedgerError::ConversionWithinCurrency));
}

#[test]
fn given_an_adjustment_when_it_is_positive_or_negative_then_the_payable_moves_that_way() {
    let mut books = Books::default();
    let up = postings::adjustment(id(1), day(1), PARTNER, PROGRAM, usd("5.00"), why("bonus"));
    books.record(up.unwrap(), 1);
    let down = postings::adjustment(id(2), day(2), PARTNER, PROGRAM, usd("-2.00"), why("typo"));
    books.record(down.unwrap(), 2);

    assert_eq!(partner(&books, Currency::USD), balance("0", "3.00", "0"));
    let zero = postings::adjustment(id(3), day(3), PARTNER, PROGRAM, usd("0"), why("nothing"));
    assert_eq!(zero, Err(LedgerError::ZeroAdjustment));
}

#[test]
fn given_a_partners_history_when_explained_then_every_entry_carries_its_cause_and_they_sum_to_the_balances(
) {
    let mut books = with_payable();
    let sale = why("10% of 30.00 USD sale").with_plan(id(90), 2, "base-rate");
    let accrual = postings::accrual(id(3), day(35), PARTNER, PROGRAM, usd("3.00"), sale.clone());
    books.record(accrual.unwrap(), 35);
    let other = postings::accrual(
        id(4),
        day(35),
        OTHER_PARTNER,
        PROGRAM,
        usd("7.00"),
        why("o"),
    );
    books.record(other.unwrap(), 35);

    let page = Page {
        offset: 0,
        limit: MAX_PAGE_ENTRIES,
    };
    let explained = books
        .ledger
        .explain(PARTNER, Currency::USD, AsOf::Latest, page)
        .unwrap();

    assert_eq!(explained.balance, balance("3.00", "10.00", "0"));
    let kinds: Vec<_> = explained
        .entries
        .iter()
        .map(|e| (e.kind, e.amount))
        .collect();
    assert_eq!(
        kinds,
        [
            (TransactionKind::Accrual, usd("10.00")),
            (TransactionKind::Maturity, usd("-10.00")),
            (TransactionKind::Maturity, usd("10.00")),
            (TransactionKind::Accrual, usd("3.00")),
        ]
    );
    let last = &explained.entries[3];
    assert_eq!((last.transaction_id, last.position), (id(3), 2));
    assert_eq!(last.counter_account, expense(PROGRAM, Currency::USD));
    assert_eq!(last.explanation, sale);
    assert_eq!(explained.next_offset, None);
}

#[test]
fn given_many_entries_when_explained_page_by_page_then_the_pages_cover_them_once_in_order() {
    let books = with_payable();
    let mut seen = Vec::new();
    let mut offset = Some(0);
    while let Some(from) = offset {
        let page = Page {
            offset: from,
            limit: 1,
        };
        let explained = books
            .ledger
            .explain(PARTNER, Currency::USD, AsOf::Latest, page)
            .unwrap();
        assert_eq!(explained.total_entries, 3);
        seen.extend(explained.entries);
        offset = explained.next_offset;
    }
    let positions: Vec<_> = seen.iter().map(|e| (e.position, e.amount)).collect();
    assert_eq!(
        positions,
        [(0, usd("10.00")), (1, usd("-10.00")), (1, usd("10.00"))]
    );
}

#[test]
fn given_a_page_of_zero_or_more_than_the_limit_when_explaining_then_it_is_refused() {
    let books = with_payable();
    for limit in [0, MAX_PAGE_ENTRIES + 1] {
        let page = Page { offset: 0, limit };
        let result = books
            .ledger
            .explain(PARTNER, Currency::USD, AsOf::Latest, page);
        assert!(matches!(result, Err(LedgerError::PageLimit { .. })));
    }
}

#[test]
fn given_an_applied_transaction_when_it_is_applied_again_or_out_of_order_then_it_is_refused() {
    let mut books = with_payable();
    let mut again = books.log[1].clone();
    again.position = 7;
    assert!(matches!(
        books.ledger.apply(&again),
        Err(LedgerError::DuplicateTransaction { .. })
    ));

    let late = postings::accrual(id(3), day(2), PARTNER, PROGRAM, usd("1.00"), why("late"));
    let mut late = pl_ledger::RecordedTransaction {
        transaction: late.unwrap(),
        position: 0,
        recorded_at: day(40),
    };
    assert!(matches!(
        books.ledger.apply(&late),
        Err(LedgerError::PositionOutOfOrder {
            position: 0,
            last_position: 1
        })
    ));
    // Several transactions of one log event share its position.
    late.position = 1;
    assert_eq!(books.ledger.apply(&late), Ok(()));
    assert_eq!(books.ledger.len(), 3);
}
