//! The double-entry ledger of Partner Ledger: the chart of accounts, transactions that balance
//! per currency, balances derived from them as of any business date and any recording point,
//! and the explanation of every entry down to the rule and formula inputs that computed it. It
//! must never do I/O, read a clock, touch a float, or store a balance: time arrives in the
//! transactions, amounts are exact [`Money`](pl_money::Money), and every balance is derived
//! from the recorded transactions by a [`Ledger`] projection that replay rebuilds byte for byte.
//! Nothing here panics on any input; every refusal is a [`LedgerError`].
//!
//! # Chart of accounts
//!
//! Every account holds one currency. Balances are shown positive on the account's normal side.
//!
//! | account | per | normal side | balance |
//! |---|---|---|---|
//! | [`PartnerPending`](Account::PartnerPending) | partner, currency | credit | earned, still in hold |
//! | [`PartnerPayable`](Account::PartnerPayable) | partner, currency | credit | due now; negative when a clawback exceeded it (the partner owes it, netted from later earnings) |
//! | [`PartnerPaid`](Account::PartnerPaid) | partner, currency | credit | settled to the partner to date: the cash side of payouts |
//! | [`CommissionExpense`](Account::CommissionExpense) | program, currency | debit | commission cost, net of reversals and clawbacks |
//! | [`PayoutsClearing`](Account::PayoutsClearing) | program, currency | credit | payouts sent, not yet settled or failed |
//! | [`MdfBudget`](Account::MdfBudget) | program, currency | debit | market-development funds reimbursed |
//! | [`FxConversion`](Account::FxConversion) | currency | debit | the bridge of payable conversions between currencies |
//!
//! So for one partner and currency, everything the programs ever credited them is
//! `pending + payable + in clearing + paid`, and the sum over all accounts of debits minus
//! credits is zero in every currency (the trial balance).
//!
//! # Postings
//!
//! Each [`TransactionKind`] allows only its own postings; [`postings`] builds each of them.
//!
//! | kind | builder | debit | credit |
//! |---|---|---|---|
//! | `Accrual` | [`postings::accrual`] | commission expense | partner pending |
//! | `Maturity` | [`postings::maturity`] | partner pending | partner payable (same partner) |
//! | `Reversal` | [`postings::reversal`] | partner pending | commission expense |
//! | `Clawback` | [`postings::clawback`] | partner payable | commission expense |
//! | `CampaignFee` | [`postings::campaign_fee`] | commission expense | partner payable |
//! | `MdfReimbursement` | [`postings::mdf_reimbursement`] | MDF budget | partner payable |
//! | `PayoutCreated` | [`postings::payout_created`] | partner payable | payouts clearing |
//! | `PayoutSettled` | [`postings::payout_settled`] | payouts clearing | partner paid |
//! | `PayoutFailed` | [`postings::payout_failed`] | payouts clearing | partner payable |
//! | `Conversion` | [`postings::conversion`] | payable (from), FX (to) | FX (from), payable (to) |
//! | `Adjustment` | [`postings::adjustment`] | expense or payable | payable or expense |
//!
//! A correction is never an edit: reverse (or claw back) and post again.
//!
//! ```
//! use chrono::DateTime;
//! use pl_ledger::{postings, AsOf, Explanation, Ledger, RecordedTransaction};
//! use pl_money::Money;
//! use uuid::Uuid;
//!
//! let (partner, program) = (Uuid::from_u128(1), Uuid::from_u128(2));
//! let at = DateTime::UNIX_EPOCH;
//! let why = Explanation::new(Uuid::from_u128(3), "10% of 100.00 USD sale");
//! let accrual =
//!     postings::accrual(Uuid::from_u128(4), at, partner, program, "10.00 USD".parse()?, why)?;
//!
//! let mut ledger = Ledger::new();
//! ledger.apply(&RecordedTransaction { transaction: accrual, position: 0, recorded_at: at })?;
//! let balances = ledger.balances_of_partner(partner, AsOf::Latest)?;
//! assert_eq!(balances.currencies[&pl_money::Currency::USD].pending, "10.00 USD".parse::<Money>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod account;
mod error;
mod fold;
mod ledger;
pub mod postings;
mod transaction;

pub use account::{Account, NormalSide};
pub use error::LedgerError;
pub use fold::{BalanceFold, PostingsRef};
pub use ledger::{
    AsOf, Explained, ExplainedEntry, Ledger, Page, PartnerBalance, PartnerBalances,
    RecordedTransaction, RecordingPoint, MAX_PAGE_ENTRIES,
};
pub use transaction::{
    validate_postings, Explanation, FormulaInputs, PlanRef, Transaction, TransactionKind, Transfer,
    MAX_EXPLANATION_INPUTS, MAX_EXPLANATION_LABEL_CHARS, MAX_EXPLANATION_LINE_CHARS,
    MAX_EXPLANATION_VALUE_CHARS, MAX_TRANSACTION_TRANSFERS, MAX_TRANSFER_AMOUNT_MINOR_UNITS,
};
