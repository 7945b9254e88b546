//! The one error type of the crate.

use pl_money::{Currency, Money, MoneyError};
use uuid::Uuid;

use crate::{Account, TransactionKind};

/// Everything the ledger refuses. Every fallible operation returns this instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A transaction without transfers.
    #[error("transaction has no transfers")]
    NoTransfers,
    /// More transfers than [`MAX_TRANSACTION_TRANSFERS`](crate::MAX_TRANSACTION_TRANSFERS).
    #[error("transaction has {count} transfers, more than the limit of {limit}")]
    TooManyTransfers {
        /// Transfers in the transaction.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A transfer of zero or less.
    #[error("transfer {index}: amount {amount} is not positive")]
    NonPositiveAmount {
        /// Position of the transfer in its transaction.
        index: usize,
        /// The amount.
        amount: Money,
    },
    /// A transfer amount with a non-zero digit below the currency's minor unit: amounts are
    /// rounded explicitly before they are posted.
    #[error("transfer {index}: amount {amount} is not a whole number of minor units")]
    SubMinorUnit {
        /// Position of the transfer in its transaction.
        index: usize,
        /// The amount.
        amount: Money,
    },
    /// A transfer above
    /// [`MAX_TRANSFER_AMOUNT_MINOR_UNITS`](crate::MAX_TRANSFER_AMOUNT_MINOR_UNITS).
    #[error(
        "transfer {index}: amount {amount} is above the limit of {limit_minor_units} minor units"
    )]
    AmountTooLarge {
        /// Position of the transfer in its transaction.
        index: usize,
        /// The amount.
        amount: Money,
        /// The limit.
        limit_minor_units: i64,
    },
    /// A transfer whose amount is not in the currency of one of its accounts.
    #[error("transfer {index}: amount {amount} is not in the currency of {account}")]
    CurrencyMismatch {
        /// Position of the transfer in its transaction.
        index: usize,
        /// The amount.
        amount: Money,
        /// The account in another currency.
        account: Account,
    },
    /// A transfer from an account to itself.
    #[error("transfer {index}: debits and credits the same account {account}")]
    SelfTransfer {
        /// Position of the transfer in its transaction.
        index: usize,
        /// The account.
        account: Account,
    },
    /// A transfer between accounts that this kind of transaction never connects.
    #[error("transfer {index}: a {kind} transaction cannot debit {debit} and credit {credit}")]
    PostingNotAllowed {
        /// Position of the transfer in its transaction.
        index: usize,
        /// The transaction kind.
        kind: TransactionKind,
        /// The debited account.
        debit: Account,
        /// The credited account.
        credit: Account,
    },
    /// A transaction that moves one partner's money into another partner's account.
    #[error("transaction mixes the accounts of partners {first} and {second}")]
    PartnersMixed {
        /// One partner.
        first: Uuid,
        /// Another partner.
        second: Uuid,
    },
    /// A conversion whose transfers are all in one currency.
    #[error("conversion does not change currency")]
    ConversionWithinCurrency,
    /// Debits and credits differ in a currency.
    #[error("transaction does not balance in {currency}: debits {debits_minor_units}, credits {credits_minor_units} minor units")]
    Unbalanced {
        /// The currency.
        currency: Currency,
        /// Sum of debits, in minor units.
        debits_minor_units: i128,
        /// Sum of credits, in minor units.
        credits_minor_units: i128,
    },
    /// An explanation field beyond its limit, or an empty description.
    #[error("explanation {field} is {length_chars} characters, outside 1..={limit_chars}")]
    ExplanationField {
        /// The field.
        field: &'static str,
        /// Its length.
        length_chars: usize,
        /// The limit.
        limit_chars: usize,
    },
    /// More custom formula inputs than
    /// [`MAX_EXPLANATION_INPUTS`](crate::MAX_EXPLANATION_INPUTS).
    #[error("explanation has {count} custom inputs, more than the limit of {limit}")]
    TooManyInputs {
        /// Custom inputs.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A helper was asked to post a signed amount of zero.
    #[error("adjustment amount is zero")]
    ZeroAdjustment,
    /// A recorded transaction that fails validation on replay.
    #[error("transaction {transaction_id} at log position {position} is invalid: {source}")]
    InvalidRecorded {
        /// Its log position.
        position: u64,
        /// Its id.
        transaction_id: Uuid,
        /// Why.
        source: Box<LedgerError>,
    },
    /// A recorded transaction before a position already applied.
    #[error("log position {position} is before the last applied position {last_position}")]
    PositionOutOfOrder {
        /// The position offered.
        position: u64,
        /// The last applied position.
        last_position: u64,
    },
    /// A transaction id that was already applied.
    #[error("transaction {transaction_id} was already applied")]
    DuplicateTransaction {
        /// The id.
        transaction_id: Uuid,
    },
    /// A page limit outside `1..=`[`MAX_PAGE_ENTRIES`](crate::MAX_PAGE_ENTRIES).
    #[error("page limit {limit} is outside 1..={max}")]
    PageLimit {
        /// The limit asked for.
        limit: usize,
        /// The largest page.
        max: usize,
    },
    /// A balance too large to be held as money.
    #[error("balance overflow")]
    Overflow,
    /// A money operation failed.
    #[error(transparent)]
    Money(#[from] MoneyError),
}
