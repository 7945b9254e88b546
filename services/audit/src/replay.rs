//! Rebuilds the commission ledger from the log: every `ledger-*` event in global order, decoded
//! as the commissions service decodes it, each transaction applied at its event's position, so
//! every as-of point (business date, log position, recorded_at, or both) answers as the live
//! service does. Balances are asserted again on replay by the ledger (every transaction
//! balances per currency).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use pl_commissions::book::BookEvent;
use pl_commissions::book_codec;
use pl_eventlog::{EventStore, RecordedEvent};
use pl_ledger::{AsOf, BalanceFold, Ledger, PartnerBalance, RecordedTransaction, RecordingPoint};
use pl_money::Currency;
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
    book_codec::recorded_transactions(recorded).map_err(|reason| AuditError::Decode {
        stream: recorded.stream.clone(),
        position: recorded.position,
        reason,
    })
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
        || recorded.schema_version >= book_codec::FIRST_BINARY_SCHEMA_VERSION
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

/// Decodes a page's book events on every core (JSON decoding is nine tenths of a full
/// replay), keeping log order.
fn decode_page(events: &[RecordedEvent]) -> Result<Vec<RecordedTransaction>, AuditError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_DECODE_THREADS);
    let chunk = events.len().div_ceil(threads).max(1);
    let decoded: Vec<Result<Vec<Vec<RecordedTransaction>>, AuditError>> = std::thread::scope(|s| {
        let handles: Vec<_> = events
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(postings_of).collect()))
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
        out.extend(part?.into_iter().flatten());
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
/// keeping the transactions. The partners' books are split over one folding thread per core
/// (by stream, so each book stays in log order in one [`BalanceFold`]) while this task reads
/// the next page; the folds are merged at the end. Reports exactly what [`replay`] then
/// [`balances`] report for the same as-of point (a test holds them equal); a recording point
/// ends the read where it lies.
pub async fn replay_balances(
    store: &dyn EventStore,
    partner: Option<Uuid>,
    as_of: AsOf,
) -> Result<BalanceReplay, AuditError> {
    let only = partner.map(pl_commissions::book::stream);
    let (last_known_position, last_known_at) = match as_of {
        AsOf::Recorded { position }
        | AsOf::Bitemporal {
            recorded: RecordingPoint::Position(position),
            ..
        } => (Some(position), None),
        AsOf::RecordedAt(t)
        | AsOf::Bitemporal {
            recorded: RecordingPoint::At(t),
            ..
        } => (None, Some(t)),
        _ => (None, None),
    };
    let shards = if partner.is_some() {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_FOLD_SHARDS)
    };
    // Folding threads are the replay's own, not the runtime's blocking pool (which the log's
    // reads need: folds waiting on pages there could take every slot), and few at a time.
    let _permit = REPLAYS
        .acquire()
        .await
        .map_err(|e| AuditError::Invalid(format!("replay limit: {e}")))?;
    let (mut queues, mut folders) = (Vec::with_capacity(shards), Vec::with_capacity(shards));
    for _ in 0..shards {
        let (queue, pages) = tokio::sync::mpsc::channel(FOLD_QUEUE_PAGES);
        let (done, folded) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("replay-fold".into())
            .spawn(move || {
                // The receiver is gone only when the replay was dropped: nobody to tell.
                let _ = done.send(fold_shard(pages, as_of));
            })
            .map_err(|e| AuditError::Invalid(format!("starting a folding thread: {e}")))?;
        queues.push(queue);
        folders.push(folded);
    }
    let read = read_into_shards(
        store,
        only.as_deref(),
        last_known_position,
        last_known_at,
        &queues,
    )
    .await;
    // Closing the queues ends the folds.
    drop(queues);
    // Every thread is joined before any error returns. The folds' errors come first, the one
    // earliest in the log (whatever the number of threads): a fold that stopped is what failed
    // the reader's send.
    let mut parts = Vec::with_capacity(folders.len());
    let mut first_error: Option<(u64, AuditError)> = None;
    for folded in folders {
        match folded.await {
            Ok(Ok(part)) => parts.push(part),
            Ok(Err((position, e))) => {
                if first_error.as_ref().is_none_or(|(p, _)| position < *p) {
                    first_error = Some((position, e));
                }
            }
            Err(_) => {
                first_error.get_or_insert((
                    u64::MAX,
                    AuditError::Invalid("a folding thread panicked".into()),
                ));
            }
        }
    }
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    let mut fold = BalanceFold::new(as_of);
    for part in parts {
        fold.merge(part)?;
    }
    let (events_read, book_events) = read?;
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

