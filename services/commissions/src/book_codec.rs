//! How partner book events are stored: from schema version 2 on, `StoredBookEvent`
//! (`proto/partnerledger/commissions/v1/book.proto`) — the ledger transactions in protobuf
//! first, then the rest of the event as its schema-1 JSON, LZ4-compressed from schema version 3
//! on — so a replay of balances reads the postings alone and skips the rest unread
//! ([`postings`]). Schema versions 1 (the whole event as JSON) and 2 (the body uncompressed)
//! are still read. Encoding only: no I/O, no clock.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pl_eventlog::RecordedEvent;
use pl_ledger::{Account, Explanation, Transaction, TransactionKind, Transfer};
use pl_money::{Currency, Money};
use pl_proto::commissions::v1 as pb;
use pl_runtime::aggregate::{decode_json, encode_json};
use prost::Message;
use uuid::Uuid;

use crate::book::BookEvent;

/// The schema version of book events written now.
pub const STORED_SCHEMA_VERSION: u32 = 3;

/// The first schema version stored as `StoredBookEvent` (the ones before are all JSON).
pub const FIRST_BINARY_SCHEMA_VERSION: u32 = 2;

/// The largest body a stored event may declare: a book event's JSON is a few kilobytes, so a
/// larger claim is a damaged record, refused before anything is allocated for it.
pub const MAX_BODY_JSON_BYTES: u32 = 4 * 1024 * 1024;

/// A book event in its stored form.
pub fn encode(event: &BookEvent) -> Result<(String, Bytes), String> {
    let (event_type, transactions, body_json) = parts(event)?;
    let body_json_bytes = u32::try_from(body_json.len())
        .ok()
        .filter(|n| *n <= MAX_BODY_JSON_BYTES)
        .ok_or_else(|| format!("{event_type} body is {} bytes", body_json.len()))?;
    let stored = pb::StoredBookEvent {
        transactions,
        body_json: Bytes::new(),
        body_json_lz4: lz4_flex::block::compress(&body_json).into(),
        body_json_bytes,
    };
    Ok((event_type, Bytes::from(stored.encode_to_vec())))
}

/// A book event in the form schema version 2 stored (the body uncompressed): what logs written
/// before version 3 hold. Kept so that tests and tools can write such logs.
#[doc(hidden)]
pub fn encode_schema_2(event: &BookEvent) -> Result<(String, Bytes), String> {
    let (event_type, transactions, body_json) = parts(event)?;
    let stored = pb::StoredBookEvent {
        transactions,
        body_json,
        ..Default::default()
    };
    Ok((event_type, Bytes::from(stored.encode_to_vec())))
}

/// The event's type, its transactions in stored form, and its JSON body without them.
fn parts(event: &BookEvent) -> Result<(String, Vec<pb::StoredTransaction>, Bytes), String> {
    let mut body = event.clone();
    let transactions = body
        .transactions_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let (event_type, body_json) = encode_json(&body).map_err(|e| e.to_string())?;
    let transactions = transactions
        .iter()
        .map(stored_transaction)
        .collect::<Result<_, _>>()?;
    Ok((event_type, transactions, body_json))
}

/// A stored book event of any schema version, as the service reads it.
pub fn decode(recorded: &RecordedEvent) -> Result<BookEvent, String> {
    let what = || format!("event {} ({})", recorded.id, recorded.event_type);
    match recorded.schema_version {
        0 | 1 => decode_json(
            &recorded.event_type,
            recorded.schema_version,
            recorded.id,
            &recorded.data,
        ),
        version @ FIRST_BINARY_SCHEMA_VERSION..=STORED_SCHEMA_VERSION => {
            // From the shared buffer: the body and ids are slices of it, not copies.
            let stored = pb::StoredBookEvent::decode(recorded.data.clone())
                .map_err(|e| format!("{}: {e}", what()))?;
            let body_json = body_json(version, &stored).map_err(|e| format!("{}: {e}", what()))?;
            let mut event: BookEvent =
                decode_json(&recorded.event_type, 1, recorded.id, &body_json)?;
            let transactions = stored
                .transactions
                .into_iter()
                .map(transaction)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", what()))?;
            match event.transactions_mut() {
                Some(slot) => *slot = transactions,
                None if transactions.is_empty() => {}
                None => {
                    return Err(format!(
                        "{}: transactions on an event that has none",
                        what()
                    ))
                }
            }
            Ok(event)
        }
        newer => Err(format!(
            "{}: schema version {newer} is newer than this version reads",
            what()
        )),
    }
}

