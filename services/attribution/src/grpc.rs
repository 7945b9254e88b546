//! The gRPC face of attribution: validate every field (all violations at once, nothing
//! appended on bad input), hash personal data before anything is stored, read the clock at the
//! edge, run each mutating request once per idempotency key, and answer from `service` and the
//! `report` read model.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_eventlog::SharedStore;
use pl_money::{Currency, Decimal, Money};
use pl_proto::attribution::v1 as pb;
use pl_proto::attribution::v1::attribution_service_server::{
    AttributionService as AttributionApi, AttributionServiceServer,
};
use pl_proto::common::v1 as common;
use pl_runtime::request::{parse_text, parse_uuid, to_datetime, to_timestamp};
use pl_runtime::{idempotency, ApiError, Clock, FieldViolation, RequestMeta, Violations};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::contract::{ContractKind, ConversionEvent};
use crate::conversions::{ConversionFacts, ConversionType};
use crate::report::{self, Reports};
use crate::service::{self, TouchInput};
use crate::settings::{Model, SetSettings, Settings, DEFAULT_HALF_LIFE_HOURS, DEFAULT_WINDOW_DAYS};
use crate::streams;
use crate::touchpoints::{Detail, Touchpoint, TouchpointKind};
use crate::SERVICE;
use pl_commission_engine::{
    check_amounts, ConversionAmounts, ConversionKind as EngineKind, FactsError, ResellerPricing,
};

const MAX_URL_CHARS: usize = 2048;
const MAX_ID_CHARS: usize = 128;
const MAX_USER_AGENT_BYTES: usize = 1024;
const MAX_CODE_CHARS: usize = 64;
const MAX_DOMAIN_CHARS: usize = 253;
const MAX_PRODUCTS: usize = 64;
const MAX_REPORT_ROWS: usize = 10_000;

#[derive(Clone)]
pub struct AttributionService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    /// Secret mixed into IP and user-agent hashes so they cannot be reversed by enumeration.
    hash_salt: Arc<str>,
    reports: Arc<Reports>,
    crm: Arc<service::CrmCache>,
    settings: Arc<service::SettingsCache>,
}

impl std::fmt::Debug for AttributionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttributionService").finish_non_exhaustive()
    }
}

pub const SERVICE_NAME: &str =
    <AttributionServiceServer<AttributionService> as tonic::server::NamedService>::NAME;

impl AttributionService {
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>, hash_salt: &str) -> Self {
        Self {
            store,
            clock,
            hash_salt: Arc::from(hash_salt),
            reports: Arc::default(),
            crm: Arc::default(),
            settings: Arc::default(),
        }
    }

    pub fn into_server(self, max_request_bytes: usize) -> AttributionServiceServer<Self> {
        AttributionServiceServer::new(self).max_decoding_message_size(max_request_bytes)
    }

    fn hash(&self, purpose: &str, value: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.hash_salt.as_bytes());
        h.update([0]);
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        hex::encode(h.finalize())
    }

    fn meta(
        &self,
        ctx: Option<&common::RequestContext>,
        v: &mut Violations,
    ) -> Option<RequestMeta> {
        let trace = pl_telemetry::inject(&tracing::Span::current());
        RequestMeta::parse(SERVICE, ctx, self.clock.as_ref(), trace, v)
    }
}

// ----- field parsing ----------------------------------------------------------------------------

fn parse_url(field: &str, value: &str) -> Result<String, FieldViolation> {
    let url = parse_text(field, value, MAX_URL_CHARS)?;
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url)
    } else {
        Err(FieldViolation::new(field, "an absolute http(s) url"))
    }
}

fn parse_ip(field: &str, value: &str) -> Result<std::net::IpAddr, FieldViolation> {
    value
        .parse()
        .map_err(|_| FieldViolation::new(field, "an IPv4 or IPv6 address"))
}

fn opt_uuid(v: &mut Violations, field: &str, value: &str) -> Option<Option<Uuid>> {
    if value.is_empty() {
        Some(None)
    } else {
        v.check(parse_uuid(field, value)).map(Some)
    }
}

fn opt_text(v: &mut Violations, field: &str, value: &str, max: usize) -> Option<Option<String>> {
    if value.is_empty() {
        Some(None)
    } else {
        v.check(parse_text(field, value, max)).map(Some)
    }
}

fn parse_code(field: &str, value: &str) -> Result<String, FieldViolation> {
    let code = parse_text(field, value, MAX_CODE_CHARS)?;
    if code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(code)
    } else {
        Err(FieldViolation::new(field, "only letters, digits, - and _"))
    }
}

fn parse_money(field: &str, m: &common::Money) -> Result<Money, FieldViolation> {
    let currency: Currency = m.currency.parse().map_err(|_| {
        FieldViolation::new(
            format!("{field}.currency"),
            "an ISO 4217 currency code such as USD",
        )
    })?;
    Money::parse_exact(&m.amount, currency)
        .map_err(|e| FieldViolation::new(format!("{field}.amount"), e.to_string()))
}

fn time_or(
    v: &mut Violations,
    field: &str,
    ts: Option<&pl_proto::prost_types::Timestamp>,
    default: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match ts {
        Some(ts) => v.check(to_datetime(field, ts)),
        None => default,
    }
}

/// A net revenue report as parsed: its figures, and its month as [first, next).
struct ParsedReport {
    net: Money,
    details: crate::conversions::ReportDetails,
    first: DateTime<Utc>,
    next: DateTime<Utc>,
}

