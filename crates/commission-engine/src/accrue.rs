//! Computing the commission of one conversion: every reward formula, caps, CPA recovery and
//! overrides.

use chrono::{DateTime, Utc};
use pl_money::{Currency, Money, RoundingMode};
use rust_decimal::Decimal;

use crate::select::{customer_month_index, select_rule};
use crate::{
    validate_plan, Accrual, AccrualLine, BandShare, Base, CapApplied, CapKind, ConversionFacts,
    CustomerState, Effects, EngineError, FactsError, Formula, LineKind, NetRevenuePolicy,
    NetRevenuePosition, NetRevenueShareCalc, NotPayable, PartnerState, Percent, Period,
    PeriodDelta, PeriodTotals, PlanError, PlanVersion, RecurringDuration, Reward, RewardKind, Rule,
    ScheduleStep, SplitPart, Tier, TierMode, TierPrice, TierReached, VolumeBasis,
};

/// Computes the commission of one conversion for the partner credited with it, under `plan`
/// (see [`select_version`](crate::select_version)) and the partner's `state`.
///
/// * The plan is validated ([`validate_plan`]) and the facts checked
///   ([`ConversionFacts::validate`]) first; the state must be this partner's under this plan.
/// * The most specific matching rule decides ([`select_rule`]). No matching rule is not an
///   error: the accrual has no lines and `not_payable` says why, as it does when the rule
///   matches but pays nothing for this conversion (first year over, recurring share ended,
///   customer churned).
/// * Every formula is exact until one half-even rounding to the payout currency's minor unit
///   per line. The attribution `weight` scales the conversion (its revenue, its count, its
///   lots, the flat fee) before the formula applies.
/// * A conversion credited to several partners (`facts.split`): a line linear in the weight
///   (every reward but ladders and net revenue shares, overrides included) is computed for the
///   whole conversion, rounded once, and the partner's part of it allocated by largest
///   remainder over every partner's weight ([`crate::Split`]), so the parts sum to the whole.
///   Caps and CPA recovery then apply to the partner's part.
/// * Amounts in another currency than the payout currency are converted at `facts.fx_rate`;
///   without a rate that is [`EngineError::FxRateMissing`], never a fallback.
/// * Caps: the rule's per-conversion cap limits the base line; its per-period cap limits all
///   its lines of the calendar month (base and tier top-ups). Overrides are not capped.
/// * CPA recovery (plan `cpa_recovery`): a [`Reward::Flat`] line adds to the customer's CPA
///   outstanding, and revenue-share lines for that customer go to recovering it before
///   anything is payable.
/// * Overrides: each upline partner at level `i` gets `plan.overrides[i]` of the conversion
///   base, which is the rule's credited revenue base, or for rules without one the
///   conversion's credited gross (else net); none if the conversion carries no amount.
///   Override lines of zero are left out.
///
/// The result is a pure function of its inputs: the same plan, state and facts give the same
/// accrual, byte for byte. Apply it to the state with [`PartnerState::apply`] before computing
/// the next conversion of the same partner.
pub fn accrue(
    plan: &PlanVersion,
    state: &PartnerState,
    facts: &ConversionFacts,
) -> Result<Accrual, EngineError> {
    validate_plan(plan)?;
    facts.validate()?;
    state.check_owner(facts.partner_id, plan.plan_id)?;
    let cx = Cx::new(plan, state, facts)?;
    let mut accrual = Accrual {
        conversion_id: facts.conversion_id,
        source_event_id: facts.source_event_id,
        partner_id: facts.partner_id,
        plan_id: plan.plan_id,
        plan_version: plan.version,
        customer_id: facts.customer_id.clone(),
        occurred_at: facts.occurred_at,
        period: cx.period,
        rule_id: None,
        lines: Vec::new(),
        not_payable: None,
        effects: Effects {
            first_paid_invoice_at: cx.first_paid_invoice_effect(),
            ..Effects::default()
        },
    };
    let Some(rule) = select_rule(plan, facts, cx.month_index)? else {
        accrual.not_payable = Some(NotPayable::NoMatchingRule);
        return Ok(accrual);
    };
    accrual.rule_id = Some(rule.id.clone());
    match compute(&cx, rule)? {
        Outcome::NotPayable(reason) => accrual.not_payable = Some(reason),
        Outcome::Pay(pay) => settle(&cx, rule, pay, &mut accrual)?,
    }
    Ok(accrual)
}

/// Everything one computation looks at.
struct Cx<'a> {
    plan: &'a PlanVersion,
    facts: &'a ConversionFacts,
    customer: Option<&'a CustomerState>,
    state: &'a PartnerState,
    period: Period,
    month_index: Option<u32>,
    currency: Currency,
}

