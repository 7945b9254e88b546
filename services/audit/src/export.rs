//! Exports for auditors and finance: ledger transactions (one row per transfer) and raw events,
//! as JSONL or CSV, for a business period `[from, to)`. Column names are stable (listed in
//! [`TRANSFER_COLUMNS`] and [`EVENT_COLUMNS`]); amounts are decimal strings with a separate
//! currency code; times are RFC 3339 UTC.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use pl_eventlog::{EventStore, RecordedEvent};
use serde::Serialize;

use crate::replay::{transactions_of, BOOK_PREFIX};
use crate::{AuditError, PAGE_EVENTS};

pub const TRANSFER_COLUMNS: &[&str] = &[
    "position",
    "recorded_at",
    "occurred_at",
    "transaction_id",
    "kind",
    "debit_account",
    "credit_account",
    "amount",
    "currency",
    "source_event_id",
    "conversion_id",
    "plan_id",
    "plan_version",
    "rule_id",
    "explanation",
];

pub const EVENT_COLUMNS: &[&str] = &[
    "position",
    "stream",
    "version",
    "event_id",
    "event_type",
    "schema_version",
    "occurred_at",
    "recorded_at",
    "hash",
    "data",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// Ledger transactions, one row per transfer.
    Transactions,
    /// Every event of the log.
    Events,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Debug, Serialize)]
struct TransferRow {
    position: u64,
    recorded_at: String,
    occurred_at: String,
    transaction_id: String,
    kind: &'static str,
    debit_account: String,
    credit_account: String,
    amount: String,
    currency: &'static str,
    source_event_id: String,
    conversion_id: String,
    plan_id: String,
    plan_version: String,
    rule_id: String,
    explanation: String,
}

impl TransferRow {
    fn cells(&self) -> [String; 15] {
        [
            self.position.to_string(),
            self.recorded_at.clone(),
            self.occurred_at.clone(),
            self.transaction_id.clone(),
            self.kind.to_owned(),
            self.debit_account.clone(),
            self.credit_account.clone(),
            self.amount.clone(),
            self.currency.to_owned(),
            self.source_event_id.clone(),
            self.conversion_id.clone(),
            self.plan_id.clone(),
            self.plan_version.clone(),
            self.rule_id.clone(),
            self.explanation.clone(),
        ]
    }
}

#[derive(Debug, Serialize)]
struct EventRow {
    position: u64,
    stream: String,
    version: u64,
    event_id: String,
    event_type: String,
    schema_version: u32,
    occurred_at: String,
    recorded_at: String,
    hash: String,
    data: serde_json::Value,
}

/// RFC 4180 quoting: fields with a comma, quote or line break are quoted, quotes doubled.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(out: &mut (dyn Write + Send), cells: &[String]) -> Result<(), AuditError> {
    let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
    writeln!(out, "{}", line.join(","))?;
    Ok(())
}

/// Writes the export of `[from, to)` (business time) to `out`; returns the rows written.
pub async fn export(
    store: &dyn EventStore,
    what: What,
    format: Format,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    out: &mut (dyn Write + Send),
) -> Result<u64, AuditError> {
    if to <= from {
        return Err(AuditError::Invalid(
            "the period ends before it starts".into(),
        ));
    }
    if format == Format::Csv {
        let header: Vec<String> = match what {
            What::Transactions => TRANSFER_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            What::Events => EVENT_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        };
        csv_line(out, &header)?;
    }
    let mut rows = 0u64;
    let mut position = 0;
    loop {
        let page = store.read_all(position, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        position = last.position + 1;
        for e in &page {
            match what {
                What::Events => {
                    let at = e.metadata.occurred_at;
                    if at < from || at >= to {
                        continue;
                    }
                    let data = event_data(e)?;
                    let row = EventRow {
                        position: e.position,
                        stream: e.stream.clone(),
                        version: e.version,
                        event_id: e.id.to_string(),
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        occurred_at: time(at),
                        recorded_at: time(e.recorded_at),
                        hash: e.hash.to_hex(),
                        data,
                    };
                    write_row(out, format, &row, || {
                        [
                            row.position.to_string(),
                            row.stream.clone(),
                            row.version.to_string(),
                            row.event_id.clone(),
                            row.event_type.clone(),
                            row.schema_version.to_string(),
                            row.occurred_at.clone(),
                            row.recorded_at.clone(),
                            row.hash.clone(),
                            row.data.to_string(),
                        ]
                        .to_vec()
                    })?;
                    rows += 1;
                }
                What::Transactions => {
                    if !e.stream.starts_with(BOOK_PREFIX) {
                        continue;
                    }
                    for rt in transactions_of(e)? {
                        let t = &rt.transaction;
                        if t.occurred_at() < from || t.occurred_at() >= to {
                            continue;
                        }
                        let why = t.explanation();
                        for transfer in t.transfers() {
                            let row = TransferRow {
                                position: rt.position,
                                recorded_at: time(rt.recorded_at),
                                occurred_at: time(t.occurred_at()),
                                transaction_id: t.id().to_string(),
                                kind: t.kind().as_str(),
                                debit_account: transfer.debit.to_string(),
                                credit_account: transfer.credit.to_string(),
                                amount: transfer.amount.amount().to_string(),
                                currency: transfer.amount.currency().code(),
                                source_event_id: why.source_event_id.to_string(),
                                conversion_id: why
                                    .conversion_id
                                    .map(|c| c.to_string())
                                    .unwrap_or_default(),
                                plan_id: why
                                    .plan
                                    .as_ref()
                                    .map(|p| p.plan_id.to_string())
                                    .unwrap_or_default(),
                                plan_version: why
                                    .plan
                                    .as_ref()
                                    .map(|p| p.plan_version.to_string())
                                    .unwrap_or_default(),
                                rule_id: why
                                    .plan
                                    .as_ref()
                                    .map(|p| p.rule_id.clone())
                                    .unwrap_or_default(),
                                explanation: why.line.clone(),
                            };
                            write_row(out, format, &row, || row.cells().to_vec())?;
                            rows += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(rows)
}

fn write_row<T: Serialize>(
    out: &mut (dyn Write + Send),
    format: Format,
    row: &T,
    cells: impl FnOnce() -> Vec<String>,
) -> Result<(), AuditError> {
    match format {
        Format::Jsonl => {
            serde_json::to_writer(&mut *out, row)
                .map_err(|e| AuditError::Invalid(format!("json: {e}")))?;
            writeln!(out)?;
        }
        Format::Csv => csv_line(out, &cells())?,
    }
    Ok(())
}

/// An event's data as JSON: partner book events are stored in binary from schema version 2 on
/// (`pl_commissions::book_codec`), so they are exported in their JSON form; every other event is
/// JSON as stored.
fn event_data(e: &RecordedEvent) -> Result<serde_json::Value, AuditError> {
    let decode_error = |reason: String| AuditError::Decode {
        stream: e.stream.clone(),
        position: e.position,
        reason,
    };
    if e.stream.starts_with(BOOK_PREFIX)
        && e.schema_version >= pl_commissions::book_codec::FIRST_BINARY_SCHEMA_VERSION
    {
        return pl_commissions::book_codec::data_json(e).map_err(decode_error);
    }
    serde_json::from_slice(&e.data).map_err(|err| decode_error(err.to_string()))
}
