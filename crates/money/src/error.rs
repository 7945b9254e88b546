//! The one error type of the crate.

use crate::Currency;

/// Everything that can go wrong parsing or computing money. Every fallible operation returns
/// this instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// The amount string is empty.
    #[error("amount is empty")]
    Empty,
    /// The amount contains whitespace (leading, trailing or inside).
    #[error("amount contains whitespace")]
    Whitespace,
    /// The amount starts with `+`: positive amounts are written without a sign.
    #[error("leading '+' is not allowed")]
    LeadingPlus,
    /// A digit-grouping character (`,`, `_`, `'`): the only separator is the `.` decimal point.
    #[error("separator {0:?} is not allowed: use '.' as the decimal point and no digit grouping")]
    Separator(char),
    /// Scientific notation such as `1e5`.
    #[error("exponent notation is not allowed")]
    Exponent,
    /// Any other character that is not a digit, a leading `-` or a single `.`.
    #[error("unexpected character {0:?} in amount")]
    InvalidCharacter(char),
    /// No digit before or after the decimal point (`-`, `.5`, `5.`).
    #[error("amount needs digits before and after the decimal point")]
    MissingDigits,
    /// More than 28 decimal places, the most a `Decimal` can hold.
    #[error("amount has more than 28 decimal places")]
    TooManyDecimals,
    /// More significant digits than a 96-bit `Decimal` mantissa can hold.
    #[error("amount has too many digits to be represented exactly")]
    TooManyDigits,
    /// A money string that is not `<amount> <code>` with exactly one space.
    #[error("expected an amount and a currency code separated by one space")]
    MissingCurrency,
    /// A currency code that is not in the table (codes are uppercase).
    #[error("unknown currency code {0:?}")]
    UnknownCurrency(String),
    /// The amount has more decimal places than the currency's minor unit where an exact
    /// minor-unit amount is required.
    #[error("amount has {decimals} decimal places but {currency} allows {}", currency.minor_unit())]
    ExcessPrecision {
        /// The currency whose minor unit was exceeded.
        currency: Currency,
        /// Decimal places the amount needs.
        decimals: u32,
    },
    /// An operation combined two currencies.
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch {
        /// Currency of the left operand.
        left: Currency,
        /// Currency of the right operand.
        right: Currency,
    },
    /// The result is out of range: it cannot be represented exactly (or, for
    /// [`Money::to_minor_units`](crate::Money::to_minor_units), does not fit an `i64`).
    #[error("amount overflow")]
    Overflow,
    /// An allocation into zero parts.
    #[error("allocation needs at least one part")]
    NoParts,
    /// An allocation weight below zero.
    #[error("weight at index {index} is negative")]
    NegativeWeight {
        /// Position of the first negative weight.
        index: usize,
    },
    /// Allocation weights that are all zero.
    #[error("weights sum to zero")]
    ZeroWeights,
}
