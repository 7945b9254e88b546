//! A percentage between 0 % and 100 %, the unit of every rate in a plan.

use std::fmt;

use pl_money::{Money, MoneyError};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// A rate in percent units, always within `[0, 100]`: `Percent::new(10)` is 10 %, and so is
/// `Percent::from_fraction(0.1)`. Every rate of a plan (percent rewards, schedule steps, revenue
/// tiers, overrides) has this type, so a fraction can never be mistaken for a percentage.
///
/// Serialized as the percentage in a decimal string (`"12.5"`); deserializing checks the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Percent(Decimal);

impl Percent {
    /// 0 %.
    pub const ZERO: Percent = Percent(Decimal::ZERO);

    /// `pct` percent; [`EngineError::RateOutOfRange`] outside `[0, 100]`.
    pub fn new(pct: impl Into<Decimal>) -> Result<Percent, EngineError> {
        let pct = pct.into();
        if pct < Decimal::ZERO || pct > Decimal::ONE_HUNDRED {
            return Err(EngineError::RateOutOfRange(pct));
        }
        Ok(Percent(pct.normalize()))
    }

    /// The percentage of a fraction of one (`0.02` is 2 %).
    pub fn from_fraction(fraction: Decimal) -> Result<Percent, EngineError> {
        let pct = fraction
            .checked_mul(Decimal::ONE_HUNDRED)
            .ok_or(EngineError::RateOutOfRange(fraction))?;
        Percent::new(pct)
    }

    /// The value in percent units (10 for 10 %).
    pub const fn value(self) -> Decimal {
        self.0
    }

    /// The value as a fraction of one (0.1 for 10 %).
    pub fn fraction(self) -> Decimal {
        // Moving the point two places is exact while the scale stays within 28; past that,
        // division rounds at the 28th decimal place.
        let mut shifted = self.0;
        match shifted.set_scale(self.0.scale() + 2) {
            Ok(()) => shifted,
            Err(_) => self.0 / Decimal::ONE_HUNDRED,
        }
    }

    /// This percentage of `amount`, unrounded.
    pub fn of(self, amount: Money) -> Result<Money, MoneyError> {
        amount.percent(self.0)
    }

    /// Whether this is 0 %.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl TryFrom<Decimal> for Percent {
    type Error = EngineError;

    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Percent::new(value)
    }
}

impl From<Percent> for Decimal {
    fn from(p: Percent) -> Decimal {
        p.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0.normalize())
    }
}