/// Events per page of a replay of balances. Smaller than [`PAGE_EVENTS`]: the folding threads
/// read what the reader just read on another core, and a page of about a megabyte is still in
/// the shared cache when they do (4,096 events a page replayed a 1M-event log about a fifth
/// slower; 256 lost to the per-page overhead).
const FOLD_PAGE_EVENTS: usize = 1024;
/// Replays of balances running at once; more wait their turn.
const MAX_CONCURRENT_REPLAYS: usize = 8;
static REPLAYS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_REPLAYS);
/// Folding threads of one replay at most.
const MAX_FOLD_SHARDS: usize = 8;
/// Pages waiting for a folding thread: enough to keep it busy while the next is read, few
/// enough that a slow fold holds back the reader instead of filling memory.
const FOLD_QUEUE_PAGES: usize = 2;

/// A book event for a folding thread, with the latest `recorded_at` of the books replayed up
/// to it (a recording-time cut looks at all of them, not at the one book).
type Queued = (RecordedEvent, DateTime<Utc>);

/// Reads the log page by page and hands each book event to its stream's folding thread;
/// returns the events read and the book events among them. The next page is read while the
/// last is handed out. Stops after the page that passes the recording point.
async fn read_into_shards(
    store: &dyn EventStore,
    only: Option<&str>,
    last_known_position: Option<u64>,
    last_known_at: Option<DateTime<Utc>>,
    queues: &[tokio::sync::mpsc::Sender<Vec<Queued>>],
) -> Result<(u64, u64), AuditError> {
    let (mut events_read, mut book_events) = (0u64, 0u64);
    let mut recorded_at_max: Option<DateTime<Utc>> = None;
    let mut page = store.read_all(0, FOLD_PAGE_EVENTS).await?;
    while let Some(last) = page.last() {
        let from = last.position + 1;
        if last_known_position.is_some_and(|p| page[0].position > p)
            || last_known_at.is_some_and(|t| recorded_at_max.is_some_and(|max| max > t))
        {
            break;
        }
        events_read += page.len() as u64;
        let hand_out = async {
            let mut parts: Vec<Vec<Queued>> = (0..queues.len())
                .map(|_| Vec::with_capacity(page.len() / queues.len() + 1))
                .collect();
            for recorded in page {
                if last_known_position.is_some_and(|p| recorded.position > p) {
                    continue;
                }
                let wanted = match only {
                    Some(stream) => recorded.stream == stream,
                    None => recorded.stream.starts_with(BOOK_PREFIX),
                };
                if wanted {
                    // Over the books replayed only, as one fold of them would see it: a store
                    // may order recording times within a stream alone (EventStoreDB).
                    let max = recorded_at_max
                        .map_or(recorded.recorded_at, |m| m.max(recorded.recorded_at));
                    recorded_at_max = Some(max);
                    book_events += 1;
                    let shard = shard_of(&recorded.stream, queues.len());
                    parts[shard].push((recorded, max));
                }
            }
            for (queue, part) in queues.iter().zip(parts) {
                if !part.is_empty() && queue.send(part).await.is_err() {
                    return Err(AuditError::Invalid("a folding thread stopped".into()));
                }
            }
            Ok(())
        };
        let (next, handed_out) = tokio::join!(store.read_all(from, FOLD_PAGE_EVENTS), hand_out);
        handed_out?;
        page = next?;
    }
    Ok((events_read, book_events))
}

/// The folding thread of a book: a stable function of its stream name, of the tail alone (a
/// book's stream name ends in its partner's id).
fn shard_of(stream: &str, shards: usize) -> usize {
    let tail = &stream.as_bytes()[stream.len().saturating_sub(16)..];
    let h = tail
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (h % shards as u64) as usize
}

/// One folding thread: decodes the postings of its books' events and folds them, until the
/// reader closes the queue. An error comes with the position of its event.
fn fold_shard(
    mut pages: tokio::sync::mpsc::Receiver<Vec<Queued>>,
    as_of: AsOf,
) -> Result<BalanceFold, (u64, AuditError)> {
    let mut fold = BalanceFold::new(as_of);
    while let Some(page) = pages.blocking_recv() {
        for (recorded, recorded_at_max) in &page {
            let at = |e: AuditError| (recorded.position, e);
            for p in fold_postings_of(recorded).map_err(at)? {
                fold.apply(recorded.position, *recorded_at_max, p.as_ref())
                    .map_err(|e| at(e.into()))?;
            }
        }
    }
    Ok(fold)
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
