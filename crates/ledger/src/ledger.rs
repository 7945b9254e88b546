//! The projection that derives every balance from the recorded transactions, as of any business
//! date and any recording point.
//!
//! Each account keeps its entries twice: in log order and in business order (`occurred_at`, then
//! log order), each with a running sum. So the latest balance is O(1), a balance as of a
//! recording point or a business date is one binary search, and a bitemporal balance (business
//! date D as known at recording point R) is a binary search plus a scan of whichever side of R is
//! shorter, usually the few entries recorded after R. Appending an entry in business order costs
//! the number of entries dated after it: nothing for transactions recorded in date order, a short
//! shift for the usual backdated one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use pl_money::{Currency, Decimal, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Account, Explanation, LedgerError, NormalSide, Transaction, TransactionKind};

/// Most entries on one page of [`Ledger::explain`].
pub const MAX_PAGE_ENTRIES: usize = 1000;

/// A transaction as the event log recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedTransaction {
    /// The transaction.
    pub transaction: Transaction,
    /// Its position in the log; never decreasing in the order transactions are applied (the
    /// transactions of one log event share its position).
    pub position: u64,
    /// When the log stored it.
    pub recorded_at: DateTime<Utc>,
}

/// A point in the recording history of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordingPoint {
    /// Everything recorded at log positions up to and including this one.
    Position(u64),
    /// Everything recorded at or before this time: the longest log prefix whose transactions
    /// were all recorded by then (the same as filtering by `recorded_at` when the store's clock
    /// is monotonic, and still a consistent prefix of the log when it is not).
    At(DateTime<Utc>),
}

/// Which transactions a balance includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AsOf {
    /// Everything applied.
    Latest,
    /// What was true at business date D: every transaction with `occurred_at <= D`, including
    /// those recorded later (backdated).
    BusinessDate(DateTime<Utc>),
    /// What the ledger knew at log position P.
    Recorded {
        /// The last position included.
        position: u64,
    },
    /// What the ledger knew at time R (see [`RecordingPoint::At`]).
    RecordedAt(DateTime<Utc>),
    /// What was true at business date D as the ledger knew it at a recording point.
    Bitemporal {
        /// The business date D.
        business_date: DateTime<Utc>,
        /// The recording point.
        recorded: RecordingPoint,
    },
}

impl AsOf {
    /// The as-of point of a query that may name a business date, a recording point, both or
    /// neither (everything known now).
    pub fn from_parts(
        business_date: Option<DateTime<Utc>>,
        recorded: Option<RecordingPoint>,
    ) -> AsOf {
        match (business_date, recorded) {
            (None, None) => AsOf::Latest,
            (Some(d), None) => AsOf::BusinessDate(d),
            (None, Some(RecordingPoint::Position(position))) => AsOf::Recorded { position },
            (None, Some(RecordingPoint::At(t))) => AsOf::RecordedAt(t),
            (Some(business_date), Some(recorded)) => AsOf::Bitemporal {
                business_date,
                recorded,
            },
        }
    }
}

/// One page of entries: `limit` entries from `offset`, `limit` in `1..=`[`MAX_PAGE_ENTRIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Entries skipped.
    pub offset: usize,
    /// Most entries returned.
    pub limit: usize,
}

/// A partner's balances in one currency, each positive in its normal direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerBalance {
    /// Earned, in hold.
    pub pending: Money,
    /// Due now; negative when a clawback exceeded it.
    pub payable: Money,
    /// Settled to date.
    pub paid: Money,
}

/// A partner's balances in every currency with at least one entry inside the cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerBalances {
    /// The partner.
    pub partner_id: Uuid,
    /// Balances per currency.
    pub currencies: BTreeMap<Currency, PartnerBalance>,
}

/// One entry of a partner account, with the transaction that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedEntry {
    /// The transaction.
    pub transaction_id: Uuid,
    /// Its kind.
    pub kind: TransactionKind,
    /// Its business time.
    pub occurred_at: DateTime<Utc>,
    /// When the log stored it.
    pub recorded_at: DateTime<Utc>,
    /// Its log position.
    pub position: u64,
    /// The partner account the entry is on.
    pub account: Account,
    /// The other side of the transfer.
    pub counter_account: Account,
    /// The effect on the account's balance: positive raises it in the normal direction.
    pub amount: Money,
    /// Why.
    pub explanation: Explanation,
}

/// A partner's balances in one currency and a page of the entries that make them up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explained {
    /// The partner.
    pub partner_id: Uuid,
    /// The currency.
    pub currency: Currency,
    /// The balances the entries sum to.
    pub balance: PartnerBalance,
    /// Entries inside the cut, on all pages.
    pub total_entries: usize,
    /// This page, in log order (pending, payable, paid within one transfer).
    pub entries: Vec<ExplainedEntry>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    recorded: RecordedTransaction,
    /// The latest `recorded_at` of this and every earlier transaction.
    recorded_at_max: DateTime<Utc>,
}