/// `RecordConversionRequest.net_revenue_report`: required for a net revenue report, refused on
/// any other type. `None` when the type is unknown or the report is bad (violations added);
/// `Some(None)` for another type without one.
fn net_revenue_report(
    v: &mut Violations,
    req: &pb::RecordConversionRequest,
    kind: Option<ConversionType>,
) -> Option<Option<ParsedReport>> {
    let kind = kind?;
    let report = match (kind, &req.net_revenue_report) {
        (ConversionType::NetRevenueReport, Some(r)) => r,
        (ConversionType::NetRevenueReport, None) => {
            v.add("net_revenue_report", "required for a net revenue report");
            return None;
        }
        (_, Some(_)) => {
            v.add(
                "net_revenue_report",
                "only a CONVERSION_TYPE_NET_REVENUE_REPORT carries one",
            );
            return None;
        }
        (_, None) => return Some(None),
    };
    if req.amount.is_some() {
        v.add(
            "amount",
            "a net revenue report carries its figures in net_revenue_report",
        );
    }
    if req.net.is_some() {
        v.add(
            "net",
            "a net revenue report carries its net in net_revenue_report.net",
        );
    }
    let money = |v: &mut Violations, field: &str, m: Option<&common::Money>| match m {
        None => Some(None),
        Some(m) => v
            .check(parse_money(&format!("net_revenue_report.{field}"), m))
            .map(Some),
    };
    let net = match &report.net {
        None => {
            v.add("net_revenue_report.net", "required");
            None
        }
        Some(m) => v.check(parse_money("net_revenue_report.net", m)),
    };
    let ggr = money(
        v,
        "gross_gaming_revenue",
        report.gross_gaming_revenue.as_ref(),
    );
    let bonuses = money(v, "bonuses", report.bonuses.as_ref());
    let fees = money(v, "fees", report.fees.as_ref());
    let brand = opt_text(v, "net_revenue_report.brand", &report.brand, MAX_ID_CHARS);
    let month = v.check(month_of(&report.period));
    let (net, ggr, bonuses, fees, brand, (first, next)) =
        (net?, ggr?, bonuses?, fees?, brand?, month?);
    for (field, m) in [
        ("gross_gaming_revenue", ggr),
        ("bonuses", bonuses),
        ("fees", fees),
    ] {
        let Some(m) = m else { continue };
        if m.currency() != net.currency() {
            v.add(
                format!("net_revenue_report.{field}"),
                format!("in {}, the currency of net", net.currency().code()),
            );
            return None;
        }
        if field != "gross_gaming_revenue" && m.is_negative() {
            v.add(
                format!("net_revenue_report.{field}"),
                "must not be negative",
            );
            return None;
        }
    }
    if let (Some(ggr), Some(bonuses), Some(fees)) = (ggr, bonuses, fees) {
        let expected = ggr
            .checked_sub(bonuses)
            .and_then(|m| m.checked_sub(fees))
            .ok();
        if expected != Some(net) {
            v.add(
                "net_revenue_report.net",
                format!(
                    "must equal gross_gaming_revenue − bonuses − fees ({})",
                    expected.map_or_else(|| "out of range".to_owned(), |m| m.to_string())
                ),
            );
            return None;
        }
    }
    Some(Some(ParsedReport {
        net,
        details: crate::conversions::ReportDetails {
            period: report.period.clone(),
            brand,
            gross_gaming_revenue: ggr,
            bonuses,
            fees,
        },
        first,
        next,
    }))
}

/// "YYYY-MM" as the month's first instant and the next month's.
fn month_of(period: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), FieldViolation> {
    let bad = || {
        FieldViolation::new(
            "net_revenue_report.period",
            "a month as YYYY-MM, e.g. 2026-03",
        )
    };
    let (year, month) = period.split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || month.len() != 2 {
        return Err(bad());
    }
    let year: i32 = year.parse().map_err(|_| bad())?;
    let month: u32 = month.parse().map_err(|_| bad())?;
    let first = chrono::NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(bad)?;
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(bad)?;
    let at = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    Ok((at(first).ok_or_else(bad)?, at(next).ok_or_else(bad)?))
}

/// The engine's kind of a conversion type, for the engine's checks of its amounts.
fn engine_kind(kind: ConversionType) -> EngineKind {
    match kind {
        ConversionType::Lead => EngineKind::Lead,
        ConversionType::Signup => EngineKind::Signup,
        ConversionType::Sale | ConversionType::SubscriptionStarted => EngineKind::Sale,
        ConversionType::SubscriptionInvoicePaid => EngineKind::SubscriptionInvoice,
        ConversionType::NetRevenueReport => EngineKind::NetRevenueReport,
        // Reversals and cancellations carry no revenue of their own to compute on.
        ConversionType::Refund
        | ConversionType::Chargeback
        | ConversionType::SubscriptionCancelled => EngineKind::Sale,
    }
}

/// The subject of a touchpoint: a visitor and/or a customer, at least one.
fn subject(
    v: &mut Violations,
    visitor: &str,
    customer: &str,
) -> Option<(Option<String>, Option<String>)> {
    let visitor = opt_text(v, "visitor_id", visitor, MAX_ID_CHARS);
    let customer = opt_text(v, "customer_id", customer, MAX_ID_CHARS);
    match (visitor?, customer?) {
        (None, None) => {
            v.add("visitor_id", "a visitor_id or a customer_id is required");
            None
        }
        pair => Some(pair),
    }
}

// ----- views ------------------------------------------------------------------------------------

fn money_pb(m: Money) -> common::Money {
    common::Money {
        amount: m.amount().to_string(),
        currency: m.currency().code().to_owned(),
    }
}

fn kind_pb(k: TouchpointKind) -> i32 {
    (match k {
        TouchpointKind::Click => pb::TouchpointKind::Click,
        TouchpointKind::Coupon => pb::TouchpointKind::Coupon,
        TouchpointKind::Postback => pb::TouchpointKind::Postback,
        TouchpointKind::Impression => pb::TouchpointKind::Impression,
        TouchpointKind::DealRegistration => pb::TouchpointKind::DealRegistration,
    }) as i32
}

