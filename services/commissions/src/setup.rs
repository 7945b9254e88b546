//! Configuration facts of the commissions context, each an aggregate of its own stream: plan
//! versions (`plan-<id>`), which plan a partner is on (`assignment-<partner id>`; its tier and
//! upline are partner CRM's, see [`crate::network`]), FX rates
//! (`fx-<FROM>-<TO>`), and which partners a conversion was accrued for
//! (`accrued-<conversion id>`, so refunds find them). Pure decide/evolve: no I/O, no clock.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use pl_commission_engine::{validate_plan, PlanError, PlanVersion};
use pl_money::{Currency, Decimal, Money};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Upline depth followed for multi-level overrides: the engine pays at most
/// [`pl_commission_engine::MAX_OVERRIDE_LEVELS`] levels, so deeper parents would earn nothing.
pub const MAX_UPLINE: usize = pl_commission_engine::MAX_OVERRIDE_LEVELS;

// ----- plans --------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[allow(clippy::large_enum_variant)] // one variant
pub enum PlanEvent {
    PlanVersionPublished(PlanVersion),
}
impl DomainEvent for PlanEvent {}

/// A plan's versions, in publication order. Shared, not copied: every accrual command carries
/// its plan, and a plan with many rules and versions is costly to clone per conversion.
#[derive(Debug, Clone, Default)]
pub struct Plan(pub Arc<Vec<PlanVersion>>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanPublishError {
    #[error(transparent)]
    Invalid(#[from] PlanError),
    #[error("version {got} does not follow the last published version {last}")]
    VersionOutOfOrder { last: u32, got: u32 },
    #[error("version {version} takes effect {effective_from}, not after the previous version")]
    EffectiveOutOfOrder {
        version: u32,
        effective_from: DateTime<Utc>,
    },
    #[error("the plan id in the body ({body}) differs from the request's ({request})")]
    WrongPlan { request: Uuid, body: Uuid },
    /// Grandfathered customers stay on older versions: every version of a plan pays in one
    /// currency, so a conversion's FX pair does not depend on which version it is computed with.
    #[error("the plan pays in {first}; a version cannot pay in {got} (publish a new plan)")]
    PayoutCurrencyChanged { first: Currency, got: Currency },
}

/// Publishing a version (for the plan `plan_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub plan_id: Uuid,
    pub version: PlanVersion,
}

impl Aggregate for Plan {
    type State = Plan;
    type Command = Publish;
    type Event = PlanEvent;
    type Error = PlanPublishError;

    fn decide(plan: &Plan, cmd: &Publish) -> Result<Vec<PlanEvent>, PlanPublishError> {
        let v = &cmd.version;
        if v.plan_id != cmd.plan_id {
            return Err(PlanPublishError::WrongPlan {
                request: cmd.plan_id,
                body: v.plan_id,
            });
        }
        let last = plan.0.last();
        if let Some(first) = plan.0.first() {
            if first.payout_currency != v.payout_currency {
                return Err(PlanPublishError::PayoutCurrencyChanged {
                    first: first.payout_currency,
                    got: v.payout_currency,
                });
            }
        }
        let expected = last.map_or(1, |l| l.version + 1);
        if v.version != expected {
            return Err(PlanPublishError::VersionOutOfOrder {
                last: expected - 1,
                got: v.version,
            });
        }
        if last.is_some_and(|l| v.effective_from <= l.effective_from) {
            return Err(PlanPublishError::EffectiveOutOfOrder {
                version: v.version,
                effective_from: v.effective_from,
            });
        }
        validate_plan(v)?;
        Ok(vec![PlanEvent::PlanVersionPublished(v.clone())])
    }

    fn evolve(mut plan: Plan, event: &PlanEvent) -> Plan {
        match event {
            // Copies the versions only while a command still holds them (never during a replay).
            PlanEvent::PlanVersionPublished(v) => Arc::make_mut(&mut plan.0).push(v.clone()),
        }
        plan
    }
}

pub fn plan_stream(plan_id: Uuid) -> String {
    format!("plan-{plan_id}")
}

// ----- assignments --------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub partner_id: Uuid,
    pub plan_id: Uuid,
    pub effective_from: DateTime<Utc>,
    /// Typed by hand into `AssignPlan` by earlier versions; never read now (the tier and the
    /// upline come from partner CRM, see [`crate::network`]) and never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_partner_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AssignmentEvent {
    PlanAssigned(Assignment),
}
impl DomainEvent for AssignmentEvent {}

/// A partner's plan assignments, in order of effective date.
#[derive(Debug, Clone, Default)]
pub struct Assignments(pub Vec<Assignment>);

impl Assignments {
    /// The assignment in force at `at`.
    pub fn at(&self, at: DateTime<Utc>) -> Option<&Assignment> {
        self.0
            .iter()
            .filter(|a| a.effective_from <= at)
            .max_by_key(|a| a.effective_from)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("an assignment from {0} already exists; assign from a later date")]
    SameStart(DateTime<Utc>),
}