/// An entry on one account, signed debit-positive, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogEntry {
    /// Index of the transaction in log order.
    seq: usize,
    /// Index of the transfer in its transaction.
    transfer: usize,
    occurred_at: DateTime<Utc>,
    amount_minor_units: i128,
    /// Sum of this and every earlier entry in log order.
    running_minor_units: i128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BusinessEntry {
    occurred_at: DateTime<Utc>,
    /// Sum of this and every earlier entry in business order.
    running_minor_units: i128,
}

/// The entries of one account.
///
/// Sums are `i128` minor units: every amount is at most 10^15 minor units, so no sum of fewer
/// than 10^23 entries can overflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Book {
    by_log: Vec<LogEntry>,
    by_business: Vec<BusinessEntry>,
}

/// The transactions a query sees: the first `known` in log order, and of those only the ones that
/// occurred at or before `business`, if set.
#[derive(Debug, Clone, Copy)]
struct Cut {
    known: usize,
    business: Option<DateTime<Utc>>,
}

fn running_before<T>(entries: &[T], count: usize, running: impl Fn(&T) -> i128) -> i128 {
    count
        .checked_sub(1)
        .and_then(|last| entries.get(last))
        .map_or(0, running)
}

impl Book {
    fn post(&mut self, seq: usize, transfer: usize, occurred_at: DateTime<Utc>, amount: i128) {
        let running = running_before(&self.by_log, self.by_log.len(), |e| e.running_minor_units);
        self.by_log.push(LogEntry {
            seq,
            transfer,
            occurred_at,
            amount_minor_units: amount,
            running_minor_units: running + amount,
        });
        // After every entry of the same date: ties stay in log order.
        let at = self
            .by_business
            .partition_point(|e| e.occurred_at <= occurred_at);
        let before = running_before(&self.by_business, at, |e| e.running_minor_units);
        self.by_business.insert(
            at,
            BusinessEntry {
                occurred_at,
                running_minor_units: before + amount,
            },
        );
        for later in self.by_business.iter_mut().skip(at + 1) {
            later.running_minor_units += amount;
        }
    }

    /// The entries inside the cut, in log order.
    fn entries(&self, cut: Cut) -> impl Iterator<Item = &LogEntry> {
        let known = self.by_log.partition_point(|e| e.seq < cut.known);
        self.by_log
            .iter()
            .take(known)
            .filter(move |e| cut.business.is_none_or(|date| e.occurred_at <= date))
    }

    /// Sum (debit-positive, minor units) and count of the entries inside the cut.
    fn total(&self, cut: Cut) -> (i128, usize) {
        let known = self.by_log.partition_point(|e| e.seq < cut.known);
        let Some(date) = cut.business else {
            return (
                running_before(&self.by_log, known, |e| e.running_minor_units),
                known,
            );
        };
        let dated = self.by_business.partition_point(|e| e.occurred_at <= date);
        let dated_total = running_before(&self.by_business, dated, |e| e.running_minor_units);
        let (inside, outside) = self.by_log.split_at(known);
        let dated_in = |entries: &[LogEntry]| {
            entries
                .iter()
                .filter(|e| e.occurred_at <= date)
                .fold((0, 0), |(sum, count), e| {
                    (sum + e.amount_minor_units, count + 1)
                })
        };
        // Scan whichever side of the recording point is shorter.
        if inside.len() <= outside.len() {
            dated_in(inside)
        } else {
            let (late_total, late_count) = dated_in(outside);
            (dated_total - late_total, dated - late_count)
        }
    }
}