/// The JSON body of a stored event of schema version 2 (as stored) or 3 (decompressed, and
/// checked to be exactly the length recorded with it).
fn body_json(version: u32, stored: &pb::StoredBookEvent) -> Result<Bytes, String> {
    if version == FIRST_BINARY_SCHEMA_VERSION {
        if !stored.body_json_lz4.is_empty() || stored.body_json_bytes != 0 {
            return Err("a compressed body in an uncompressed record".into());
        }
        return Ok(stored.body_json.clone());
    }
    if !stored.body_json.is_empty() {
        return Err("an uncompressed body in a compressed record".into());
    }
    let declared = stored.body_json_bytes;
    if declared > MAX_BODY_JSON_BYTES {
        return Err(format!(
            "body declares {declared} bytes, more than {MAX_BODY_JSON_BYTES}"
        ));
    }
    let body = lz4_flex::block::decompress(&stored.body_json_lz4, declared as usize)
        .map_err(|e| format!("body: {e}"))?;
    if body.len() != declared as usize {
        return Err(format!(
            "body is {} bytes, its record says {declared}",
            body.len()
        ));
    }
    Ok(body.into())
}

/// Whether a book event of this schema version is stored as `StoredBookEvent` (and one this
/// version reads).
pub const fn is_binary(schema_version: u32) -> bool {
    schema_version >= FIRST_BINARY_SCHEMA_VERSION && schema_version <= STORED_SCHEMA_VERSION
}

/// What a balance needs of one stored transaction: everything but its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postings {
    pub id: Uuid,
    pub kind: TransactionKind,
    pub occurred_at: DateTime<Utc>,
    pub transfers: Vec<Transfer>,
}

impl Postings {
    pub fn as_ref(&self) -> pl_ledger::PostingsRef<'_> {
        pl_ledger::PostingsRef {
            id: self.id,
            kind: self.kind,
            occurred_at: self.occurred_at,
            transfers: &self.transfers,
        }
    }
}

