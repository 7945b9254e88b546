//! Exact money for the ledger: ISO 4217 currencies, decimal amounts, explicit rounding and
//! allocation that always sums to the total. It must never touch a float, do I/O, read a clock,
//! or panic on any input: every fallible operation returns [`MoneyError`].
//!
//! ```
//! use pl_money::{allocate, Currency, Decimal, Money, RoundingMode};
//!
//! let sale: Money = "80.10 USD".parse()?;
//! // 12.5 % commission: the exact product first, then one explicit rounding.
//! let commission = sale.percent(Decimal::new(125, 1))?;
//! assert_eq!(commission.to_string(), "10.01250 USD");
//! assert_eq!(commission.round(RoundingMode::HalfEven).to_string(), "10.01 USD");
//!
//! // Split between three partners 50/30/20; the parts sum exactly to the sale.
//! let weights = [Decimal::from(50), Decimal::from(30), Decimal::from(20)];
//! let parts = allocate(sale, &weights)?;
//! assert_eq!(Money::try_sum(Currency::USD, parts)?, sale);
//!
//! // Currencies never mix.
//! let fee = Money::from_minor_units(500, Currency::JPY);
//! assert!(sale.checked_add(fee).is_err());
//! # Ok::<(), pl_money::MoneyError>(())
//! ```

mod allocate;
mod currency;
mod error;
mod money;
mod parse;
mod rounding;

pub use allocate::{allocate, allocate_evenly};
pub use currency::Currency;
pub use error::MoneyError;
pub use money::Money;
pub use parse::parse_amount;
pub use rounding::RoundingMode;
/// Re-exported so callers build amounts and weights with the same `Decimal` this crate uses.
pub use rust_decimal::Decimal;