/// A revenue amount of the conversion, from its currency to the partner's credited share.
struct Revenue {
    base: Base,
    source: Money,
    fx_rate: Option<Decimal>,
    payout: Money,
    credited: Money,
}

/// A line before caps, recovery and its partner.
struct Draft {
    kind: LineKind,
    amount: Money,
    formula: Formula,
}

/// The amount overrides are a percentage of.
struct OverrideBase {
    /// The partner's credited amount.
    credited: Money,
    /// The same for the whole conversion, when `credited` is it times the weight (then each
    /// override is the partner's part of the whole conversion's override).
    whole: Option<Money>,
    /// Its description.
    text: String,
}

/// What a payable rule computed.
struct Pay {
    drafts: Vec<Draft>,
    /// Credited volume added to the rule's period totals.
    volume: Decimal,
    /// The base overrides apply to; `None` to fall back to the conversion's gross or net.
    override_base: Option<OverrideBase>,
    /// The customer's net revenue position after the report (net revenue shares only).
    net_revenue: Option<NetRevenuePosition>,
    /// Under a ringfenced plan, the brand the position is of.
    net_revenue_brand: Option<String>,
}

enum Outcome {
    NotPayable(NotPayable),
    Pay(Pay),
}

impl Pay {
    fn single(draft: Draft, override_base: Option<OverrideBase>) -> Outcome {
        Outcome::Pay(Pay {
            drafts: vec![draft],
            volume: Decimal::ZERO,
            override_base,
            net_revenue: None,
            net_revenue_brand: None,
        })
    }
}

impl<'a> Cx<'a> {
    fn new(
        plan: &'a PlanVersion,
        state: &'a PartnerState,
        facts: &'a ConversionFacts,
    ) -> Result<Cx<'a>, EngineError> {
        let currency = plan.payout_currency;
        if let (Some(rate), Some(from)) = (facts.fx_rate, facts.currency()) {
            if from == currency && rate != Decimal::ONE {
                return Err(FactsError::UnexpectedFxRate { rate, currency }.into());
            }
        }
        Ok(Cx {
            plan,
            facts,
            customer: state.customer(&facts.customer_id),
            state,
            period: Period::of(facts.occurred_at),
            month_index: customer_month_index(state, facts)?,
            currency,
        })
    }

    fn first_paid_invoice_effect(&self) -> Option<DateTime<Utc>> {
        let recorded = self.customer.and_then(|c| c.first_paid_invoice_at);
        (self.facts.kind.is_paid_invoice() && recorded.is_none()).then_some(self.facts.occurred_at)
    }

    fn weight(&self) -> Decimal {
        self.facts.weight
    }

    fn zero(&self) -> Money {
        Money::zero(self.currency)
    }

    fn period_totals(&self, rule: &Rule) -> PeriodTotals {
        self.state
            .period_totals(self.period, &rule.id)
            .cloned()
            .unwrap_or_else(|| PeriodTotals::zero(self.currency))
    }

    /// `amount` in the payout currency, with the rate used when it had to be converted.
    fn to_payout(&self, amount: Money) -> Result<(Money, Option<Decimal>), EngineError> {
        if amount.currency() == self.currency {
            return Ok((amount, None));
        }
        let rate = self.facts.fx_rate.ok_or(EngineError::FxRateMissing {
            from: amount.currency(),
            to: self.currency,
            date: self.facts.occurred_at.date_naive(),
        })?;
        let converted = amount
            .amount()
            .checked_mul(rate)
            .ok_or(EngineError::Overflow)?;
        Ok((Money::new(converted.normalize(), self.currency), Some(rate)))
    }

    fn revenue(&self, rule: &Rule, base: Base) -> Result<Revenue, EngineError> {
        let (source, field) = match base {
            Base::Gross => (self.facts.gross, "gross"),
            Base::Net => (self.facts.net, "net"),
        };
        let source = source.ok_or_else(|| missing(rule, field))?;
        self.revenue_of(base, source)
    }

    fn revenue_of(&self, base: Base, source: Money) -> Result<Revenue, EngineError> {
        let (payout, fx_rate) = self.to_payout(source)?;
        let credited = payout.checked_mul(self.weight())?;
        Ok(Revenue {
            base,
            source,
            fx_rate,
            payout,
            credited,
        })
    }

    /// "net 90.00 USD sale (80.00 EUR at 1.125)".
    fn describe(&self, r: &Revenue) -> String {
        let net = match r.base {
            Base::Gross => "",
            Base::Net => "net ",
        };
        let fx = r
            .fx_rate
            .map(|rate| format!(" ({} at {})", r.source, rate.normalize()))
            .unwrap_or_default();
        format!("{net}{} {}{fx}", r.payout, self.facts.kind)
    }

    /// The description of the credited amount: the revenue and the weight applied to it.
    fn describe_credited(&self, r: &Revenue) -> String {
        format!("{}{}", self.describe(r), self.weight_text())
    }

    /// " × attribution weight 0.5", or nothing for a whole conversion.
    fn weight_text(&self) -> String {
        if self.weight() == Decimal::ONE {
            String::new()
        } else {
            format!(" × attribution weight {}", self.weight().normalize())
        }
    }

    fn formula(&self, reward: RewardKind) -> Formula {
        let mut f = Formula::new(reward, self.facts.kind, self.weight(), self.currency);
        f.month_index = self.month_index;
        f
    }

    fn with_revenue(&self, f: &mut Formula, r: &Revenue) {
        f.source_amount = Some(r.source);
        f.fx_rate = r.fx_rate;
        f.base = Some(r.payout);
        f.credited_base = Some(r.credited);
    }

    /// The override base of a revenue amount: the partner's credited share of it.
    fn override_base(&self, r: &Revenue) -> OverrideBase {
        OverrideBase {
            credited: r.credited,
            whole: Some(r.payout),
            text: self.describe_credited(r),
        }
    }

    /// A line linear in the attribution weight: `exact` is the partner's amount, `whole_exact`
    /// computes the whole conversion's. Without a split the partner's amount is rounded on its
    /// own (and the whole is never computed); with one, the whole is rounded once and allocated
    /// over every credited partner's weight by largest remainder, and the partner's part is the
    /// line (see [`crate::Split`]).
    fn finish_linear(
        &self,
        kind: LineKind,
        mut formula: Formula,
        exact: Money,
        whole_exact: impl FnOnce() -> Result<Money, EngineError>,
    ) -> Result<Draft, EngineError> {
        let Some(split) = &self.facts.split else {
            return Ok(finish(kind, formula, exact));
        };
        let whole_exact = whole_exact()?;
        let whole = round(whole_exact);
        let part = pl_money::allocate(whole, &split.weights)?
            .get(split.index)
            .copied()
            .ok_or(FactsError::BadSplit(
                "index does not name the partner's weight",
            ))?;
        // The weights themselves go with the line's inputs: sixteen of them would not fit the
        // ledger's bound on an explanation line.
        formula.text.push_str(&format!(
            "; part {} of {} of {whole} for the whole conversion (largest remainder by weight) = {part}",
            split.index + 1,
            split.weights.len(),
        ));
        formula.exact = exact;
        formula.rounded = part;
        formula.split = Some(Box::new(SplitPart {
            whole_exact,
            whole,
            weights: split.weights.clone(),
            index: split.index,
            part,
        }));
        Ok(Draft {
            kind,
            amount: part,
            formula,
        })
    }

    /// The override base for rules without a revenue base: the conversion's gross, else net.
    fn fallback_override_base(&self) -> Result<Option<OverrideBase>, EngineError> {
        let source = match (self.facts.gross, self.facts.net) {
            (Some(gross), _) => Some((Base::Gross, gross)),
            (None, Some(net)) => Some((Base::Net, net)),
            (None, None) => None,
        };
        source
            .map(|(base, amount)| Ok(self.override_base(&self.revenue_of(base, amount)?)))
            .transpose()
    }
}

