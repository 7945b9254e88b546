//! Calendar months (UTC), the accounting period of volume tiers, period caps and net revenue.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A calendar month in UTC, e.g. `2025-03`. Serialized as that string, so it can key a JSON map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    /// The month `month` (1–12) of `year`; `None` for a month outside 1–12.
    pub fn new(year: i32, month: u32) -> Option<Period> {
        (1..=12).contains(&month).then_some(Period { year, month })
    }

    /// The UTC calendar month containing `at`.
    pub fn of(at: DateTime<Utc>) -> Period {
        Period {
            year: at.year(),
            month: at.month(),
        }
    }

    /// The year.
    pub const fn year(self) -> i32 {
        self.year
    }

    /// The month, 1–12.
    pub const fn month(self) -> u32 {
        self.month
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A period string that is not `YYYY-MM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period {0:?} is not a year and month such as 2025-03")]
pub struct PeriodParseError(String);

impl FromStr for Period {
    type Err = PeriodParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PeriodParseError(s.to_owned());
        let (year, month) = s.rsplit_once('-').ok_or_else(bad)?;
        if month.len() != 2 || year.is_empty() {
            return Err(bad());
        }
        let year = year.parse::<i32>().map_err(|_| bad())?;
        let month = month.parse::<u32>().map_err(|_| bad())?;
        Period::new(year, month).ok_or_else(bad)
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PeriodVisitor;

        impl Visitor<'_> for PeriodVisitor {
            type Value = Period;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a period string such as \"2025-03\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Period, E> {
                s.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(PeriodVisitor)
    }
}

/// The customer month of `at` counted from `first` (the first paid invoice): month 1 runs from
/// `first` up to one calendar month later (`first + 1 month`, the day clamped to the month's
/// end), month 2 up to `first + 2 months`, and so on. `None` when `at` is before `first` or the
/// index would not fit.
pub(crate) fn month_index(first: DateTime<Utc>, at: DateTime<Utc>) -> Option<u32> {
    if at < first {
        return None;
    }
    let months_between =
        i64::from(at.year() - first.year()) * 12 + i64::from(at.month()) - i64::from(first.month());
    let mut whole = u32::try_from(months_between).ok()?;
    // The calendar difference overshoots by one when the anniversary in `at`'s month is later.
    let anniversary = first.checked_add_months(Months::new(whole))?;
    if anniversary > at {
        whole = whole.checked_sub(1)?;
    }
    whole.checked_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn month_one_runs_until_the_first_monthly_anniversary() {
        assert_eq!(month_index(at(2025, 1, 15), at(2025, 1, 15)), Some(1));
        assert_eq!(month_index(at(2025, 1, 15), at(2025, 2, 14)), Some(1));
        assert_eq!(month_index(at(2025, 1, 15), at(2025, 2, 15)), Some(2));
        assert_eq!(month_index(at(2025, 1, 15), at(2026, 1, 14)), Some(12));
        assert_eq!(month_index(at(2025, 1, 15), at(2026, 1, 15)), Some(13));
        assert_eq!(month_index(at(2025, 1, 15), at(2025, 1, 14)), None);
    }

    #[test]
    fn an_anniversary_on_the_31st_is_clamped_to_the_end_of_a_short_month() {
        assert_eq!(month_index(at(2025, 1, 31), at(2025, 2, 27)), Some(1));
        assert_eq!(month_index(at(2025, 1, 31), at(2025, 2, 28)), Some(2));
        assert_eq!(month_index(at(2025, 1, 31), at(2025, 3, 30)), Some(2));
        assert_eq!(month_index(at(2025, 1, 31), at(2025, 3, 31)), Some(3));
    }

    #[test]
    fn a_period_round_trips_through_its_text_form() {
        let p = Period::of(at(2025, 3, 9));
        assert_eq!(p.to_string(), "2025-03");
        assert_eq!("2025-03".parse::<Period>(), Ok(p));
        assert!("2025-3".parse::<Period>().is_err());
        assert!("2025-13".parse::<Period>().is_err());
    }
}
