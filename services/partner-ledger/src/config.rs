//! Command line and environment: every setting is a flag with an environment variable of the
//! same meaning (the README's configuration table lists them all).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

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
    /// Audit the log directly (a data directory or an EventStoreDB connection): replay
    /// balances, verify chains and seals, seal, export, render statements.
    Audit(AuditArgs),
    /// Credentials without an identity provider: the JWKS of an Ed25519 public key, and
    /// tokens signed with its private key (`openssl genpkey -algorithm ed25519`).
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuthCommand {
    /// Prints the JWKS document (for `--auth-jwks`) of a PEM Ed25519 public key.
    Jwks {
        /// `openssl pkey -in key.pem -pubout -out key.pub.pem`.
        #[arg(long)]
        public_key: PathBuf,
        /// The key's id; tokens name it in their header.
        #[arg(long)]
        kid: String,
    },
    /// Prints a token for a person or a tool, signed with a PEM Ed25519 private key.
    Token {
        #[arg(long)]
        private_key: PathBuf,
        #[arg(long)]
        kid: String,
        /// Who the token is for (`sub`): a person's address, a tool's name.
        #[arg(long)]
        subject: String,
        /// A role of the policy; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// For a partner-scoped token: the partner it speaks for.
        #[arg(long)]
        partner_id: Option<String>,
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value = "partner-ledger")]
        audience: String,
        /// Lifetime in seconds (at most a day).
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[arg(
        long,
        env = "PL_STORE",
        value_enum,
        default_value = "embedded",
        global = true
    )]
    pub store: StoreKind,
    /// Directory of the embedded event log (the service using it must be stopped: the log
    /// is locked by one process at a time).
    #[arg(long, env = "PL_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// EventStoreDB connection string, when `--store eventstoredb`.
    #[arg(long, env = "PL_EVENTSTORE_URL", hide_env_values = true, global = true)]
    pub eventstore_url: Option<Secret>,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportWhat {
    Transactions,
    Events,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatementFormatArg {
    Text,
    Csv,
    Html,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Rebuild balances of one partner or all from the log, as of a business date and/or a
    /// recording point.
    Replay {
        #[arg(long)]
        partner: Option<String>,
        /// RFC 3339; facts that occurred up to it.
        #[arg(long)]
        business_date: Option<String>,
        /// What the log held at this position (inclusive).
        #[arg(long, conflicts_with = "recorded_at")]
        recorded_position: Option<u64>,
        /// RFC 3339; what the log held at this time.
        #[arg(long)]
        recorded_at: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ReplayFormat,
    },
    /// Walk every hash chain and every seal, and check the log's files against their
    /// checkpoint (cut short, torn tail, trailing garbage); exit 1 at the first break or any
    /// finding. Read-only: a read-only copy of the data directory will do.
    Verify {
        /// The seal-signing public key (SPKI PEM file, or a file with 64 hex characters).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Open a log that was refused at open (cut short, rewritten, or followed by bytes no
    /// crash leaves) as it is: bytes that are not a torn write go to `quarantine/`, and the
    /// loss is recorded, with the reason, as a `LogLossAccepted` event in `log-incidents`.
    AcceptLoss {
        /// Why the loss is accepted (an incident or ticket reference): kept in the log.
        #[arg(long)]
        reason: String,
    },
    /// Append a signed checkpoint committing to every stream head.
    Seal {
        /// PKCS#8 PEM ed25519 private key (`openssl genpkey -algorithm ed25519`).
        #[arg(long, env = "PL_SEAL_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Ledger transactions or events of a business period as JSONL or CSV.
    Export {
        #[arg(long, value_enum)]
        what: ExportWhat,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormatArg,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: String,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: String,
        /// File to write; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A partner's statement for a period.
    Statement {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "text")]
        format: StatementFormatArg,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

impl Command {
    /// The subcommand's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Up(_) => "up",
            Command::Serve(_) => "serve",
            Command::Audit(_) => "audit",
            Command::Auth(_) => "auth",
        }
    }
}

/// Prefix of every environment variable the binary reads.
pub const ENV_PREFIX: &str = "PL_";

/// The environment variables `subcommand` reads: its own settings' and the global ones.
pub fn known_env_vars(subcommand: &str) -> BTreeSet<String> {
    let cli = Cli::command();
    let own = cli
        .find_subcommand(subcommand)
        .into_iter()
        .flat_map(|sub| sub.get_arguments());
    cli.get_arguments()
        .chain(own)
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

/// The `PL_*` names in `vars` that `subcommand` does not read. Such a variable (a typo, or a
/// setting of the other mode) would otherwise be ignored without a word, so `--check-config`
/// rejects it.
pub fn unknown_env_vars(
    subcommand: &str,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<String> {
    let known = known_env_vars(subcommand);
    let mut unknown: Vec<String> = vars
        .into_iter()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .filter(|name| name.starts_with(ENV_PREFIX) && !known.contains(name))
        .collect();
    unknown.sort();
    unknown
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
    /// PKCS#8 PEM ed25519 key: when set, the process seals the log periodically (a signed
    /// checkpoint in `audit-seals`; verify with the public key). Set it on one process per log.
    #[arg(long, env = "PL_SEAL_KEY_FILE")]
    pub seal_key_file: Option<PathBuf>,
    /// How often the log is sealed when `--seal-key-file` is set (only if it grew).
    #[arg(long, env = "PL_SEAL_INTERVAL_MS", default_value_t = 3_600_000)]
    pub seal_interval_ms: u64,
    /// Events folded into the states each in-memory state cache keeps (partner books, plans,
    /// compliance files, ...), each cache all its streams together; least recently used
    /// streams beyond it are dropped and reread from the log when next used. A partner's book
    /// holds about 1.5 KB per event (README, "State caches").
    #[arg(
        long,
        env = "PL_CACHE_EVENTS",
        default_value_t = pl_runtime::DEFAULT_CACHED_EVENTS,
        value_parser = clap::value_parser!(u64).range(1_000..=1_000_000_000)
    )]
    pub cache_events: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Validate the configuration, print it, and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

/// Who may call what (README, "Authentication and authorization"). `serve` never runs without
/// it; `up` runs without it on a loopback address only, and says so.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// The policy file: the roles allowed per RPC (every RPC must be listed). The repository's
    /// `deploy/base/policy.toml` is a starting point.
    #[arg(long, env = "PL_AUTH_POLICY")]
    pub auth_policy: Option<PathBuf>,
    /// The JWKS file of the keys that sign bearer tokens (asymmetric keys only). Re-read, with
    /// the policy, every `--auth-reload-ms` when either file changed.
    #[arg(long, env = "PL_AUTH_JWKS")]
    pub auth_jwks: Option<PathBuf>,
    /// The `iss` every token must carry.
    #[arg(long, env = "PL_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// The `aud` every token must carry.
    #[arg(long, env = "PL_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Clock skew tolerated on a token's `exp` and `nbf`, in seconds (at most 300).
    #[arg(
        long,
        env = "PL_AUTH_LEEWAY_S",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=pl_auth::token::MAX_LEEWAY_S)
    )]
    pub auth_leeway_s: u64,
    /// How often the policy and key files are checked for changes.
    #[arg(
        long,
        env = "PL_AUTH_RELOAD_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1_000..=3_600_000)
    )]
    pub auth_reload_ms: u64,
}

