//! The read model behind listings and the performance view: built from the log (the
//! `conversion-*` and `touchpoints-*` streams) in global order, caught up on every query, so a
//! query sees every write that finished before it. Rebuilding from position 0 gives the same
//! model; nothing in it is a source of truth. Revenue is exact: gross × weight, summed per
//! currency, never rounded.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use pl_eventlog::EventStore;
use pl_money::{Currency, Decimal, Money};
use pl_runtime::aggregate::decode_event;
use pl_runtime::ApiError;
use uuid::Uuid;

use crate::contract::{ContractKind, ConversionEvent, PartnerShare};
use crate::streams::TOUCHPOINTS_PREFIX;
use crate::touchpoints::{TouchpointEvent, TouchpointKind};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Events read per catch-up page.
const CATCH_UP_PAGE: usize = 4096;

/// One partner's part of an attributed conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerConversion {
    pub conversion_id: Uuid,
    pub external_id: String,
    pub program_id: Uuid,
    pub kind: ContractKind,
    pub customer_id: String,
    pub weight: Decimal,
    pub gross: Option<Money>,
    pub occurred_at: DateTime<Utc>,
    pub model: String,
    pub campaign_id: Option<Uuid>,
}

/// A fact the performance view counts, per partner.
#[derive(Debug, Clone)]
struct Counted {
    partner_id: Uuid,
    campaign_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    /// `None` for a click.
    kind: Option<ContractKind>,
    /// The partner's part of the revenue (negative for reversals).
    revenue: Option<Money>,
}

#[derive(Debug, Clone)]
struct Credit {
    shares: Vec<PartnerShare>,
}

#[derive(Debug, Default)]
pub struct ReadModel {
    next_position: u64,
    by_partner: HashMap<Uuid, Vec<PartnerConversion>>,
    credits: HashMap<Uuid, Credit>,
    /// Per program.
    counted: HashMap<Uuid, Vec<Counted>>,
}

/// One row of the performance view: a partner and a campaign (or none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub clicks: u64,
    pub conversions: BTreeMap<ContractKindKey, u64>,
    pub revenue: BTreeMap<Currency, Decimal>,
}

/// `ContractKind` ordered for maps.
pub type ContractKindKey = u8;

pub fn kind_key(k: ContractKind) -> ContractKindKey {
    match k {
        ContractKind::Lead => 1,
        ContractKind::Signup => 2,
        ContractKind::Sale => 3,
        ContractKind::SubscriptionStarted => 4,
        ContractKind::SubscriptionInvoice => 5,
        ContractKind::Refund => 6,
        ContractKind::Chargeback => 7,
        ContractKind::SubscriptionCancelled => 8,
        ContractKind::NetRevenueReport => 9,
    }
}

fn weighted(m: Option<Money>, weight: Decimal, negate: bool) -> Option<Money> {
    let m = m?.checked_mul(weight).ok()?;
    Some(if negate {
        Money::new(-m.amount(), m.currency())
    } else {
        m
    })
}

impl ReadModel {
    fn apply_conversion(&mut self, e: &ConversionEvent) {
        match e {
            ConversionEvent::ConversionAttributed(c) => {
                self.credits.insert(
                    c.conversion_id,
                    Credit {
                        shares: c.shares.clone(),
                    },
                );
                for s in &c.shares {
                    self.by_partner
                        .entry(s.partner_id)
                        .or_default()
                        .push(PartnerConversion {
                            conversion_id: c.conversion_id,
                            external_id: c.external_id.clone(),
                            program_id: c.program_id,
                            kind: c.kind,
                            customer_id: c.customer_id.clone(),
                            weight: s.weight,
                            gross: c.gross,
                            occurred_at: c.occurred_at,
                            model: c.model.clone(),
                            campaign_id: s.campaign_id,
                        });
                    self.counted.entry(c.program_id).or_default().push(Counted {
                        partner_id: s.partner_id,
                        campaign_id: s.campaign_id,
                        occurred_at: c.occurred_at,
                        kind: Some(c.kind),
                        revenue: weighted(c.gross, s.weight, false),
                    });
                }
            }
            ConversionEvent::ConversionRefunded(r) => {
                self.reversal(
                    r.conversion_id,
                    r.program_id,
                    r.amount,
                    r.occurred_at,
                    ContractKind::Refund,
                );
            }
            ConversionEvent::ChargebackReceived(r) => {
                self.reversal(
                    r.conversion_id,
                    r.program_id,
                    r.amount,
                    r.occurred_at,
                    ContractKind::Chargeback,
                );
            }
            ConversionEvent::SubscriptionCancelled(c) => {
                let Some(credit) = c
                    .locked_by_conversion_id
                    .and_then(|id| self.credits.get(&id))
                    .cloned()
                else {
                    return;
                };
                for s in &credit.shares {
                    self.counted.entry(c.program_id).or_default().push(Counted {
                        partner_id: s.partner_id,
                        campaign_id: s.campaign_id,
                        occurred_at: c.occurred_at,
                        kind: Some(ContractKind::SubscriptionCancelled),
                        revenue: None,
                    });
                }
            }
            ConversionEvent::ConversionUnattributed(_) => {}
        }
    }