fn missing(rule: &Rule, field: &'static str) -> EngineError {
    EngineError::MissingInput {
        rule: rule.id.clone(),
        field,
    }
}

fn round(m: Money) -> Money {
    m.round(RoundingMode::HalfEven)
}

/// Sets the exact result and its one rounding.
fn finish(kind: LineKind, mut formula: Formula, exact: Money) -> Draft {
    let rounded = round(exact);
    formula.exact = exact;
    formula.rounded = rounded;
    Draft {
        kind,
        amount: rounded,
        formula,
    }
}

fn min_money(a: Money, b: Money) -> Result<Money, EngineError> {
    Ok(if a.checked_cmp(b)?.is_le() { a } else { b })
}

fn max_money(a: Money, b: Money) -> Result<Money, EngineError> {
    Ok(if a.checked_cmp(b)?.is_ge() { a } else { b })
}

fn non_zero(m: Money) -> Option<Money> {
    (!m.is_zero()).then_some(m)
}

fn compute(cx: &Cx<'_>, rule: &Rule) -> Result<Outcome, EngineError> {
    match &rule.reward {
        Reward::Flat(flat) => {
            let mut f = cx.formula(RewardKind::Flat);
            f.flat = Some(*flat);
            f.text = format!("flat {flat} per {}{}", cx.facts.kind, cx.weight_text());
            let exact = flat.checked_mul(cx.weight())?;
            let draft = cx.finish_linear(LineKind::Base, f, exact, || Ok(*flat))?;
            Ok(Pay::single(draft, None))
        }
        Reward::PercentOfGross(rate) => {
            percent_of(cx, rule, *rate, Base::Gross, RewardKind::PercentOfGross, "")
        }
        Reward::PercentOfNet(rate) => {
            percent_of(cx, rule, *rate, Base::Net, RewardKind::PercentOfNet, "")
        }
        Reward::Hybrid { flat, percent, of } => {
            let r = cx.revenue(rule, *of)?;
            let mut f = cx.formula(RewardKind::Hybrid);
            cx.with_revenue(&mut f, &r);
            f.flat = Some(*flat);
            f.rate = Some(*percent);
            f.text = format!(
                "({flat} + {percent} of {}){}",
                cx.describe(&r),
                cx.weight_text()
            );
            let exact = flat
                .checked_mul(cx.weight())?
                .checked_add(percent.of(r.credited)?)?;
            let whole = || Ok(flat.checked_add(percent.of(r.payout)?)?);
            let draft = cx.finish_linear(LineKind::Base, f, exact, whole)?;
            Ok(Pay::single(draft, Some(cx.override_base(&r))))
        }
        Reward::FirstYearPercent { percent, of } => match cx.month_index {
            None => Ok(Outcome::NotPayable(NotPayable::NoPaidInvoice)),
            Some(month_index) if month_index > 12 => {
                Ok(Outcome::NotPayable(NotPayable::OutsideFirstYear {
                    month_index,
                }))
            }
            Some(month) => {
                let prefix = format!("first year, month {month} of 12: ");
                percent_of(
                    cx,
                    rule,
                    *percent,
                    *of,
                    RewardKind::FirstYearPercent,
                    &prefix,
                )
            }
        },
        Reward::Recurring {
            schedule,
            duration,
            of,
        } => recurring(cx, rule, schedule, *duration, *of),
        Reward::TieredVolume { basis, mode, tiers } => tiered(cx, rule, *basis, *mode, tiers),
        Reward::PerLot(per_lot) => {
            let lots = cx.facts.lots.ok_or_else(|| missing(rule, "lots"))?;
            let mut f = cx.formula(RewardKind::PerLot);
            f.per_unit = Some(*per_lot);
            f.units = Some(lots);
            f.text = format!(
                "{per_lot} per lot × {} lots{}",
                lots.normalize(),
                cx.weight_text()
            );
            let whole = per_lot.checked_mul(lots)?;
            let exact = whole.checked_mul(cx.weight())?;
            let draft = cx.finish_linear(LineKind::Base, f, exact, || Ok(whole))?;
            Ok(Pay::single(draft, None))
        }
        Reward::ResellerMargin => reseller_margin(cx, rule),
        Reward::NetRevenueShare(rate) => net_revenue_share(cx, rule, *rate),
    }
}

