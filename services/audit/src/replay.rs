//! Rebuilds the commission ledger from the log: every `ledger-*` event in global order, decoded
//! as the commissions service decodes it, each transaction applied at its event's position, so
//! every as-of point (business date, log position, recorded_at, or both) answers as the live
//! service does. Balances are asserted again on replay by the ledger (every transaction
//! balances per currency).

use std::collections::BTreeSet;

use pl_commissions::book::BookEvent;
use pl_commissions::book_codec;
use pl_eventlog::{EventStore, RecordedEvent};
use pl_ledger::{AsOf, BalanceFold, Ledger, PartnerBalance, RecordedTransaction, RecordingPoint};
use pl_money::Currency;
use pl_runtime::aggregate::decode_event;
use serde::Serialize;
use uuid::Uuid;

use crate::{AuditError, PAGE_EVENTS};

/// The partner books' stream prefix (see `pl_commissions::book::stream`).
pub const BOOK_PREFIX: &str = "ledger-";

/// A replayed ledger and what it was built from.
#[derive(Debug)]
pub struct Replayed {
    pub ledger: Ledger,
    pub events_read: u64,
    pub book_events: u64,
    /// The last log position read; `None` for an empty log.
    pub last_position: Option<u64>,
}

/// Decodes a book event's transactions, as the live service does.
pub fn transactions_of(recorded: &RecordedEvent) -> Result<Vec<RecordedTransaction>, AuditError> {
    let event: BookEvent = decode_event(recorded).map_err(|reason| AuditError::Decode {
        stream: recorded.stream.clone(),
        position: recorded.position,
        reason,
    })?;
    Ok(event
        .transactions()
        .iter()
        .map(|t| RecordedTransaction {
            transaction: t.clone(),
            position: recorded.position,
            recorded_at: recorded.recorded_at,
        })
        .collect())
}

/// The book events decoded postings-only; any other type is decoded in full.
const KNOWN_BOOK_EVENTS: &[&str] = &[
    "ConversionAccrued",
    "OverrideAccrued",
    "ConversionReversed",
    "OverrideReversed",
    "CommissionsMatured",
    "CustomerChurned",
    "PayoutCreated",
    "PayoutSettled",
    "PayoutFailed",
    "PartnerCredited",
];

/// A schema-1 book event's JSON holds its postings under `transactions` (or none, for a churn):
/// balances need only those, so the rest of the document (the engine's accrual, 60 % of the
/// bytes) is skipped unparsed. Events whose schema needs an upcast go the full way, and so do
/// later schema versions here (their postings come whole from `decode_event`).
#[derive(serde::Deserialize)]
struct Postings {
    #[serde(default)]
    transactions: Vec<pl_ledger::Transaction>,
}

fn postings_of(recorded: &RecordedEvent) -> Result<Vec<RecordedTransaction>, AuditError> {
    use pl_runtime::aggregate::DomainEvent;
    // A type this version does not know, or an old schema, goes the service's own way (which
    // refuses what it cannot decode) instead of counting as no postings.
    if !KNOWN_BOOK_EVENTS.contains(&recorded.event_type.as_str())
        || BookEvent::needs_upcast(&recorded.event_type, recorded.schema_version)
        || recorded.schema_version >= book_codec::STORED_SCHEMA_VERSION
    {
        return transactions_of(recorded);
    }
    let p: Postings = serde_json::from_slice(&recorded.data).map_err(|e| AuditError::Decode {
        stream: recorded.stream.clone(),
        position: recorded.position,
        reason: e.to_string(),
    })?;
    Ok(p.transactions
        .into_iter()
        .map(|transaction| RecordedTransaction {
            transaction,
            position: recorded.position,
            recorded_at: recorded.recorded_at,
        })
        .collect())
}

