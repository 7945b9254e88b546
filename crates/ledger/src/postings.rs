//! Builders of the common transactions, so services never assemble transfers by hand.
//!
//! Each builder posts one amount (see the table in the crate docs) and validates the result like
//! [`Transaction::new`]. Amounts are computed by the caller (a pro-rata reversal, say) and must
//! already be rounded to the currency's minor unit. Builders do not look at balances: whether a
//! partner has enough pending to reverse is the caller's decision, made on the derived balance.

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money};
use uuid::Uuid;

use crate::{Account, Explanation, LedgerError, Transaction, TransactionKind, Transfer};

fn single(
    id: Uuid,
    kind: TransactionKind,
    occurred_at: DateTime<Utc>,
    (debit, credit): (Account, Account),
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let transfer = Transfer {
        debit,
        credit,
        amount,
    };
    Transaction::new(id, kind, occurred_at, vec![transfer], explanation)
}

fn pending(partner_id: Uuid, currency: Currency) -> Account {
    Account::PartnerPending {
        partner_id,
        currency,
    }
}

fn payable(partner_id: Uuid, currency: Currency) -> Account {
    Account::PartnerPayable {
        partner_id,
        currency,
    }
}

fn expense(program_id: Uuid, currency: Currency) -> Account {
    Account::CommissionExpense {
        program_id,
        currency,
    }
}

fn clearing(program_id: Uuid, currency: Currency) -> Account {
    Account::PayoutsClearing {
        program_id,
        currency,
    }
}

/// Commission earned, into hold: debit the program's expense, credit the partner's pending.
pub fn accrual(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (expense(program_id, c), pending(partner_id, c));
    single(
        id,
        TransactionKind::Accrual,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// Hold over: debit the partner's pending, credit their payable.
pub fn maturity(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (pending(partner_id, c), payable(partner_id, c));
    single(
        id,
        TransactionKind::Maturity,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A pending commission undone (in full or pro rata): debit the partner's pending, credit the
/// program's expense. The mirror of [`accrual`].
pub fn reversal(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (pending(partner_id, c), expense(program_id, c));
    single(
        id,
        TransactionKind::Reversal,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A matured commission taken back: debit the partner's payable (it may go negative: the partner
/// then owes it, netted from later earnings), credit the program's expense.
pub fn clawback(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (payable(partner_id, c), expense(program_id, c));
    single(
        id,
        TransactionKind::Clawback,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A flat campaign fee, due on delivery without a hold: debit the program's expense, credit the
/// partner's payable.
pub fn campaign_fee(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (expense(program_id, c), payable(partner_id, c));
    single(
        id,
        TransactionKind::CampaignFee,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// An approved MDF claim reimbursed: debit the program's MDF budget, credit the partner's payable
/// (paid out with the next payout).
pub fn mdf_reimbursement(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let mdf = Account::MdfBudget {
        program_id,
        currency: c,
    };
    let accounts = (mdf, payable(partner_id, c));
    single(
        id,
        TransactionKind::MdfReimbursement,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A payout sent: debit the partner's payable, credit the program's payouts clearing. The money
/// is in flight until [`payout_settled`] or [`payout_failed`].
pub fn payout_created(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (payable(partner_id, c), clearing(program_id, c));
    single(
        id,
        TransactionKind::PayoutCreated,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A payout confirmed: debit the program's payouts clearing, credit the partner's paid.
pub fn payout_settled(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let paid = Account::PartnerPaid {
        partner_id,
        currency: c,
    };
    let accounts = (clearing(program_id, c), paid);
    single(
        id,
        TransactionKind::PayoutSettled,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A payout returned: debit the program's payouts clearing, credit the partner's payable again.
pub fn payout_failed(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = amount.currency();
    let accounts = (clearing(program_id, c), payable(partner_id, c));
    single(
        id,
        TransactionKind::PayoutFailed,
        occurred_at,
        accounts,
        amount,
        explanation,
    )
}

/// A partner's payable moved from `from`'s currency to `to`'s, at the rate the caller applied
/// (record it in the explanation's `fx_rate`). Two transfers through the FX bridge, each
/// balanced in its own currency: payable(from) → fx(from), fx(to) → payable(to).
pub fn conversion(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    from: Money,
    to: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let (source, target) = (from.currency(), to.currency());
    let transfers = vec![
        Transfer {
            debit: payable(partner_id, source),
            credit: Account::FxConversion { currency: source },
            amount: from,
        },
        Transfer {
            debit: Account::FxConversion { currency: target },
            credit: payable(partner_id, target),
            amount: to,
        },
    ];
    Transaction::new(
        id,
        TransactionKind::Conversion,
        occurred_at,
        transfers,
        explanation,
    )
}

/// A manual correction of a partner's payable by a signed amount against the program's expense:
/// positive credits the payable, negative debits it. Zero is refused.
pub fn adjustment(
    id: Uuid,
    occurred_at: DateTime<Utc>,
    partner_id: Uuid,
    program_id: Uuid,
    signed_amount: Money,
    explanation: Explanation,
) -> Result<Transaction, LedgerError> {
    let c = signed_amount.currency();
    let (expense, payable) = (expense(program_id, c), payable(partner_id, c));
    let accounts = if signed_amount.is_zero() {
        return Err(LedgerError::ZeroAdjustment);
    } else if signed_amount.is_positive() {
        (expense, payable)
    } else {
        (payable, expense)
    };
    let kind = TransactionKind::Adjustment;
    single(
        id,
        kind,
        occurred_at,
        accounts,
        signed_amount.abs(),
        explanation,
    )
}
