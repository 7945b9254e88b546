//! How partner book events are stored. Schema version 4 (written now) is `StoredBookEventV3`
//! (`proto/partnerledger/commissions/v1/book.proto`): the ledger transactions' postings first,
//! in fixed-width protobuf fields, then the rest of the event (its body and the transactions'
//! explanations, in MessagePack) LZ4-compressed — so a replay of balances reads the postings
//! alone, without allocating or parsing text, and skips the rest unread ([`postings`]).
//! Older logs hold, and this still reads: schema 1 (the whole event as JSON), 2
//! (`StoredBookEvent`: postings with their explanations, body uncompressed) and 3 (schema 4's
//! form with the body and explanations in JSON, `StoredBookBody`). Encoding only: no I/O, no
//! clock.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use pl_eventlog::RecordedEvent;
use pl_ledger::{
    Account, Explanation, RecordedTransaction, Transaction, TransactionKind, Transfer,
};
use pl_money::{Currency, Money};
use pl_proto::commissions::v1 as pb;
use pl_runtime::aggregate::{decode_json, encode_json};
use prost::Message;
use uuid::Uuid;

use crate::book::BookEvent;

/// The schema version of book events written now.
pub const STORED_SCHEMA_VERSION: u32 = 4;

/// The schema version whose body and explanations were JSON (in `StoredBookBody`).
pub const JSON_BODY_SCHEMA_VERSION: u32 = 3;

/// The first schema version stored in protobuf (the ones before are all JSON).
pub const FIRST_BINARY_SCHEMA_VERSION: u32 = 2;

/// The largest body a stored event may declare: the log's limit on one event (the JSON and the
/// explanations were stored uncompressed in one event before schema 3; a book event's are a few
/// kilobytes), so a larger claim is a damaged record, refused before anything is allocated.
pub const MAX_BODY_BYTES: u32 = 1024 * 1024;

/// How deeply a schema-4 body may nest (serde_json's own limit was 128).
const MAX_BODY_DEPTH: usize = 64;

/// A book event in its stored form (schema version [`STORED_SCHEMA_VERSION`]). The body is
/// MessagePack with named fields and human-readable values (decimals, ids and times as the
/// same strings JSON holds), so it carries exactly what the schema-1 JSON carries and reads
/// back through the same serde definitions; what it saves is JSON's escaping and quoting,
/// which was a tenth of an accrual's CPU.
pub fn encode(event: &BookEvent) -> Result<(String, Bytes), String> {
    let mut body_event = event.clone();
    let transactions = body_event
        .transactions_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let event_type = body_event.event_type().to_owned();
    let explanations: Vec<&Explanation> = transactions.iter().map(|t| t.explanation()).collect();
    let mut body = Vec::with_capacity(1024);
    serde::Serialize::serialize(
        &(&body_event, &explanations),
        &mut rmp_serde::Serializer::new(&mut body)
            .with_struct_map()
            .with_human_readable(),
    )
    .map_err(|e| format!("{event_type} body: {e}"))?;
    envelope(event_type, &transactions, &body)
}

/// The postings, then the body compressed: the stored form of schemas 3 and 4.
fn envelope(
    event_type: String,
    transactions: &[Transaction],
    body: &[u8],
) -> Result<(String, Bytes), String> {
    let body_bytes = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_BODY_BYTES)
        .ok_or_else(|| format!("{event_type} body is {} bytes", body.len()))?;
    let stored = pb::StoredBookEventV3 {
        transactions: transactions
            .iter()
            .map(stored_postings)
            .collect::<Result<_, _>>()?,
        body_lz4: lz4_flex::block::compress(body).into(),
        body_bytes,
    };
    Ok((event_type, Bytes::from(stored.encode_to_vec())))
}

