//! `partner-ledger`: parse configuration, start telemetry, run the chosen mode, drain on
//! SIGTERM/SIGINT.

use clap::Parser;
use partner_ledger::app::{self, Running};
use partner_ledger::config::{self, Cli, Command, LogFormatArg};
use pl_telemetry::{LogFormat, TelemetryConfig};

/// mimalloc instead of the system allocator: an accrual allocates and frees many small
/// buffers across threads (events, their encodings, log frames), and glibc's malloc spent a
/// fifth of the accrual benchmark's CPU in malloc/free and their locks. Measured in one run
/// (README, Benchmarks): accruals 25k/s on mimalloc and on jemalloc against 18k/s on glibc;
/// the audit replay 1.3–1.6M/s on mimalloc and glibc against 1.0M/s on jemalloc (why was not
/// investigated).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn telemetry_config(cli: &Cli) -> TelemetryConfig {
    let name = match &cli.command {
        Command::Up(_) => "partner-ledger",
        Command::Serve(args) => args.service.as_str(),
        Command::Audit(_) => "audit",
        Command::Auth(_) => "auth",
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

/// Installs the SIGTERM and SIGINT handlers. Done before the server announces itself, so a
/// signal sent right after start-up drains instead of killing the process.
fn install_signals() -> Vec<(tokio::signal::unix::Signal, &'static str)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut out = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        match signal(kind) {
            Ok(s) => out.push((s, name)),
            Err(e) => eprintln!("partner-ledger: cannot listen for {name}: {e}"),
        }
    }
    out
}

async fn wait_for_signal(signals: Vec<(tokio::signal::unix::Signal, &'static str)>) {
    let waits = signals.into_iter().map(|(mut s, name)| {
        Box::pin(async move {
            s.recv().await;
            name
        })
    });
    if waits.len() == 0 {
        return std::future::pending().await;
    }
    let (name, _, _) = futures::future::select_all(waits).await;
    tracing::info!(signal = name, "received signal");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    partner_ledger::app::choose_tls_crypto();
    if let Command::Auth(command) = &cli.command {
        return match partner_ledger::credentials::run(command) {
            Ok(printed) => {
                println!("{printed}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("partner-ledger auth: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    if let Command::Audit(args) = &cli.command {
        // Read-only (but for `seal`) and short-lived: no telemetry, no signals; the outcome is
        // the exit code and what is printed.
        return match partner_ledger::audit::run(args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(partner_ledger::audit::AuditCliError::Broken) => std::process::ExitCode::FAILURE,
            Err(e) => {
                eprintln!("partner-ledger audit: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let check_only = match &cli.command {
        Command::Audit(_) | Command::Auth(_) => false,
        Command::Up(a) => a.server.check_config,
        Command::Serve(a) => a.server.check_config,
    };
    if check_only {
        let mode = cli.command.name();
        let unknown = config::unknown_env_vars(mode, std::env::vars_os());
        if !unknown.is_empty() {
            eprintln!(
                "partner-ledger: `{mode}` reads no environment variable named {} (see the configuration table)",
                unknown.join(", ")
            );
            return std::process::ExitCode::FAILURE;
        }
        let checked = match &cli.command {
            Command::Up(args) => app::validate_up(args),
            Command::Serve(args) => app::validate_serve(args),
            Command::Audit(_) | Command::Auth(_) => Ok(()),
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
    let signals = install_signals();
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
        Command::Audit(_) | Command::Auth(_) => return std::process::ExitCode::SUCCESS,
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
    wait_for_signal(signals).await;
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