/// What a balance fold needs of a book event: its postings, read alone from the stored form
/// (schema 2 on); a schema-1 event's come from its JSON.
fn fold_postings_of(recorded: &RecordedEvent) -> Result<Vec<book_codec::Postings>, AuditError> {
    let decode_error = |reason: String| AuditError::Decode {
        stream: recorded.stream.clone(),
        position: recorded.position,
        reason,
    };
    if KNOWN_BOOK_EVENTS.contains(&recorded.event_type.as_str()) {
        if let Some(postings) = book_codec::postings(recorded).map_err(decode_error)? {
            return Ok(postings);
        }
    }
    Ok(postings_of(recorded)?
        .into_iter()
        .map(|r| {
            let t = r.transaction;
            book_codec::Postings {
                id: t.id(),
                kind: t.kind(),
                occurred_at: t.occurred_at(),
                transfers: t.transfers().to_vec(),
            }
        })
        .collect())
}

/// Decodes a page's book events on every core (JSON decoding is nine tenths of a replay),
/// keeping log order.
fn decode_page(events: &[RecordedEvent]) -> Result<Vec<RecordedTransaction>, AuditError> {
    Ok(decode_parallel(events, postings_of)?
        .into_iter()
        .flatten()
        .collect())
}

/// `decode` of every event on every core, in log order.
fn decode_parallel<T: Send>(
    events: &[RecordedEvent],
    decode: fn(&RecordedEvent) -> Result<T, AuditError>,
) -> Result<Vec<T>, AuditError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_DECODE_THREADS);
    let chunk = events.len().div_ceil(threads).max(1);
    let decoded: Vec<Result<Vec<T>, AuditError>> = std::thread::scope(|s| {
        let handles: Vec<_> = events
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(decode).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(AuditError::Invalid("a decoding thread panicked".into()))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(events.len());
    for part in decoded {
        out.extend(part?);
    }
    Ok(out)
}

/// Threads decoding one page at most.
const MAX_DECODE_THREADS: usize = 16;

/// Replays the books of one partner (`Some`) or all, up to `up_to_position` when given.
pub async fn replay(
    store: &dyn EventStore,
    partner: Option<Uuid>,
    up_to_position: Option<u64>,
) -> Result<Replayed, AuditError> {
    let only = partner.map(pl_commissions::book::stream);
    let mut ledger = Ledger::new();
    let (mut events_read, mut book_events, mut last_position) = (0u64, 0u64, None);
    let mut from = 0;
    'pages: loop {
        let page = store.read_all(from, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        let mut books = Vec::with_capacity(page.len());
        let mut done = false;
        for recorded in page {
            if up_to_position.is_some_and(|p| recorded.position > p) {
                done = true;
                break;
            }
            events_read += 1;
            last_position = Some(recorded.position);
            let wanted = match &only {
                Some(stream) => recorded.stream == *stream,
                None => recorded.stream.starts_with(BOOK_PREFIX),
            };
            if wanted {
                books.push(recorded);
            }
        }
        book_events += books.len() as u64;
        // Decoding blocks: off the async workers, on every core.
        let decoded = tokio::task::spawn_blocking(move || decode_page(&books))
            .await
            .map_err(|e| AuditError::Invalid(format!("decoding task: {e}")))??;
        for t in &decoded {
            ledger.apply(t)?;
        }
        if done {
            break 'pages;
        }
    }
    Ok(Replayed {
        ledger,
        events_read,
        book_events,
        last_position,
    })
}

/// Balances replayed for one as-of point, and what they were folded from.
#[derive(Debug)]
pub struct BalanceReplay {
    /// By partner then currency, as [`balances`] reports them.
    pub rows: Vec<BalanceRow>,
    pub events_read: u64,
    pub book_events: u64,
    pub transactions: u64,
}

/// Replays the balances of one partner (`Some`) or all as of `as_of` in one pass, without
/// keeping the transactions: each page's book events are decoded and folded into a
/// [`BalanceFold`] on another core while the next page is read. Reports exactly what
/// [`replay`] then [`balances`] report for the same as-of point (a test holds them equal); a
/// recording point ends the read where it lies.
pub async fn replay_balances(
    store: &dyn EventStore,
    partner: Option<Uuid>,
    as_of: AsOf,
) -> Result<BalanceReplay, AuditError> {
    let only = partner.map(pl_commissions::book::stream);
    let last_known_position = match as_of {
        AsOf::Recorded { position }
        | AsOf::Bitemporal {
            recorded: RecordingPoint::Position(position),
            ..
        } => Some(position),
        _ => None,
    };
    // The fold is with the task folding the last page read, and back here between pages.
    let mut fold = BalanceFold::new(as_of);
    let mut folding: Option<tokio::task::JoinHandle<Result<BalanceFold, AuditError>>> = None;
    let (mut events_read, mut book_events) = (0u64, 0u64);
    let mut from = 0;
    loop {
        let page = store.read_all(from, PAGE_EVENTS).await;
        if let Some(task) = folding.take() {
            fold = joined(task).await??;
        }
        let page = page?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        if fold.past_recording_point() || last_known_position.is_some_and(|p| page[0].position > p)
        {
            break;
        }
        events_read += page.len() as u64;
        let books: Vec<RecordedEvent> = page
            .into_iter()
            .filter(|recorded| {
                last_known_position.is_none_or(|p| recorded.position <= p)
                    && match &only {
                        Some(stream) => recorded.stream == *stream,
                        None => recorded.stream.starts_with(BOOK_PREFIX),
                    }
            })
            .collect();
        book_events += books.len() as u64;
        let mut current = std::mem::replace(&mut fold, BalanceFold::new(as_of));
        folding = Some(tokio::task::spawn_blocking(move || {
            let decoded = decode_parallel(&books, fold_postings_of)?;
            for (recorded, postings) in books.iter().zip(decoded) {
                for p in postings {
                    current.apply(recorded.position, recorded.recorded_at, p.as_ref())?;
                }
            }
            Ok(current)
        }));
    }
    let partners: Vec<Uuid> = match partner {
        Some(p) => vec![p],
        None => fold.partners().collect(),
    };
    let mut rows = Vec::new();
    for p in partners {
        let b = fold.balances_of_partner(p)?;
        rows.extend(
            b.currencies
                .iter()
                .map(|(currency, balance)| BalanceRow::new(p, *currency, balance)),
        );
    }
    Ok(BalanceReplay {
        rows,
        events_read,
        book_events,
        transactions: fold.len(),
    })
}

async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Result<T, AuditError> {
    task.await
        .map_err(|e| AuditError::Invalid(format!("decoding task: {e}")))
}

/// One line of a balance report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceRow {
    pub partner_id: Uuid,
    pub currency: Currency,
    /// Decimal strings, exactly as the live service's `GetBalances` reports them.
    pub pending: String,
    pub payable: String,
    pub paid: String,
}