fn percent_of(
    cx: &Cx<'_>,
    rule: &Rule,
    rate: Percent,
    base: Base,
    reward: RewardKind,
    prefix: &str,
) -> Result<Outcome, EngineError> {
    let r = cx.revenue(rule, base)?;
    let mut f = cx.formula(reward);
    cx.with_revenue(&mut f, &r);
    f.rate = Some(rate);
    f.text = format!("{prefix}{rate} of {}{}", cx.describe(&r), cx.weight_text());
    let exact = rate.of(r.credited)?;
    let draft = cx.finish_linear(LineKind::Base, f, exact, || Ok(rate.of(r.payout)?))?;
    Ok(Pay::single(draft, Some(cx.override_base(&r))))
}

fn recurring(
    cx: &Cx<'_>,
    rule: &Rule,
    schedule: &[ScheduleStep],
    duration: RecurringDuration,
    of: Base,
) -> Result<Outcome, EngineError> {
    let churned = cx
        .customer
        .and_then(|c| c.churned_at)
        .filter(|at| *at <= cx.facts.occurred_at);
    if let Some(churned_at) = churned {
        return Ok(Outcome::NotPayable(NotPayable::CustomerChurned {
            churned_at,
        }));
    }
    let Some(month_index) = cx.month_index else {
        return Ok(Outcome::NotPayable(NotPayable::NoPaidInvoice));
    };
    if let RecurringDuration::Months(months) = duration {
        if month_index > months {
            return Ok(Outcome::NotPayable(NotPayable::RecurringEnded {
                month_index,
            }));
        }
    }
    let step = schedule
        .iter()
        .find(|s| s.from_month <= month_index && s.to_month.is_none_or(|to| month_index <= to));
    let Some(step) = step else {
        return Ok(Outcome::NotPayable(NotPayable::NoScheduleStep {
            month_index,
        }));
    };
    let prefix = match duration {
        RecurringDuration::Months(months) => {
            format!("recurring, month {month_index} of {months}: ")
        }
        RecurringDuration::Lifetime => {
            format!("recurring, month {month_index} while the customer stays: ")
        }
    };
    percent_of(cx, rule, step.percent, of, RewardKind::Recurring, &prefix)
}

