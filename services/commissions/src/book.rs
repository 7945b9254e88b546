//! A partner's commission book (one stream `ledger-<partner id>`): every accrual, override,
//! reversal, clawback and maturity of the partner, each event carrying the double-entry ledger
//! transactions it posts. One stream per partner, so per-partner optimistic concurrency orders
//! everything that moves the partner's money. Pure decide/evolve: no I/O, no clock.
//!
//! Entries: each amount owed to this partner for one conversion (its base line with any tier
//! top-up, or one override line) is an entry that is pending until its hold ends, then payable.
//! A reversal of a pending entry is posted as `Reversal` (pending → expense); of a matured one as
//! a `Clawback` (payable → expense), which may drive payable negative.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use pl_commission_engine::{
    accrue, reverse_remaining, select_version, Accrual, AccrualLine, ConversionFacts, EngineError,
    LineKind, PartnerState, PlanVersion, Reversal,
};
use pl_ledger::Account;
use pl_ledger::{postings, Explanation, FormulaInputs, LedgerError, Transaction};
use pl_money::{Currency, Decimal, Money};
use pl_runtime::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Entries a partner book tracks; a maturity run matures at most this many at once.
pub const MAX_MATURED_PER_RUN: usize = 10_000;

/// Which line of a conversion an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKey {
    /// The partner's own commission (base plus any tier top-up).
    Own,
    /// An override earned from a downline partner's conversion.
    Override { from_partner: Uuid, level: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub program_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub hold_days: u32,
    /// Accrued minus reversed so far (in the payout currency).
    pub open: Money,
    pub matured: bool,
}

impl Entry {
    fn matures_by(&self, as_of: DateTime<Utc>) -> bool {
        self.occurred_at + Duration::days(i64::from(self.hold_days)) <= as_of
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
#[allow(clippy::large_enum_variant)] // built once per command and stored; boxing buys nothing
pub enum BookEvent {
    /// The engine's accrual for a conversion credited to this partner; `transactions` post the
    /// partner's own non-zero lines (override lines are posted in the upline's books).
    ConversionAccrued {
        program_id: Uuid,
        hold_days: u32,
        accrual: Accrual,
        transactions: Vec<Transaction>,
        /// The campaign the partner's credit came through (attribution's share), for reports.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        campaign_id: Option<Uuid>,
        /// The version of the program's network (partner CRM's hierarchy and tiers, see
        /// [`crate::network`]) the upline and the tier were taken from; `None` when CRM had
        /// reported nothing for the program (and in accruals recorded before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hierarchy_version: Option<u64>,
    },
    /// An override line of a downline partner's accrual.
    OverrideAccrued {
        program_id: Uuid,
        conversion_id: Uuid,
        from_partner: Uuid,
        occurred_at: DateTime<Utc>,
        hold_days: u32,
        line: AccrualLine,
        transactions: Vec<Transaction>,
    },
    /// A refund or chargeback of a conversion credited to this partner: the engine's reversal
    /// of the whole accrual (kept for cumulative fractions) and the postings of the own lines.
    ConversionReversed {
        reversal_id: Uuid,
        reversal: Reversal,
        transactions: Vec<Transaction>,
    },
    /// The reversal of an override this partner earned.
    OverrideReversed {
        reversal_id: Uuid,
        conversion_id: Uuid,
        from_partner: Uuid,
        level: u8,
        amount: Money,
        transactions: Vec<Transaction>,
    },
    /// Entries whose hold ended by `as_of` moved from pending to payable.
    CommissionsMatured {
        as_of: DateTime<Utc>,
        entries: Vec<(Uuid, EntryKey)>,
        transactions: Vec<Transaction>,
    },
    /// A customer of this partner churned: lifetime shares stop.
    CustomerChurned {
        plan_id: Uuid,
        customer_id: String,
        at: DateTime<Utc>,
    },
    /// A payout run paid the partner's whole payable in one currency: payable → clearing.
    PayoutCreated {
        run_id: Uuid,
        program_id: Uuid,
        amount: Money,
        transactions: Vec<Transaction>,
    },
    /// The payout reached the partner: clearing → paid.
    PayoutSettled {
        run_id: Uuid,
        currency: Currency,
        transactions: Vec<Transaction>,
    },
    /// The payout came back: clearing → payable, to be paid by a later run.
    PayoutFailed {
        run_id: Uuid,
        currency: Currency,
        reason: String,
        transactions: Vec<Transaction>,
    },
    /// Money owed to the partner outside commission plans (a campaign's flat fee, an MDF
    /// reimbursement), payable at once.
    PartnerCredited {
        program_id: Uuid,
        credit: CreditKind,
        transactions: Vec<Transaction>,
    },
    /// A manager's manual adjustment of the partner's payable (a correction, or a bonus
    /// outside any plan), approved and referenced; undone only by a counter adjustment.
    Adjusted {
        program_id: Uuid,
        adjustment: Adjustment,
        transactions: Vec<Transaction>,
    },
}

impl DomainEvent for BookEvent {
    /// Stored as `StoredBookEvent` (see [`crate::book_codec`]); version 1 was all JSON.
    fn schema_version(&self) -> u32 {
        crate::book_codec::STORED_SCHEMA_VERSION
    }

    fn encode(&self) -> Result<(String, bytes::Bytes), String> {
        crate::book_codec::encode(self)
    }

    fn decode(recorded: &pl_eventlog::RecordedEvent) -> Result<Self, String> {
        crate::book_codec::decode(recorded)
    }
}

/// Why a manual adjustment was made: the program report counts each kind apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    /// Money owed outside any plan (a one-off campaign bonus, a goodwill payment).
    Bonus,
    /// A correction (after a dispute, a mistake found in a statement).
    Correction,
}

impl AdjustmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Bonus => "bonus",
            AdjustmentKind::Correction => "correction",
        }
    }
}

/// A manual adjustment as decided: what, how much (signed: positive credits the partner's
/// payable), why, on whose approval, and the adjustment it counters, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub adjustment_id: Uuid,
    pub kind: AdjustmentKind,
    pub amount: Money,
    pub reason: String,
    pub reference: String,
    pub approved_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// What a credit outside commission plans is for; each is credited once per partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CreditKind {
    /// A creator campaign's flat fee (partner CRM's `CampaignFeeCommitted`).
    CampaignFee { campaign_id: Uuid },
    /// An approved MDF claim (partner CRM's `MdfReimbursementApproved`).
    MdfReimbursement { claim_id: Uuid },
    /// A campaign's performance bonus (partner CRM's `CampaignBonusAwarded`).
    CampaignBonus { campaign_id: Uuid },
}