/// The double-entry ledger as a projection of recorded transactions. Balances are derived, never
/// stored: the running sums kept beside the entries are an in-memory index that a replay from
/// position 0 rebuilds identically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    applied: Vec<Applied>,
    ids: HashSet<Uuid>,
    books: HashMap<Account, Book>,
    partner_accounts: HashMap<Uuid, BTreeSet<Account>>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Applies recorded transactions in order, stopping at the first one refused.
    pub fn replay<'a>(
        recorded: impl IntoIterator<Item = &'a RecordedTransaction>,
    ) -> Result<Ledger, LedgerError> {
        let mut ledger = Ledger::new();
        recorded
            .into_iter()
            .try_for_each(|transaction| ledger.apply(transaction))?;
        Ok(ledger)
    }

    /// Applies one recorded transaction, re-validating it first (it must balance per currency
    /// and pass every check of [`Transaction::validate`]). Positions must never decrease (one event may carry several transactions) and
    /// ids be new. A refused transaction leaves the ledger unchanged.
    pub fn apply(&mut self, recorded: &RecordedTransaction) -> Result<(), LedgerError> {
        let transaction = &recorded.transaction;
        let invalid = |source: LedgerError| LedgerError::InvalidRecorded {
            position: recorded.position,
            transaction_id: transaction.id(),
            source: Box::new(source),
        };
        transaction.validate().map_err(invalid)?;
        if let Some(last) = self.applied.last() {
            if recorded.position < last.recorded.position {
                return Err(LedgerError::PositionOutOfOrder {
                    position: recorded.position,
                    last_position: last.recorded.position,
                });
            }
        }
        if self.ids.contains(&transaction.id()) {
            return Err(LedgerError::DuplicateTransaction {
                transaction_id: transaction.id(),
            });
        }
        let amounts = transaction
            .transfers()
            .iter()
            .map(|t| t.amount.to_minor_units().map(i128::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.into()))?;

        // Nothing can fail from here on.
        let seq = self.applied.len();
        let occurred_at = transaction.occurred_at();
        for (index, (transfer, amount)) in transaction.transfers().iter().zip(amounts).enumerate() {
            for (account, signed) in [(transfer.debit, amount), (transfer.credit, -amount)] {
                let book = self.books.entry(account).or_insert_with(|| {
                    if let Some(partner_id) = account.partner_id() {
                        self.partner_accounts
                            .entry(partner_id)
                            .or_default()
                            .insert(account);
                    }
                    Book::default()
                });
                book.post(seq, index, occurred_at, signed);
            }
        }
        let recorded_at_max = self.applied.last().map_or(recorded.recorded_at, |last| {
            last.recorded_at_max.max(recorded.recorded_at)
        });
        self.ids.insert(transaction.id());
        self.applied.push(Applied {
            recorded: recorded.clone(),
            recorded_at_max,
        });
        Ok(())
    }

    /// Transactions applied.
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    /// Whether nothing was applied.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// The log position of the last transaction applied.
    pub fn last_position(&self) -> Option<u64> {
        self.applied.last().map(|a| a.recorded.position)
    }

    /// The applied transactions, in log order.
    pub fn transactions(&self) -> impl Iterator<Item = &RecordedTransaction> {
        self.applied.iter().map(|a| &a.recorded)
    }

    /// Every account with at least one entry, in order.
    pub fn accounts(&self) -> Vec<Account> {
        let mut accounts: Vec<Account> = self.books.keys().copied().collect();
        accounts.sort_unstable();
        accounts
    }

    /// An account's balance, positive in its normal direction.
    pub fn balance(&self, account: Account, as_of: AsOf) -> Result<Money, LedgerError> {
        let (total, _) = self.total(&account, self.cut(as_of));
        display(&account, total)
    }

    /// A partner's pending, payable and paid balances in every currency they have entries in.
    pub fn balances_of_partner(
        &self,
        partner_id: Uuid,
        as_of: AsOf,
    ) -> Result<PartnerBalances, LedgerError> {
        let cut = self.cut(as_of);
        let currencies: BTreeSet<Currency> = self
            .partner_accounts
            .get(&partner_id)
            .into_iter()
            .flatten()
            .map(Account::currency)
            .collect();
        let mut balances = BTreeMap::new();
        for currency in currencies {
            let (balance, count) = self.partner_balance(partner_id, currency, cut)?;
            if count > 0 {
                balances.insert(currency, balance);
            }
        }
        Ok(PartnerBalances {
            partner_id,
            currencies: balances,
        })
    }

    /// A partner's balances in one currency and one page of the entries that make them up, each
    /// with its transaction's explanation, in log order.
    pub fn explain(
        &self,
        partner_id: Uuid,
        currency: Currency,
        as_of: AsOf,
        page: Page,
    ) -> Result<Explained, LedgerError> {
        if !(1..=MAX_PAGE_ENTRIES).contains(&page.limit) {
            return Err(LedgerError::PageLimit {
                limit: page.limit,
                max: MAX_PAGE_ENTRIES,
            });
        }
        let cut = self.cut(as_of);
        let (balance, _) = self.partner_balance(partner_id, currency, cut)?;
        let mut entries: Vec<(usize, usize, usize, Account, &LogEntry)> = Vec::new();
        for (rank, account) in partner_accounts(partner_id, currency)
            .into_iter()
            .enumerate()
        {
            if let Some(book) = self.books.get(&account) {
                entries.extend(
                    book.entries(cut)
                        .map(|e| (e.seq, e.transfer, rank, account, e)),
                );
            }
        }
        entries.sort_unstable_by_key(|&(seq, transfer, rank, _, _)| (seq, transfer, rank));
        let total_entries = entries.len();
        let page_entries = entries
            .iter()
            .skip(page.offset)
            .take(page.limit)
            .map(|&(_, _, _, account, entry)| self.explained_entry(&account, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let end = page.offset.saturating_add(page_entries.len());
        Ok(Explained {
            partner_id,
            currency,
            balance,
            total_entries,
            entries: page_entries,
            next_offset: (end < total_entries).then_some(end),
        })
    }

    /// The sum of every account's debits minus credits, per currency. Zero in every currency,
    /// whatever the cut, in a ledger of balanced transactions.
    pub fn trial_balance(&self, as_of: AsOf) -> Result<BTreeMap<Currency, Money>, LedgerError> {
        let cut = self.cut(as_of);
        let mut totals: BTreeMap<Currency, i128> = BTreeMap::new();
        for (account, book) in &self.books {
            *totals.entry(account.currency()).or_default() += book.total(cut).0;
        }
        totals
            .into_iter()
            .map(|(currency, total)| Ok((currency, money(total, currency)?)))
            .collect()
    }

    fn cut(&self, as_of: AsOf) -> Cut {
        let known_at = |point: RecordingPoint| match point {
            RecordingPoint::Position(position) => self
                .applied
                .partition_point(|a| a.recorded.position <= position),
            RecordingPoint::At(time) => self.applied.partition_point(|a| a.recorded_at_max <= time),
        };
        let everything = self.applied.len();
        let (known, business) = match as_of {
            AsOf::Latest => (everything, None),
            AsOf::BusinessDate(date) => (everything, Some(date)),
            AsOf::Recorded { position } => (known_at(RecordingPoint::Position(position)), None),
            AsOf::RecordedAt(time) => (known_at(RecordingPoint::At(time)), None),
            AsOf::Bitemporal {
                business_date,
                recorded,
            } => (known_at(recorded), Some(business_date)),
        };
        Cut { known, business }
    }

    fn total(&self, account: &Account, cut: Cut) -> (i128, usize) {
        self.books
            .get(account)
            .map_or((0, 0), |book| book.total(cut))
    }

    /// The partner's balances in `currency` and how many entries make them up.
    fn partner_balance(
        &self,
        partner_id: Uuid,
        currency: Currency,
        cut: Cut,
    ) -> Result<(PartnerBalance, usize), LedgerError> {
        partner_balance_from(partner_id, currency, |account| self.total(account, cut))
    }

    fn explained_entry(
        &self,
        account: &Account,
        entry: &LogEntry,
    ) -> Result<ExplainedEntry, LedgerError> {
        // Entries are only ever made from applied transactions and their transfers.
        let recorded = &self.applied[entry.seq].recorded;
        let transaction = &recorded.transaction;
        let transfer = &transaction.transfers()[entry.transfer];
        let counter_account = if transfer.debit == *account {
            transfer.credit
        } else {
            transfer.debit
        };
        Ok(ExplainedEntry {
            transaction_id: transaction.id(),
            kind: transaction.kind(),
            occurred_at: transaction.occurred_at(),
            recorded_at: recorded.recorded_at,
            position: recorded.position,
            account: *account,
            counter_account,
            amount: display(account, entry.amount_minor_units)?,
            explanation: transaction.explanation().clone(),
        })
    }
}

/// A partner's balances in `currency` from each account's debit-positive total and entry
/// count, and how many entries make them up.
pub(crate) fn partner_balance_from(
    partner_id: Uuid,
    currency: Currency,
    total: impl Fn(&Account) -> (i128, usize),
) -> Result<(PartnerBalance, usize), LedgerError> {
    let [pending, payable, paid] = partner_accounts(partner_id, currency);
    let mut count = 0;
    let mut shown = |account: &Account| {
        let (sum, entries) = total(account);
        count += entries;
        display(account, sum)
    };
    let balance = PartnerBalance {
        pending: shown(&pending)?,
        payable: shown(&payable)?,
        paid: shown(&paid)?,
    };
    Ok((balance, count))
}

/// A partner's pending, payable and paid accounts in one currency.
fn partner_accounts(partner_id: Uuid, currency: Currency) -> [Account; 3] {
    [
        Account::PartnerPending {
            partner_id,
            currency,
        },
        Account::PartnerPayable {
            partner_id,
            currency,
        },
        Account::PartnerPaid {
            partner_id,
            currency,
        },
    ]
}

/// A debit-positive total, shown positive in the account's normal direction.
pub(crate) fn display(
    account: &Account,
    debit_positive_minor_units: i128,
) -> Result<Money, LedgerError> {
    let shown = match account.normal_side() {
        NormalSide::Debit => debit_positive_minor_units,
        NormalSide::Credit => -debit_positive_minor_units,
    };
    money(shown, account.currency())
}

fn money(minor_units: i128, currency: Currency) -> Result<Money, LedgerError> {
    Decimal::try_from_i128_with_scale(minor_units, currency.minor_unit())
        .map(|amount| Money::new(amount, currency))
        .map_err(|_| LedgerError::Overflow)
}
