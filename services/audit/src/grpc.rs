//! `AuditService` over gRPC: the audit commands for callers that cannot reach the data
//! directory. Read-only; every request is validated precisely (InvalidArgument, nothing read).

use std::pin::Pin;

use futures::Stream;
use pl_eventlog::SharedStore;
use pl_ledger::{AsOf, RecordingPoint};
use pl_money::Currency;
use pl_proto::audit::v1 as pb;
use pl_proto::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use pl_runtime::request::{parse_uuid, to_datetime, Violations};
use pl_runtime::{ApiError, FieldViolation};
use tonic::{Request, Response, Status};

use crate::{export, replay, seal, statement, AuditError};

pub const SERVICE_NAME: &str = "partnerledger.audit.v1.AuditService";

/// Largest export served in one call; a longer period must be split (the CLI has no limit).
pub const MAX_EXPORT_BYTES: usize = 256 * 1024 * 1024;
/// Bytes per streamed chunk (whole lines).
const CHUNK_BYTES: usize = 64 * 1024;
/// Rows per streamed replay message batch (bounded channel).
const STREAM_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub struct AuditApi {
    store: SharedStore,
}

impl AuditApi {
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> AuditServiceServer<Self> {
        AuditServiceServer::new(self)
    }
}

fn to_status(e: AuditError) -> Status {
    let api = match e {
        AuditError::Log(e) => ApiError::from(e),
        AuditError::Invalid(reason) | AuditError::Key(reason) => {
            ApiError::invalid("request", reason)
        }
        AuditError::Report(e) => ApiError::invalid("period", e.to_string()),
        other => ApiError::internal(other),
    };
    api.into()
}

/// The as-of point of a request: business date and/or one recording point.
pub fn as_of_from(
    v: &mut Violations,
    business: Option<&prost_types_ts::Timestamp>,
    recorded_position: u64,
    recorded_at: Option<&prost_types_ts::Timestamp>,
) -> AsOf {
    let business = business.and_then(|t| v.check(to_datetime("business_date", t)));
    let recorded = match (recorded_at, recorded_position) {
        (Some(_), p) if p > 0 => {
            v.add(
                "recorded_at",
                "give recorded_position or recorded_at, not both",
            );
            None
        }
        (Some(t), _) => v
            .check(to_datetime("recorded_at", t))
            .map(RecordingPoint::At),
        (None, 0) => None,
        (None, p) => Some(RecordingPoint::Position(p)),
    };
    AsOf::from_parts(business, recorded)
}

use pl_proto::prost_types as prost_types_ts;

type RowStream = Pin<Box<dyn Stream<Item = Result<pb::BalanceRow, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