    fn reversal(
        &mut self,
        original: Uuid,
        program_id: Uuid,
        amount: Money,
        at: DateTime<Utc>,
        kind: ContractKind,
    ) {
        let Some(credit) = self.credits.get(&original).cloned() else {
            return;
        };
        for s in &credit.shares {
            self.counted.entry(program_id).or_default().push(Counted {
                partner_id: s.partner_id,
                campaign_id: s.campaign_id,
                occurred_at: at,
                kind: Some(kind),
                revenue: weighted(Some(amount), s.weight, true),
            });
        }
    }

    /// A partner's attributed conversions from `offset`, at most `limit`, and whether more
    /// follow.
    pub fn partner_conversions(
        &self,
        partner_id: Uuid,
        offset: usize,
        limit: usize,
    ) -> (Vec<PartnerConversion>, bool) {
        let all = self
            .by_partner
            .get(&partner_id)
            .map_or(&[][..], Vec::as_slice);
        let page: Vec<PartnerConversion> = all.iter().skip(offset).take(limit).cloned().collect();
        let more = offset.saturating_add(page.len()) < all.len();
        (page, more)
    }

    /// The performance view of a program for `[from, to)`, per (partner, campaign).
    pub fn performance(
        &self,
        program_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        partner: Option<Uuid>,
        campaign: Option<Uuid>,
    ) -> Result<BTreeMap<(Uuid, Option<Uuid>), Row>, RevenueOverflow> {
        let mut rows: BTreeMap<(Uuid, Option<Uuid>), Row> = BTreeMap::new();
        for c in self.counted.get(&program_id).map_or(&[][..], Vec::as_slice) {
            if c.occurred_at < from
                || c.occurred_at >= to
                || partner.is_some_and(|p| p != c.partner_id)
                || campaign.is_some_and(|k| Some(k) != c.campaign_id)
            {
                continue;
            }
            let row = rows.entry((c.partner_id, c.campaign_id)).or_default();
            match c.kind {
                None => row.clicks += 1,
                Some(k) => *row.conversions.entry(kind_key(k)).or_default() += 1,
            }
            if let Some(m) = c.revenue {
                let sum = row.revenue.entry(m.currency()).or_default();
                *sum = sum.checked_add(m.amount()).ok_or(RevenueOverflow {
                    partner_id: c.partner_id,
                    currency: m.currency(),
                })?;
            }
        }
        Ok(rows)
    }
}

/// A partner's revenue in the report's window is beyond what a decimal holds: only amounts
/// recorded before the API bounded them ([`pl_commission_engine::MAX_AMOUNT`]) can add up to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partner {partner_id}'s revenue in {currency} over the window is too large to sum; ask for a shorter window")]
pub struct RevenueOverflow {
    pub partner_id: Uuid,
    pub currency: Currency,
}

/// The shared read model and its catch-up.
#[derive(Debug, Default)]
pub struct Reports {
    model: tokio::sync::Mutex<ReadModel>,
}

impl Reports {
    /// Applies every event appended since the last call, then hands out the model.
    pub async fn caught_up(
        &self,
        store: &dyn EventStore,
    ) -> Result<tokio::sync::MutexGuard<'_, ReadModel>, ApiError> {
        let mut m = self.model.lock().await;
        loop {
            let page = store.read_all(m.next_position, CATCH_UP_PAGE).await?;
            let Some(last) = page.last() else { break };
            m.next_position = last.position + 1;
            for recorded in &page {
                if recorded.stream.starts_with(crate::STREAM_PREFIX) {
                    let e: ConversionEvent = decode_event(recorded).map_err(ApiError::internal)?;
                    m.apply_conversion(&e);
                } else if recorded.stream.starts_with(TOUCHPOINTS_PREFIX) {
                    let TouchpointEvent::TouchpointRecorded(t) =
                        decode_event(recorded).map_err(ApiError::internal)?;
                    if t.kind == TouchpointKind::Click {
                        m.counted.entry(t.program_id).or_default().push(Counted {
                            partner_id: t.partner_id,
                            campaign_id: t.campaign_id,
                            occurred_at: t.occurred_at,
                            kind: None,
                            revenue: None,
                        });
                    }
                }
            }
        }
        Ok(m)
    }
}