/// The index of the tier `volume` reaches: the last whose threshold it meets.
fn tier_index(tiers: &[Tier], volume: Decimal) -> usize {
    tiers
        .iter()
        .rposition(|t| t.from <= volume)
        .unwrap_or_default()
}

fn tier_at<'t>(rule: &Rule, tiers: &'t [Tier], index: usize) -> Result<&'t Tier, EngineError> {
    tiers.get(index).ok_or_else(|| {
        EngineError::InvalidPlan(PlanError::EmptyTiers {
            rule: rule.id.clone(),
        })
    })
}

/// The price of `quantity` units (or payout-currency revenue) at a tier.
fn price_of(
    price: &TierPrice,
    quantity: Decimal,
    currency: Currency,
) -> Result<Money, EngineError> {
    Ok(match price {
        TierPrice::Percent(rate) => rate.of(Money::new(quantity, currency))?,
        TierPrice::PerUnit(amount) => amount.checked_mul(quantity)?,
    })
}

fn describe_price(price: &TierPrice, basis: VolumeBasis) -> String {
    match (price, basis) {
        (TierPrice::Percent(rate), _) => rate.to_string(),
        (TierPrice::PerUnit(amount), VolumeBasis::Lots) => format!("{amount} per lot"),
        (TierPrice::PerUnit(amount), _) => format!("{amount} per conversion"),
    }
}

fn set_price(f: &mut Formula, price: &TierPrice) {
    match price {
        TierPrice::Percent(rate) => f.rate = Some(*rate),
        TierPrice::PerUnit(amount) => f.per_unit = Some(*amount),
    }
}

fn tiered(
    cx: &Cx<'_>,
    rule: &Rule,
    basis: VolumeBasis,
    mode: TierMode,
    tiers: &[Tier],
) -> Result<Outcome, EngineError> {
    // The partner's credited volume, and the whole conversion's (weight 1).
    let (volume, whole_volume, revenue, units) = match basis {
        VolumeBasis::Gross | VolumeBasis::Net => {
            let base = if basis == VolumeBasis::Gross {
                Base::Gross
            } else {
                Base::Net
            };
            let r = cx.revenue(rule, base)?;
            (r.credited.amount(), r.payout.amount(), Some(r), None)
        }
        VolumeBasis::Count => (cx.weight(), Decimal::ONE, None, Some(Decimal::ONE)),
        VolumeBasis::Lots => {
            let lots = cx.facts.lots.ok_or_else(|| missing(rule, "lots"))?;
            let credited = lots.checked_mul(cx.weight()).ok_or(EngineError::Overflow)?;
            (credited, lots, None, Some(lots))
        }
    };
    let totals = cx.period_totals(rule);
    let before = totals.volume;
    let after = before.checked_add(volume).ok_or(EngineError::Overflow)?;
    let reward = match mode {
        TierMode::Tiered => RewardKind::Tiered,
        TierMode::Ladder => RewardKind::Ladder,
    };
    let mut f = cx.formula(reward);
    if let Some(r) = &revenue {
        cx.with_revenue(&mut f, r);
    }
    f.units = units;
    let what = match &revenue {
        Some(r) => cx.describe(r),
        None => match basis {
            VolumeBasis::Lots => format!("{} lots", units.unwrap_or_default().normalize()),
            _ => format!("1 {}", cx.facts.kind),
        },
    };
    let period_text = format!(
        "{} volume {} → {}",
        cx.period,
        before.normalize(),
        after.normalize()
    );
    let mut drafts = Vec::with_capacity(2);
    match mode {
        TierMode::Tiered => {
            let previous_index = tier_index(tiers, before);
            let index = tier_index(tiers, after);
            let tier = tier_at(rule, tiers, index)?;
            set_price(&mut f, &tier.price);
            f.tier = Some(TierReached {
                index,
                from: tier.from,
                price: tier.price.clone(),
                previous_index,
                volume_before: before,
                volume_after: after,
            });
            f.text = format!(
                "tier {} (from {}): {} of {what}{}; {period_text}",
                index + 1,
                tier.from.normalize(),
                describe_price(&tier.price, basis),
                cx.weight_text()
            );
            let top_up_formula = f.clone();
            let exact = price_of(&tier.price, volume, cx.currency)?;
            let whole = || price_of(&tier.price, whole_volume, cx.currency);
            drafts.push(cx.finish_linear(LineKind::Base, f, exact, whole)?);
            if index > previous_index && before > Decimal::ZERO {
                let target_exact = price_of(&tier.price, before, cx.currency)?;
                let top_up = round(target_exact).checked_sub(totals.earned)?;
                if top_up.is_positive() {
                    let mut f = top_up_formula;
                    f.source_amount = None;
                    f.fx_rate = None;
                    f.base = revenue.as_ref().map(|_| Money::new(before, cx.currency));
                    f.credited_base = f.base;
                    f.units = (revenue.is_none()).then_some(before);
                    f.weight = Decimal::ONE;
                    f.text = format!(
                        "top-up of {} earlier volume {} to tier {} ({}): {} at the new rate − {} already earned",
                        cx.period,
                        before.normalize(),
                        index + 1,
                        describe_price(&tier.price, basis),
                        round(target_exact),
                        totals.earned
                    );
                    let exact = target_exact.checked_sub(totals.earned)?;
                    let mut draft = finish(LineKind::TierTopUp, f, exact);
                    // The top-up is the difference of the rounded target and the rounded
                    // earnings, so earlier rounding is corrected, never compounded.
                    draft.amount = top_up;
                    draft.formula.rounded = top_up;
                    drafts.push(draft);
                }
            }
        }
        TierMode::Ladder => {
            let mut exact = cx.zero();
            let mut parts = Vec::new();
            for (index, tier) in tiers.iter().enumerate() {
                let upper = tiers.get(index + 1).map(|t| t.from);
                let low = tier.from.max(before);
                let high = upper.map_or(after, |u| u.min(after));
                if high <= low {
                    continue;
                }
                let inside = high.checked_sub(low).ok_or(EngineError::Overflow)?;
                exact = exact.checked_add(price_of(&tier.price, inside, cx.currency)?)?;
                parts.push(format!(
                    "{} at {}",
                    inside.normalize(),
                    describe_price(&tier.price, basis)
                ));
                f.bands.push(BandShare {
                    index,
                    from: tier.from,
                    to: upper,
                    volume: inside,
                    price: tier.price.clone(),
                });
            }
            f.text = format!(
                "ladder: {} of {what}{}; {period_text}",
                parts.join(" + "),
                cx.weight_text()
            );
            drafts.push(finish(LineKind::Base, f, exact));
        }
    }
    let override_base = revenue.map(|r| cx.override_base(&r));
    Ok(Outcome::Pay(Pay {
        drafts,
        volume,
        override_base,
        net_revenue: None,
        net_revenue_brand: None,
    }))
}

