//! The whole program, run twice: (a) everything in one process on the embedded log and the
//! in-process bus, (b) the four services as separate `partner-ledger serve` processes, each on
//! its own log, talking over a real nats-server. Both must give identical balances, equal to
//! what the plan terms say (computed in `expected` without the engine).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code fails loudly

use pl_bus::testkit::NatsServer;
use pl_e2e::process::{Cluster, InProcess};
use pl_e2e::{expected, scenario};

fn earned(b: &scenario::Balances) -> pl_money::Decimal {
    [&b.pending, &b.payable, &b.paid]
        .iter()
        .map(|a| pl_money::parse_amount(a).unwrap())
        .sum()
}

fn check_against_plan_terms(o: &scenario::Outcome) {
    let want = expected::earned();
    assert_eq!(o.balances.len(), want.len());
    for (name, b) in &o.balances {
        assert_eq!(earned(b), want[name.as_str()], "{name}: {b:?}");
    }
    // What was paid is what the payout runs sent.
    for (name, paid) in &o.paid_by_runs {
        assert_eq!(
            pl_money::parse_amount(&o.balances[name].paid).unwrap(),
            pl_money::parse_amount(paid).unwrap(),
            "{name}"
        );
    }
    // The chargeback of a sale already paid out drove the payable negative (PartnerStack).
    assert_eq!(o.affiliate_payable_after_chargeback, "-50.00");
    // The June run skipped the partner on hold, and said why.
    assert!(
        o.referral_june_skip_reasons
            .contains(&"payout_hold".to_owned()),
        "{:?}",
        o.referral_june_skip_reasons
    );
    // Acme churned: its lifetime share ended; the referred customer's first year is complete.
    assert!(o
        .recurring
        .iter()
        .any(|(p, c, to_date, ended)| p == "outsourcing"
            && c == "acme"
            && to_date == "1200.00"
            && *ended));
    assert!(o
        .recurring
        .iter()
        .any(|(p, _, to_date, ended)| p == "referral" && to_date == "240.00" && !*ended));
    assert!(o.log_intact, "the commissions log verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_and_four_over_nats_give_identical_balances_equal_to_the_plan_terms() {
    // (a) one process.
    let dir = tempfile::tempdir().unwrap();
    let system = InProcess::start(dir.path()).await.unwrap();
    let one = scenario::run(&system.endpoints, Box::new(|_| {})).await;
    system.stop().await.unwrap();
    let one = one.unwrap();
    check_against_plan_terms(&one);

    // (b) four processes over a real nats-server.
    let nats = NatsServer::start().await.unwrap();
    let base = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&nats.url(), base.path()).await.unwrap();
    let four = scenario::run(&cluster.endpoints, Box::new(|_| {})).await;
    cluster.stop().await.unwrap();
    let four = four.unwrap();
    check_against_plan_terms(&four);

    assert_eq!(one.balances, four.balances);
    assert_eq!(one.paid_by_runs, four.paid_by_runs);
    assert_eq!(one.recurring, four.recurring);
}
