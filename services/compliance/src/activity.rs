//! What compliance notes of attribution's conversions, for the refund-rate rule: one stream
//! per conversion (`compliance-conversion-<id>`: its partners and reversals, so a refund —
//! which names only the conversion — reaches the partners), and one per partner
//! (`compliance-activity-<partner>`: conversions and refunded conversions per UTC day, the
//! last [`RETENTION_DAYS`] days kept). Pure deciders, idempotent by their own keys (conversion
//! and reversal ids); they count, they never judge (the rule in `rules` does).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Days, NaiveDate, Utc};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rules::MAX_REFUND_WINDOW_DAYS;

/// Days of activity kept per partner: the longest refund window allowed.
pub const RETENTION_DAYS: u32 = MAX_REFUND_WINDOW_DAYS;
/// Reversals noted per conversion.
pub const MAX_REVERSALS: usize = 1_000;

// ----- one conversion ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted {
    pub conversion_id: Uuid,
    pub program_id: Uuid,
    pub partner_ids: Vec<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReversalNoted {
    pub reversal_id: Uuid,
    pub conversion_id: Uuid,
    /// refund or chargeback.
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    /// The conversion's first reversal: only it counts towards the refund rate.
    pub first: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ConversionEvent {
    ConversionNoted(Noted),
    ReversalNoted(ReversalNoted),
}

impl DomainEvent for ConversionEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversionCommand {
    Note(Noted),
    Reverse {
        reversal_id: Uuid,
        kind: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversionRecord {
    pub noted: Option<Noted>,
    pub reversals: BTreeSet<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("conversion has {MAX_REVERSALS} reversals already")]
    TooManyReversals,
}

impl Aggregate for ConversionRecord {
    type State = ConversionRecord;
    type Command = ConversionCommand;
    type Event = ConversionEvent;
    type Error = ConversionError;

    /// A conversion is noted once; a reversal of a conversion never noted, or noted before,
    /// records nothing.
    fn decide(
        state: &ConversionRecord,
        cmd: &ConversionCommand,
    ) -> Result<Vec<ConversionEvent>, ConversionError> {
        match cmd {
            ConversionCommand::Note(n) => Ok(if state.noted.is_some() {
                vec![]
            } else {
                vec![ConversionEvent::ConversionNoted(n.clone())]
            }),
            ConversionCommand::Reverse {
                reversal_id,
                kind,
                at,
            } => {
                let Some(noted) = &state.noted else {
                    return Ok(vec![]);
                };
                if state.reversals.contains(reversal_id) {
                    return Ok(vec![]);
                }
                if state.reversals.len() >= MAX_REVERSALS {
                    return Err(ConversionError::TooManyReversals);
                }
                Ok(vec![ConversionEvent::ReversalNoted(ReversalNoted {
                    reversal_id: *reversal_id,
                    conversion_id: noted.conversion_id,
                    kind: kind.clone(),
                    occurred_at: *at,
                    first: state.reversals.is_empty(),
                })])
            }
        }
    }

    fn evolve(mut state: ConversionRecord, event: &ConversionEvent) -> ConversionRecord {
        match event {
            ConversionEvent::ConversionNoted(n) => state.noted = Some(n.clone()),
            ConversionEvent::ReversalNoted(r) => {
                state.reversals.insert(r.reversal_id);
            }
        }
        state
    }
}

// ----- one partner's activity ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ActivityEvent {
    ConversionCounted {
        conversion_id: Uuid,
        day: NaiveDate,
    },
    /// A conversion's first refund or chargeback, with the partner's counts in the window
    /// ending on the refund's day, this refund included.
    RefundCounted {
        conversion_id: Uuid,
        conversion_day: NaiveDate,
        refund_day: NaiveDate,
        window_days: u32,
        conversions_in_window: u32,
        refunded_in_window: u32,
    },
}

impl DomainEvent for ActivityEvent {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivityCommand {
    Count {
        conversion_id: Uuid,
        day: NaiveDate,
    },
    Refund {
        conversion_id: Uuid,
        conversion_day: NaiveDate,
        refund_day: NaiveDate,
        window_days: u32,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayActivity {
    pub conversions: BTreeSet<Uuid>,
    /// Refunded conversions of the day, each with the (conversions, refunded) of the window
    /// its refund was counted in: the refund-rate rule reads these, not the window as it is
    /// now, so screening a refund again (a retry after a partial failure) decides as the
    /// first time did although later conversions have been counted since.
    pub refunded: BTreeMap<Uuid, (u32, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerActivity {
    pub days: BTreeMap<NaiveDate, DayActivity>,
    pub newest: Option<NaiveDate>,
}

impl PartnerActivity {
    /// The first day still kept: older days are dropped and their events ignored.
    fn horizon(&self) -> Option<NaiveDate> {
        self.newest?
            .checked_sub_days(Days::new(u64::from(RETENTION_DAYS)))
    }

    fn too_old(&self, day: NaiveDate) -> bool {
        self.horizon().is_some_and(|h| day < h)
    }

    /// The (conversions, refunded) of the window `conversion_id`'s refund was counted in, if
    /// it was (and its day is still kept).
    pub fn refund_window(
        &self,
        conversion_id: Uuid,
        conversion_day: NaiveDate,
    ) -> Option<(u32, u32)> {
        self.days
            .get(&conversion_day)?
            .refunded
            .get(&conversion_id)
            .copied()
    }

    /// (conversions, refunded) of the days in (end - window_days, end].
    pub fn window(&self, end: NaiveDate, window_days: u32) -> (u32, u32) {
        let start = end
            .checked_sub_days(Days::new(u64::from(window_days.saturating_sub(1))))
            .unwrap_or(NaiveDate::MIN);
        self.days.range(start..=end).fold((0, 0), |(c, r), (_, d)| {
            (
                c.saturating_add(u32::try_from(d.conversions.len()).unwrap_or(u32::MAX)),
                r.saturating_add(u32::try_from(d.refunded.len()).unwrap_or(u32::MAX)),
            )
        })
    }
}

impl Aggregate for PartnerActivity {
    type State = PartnerActivity;
    type Command = ActivityCommand;
    type Event = ActivityEvent;
    type Error = std::convert::Infallible;

    fn decide(
        state: &PartnerActivity,
        cmd: &ActivityCommand,
    ) -> Result<Vec<ActivityEvent>, std::convert::Infallible> {
        match cmd {
            ActivityCommand::Count { conversion_id, day } => {
                let known = state
                    .days
                    .get(day)
                    .is_some_and(|d| d.conversions.contains(conversion_id));
                if known || state.too_old(*day) {
                    return Ok(vec![]);
                }
                Ok(vec![ActivityEvent::ConversionCounted {
                    conversion_id: *conversion_id,
                    day: *day,
                }])
            }
            ActivityCommand::Refund {
                conversion_id,
                conversion_day,
                refund_day,
                window_days,
            } => {
                let Some(d) = state.days.get(conversion_day) else {
                    return Ok(vec![]);
                };
                if !d.conversions.contains(conversion_id) || d.refunded.contains_key(conversion_id)
                {
                    return Ok(vec![]);
                }
                let (conversions, refunded) = state.window(*refund_day, *window_days);
                let start = refund_day
                    .checked_sub_days(Days::new(u64::from(window_days.saturating_sub(1))))
                    .unwrap_or(NaiveDate::MIN);
                let this_one = u32::from((start..=*refund_day).contains(conversion_day));
                Ok(vec![ActivityEvent::RefundCounted {
                    conversion_id: *conversion_id,
                    conversion_day: *conversion_day,
                    refund_day: *refund_day,
                    window_days: *window_days,
                    conversions_in_window: conversions,
                    refunded_in_window: refunded.saturating_add(this_one),
                }])
            }
        }
    }

    fn evolve(mut state: PartnerActivity, event: &ActivityEvent) -> PartnerActivity {
        match event {
            ActivityEvent::ConversionCounted { conversion_id, day } => {
                state
                    .days
                    .entry(*day)
                    .or_default()
                    .conversions
                    .insert(*conversion_id);
                state.newest = Some(state.newest.map_or(*day, |n| n.max(*day)));
                if let Some(h) = state.horizon() {
                    state.days = state.days.split_off(&h);
                }
            }
            ActivityEvent::RefundCounted {
                conversion_id,
                conversion_day,
                conversions_in_window,
                refunded_in_window,
                ..
            } => {
                if let Some(d) = state.days.get_mut(conversion_day) {
                    d.refunded.insert(
                        *conversion_id,
                        (*conversions_in_window, *refunded_in_window),
                    );
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn d(m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, m, day).unwrap()
    }

    fn apply(s: PartnerActivity, c: &ActivityCommand) -> (PartnerActivity, Vec<ActivityEvent>) {
        let events = PartnerActivity::decide(&s, c).unwrap();
        let s = events.iter().fold(s, PartnerActivity::evolve);
        (s, events)
    }

    fn count(s: PartnerActivity, n: u128, day: NaiveDate) -> PartnerActivity {
        apply(
            s,
            &ActivityCommand::Count {
                conversion_id: Uuid::from_u128(n),
                day,
            },
        )
        .0
    }

    fn refund(n: u128, conversion_day: NaiveDate, refund_day: NaiveDate) -> ActivityCommand {
        ActivityCommand::Refund {
            conversion_id: Uuid::from_u128(n),
            conversion_day,
            refund_day,
            window_days: 30,
        }
    }

    #[test]
    fn given_conversions_inside_and_outside_the_window_when_one_is_refunded_then_only_the_last_30_days_count(
    ) {
        let mut s = PartnerActivity::default();
        s = count(s, 1, d(1, 1)); // 31 days before the refund: outside
        s = count(s, 2, d(1, 2)); // 30th day back: inside
        s = count(s, 3, d(1, 31));
        let (_, events) = apply(s, &refund(2, d(1, 2), d(1, 31)));
        assert_eq!(
            events,
            vec![ActivityEvent::RefundCounted {
                conversion_id: Uuid::from_u128(2),
                conversion_day: d(1, 2),
                refund_day: d(1, 31),
                window_days: 30,
                conversions_in_window: 2,
                refunded_in_window: 1,
            }]
        );
    }

    #[test]
    fn given_a_refunded_conversion_when_refunded_again_then_it_counts_once() {
        let s = count(PartnerActivity::default(), 1, d(1, 1));
        let (s, first) = apply(s, &refund(1, d(1, 1), d(1, 2)));
        assert_eq!(first.len(), 1);
        let (_, again) = apply(s, &refund(1, d(1, 1), d(1, 3)));
        assert!(again.is_empty());
    }

    #[test]
    fn given_a_counted_conversion_when_counted_again_then_nothing_is_recorded_and_old_days_are_dropped(
    ) {
        let s = count(PartnerActivity::default(), 1, d(1, 1));
        let (s, again) = apply(
            s,
            &ActivityCommand::Count {
                conversion_id: Uuid::from_u128(1),
                day: d(1, 1),
            },
        );
        assert!(again.is_empty());
        let s = count(s, 2, d(6, 1));
        assert!(!s.days.contains_key(&d(1, 1)));
        let (_, old) = apply(
            s,
            &ActivityCommand::Count {
                conversion_id: Uuid::from_u128(3),
                day: d(1, 5),
            },
        );
        assert!(old.is_empty());
    }

    #[test]
    fn given_a_conversion_when_its_second_reversal_arrives_then_it_is_not_the_first() {
        let note = ConversionCommand::Note(Noted {
            conversion_id: Uuid::from_u128(1),
            program_id: Uuid::from_u128(2),
            partner_ids: vec![Uuid::from_u128(3)],
            occurred_at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
        });
        let rev = |n: u128| ConversionCommand::Reverse {
            reversal_id: Uuid::from_u128(n),
            kind: "refund".into(),
            at: DateTime::from_timestamp(1_767_312_000, 0).unwrap(),
        };
        let unknown = ConversionRecord::decide(&ConversionRecord::default(), &rev(9)).unwrap();
        assert!(unknown.is_empty());
        let mut s = ConversionRecord::default();
        for c in [note.clone(), rev(9), rev(10), rev(10), note] {
            let events = ConversionRecord::decide(&s, &c).unwrap();
            if let (
                ConversionCommand::Reverse { reversal_id, .. },
                [ConversionEvent::ReversalNoted(r)],
            ) = (&c, events.as_slice())
            {
                assert_eq!(r.first, *reversal_id == Uuid::from_u128(9));
            }
            s = events.iter().fold(s, ConversionRecord::evolve);
        }
        assert_eq!(s.reversals.len(), 2);
    }
}
