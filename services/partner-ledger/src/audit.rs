//! `partner-ledger audit …`: the audit commands run against a data directory or an
//! EventStoreDB connection, without a running service. Output goes to standard output (or
//! `--out`); `verify` exits 1 at the first break or finding. Every command but `seal` and
//! `accept-loss` opens the embedded log read-only: an audit never cuts or rewrites a file.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pl_audit::{export, replay, seal, statement, AuditError};
use pl_eventlog::{EmbeddedLog, EmbeddedOptions, LogFinding, SharedStore};
use pl_ledger::{AsOf, RecordingPoint};
use pl_runtime::{Clock, SystemClock};
use uuid::Uuid;

use crate::config::{
    AuditArgs, AuditCommand, ExportFormatArg, ExportWhat, ReplayFormat, StatementFormatArg,
    StoreKind,
};

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("event store: {0}")]
    Store(#[from] pl_eventlog::LogError),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// `verify` found a break (already printed).
    #[error("the log does not verify")]
    Broken,
}

fn time(field: &str, s: &str) -> Result<DateTime<Utc>, AuditCliError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| AuditCliError::Usage(format!("--{field}: not an RFC 3339 time ({e})")))
}

fn uuid(field: &str, s: &str) -> Result<Uuid, AuditCliError> {
    Uuid::parse_str(s).map_err(|e| AuditCliError::Usage(format!("--{field}: {e}")))
}

fn read(path: &Path) -> Result<String, AuditCliError> {
    std::fs::read_to_string(path).map_err(|source| AuditCliError::File {
        path: path.display().to_string(),
        source,
    })
}

/// The store an audit command reads, and what a look at the embedded log's files found
/// wrong (always empty for EventStoreDB, whose server keeps its own files).
struct Opened {
    store: SharedStore,
    embedded: Option<Arc<EmbeddedLog>>,
    findings: Vec<LogFinding>,
}

async fn open(args: &AuditArgs) -> Result<Opened, AuditCliError> {
    match args.store {
        StoreKind::Embedded => {
            if !args.data_dir.is_dir() {
                return Err(AuditCliError::Usage(format!(
                    "--data-dir {}: no such directory",
                    args.data_dir.display()
                )));
            }
            // Only `seal` writes; every other command reads the files as they are (a
            // read-only copy will do), and never cuts or rewrites them.
            let (log, findings) = if matches!(args.command, AuditCommand::Seal { .. }) {
                (
                    EmbeddedLog::open(&args.data_dir, EmbeddedOptions::default())?,
                    Vec::new(),
                )
            } else {
                EmbeddedLog::open_read_only(&args.data_dir, pl_eventlog::Limits::default())?
            };
            let log = Arc::new(log);
            Ok(Opened {
                store: log.clone(),
                embedded: Some(log),
                findings,
            })
        }
        StoreKind::Eventstoredb => Ok(Opened {
            store: open_eventstoredb(args).await?,
            embedded: None,
            findings: Vec::new(),
        }),
    }
}

#[cfg(feature = "eventstoredb")]
async fn open_eventstoredb(args: &AuditArgs) -> Result<SharedStore, AuditCliError> {
    let url = args.eventstore_url.as_ref().ok_or_else(|| {
        AuditCliError::Usage("--store eventstoredb needs --eventstore-url".into())
    })?;
    Ok(Arc::new(
        pl_eventlog::eventstoredb::EventStoreDbLog::connect(
            url.expose(),
            pl_eventlog::Limits::default(),
        )
        .await?,
    ))
}

#[cfg(not(feature = "eventstoredb"))]
async fn open_eventstoredb(_args: &AuditArgs) -> Result<SharedStore, AuditCliError> {
    Err(AuditCliError::Usage(
        "this binary was built without EventStoreDB support (cargo feature `eventstoredb`)".into(),
    ))
}

