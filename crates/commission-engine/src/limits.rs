//! Upper bounds on every list and text, so no input can make a computation unbounded.

/// Rules per plan version.
pub const MAX_RULES: usize = 256;
/// Tiers per tiered reward.
pub const MAX_TIERS: usize = 32;
/// Override levels per plan (parent, grandparent, ...).
pub const MAX_OVERRIDE_LEVELS: usize = 5;
/// Steps per recurring schedule.
pub const MAX_SCHEDULE_STEPS: usize = 60;
/// Customer months a schedule, month condition or duration may name (50 years).
pub const MAX_MONTH: u32 = 600;
/// Days an accrual may be held.
pub const MAX_HOLD_DAYS: u32 = 3_660;
/// Characters of a rule id.
pub const MAX_RULE_ID: usize = 64;
/// Characters of any other text (customer id, product, tier, country).
pub const MAX_TEXT: usize = 128;
/// Products per conversion.
pub const MAX_PRODUCTS: usize = 64;
/// Upline entries per conversion.
pub const MAX_UPLINE: usize = 16;
/// Plan versions given to [`select_version`](crate::select_version).
pub const MAX_VERSIONS: usize = 1_000;
/// Credited partners of one conversion (attribution's limit too).
pub const MAX_SPLIT_PARTS: usize = 16;
/// Decimal places of a split's weight (attribution writes six).
pub const MAX_SPLIT_WEIGHT_PLACES: u32 = 9;
/// The largest magnitude of any amount of a conversion, in major units (a trillion): far above
/// any real sale, and low enough that sums of them never leave a decimal's range.
pub const MAX_AMOUNT: rust_decimal::Decimal =
    rust_decimal::Decimal::from_parts(3_567_587_328, 232, 0, false, 0);
/// The most lots one conversion may carry.
pub const MAX_LOTS: rust_decimal::Decimal =
    rust_decimal::Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