impl AuthArgs {
    /// The settings, when authentication is configured; an error when it is configured in
    /// part (a policy without keys would refuse every call, keys without a policy allow none).
    pub fn settings(&self) -> Result<Option<pl_auth::AuthSettings>, String> {
        match (
            &self.auth_policy,
            &self.auth_jwks,
            &self.auth_issuer,
            &self.auth_audience,
        ) {
            (None, None, None, None) => Ok(None),
            (Some(policy), Some(jwks), Some(issuer), Some(audience)) => {
                Ok(Some(pl_auth::AuthSettings {
                    policy_path: policy.clone(),
                    token: pl_auth::TokenSettings {
                        jwks_path: jwks.clone(),
                        issuer: issuer.clone(),
                        audience: audience.clone(),
                        leeway_s: self.auth_leeway_s,
                    },
                }))
            }
            _ => Err(
                "authentication needs all of --auth-policy, --auth-jwks, --auth-issuer and --auth-audience"
                    .into(),
            ),
        }
    }
}

/// How the embedded log writes, for `up` and `serve --store embedded`.
#[derive(Debug, Clone, Args)]
pub struct EmbeddedLogArgs {
    /// Grow the embedded log's file ahead of its appends in zeros, so that most syncs write no
    /// inode: faster for small events on an idle disk, slower for the services (README, "The
    /// embedded adapter").
    #[arg(
        long,
        env = "PL_LOG_GROW_AHEAD",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub log_grow_ahead: bool,
    /// Under load, how long the embedded log's sync thread waits for more appends to join a
    /// sync (microseconds, 0 to 10000; 0 turns it off; README, "The embedded adapter").
    #[arg(
        long,
        env = "PL_LOG_SYNC_LINGER_US",
        default_value_t = pl_eventlog::DEFAULT_SYNC_LINGER_US,
        value_parser = clap::value_parser!(u64).range(0..=pl_eventlog::MAX_SYNC_LINGER_US)
    )]
    pub log_sync_linger_us: u64,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Directory of the embedded event log (created if missing).
    #[arg(long, env = "PL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub log: EmbeddedLogArgs,
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
    #[command(flatten)]
    pub log: EmbeddedLogArgs,
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
    /// NATS user, when the server requires authentication (with `--nats-password`).
    #[arg(long, env = "PL_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password of `--nats-user`.
    #[arg(
        long,
        env = "PL_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<Secret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(names: &[&str]) -> Vec<(OsString, OsString)> {
        names
            .iter()
            .map(|n| (OsString::from(*n), OsString::from("x")))
            .collect()
    }

    #[test]
    fn every_mode_knows_its_own_and_the_global_variables() {
        let serve = known_env_vars("serve");
        for name in [
            "PL_LISTEN",
            "PL_STORE",
            "PL_NATS_URL",
            "PL_LOG",
            "PL_OTLP_ENDPOINT",
            "PL_LOG_GROW_AHEAD",
        ] {
            assert!(serve.contains(name), "{name}");
        }
        let up = known_env_vars("up");
        assert!(up.contains("PL_DATA_DIR") && up.contains("PL_LOG_FORMAT"));
        assert!(up.contains("PL_LOG_GROW_AHEAD") && up.contains("PL_LOG_SYNC_LINGER_US"));
        assert!(!up.contains("PL_STORE"), "up has no store setting");
    }

    #[test]
    fn growing_the_log_ahead_is_off_unless_asked_and_the_flag_can_say_either_way() {
        let grow = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Up(a)) => Ok(a.log.log_grow_ahead),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(grow(&["partner-ledger", "up"]), Ok(false));
        assert_eq!(
            grow(&["partner-ledger", "up", "--log-grow-ahead"]),
            Ok(true)
        );
        assert_eq!(
            grow(&["partner-ledger", "up", "--log-grow-ahead=false"]),
            Ok(false)
        );
        assert_eq!(
            grow(&["partner-ledger", "up", "--log-grow-ahead", "yes"]),
            Ok(true)
        );
        assert!(grow(&["partner-ledger", "up", "--log-grow-ahead=maybe"]).is_err());
    }

    #[test]
    fn the_sync_linger_defaults_to_the_logs_own_and_refuses_more_than_its_bound() {
        let linger = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Up(a)) => Ok(a.log.log_sync_linger_us),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(
            linger(&["partner-ledger", "up"]),
            Ok(pl_eventlog::DEFAULT_SYNC_LINGER_US)
        );
        assert_eq!(
            linger(&["partner-ledger", "up", "--log-sync-linger-us", "0"]),
            Ok(0)
        );
        assert!(linger(&["partner-ledger", "up", "--log-sync-linger-us", "10001"]).is_err());
        assert!(linger(&["partner-ledger", "up", "--log-sync-linger-us", "-1"]).is_err());
    }

    #[test]
    fn the_cache_event_budget_defaults_to_the_runtimes_and_refuses_a_budget_that_keeps_nothing() {
        let events = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Up(a)) => Ok(a.server.cache_events),
            Ok(Command::Serve(a)) => Ok(a.server.cache_events),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(
            events(&["partner-ledger", "up"]),
            Ok(pl_runtime::DEFAULT_CACHED_EVENTS)
        );
        assert_eq!(
            events(&["partner-ledger", "up", "--cache-events", "5000000"]),
            Ok(5_000_000)
        );
        assert!(events(&["partner-ledger", "up", "--cache-events", "0"]).is_err());
        assert!(events(&["partner-ledger", "up", "--cache-events", "999"]).is_err());
        assert!(known_env_vars("serve").contains("PL_CACHE_EVENTS"));
    }

    #[test]
    fn unknown_pl_variables_are_named_and_others_ignored() {
        let found = unknown_env_vars(
            "up",
            vars(&[
                "PL_LISTEN",
                "PL_NATS_ULR",
                "PL_STORE",
                "HOME",
                "SSL_CERT_FILE",
            ]),
        );
        assert_eq!(found, ["PL_NATS_ULR", "PL_STORE"]);
        assert!(unknown_env_vars("serve", vars(&["PL_STORE", "PL_BUS"])).is_empty());
    }

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