fn period(
    v: &mut Violations,
    from: Option<&prost_types_ts::Timestamp>,
    to: Option<&prost_types_ts::Timestamp>,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let from = match from {
        Some(t) => v.check(to_datetime("from", t)),
        None => v.check(Err(FieldViolation::new("from", "required"))),
    };
    let to = match to {
        Some(t) => v.check(to_datetime("to", t)),
        None => v.check(Err(FieldViolation::new("to", "required"))),
    };
    match (from, to) {
        (Some(f), Some(t)) if t <= f => {
            v.add("to", "must be after from");
            None
        }
        (Some(f), Some(t)) => Some((f, t)),
        _ => None,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ReplayStream = RowStream;
    type ExportStream = ChunkStream;

    #[tracing::instrument(skip_all)]
    async fn replay(
        &self,
        request: Request<pb::ReplayRequest>,
    ) -> Result<Response<RowStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner = if req.partner_id.is_empty() {
            Some(None)
        } else {
            v.check(parse_uuid("partner_id", &req.partner_id)).map(Some)
        };
        let as_of = as_of_from(
            &mut v,
            req.business_date.as_ref(),
            req.recorded_position,
            req.recorded_at.as_ref(),
        );
        v.finish()?;
        let Some(partner) = partner else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let rows = replay::replay_balances(self.store.as_ref(), partner, as_of)
            .await
            .map_err(to_status)?
            .rows;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_DEPTH);
        tokio::spawn(async move {
            for r in rows {
                let row = pb::BalanceRow {
                    partner_id: r.partner_id.to_string(),
                    currency: r.currency.code().to_owned(),
                    pending: r.pending,
                    payable: r.payable,
                    paid: r.paid,
                };
                if tx.send(Ok(row)).await.is_err() {
                    return; // the caller went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let req = request.into_inner();
        let key = if req.public_key.trim().is_empty() {
            None
        } else {
            Some(
                seal::verifying_key_from(&req.public_key)
                    .map_err(|e| Status::from(ApiError::invalid("public_key", e.to_string())))?,
            )
        };
        let out = seal::verify(self.store.as_ref(), key.as_ref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::VerifyResponse {
            intact: out.is_intact(),
            events_checked: out.events_checked,
            streams_checked: out.streams_checked,
            seals_checked: out.seals_checked,
            signatures_checked: out.signatures_checked,
            first_break: out.first_break.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let what = match pb::ExportKind::try_from(req.kind) {
            Ok(pb::ExportKind::Transactions) => Some(export::What::Transactions),
            Ok(pb::ExportKind::Events) => Some(export::What::Events),
            _ => v.check(Err(FieldViolation::new("kind", "TRANSACTIONS or EVENTS"))),
        };
        let format = match pb::ExportFormat::try_from(req.format) {
            Ok(pb::ExportFormat::Jsonl) => Some(export::Format::Jsonl),
            Ok(pb::ExportFormat::Csv) => Some(export::Format::Csv),
            _ => v.check(Err(FieldViolation::new("format", "JSONL or CSV"))),
        };
        let period = period(&mut v, req.from.as_ref(), req.to.as_ref());
        v.finish()?;
        let (Some(what), Some(format), Some((from, to))) = (what, format, period) else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let mut buf = Vec::new();
        export::export(self.store.as_ref(), what, format, from, to, &mut buf)
            .await
            .map_err(to_status)?;
        if buf.len() > MAX_EXPORT_BYTES {
            return Err(ApiError::Exhausted {
                what: format!("the export exceeds {MAX_EXPORT_BYTES} bytes; ask for a shorter period or use the audit command"),
            }
            .into());
        }
        let chunks = line_chunks(buf, CHUNK_BYTES);
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks.into_iter().map(|data| Ok(pb::ExportChunk { data })),
        ))))
    }

    #[tracing::instrument(skip_all)]
    async fn render_statement(
        &self,
        request: Request<pb::RenderStatementRequest>,
    ) -> Result<Response<pb::StatementDocument>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner = v.check(parse_uuid("partner_id", &req.partner_id));
        let currency = v.check(
            req.currency
                .parse::<Currency>()
                .map_err(|_| FieldViolation::new("currency", "an ISO 4217 code such as USD")),
        );
        let format = match pb::StatementFormat::try_from(req.format) {
            Ok(pb::StatementFormat::Text) => Some(statement::Format::Text),
            Ok(pb::StatementFormat::Csv) => Some(statement::Format::Csv),
            Ok(pb::StatementFormat::Html) => Some(statement::Format::Html),
            _ => v.check(Err(FieldViolation::new("format", "TEXT, CSV or HTML"))),
        };
        let period = period(&mut v, req.from.as_ref(), req.to.as_ref());
        v.finish()?;
        let (Some(partner), Some(currency), Some(format), Some((from, to))) =
            (partner, currency, format, period)
        else {
            return Err(ApiError::internal("validated fields missing").into());
        };
        let s = statement::build(self.store.as_ref(), partner, currency, from, to)
            .await
            .map_err(to_status)?;
        let content_type = match format {
            statement::Format::Text => "text/plain; charset=utf-8",
            statement::Format::Csv => "text/csv; charset=utf-8",
            statement::Format::Html => "text/html; charset=utf-8",
        };
        Ok(Response::new(pb::StatementDocument {
            content_type: content_type.into(),
            body: statement::render(&s, format),
        }))
    }
}

/// Splits at line ends into chunks of about `max` bytes (a longer line is one chunk).
fn line_chunks(buf: Vec<u8>, max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for line in buf.split_inclusive(|b| *b == b'\n') {
        if !current.is_empty() && current.len() + line.len() > max {
            out.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(line);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