fn reseller_margin(cx: &Cx<'_>, rule: &Rule) -> Result<Outcome, EngineError> {
    let pricing = cx
        .facts
        .reseller
        .as_ref()
        .ok_or_else(|| missing(rule, "reseller"))?;
    let unit_margin = pricing.list_price.checked_sub(pricing.partner_price)?;
    let margin = unit_margin.checked_mul(Decimal::from(pricing.quantity))?;
    let (payout, fx_rate) = cx.to_payout(margin)?;
    let credited = payout.checked_mul(cx.weight())?;
    let mut f = cx.formula(RewardKind::ResellerMargin);
    f.source_amount = Some(margin);
    f.fx_rate = fx_rate;
    f.base = Some(payout);
    f.credited_base = Some(credited);
    f.units = Some(Decimal::from(pricing.quantity));
    let fx = fx_rate
        .map(|rate| format!(" at {}", rate.normalize()))
        .unwrap_or_default();
    f.text = format!(
        "margin ({} list − {} partner price) × {} units{fx}{}",
        pricing.list_price,
        pricing.partner_price,
        pricing.quantity,
        cx.weight_text()
    );
    let draft = cx.finish_linear(LineKind::Base, f, credited, || Ok(payout))?;
    Ok(Pay::single(draft, None))
}

