//! `make demo`: starts Partner Ledger in this process on the embedded log (a fresh directory,
//! or `DEMO_DATA_DIR`), drives a twelve-month partner program over gRPC, and prints each
//! partner's balances against what the plan terms say, the recurring shares, the influencer's
//! statement and the audit's verification of the log.

#![allow(clippy::print_stdout)]

use pl_e2e::{expected, process::InProcess, scenario};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match demo().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), String> {
    // Warnings and errors of the services on stderr (PL_LOG to see more).
    let mut telemetry = pl_telemetry::TelemetryConfig::new("demo");
    telemetry.log_filter = std::env::var("PL_LOG").unwrap_or_else(|_| "warn".into());
    let _telemetry = pl_telemetry::init(&telemetry).map_err(|e| e.to_string())?;
    let keep = std::env::var_os("DEMO_DATA_DIR");
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = keep.map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let system = InProcess::start(&dir).await?;
    println!(
        "Partner Ledger is up on {} (data in {})\n",
        system.endpoints.crm,
        dir.display()
    );
    let outcome = scenario::run(&system.endpoints, Box::new(|line| println!("{line}"))).await;
    let stopped = system.stop().await;
    let o = outcome?;
    stopped?;

    let want = expected::earned();
    println!("\nBalances at year end (USD)\n");
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "partner", "pending", "payable", "paid", "earned", "plan terms"
    );
    for (name, b) in &o.balances {
        let earned: pl_money::Decimal = [&b.pending, &b.payable, &b.paid]
            .iter()
            .filter_map(|a| pl_money::parse_amount(a).ok())
            .sum();
        let terms = want.get(name.as_str()).copied().unwrap_or_default();
        let mark = if earned == terms { "ok" } else { "MISMATCH" };
        println!(
            "{name:<12} {:>10} {:>10} {:>10} {:>12} {:>12} {mark}",
            b.pending, b.payable, b.paid, earned, terms
        );
    }
    println!(
        "\nThe affiliate's payable right after the chargeback of its paid sale: {}",
        o.affiliate_payable_after_chargeback
    );
    println!(
        "The June payout run skipped the referral partner: {}",
        o.referral_june_skip_reasons.join(", ")
    );
    println!("\nRecurring revenue shares as of 31 December\n");
    for (partner, customer, to_date, ended) in &o.recurring {
        println!(
            "{partner:<12} customer {customer:<14} {to_date:>10} to date{}",
            if *ended { " (ended)" } else { "" }
        );
    }
    println!("\nThe influencer's statement for the year\n");
    for line in &o.influencer_statement {
        println!("  {line}");
    }
    println!(
        "\nAudit: {} events verified, log {}",
        o.events_verified,
        if o.log_intact { "intact" } else { "BROKEN" }
    );
    Ok(())
}