impl Aggregate for Assignments {
    type State = Assignments;
    type Command = Assignment;
    type Event = AssignmentEvent;
    type Error = AssignError;

    fn decide(state: &Assignments, a: &Assignment) -> Result<Vec<AssignmentEvent>, AssignError> {
        if let Some(existing) = state
            .0
            .iter()
            .find(|e| e.effective_from == a.effective_from)
        {
            if existing == a {
                return Ok(vec![]);
            }
            return Err(AssignError::SameStart(a.effective_from));
        }
        Ok(vec![AssignmentEvent::PlanAssigned(a.clone())])
    }

    fn evolve(mut state: Assignments, event: &AssignmentEvent) -> Assignments {
        match event {
            AssignmentEvent::PlanAssigned(a) => state.0.push(a.clone()),
        }
        state
    }
}

pub fn assignment_stream(partner_id: Uuid) -> String {
    format!("assignment-{partner_id}")
}

// ----- FX rates -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FxRate {
    pub from: Currency,
    pub to: Currency,
    pub date: NaiveDate,
    /// Units of `to` per unit of `from`.
    pub rate: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum FxEvent {
    FxRateRecorded(FxRate),
}
impl DomainEvent for FxEvent {}

#[derive(Debug, Clone, Default)]
pub struct FxRates(pub Vec<FxRate>);