impl BookEvent {
    /// The event's type: its variant's name, as the tag of its JSON form spells it (a test
    /// checks the two agree for every variant).
    pub fn event_type(&self) -> &'static str {
        match self {
            BookEvent::ConversionAccrued { .. } => "ConversionAccrued",
            BookEvent::OverrideAccrued { .. } => "OverrideAccrued",
            BookEvent::ConversionReversed { .. } => "ConversionReversed",
            BookEvent::OverrideReversed { .. } => "OverrideReversed",
            BookEvent::CommissionsMatured { .. } => "CommissionsMatured",
            BookEvent::CustomerChurned { .. } => "CustomerChurned",
            BookEvent::PayoutCreated { .. } => "PayoutCreated",
            BookEvent::PayoutSettled { .. } => "PayoutSettled",
            BookEvent::PayoutFailed { .. } => "PayoutFailed",
            BookEvent::PartnerCredited { .. } => "PartnerCredited",
            BookEvent::Adjusted { .. } => "Adjusted",
        }
    }

    pub fn transactions(&self) -> &[Transaction] {
        match self {
            BookEvent::ConversionAccrued { transactions, .. }
            | BookEvent::PartnerCredited { transactions, .. }
            | BookEvent::Adjusted { transactions, .. }
            | BookEvent::OverrideAccrued { transactions, .. }
            | BookEvent::ConversionReversed { transactions, .. }
            | BookEvent::OverrideReversed { transactions, .. }
            | BookEvent::CommissionsMatured { transactions, .. }
            | BookEvent::PayoutCreated { transactions, .. }
            | BookEvent::PayoutSettled { transactions, .. }
            | BookEvent::PayoutFailed { transactions, .. } => transactions,
            BookEvent::CustomerChurned { .. } => &[],
        }
    }

    /// The transactions, for the codec; `None` for an event that posts none.
    pub(crate) fn transactions_mut(&mut self) -> Option<&mut Vec<Transaction>> {
        match self {
            BookEvent::ConversionAccrued { transactions, .. }
            | BookEvent::PartnerCredited { transactions, .. }
            | BookEvent::Adjusted { transactions, .. }
            | BookEvent::OverrideAccrued { transactions, .. }
            | BookEvent::ConversionReversed { transactions, .. }
            | BookEvent::OverrideReversed { transactions, .. }
            | BookEvent::CommissionsMatured { transactions, .. }
            | BookEvent::PayoutCreated { transactions, .. }
            | BookEvent::PayoutSettled { transactions, .. }
            | BookEvent::PayoutFailed { transactions, .. } => Some(transactions),
            BookEvent::CustomerChurned { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Book {
    pub partner_id: Option<Uuid>,
    /// The engine's state per plan.
    pub engine: BTreeMap<Uuid, PartnerState>,
    /// Accruals of conversions credited to this partner, with their reversals so far.
    pub accruals: BTreeMap<Uuid, (Accrual, Vec<Reversal>)>,
    /// The network version each accrual with override lines took its upline from, by
    /// conversion: the overrides posted in the upline's books name it (kept apart from the
    /// engine's accrual, and only where an upline was paid).
    pub hierarchy_versions: BTreeMap<Uuid, u64>,
    pub entries: BTreeMap<(Uuid, EntryKey), Entry>,
    /// Refund and chargeback ids already applied: the same one twice changes nothing.
    pub reversals_seen: BTreeSet<Uuid>,
    /// Override reversals applied, by (refund id, conversion, downline partner, level): one
    /// refund reverses this partner's own line and each override it earned on the conversion,
    /// so the refund id alone does not tell them apart.
    pub override_reversals_seen: BTreeSet<(Uuid, Uuid, Uuid, u8)>,
    /// Each applied reversal of a conversion credited to this partner, by refund id, so a
    /// redelivered refund can still pass the override reversals on to the upline.
    pub reversals: BTreeMap<Uuid, Reversal>,
    /// The partner's payable per currency, summed from the transactions of this book (the one
    /// stream that moves it), so a payout is decided against the balance it draws on and a
    /// concurrent run or clawback makes the append conflict and the payout be re-decided.
    pub payable: BTreeMap<Currency, Money>,
    /// Payouts by (run, currency).
    pub payouts: BTreeMap<(Uuid, Currency), Payout>,
    /// Credits outside plans already posted: the same one twice changes nothing.
    pub credits: BTreeSet<CreditKind>,
    /// Manual adjustments by id, and whether a counter adjustment has undone each.
    pub adjustments: BTreeMap<Uuid, (Adjustment, bool)>,
    /// Set when a stored event could not be applied (never expected; reported on the next
    /// command instead of being ignored).
    pub broken: Option<String>,
}

/// Where a payout is: sent (in clearing), then settled or failed, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    Sent,
    Settled,
    Failed,
}

impl PayoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutStatus::Sent => "sent",
            PayoutStatus::Settled => "settled",
            PayoutStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    pub program_id: Uuid,
    pub amount: Money,
    pub created_at: DateTime<Utc>,
    pub status: PayoutStatus,
    /// Why it failed, when it did.
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one command per request, never stored in bulk
pub enum BookCommand {
    Accrue {
        program_id: Uuid,
        /// The version of the program's network the facts' upline and tier come from.
        hierarchy_version: Option<u64>,
        /// The campaign of the partner's credit, recorded for reports by campaign.
        campaign_id: Option<Uuid>,
        facts: ConversionFacts,
        /// The plan's versions, shared with the plan cache (see [`crate::setup::Plan`]).
        versions: Arc<Vec<PlanVersion>>,
    },
    AccrueOverride {
        program_id: Uuid,
        conversion_id: Uuid,
        from_partner: Uuid,
        occurred_at: DateTime<Utc>,
        hold_days: u32,
        line: AccrualLine,
        source_event_id: Uuid,
        /// The network version the downline's accrual took its upline from.
        hierarchy_version: Option<u64>,
    },
    Reverse {
        reversal_id: Uuid,
        conversion_id: Uuid,
        fraction: Decimal,
        occurred_at: DateTime<Utc>,
        source_event_id: Uuid,
    },
    /// Reverses whatever is left of a conversion's commission (a rejected conversion): the
    /// remaining fraction after earlier refunds, nothing when it is reversed in full already.
    ReverseRest {
        reversal_id: Uuid,
        conversion_id: Uuid,
        occurred_at: DateTime<Utc>,
        source_event_id: Uuid,
    },
    ReverseOverride {
        reversal_id: Uuid,
        conversion_id: Uuid,
        from_partner: Uuid,
        level: u8,
        /// Negative: the reversing line from the downline's reversal.
        amount: Money,
        occurred_at: DateTime<Utc>,
        source_event_id: Uuid,
    },
    Mature {
        partner_id: Uuid,
        as_of: DateTime<Utc>,
        /// Seed for the ids of the maturity transactions.
        id_seed: Uuid,
    },
    Churn {
        plan_id: Uuid,
        customer_id: String,
        at: DateTime<Utc>,
    },
    /// Pays the partner's whole payable in `minimum`'s currency, if it is at least `minimum`
    /// (the plan's threshold at the run's date) and positive.
    PayOut {
        run_id: Uuid,
        program_id: Uuid,
        partner_id: Uuid,
        minimum: Money,
        as_of: DateTime<Utc>,
        id_seed: Uuid,
    },
    SettlePayout {
        run_id: Uuid,
        partner_id: Uuid,
        currency: Currency,
        at: DateTime<Utc>,
        id_seed: Uuid,
    },
    FailPayout {
        run_id: Uuid,
        partner_id: Uuid,
        currency: Currency,
        reason: String,
        at: DateTime<Utc>,
        id_seed: Uuid,
    },
    /// Adjusts the partner's payable by hand (see [`Adjustment`]).
    Adjust {
        program_id: Uuid,
        partner_id: Uuid,
        adjustment: Adjustment,
        id_seed: Uuid,
    },
    /// Credits a campaign fee or an MDF reimbursement to the partner's payable.
    Credit {
        credit: CreditKind,
        program_id: Uuid,
        partner_id: Uuid,
        /// Positive, in the currency's minor unit.
        amount: Money,
        occurred_at: DateTime<Utc>,
        source_event_id: Uuid,
        id_seed: Uuid,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("no accrual of conversion {0} in this book")]
    UnknownConversion(Uuid),
    #[error("the book cannot be replayed: {0}")]
    Broken(String),
    #[error("a maturity run would move {0} entries, more than {MAX_MATURED_PER_RUN}")]
    TooManyEntries(usize),
    #[error("nothing to pay: payable is {payable}")]
    NothingPayable { payable: Money },
    #[error("payable {payable} is under the minimum payout {minimum}")]
    UnderMinimum { payable: Money, minimum: Money },
    #[error("no payout of run {run_id} in {currency} in this book")]
    UnknownPayout { run_id: Uuid, currency: Currency },
    #[error("the payout of run {run_id} in {currency} is already {}; it settles or fails once", status.as_str())]
    PayoutClosed {
        run_id: Uuid,
        currency: Currency,
        status: PayoutStatus,
    },
    #[error("a credit must be a positive amount in the currency's minor unit, not {0}")]
    BadCredit(Money),
    #[error("an adjustment is a non-zero amount in the currency's minor unit, not {0}")]
    BadAdjustment(Money),
    #[error("adjustment {0} was recorded with other details; a new adjustment needs a new id")]
    AdjustmentTaken(Uuid),
    #[error("adjustment {adjustment_id} cannot be countered: {reason}")]
    BadCounter { adjustment_id: Uuid, reason: String },
    #[error("a payout cannot settle or fail at {at}, before it was sent at {created_at}")]
    BeforeSent {
        at: DateTime<Utc>,
        created_at: DateTime<Utc>,
    },
}

/// The shape of the ledger's single-transfer posting builders.
type PostingFn =
    fn(Uuid, DateTime<Utc>, Uuid, Uuid, Money, Explanation) -> Result<Transaction, LedgerError>;

/// Decides a manual adjustment: once per id (the same details again change nothing), a
/// counter adjustment only of an adjustment in this book not countered yet, for exactly its
/// opposite amount.
fn adjust(
    book: &Book,
    program_id: Uuid,
    partner_id: Uuid,
    a: &Adjustment,
    id_seed: Uuid,
) -> Result<Vec<BookEvent>, BookError> {
    if let Some((stored, _)) = book.adjustments.get(&a.adjustment_id) {
        return if stored == a {
            Ok(vec![])
        } else {
            Err(BookError::AdjustmentTaken(a.adjustment_id))
        };
    }
    if a.amount.is_zero() || a.amount.amount().scale() > a.amount.currency().minor_unit() {
        return Err(BookError::BadAdjustment(a.amount));
    }
    let mut line = format!(
        "manual {} approved by {} (reference {}): {}: {}",
        a.kind.as_str(),
        a.approved_by,
        a.reference,
        a.reason,
        a.amount
    );
    if let Some(original) = a.counters {
        let bad = |reason: &str| BookError::BadCounter {
            adjustment_id: original,
            reason: reason.to_owned(),
        };
        let (stored, countered) = book
            .adjustments
            .get(&original)
            .ok_or_else(|| bad("no such adjustment in this partner's book"))?;
        if *countered {
            return Err(bad("it was countered already"));
        }
        let sum = stored
            .amount
            .checked_add(a.amount)
            .map_err(|_| bad("it is in another currency"))?;
        if !sum.is_zero() {
            return Err(bad(&format!("its counter is {}", -stored.amount)));
        }
        line.push_str(&format!(" (counters adjustment {original})"));
    }
    let t = postings::adjustment(
        txn_id(id_seed, "adjustment"),
        a.occurred_at,
        partner_id,
        program_id,
        a.amount,
        Explanation::new(a.adjustment_id, line),
    )?;
    Ok(vec![BookEvent::Adjusted {
        program_id,
        adjustment: a.clone(),
        transactions: vec![t],
    }])
}

fn txn_id(seed: Uuid, what: &str) -> Uuid {
    Uuid::new_v5(&seed, what.as_bytes())
}

fn explanation(
    line: &AccrualLine,
    accrual_plan: (Uuid, u32),
    source: Uuid,
    conversion: Uuid,
) -> Explanation {
    let f = &line.formula;
    let mut other = BTreeMap::from([("weight".to_owned(), f.weight.to_string())]);
    if let Some(t) = &f.tier {
        // The tier's name stays short (the ledger bounds it); the volumes go alongside.
        other.insert(
            "tier_price".to_owned(),
            match &t.price {
                pl_commission_engine::TierPrice::Percent(p) => format!("{}%", p.value()),
                pl_commission_engine::TierPrice::PerUnit(m) => format!("{m} per unit"),
            },
        );
        other.insert("volume_before".to_owned(), t.volume_before.to_string());
        other.insert("volume_after".to_owned(), t.volume_after.to_string());
    }
    if let Some(split) = &f.split {
        // Enough to redo the allocation: the whole, every partner's weight in order, the part.
        other.insert("split_whole".to_owned(), split.whole.to_string());
        other.insert(
            "split_weights".to_owned(),
            split
                .weights
                .iter()
                .map(|w| w.normalize().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
        other.insert("split_index".to_owned(), (split.index + 1).to_string());
        other.insert("split_part".to_owned(), split.part.to_string());
    }
    let inputs = FormulaInputs {
        base_amount: f.credited_base.or(f.base),
        rate_percent: f.rate.map(|r| r.value()),
        tier: f
            .tier
            .as_ref()
            .map(|t| format!("tier {} from {}", t.index + 1, t.from)),
        quantity: f.units,
        flat_amount: f.flat,
        month_index: f.month_index,
        fx_rate: f.fx_rate,
        other,
    };
    Explanation::new(source, f.text.clone())
        .with_conversion(conversion)
        .with_plan(accrual_plan.0, accrual_plan.1, line.rule_id.clone())
        .with_inputs(inputs)
}

impl Book {
    fn own_amount(accrual: &Accrual, lines: &[AccrualLine]) -> Result<Option<Money>, BookError> {
        let own: Vec<Money> = lines
            .iter()
            .filter(|l| {
                l.partner_id == accrual.partner_id && !matches!(l.kind, LineKind::Override { .. })
            })
            .map(|l| l.amount)
            .collect();
        let Some(first) = own.first() else {
            return Ok(None);
        };
        Ok(Some(
            Money::try_sum(first.currency(), own).map_err(EngineError::from)?,
        ))
    }

    /// Posts a signed change of an entry: positive accrues into pending; negative reverses
    /// from pending while the entry is in hold, or claws back from payable once it matured.
    #[allow(clippy::too_many_arguments)]
    fn post_change(
        id: Uuid,
        partner_id: Uuid,
        entry_matured: bool,
        program_id: Uuid,
        occurred_at: DateTime<Utc>,
        amount: Money,
        why: Explanation,
    ) -> Result<Option<Transaction>, BookError> {
        if amount.is_zero() {
            return Ok(None);
        }
        let t = if amount.is_positive() {
            postings::accrual(id, occurred_at, partner_id, program_id, amount, why)?
        } else if entry_matured {
            postings::clawback(id, occurred_at, partner_id, program_id, amount.abs(), why)?
        } else {
            postings::reversal(id, occurred_at, partner_id, program_id, amount.abs(), why)?
        };
        Ok(Some(t))
    }
}

impl Aggregate for Book {
    type State = Book;
    type Command = BookCommand;
    type Event = BookEvent;
    type Error = BookError;

    fn decide(book: &Book, command: &BookCommand) -> Result<Vec<BookEvent>, BookError> {
        if let Some(reason) = &book.broken {
            return Err(BookError::Broken(reason.clone()));
        }
        match command {
            BookCommand::Accrue {
                program_id,
                hierarchy_version,
                campaign_id,
                facts,
                versions,
            } => {
                if book.accruals.contains_key(&facts.conversion_id) {
                    return Ok(vec![]);
                }
                let plan_id = versions.first().map_or(Uuid::nil(), |v| v.plan_id);
                // Borrowed, not cloned: a partner's state grows with its customers and periods.
                let fresh;
                let state = match book.engine.get(&plan_id) {
                    Some(state) => state,
                    None => {
                        fresh = PartnerState::new(facts.partner_id, plan_id);
                        &fresh
                    }
                };
                let version = select_version(versions, facts, state)?;
                let accrual = accrue(version, state, facts)?;
                let mut transactions = Vec::new();
                if let Some(own) = Self::own_amount(&accrual, &accrual.lines)? {
                    let first = accrual
                        .lines
                        .iter()
                        .find(|l| l.partner_id == facts.partner_id)
                        .ok_or(BookError::UnknownConversion(facts.conversion_id))?;
                    let mut why = explanation(
                        first,
                        (accrual.plan_id, accrual.plan_version),
                        facts.source_event_id,
                        facts.conversion_id,
                    );
                    // Which tier the rules were matched on, and where it came from.
                    if let Some(tier) = &facts.partner_tier {
                        why.inputs
                            .other
                            .insert("partner_tier".to_owned(), tier.clone());
                    }
                    if let Some(v) = hierarchy_version {
                        why.inputs
                            .other
                            .insert("hierarchy_version".to_owned(), v.to_string());
                    }
                    if accrual.lines.iter().any(|l| l.kind == LineKind::TierTopUp) {
                        why.line = accrual
                            .lines
                            .iter()
                            .filter(|l| {
                                l.partner_id == facts.partner_id && l.kind != LineKind::Base
                            })
                            .fold(why.line, |acc, l| format!("{acc}; {}", l.formula.text));
                    }
                    let id = txn_id(
                        facts.source_event_id,
                        &format!("accrual:{}", facts.partner_id),
                    );
                    transactions.extend(Self::post_change(
                        id,
                        facts.partner_id,
                        false,
                        *program_id,
                        facts.occurred_at,
                        own,
                        why,
                    )?);
                }
                Ok(vec![BookEvent::ConversionAccrued {
                    program_id: *program_id,
                    hold_days: version.hold_days,
                    accrual,
                    transactions,
                    campaign_id: *campaign_id,
                    hierarchy_version: *hierarchy_version,
                }])
            }
            BookCommand::AccrueOverride {
                program_id,
                conversion_id,
                from_partner,
                occurred_at,
                hold_days,
                line,
                source_event_id,
                hierarchy_version,
            } => {
                let LineKind::Override { level } = line.kind else {
                    return Ok(vec![]);
                };
                if book.entries.contains_key(&(
                    *conversion_id,
                    EntryKey::Override {
                        from_partner: *from_partner,
                        level,
                    },
                )) {
                    return Ok(vec![]);
                }
                let mut other = BTreeMap::from([
                    ("downline_partner".to_owned(), from_partner.to_string()),
                    ("level".to_owned(), level.to_string()),
                ]);
                // The chain this override was paid through: the program's network version.
                if let Some(v) = hierarchy_version {
                    other.insert("hierarchy_version".to_owned(), v.to_string());
                }
                let why = Explanation::new(*source_event_id, line.formula.text.clone())
                    .with_conversion(*conversion_id)
                    .with_inputs(FormulaInputs {
                        other,
                        ..FormulaInputs::default()
                    });
                // The downline partner is part of the id: partners credited on one conversion
                // may share a parent, whose book then posts one override from each.
                let id = txn_id(
                    *source_event_id,
                    &format!("override:{from_partner}:{}:{level}", line.partner_id),
                );
                let transactions = Self::post_change(
                    id,
                    line.partner_id,
                    false,
                    *program_id,
                    *occurred_at,
                    line.amount,
                    why,
                )?
                .into_iter()
                .collect();
                Ok(vec![BookEvent::OverrideAccrued {
                    program_id: *program_id,
                    conversion_id: *conversion_id,
                    from_partner: *from_partner,
                    occurred_at: *occurred_at,
                    hold_days: *hold_days,
                    line: line.clone(),
                    transactions,
                }])
            }
            BookCommand::ReverseRest {
                reversal_id,
                conversion_id,
                occurred_at,
                source_event_id,
            } => {
                if book.reversals_seen.contains(reversal_id) {
                    return Ok(vec![]);
                }
                let (_, earlier) = book
                    .accruals
                    .get(conversion_id)
                    .ok_or(BookError::UnknownConversion(*conversion_id))?;
                let rest = earlier
                    .last()
                    .map_or(Decimal::ONE, Reversal::remaining_fraction);
                if rest <= Decimal::ZERO {
                    return Ok(vec![]);
                }
                Self::decide(
                    book,
                    &BookCommand::Reverse {
                        reversal_id: *reversal_id,
                        conversion_id: *conversion_id,
                        fraction: rest,
                        occurred_at: *occurred_at,
                        source_event_id: *source_event_id,
                    },
                )
            }
            BookCommand::Reverse {
                reversal_id,
                conversion_id,
                fraction,
                occurred_at,
                source_event_id,
            } => {
                if book.reversals_seen.contains(reversal_id) {
                    return Ok(vec![]);
                }
                let (accrual, earlier) = book
                    .accruals
                    .get(conversion_id)
                    .ok_or(BookError::UnknownConversion(*conversion_id))?;
                // Reversed in full already (a refund after a rejection): nothing is left.
                if earlier
                    .last()
                    .is_some_and(|r| r.remaining_fraction() <= Decimal::ZERO)
                {
                    return Ok(vec![]);
                }
                let reversal = reverse_remaining(accrual, earlier, *fraction)?;
                let mut transactions = Vec::new();
                if let Some(own) = Self::own_amount(accrual, &reversal.lines)? {
                    let matured = book
                        .entries
                        .get(&(*conversion_id, EntryKey::Own))
                        .is_some_and(|e| e.matured);
                    let text = format!(
                        "reversal of {} of conversion {conversion_id}",
                        reversal.fraction
                    );
                    let why = Explanation::new(*source_event_id, text)
                        .with_conversion(*conversion_id)
                        .with_plan(
                            accrual.plan_id,
                            accrual.plan_version,
                            accrual.rule_id.clone().unwrap_or_default(),
                        );
                    let id = txn_id(
                        *source_event_id,
                        &format!("reversal:{}", accrual.partner_id),
                    );
                    transactions.extend(Self::post_change(
                        id,
                        accrual.partner_id,
                        matured,
                        book_program(book, *conversion_id),
                        *occurred_at,
                        own,
                        why,
                    )?);
                }
                Ok(vec![BookEvent::ConversionReversed {
                    reversal_id: *reversal_id,
                    reversal,
                    transactions,
                }])
            }
            BookCommand::ReverseOverride {
                reversal_id,
                conversion_id,
                from_partner,
                level,
                amount,
                occurred_at,
                source_event_id,
            } => {
                let key = (
                    *conversion_id,
                    EntryKey::Override {
                        from_partner: *from_partner,
                        level: *level,
                    },
                );
                let Some(entry) = book.entries.get(&key) else {
                    return Err(BookError::UnknownConversion(*conversion_id));
                };
                if book.override_reversals_seen.contains(&(
                    *reversal_id,
                    *conversion_id,
                    *from_partner,
                    *level,
                )) {
                    return Ok(vec![]);
                }
                let partner = book.partner_id.unwrap_or_default();
                let why = Explanation::new(
                    *source_event_id,
                    format!("reversal of a level {level} override"),
                )
                .with_conversion(*conversion_id);
                let id = txn_id(
                    *source_event_id,
                    &format!("override-reversal:{from_partner}:{partner}:{level}"),
                );
                let transactions = Self::post_change(
                    id,
                    partner,
                    entry.matured,
                    entry.program_id,
                    *occurred_at,
                    *amount,
                    why,
                )?
                .into_iter()
                .collect();
                Ok(vec![BookEvent::OverrideReversed {
                    reversal_id: *reversal_id,
                    conversion_id: *conversion_id,
                    from_partner: *from_partner,
                    level: *level,
                    amount: *amount,
                    transactions,
                }])
            }
            BookCommand::Mature {
                partner_id,
                as_of,
                id_seed,
            } => {
                let due: Vec<_> = book
                    .entries
                    .iter()
                    .filter(|(_, e)| !e.matured && e.matures_by(*as_of))
                    .collect();
                if due.len() > MAX_MATURED_PER_RUN {
                    return Err(BookError::TooManyEntries(due.len()));
                }
                let mut transactions = Vec::new();
                let mut entries = Vec::new();
                for ((conversion_id, key), entry) in due {
                    entries.push((*conversion_id, *key));
                    if entry.open.is_positive() {
                        let why = Explanation::new(
                            *id_seed,
                            format!("hold of {} days ended by {as_of}", entry.hold_days),
                        )
                        .with_conversion(*conversion_id);
                        let id = txn_id(*id_seed, &format!("mature:{conversion_id}:{key:?}"));
                        transactions.push(postings::maturity(
                            id,
                            *as_of,
                            *partner_id,
                            entry.open,
                            why,
                        )?);
                    }
                }
                if entries.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![BookEvent::CommissionsMatured {
                    as_of: *as_of,
                    entries,
                    transactions,
                }])
            }
            BookCommand::Churn {
                plan_id,
                customer_id,
                at,
            } => {
                // The earliest churn counts; a repeated or later one changes nothing.
                let known = book
                    .engine
                    .get(plan_id)
                    .and_then(|s| s.customer(customer_id))
                    .and_then(|c| c.churned_at);
                if known.is_some_and(|known| known <= *at) {
                    return Ok(vec![]);
                }
                Ok(vec![BookEvent::CustomerChurned {
                    plan_id: *plan_id,
                    customer_id: customer_id.clone(),
                    at: *at,
                }])
            }
            BookCommand::PayOut {
                run_id,
                program_id,
                partner_id,
                minimum,
                as_of,
                id_seed,
            } => {
                let currency = minimum.currency();
                if book.payouts.contains_key(&(*run_id, currency)) {
                    return Ok(vec![]);
                }
                let payable = book.payable_in(currency);
                // Never pay out of a zero or negative payable (after a clawback the partner
                // owes the company; later earnings net it first).
                if !payable.is_positive() {
                    return Err(BookError::NothingPayable { payable });
                }
                if payable.amount() < minimum.amount() {
                    return Err(BookError::UnderMinimum {
                        payable,
                        minimum: *minimum,
                    });
                }
                // The amount is the payable of this very state, so a payout can never exceed
                // what is owed: a concurrent change of the book fails the append and re-decides.
                let why = Explanation::new(
                    *run_id,
                    format!("payout run {run_id} as of {as_of}: the whole payable"),
                );
                let t = postings::payout_created(
                    txn_id(*id_seed, &format!("payout:{run_id}:{}", currency.code())),
                    *as_of,
                    *partner_id,
                    *program_id,
                    payable,
                    why,
                )?;
                Ok(vec![BookEvent::PayoutCreated {
                    run_id: *run_id,
                    program_id: *program_id,
                    amount: payable,
                    transactions: vec![t],
                }])
            }
            BookCommand::SettlePayout {
                run_id,
                partner_id,
                currency,
                at,
                id_seed,
            } => {
                let payout = book.open_payout(*run_id, *currency, *at)?;
                let why = Explanation::new(*run_id, format!("payout of run {run_id} settled"));
                let t = postings::payout_settled(
                    txn_id(*id_seed, &format!("settle:{run_id}:{}", currency.code())),
                    *at,
                    *partner_id,
                    payout.program_id,
                    payout.amount,
                    why,
                )?;
                Ok(vec![BookEvent::PayoutSettled {
                    run_id: *run_id,
                    currency: *currency,
                    transactions: vec![t],
                }])
            }
            BookCommand::FailPayout {
                run_id,
                partner_id,
                currency,
                reason,
                at,
                id_seed,
            } => {
                let payout = book.open_payout(*run_id, *currency, *at)?;
                let why =
                    Explanation::new(*run_id, format!("payout of run {run_id} failed: {reason}"));
                let t = postings::payout_failed(
                    txn_id(*id_seed, &format!("fail:{run_id}:{}", currency.code())),
                    *at,
                    *partner_id,
                    payout.program_id,
                    payout.amount,
                    why,
                )?;
                Ok(vec![BookEvent::PayoutFailed {
                    run_id: *run_id,
                    currency: *currency,
                    reason: reason.clone(),
                    transactions: vec![t],
                }])
            }
            BookCommand::Adjust {
                program_id,
                partner_id,
                adjustment,
                id_seed,
            } => adjust(book, *program_id, *partner_id, adjustment, *id_seed),
            BookCommand::Credit {
                credit,
                program_id,
                partner_id,
                amount,
                occurred_at,
                source_event_id,
                id_seed,
            } => {
                if book.credits.contains(credit) {
                    return Ok(vec![]);
                }
                if !amount.is_positive() || amount.amount().scale() > amount.currency().minor_unit()
                {
                    return Err(BookError::BadCredit(*amount));
                }
                let (t, line) = match credit {
                    CreditKind::CampaignFee { campaign_id } => (
                        postings::campaign_fee as PostingFn,
                        format!("flat fee of campaign {campaign_id}: {amount}"),
                    ),
                    CreditKind::MdfReimbursement { claim_id } => (
                        postings::mdf_reimbursement as PostingFn,
                        format!("MDF claim {claim_id} reimbursed: {amount}"),
                    ),
                    CreditKind::CampaignBonus { campaign_id } => (
                        postings::campaign_fee as PostingFn,
                        format!("performance bonus of campaign {campaign_id}: {amount}"),
                    ),
                };
                let t = t(
                    txn_id(*id_seed, "credit"),
                    *occurred_at,
                    *partner_id,
                    *program_id,
                    *amount,
                    Explanation::new(*source_event_id, line),
                )?;
                Ok(vec![BookEvent::PartnerCredited {
                    program_id: *program_id,
                    credit: *credit,
                    transactions: vec![t],
                }])
            }
        }
    }

    fn evolve(mut book: Book, event: &BookEvent) -> Book {
        if let Err(reason) = book.apply(event) {
            book.broken.get_or_insert(reason);
        }
        book
    }
}

fn book_program(book: &Book, conversion_id: Uuid) -> Uuid {
    book.entries
        .get(&(conversion_id, EntryKey::Own))
        .map_or(Uuid::nil(), |e| e.program_id)
}

impl Book {
    /// The partner's payable in `currency` (zero when never touched).
    pub fn payable_in(&self, currency: Currency) -> Money {
        self.payable
            .get(&currency)
            .copied()
            .unwrap_or_else(|| Money::zero(currency))
    }

    fn open_payout(
        &self,
        run_id: Uuid,
        currency: Currency,
        at: DateTime<Utc>,
    ) -> Result<&Payout, BookError> {
        let payout = self
            .payouts
            .get(&(run_id, currency))
            .ok_or(BookError::UnknownPayout { run_id, currency })?;
        if payout.status != PayoutStatus::Sent {
            return Err(BookError::PayoutClosed {
                run_id,
                currency,
                status: payout.status,
            });
        }
        if at < payout.created_at {
            return Err(BookError::BeforeSent {
                at,
                created_at: payout.created_at,
            });
        }
        Ok(payout)
    }

    /// Folds the payable side of an event's transactions into the running payable.
    fn apply_payable(&mut self, event: &BookEvent) -> Result<(), String> {
        for transfer in event.transactions().iter().flat_map(|t| t.transfers()) {
            let c = transfer.amount.currency();
            let now = match (transfer.debit, transfer.credit) {
                (_, Account::PartnerPayable { .. }) => {
                    self.payable_in(c).checked_add(transfer.amount)
                }
                (Account::PartnerPayable { .. }, _) => {
                    self.payable_in(c).checked_sub(transfer.amount)
                }
                _ => continue,
            }
            .map_err(|e| e.to_string())?;
            self.payable.insert(c, now);
        }
        Ok(())
    }

    fn apply(&mut self, event: &BookEvent) -> Result<(), String> {
        self.apply_payable(event)?;
        match event {
            BookEvent::ConversionAccrued {
                program_id,
                hold_days,
                accrual,
                hierarchy_version,
                ..
            } => {
                self.partner_id.get_or_insert(accrual.partner_id);
                if let Some(v) = hierarchy_version {
                    if accrual
                        .lines
                        .iter()
                        .any(|l| matches!(l.kind, LineKind::Override { .. }))
                    {
                        self.hierarchy_versions.insert(accrual.conversion_id, *v);
                    }
                }
                let state = self
                    .engine
                    .entry(accrual.plan_id)
                    .or_insert_with(|| PartnerState::new(accrual.partner_id, accrual.plan_id));
                state.apply(accrual).map_err(|e| e.to_string())?;
                if let Some(own) =
                    Self::own_amount(accrual, &accrual.lines).map_err(|e| e.to_string())?
                {
                    self.entries.insert(
                        (accrual.conversion_id, EntryKey::Own),
                        Entry {
                            program_id: *program_id,
                            occurred_at: accrual.occurred_at,
                            hold_days: *hold_days,
                            open: own,
                            matured: false,
                        },
                    );
                }
                self.accruals
                    .insert(accrual.conversion_id, (accrual.clone(), Vec::new()));
            }
            BookEvent::OverrideAccrued {
                program_id,
                conversion_id,
                from_partner,
                occurred_at,
                hold_days,
                line,
                ..
            } => {
                self.partner_id.get_or_insert(line.partner_id);
                if let LineKind::Override { level } = line.kind {
                    self.entries.insert(
                        (
                            *conversion_id,
                            EntryKey::Override {
                                from_partner: *from_partner,
                                level,
                            },
                        ),
                        Entry {
                            program_id: *program_id,
                            occurred_at: *occurred_at,
                            hold_days: *hold_days,
                            open: line.amount,
                            matured: false,
                        },
                    );
                }
            }
            BookEvent::ConversionReversed {
                reversal_id,
                reversal,
                ..
            } => {
                self.reversals_seen.insert(*reversal_id);
                let Some((accrual, earlier)) = self.accruals.get_mut(&reversal.conversion_id)
                else {
                    return Err(format!(
                        "reversal of unknown conversion {}",
                        reversal.conversion_id
                    ));
                };
                let own = Self::own_amount(accrual, &reversal.lines).map_err(|e| e.to_string())?;
                earlier.push(reversal.clone());
                self.reversals.insert(*reversal_id, reversal.clone());
                if let (Some(own), Some(entry)) = (
                    own,
                    self.entries
                        .get_mut(&(reversal.conversion_id, EntryKey::Own)),
                ) {
                    entry.open = entry.open.checked_add(own).map_err(|e| e.to_string())?;
                }
            }
            BookEvent::OverrideReversed {
                reversal_id,
                conversion_id,
                from_partner,
                level,
                amount,
                ..
            } => {
                self.override_reversals_seen.insert((
                    *reversal_id,
                    *conversion_id,
                    *from_partner,
                    *level,
                ));
                if let Some(entry) = self.entries.get_mut(&(
                    *conversion_id,
                    EntryKey::Override {
                        from_partner: *from_partner,
                        level: *level,
                    },
                )) {
                    entry.open = entry.open.checked_add(*amount).map_err(|e| e.to_string())?;
                }
            }
            BookEvent::CommissionsMatured { entries, .. } => {
                for key in entries {
                    if let Some(e) = self.entries.get_mut(key) {
                        e.matured = true;
                    }
                }
            }
            BookEvent::CustomerChurned {
                plan_id,
                customer_id,
                at,
            } => {
                if let Some(state) = self.engine.get_mut(plan_id) {
                    state.apply_churn(customer_id, *at);
                }
            }
            BookEvent::PayoutCreated {
                run_id,
                program_id,
                amount,
                transactions,
            } => {
                let created_at = transactions
                    .first()
                    .map(Transaction::occurred_at)
                    .ok_or("a payout without its transaction")?;
                self.payouts.insert(
                    (*run_id, amount.currency()),
                    Payout {
                        program_id: *program_id,
                        amount: *amount,
                        created_at,
                        status: PayoutStatus::Sent,
                        failure: None,
                    },
                );
            }
            BookEvent::PartnerCredited { credit, .. } => {
                self.credits.insert(*credit);
            }
            BookEvent::Adjusted { adjustment, .. } => {
                if let Some(original) = adjustment.counters {
                    if let Some((_, countered)) = self.adjustments.get_mut(&original) {
                        *countered = true;
                    }
                }
                self.adjustments
                    .insert(adjustment.adjustment_id, (adjustment.clone(), false));
            }
            BookEvent::PayoutSettled {
                run_id, currency, ..
            }
            | BookEvent::PayoutFailed {
                run_id, currency, ..
            } => {
                let payout = self
                    .payouts
                    .get_mut(&(*run_id, *currency))
                    .ok_or_else(|| format!("settlement of unknown payout {run_id}"))?;
                if let BookEvent::PayoutFailed { reason, .. } = event {
                    payout.status = PayoutStatus::Failed;
                    payout.failure = Some(reason.clone());
                } else {
                    payout.status = PayoutStatus::Settled;
                }
            }
        }
        Ok(())
    }
}

pub fn stream(partner_id: Uuid) -> String {
    format!("ledger-{partner_id}")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use pl_commission_engine::{
        Conditions, ConversionKind, NetRevenuePolicy, Percent, Reward, Rule, VersionPolicy,
    };
    use pl_ledger::{AsOf, Ledger, RecordedTransaction};
    use pl_money::Currency;

    use super::*;

    const PARTNER: Uuid = Uuid::from_u128(1);
    const PARENT: Uuid = Uuid::from_u128(2);
    const PROGRAM: Uuid = Uuid::from_u128(9);
    const PLAN: Uuid = Uuid::from_u128(7);

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, 12, 0, 0).unwrap()
    }

    fn usd(s: &str) -> Money {
        format!("{s} USD").parse().unwrap()
    }

    fn plan() -> PlanVersion {
        PlanVersion {
            plan_id: PLAN,
            version: 1,
            effective_from: day(1),
            payout_currency: Currency::USD,
            hold_days: 30,
            minimum_payout: usd("50.00"),
            version_policy: VersionPolicy::Grandfathered,
            net_revenue_policy: NetRevenuePolicy::CarryForwardNegative,
            cpa_recovery: false,
            overrides: vec![Percent::new(2).unwrap()],
            rules: vec![Rule {
                id: "sales".into(),
                conditions: Conditions::default(),
                reward: Reward::PercentOfGross(Percent::new(10).unwrap()),
                cap_per_conversion: None,
                cap_per_period: None,
            }],
        }
    }

    fn sale(conversion: u128, gross: &str, at: DateTime<Utc>) -> BookCommand {
        BookCommand::Accrue {
            program_id: PROGRAM,
            hierarchy_version: None,
            campaign_id: None,
            versions: vec![plan()].into(),
            facts: ConversionFacts {
                conversion_id: Uuid::from_u128(conversion),
                source_event_id: Uuid::from_u128(1000 + conversion),
                kind: ConversionKind::Sale,
                occurred_at: at,
                customer_id: "cust-1".into(),
                customer_country: None,
                products: vec![],
                gross: Some(usd(gross)),
                net: None,
                lots: None,
                reseller: None,
                partner_id: PARTNER,
                partner_tier: None,
                weight: Decimal::ONE,
                split: None,
                brand: None,
                upline: vec![PARENT],
                fx_rate: None,
            },
        }
    }

    /// The override line PARTNER earns on `downline`'s accrual of conversion 1 (a 100.00 sale).
    fn override_line_from(downline: Uuid) -> AccrualLine {
        let BookCommand::Accrue {
            program_id,
            hierarchy_version: _,
            campaign_id,
            mut facts,
            versions,
        } = sale(1, "100.00", day(2))
        else {
            panic!("a sale is an accrual");
        };
        facts.partner_id = downline;
        facts.upline = vec![PARTNER];
        let events = Book::decide(
            &Book::default(),
            &BookCommand::Accrue {
                program_id,
                hierarchy_version: None,
                campaign_id,
                facts,
                versions,
            },
        )
        .unwrap();
        let BookEvent::ConversionAccrued { accrual, .. } = &events[0] else {
            panic!("expected an accrual");
        };
        accrual
            .lines
            .iter()
            .find(|l| matches!(l.kind, LineKind::Override { .. }))
            .unwrap()
            .clone()
    }

    /// PARTNER's book after its own 10 % of a 100.00 sale (conversion 1) and the override it
    /// earns on `downline`'s accrual of the same conversion; the events and the override line.
    fn own_sale_and_override_from(downline: Uuid) -> (Book, Vec<BookEvent>, AccrualLine) {
        let line = override_line_from(downline);
        let (book, mut events) = run(Book::default(), &sale(1, "100.00", day(2)));
        let (book, more) = run(
            book,
            &BookCommand::AccrueOverride {
                program_id: PROGRAM,
                hierarchy_version: None,
                conversion_id: Uuid::from_u128(1),
                from_partner: downline,
                occurred_at: day(2),
                hold_days: 30,
                line: line.clone(),
                source_event_id: Uuid::from_u128(77),
            },
        );
        events.extend(more);
        (book, events, line)
    }

    /// One full refund (id 50) of conversion 1 in PARTNER's book: the override from `downline`
    /// reversed, then the own line.
    fn refund_both(book: Book, line: &AccrualLine, downline: Uuid) -> (Book, Vec<BookEvent>) {
        let refund = Uuid::from_u128(50);
        let (book, mut events) = run(
            book,
            &BookCommand::ReverseOverride {
                reversal_id: refund,
                conversion_id: Uuid::from_u128(1),
                from_partner: downline,
                level: 1,
                amount: Money::new(-line.amount.amount(), line.amount.currency()),
                occurred_at: day(5),
                source_event_id: Uuid::from_u128(51),
            },
        );
        let (book, more) = run(
            book,
            &BookCommand::Reverse {
                reversal_id: refund,
                conversion_id: Uuid::from_u128(1),
                fraction: Decimal::ONE,
                occurred_at: day(5),
                source_event_id: Uuid::from_u128(51),
            },
        );
        events.extend(more);
        (book, events)
    }

    /// Every variant's `event_type` is the tag its JSON form carries (what older schemas
    /// stored), and it reads back unchanged from the stored form written now.
    #[test]
    fn every_kind_of_book_event_is_stored_under_its_json_tag_and_reads_back_unchanged() {
        let (book, mut events, line) = own_sale_and_override_from(Uuid::from_u128(0xd0));
        let (_, more) = refund_both(book, &line, Uuid::from_u128(0xd0));
        events.extend(more);
        // The kinds whose body alone is what this checks: built without postings.
        let run_id = Uuid::from_u128(60);
        events.extend([
            BookEvent::CommissionsMatured {
                as_of: day(20),
                entries: vec![(Uuid::from_u128(1), EntryKey::Own)],
                transactions: vec![],
            },
            BookEvent::CustomerChurned {
                plan_id: PLAN,
                customer_id: "cust-1".into(),
                at: day(21),
            },
            BookEvent::PayoutCreated {
                run_id,
                program_id: PROGRAM,
                amount: usd("10.00"),
                transactions: vec![],
            },
            BookEvent::PayoutSettled {
                run_id,
                currency: Currency::USD,
                transactions: vec![],
            },
            BookEvent::PayoutFailed {
                run_id,
                currency: Currency::USD,
                reason: "account closed".into(),
                transactions: vec![],
            },
            BookEvent::PartnerCredited {
                program_id: PROGRAM,
                credit: CreditKind::CampaignFee {
                    campaign_id: Uuid::from_u128(61),
                },
                transactions: vec![],
            },
            BookEvent::Adjusted {
                program_id: PROGRAM,
                adjustment: adjustment(62, "-5.00", Some(Uuid::from_u128(63))),
                transactions: vec![],
            },
        ]);
        let mut seen = std::collections::BTreeSet::new();
        for (i, event) in events.iter().enumerate() {
            let (tag, _) = pl_runtime::aggregate::encode_json(event).unwrap();
            assert_eq!(event.event_type(), tag);
            let (event_type, data) = crate::book_codec::encode(event).unwrap();
            assert_eq!(event_type, tag);
            let recorded = pl_eventlog::RecordedEvent {
                id: Uuid::from_u128(100 + i as u128),
                stream: stream(PARTNER),
                version: i as u64,
                position: i as u64,
                event_type,
                schema_version: crate::book_codec::STORED_SCHEMA_VERSION,
                data,
                metadata: pl_eventlog::EventMetadata::at(day(2)),
                recorded_at: day(2),
                prev_hash: pl_eventlog::GENESIS_HASH,
                hash: pl_eventlog::GENESIS_HASH,
            };
            assert_eq!(&crate::book_codec::decode(&recorded).unwrap(), event);
            seen.insert(tag);
        }
        assert_eq!(seen.len(), 11, "every variant: {seen:?}");
    }

    fn adjustment(id: u128, amount: &str, counters: Option<Uuid>) -> Adjustment {
        Adjustment {
            adjustment_id: Uuid::from_u128(id),
            kind: AdjustmentKind::Correction,
            amount: usd(amount),
            reason: "statement dispute settled".into(),
            reference: "CASE-17".into(),
            approved_by: "finance-lead".into(),
            counters,
            occurred_at: day(5),
        }
    }

    fn adjust(id: u128, amount: &str, counters: Option<u128>) -> BookCommand {
        BookCommand::Adjust {
            program_id: PROGRAM,
            partner_id: PARTNER,
            adjustment: adjustment(id, amount, counters.map(Uuid::from_u128)),
            id_seed: Uuid::from_u128(1000 + id),
        }
    }

    #[test]
    fn a_manual_adjustment_moves_the_payable_explained_and_only_a_counter_adjustment_undoes_it() {
        let (book, credited) = run(Book::default(), &adjust(1, "50.00", None));
        assert_eq!(balances(&credited).1, usd("50.00"));
        let line = &credited[0].transactions()[0].explanation().line;
        assert!(
            line.contains("approved by finance-lead")
                && line.contains("reference CASE-17")
                && line.contains("statement dispute settled"),
            "{line}"
        );
        // The same adjustment again changes nothing; its id with other details is refused.
        assert!(Book::decide(&book, &adjust(1, "50.00", None))
            .unwrap()
            .is_empty());
        assert_eq!(
            Book::decide(&book, &adjust(1, "60.00", None)),
            Err(BookError::AdjustmentTaken(Uuid::from_u128(1)))
        );
        // A counter is exactly the opposite amount, once.
        assert!(matches!(
            Book::decide(&book, &adjust(2, "-40.00", Some(1))),
            Err(BookError::BadCounter { .. })
        ));
        assert!(matches!(
            Book::decide(&book, &adjust(2, "-50.00", Some(9))),
            Err(BookError::BadCounter { .. })
        ));
        let (book, countered) = run(book, &adjust(2, "-50.00", Some(1)));
        let all: Vec<BookEvent> = credited.iter().chain(&countered).cloned().collect();
        assert_eq!(balances(&all).1, usd("0.00"));
        assert!(countered[0].transactions()[0]
            .explanation()
            .line
            .contains("counters adjustment"));
        assert!(matches!(
            Book::decide(&book, &adjust(3, "-50.00", Some(1))),
            Err(BookError::BadCounter { .. })
        ));
        assert_eq!(
            Book::decide(&book, &adjust(4, "0.00", None)),
            Err(BookError::BadAdjustment(usd("0.00")))
        );
    }

    /// given(events) / when(command) / then(events), folding the new events in.
    fn run(book: Book, command: &BookCommand) -> (Book, Vec<BookEvent>) {
        let events = Book::decide(&book, command).unwrap();
        (events.iter().fold(book, Book::evolve), events)
    }

    fn balances(events: &[BookEvent]) -> (Money, Money) {
        let mut ledger = Ledger::new();
        for (i, t) in events.iter().flat_map(BookEvent::transactions).enumerate() {
            ledger
                .apply(&RecordedTransaction {
                    transaction: t.clone(),
                    position: i as u64,
                    recorded_at: day(1),
                })
                .unwrap();
        }
        let b = ledger.balances_of_partner(PARTNER, AsOf::Latest).unwrap();
        let usd = &b.currencies[&Currency::USD];
        (usd.pending, usd.payable)
    }

    /// Regression: one refund id marked both kinds of reversal as seen, so a partner credited
    /// on a conversion and also earning an override on it (from a co-credited downline) kept
    /// whichever of the two was reversed second.
    #[test]
    fn one_refund_reverses_both_a_partners_own_line_and_its_override_on_the_same_conversion() {
        const DOWNLINE: Uuid = Uuid::from_u128(0xd0);
        // PARTNER's book: its own 10 % on conversion 1 and the 2 % override from DOWNLINE.
        let (book, mut all, line) = own_sale_and_override_from(DOWNLINE);
        assert_eq!(balances(&all), (usd("12.00"), usd("0.00")));
        // One refund of the conversion: the override reversed, then the own line.
        let (book, events) = refund_both(book, &line, DOWNLINE);
        all.extend(events);
        assert_eq!(balances(&all), (usd("0.00"), usd("0.00")));
        // A later refund of what is fully reversed changes nothing (no error either).
        let again = BookCommand::Reverse {
            reversal_id: Uuid::from_u128(52),
            conversion_id: Uuid::from_u128(1),
            fraction: Decimal::new(25, 2),
            occurred_at: day(6),
            source_event_id: Uuid::from_u128(53),
        };
        assert!(Book::decide(&book, &again).unwrap().is_empty());
    }

    /// Regression: a tiered-volume accrual was refused because its explanation named the
    /// tier with its whole debug form (143 characters, over the ledger's 64).
    #[test]
    fn a_tiered_lots_accrual_crossing_a_tier_is_posted_with_a_short_tier_name_and_its_volumes() {
        let mut tiered = plan();
        tiered.overrides = vec![];
        tiered.rules[0].reward = Reward::TieredVolume {
            basis: pl_commission_engine::VolumeBasis::Lots,
            mode: pl_commission_engine::TierMode::Tiered,
            tiers: vec![
                pl_commission_engine::Tier {
                    from: Decimal::ZERO,
                    price: pl_commission_engine::TierPrice::PerUnit(usd("5.00")),
                },
                pl_commission_engine::Tier {
                    from: Decimal::from(100),
                    price: pl_commission_engine::TierPrice::PerUnit(usd("7.00")),
                },
            ],
        };
        let trade = |n: u128, lots: i64| {
            let BookCommand::Accrue {
                program_id,
                hierarchy_version: None,
                campaign_id,
                mut facts,
                ..
            } = sale(n, "100.00", day(2))
            else {
                panic!("a sale is an accrual");
            };
            facts.lots = Some(Decimal::from(lots));
            facts.upline = vec![];
            BookCommand::Accrue {
                program_id,
                hierarchy_version: None,
                campaign_id,
                facts,
                versions: vec![tiered.clone()].into(),
            }
        };
        let (book, first) = run(Book::default(), &trade(1, 60));
        let (_, second) = run(book, &trade(2, 50));
        let all: Vec<BookEvent> = first.into_iter().chain(second).collect();
        // 110 lots in the month reach the $7 tier for all of them.
        assert_eq!(balances(&all), (usd("770.00"), usd("0.00")));
        let t = &all[1].transactions()[0];
        let inputs = &t.explanation().inputs;
        assert_eq!(inputs.tier.as_deref(), Some("tier 2 from 100"));
        assert_eq!(inputs.other["volume_after"], "110");
    }

    #[test]
    fn a_sale_accrues_the_partners_own_line_into_pending_and_leaves_overrides_to_the_upline() {
        let (book, events) = run(Book::default(), &sale(1, "100.00", day(2)));
        let BookEvent::ConversionAccrued {
            accrual,
            transactions,
            ..
        } = &events[0]
        else {
            panic!("expected an accrual");
        };
        assert_eq!(accrual.lines.len(), 2, "own line and the parent's override");
        assert_eq!(transactions.len(), 1);
        assert_eq!(balances(&events), (usd("10.00"), usd("0.00")));
        assert_eq!(
            book.entries[&(Uuid::from_u128(1), EntryKey::Own)].open,
            usd("10.00")
        );
    }

    #[test]
    fn the_same_conversion_twice_accrues_once() {
        let (book, _) = run(Book::default(), &sale(1, "100.00", day(2)));
        assert!(Book::decide(&book, &sale(1, "100.00", day(2)))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_partial_refund_in_hold_reverses_pro_rata_from_pending() {
        let (book, mut all) = run(Book::default(), &sale(1, "100.00", day(2)));
        let refund = BookCommand::Reverse {
            reversal_id: Uuid::from_u128(50),
            conversion_id: Uuid::from_u128(1),
            fraction: Decimal::new(25, 2),
            occurred_at: day(5),
            source_event_id: Uuid::from_u128(51),
        };
        let (book, events) = run(book, &refund);
        all.extend(events);
        assert_eq!(balances(&all), (usd("7.50"), usd("0.00")));
        // Refunding the same refund again changes nothing.
        assert!(Book::decide(&book, &refund).unwrap().is_empty());
    }

    #[test]
    fn maturity_moves_only_what_has_served_its_hold() {
        let (book, mut all) = run(Book::default(), &sale(1, "100.00", day(2)));
        let (book, events) = run(book, &sale(2, "50.00", day(20)));
        all.extend(events);
        let mature = |as_of| BookCommand::Mature {
            partner_id: PARTNER,
            as_of,
            id_seed: Uuid::from_u128(77),
        };
        // 2 January + 30 days = 1 February: the first sale only.
        let (book, events) = run(
            book,
            &mature(Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap()),
        );
        all.extend(events);
        assert_eq!(balances(&all), (usd("5.00"), usd("10.00")));
        // Nothing more is due the same day.
        assert!(Book::decide(
            &book,
            &mature(Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap())
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn a_refund_after_maturity_is_clawed_back_from_payable() {
        let (book, mut all) = run(Book::default(), &sale(1, "100.00", day(2)));
        let as_of = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let (book, events) = run(
            book,
            &BookCommand::Mature {
                partner_id: PARTNER,
                as_of,
                id_seed: Uuid::from_u128(77),
            },
        );
        all.extend(events);
        let (_, events) = run(
            book,
            &BookCommand::Reverse {
                reversal_id: Uuid::from_u128(60),
                conversion_id: Uuid::from_u128(1),
                fraction: Decimal::ONE,
                occurred_at: as_of,
                source_event_id: Uuid::from_u128(61),
            },
        );
        let BookEvent::ConversionReversed { transactions, .. } = &events[0] else {
            panic!()
        };
        assert_eq!(transactions[0].kind(), pl_ledger::TransactionKind::Clawback);
        all.extend(events);
        assert_eq!(balances(&all), (usd("0.00"), usd("0.00")));
    }

    #[test]
    fn a_refund_of_an_unknown_conversion_is_refused() {
        let err = Book::decide(
            &Book::default(),
            &BookCommand::Reverse {
                reversal_id: Uuid::from_u128(60),
                conversion_id: Uuid::from_u128(404),
                fraction: Decimal::ONE,
                occurred_at: day(3),
                source_event_id: Uuid::from_u128(61),
            },
        )
        .unwrap_err();
        assert_eq!(err, BookError::UnknownConversion(Uuid::from_u128(404)));
    }

    fn pay(minimum: &str, run: u128) -> BookCommand {
        BookCommand::PayOut {
            run_id: Uuid::from_u128(run),
            program_id: PROGRAM,
            partner_id: PARTNER,
            minimum: usd(minimum),
            as_of: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            id_seed: Uuid::from_u128(run),
        }
    }

    #[test]
    fn a_payout_takes_the_whole_payable_once_and_never_pays_from_nothing() {
        let (book, _) = run(Book::default(), &sale(1, "100.00", day(2)));
        let as_of = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let mature = BookCommand::Mature {
            partner_id: PARTNER,
            as_of,
            id_seed: Uuid::from_u128(77),
        };
        let (book, _) = run(book, &mature);
        assert_eq!(
            Book::decide(&book, &pay("10.01", 80)),
            Err(BookError::UnderMinimum {
                payable: usd("10.00"),
                minimum: usd("10.01")
            })
        );
        let (book, events) = run(book, &pay("10.00", 80));
        let BookEvent::PayoutCreated { amount, .. } = &events[0] else {
            panic!("expected a payout")
        };
        assert_eq!(*amount, usd("10.00"));
        assert_eq!(book.payable_in(Currency::USD), usd("0.00"));
        // The same run again pays nothing more; another run finds nothing payable.
        assert!(Book::decide(&book, &pay("10.00", 80)).unwrap().is_empty());
        assert_eq!(
            Book::decide(&book, &pay("0.00", 81)),
            Err(BookError::NothingPayable {
                payable: usd("0.00")
            })
        );
        // A clawback after the payout drives payable negative: still nothing to pay.
        let (book, _) = run(
            book,
            &BookCommand::Reverse {
                reversal_id: Uuid::from_u128(60),
                conversion_id: Uuid::from_u128(1),
                fraction: Decimal::ONE,
                occurred_at: as_of,
                source_event_id: Uuid::from_u128(61),
            },
        );
        assert_eq!(book.payable_in(Currency::USD), usd("-10.00"));
        assert!(matches!(
            Book::decide(&book, &pay("0.00", 82)),
            Err(BookError::NothingPayable { .. })
        ));
    }
}
