//! Fixtures shared by the integration tests.

// Each test binary uses a different subset of the fixtures.
#![allow(dead_code)]

use chrono::{DateTime, TimeDelta, Utc};
use pl_ledger::{Explanation, Ledger, RecordedTransaction, Transaction};
use pl_money::{Currency, Money};
use uuid::Uuid;

pub const PARTNER: Uuid = Uuid::from_u128(0x1);
pub const OTHER_PARTNER: Uuid = Uuid::from_u128(0x2);
pub const PROGRAM: Uuid = Uuid::from_u128(0x10);

/// Midnight UTC of day `n` after 2026-01-01.
pub fn day(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap() + TimeDelta::days(n)
}

pub fn usd(amount: &str) -> Money {
    Money::parse(amount, Currency::USD).unwrap()
}

pub fn eur(amount: &str) -> Money {
    Money::parse(amount, Currency::EUR).unwrap()
}

pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x1000 + n)
}

pub fn why(line: &str) -> Explanation {
    Explanation::new(Uuid::from_u128(0xE000), line)
}

/// A ledger fed through the log: each transaction gets the next position, recorded at `day(n)`.
#[derive(Debug, Default)]
pub struct Books {
    pub ledger: Ledger,
    pub log: Vec<RecordedTransaction>,
}

impl Books {
    /// Records `transaction` at the next log position on `recorded_day`, returning the position.
    pub fn record(&mut self, transaction: Transaction, recorded_day: i64) -> u64 {
        let position = self.log.len() as u64;
        let recorded = RecordedTransaction {
            transaction,
            position,
            recorded_at: day(recorded_day),
        };
        self.ledger.apply(&recorded).unwrap();
        self.log.push(recorded);
        position
    }
}