fn opt_str<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn touchpoint_pb(t: &Touchpoint) -> pb::Touchpoint {
    let d = &t.detail;
    pb::Touchpoint {
        touchpoint_id: t.touchpoint_id.to_string(),
        kind: kind_pb(t.kind),
        program_id: t.program_id.to_string(),
        partner_id: t.partner_id.to_string(),
        campaign_id: opt_str(t.campaign_id),
        visitor_id: t.visitor_id.clone().unwrap_or_default(),
        customer_id: t.customer_id.clone().unwrap_or_default(),
        occurred_at: Some(to_timestamp(t.occurred_at)),
        tracking_link_id: opt_str(d.tracking_link_id),
        landing_url: d.landing_url.clone().unwrap_or_default(),
        ip_hash: d.ip_hash.clone().unwrap_or_default(),
        user_agent_hash: d.user_agent_hash.clone().unwrap_or_default(),
        coupon_code: d.coupon_code.clone().unwrap_or_default(),
        transaction_id: d.transaction_id.clone().unwrap_or_default(),
        click_id: opt_str(d.click_id),
    }
}

fn contract_kind_pb(k: ContractKind) -> i32 {
    (match k {
        ContractKind::Lead => pb::ConversionKind::Lead,
        ContractKind::Signup => pb::ConversionKind::Signup,
        ContractKind::Sale => pb::ConversionKind::Sale,
        ContractKind::SubscriptionStarted => pb::ConversionKind::SubscriptionStarted,
        ContractKind::SubscriptionInvoice => pb::ConversionKind::SubscriptionInvoice,
        ContractKind::Refund => pb::ConversionKind::Refund,
        ContractKind::Chargeback => pb::ConversionKind::Chargeback,
        ContractKind::SubscriptionCancelled => pb::ConversionKind::SubscriptionCancelled,
        ContractKind::NetRevenueReport => pb::ConversionKind::NetRevenueReport,
    }) as i32
}

fn conversion_type_pb(k: ContractKind) -> i32 {
    (match k {
        ContractKind::Lead => pb::ConversionType::Lead,
        ContractKind::Signup => pb::ConversionType::Signup,
        ContractKind::Sale => pb::ConversionType::Sale,
        ContractKind::SubscriptionStarted => pb::ConversionType::SubscriptionStarted,
        ContractKind::SubscriptionInvoice => pb::ConversionType::SubscriptionInvoicePaid,
        ContractKind::Refund => pb::ConversionType::Refund,
        ContractKind::Chargeback => pb::ConversionType::Chargeback,
        ContractKind::SubscriptionCancelled => pb::ConversionType::SubscriptionCancelled,
        ContractKind::NetRevenueReport => pb::ConversionType::NetRevenueReport,
    }) as i32
}

fn explain(e: &ConversionEvent) -> String {
    match e {
        ConversionEvent::ConversionAttributed(c) => {
            let shares: Vec<String> = c
                .shares
                .iter()
                .map(|s| format!("partner {} {}", s.partner_id, s.weight))
                .collect();
            let touches: Vec<String> = c
                .touchpoints
                .iter()
                .map(|t| {
                    format!(
                        "{} {} at {} by partner {} (credit {})",
                        t.kind, t.touchpoint_id, t.occurred_at, t.partner_id, t.credit
                    )
                })
                .collect();
            let mut s = format!(
                "attributed ({}): {}. shares: {}",
                c.model,
                c.reason,
                shares.join(", ")
            );
            if !touches.is_empty() {
                s.push_str(&format!(". winning touchpoints: {}", touches.join("; ")));
            }
            s
        }
        ConversionEvent::ConversionUnattributed(u) => format!("unattributed: {}", u.reason),
        ConversionEvent::ConversionRefunded(r) => format!(
            "refund of {} reverses conversion {} for its partners{}",
            r.amount,
            r.conversion_id,
            if r.full { " (in full)" } else { "" }
        ),
        ConversionEvent::ChargebackReceived(r) => format!(
            "chargeback of {} reverses conversion {} for its partners{}",
            r.amount,
            r.conversion_id,
            if r.full { " (in full)" } else { "" }
        ),
        ConversionEvent::SubscriptionCancelled(c) => format!(
            "the customer churned; the lock of conversion {} ends",
            opt_str(c.locked_by_conversion_id)
        ),
    }
}