impl FxRates {
    /// The rate recorded for exactly this business date: never a neighbour's, never a guess.
    pub fn on(&self, date: NaiveDate) -> Option<Decimal> {
        self.0.iter().rev().find(|r| r.date == date).map(|r| r.rate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FxError {
    #[error("a rate must be positive")]
    NotPositive,
    #[error("a rate between a currency and itself is always 1")]
    SameCurrency,
    #[error("{date} already has rate {existing}; a recorded rate is never changed")]
    AlreadyRecorded { date: NaiveDate, existing: Decimal },
}

impl Aggregate for FxRates {
    type State = FxRates;
    type Command = FxRate;
    type Event = FxEvent;
    type Error = FxError;

    fn decide(state: &FxRates, r: &FxRate) -> Result<Vec<FxEvent>, FxError> {
        if r.rate <= Decimal::ZERO {
            return Err(FxError::NotPositive);
        }
        if r.from == r.to {
            return Err(FxError::SameCurrency);
        }
        match state.on(r.date) {
            Some(existing) if existing == r.rate => Ok(vec![]),
            Some(existing) => Err(FxError::AlreadyRecorded {
                date: r.date,
                existing,
            }),
            None => Ok(vec![FxEvent::FxRateRecorded(r.clone())]),
        }
    }

    fn evolve(mut state: FxRates, event: &FxEvent) -> FxRates {
        match event {
            FxEvent::FxRateRecorded(r) => state.0.push(r.clone()),
        }
        state
    }
}

pub fn fx_stream(from: Currency, to: Currency) -> String {
    format!("fx-{}-{}", from.code(), to.code())
}

// ----- conversion index ---------------------------------------------------------------------

/// Which partners' books hold a conversion's accrual, and the amount reversals are measured
/// against (a 25.00 refund of a 100.00 sale reverses a quarter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accrued {
    pub conversion_id: Uuid,
    pub program_id: Uuid,
    pub partners: Vec<Uuid>,
    pub revenue: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccruedEvent {
    ConversionIndexed(Accrued),
}
impl DomainEvent for AccruedEvent {}

#[derive(Debug, Clone, Default)]
pub struct ConversionIndex(pub Option<Accrued>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {}

impl Aggregate for ConversionIndex {
    type State = ConversionIndex;
    type Command = Accrued;
    type Event = AccruedEvent;
    type Error = IndexError;

    fn decide(state: &ConversionIndex, a: &Accrued) -> Result<Vec<AccruedEvent>, IndexError> {
        Ok(match state.0 {
            Some(_) => vec![],
            None => vec![AccruedEvent::ConversionIndexed(a.clone())],
        })
    }

    fn evolve(_state: ConversionIndex, event: &AccruedEvent) -> ConversionIndex {
        match event {
            AccruedEvent::ConversionIndexed(a) => ConversionIndex(Some(a.clone())),
        }
    }
}

pub fn accrued_stream(conversion_id: Uuid) -> String {
    format!("accrued-{conversion_id}")
}

// ----- refused conversions ------------------------------------------------------------------

/// A conversion commissions refused to accrue, and why: what `GetConversionAccrual` answers
/// instead of waiting. The message itself is kept as a dead letter; a retry that accrues it
/// makes the accrual the answer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub conversion_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RefusalEvent {
    ConversionRefused(Refusal),
}
impl DomainEvent for RefusalEvent {}

/// The first refusal of a conversion (a retry refused again is told by its dead letter).
#[derive(Debug, Clone, Default)]
pub struct ConversionRefusal(pub Option<Refusal>);

impl Aggregate for ConversionRefusal {
    type State = ConversionRefusal;
    type Command = Refusal;
    type Event = RefusalEvent;
    type Error = IndexError;

    fn decide(state: &ConversionRefusal, r: &Refusal) -> Result<Vec<RefusalEvent>, IndexError> {
        Ok(match state.0 {
            Some(_) => vec![],
            None => vec![RefusalEvent::ConversionRefused(r.clone())],
        })
    }

    fn evolve(_state: ConversionRefusal, event: &RefusalEvent) -> ConversionRefusal {
        match event {
            RefusalEvent::ConversionRefused(r) => ConversionRefusal(Some(r.clone())),
        }
    }
}

pub fn refused_stream(conversion_id: Uuid) -> String {
    format!("refused-{conversion_id}")
}

// ----- customer index -----------------------------------------------------------------------

/// Partners (and the plan their book keeps the customer's state under) credited a program
/// customer's conversions under plans that pay recurring shares, so a churn reaches every one
/// of them. (Accruals under other plans are not credited: a churn changes nothing they pay.)
/// Bounded: a customer is credited to a handful of partners in practice.
pub const MAX_CUSTOMER_PARTNERS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCredit {
    pub program_id: Uuid,
    pub customer_id: String,
    pub partner_id: Uuid,
    pub plan_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CustomerEvent {
    CustomerCredited(CustomerCredit),
}
impl DomainEvent for CustomerEvent {}

#[derive(Debug, Clone, Default)]
pub struct CustomerIndex(pub Vec<CustomerCredit>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerIndexError {
    #[error("customer already credited to {MAX_CUSTOMER_PARTNERS} partner plans")]
    Full,
}

impl Aggregate for CustomerIndex {
    type State = CustomerIndex;
    type Command = CustomerCredit;
    type Event = CustomerEvent;
    type Error = CustomerIndexError;

    fn decide(
        state: &CustomerIndex,
        c: &CustomerCredit,
    ) -> Result<Vec<CustomerEvent>, CustomerIndexError> {
        if state
            .0
            .iter()
            .any(|k| k.partner_id == c.partner_id && k.plan_id == c.plan_id)
        {
            return Ok(vec![]);
        }
        if state.0.len() >= MAX_CUSTOMER_PARTNERS {
            return Err(CustomerIndexError::Full);
        }
        Ok(vec![CustomerEvent::CustomerCredited(c.clone())])
    }

    fn evolve(mut state: CustomerIndex, event: &CustomerEvent) -> CustomerIndex {
        match event {
            CustomerEvent::CustomerCredited(c) => state.0.push(c.clone()),
        }
        state
    }
}

/// `customer-<program id>-<first 32 hex digits of sha256(customer id)>`: customer ids are
/// the sender's free text, so the name is hashed to a fixed, safe length (128 bits keep
/// collisions out of reach; the event keeps the id itself for auditors).
pub fn customer_stream(program_id: Uuid, customer_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(customer_id.as_bytes()));
    format!(
        "customer-{program_id}-{}",
        digest.get(..32).unwrap_or(&digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rate(d: u32, r: i64) -> FxRate {
        FxRate {
            from: Currency::EUR,
            to: Currency::USD,
            date: NaiveDate::from_ymd_opt(2026, 1, d).unwrap(),
            rate: Decimal::new(r, 4),
        }
    }

    #[test]
    fn an_fx_rate_is_recorded_once_and_never_changed() {
        let state = FxRates::evolve(
            FxRates::default(),
            &FxEvent::FxRateRecorded(rate(5, 10_850)),
        );
        assert!(FxRates::decide(&state, &rate(5, 10_850))
            .unwrap()
            .is_empty());
        assert!(matches!(
            FxRates::decide(&state, &rate(5, 10_900)),
            Err(FxError::AlreadyRecorded { .. })
        ));
        assert_eq!(
            state.on(NaiveDate::from_ymd_opt(2026, 1, 6).unwrap()),
            None,
            "no neighbour's rate"
        );
    }

    #[test]
    fn the_assignment_in_force_is_the_latest_started() {
        let a = |d: u32, plan: u128| Assignment {
            partner_id: Uuid::from_u128(1),
            plan_id: Uuid::from_u128(plan),
            effective_from: Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap(),
            partner_tier: None,
            parent_partner_id: None,
        };
        let state = Assignments(vec![a(1, 10), a(15, 11)]);
        assert_eq!(
            state
                .at(Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap())
                .unwrap()
                .plan_id,
            Uuid::from_u128(10)
        );
        assert_eq!(
            state
                .at(Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap())
                .unwrap()
                .plan_id,
            Uuid::from_u128(11)
        );
        assert!(state
            .at(Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap())
            .is_none());
    }
}