fn output(out: Option<&Path>) -> Result<Box<dyn Write + Send>, AuditCliError> {
    Ok(match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| AuditCliError::File {
                path: path.display().to_string(),
                source,
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

fn write_all(out: &mut dyn Write, text: &str) -> Result<(), AuditCliError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| AuditCliError::Audit(AuditError::Io(e)))
}

/// Runs one audit command.
pub async fn run(args: &AuditArgs) -> Result<(), AuditCliError> {
    if let AuditCommand::AcceptLoss { reason } = &args.command {
        return accept_loss(args, reason).await;
    }
    let Opened {
        store,
        embedded,
        findings,
    } = open(args).await?;
    let outcome = if matches!(args.command, AuditCommand::Verify { .. }) {
        verify(args, &store, &findings).await
    } else if let Some(refused) = findings.iter().find(|f| !f.repaired_at_open()) {
        // What the services would refuse to serve, an audit does not report on either.
        Err(AuditCliError::Store(pl_eventlog::LogError::Damaged {
            findings: refused.to_string(),
        }))
    } else {
        for f in &findings {
            eprintln!("partner-ledger audit: note: {f}; read up to the last complete append");
        }
        command(args, &store).await
    };
    drop(store);
    if let Some(log) = embedded {
        if let Ok(log) = Arc::try_unwrap(log) {
            let _closed = tokio::task::spawn_blocking(move || log.close()).await;
        }
    }
    outcome
}

/// `verify`: every finding about the files (with offsets), then every hash chain and seal of
/// what can be read; exit 1 when anything is wrong. Reads only.
async fn verify(
    args: &AuditArgs,
    store: &SharedStore,
    findings: &[LogFinding],
) -> Result<(), AuditCliError> {
    let AuditCommand::Verify { public_key } = &args.command else {
        return Err(AuditCliError::Usage("not a verify command".into()));
    };
    let key = public_key
        .as_deref()
        .map(|p| read(p).and_then(|k| Ok(seal::verifying_key_from(&k)?)))
        .transpose()?;
    let out = seal::verify(store.as_ref(), key.as_ref()).await?;
    let summary = format!(
        "checked {} events in {} streams, {} seals ({} signatures)\n",
        out.events_checked, out.streams_checked, out.seals_checked, out.signatures_checked
    );
    for f in findings {
        eprintln!("partner-ledger audit verify: FINDING: {f}");
    }
    if let Some(b) = &out.first_break {
        eprintln!("partner-ledger audit verify: BROKEN: {b}");
    }
    if out.first_break.is_none() && findings.is_empty() {
        return write_all(&mut *output(None)?, &format!("intact: {summary}"));
    }
    eprint!("{summary}");
    Err(AuditCliError::Broken)
}

/// `accept-loss`: the operator's way to open a log refused at open (see
/// [`EmbeddedLog::accept_loss`]).
async fn accept_loss(args: &AuditArgs, reason: &str) -> Result<(), AuditCliError> {
    if args.store != StoreKind::Embedded {
        return Err(AuditCliError::Usage(
            "accept-loss applies to the embedded log (--store embedded)".into(),
        ));
    }
    if !args.data_dir.is_dir() {
        return Err(AuditCliError::Usage(format!(
            "--data-dir {}: no such directory",
            args.data_dir.display()
        )));
    }
    let accepted =
        EmbeddedLog::accept_loss(&args.data_dir, EmbeddedOptions::default(), reason).await?;
    let mut text = String::new();
    if accepted.is_empty() {
        text.push_str("nothing to accept: the log opens as it is\n");
    }
    for f in &accepted {
        text.push_str(&format!("accepted: {f}\n"));
    }
    if !accepted.is_empty() {
        text.push_str(&format!(
            "recorded as {} in stream {}\n",
            pl_eventlog::LOSS_EVENT_TYPE,
            pl_eventlog::LOG_INCIDENTS_STREAM
        ));
    }
    write_all(&mut *output(None)?, &text)
}

async fn command(args: &AuditArgs, store: &SharedStore) -> Result<(), AuditCliError> {
    match &args.command {
        AuditCommand::Replay {
            partner,
            business_date,
            recorded_position,
            recorded_at,
            format,
        } => {
            let partner = partner.as_deref().map(|p| uuid("partner", p)).transpose()?;
            let business = business_date
                .as_deref()
                .map(|t| time("business-date", t))
                .transpose()?;
            let recorded = match (recorded_position, recorded_at) {
                (Some(p), _) => Some(RecordingPoint::Position(*p)),
                (None, Some(t)) => Some(RecordingPoint::At(time("recorded-at", t)?)),
                (None, None) => None,
            };
            let as_of = AsOf::from_parts(business, recorded);
            let rows = replay::replay_balances(store.as_ref(), partner, as_of)
                .await?
                .rows;
            let text = match format {
                ReplayFormat::Table => replay::table(&rows),
                ReplayFormat::Json => {
                    let mut t = serde_json::to_string_pretty(&rows)
                        .map_err(|e| AuditCliError::Usage(e.to_string()))?;
                    t.push('\n');
                    t
                }
            };
            write_all(&mut *output(None)?, &text)
        }
        AuditCommand::Verify { .. } | AuditCommand::AcceptLoss { .. } => Err(AuditCliError::Usage(
            "verify and accept-loss are run on their own".into(),
        )),
        AuditCommand::Seal { key_file } => {
            let key = seal::signing_key_from_pem(&read(key_file)?)?;
            // The edge of the system: the seal's time is the wall clock's.
            let now = SystemClock.now();
            match seal::seal(store.as_ref(), &key, now).await? {
                Some(s) => write_all(
                    &mut *output(None)?,
                    &format!(
                        "sealed up to position {} ({} streams): root {} signed by {}\n",
                        s.up_to_position, s.streams, s.merkle_root, s.public_key
                    ),
                ),
                None => write_all(&mut *output(None)?, "the log is empty: nothing to seal\n"),
            }
        }
        AuditCommand::Export {
            what,
            format,
            from,
            to,
            out,
        } => {
            let what = match what {
                ExportWhat::Transactions => export::What::Transactions,
                ExportWhat::Events => export::What::Events,
            };
            let format = match format {
                ExportFormatArg::Jsonl => export::Format::Jsonl,
                ExportFormatArg::Csv => export::Format::Csv,
            };
            let (from, to) = (time("from", from)?, time("to", to)?);
            let mut sink = output(out.as_deref())?;
            export::export(store.as_ref(), what, format, from, to, &mut *sink).await?;
            sink.flush()
                .map_err(|e| AuditCliError::Audit(AuditError::Io(e)))
        }
        AuditCommand::Statement {
            partner,
            currency,
            from,
            to,
            format,
            out,
        } => {
            let partner = uuid("partner", partner)?;
            let currency = currency.parse().map_err(|_| {
                AuditCliError::Usage(format!("--currency {currency}: not an ISO 4217 code"))
            })?;
            let s = statement::build(
                store.as_ref(),
                partner,
                currency,
                time("from", from)?,
                time("to", to)?,
            )
            .await?;
            let format = match format {
                StatementFormatArg::Text => statement::Format::Text,
                StatementFormatArg::Csv => statement::Format::Csv,
                StatementFormatArg::Html => statement::Format::Html,
            };
            write_all(
                &mut *output(out.as_deref())?,
                &statement::render(&s, format),
            )
        }
    }
}