/// The postings of a stored book event, reading nothing else of it; `None` for an event of
/// schema version 1, which has to be decoded whole (and for a schema newer than this version
/// reads, which [`decode`] refuses by name).
pub fn postings(recorded: &RecordedEvent) -> Result<Option<Vec<Postings>>, String> {
    if !is_binary(recorded.schema_version) {
        return Ok(None);
    }
    // From a plain slice: the few small ids are copied once each, and the folding threads do
    // not contend on the reference count of the page buffer they share.
    let stored = pb::StoredBookPostings::decode(recorded.data.as_ref())
        .map_err(|e| format!("event {} ({}): {e}", recorded.id, recorded.event_type))?;
    stored
        .transactions
        .into_iter()
        .map(|p| {
            Ok(Postings {
                id: uuid("transaction id", &p.id)?,
                kind: transaction_kind(p.kind)?,
                occurred_at: time(p.occurred_at_seconds, p.occurred_at_nanos)?,
                transfers: p
                    .transfers
                    .into_iter()
                    .map(transfer)
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
        .map_err(|e| format!("event {} ({}): {e}", recorded.id, recorded.event_type))
}

/// The event's data as schema-1 JSON, whatever its stored form (for exports).
pub fn data_json(recorded: &RecordedEvent) -> Result<serde_json::Value, String> {
    let event = decode(recorded)?;
    let mut doc = serde_json::to_value(&event).map_err(|e| e.to_string())?;
    Ok(doc
        .get_mut("data")
        .map(serde_json::Value::take)
        .unwrap_or(serde_json::Value::Null))
}

fn stored_transaction(t: &Transaction) -> Result<pb::StoredTransaction, String> {
    let at = t.occurred_at();
    Ok(pb::StoredTransaction {
        id: Bytes::copy_from_slice(t.id().as_bytes()),
        kind: stored_transaction_kind(t.kind())? as i32,
        occurred_at_seconds: at.timestamp(),
        occurred_at_nanos: at.timestamp_subsec_nanos(),
        transfers: t
            .transfers()
            .iter()
            .map(stored_transfer)
            .collect::<Result<_, _>>()?,
        explanation_json: serde_json::to_vec(t.explanation())
            .map_err(|e| e.to_string())?
            .into(),
    })
}

fn stored_transfer(t: &Transfer) -> Result<pb::StoredTransfer, String> {
    Ok(pb::StoredTransfer {
        debit: Some(stored_account(&t.debit)),
        credit: Some(stored_account(&t.credit)),
        amount_minor_units: t.amount.to_minor_units().map_err(|e| e.to_string())?,
        currency: t.amount.currency().code().to_owned(),
    })
}

fn stored_account(a: &Account) -> pb::StoredAccount {
    use pb::StoredAccountKind as K;
    let (kind, owner) = match *a {
        Account::PartnerPending { partner_id, .. } => (K::PartnerPending, Some(partner_id)),
        Account::PartnerPayable { partner_id, .. } => (K::PartnerPayable, Some(partner_id)),
        Account::PartnerPaid { partner_id, .. } => (K::PartnerPaid, Some(partner_id)),
        Account::CommissionExpense { program_id, .. } => (K::CommissionExpense, Some(program_id)),
        Account::PayoutsClearing { program_id, .. } => (K::PayoutsClearing, Some(program_id)),
        Account::MdfBudget { program_id, .. } => (K::MdfBudget, Some(program_id)),
        Account::FxConversion { .. } => (K::FxConversion, None),
    };
    pb::StoredAccount {
        kind: kind as i32,
        owner_id: owner
            .map(|o| Bytes::copy_from_slice(o.as_bytes()))
            .unwrap_or_default(),
        currency: a.currency().code().to_owned(),
    }
}

fn stored_transaction_kind(kind: TransactionKind) -> Result<pb::StoredTransactionKind, String> {
    use pb::StoredTransactionKind as K;
    Ok(match kind {
        TransactionKind::Accrual => K::Accrual,
        TransactionKind::Maturity => K::Maturity,
        TransactionKind::Reversal => K::Reversal,
        TransactionKind::Clawback => K::Clawback,
        TransactionKind::PayoutCreated => K::PayoutCreated,
        TransactionKind::PayoutSettled => K::PayoutSettled,
        TransactionKind::PayoutFailed => K::PayoutFailed,
        TransactionKind::MdfReimbursement => K::MdfReimbursement,
        TransactionKind::CampaignFee => K::CampaignFee,
        TransactionKind::Conversion => K::Conversion,
        TransactionKind::Adjustment => K::Adjustment,
        other => return Err(format!("transaction kind {other} has no stored form")),
    })
}

fn transaction_kind(kind: i32) -> Result<TransactionKind, String> {
    use pb::StoredTransactionKind as K;
    Ok(match K::try_from(kind) {
        Ok(K::Accrual) => TransactionKind::Accrual,
        Ok(K::Maturity) => TransactionKind::Maturity,
        Ok(K::Reversal) => TransactionKind::Reversal,
        Ok(K::Clawback) => TransactionKind::Clawback,
        Ok(K::PayoutCreated) => TransactionKind::PayoutCreated,
        Ok(K::PayoutSettled) => TransactionKind::PayoutSettled,
        Ok(K::PayoutFailed) => TransactionKind::PayoutFailed,
        Ok(K::MdfReimbursement) => TransactionKind::MdfReimbursement,
        Ok(K::CampaignFee) => TransactionKind::CampaignFee,
        Ok(K::Conversion) => TransactionKind::Conversion,
        Ok(K::Adjustment) => TransactionKind::Adjustment,
        Ok(K::Unspecified) | Err(_) => return Err(format!("unknown transaction kind {kind}")),
    })
}

fn transaction(t: pb::StoredTransaction) -> Result<Transaction, String> {
    let explanation: Explanation =
        serde_json::from_slice(&t.explanation_json).map_err(|e| format!("explanation: {e}"))?;
    Transaction::new(
        uuid("transaction id", &t.id)?,
        transaction_kind(t.kind)?,
        time(t.occurred_at_seconds, t.occurred_at_nanos)?,
        t.transfers
            .into_iter()
            .map(transfer)
            .collect::<Result<_, _>>()?,
        explanation,
    )
    .map_err(|e| e.to_string())
}

fn transfer(t: pb::StoredTransfer) -> Result<Transfer, String> {
    let currency = currency(&t.currency)?;
    Ok(Transfer {
        debit: account(t.debit.as_ref(), (&t.currency, currency))?,
        credit: account(t.credit.as_ref(), (&t.currency, currency))?,
        amount: Money::from_minor_units(t.amount_minor_units, currency),
    })
}

/// `known` is the transfer's currency, code and value: an account almost always holds the
/// transfer's currency, and parsing the same code three times was a tenth of a replay.
fn account(a: Option<&pb::StoredAccount>, known: (&str, Currency)) -> Result<Account, String> {
    use pb::StoredAccountKind as K;
    let a = a.ok_or("a transfer without its account")?;
    let currency = if a.currency == known.0 {
        known.1
    } else {
        currency(&a.currency)?
    };
    let owner = || uuid("account owner", &a.owner_id);
    Ok(match K::try_from(a.kind) {
        Ok(K::PartnerPending) => Account::PartnerPending {
            partner_id: owner()?,
            currency,
        },
        Ok(K::PartnerPayable) => Account::PartnerPayable {
            partner_id: owner()?,
            currency,
        },
        Ok(K::PartnerPaid) => Account::PartnerPaid {
            partner_id: owner()?,
            currency,
        },
        Ok(K::CommissionExpense) => Account::CommissionExpense {
            program_id: owner()?,
            currency,
        },
        Ok(K::PayoutsClearing) => Account::PayoutsClearing {
            program_id: owner()?,
            currency,
        },
        Ok(K::MdfBudget) => Account::MdfBudget {
            program_id: owner()?,
            currency,
        },
        Ok(K::FxConversion) if a.owner_id.is_empty() => Account::FxConversion { currency },
        Ok(K::FxConversion) => return Err("an fx account with an owner".into()),
        Ok(K::Unspecified) | Err(_) => return Err(format!("unknown account kind {}", a.kind)),
    })
}

fn currency(code: &str) -> Result<Currency, String> {
    code.parse()
        .map_err(|_| format!("unknown currency {code:?}"))
}

fn uuid(field: &str, bytes: &[u8]) -> Result<Uuid, String> {
    Uuid::from_slice(bytes).map_err(|_| format!("{field} is {} bytes, not 16", bytes.len()))
}

fn time(seconds: i64, nanos: u32) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp(seconds, nanos)
        .ok_or_else(|| format!("time {seconds}.{nanos:09} is out of range"))
}
