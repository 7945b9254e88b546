//! What each partner earned over the year, computed from the plan terms and the scenario's
//! facts by plain decimal arithmetic — no engine, no service. The end-to-end tests compare the
//! services' balances (pending + payable + paid) with these figures.

use std::collections::BTreeMap;

use pl_money::Decimal;

fn d(s: &str) -> Decimal {
    // The literals below are valid decimals; a typo fails every test loudly at once.
    Decimal::from_str_exact(s).unwrap_or(Decimal::MIN)
}

fn pct(rate: &str, of: &str) -> Decimal {
    d(rate) * d(of) / d("100")
}

/// Tiered lots (the rate reached by the month's volume applies to all of it): $5 per lot,
/// $7 from 100 lots in the calendar month.
fn tiered_lots(lots: &str) -> Decimal {
    let l = d(lots);
    let rate = if l >= d("100") { d("7") } else { d("5") };
    l * rate
}

/// Earned per partner name, net of every reversal, in USD.
pub fn earned() -> BTreeMap<&'static str, Decimal> {
    let mut e = BTreeMap::new();
    // Affiliate: $50 per sale; two sales, the first charged back after it was paid out.
    e.insert("affiliate", d("50") + d("50") - d("50"));
    // Referral: 20 % of the customer's invoices in the 12 months from its first paid invoice;
    // $100 invoices in months 1 to 12, all in the first year.
    e.insert("referral", pct("20", "100") * d("12"));
    // Outsourcing: 15 % of every invoice for the customer's lifetime; $1,000 invoices in months
    // 1 to 8, churn in month 8, and the invoice of month 9 (after the churn) earns nothing.
    e.insert("outsourcing", pct("15", "1000") * d("8"));
    // Reseller: (list price − partner price) × quantity = (1,200 − 1,000) × 2.
    e.insert("reseller", (d("1200") - d("1000")) * d("2"));
    // Influencer: a $2,000 campaign fee, and $25 + 10 % per sale: $500 (75) and $300 (55);
    // a 25 % refund of the $500 sale reverses 25 % of its commission (18.75).
    e.insert(
        "influencer",
        d("2000") + (d("25") + pct("10", "500")) + (d("25") + pct("10", "300"))
            - (d("25") + pct("10", "500")) * d("0.25"),
    );
    // Introducing broker: tiered lots in March, 60 + 50 = 110 lots ⇒ $7 on all 110; plus the
    // 10 % level-1 override on its sub-IB's $300 of trade revenue.
    e.insert("ib", tiered_lots("110") + pct("10", "300"));
    // Sub-IB: 30 lots in March, under the 100-lot tier: $5 each.
    e.insert("sub-ib", tiered_lots("30"));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_figures_are_what_the_plan_terms_say() {
        let e = earned();
        assert_eq!(e["affiliate"], d("50"));
        assert_eq!(e["referral"], d("240"));
        assert_eq!(e["outsourcing"], d("1200"));
        assert_eq!(e["reseller"], d("400"));
        assert_eq!(e["influencer"], d("2111.25"));
        assert_eq!(e["ib"], d("800"));
        assert_eq!(e["sub-ib"], d("150"));
    }
}
