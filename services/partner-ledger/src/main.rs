//! `partner-ledger`: parse configuration, start telemetry, run the chosen mode, drain on
//! SIGTERM/SIGINT.

use clap::Parser;
use partner_ledger::app::{self, Running};
use partner_ledger::config::{Cli, Command, LogFormatArg};
use pl_telemetry::{LogFormat, TelemetryConfig};

fn telemetry_config(cli: &Cli) -> TelemetryConfig {
    let name = match &cli.command {
        Command::Up(_) => "partner-ledger",
        Command::Serve(args) => args.service.as_str(),
    };
    let mut cfg = TelemetryConfig::new(name);
    cfg.log_format = match cli.telemetry.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    cfg.log_filter = cli.telemetry.log_filter.clone();
    cfg.otlp_endpoint = cli.telemetry.otlp_endpoint.clone();
    cfg
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop the server");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let check_only = match &cli.command {
        Command::Up(a) => a.server.check_config,
        Command::Serve(a) => a.server.check_config,
    };
    if check_only {
        let checked = match &cli.command {
            Command::Up(_) => Ok(()),
            Command::Serve(args) => app::validate_serve(args),
        };
        return match checked {
            Ok(()) => {
                println!("configuration is valid:\n{:#?}", cli.command);
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("partner-ledger: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let telemetry = match pl_telemetry::init(&telemetry_config(&cli)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("partner-ledger: telemetry: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let started = match &cli.command {
        Command::Up(args) => app::start_up(args).await,
        Command::Serve(args) => app::start_serve(args).await,
    };
    let running: Running = match started {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return std::process::ExitCode::FAILURE;
        }
    };
    let names: Vec<&str> = running.services.iter().map(|s| s.as_str()).collect();
    tracing::info!(addr = %running.local_addr, services = ?names, "serving");
    println!(
        "partner-ledger listening on {} (services: {})",
        running.local_addr,
        names.join(", ")
    );
    wait_for_signal().await;
    running.shutdown();
    let outcome = running.wait().await;
    if let Err(e) = telemetry.shutdown() {
        eprintln!("partner-ledger: telemetry shutdown: {e}");
    }
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("partner-ledger: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
