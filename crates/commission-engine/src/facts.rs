//! The facts of one attributed conversion, as the engine receives them.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::limits::{
    MAX_AMOUNT, MAX_LOTS, MAX_PRODUCTS, MAX_SPLIT_PARTS, MAX_SPLIT_WEIGHT_PLACES, MAX_TEXT,
    MAX_UPLINE,
};
use crate::FactsError;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversionKind {
    /// A qualified lead.
    Lead,
    /// An account sign-up (e.g. a first deposit).
    Signup,
    /// A one-off sale. Counts as a paid invoice.
    Sale,
    /// A paid subscription invoice. Counts as a paid invoice.
    SubscriptionInvoice,
    /// A customer's (or player's) net revenue for part of a period; may be negative.
    NetRevenueReport,
}

impl ConversionKind {
    /// Whether the conversion is a paid invoice: the first one starts the customer's month 1.
    pub fn is_paid_invoice(self) -> bool {
        matches!(
            self,
            ConversionKind::Sale | ConversionKind::SubscriptionInvoice
        )
    }
}

impl fmt::Display for ConversionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConversionKind::Lead => "lead",
            ConversionKind::Signup => "signup",
            ConversionKind::Sale => "sale",
            ConversionKind::SubscriptionInvoice => "subscription invoice",
            ConversionKind::NetRevenueReport => "net revenue report",
        })
    }
}

/// A reseller's prices for the units sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResellerPricing {
    /// The list price of one unit.
    pub list_price: Money,
    /// The discounted price the reseller pays for one unit.
    pub partner_price: Money,
    /// Units sold.
    pub quantity: u32,
}

/// A conversion credited to several partners: every credited partner's attribution weight, and
/// which of them this partner is.
///
/// The engine computes a line that is linear in the weight once for the whole conversion,
/// rounds it once, and gives each partner its part by the largest-remainder method
/// ([`pl_money::allocate`]) over `weights`, leftover minor units to the largest remainders and
/// ties to the lower index. So the parts of partners computed under the same rule always sum
/// exactly to the whole commission, and every partner computes its own part alone, from the
/// same list. The order is the attribution's: each partner's first touchpoint, earliest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Every credited partner's weight, in the attribution's order; each in `(0, 1]`.
    pub weights: Vec<Decimal>,
    /// This partner's place in `weights`; `weights[index]` is the facts' `weight`.
    pub index: usize,
}

/// One conversion attributed (in part) to one partner: everything the engine computes from.
/// The amounts are in the conversion's currency; the engine converts them at `fx_rate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionFacts {
    /// The conversion.
    pub conversion_id: Uuid,
    /// The event the facts come from (for the caller's derived ids).
    pub source_event_id: Uuid,
    /// What happened.
    pub kind: ConversionKind,
    /// Business time; its UTC calendar month is the period.
    pub occurred_at: DateTime<Utc>,
    /// The customer (or player, or an aggregate key for partner-level net revenue reports).
    pub customer_id: String,
    /// The customer's country (ISO 3166 alpha-2, uppercase).
    #[serde(default)]
    pub customer_country: Option<String>,
    /// Products in the conversion.
    #[serde(default)]
    pub products: Vec<String>,
    /// Gross amount.
    #[serde(default)]
    pub gross: Option<Money>,
    /// Net amount (net gaming revenue for reports, which may be negative).
    #[serde(default)]
    pub net: Option<Money>,
    /// Lots traded.
    #[serde(default)]
    pub lots: Option<Decimal>,
    /// Reseller pricing, for margin rewards.
    #[serde(default)]
    pub reseller: Option<ResellerPricing>,
    /// The brand or product line a net revenue report is for: under a ringfenced plan
    /// ([`crate::NetRevenuePolicy::Ringfenced`]) a negative result offsets only later results of
    /// the same brand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// The partner credited.
    pub partner_id: Uuid,
    /// The partner's tier at the conversion.
    #[serde(default)]
    pub partner_tier: Option<String>,
    /// The partner's attribution share, `0 < weight <= 1`.
    pub weight: Decimal,
    /// The whole conversion's split across its credited partners, when it has more than one
    /// (see [`Split`]). Without it, a partial weight's line is rounded on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// Parent, grandparent, ... of the partner, for overrides.
    #[serde(default)]
    pub upline: Vec<Uuid>,
    /// Rate from the conversion currency to the payout currency on the business date; `None`
    /// when they match or no rate is recorded.
    #[serde(default)]
    pub fx_rate: Option<Decimal>,
}

impl ConversionFacts {
    /// The currency of the conversion's amounts, if it carries any.
    pub fn currency(&self) -> Option<Currency> {
        self.gross
            .or(self.net)
            .or(self.reseller.as_ref().map(|r| r.list_price))
            .map(Money::currency)
    }

    /// Checks the facts are consistent: weight in `(0, 1]`, one currency for all amounts,
    /// nothing negative except a net revenue report's net, a positive FX rate, bounded lists and
    /// texts, an upline without repeats.
    pub fn validate(&self) -> Result<(), FactsError> {
        if self.weight <= Decimal::ZERO || self.weight > Decimal::ONE {
            return Err(FactsError::BadWeight(self.weight));
        }
        if let Some(split) = &self.split {
            split.validate(self.weight)?;
        }
        check_text("customer_id", &self.customer_id)?;
        for (field, value) in [
            ("customer_country", &self.customer_country),
            ("partner_tier", &self.partner_tier),
            ("brand", &self.brand),
        ] {
            if let Some(value) = value {
                check_text(field, value)?;
            }
        }
        if self.products.len() > MAX_PRODUCTS {
            return Err(FactsError::TooMany {
                field: "products",
                count: self.products.len(),
                max: MAX_PRODUCTS,
            });
        }
        for product in &self.products {
            check_text("product", product)?;
        }
        if self.upline.len() > MAX_UPLINE {
            return Err(FactsError::TooMany {
                field: "upline",
                count: self.upline.len(),
                max: MAX_UPLINE,
            });
        }
        let mut seen = BTreeSet::from([self.partner_id]);
        for parent in &self.upline {
            if !seen.insert(*parent) {
                return Err(FactsError::UplineRepeats(*parent));
            }
        }
        self.validate_amounts()
    }