fn attribution_pb(e: &ConversionEvent) -> pb::Attribution {
    let mut a = pb::Attribution {
        conversion_id: e.conversion_id().to_string(),
        attributed: e.is_attributed(),
        explanation: explain(e),
        ..Default::default()
    };
    let ts = |t: DateTime<Utc>| Some(to_timestamp(t));
    match e {
        ConversionEvent::ConversionAttributed(c) => {
            a.conversion = Some(pb::ConversionAttributed {
                conversion_id: c.conversion_id.to_string(),
                external_id: c.external_id.clone(),
                program_id: c.program_id.to_string(),
                kind: contract_kind_pb(c.kind),
                customer_id: c.customer_id.clone(),
                customer_country: c.customer_country.clone().unwrap_or_default(),
                products: c.products.clone(),
                gross: c.gross.map(money_pb),
                occurred_at: ts(c.occurred_at),
                shares: c
                    .shares
                    .iter()
                    .map(|s| pb::PartnerShare {
                        partner_id: s.partner_id.to_string(),
                        weight: s.weight.to_string(),
                        campaign_id: opt_str(s.campaign_id),
                    })
                    .collect(),
                model: c.model.clone(),
                reason: c.reason.clone(),
                campaign_id: opt_str(c.campaign_id),
                window_days: c.window_days,
                half_life_hours: c.half_life_hours,
                touchpoints: c
                    .touchpoints
                    .iter()
                    .map(|t| pb::CreditedTouchpoint {
                        touchpoint_id: t.touchpoint_id.to_string(),
                        kind: t.kind.clone(),
                        partner_id: t.partner_id.to_string(),
                        occurred_at: ts(t.occurred_at),
                        credit: t.credit.to_string(),
                        campaign_id: opt_str(t.campaign_id),
                        ip_hash: t.ip_hash.clone().unwrap_or_default(),
                    })
                    .collect(),
                locked_by_conversion_id: opt_str(c.locked_by_conversion_id),
                facts_sha256: c.facts_sha256.clone(),
                settings_version: c.settings_version,
                net: c.net.map(money_pb),
                period: c.period.clone().unwrap_or_default(),
                brand: c.brand.clone().unwrap_or_default(),
                gross_gaming_revenue: c.gross_gaming_revenue.map(money_pb),
                bonuses: c.bonuses.map(money_pb),
                fees: c.fees.map(money_pb),
                ..Default::default()
            });
        }
        ConversionEvent::ConversionUnattributed(u) => {
            a.unattributed = Some(pb::ConversionUnattributed {
                conversion_id: u.conversion_id.to_string(),
                external_id: u.external_id.clone(),
                program_id: u.program_id.to_string(),
                kind: contract_kind_pb(u.kind),
                customer_id: u.customer_id.clone(),
                gross: u.gross.map(money_pb),
                occurred_at: ts(u.occurred_at),
                model: u.model.clone(),
                window_days: u.window_days,
                reason: u.reason.clone(),
                original_conversion_id: opt_str(u.original_conversion_id),
                locked_by_conversion_id: opt_str(u.locked_by_conversion_id),
                facts_sha256: u.facts_sha256.clone(),
                settings_version: u.settings_version,
                customer_country: u.customer_country.clone().unwrap_or_default(),
                products: u.products.clone(),
                net: None,
            });
        }
        ConversionEvent::ConversionRefunded(r) => {
            a.refund = Some(pb::ConversionRefunded {
                refund_id: r.refund_id.to_string(),
                conversion_id: r.conversion_id.to_string(),
                amount: Some(money_pb(r.amount)),
                occurred_at: ts(r.occurred_at),
                external_id: r.external_id.clone(),
                program_id: r.program_id.to_string(),
                customer_id: r.customer_id.clone(),
                facts_sha256: r.facts_sha256.clone(),
                full: r.full,
            });
        }
        ConversionEvent::ChargebackReceived(r) => {
            a.chargeback = Some(pb::ChargebackReceived {
                chargeback_id: r.chargeback_id.to_string(),
                conversion_id: r.conversion_id.to_string(),
                amount: Some(money_pb(r.amount)),
                occurred_at: ts(r.occurred_at),
                external_id: r.external_id.clone(),
                program_id: r.program_id.to_string(),
                customer_id: r.customer_id.clone(),
                facts_sha256: r.facts_sha256.clone(),
                full: r.full,
            });
        }
        ConversionEvent::SubscriptionCancelled(c) => {
            a.cancellation = Some(pb::SubscriptionCancelled {
                customer_id: c.customer_id.clone(),
                program_id: c.program_id.to_string(),
                occurred_at: ts(c.occurred_at),
                conversion_id: c.conversion_id.to_string(),
                external_id: c.external_id.clone(),
                locked_by_conversion_id: opt_str(c.locked_by_conversion_id),
                facts_sha256: c.facts_sha256.clone(),
            });
        }
    }
    a
}

fn model_pb(m: Model) -> i32 {
    (match m {
        Model::LastClick => pb::AttributionModel::LastClick,
        Model::FirstClick => pb::AttributionModel::FirstClick,
        Model::Linear => pb::AttributionModel::Linear,
        Model::TimeDecay => pb::AttributionModel::TimeDecay,
        Model::PositionBased => pb::AttributionModel::PositionBased,
    }) as i32
}

fn settings_pb(program_id: Uuid, s: &crate::settings::ProgramSettings) -> pb::AttributionSettings {
    pb::AttributionSettings {
        program_id: program_id.to_string(),
        model: model_pb(s.current.model),
        window_days: s.current.window_days,
        half_life_hours: s.current.half_life_hours,
        allow_reattribution: s.current.allow_reattribution,
        count_impressions: s.current.count_impressions,
        version: s.version,
    }
}

fn conversion_type(v: &mut Violations, value: i32) -> Option<ConversionType> {
    let t = match pb::ConversionType::try_from(value) {
        Ok(pb::ConversionType::Lead) => ConversionType::Lead,
        Ok(pb::ConversionType::Signup) => ConversionType::Signup,
        Ok(pb::ConversionType::Sale) => ConversionType::Sale,
        Ok(pb::ConversionType::SubscriptionStarted) => ConversionType::SubscriptionStarted,
        Ok(pb::ConversionType::SubscriptionInvoicePaid) => ConversionType::SubscriptionInvoicePaid,
        Ok(pb::ConversionType::Refund) => ConversionType::Refund,
        Ok(pb::ConversionType::Chargeback) => ConversionType::Chargeback,
        Ok(pb::ConversionType::SubscriptionCancelled) => ConversionType::SubscriptionCancelled,
        Ok(pb::ConversionType::NetRevenueReport) => ConversionType::NetRevenueReport,
        Ok(pb::ConversionType::Unspecified) | Err(_) => {
            v.add("type", "required: one of the CONVERSION_TYPE_ values");
            return None;
        }
    };
    Some(t)
}

fn page_of(v: &mut Violations, page: Option<&common::PageRequest>) -> (usize, usize) {
    pl_runtime::request::page(
        v,
        "page",
        page,
        pl_runtime::request::PageBounds {
            default_size: report::DEFAULT_PAGE_SIZE,
            max_size: report::MAX_PAGE_SIZE,
        },
    )
}

/// Every field checked; `Some` only when there was no violation.
macro_rules! all {
    ($($x:ident),+) => {
        match ($($x),+) {
            ($(Some($x)),+) => ($($x),+),
            _ => return Err(ApiError::internal("validated fields missing").into()),
        }
    };
}

