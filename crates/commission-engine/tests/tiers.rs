//! Volume tiers over the calendar month: tiered with top-ups, ladders, lots and counts.

mod common;

use common::*;
use pl_commission_engine::*;

fn revenue_tiers(mode: TierMode) -> PlanVersion {
    plan(vec![rule(
        "volume",
        Reward::TieredVolume {
            basis: VolumeBasis::Gross,
            mode,
            tiers: vec![
                Tier {
                    from: d("0"),
                    price: TierPrice::Percent(pct("5")),
                },
                Tier {
                    from: d("1000"),
                    price: TierPrice::Percent(pct("10")),
                },
            ],
        },
    )])
}

fn lot_tiers(mode: TierMode) -> PlanVersion {
    plan(vec![rule(
        "rebate",
        Reward::TieredVolume {
            basis: VolumeBasis::Lots,
            mode,
            tiers: vec![
                Tier {
                    from: d("0"),
                    price: TierPrice::PerUnit(usd("5.00")),
                },
                Tier {
                    from: d("10"),
                    price: TierPrice::PerUnit(usd("7.00")),
                },
            ],
        },
    )])
}

/// Sales of $600, $600 and $300 in March 2025; all lines of each.
fn march_sales(h: &mut History) -> Vec<Vec<String>> {
    [("600.00", 1), ("600.00", 2), ("300.00", 3)]
        .iter()
        .enumerate()
        .map(|(i, (gross, day))| {
            amounts(
                &h.accrue(&sale(i as u128, usd(gross), at(2025, 3, *day)))
                    .lines,
            )
        })
        .collect()
}

#[test]
fn crossing_a_tier_tops_up_the_months_earlier_accruals_to_the_new_rate() {
    // Given 5% up to $1,000 of monthly volume and 10% from there, in tiered mode
    let mut h = History::new(revenue_tiers(TierMode::Tiered));

    // When $600, $600 and $300 sales are accrued in one month
    let lines = march_sales(&mut h);

    // Then the second sale crosses the tier: it pays 10% and tops up the first by $30; the
    // month ends at 10% of the whole $1,500
    assert_eq!(
        lines,
        [
            vec!["30.00 USD"],
            vec!["60.00 USD", "30.00 USD"],
            vec!["30.00 USD"]
        ]
    );
    let totals = h
        .state
        .period_totals("2025-03".parse().unwrap(), "volume")
        .unwrap();
    assert_eq!(
        (totals.volume, totals.earned),
        (d("1500.00"), usd("150.00"))
    );
}

#[test]
fn a_top_up_line_explains_itself() {
    let mut h = History::new(revenue_tiers(TierMode::Tiered));
    h.accrue(&sale(1, usd("600.00"), at(2025, 3, 1)));
    let crossing = h.accrue(&sale(2, usd("600.00"), at(2025, 3, 2)));
    let base = &crossing.lines[0].formula;
    let top_up = &crossing.lines[1].formula;
    assert_eq!(
        base.text,
        "tier 2 (from 1000): 10% of 600.00 USD sale; 2025-03 volume 600 → 1200"
    );
    let tier = base.tier.as_ref().unwrap();
    assert_eq!((tier.previous_index, tier.index), (0, 1));
    assert_eq!(crossing.lines[1].kind, LineKind::TierTopUp);
    assert_eq!(
        top_up.text,
        "top-up of 2025-03 earlier volume 600 to tier 2 (10%): 60.00 USD at the new rate − 30.00 USD already earned"
    );
}

#[test]
fn a_ladder_pays_each_bands_rate_only_on_the_volume_inside_the_band() {
    // Given the same tiers in ladder mode
    let mut h = History::new(revenue_tiers(TierMode::Ladder));

    // When the same sales are accrued
    let lines = march_sales(&mut h);

    // Then the second sale pays $400 at 5% and $200 at 10%, with no top-up; the month ends at
    // 5% of $1,000 plus 10% of $500
    assert_eq!(
        lines,
        [vec!["30.00 USD"], vec!["40.00 USD"], vec!["30.00 USD"]]
    );
    let crossing = h.accrue(&sale(9, usd("0.00"), at(2025, 3, 4)));
    assert_eq!(amounts(&crossing.lines), ["0.00 USD"]);
}

#[test]
fn a_ladder_line_lists_its_bands() {
    let mut h = History::new(revenue_tiers(TierMode::Ladder));
    h.accrue(&sale(1, usd("600.00"), at(2025, 3, 1)));
    let crossing = h.accrue(&sale(2, usd("600.00"), at(2025, 3, 2)));
    let f = &crossing.lines[0].formula;
    assert_eq!(
        f.text,
        "ladder: 400 at 5% + 200 at 10% of 600.00 USD sale; 2025-03 volume 600 → 1200"
    );
    let bands: Vec<_> = f.bands.iter().map(|b| (b.index, b.volume)).collect();
    assert_eq!(bands, [(0, d("400.00")), (1, d("200.00"))]);
}

