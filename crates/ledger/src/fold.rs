//! Balances folded in one pass for an as-of point known before the first transaction: what an
//! auditor's replay of balances needs. It keeps a sum per account instead of every transaction,
//! so its memory does not grow with the log, and it answers exactly what a [`Ledger`] holding
//! the same transactions answers for that as-of point (a property test holds them equal).
//!
//! [`Ledger`]: crate::Ledger

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use foldhash::fast::RandomState;

use chrono::{DateTime, Utc};
use pl_money::Currency;
use uuid::Uuid;

use crate::ledger::partner_balance_from;
use crate::transaction::validate_postings;
use crate::{
    Account, AsOf, LedgerError, PartnerBalances, RecordedTransaction, RecordingPoint,
    TransactionKind, Transfer,
};

/// What a balance needs of a recorded transaction: everything but its explanation.
#[derive(Debug, Clone, Copy)]
pub struct PostingsRef<'a> {
    /// The transaction's id, unique in the ledger.
    pub id: Uuid,
    /// What it records (which postings it may make).
    pub kind: TransactionKind,
    /// Business time.
    pub occurred_at: DateTime<Utc>,
    /// The transfers, in order.
    pub transfers: &'a [Transfer],
}

/// Balances of every account as of one point, folded from transactions in log order.
#[derive(Debug, Clone)]
pub struct BalanceFold {
    as_of: AsOf,
    // foldhash, not SipHash: hashing ids and accounts was a tenth of a replay. The log was
    // hash-verified; a crafted collision costs the auditor time, never a wrong balance.
    ids: HashSet<Uuid, RandomState>,
    last_position: Option<u64>,
    recorded_at_max: Option<DateTime<Utc>>,
    /// Debit-positive sum (minor units) and entry count per account, inside the cut.
    totals: HashMap<Account, (i128, usize), RandomState>,
    /// Every partner with an account, inside the cut or not, and its accounts' currencies.
    partners: BTreeMap<Uuid, BTreeSet<Currency>>,
    applied: u64,
}

impl BalanceFold {
    /// An empty fold for `as_of`.
    pub fn new(as_of: AsOf) -> BalanceFold {
        BalanceFold {
            as_of,
            ids: HashSet::default(),
            last_position: None,
            recorded_at_max: None,
            totals: HashMap::default(),
            partners: BTreeMap::new(),
            applied: 0,
        }
    }

    /// Folds in one recorded transaction, re-checking every money invariant (it balances per
    /// currency, only the postings its kind allows, positive whole minor units), that positions
    /// never decrease and that its id is new — the checks of [`Ledger::apply`] but the
    /// explanation's text limits. A refused transaction changes nothing.
    ///
    /// [`Ledger::apply`]: crate::Ledger::apply
    pub fn apply(
        &mut self,
        position: u64,
        recorded_at: DateTime<Utc>,
        postings: PostingsRef<'_>,
    ) -> Result<(), LedgerError> {
        validate_postings(postings.kind, postings.transfers).map_err(|source| {
            LedgerError::InvalidRecorded {
                position,
                transaction_id: postings.id,
                source: Box::new(source),
            }
        })?;
        if let Some(last_position) = self.last_position {
            if position < last_position {
                return Err(LedgerError::PositionOutOfOrder {
                    position,
                    last_position,
                });
            }
        }
        if !self.ids.insert(postings.id) {
            return Err(LedgerError::DuplicateTransaction {
                transaction_id: postings.id,
            });
        }
        self.last_position = Some(position);
        let recorded_at_max = self
            .recorded_at_max
            .map_or(recorded_at, |max| max.max(recorded_at));
        self.recorded_at_max = Some(recorded_at_max);
        self.applied += 1;

        let inside = self.known(position, recorded_at_max)
            && self
                .business_date()
                .is_none_or(|d| postings.occurred_at <= d);
        for transfer in postings.transfers {
            // Whole minor units within bounds: checked by `validate_postings`.
            let units = i128::from(
                transfer
                    .amount
                    .to_minor_units()
                    .map_err(LedgerError::from)?,
            );
            for (account, signed) in [(transfer.debit, units), (transfer.credit, -units)] {
                // A partner is noted once, with its account's first entry (an ordered map per
                // entry was a tenth of a replay).
                let total = self.totals.entry(account).or_insert_with(|| {
                    if let Some(partner_id) = account.partner_id() {
                        self.partners
                            .entry(partner_id)
                            .or_default()
                            .insert(account.currency());
                    }
                    (0, 0)
                });
                if inside {
                    total.0 += signed;
                    total.1 += 1;
                }
            }
        }
        Ok(())
    }