#[tonic::async_trait]
impl AttributionApi for AttributionService {
    async fn list_dead_letters(
        &self,
        request: Request<common::ListDeadLettersRequest>,
    ) -> Result<Response<common::ListDeadLettersResponse>, Status> {
        let listed =
            pl_runtime::dead_letters::list(self.store.as_ref(), SERVICE, request.get_ref()).await?;
        Ok(Response::new(listed))
    }

    #[tracing::instrument(skip_all, fields(letter_id = %request.get_ref().letter_id))]
    async fn retry_dead_letter(
        &self,
        request: Request<common::RetryDeadLetterRequest>,
    ) -> Result<Response<common::RetryDeadLetterResponse>, Status> {
        let store = self.store.as_ref();
        let retried = pl_runtime::dead_letters::retry_request(
            store,
            SERVICE,
            self.clock.as_ref(),
            pl_telemetry::inject(&tracing::Span::current()),
            request.get_ref(),
            |message| crate::consumer::handle(store, message),
        )
        .await?;
        Ok(Response::new(retried))
    }

    #[tracing::instrument(skip_all)]
    async fn record_touchpoint(
        &self,
        request: Request<pb::RecordTouchpointRequest>,
    ) -> Result<Response<pb::Touchpoint>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let subject = subject(&mut v, &req.visitor_id, &req.customer_id);
        let occurred_at = time_or(
            &mut v,
            "occurred_at",
            req.occurred_at.as_ref(),
            meta.as_ref().map(|m| m.occurred_at),
        );
        let input = match &req.touch {
            None => {
                v.add("touch", "required: a click, coupon or impression");
                None
            }
            Some(pb::record_touchpoint_request::Touch::Click(c)) => {
                let click_id = v.check(parse_uuid("click.click_id", &c.click_id));
                let link = opt_uuid(&mut v, "click.tracking_link_id", &c.tracking_link_id);
                let partner = opt_uuid(&mut v, "click.partner_id", &c.partner_id);
                let program = opt_uuid(&mut v, "click.program_id", &c.program_id);
                if let (Some(None), Some(p), Some(g)) = (link, partner, program) {
                    if p.is_none() || g.is_none() {
                        v.add(
                            "click.tracking_link_id",
                            "required unless partner_id and program_id are given",
                        );
                    }
                }
                let url = v.check(parse_url("click.landing_url", &c.landing_url));
                let ip = v.check(parse_ip("click.ip_address", &c.ip_address));
                if c.user_agent.len() > MAX_USER_AGENT_BYTES {
                    v.add(
                        "click.user_agent",
                        format!("at most {MAX_USER_AGENT_BYTES} bytes"),
                    );
                }
                match (click_id, link, partner, program, url, ip) {
                    (
                        Some(click_id),
                        Some(link),
                        Some(partner),
                        Some(program),
                        Some(url),
                        Some(ip),
                    ) => Some(TouchInput::Click {
                        click_id,
                        tracking_link_id: link,
                        partner_id: partner,
                        program_id: program,
                        landing_url: url,
                        ip_hash: self.hash("ip", &ip.to_string()),
                        user_agent_hash: self.hash("user-agent", &c.user_agent),
                    }),
                    _ => None,
                }
            }
            Some(pb::record_touchpoint_request::Touch::Coupon(c)) => {
                let id = v.check(parse_uuid("coupon.redemption_id", &c.redemption_id));
                let program = v.check(parse_uuid("coupon.program_id", &c.program_id));
                let code = v.check(parse_code("coupon.code", &c.code));
                match (id, program, code) {
                    (Some(redemption_id), Some(program_id), Some(code)) => {
                        Some(TouchInput::Coupon {
                            redemption_id,
                            program_id,
                            code,
                        })
                    }
                    _ => None,
                }
            }
            Some(pb::record_touchpoint_request::Touch::Impression(i)) => {
                let id = v.check(parse_uuid("impression.impression_id", &i.impression_id));
                let campaign = v.check(parse_uuid("impression.campaign_id", &i.campaign_id));
                let partner = v.check(parse_uuid("impression.partner_id", &i.partner_id));
                match (id, campaign, partner) {
                    (Some(impression_id), Some(campaign_id), Some(partner_id)) => {
                        Some(TouchInput::Impression {
                            impression_id,
                            campaign_id,
                            partner_id,
                        })
                    }
                    _ => None,
                }
            }
        };
        v.finish()?;
        let (meta, subject, occurred_at, input) = all!(meta, subject, occurred_at, input);
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let t =
                    service::resolve(store, &self.crm, subject.0, subject.1, occurred_at, input)
                        .await?;
                let recorded = service::record_touchpoint(store, &t, &meta.command_meta()).await?;
                Ok(touchpoint_pb(&recorded))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn record_postback(
        &self,
        request: Request<pb::RecordPostbackRequest>,
    ) -> Result<Response<pb::Touchpoint>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let partner_id = v.check(parse_uuid("partner_id", &req.partner_id));
        let transaction_id = v.check(parse_text(
            "transaction_id",
            &req.transaction_id,
            MAX_ID_CHARS,
        ));
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let subject = subject(&mut v, &req.visitor_id, &req.customer_id);
        let click_id = opt_uuid(&mut v, "click_id", &req.click_id);
        let event = opt_text(&mut v, "event", &req.event, MAX_CODE_CHARS);
        let occurred_at = time_or(
            &mut v,
            "occurred_at",
            req.occurred_at.as_ref(),
            meta.as_ref().map(|m| m.occurred_at),
        );
        v.finish()?;
        let (meta, partner_id, transaction_id, program_id, subject, click_id, event, occurred_at) = all!(
            meta,
            partner_id,
            transaction_id,
            program_id,
            subject,
            click_id,
            event,
            occurred_at
        );
        let touchpoint = Touchpoint {
            touchpoint_id: streams::postback_id(partner_id, &transaction_id),
            kind: TouchpointKind::Postback,
            program_id,
            partner_id,
            campaign_id: None,
            visitor_id: subject.0,
            customer_id: subject.1,
            occurred_at,
            detail: Detail {
                transaction_id: Some(transaction_id),
                click_id,
                event,
                ..Detail::default()
            },
        };
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let known = pl_runtime::aggregate::load::<crate::touchpoints::Postback>(
                    store,
                    &streams::postback(touchpoint.touchpoint_id),
                )
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
                if known.state.0.is_none() {
                    // A new postback must come from a partner approved at its time; a retry of
                    // a recorded one answers as before, whatever happened since.
                    service::with_crm(store, &self.crm, &streams::crm_partner(partner_id), |r| {
                        crate::crm::check_partner(partner_id, r, occurred_at)
                    })
                    .await?
                    .map_err(|r| ApiError::rule(r.to_string()))?;
                }
                let recorded =
                    service::record_postback(store, &touchpoint, &meta.command_meta()).await?;
                Ok(touchpoint_pb(&recorded))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(external_id = %request.get_ref().external_id))]
    async fn record_conversion(
        &self,
        request: Request<pb::RecordConversionRequest>,
    ) -> Result<Response<pb::Attribution>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let kind = conversion_type(&mut v, req.r#type);
        let external_id = v.check(parse_text("external_id", &req.external_id, MAX_ID_CHARS));
        let customer_id = v.check(parse_text("customer_id", &req.customer_id, MAX_ID_CHARS));
        let visitor_id = opt_text(&mut v, "visitor_id", &req.visitor_id, MAX_ID_CHARS);
        let domain = opt_text(
            &mut v,
            "customer_domain",
            &req.customer_domain,
            MAX_DOMAIN_CHARS,
        )
        .map(|d| d.map(|d| d.to_lowercase()));
        let email_hash = if req.customer_email.trim().is_empty() {
            None
        } else {
            v.check(email_sha256(&req.customer_email).ok_or_else(|| {
                FieldViolation::new("customer_email", "not an email address (local@domain)")
            }))
        };
        let opt_money = |v: &mut Violations, field: &str, m: Option<&common::Money>| match m {
            None => Some(None),
            Some(m) => v.check(parse_money(field, m)).map(Some),
        };
        let net = opt_money(&mut v, "net", req.net.as_ref());
        let list_price = opt_money(&mut v, "list_price", req.list_price.as_ref());
        let partner_price = opt_money(&mut v, "partner_price", req.partner_price.as_ref());
        let lots = if req.lots.is_empty() {
            Some(None)
        } else {
            v.check(
                pl_money::parse_amount(&req.lots)
                    .map_err(|e| FieldViolation::new("lots", e.to_string()))
                    .and_then(|l| {
                        if l > Decimal::ZERO {
                            Ok(Some(l))
                        } else {
                            Err(FieldViolation::new("lots", "must be positive"))
                        }
                    }),
            )
        };
        if req.list_price.is_some() != req.partner_price.is_some() {
            v.add(
                "partner_price",
                "list_price and partner_price come together",
            );
        }
        if req.quantity > MAX_QUANTITY {
            v.add("quantity", format!("at most {MAX_QUANTITY}"));
        }
        let amount = match &req.amount {
            None => Some(None),
            Some(m) => v.check(parse_money("amount", m)).map(Some),
        };
        if let (Some(kind), Some(amount)) = (kind, amount) {
            match (amount, kind) {
                (None, k) if k.needs_amount() => v.add("amount", "required for this type"),
                (Some(_), ConversionType::SubscriptionCancelled) => {
                    v.add("amount", "a cancellation carries no amount")
                }
                (Some(m), k) if k.is_reversal() && !m.is_positive() => {
                    v.add("amount", "must be positive")
                }
                (Some(m), _) if m.is_negative() => v.add("amount", "must not be negative"),
                _ => {}
            }
        }
        if req.products.len() > MAX_PRODUCTS {
            v.add("products", format!("at most {MAX_PRODUCTS}"));
        }
        let products: Vec<String> = req
            .products
            .iter()
            .enumerate()
            .filter_map(|(i, p)| v.check(parse_text(&format!("products[{i}]"), p, MAX_ID_CHARS)))
            .collect();
        let country = if req.customer_country.is_empty() {
            Some(None)
        } else if req.customer_country.len() == 2
            && req.customer_country.chars().all(|c| c.is_ascii_uppercase())
        {
            Some(Some(req.customer_country.clone()))
        } else {
            v.add("customer_country", "an ISO 3166-1 alpha-2 code such as DE");
            None
        };
        let original = opt_text(
            &mut v,
            "original_external_id",
            &req.original_external_id,
            MAX_ID_CHARS,
        );
        if let (Some(kind), Some(original)) = (kind, &original) {
            if kind.is_reversal() && original.is_none() {
                v.add(
                    "original_external_id",
                    "required for refunds and chargebacks",
                );
            }
            if !kind.is_reversal() && original.is_some() {
                v.add(
                    "original_external_id",
                    "only refunds and chargebacks reference another conversion",
                );
            }
        }
        let report = net_revenue_report(&mut v, &req, kind);
        // No business time given: the receipt time stands in (a report's month gives its own).
        let occurred_at_is_receipt_time = req.occurred_at.is_none()
            && req.context.as_ref().is_none_or(|c| c.occurred_at.is_none())
            && !matches!(report, Some(Some(_)));
        let occurred_at = match &report {
            // A report's business time is in its month: the given one, checked, or the month's
            // last second (so the month's own touchpoints come before it).
            Some(Some(r)) => match &req.occurred_at {
                None => Some(r.next - chrono::Duration::seconds(1)),
                Some(_) => {
                    time_or(&mut v, "occurred_at", req.occurred_at.as_ref(), None).filter(|at| {
                        let inside = r.first <= *at && *at < r.next;
                        if !inside {
                            v.add("occurred_at", "must fall in net_revenue_report.period");
                        }
                        inside
                    })
                }
            },
            _ => time_or(
                &mut v,
                "occurred_at",
                req.occurred_at.as_ref(),
                meta.as_ref().map(|m| m.occurred_at),
            ),
        };
        let report_net = report.as_ref().and_then(Option::as_ref).map(|r| r.net);
        // What commissions would refuse is refused here, with the field, and nothing written:
        // the engine's own check of a conversion's amounts.
        if let (Some(kind), Some(amount), Some(net), Some(lots), Some(list), Some(partner)) =
            (kind, amount, net, lots, list_price, partner_price)
        {
            let reseller = match (list, partner) {
                (Some(list_price), Some(partner_price)) => Some(ResellerPricing {
                    list_price,
                    partner_price,
                    quantity: req.quantity.max(1),
                }),
                _ => None,
            };
            let checked = check_amounts(&ConversionAmounts {
                kind: engine_kind(kind),
                gross: amount,
                net: report_net.or(net),
                lots,
                reseller: reseller.as_ref(),
            });
            if let Err(e) = checked {
                let field = match (e.field(), report_net.is_some()) {
                    ("gross", _) => "amount",
                    ("net", true) => "net_revenue_report.net",
                    (field, _) => field,
                };
                // The engine names its own field in its message; the violation names the
                // request's, so say only what is wrong with it.
                let description = match &e {
                    FactsError::TooLarge { max, .. } => format!("at most {max} in magnitude"),
                    FactsError::Negative(_) => "must not be negative".to_owned(),
                    other => other.to_string(),
                };
                v.add(field, description);
            }
        }
        v.finish()?;
        let (
            meta,
            program_id,
            kind,
            external_id,
            customer_id,
            visitor_id,
            domain,
            amount,
            country,
            original,
            occurred_at,
        ) = all!(
            meta,
            program_id,
            kind,
            external_id,
            customer_id,
            visitor_id,
            domain,
            amount,
            country,
            original,
            occurred_at
        );
        let facts = ConversionFacts {
            conversion_id: streams::conversion_id(program_id, &external_id),
            external_id,
            program_id,
            conversion_type: kind,
            customer_id,
            visitor_id,
            customer_domain: domain,
            amount,
            products,
            customer_country: country,
            original_external_id: original,
            occurred_at,
            customer_email_hash: email_hash,
            occurred_at_is_receipt_time,
            revenue: crate::conversions::Revenue {
                net: report_net.or(net.flatten()),
                report: report.flatten().map(|r| r.details),
                lots: lots.flatten(),
                list_price: list_price.flatten(),
                partner_price: partner_price.flatten(),
                quantity: req.quantity,
            },
        };
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let event = service::record_conversion(
                    store,
                    &self.crm,
                    &self.settings,
                    &facts,
                    &meta.command_meta(),
                )
                .await?;
                tracing::info!(
                    conversion_id = %facts.conversion_id,
                    attributed = event.is_attributed(),
                    "conversion decided"
                );
                Ok(attribution_pb(&event))
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(conversion_id = %request.get_ref().conversion_id))]
    async fn get_attribution(
        &self,
        request: Request<pb::GetAttributionRequest>,
    ) -> Result<Response<pb::Attribution>, Status> {
        let id = parse_uuid("conversion_id", &request.get_ref().conversion_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let event = service::get_conversion(self.store.as_ref(), id)
            .await?
            .ok_or(ApiError::NotFound {
                what: "conversion",
                id: id.to_string(),
            })?;
        Ok(Response::new(attribution_pb(&event)))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %request.get_ref().partner_id))]
    async fn list_partner_conversions(
        &self,
        request: Request<pb::ListPartnerConversionsRequest>,
    ) -> Result<Response<pb::ListPartnerConversionsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let partner = v.check(parse_uuid("partner_id", &req.partner_id));
        let (offset, size) = page_of(&mut v, req.page.as_ref());
        v.finish()?;
        let (partner,) = (partner.ok_or_else(|| ApiError::internal("validated fields missing"))?,);
        let model = self.reports.caught_up(self.store.as_ref()).await?;
        let (page, more) = model.partner_conversions(partner, offset, size);
        drop(model);
        let next = if more {
            (offset + page.len()).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPartnerConversionsResponse {
            conversions: page
                .iter()
                .map(|c| pb::PartnerConversion {
                    conversion_id: c.conversion_id.to_string(),
                    external_id: c.external_id.clone(),
                    program_id: c.program_id.to_string(),
                    kind: contract_kind_pb(c.kind),
                    customer_id: c.customer_id.clone(),
                    weight: c.weight.to_string(),
                    gross: c.gross.map(money_pb),
                    occurred_at: Some(to_timestamp(c.occurred_at)),
                    model: c.model.clone(),
                    campaign_id: opt_str(c.campaign_id),
                })
                .collect(),
            next_page_token: next,
        }))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn set_attribution_settings(
        &self,
        request: Request<pb::SetAttributionSettingsRequest>,
    ) -> Result<Response<pb::AttributionSettings>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let meta = self.meta(req.context.as_ref(), &mut v);
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let model = match pb::AttributionModel::try_from(req.model) {
            Ok(pb::AttributionModel::Unspecified | pb::AttributionModel::LastClick) => {
                Some(Model::LastClick)
            }
            Ok(pb::AttributionModel::FirstClick) => Some(Model::FirstClick),
            Ok(pb::AttributionModel::Linear) => Some(Model::Linear),
            Ok(pb::AttributionModel::TimeDecay) => Some(Model::TimeDecay),
            Ok(pb::AttributionModel::PositionBased) => Some(Model::PositionBased),
            Err(_) => {
                v.add("model", "one of the ATTRIBUTION_MODEL_ values");
                None
            }
        };
        let window_days = match req.window_days {
            0 => DEFAULT_WINDOW_DAYS,
            n => n,
        };
        if window_days > crate::settings::MAX_WINDOW_DAYS {
            v.add(
                "window_days",
                format!("at most {}", crate::settings::MAX_WINDOW_DAYS),
            );
        }
        let half_life_hours = match req.half_life_hours {
            0 => DEFAULT_HALF_LIFE_HOURS,
            n => n,
        };
        if half_life_hours > crate::settings::MAX_HALF_LIFE_HOURS {
            v.add(
                "half_life_hours",
                format!("at most {}", crate::settings::MAX_HALF_LIFE_HOURS),
            );
        }
        v.finish()?;
        let (meta, program_id, model) = all!(meta, program_id, model);
        let cmd = SetSettings {
            program_id,
            settings: Settings {
                model,
                window_days,
                half_life_hours,
                allow_reattribution: req.allow_reattribution,
                count_impressions: req.count_impressions,
            },
        };
        let fingerprint = idempotency::request_fingerprint(&req, |r| r.context.as_mut());
        let store = self.store.as_ref();
        let response =
            idempotency::run_once(store, &meta.key, fingerprint, meta.occurred_at, || async {
                let s = service::set_settings(store, &cmd, &meta.command_meta()).await?;
                Ok(settings_pb(program_id, &s))
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn get_attribution_settings(
        &self,
        request: Request<pb::GetAttributionSettingsRequest>,
    ) -> Result<Response<pb::AttributionSettings>, Status> {
        let program_id = parse_uuid("program_id", &request.get_ref().program_id)
            .map_err(|fv| ApiError::InvalidArgument(vec![fv]))?;
        let s = self.settings.get(self.store.as_ref(), program_id).await?;
        Ok(Response::new(settings_pb(program_id, &s)))
    }

    #[tracing::instrument(skip_all, fields(program_id = %request.get_ref().program_id))]
    async fn get_performance(
        &self,
        request: Request<pb::GetPerformanceRequest>,
    ) -> Result<Response<pb::PerformanceReport>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let program_id = v.check(parse_uuid("program_id", &req.program_id));
        let from = match &req.from {
            Some(t) => v.check(to_datetime("from", t)),
            None => {
                v.add("from", "required");
                None
            }
        };
        let to = match &req.to {
            Some(t) => v.check(to_datetime("to", t)),
            None => {
                v.add("to", "required");
                None
            }
        };
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                v.add("to", "must be after from");
            }
        }
        let partner = opt_uuid(&mut v, "partner_id", &req.partner_id);
        let campaign = opt_uuid(&mut v, "campaign_id", &req.campaign_id);
        v.finish()?;
        let (program_id, from, to, partner, campaign) =
            all!(program_id, from, to, partner, campaign);
        let model = self.reports.caught_up(self.store.as_ref()).await?;
        let rows = model
            .performance(program_id, from, to, partner, campaign)
            .map_err(|e| ApiError::rule(e.to_string()))?;
        drop(model);
        if rows.len() > MAX_REPORT_ROWS {
            return Err(ApiError::Exhausted {
                what: format!("more than {MAX_REPORT_ROWS} rows; filter by partner or campaign"),
            }
            .into());
        }
        let kinds = [
            ContractKind::Lead,
            ContractKind::Signup,
            ContractKind::Sale,
            ContractKind::SubscriptionStarted,
            ContractKind::SubscriptionInvoice,
            ContractKind::Refund,
            ContractKind::Chargeback,
            ContractKind::SubscriptionCancelled,
        ];
        let rows = rows
            .into_iter()
            .map(|((partner, campaign), row)| {
                let count = |k: ContractKind| {
                    row.conversions
                        .get(&report::kind_key(k))
                        .copied()
                        .unwrap_or(0)
                };
                let converting: u64 = [
                    ContractKind::Sale,
                    ContractKind::SubscriptionStarted,
                    ContractKind::SubscriptionInvoice,
                ]
                .into_iter()
                .map(count)
                .sum();
                let rate = if row.clicks == 0 {
                    Decimal::ZERO
                } else {
                    // round_dp rounds half-even (banker's rounding).
                    Decimal::from(converting)
                        .checked_div(Decimal::from(row.clicks))
                        .unwrap_or(Decimal::ZERO)
                        .round_dp(4)
                };
                pb::PerformanceRow {
                    partner_id: partner.to_string(),
                    campaign_id: opt_str(campaign),
                    clicks: row.clicks,
                    conversions: kinds
                        .iter()
                        .filter(|k| count(**k) > 0)
                        .map(|k| pb::ConversionCount {
                            r#type: conversion_type_pb(*k),
                            count: count(*k),
                        })
                        .collect(),
                    conversion_rate: rate.normalize().to_string(),
                    revenue: row
                        .revenue
                        .iter()
                        .map(|(c, a)| common::Money {
                            amount: exact_amount(*a, *c),
                            currency: c.code().to_owned(),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::PerformanceReport { rows }))
    }
}

/// An exact amount as a user reads it: never rounded, but without the trailing zeros that
/// weight multiplication adds, and with at least the currency's minor unit ("78.33", "50.00",
/// "33.333333").
fn exact_amount(amount: Decimal, currency: Currency) -> String {
    let mut a = amount.normalize();
    if a.scale() < currency.minor_unit() {
        a.rescale(currency.minor_unit());
    }
    a.to_string()
}

/// Hex SHA-256 of an email's canonical form (trimmed, lower case, "+tag" removed from the local
/// part), as compliance computes it for partners; `None` when it is not an address.
pub fn email_sha256(email: &str) -> Option<String> {
    if email.len() > MAX_EMAIL_CHARS {
        return None;
    }
    let email = email.trim().to_lowercase();
    let (local, domain) = email.rsplit_once('@')?;
    let local = local.split('+').next().unwrap_or_default();
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || email.contains(char::is_whitespace)
    {
        return None;
    }
    Some(hex::encode(Sha256::digest(
        format!("{local}@{domain}").as_bytes(),
    )))
}

const MAX_EMAIL_CHARS: usize = 320;
/// Units in one reseller conversion.
const MAX_QUANTITY: u32 = 1_000_000;
