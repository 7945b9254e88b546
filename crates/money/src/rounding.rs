//! Rounding modes, named the way finance people say them.

use rust_decimal::RoundingStrategy;

/// How to round an amount to fewer decimal places. Rounding is never implicit: every operation
/// that needs it takes a mode.
///
/// | mode       | 2.345 | 2.355 | -2.345 | 2.341 | -2.341 |
/// |------------|-------|-------|--------|-------|--------|
/// | `HalfEven` | 2.34  | 2.36  | -2.34  | 2.34  | -2.34  |
/// | `HalfUp`   | 2.35  | 2.36  | -2.35  | 2.34  | -2.34  |
/// | `HalfDown` | 2.34  | 2.35  | -2.34  | 2.34  | -2.34  |
/// | `Up`       | 2.35  | 2.36  | -2.35  | 2.35  | -2.35  |
/// | `Down`     | 2.34  | 2.35  | -2.34  | 2.34  | -2.34  |
/// | `Ceiling`  | 2.35  | 2.36  | -2.34  | 2.35  | -2.34  |
/// | `Floor`    | 2.34  | 2.35  | -2.35  | 2.34  | -2.35  |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoundingMode {
    /// Nearest; ties to the even digit (banker's rounding). The default, because it has no bias
    /// over many roundings.
    #[default]
    HalfEven,
    /// Nearest; ties away from zero (schoolbook rounding).
    HalfUp,
    /// Nearest; ties toward zero.
    HalfDown,
    /// Away from zero.
    Up,
    /// Toward zero (truncation).
    Down,
    /// Toward positive infinity.
    Ceiling,
    /// Toward negative infinity.
    Floor,
}

impl From<RoundingMode> for RoundingStrategy {
    fn from(mode: RoundingMode) -> Self {
        match mode {
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
            RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::HalfDown => RoundingStrategy::MidpointTowardZero,
            RoundingMode::Up => RoundingStrategy::AwayFromZero,
            RoundingMode::Down => RoundingStrategy::ToZero,
            RoundingMode::Ceiling => RoundingStrategy::ToPositiveInfinity,
            RoundingMode::Floor => RoundingStrategy::ToNegativeInfinity,
        }
    }
}