    /// [`BalanceFold::apply`] for a whole recorded transaction.
    pub fn apply_recorded(&mut self, recorded: &RecordedTransaction) -> Result<(), LedgerError> {
        let t = &recorded.transaction;
        self.apply(
            recorded.position,
            recorded.recorded_at,
            PostingsRef {
                id: t.id(),
                kind: t.kind(),
                occurred_at: t.occurred_at(),
                transfers: t.transfers(),
            },
        )
    }

    /// Whether a transaction at `position` (log order) was known at the recording point, given
    /// the latest `recorded_at` up to and including it.
    fn known(&self, position: u64, recorded_at_max: DateTime<Utc>) -> bool {
        match self.recording_point() {
            None => true,
            Some(RecordingPoint::Position(p)) => position <= p,
            Some(RecordingPoint::At(t)) => recorded_at_max <= t,
        }
    }

    fn recording_point(&self) -> Option<RecordingPoint> {
        match self.as_of {
            AsOf::Latest | AsOf::BusinessDate(_) => None,
            AsOf::Recorded { position } => Some(RecordingPoint::Position(position)),
            AsOf::RecordedAt(t) => Some(RecordingPoint::At(t)),
            AsOf::Bitemporal { recorded, .. } => Some(recorded),
        }
    }

    fn business_date(&self) -> Option<DateTime<Utc>> {
        match self.as_of {
            AsOf::BusinessDate(d)
            | AsOf::Bitemporal {
                business_date: d, ..
            } => Some(d),
            _ => None,
        }
    }

    /// Adds a fold of other transactions of the same log for the same as-of point (a reader
    /// folding partners' books on several cores, each in log order, and each given the running
    /// latest `recorded_at` of all the transactions rather than of its own): the result answers
    /// as one fold of all of them would. A transaction id in both is refused, as [`BalanceFold::apply`]
    /// refuses it, and leaves `self` unchanged.
    pub fn merge(&mut self, mut other: BalanceFold) -> Result<(), LedgerError> {
        debug_assert_eq!(self.as_of, other.as_of, "folds of different as-of points");
        let (small, large) = if other.ids.len() > self.ids.len() {
            (&self.ids, &other.ids)
        } else {
            (&other.ids, &self.ids)
        };
        // The least duplicate id, so the report does not depend on hash order.
        if let Some(&id) = small.iter().filter(|id| large.contains(*id)).min() {
            return Err(LedgerError::DuplicateTransaction { transaction_id: id });
        }
        // The smaller set goes into the larger.
        if other.ids.len() > self.ids.len() {
            std::mem::swap(self, &mut other);
        }
        self.ids.extend(other.ids);
        self.last_position = self.last_position.max(other.last_position);
        self.recorded_at_max = self.recorded_at_max.max(other.recorded_at_max);
        for (account, (sum, entries)) in other.totals {
            let total = self.totals.entry(account).or_insert((0, 0));
            total.0 += sum;
            total.1 += entries;
        }
        for (partner_id, currencies) in other.partners {
            self.partners
                .entry(partner_id)
                .or_default()
                .extend(currencies);
        }
        self.applied += other.applied;
        Ok(())
    }

    /// Transactions folded in.
    pub const fn len(&self) -> u64 {
        self.applied
    }

    /// Whether nothing was folded in.
    pub const fn is_empty(&self) -> bool {
        self.applied == 0
    }

    /// Every partner with an account, in order.
    pub fn partners(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.partners.keys().copied()
    }

    /// A partner's balances in every currency with at least one entry inside the cut, as
    /// [`Ledger::balances_of_partner`](crate::Ledger::balances_of_partner) reports them.
    pub fn balances_of_partner(&self, partner_id: Uuid) -> Result<PartnerBalances, LedgerError> {
        let currencies = self.partners.get(&partner_id).into_iter().flatten();
        let mut balances = BTreeMap::new();
        for &currency in currencies {
            let (balance, count) = partner_balance_from(partner_id, currency, |account| {
                self.totals.get(account).copied().unwrap_or((0, 0))
            })?;
            if count > 0 {
                balances.insert(currency, balance);
            }
        }
        Ok(PartnerBalances {
            partner_id,
            currencies: balances,
        })
    }
}