    fn validate_amounts(&self) -> Result<(), FactsError> {
        check_amounts(&ConversionAmounts {
            kind: self.kind,
            gross: self.gross,
            net: self.net,
            lots: self.lots,
            reseller: self.reseller.as_ref(),
        })?;
        if let Some(rate) = self.fx_rate {
            if rate <= Decimal::ZERO {
                return Err(FactsError::BadFxRate(rate));
            }
        }
        Ok(())
    }
}

/// The amounts of a conversion, as the engine computes from them. Attribution checks what it is
/// sent with [`check_amounts`] too, so a conversion the engine would refuse is refused at the
/// API where it is sent, with nothing written, instead of inside commissions.
#[derive(Debug, Clone, Copy)]
pub struct ConversionAmounts<'a> {
    /// What happened.
    pub kind: ConversionKind,
    /// Gross amount.
    pub gross: Option<Money>,
    /// Net amount.
    pub net: Option<Money>,
    /// Lots traded.
    pub lots: Option<Decimal>,
    /// Reseller pricing.
    pub reseller: Option<&'a ResellerPricing>,
}

/// Checks a conversion's amounts: one currency for all of them, none beyond [`MAX_AMOUNT`] in
/// magnitude (lots: [`MAX_LOTS`]), nothing negative except a net revenue report's net, a partner
/// price not above the list price. The error names the field.
pub fn check_amounts(a: &ConversionAmounts<'_>) -> Result<(), FactsError> {
    let mut amounts: Vec<(&'static str, Money)> = Vec::new();
    amounts.extend(a.gross.map(|m| ("gross", m)));
    amounts.extend(a.net.map(|m| ("net", m)));
    if let Some(r) = a.reseller {
        amounts.push(("list_price", r.list_price));
        amounts.push(("partner_price", r.partner_price));
        if r.partner_price.amount() > r.list_price.amount() {
            return Err(FactsError::NegativeMargin {
                list_price: r.list_price.to_string(),
                partner_price: r.partner_price.to_string(),
            });
        }
    }
    if let Some(first) = amounts.first() {
        for (_, other) in &amounts {
            if other.currency() != first.1.currency() {
                return Err(FactsError::MixedCurrencies(
                    first.1.currency(),
                    other.currency(),
                ));
            }
        }
    }
    for (field, amount) in &amounts {
        if amount.amount().abs() > MAX_AMOUNT {
            return Err(FactsError::TooLarge {
                field,
                max: MAX_AMOUNT,
            });
        }
        let may_be_negative = *field == "net" && a.kind == ConversionKind::NetRevenueReport;
        if amount.is_negative() && !may_be_negative {
            return Err(FactsError::Negative(field));
        }
    }
    if a.lots.is_some_and(|l| l < Decimal::ZERO) {
        return Err(FactsError::Negative("lots"));
    }
    if a.lots.is_some_and(|l| l > MAX_LOTS) {
        return Err(FactsError::TooLarge {
            field: "lots",
            max: MAX_LOTS,
        });
    }
    Ok(())
}

impl Split {
    /// Checks the split: 1 to [`MAX_SPLIT_PARTS`] weights, each in `(0, 1]` with at most
    /// [`MAX_SPLIT_WEIGHT_PLACES`] decimal places, summing to 1, and
    /// `index` naming this partner's `weight`.
    pub fn validate(&self, weight: Decimal) -> Result<(), FactsError> {
        if self.weights.is_empty() || self.weights.len() > MAX_SPLIT_PARTS {
            return Err(FactsError::TooMany {
                field: "split weights",
                count: self.weights.len(),
                max: MAX_SPLIT_PARTS,
            });
        }
        if let Some(bad) = self
            .weights
            .iter()
            .find(|w| **w <= Decimal::ZERO || **w > Decimal::ONE)
        {
            return Err(FactsError::BadWeight(*bad));
        }
        // Bounded so every weight fits the ledger's explanation inputs beside the others.
        if self
            .weights
            .iter()
            .any(|w| w.normalize().scale() > MAX_SPLIT_WEIGHT_PLACES)
        {
            return Err(FactsError::BadSplit(
                "a weight has more than 9 decimal places",
            ));
        }
        let sum = self
            .weights
            .iter()
            .try_fold(Decimal::ZERO, |sum, w| sum.checked_add(*w));
        if sum != Some(Decimal::ONE) {
            return Err(FactsError::BadSplit("weights do not sum to 1"));
        }
        if self.weights.get(self.index) != Some(&weight) {
            return Err(FactsError::BadSplit(
                "index does not name the partner's weight",
            ));
        }
        Ok(())
    }
}

fn check_text(field: &'static str, value: &str) -> Result<(), FactsError> {
    if value.is_empty() || value.chars().count() > MAX_TEXT {
        return Err(FactsError::BadText {
            field,
            max: MAX_TEXT,
        });
    }
    Ok(())
}
