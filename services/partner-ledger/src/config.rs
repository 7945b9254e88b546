//! Command line and environment: every setting is a flag with an environment variable of the
//! same meaning (the README's configuration table lists them all).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A setting never printed: `--check-config` and logs show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "partner-ledger",
    version,
    about = "Partner Ledger: what is owed to partners, exact and replayable"
)]
pub struct Cli {
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all four services in one process on one port, with the embedded event log and the
    /// in-process bus: no other server needed.
    Up(UpArgs),
    /// Run one service, with the store and bus chosen by configuration (cluster deployments).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    Crm,
    Attribution,
    Commissions,
    Compliance,
}

impl ServiceName {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Crm => "crm",
            ServiceName::Attribution => "attribution",
            ServiceName::Commissions => "commissions",
            ServiceName::Compliance => "compliance",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The durable file log in `--data-dir`.
    Embedded,
    /// EventStoreDB / KurrentDB at `--eventstore-url` (binary built with `--features eventstoredb`).
    Eventstoredb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusKind {
    /// In-process bus: only for a single process.
    InProcess,
    /// NATS JetStream at `--nats-url`.
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format on stderr.
    #[arg(
        long,
        env = "PL_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormatArg,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,pl_eventlog=debug`.
    #[arg(long, env = "PL_LOG", default_value = "info", global = true)]
    pub log_filter: String,
    /// OTLP endpoint to export traces to (e.g. `http://otel-collector:4317`); none: logs only.
    #[arg(long, env = "PL_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "PL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "PL_GRACE_PERIOD_MS", default_value_t = 10_000)]
    pub grace_period_ms: u64,
    /// Upper bound on any request (a shorter caller deadline wins).
    #[arg(long, env = "PL_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Largest request message accepted.
    #[arg(long, env = "PL_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Requests processed at once per connection.
    #[arg(long, env = "PL_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Salt for hashing visitors' IP addresses and user agents (attribution). Keep it secret and
    /// stable: changing it makes old and new hashes incomparable.
    #[arg(long, env = "PL_ATTRIBUTION_HASH_SALT", hide_env_values = true)]
    pub attribution_hash_salt: Option<Secret>,
    /// Sanctions list file (compliance), loaded at start; format in the compliance README.
    /// Without one, partners are not screened and ScreenPartner is refused.
    #[arg(long, env = "PL_SANCTIONS_LIST")]
    pub sanctions_list: Option<PathBuf>,
    /// Prefix of every bus subject: `<prefix>.<context>.<event-type>`.
    #[arg(long, env = "PL_SUBJECT_PREFIX", default_value = "pl")]
    pub subject_prefix: String,
    /// Validate the configuration, print it, and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Directory of the embedded event log (created if missing).
    #[arg(long, env = "PL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    pub service: ServiceName,
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long, env = "PL_STORE", value_enum, default_value = "embedded")]
    pub store: StoreKind,
    /// Directory of the embedded event log, when `--store embedded`.
    #[arg(long, env = "PL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// EventStoreDB connection string, when `--store eventstoredb` (e.g. `esdb://host:2113?tls=true`).
    #[arg(long, env = "PL_EVENTSTORE_URL", hide_env_values = true)]
    pub eventstore_url: Option<Secret>,
    #[arg(long, env = "PL_BUS", value_enum, default_value = "nats")]
    pub bus: BusKind,
    /// NATS server(s), when `--bus nats`.
    #[arg(long, env = "PL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream holding the integration events.
    #[arg(long, env = "PL_NATS_STREAM", default_value = "PARTNER_LEDGER")]
    pub nats_stream: String,
    /// Replicas of the JetStream stream (3 in a production cluster).
    #[arg(long, env = "PL_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_the_service_and_cluster_settings() {
        let cli = Cli::try_parse_from([
            "partner-ledger",
            "serve",
            "commissions",
            "--bus",
            "nats",
            "--nats-url",
            "nats://nats:4222",
            "--listen",
            "0.0.0.0:50051",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.service, ServiceName::Commissions);
        assert_eq!(args.bus, BusKind::Nats);
        assert_eq!(args.server.listen.port(), 50051);
    }

    #[test]
    fn the_sanctions_list_is_a_path_given_to_up_and_serve() {
        let cli = Cli::try_parse_from([
            "partner-ledger",
            "up",
            "--sanctions-list",
            "/etc/pl/sdn.tsv",
        ])
        .unwrap();
        let Command::Up(args) = cli.command else {
            panic!("expected up");
        };
        assert_eq!(
            args.server.sanctions_list,
            Some(PathBuf::from("/etc/pl/sdn.tsv"))
        );
    }

    #[test]
    fn an_unknown_service_is_rejected_with_the_valid_names() {
        let err = Cli::try_parse_from(["partner-ledger", "serve", "billing"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("crm") && text.contains("commissions"),
            "{text}"
        );
    }
}