impl BalanceRow {
    fn new(partner_id: Uuid, currency: Currency, b: &PartnerBalance) -> Self {
        Self {
            partner_id,
            currency,
            pending: b.pending.amount().to_string(),
            payable: b.payable.amount().to_string(),
            paid: b.paid.amount().to_string(),
        }
    }
}

/// Every partner's balances (or one partner's) as of `as_of`, by partner then currency.
pub fn balances(
    ledger: &Ledger,
    partner: Option<Uuid>,
    as_of: AsOf,
) -> Result<Vec<BalanceRow>, AuditError> {
    let partners: BTreeSet<Uuid> = match partner {
        Some(p) => BTreeSet::from([p]),
        None => ledger
            .accounts()
            .iter()
            .filter_map(|a| a.partner_id())
            .collect(),
    };
    let mut rows = Vec::new();
    for p in partners {
        let b = ledger.balances_of_partner(p, as_of)?;
        rows.extend(
            b.currencies
                .iter()
                .map(|(currency, balance)| BalanceRow::new(p, *currency, balance)),
        );
    }
    Ok(rows)
}

/// A fixed-width table, one row per partner and currency.
pub fn table(rows: &[BalanceRow]) -> String {
    let mut out = format!(
        "{:<36}  {:<3}  {:>16}  {:>16}  {:>16}\n",
        "partner", "cur", "pending", "payable", "paid"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<36}  {:<3}  {:>16}  {:>16}  {:>16}\n",
            r.partner_id,
            r.currency.code(),
            r.pending,
            r.payable,
            r.paid
        ));
    }
    out
}