fn net_revenue_share(cx: &Cx<'_>, rule: &Rule, rate: Percent) -> Result<Outcome, EngineError> {
    let r = cx.revenue(rule, Base::Net)?;
    let zero = cx.zero();
    let fresh = NetRevenuePosition {
        period: cx.period,
        carry_in: zero,
        net: zero,
        paid: zero,
        recovered: zero,
    };
    // A ringfenced plan keeps each brand's position apart.
    let brand = (cx.plan.net_revenue_policy == NetRevenuePolicy::Ringfenced)
        .then(|| cx.facts.brand.clone().unwrap_or_default());
    let stored = match &brand {
        Some(brand) => cx.customer.and_then(|c| c.net_revenue_by_brand.get(brand)),
        None => cx.customer.and_then(|c| c.net_revenue.as_ref()),
    };
    let position = match stored {
        None => fresh,
        Some(p) if p.period == cx.period => p.clone(),
        Some(p) if p.period < cx.period => {
            let carry_in = match cx.plan.net_revenue_policy {
                NetRevenuePolicy::CarryForwardNegative | NetRevenuePolicy::Ringfenced => {
                    min_money(p.carry_in.checked_add(p.net)?, zero)?
                }
                NetRevenuePolicy::ResetEachPeriod => zero,
            };
            NetRevenuePosition { carry_in, ..fresh }
        }
        Some(_) => {
            return Err(EngineError::OutOfOrder {
                at: cx.facts.occurred_at,
                reason: "net revenue report for a period before one already reported",
            })
        }
    };
    let net_after = position.net.checked_add(r.credited)?;
    let positive_before = max_money(position.carry_in.checked_add(position.net)?, zero)?;
    let positive_after = max_money(position.carry_in.checked_add(net_after)?, zero)?;
    let share_before = round(rate.of(positive_before)?);
    let share_after = round(rate.of(positive_after)?);
    let mut f = cx.formula(RewardKind::NetRevenueShare);
    cx.with_revenue(&mut f, &r);
    f.rate = Some(rate);
    let of_brand = match &brand {
        Some(b) if !b.is_empty() => format!(" of brand {b}"),
        _ => String::new(),
    };
    f.text = format!(
        "{rate} of positive net revenue{of_brand} for {}: carried {} + period {} → {} after {}{}; share {} − {} already accrued",
        cx.period,
        position.carry_in,
        position.net,
        net_after,
        cx.describe(&r),
        cx.weight_text(),
        share_after,
        share_before
    );
    f.net_revenue = Some(NetRevenueShareCalc {
        carry_in: position.carry_in,
        period_net_before: position.net,
        period_net_after: net_after,
        share_before,
        share_after,
        not_clawed_back: None,
    });
    let exact = rate.of(positive_after.checked_sub(positive_before)?)?;
    let mut draft = finish(LineKind::Base, f, exact);
    // The line is the difference of the rounded shares: a period's lines sum exactly to the
    // rounded share of its final total.
    let line = share_after.checked_sub(share_before)?;
    draft.amount = line;
    draft.formula.rounded = line;
    let override_base = OverrideBase {
        credited: positive_after.checked_sub(positive_before)?,
        whole: None,
        text: format!("the change in positive net revenue for {}", cx.period),
    };
    Ok(Outcome::Pay(Pay {
        drafts: vec![draft],
        volume: Decimal::ZERO,
        override_base: Some(override_base),
        net_revenue: Some(NetRevenuePosition {
            net: net_after,
            ..position
        }),
        net_revenue_brand: brand,
    }))
}

/// Applies caps, CPA recovery and net revenue clawback limits, adds overrides and effects.
fn settle(
    cx: &Cx<'_>,
    rule: &Rule,
    mut pay: Pay,
    accrual: &mut Accrual,
) -> Result<(), EngineError> {
    let zero = cx.zero();
    let totals = cx.period_totals(rule);
    let mut accrued = totals.accrued;
    let mut earned_delta = zero;
    let mut accrued_delta = zero;
    let recover = cx.plan.cpa_recovery && rule.reward.is_revenue_share();
    let outstanding_before = cx.customer.and_then(|c| c.cpa_outstanding);
    let mut outstanding = outstanding_before.unwrap_or(zero);
    for draft in &mut pay.drafts {
        earned_delta = earned_delta.checked_add(draft.amount)?;
        if draft.amount.is_positive() {
            apply_caps(rule, draft, accrued)?;
            accrued = accrued.checked_add(draft.amount)?;
            accrued_delta = accrued_delta.checked_add(draft.amount)?;
            if recover && outstanding.is_positive() && draft.amount.is_positive() {
                let recovered = min_money(draft.amount, outstanding)?;
                draft.amount = draft.amount.checked_sub(recovered)?;
                outstanding = outstanding.checked_sub(recovered)?;
                draft.formula.cpa_recovered = Some(recovered);
                draft.formula.text.push_str(&format!(
                    "; {recovered} applied to CPA recovery, {outstanding} still to recover"
                ));
                if let Some(position) = &mut pay.net_revenue {
                    position.recovered = position.recovered.checked_add(recovered)?;
                }
            }
            if let Some(position) = &mut pay.net_revenue {
                position.paid = position.paid.checked_add(draft.amount)?;
            }
        } else if let (true, Some(position)) = (draft.amount.is_negative(), &mut pay.net_revenue) {
            // Only a net revenue share goes negative: claw back what the period's lines paid,
            // then undo CPA recovery, and never more.
            let wanted = draft.amount;
            let clawed = max_money(wanted, -position.paid)?;
            let rest = clawed.checked_sub(wanted)?;
            let restored = if recover {
                min_money(rest, position.recovered)?
            } else {
                zero
            };
            let not_clawed = rest.checked_sub(restored)?;
            position.paid = position.paid.checked_add(clawed)?;
            position.recovered = position.recovered.checked_sub(restored)?;
            outstanding = outstanding.checked_add(restored)?;
            draft.amount = clawed;
            draft.formula.cpa_restored = non_zero(restored);
            if let Some(calc) = &mut draft.formula.net_revenue {
                calc.not_clawed_back = non_zero(not_clawed);
            }
            if !restored.is_zero() {
                draft.formula.text.push_str(&format!(
                    "; {restored} of CPA recovery undone, {outstanding} to recover"
                ));
            }
            if !not_clawed.is_zero() {
                draft
                    .formula
                    .text
                    .push_str(&format!("; {not_clawed} not clawed back (never paid)"));
            }
            let change = clawed.checked_sub(restored)?;
            accrued = accrued.checked_add(change)?;
            accrued_delta = accrued_delta.checked_add(change)?;
        }
    }
    if cx.plan.cpa_recovery && matches!(rule.reward, Reward::Flat(_)) {
        for draft in &pay.drafts {
            outstanding = outstanding.checked_add(draft.amount)?;
        }
    }
    let partner_id = cx.facts.partner_id;
    accrual.lines = pay
        .drafts
        .into_iter()
        .map(|d| AccrualLine {
            partner_id,
            amount: d.amount,
            kind: d.kind,
            rule_id: rule.id.clone(),
            formula: d.formula,
        })
        .collect();
    overrides(cx, rule, pay.override_base, &mut accrual.lines)?;

    let effects = &mut accrual.effects;
    if cx.customer.and_then(|c| c.locked_version) != Some(cx.plan.version) {
        effects.lock_version = Some(cx.plan.version);
    }
    effects.period = Some(PeriodDelta {
        period: cx.period,
        rule_id: rule.id.clone(),
        volume: pay.volume,
        earned: earned_delta,
        accrued: accrued_delta,
    });
    effects.net_revenue = pay.net_revenue;
    effects.net_revenue_brand = pay.net_revenue_brand;
    if outstanding != outstanding_before.unwrap_or(zero) {
        effects.cpa_outstanding = Some(outstanding);
    }
    Ok(())
}