/// A book event in the form schema version 3 stored (body and explanations in JSON): what
/// logs written before version 4 hold. Kept so that tests and tools can write such logs.
#[doc(hidden)]
pub fn encode_schema_3(event: &BookEvent) -> Result<(String, Bytes), String> {
    let (event_type, transactions, body_json) = split(event)?;
    let body = pb::StoredBookBody {
        body_json,
        explanation_json: transactions
            .iter()
            .map(|t| {
                serde_json::to_vec(t.explanation())
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?,
    }
    .encode_to_vec();
    envelope(event_type, &transactions, &body)
}

/// A book event in the form schema version 2 stored: what logs written before version 3 hold.
/// Kept so that tests and tools can write such logs.
#[doc(hidden)]
pub fn encode_schema_2(event: &BookEvent) -> Result<(String, Bytes), String> {
    let (event_type, transactions, body_json) = split(event)?;
    let stored = pb::StoredBookEvent {
        transactions: transactions
            .iter()
            .map(stored_transaction)
            .collect::<Result<_, _>>()?,
        body_json,
    };
    Ok((event_type, Bytes::from(stored.encode_to_vec())))
}

/// The event's type, its transactions, and its JSON body without them.
fn split(event: &BookEvent) -> Result<(String, Vec<Transaction>, Bytes), String> {
    let mut body = event.clone();
    let transactions = body
        .transactions_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let (event_type, body_json) = encode_json(&body).map_err(|e| e.to_string())?;
    Ok((event_type, transactions, body_json))
}

/// A stored book event of any schema version, as the service reads it.
pub fn decode(recorded: &RecordedEvent) -> Result<BookEvent, String> {
    let what = || format!("event {} ({})", recorded.id, recorded.event_type);
    let (body_json, transactions) = match recorded.schema_version {
        0 | 1 => {
            return decode_json(
                &recorded.event_type,
                recorded.schema_version,
                recorded.id,
                &recorded.data,
            )
        }
        FIRST_BINARY_SCHEMA_VERSION => decode_schema_2(&recorded.data),
        JSON_BODY_SCHEMA_VERSION => decode_schema_3(&recorded.data),
        STORED_SCHEMA_VERSION => {
            return decode_schema_4(&recorded.event_type, &recorded.data)
                .map_err(|e| format!("{}: {e}", what()))
        }
        newer => {
            return Err(format!(
                "{}: schema version {newer} is newer than this version reads",
                what()
            ))
        }
    }
    .map_err(|e| format!("{}: {e}", what()))?;
    let event: BookEvent = decode_json(&recorded.event_type, 1, recorded.id, &body_json)?;
    with_transactions(event, transactions).map_err(|e| format!("{}: {e}", what()))
}

/// The event with its transactions put back (the stored body holds it without them).
fn with_transactions(
    mut event: BookEvent,
    transactions: Vec<Transaction>,
) -> Result<BookEvent, String> {
    match event.transactions_mut() {
        Some(slot) => *slot = transactions,
        None if transactions.is_empty() => {}
        None => return Err("transactions on an event that has none".into()),
    }
    Ok(event)
}

/// A schema-4 record: the body and explanations read from MessagePack, the transactions
/// rebuilt from their postings and explanations. The body must be of the record's type. Book
/// events have no upcasts (`BookEvent::needs_upcast` is never true): a change of their shape
/// is a new schema version here, read by its own arm of [`decode`].
fn decode_schema_4(event_type: &str, data: &Bytes) -> Result<BookEvent, String> {
    let (postings, body) = postings_and_body(data)?;
    // Read through a slice that advances, so that what is left after the document is seen
    // (JSON refused trailing bytes; MessagePack stops at the end of its value).
    let mut rest: &[u8] = &body;
    let mut de = rmp_serde::Deserializer::new(&mut rest).with_human_readable();
    // A real body nests about a dozen levels; the default (1024) could exhaust a thread's
    // stack on a crafted one before refusing it.
    de.set_max_depth(MAX_BODY_DEPTH);
    let (event, explanations): (BookEvent, Vec<Explanation>) =
        serde::Deserialize::deserialize(&mut de).map_err(|e| format!("body: {e}"))?;
    drop(de);
    if !rest.is_empty() {
        return Err(format!("body has {} bytes after its end", rest.len()));
    }
    if event.event_type() != event_type {
        return Err(format!("body is a {}", event.event_type()));
    }
    if explanations.len() != postings.len() {
        return Err(format!(
            "{} explanations for {} transactions",
            explanations.len(),
            postings.len()
        ));
    }
    let transactions = postings
        .into_iter()
        .zip(explanations)
        .map(|(p, explanation)| {
            let p = postings_of_schema_3(p)?;
            Transaction::new(p.id, p.kind, p.occurred_at, p.transfers, explanation)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    with_transactions(event, transactions)
}

/// The postings of a schema-3 or schema-4 record and its body decompressed (checked to be
/// exactly the length recorded with it).
fn postings_and_body(data: &Bytes) -> Result<(Vec<pb::StoredPostingsV3>, Vec<u8>), String> {
    let stored = pb::StoredBookEventV3::decode(data.clone()).map_err(|e| e.to_string())?;
    let declared = stored.body_bytes;
    if declared > MAX_BODY_BYTES {
        return Err(format!(
            "body declares {declared} bytes, more than {MAX_BODY_BYTES}"
        ));
    }
    let body = lz4_flex::block::decompress(&stored.body_lz4, declared as usize)
        .map_err(|e| format!("body: {e}"))?;
    if body.len() != declared as usize {
        return Err(format!(
            "body is {} bytes, its record says {declared}",
            body.len()
        ));
    }
    Ok((stored.transactions, body))
}

/// A schema-2 record's JSON body and transactions.
fn decode_schema_2(data: &Bytes) -> Result<(Bytes, Vec<Transaction>), String> {
    // From the shared buffer: the body and ids are slices of it, not copies.
    let stored = pb::StoredBookEvent::decode(data.clone()).map_err(|e| e.to_string())?;
    let transactions = stored
        .transactions
        .into_iter()
        .map(transaction)
        .collect::<Result<_, _>>()?;
    Ok((stored.body_json, transactions))
}

/// A schema-3 record's JSON body and transactions: the body decompressed (checked to be
/// exactly the length recorded with it), each transaction's postings joined with its
/// explanation.
fn decode_schema_3(data: &Bytes) -> Result<(Bytes, Vec<Transaction>), String> {
    let (postings, body) = postings_and_body(data)?;
    let body = pb::StoredBookBody::decode(Bytes::from(body)).map_err(|e| format!("body: {e}"))?;
    if body.explanation_json.len() != postings.len() {
        return Err(format!(
            "{} explanations for {} transactions",
            body.explanation_json.len(),
            postings.len()
        ));
    }
    let transactions = postings
        .into_iter()
        .zip(&body.explanation_json)
        .map(|(p, explanation)| {
            let p = postings_of_schema_3(p)?;
            let explanation: Explanation =
                serde_json::from_slice(explanation).map_err(|e| format!("explanation: {e}"))?;
            Transaction::new(p.id, p.kind, p.occurred_at, p.transfers, explanation)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok((body.body_json, transactions))
}

/// A stored book event's ledger transactions, decoded whole (explanations included), each at
/// the event's log position and recording time: what a `Ledger` applies. Moved out of the
/// decoded event, not copied.
pub fn recorded_transactions(recorded: &RecordedEvent) -> Result<Vec<RecordedTransaction>, String> {
    let mut event = decode(recorded)?;
    let transactions = event
        .transactions_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    Ok(transactions
        .into_iter()
        .map(|transaction| RecordedTransaction {
            transaction,
            position: recorded.position,
            recorded_at: recorded.recorded_at,
        })
        .collect())
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
    // From a plain slice: the folding threads of a replay do not contend on the reference
    // count of the page buffer they share.
    let data = recorded.data.as_ref();
    let postings = match recorded.schema_version {
        FIRST_BINARY_SCHEMA_VERSION => pb::StoredBookPostings::decode(data)
            .map_err(|e| e.to_string())
            .and_then(|stored| {
                stored
                    .transactions
                    .into_iter()
                    .map(postings_of_schema_2)
                    .collect()
            }),
        JSON_BODY_SCHEMA_VERSION | STORED_SCHEMA_VERSION => pb::StoredBookPostingsV3::decode(data)
            .map_err(|e| e.to_string())
            .and_then(|stored| {
                stored
                    .transactions
                    .into_iter()
                    .map(postings_of_schema_3)
                    .collect()
            }),
        _ => return Ok(None),
    };
    postings
        .map(Some)
        .map_err(|e| format!("event {} ({}): {e}", recorded.id, recorded.event_type))
}

/// The postings of a stored book event of any schema version this version reads: alone from
/// schema 2 on, from the whole decoded event before that. What a balance needs.
pub fn postings_of_any(recorded: &RecordedEvent) -> Result<Vec<Postings>, String> {
    if let Some(postings) = postings(recorded)? {
        return Ok(postings);
    }
    // Schema 1 (JSON), or newer than this version reads (refused by name here).
    Ok(decode(recorded)?
        .transactions()
        .iter()
        .map(|t| Postings {
            id: t.id(),
            kind: t.kind(),
            occurred_at: t.occurred_at(),
            transfers: t.transfers().to_vec(),
        })
        .collect())
}

fn postings_of_schema_2(p: pb::StoredPostings) -> Result<Postings, String> {
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
}

fn postings_of_schema_3(p: pb::StoredPostingsV3) -> Result<Postings, String> {
    Ok(Postings {
        id: Uuid::from_u64_pair(p.id_high, p.id_low),
        kind: transaction_kind(p.kind)?,
        occurred_at: time(p.occurred_at_seconds, p.occurred_at_nanos)?,
        transfers: p
            .transfers
            .iter()
            .map(transfer_of_schema_3)
            .collect::<Result<_, _>>()?,
    })
}

fn transfer_of_schema_3(t: &pb::StoredTransferV3) -> Result<Transfer, String> {
    let currency = u16::try_from(t.currency_numeric)
        .ok()
        .and_then(Currency::from_numeric)
        .ok_or_else(|| format!("unknown currency numeric code {}", t.currency_numeric))?;
    // An FX account has no owner, stored as 0/0; any other account's owner is as stored (the
    // nil id included: a program may be nil).
    let owner = |kind: i32, high, low| {
        let id = Uuid::from_u64_pair(high, low);
        let fx = kind == pb::StoredAccountKind::FxConversion as i32;
        (!(fx && id.is_nil())).then_some(id)
    };
    Ok(Transfer {
        debit: account_of(
            t.debit_kind,
            owner(t.debit_kind, t.debit_owner_high, t.debit_owner_low),
            currency,
        )?,
        credit: account_of(
            t.credit_kind,
            owner(t.credit_kind, t.credit_owner_high, t.credit_owner_low),
            currency,
        )?,
        amount: Money::from_minor_units(t.amount_minor_units, currency),
    })
}

fn stored_postings(t: &Transaction) -> Result<pb::StoredPostingsV3, String> {
    let at = t.occurred_at();
    let (id_high, id_low) = t.id().as_u64_pair();
    Ok(pb::StoredPostingsV3 {
        id_high,
        id_low,
        kind: stored_transaction_kind(t.kind())? as i32,
        occurred_at_seconds: at.timestamp(),
        occurred_at_nanos: at.timestamp_subsec_nanos(),
        transfers: t
            .transfers()
            .iter()
            .map(stored_transfer_of_schema_3)
            .collect::<Result<_, _>>()?,
    })
}

fn stored_transfer_of_schema_3(t: &Transfer) -> Result<pb::StoredTransferV3, String> {
    let currency = t.amount.currency();
    // This form records one currency per transfer: the ledger refuses a transaction whose
    // accounts do not hold its transfers' currencies before it is written, and so does this.
    if t.debit.currency() != currency || t.credit.currency() != currency {
        return Err(format!(
            "a transfer of {currency} between accounts of {} and {}",
            t.debit.currency(),
            t.credit.currency()
        ));
    }
    let (debit_kind, debit_owner) = account_kind(&t.debit);
    let (credit_kind, credit_owner) = account_kind(&t.credit);
    let (debit_owner_high, debit_owner_low) = debit_owner.unwrap_or_default().as_u64_pair();
    let (credit_owner_high, credit_owner_low) = credit_owner.unwrap_or_default().as_u64_pair();
    Ok(pb::StoredTransferV3 {
        debit_kind: debit_kind as i32,
        debit_owner_high,
        debit_owner_low,
        credit_kind: credit_kind as i32,
        credit_owner_high,
        credit_owner_low,
        amount_minor_units: t.amount.to_minor_units().map_err(|e| e.to_string())?,
        currency_numeric: u32::from(currency.numeric()),
    })
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
    let (kind, owner) = account_kind(a);
    pb::StoredAccount {
        kind: kind as i32,
        owner_id: owner
            .map(|o| Bytes::copy_from_slice(o.as_bytes()))
            .unwrap_or_default(),
        currency: a.currency().code().to_owned(),
    }
}

/// An account's stored kind and its owner (its partner or program; none for FX).
fn account_kind(a: &Account) -> (pb::StoredAccountKind, Option<Uuid>) {
    use pb::StoredAccountKind as K;
    match *a {
        Account::PartnerPending { partner_id, .. } => (K::PartnerPending, Some(partner_id)),
        Account::PartnerPayable { partner_id, .. } => (K::PartnerPayable, Some(partner_id)),
        Account::PartnerPaid { partner_id, .. } => (K::PartnerPaid, Some(partner_id)),
        Account::CommissionExpense { program_id, .. } => (K::CommissionExpense, Some(program_id)),
        Account::PayoutsClearing { program_id, .. } => (K::PayoutsClearing, Some(program_id)),
        Account::MdfBudget { program_id, .. } => (K::MdfBudget, Some(program_id)),
        Account::FxConversion { .. } => (K::FxConversion, None),
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
    let a = a.ok_or("a transfer without its account")?;
    let currency = if a.currency == known.0 {
        known.1
    } else {
        currency(&a.currency)?
    };
    let owner = if a.owner_id.is_empty() {
        None
    } else {
        Some(uuid("account owner", &a.owner_id)?)
    };
    account_of(a.kind, owner, currency)
}

/// The account of a stored kind, owner and currency: partner and program accounts have an
/// owner, FX accounts none.
fn account_of(kind: i32, owner: Option<Uuid>, currency: Currency) -> Result<Account, String> {
    use pb::StoredAccountKind as K;
    let stored = K::try_from(kind).map_err(|_| format!("unknown account kind {kind}"))?;
    let owned = || owner.ok_or_else(|| format!("a {stored:?} account without its owner"));
    Ok(match stored {
        K::PartnerPending => Account::PartnerPending {
            partner_id: owned()?,
            currency,
        },
        K::PartnerPayable => Account::PartnerPayable {
            partner_id: owned()?,
            currency,
        },
        K::PartnerPaid => Account::PartnerPaid {
            partner_id: owned()?,
            currency,
        },
        K::CommissionExpense => Account::CommissionExpense {
            program_id: owned()?,
            currency,
        },
        K::PayoutsClearing => Account::PayoutsClearing {
            program_id: owned()?,
            currency,
        },
        K::MdfBudget => Account::MdfBudget {
            program_id: owned()?,
            currency,
        },
        K::FxConversion if owner.is_none() => Account::FxConversion { currency },
        K::FxConversion => return Err("an fx account with an owner".into()),
        K::Unspecified => return Err(format!("unknown account kind {kind}")),
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