#[test]
fn volume_starts_again_each_calendar_month() {
    // Given tiered mode and $1,200 of March volume
    let mut h = History::new(revenue_tiers(TierMode::Tiered));
    h.accrue(&sale(1, usd("1200.00"), at(2025, 3, 31)));

    // When a sale falls on April 1st, then it is back at the first tier
    let april = h.accrue(&sale(2, usd("600.00"), at(2025, 4, 1)));
    assert_eq!(amounts(&april.lines), ["30.00 USD"]);
}

#[test]
fn a_forex_rebate_per_lot_is_tiered_by_the_months_lots() {
    // Given $5 per lot up to 10 lots a month and $7 from there
    let mut h = History::new(lot_tiers(TierMode::Tiered));

    // When 6 lots and then 6 more are traded
    let first = h.accrue(&trade(1, "6", at(2025, 3, 3)));
    let second = h.accrue(&trade(2, "6", at(2025, 3, 4)));

    // Then the first pays $30, the second $42 and tops up the first 6 lots by $12
    assert_eq!(amounts(&first.lines), ["30.00 USD"]);
    assert_eq!(amounts(&second.lines), ["42.00 USD", "12.00 USD"]);
    assert_eq!(
        second.lines[0].formula.text,
        "tier 2 (from 10): 7.00 USD per lot of 6 lots; 2025-03 volume 6 → 12"
    );
}

#[test]
fn a_forex_rebate_ladder_pays_each_lot_at_its_bands_rate() {
    let mut h = History::new(lot_tiers(TierMode::Ladder));
    h.accrue(&trade(1, "6", at(2025, 3, 3)));
    let second = h.accrue(&trade(2, "6", at(2025, 3, 4)));
    // 4 lots at $5 and 2 lots at $7
    assert_eq!(amounts(&second.lines), ["34.00 USD"]);
}

#[test]
fn a_cpa_tiered_by_the_months_conversions_tops_up_earlier_signups() {
    // Given $50 per signup, $75 from the third signup of the month
    let p = plan(vec![when_kind(
        rule(
            "cpa",
            Reward::TieredVolume {
                basis: VolumeBasis::Count,
                mode: TierMode::Tiered,
                tiers: vec![
                    Tier {
                        from: d("0"),
                        price: TierPrice::PerUnit(usd("50.00")),
                    },
                    Tier {
                        from: d("3"),
                        price: TierPrice::PerUnit(usd("75.00")),
                    },
                ],
            },
        ),
        ConversionKind::Signup,
    )]);
    let mut h = History::new(p);

    // When three signups arrive
    let lines: Vec<_> = (1..=3)
        .map(|n| {
            amounts(
                &h.accrue(&conversion(
                    n,
                    ConversionKind::Signup,
                    at(2025, 3, n as u32),
                ))
                .lines,
            )
        })
        .collect();

    // Then the third pays $75 and tops up the first two by $25 each
    assert_eq!(
        lines,
        [
            vec!["50.00 USD"],
            vec!["50.00 USD"],
            vec!["75.00 USD", "50.00 USD"]
        ]
    );
}

#[test]
fn a_period_cap_limits_tier_top_ups_too() {
    // Given tiered mode capped at $80 a month
    let mut p = revenue_tiers(TierMode::Tiered);
    p.rules[0].cap_per_period = Some(usd("80.00"));
    let mut h = History::new(p);
    h.accrue(&sale(1, usd("600.00"), at(2025, 3, 1)));

    // When the second sale would pay $60 and a $30 top-up
    let crossing = h.accrue(&sale(2, usd("600.00"), at(2025, 3, 2)));

    // Then only the $50 left under the cap is paid: all of the base, none of the top-up
    assert_eq!(amounts(&crossing.lines), ["50.00 USD", "0.00 USD"]);
    assert_eq!(crossing.lines[1].formula.caps[0].reduced_by, usd("30.00"));
    let totals = h
        .state
        .period_totals("2025-03".parse().unwrap(), "volume")
        .unwrap();
    assert_eq!(
        (totals.earned, totals.accrued),
        (usd("120.00"), usd("80.00"))
    );
}

#[test]
fn a_partial_attribution_counts_its_share_of_the_volume() {
    // Given a partner credited with half of a $2,000 sale under tiered mode
    let mut h = History::new(revenue_tiers(TierMode::Tiered));
    let mut half = sale(1, usd("2000.00"), at(2025, 3, 1));
    half.weight = d("0.5");

    // When accrued, then it counts $1,000 of volume and reaches the second tier
    let accrual = h.accrue(&half);
    assert_eq!(amounts(&accrual.lines), ["100.00 USD"]);
}