/// Reduces a positive draft to the rule's caps; `accrued` is what the rule accrued in the
/// period before it.
fn apply_caps(rule: &Rule, draft: &mut Draft, accrued: Money) -> Result<(), EngineError> {
    let zero = Money::zero(accrued.currency());
    let mut limits = Vec::with_capacity(2);
    if draft.kind == LineKind::Base {
        if let Some(cap) = rule.cap_per_conversion {
            limits.push((CapKind::PerConversion, cap, cap));
        }
    }
    if let Some(cap) = rule.cap_per_period {
        let room = max_money(cap.checked_sub(accrued)?, zero)?;
        limits.push((CapKind::PerPeriod, cap, room));
    }
    for (cap, limit, room) in limits {
        if draft.amount.checked_cmp(room)?.is_gt() {
            let reduced_by = draft.amount.checked_sub(room)?;
            draft.amount = room;
            draft.formula.caps.push(CapApplied {
                cap,
                limit,
                reduced_by,
            });
            let what = match cap {
                CapKind::PerConversion => "per conversion",
                CapKind::PerPeriod => "per period",
            };
            draft.formula.text.push_str(&format!(
                "; capped at {limit} {what}, {reduced_by} not paid"
            ));
        }
    }
    Ok(())
}

fn overrides(
    cx: &Cx<'_>,
    rule: &Rule,
    base: Option<OverrideBase>,
    lines: &mut Vec<AccrualLine>,
) -> Result<(), EngineError> {
    if cx.plan.overrides.is_empty() || cx.facts.upline.is_empty() {
        return Ok(());
    }
    let base = match base {
        Some(base) => Some(base),
        None => cx.fallback_override_base()?,
    };
    let Some(base) = base else {
        return Ok(());
    };
    for (index, (rate, parent)) in cx.plan.overrides.iter().zip(&cx.facts.upline).enumerate() {
        let level = u8::try_from(index + 1).map_err(|_| EngineError::Overflow)?;
        let mut f = cx.formula(RewardKind::Override);
        f.rate = Some(*rate);
        f.credited_base = Some(base.credited);
        f.text = format!(
            "level {level} override: {rate} of {} credited to partner {}",
            base.text, cx.facts.partner_id
        );
        let kind = LineKind::Override { level };
        let exact = rate.of(base.credited)?;
        let draft = match base.whole {
            Some(whole) => cx.finish_linear(kind, f, exact, || Ok(rate.of(whole)?))?,
            None => finish(kind, f, exact),
        };
        if draft.amount.is_zero() {
            continue;
        }
        lines.push(AccrualLine {
            partner_id: *parent,
            amount: draft.amount,
            kind: draft.kind,
            rule_id: rule.id.clone(),
            formula: draft.formula,
        });
    }
    Ok(())
}
