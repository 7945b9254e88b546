//! Wiring: open the store and the bus, start the relay and the consumers, serve the gRPC
//! services, and shut all of it down in order.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use pl_bus::{
    ConsumerSpec, InProcessBus, InProcessConfig, NatsBus, NatsConfig, Relay, RelayConfig, Route,
    SharedBus,
};
use pl_eventlog::{EmbeddedLog, EmbeddedOptions, SharedStore};
use pl_runtime::dead_letters::Recorder;
use pl_runtime::server::{self, ServerConfig};
use pl_runtime::{Clock, SystemClock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;

use crate::config::{
    BusKind, EmbeddedLogArgs, ServeArgs, ServerArgs, ServiceName, StoreKind, UpArgs,
};

/// Used by `up` when no salt is configured, so a laptop run needs no set-up. Never for
/// production: `serve attribution` refuses to start without a configured salt.
const DEV_HASH_SALT: &str = "partner-ledger-development-salt";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("event store: {0}")]
    Store(#[from] pl_eventlog::LogError),
    #[error("bus: {0}")]
    Bus(#[from] pl_bus::BusError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("task failed: {0}")]
    Task(String),
}

/// What one process runs.
struct Plan {
    services: Vec<ServiceName>,
    store: SharedStore,
    /// The embedded log, when that is the store: flushed and closed last.
    embedded: Option<Arc<EmbeddedLog>>,
    bus: SharedBus,
    /// False for the in-process bus, which loses undelivered messages when the process stops:
    /// the relay then re-publishes from the start of the log on every start (consumers are
    /// idempotent), so a crash never loses an integration event.
    durable_bus: bool,
    server: ServerArgs,
    hash_salt: String,
}

/// A started process: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub local_addr: SocketAddr,
    pub services: Vec<ServiceName>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the process has drained and flushed.
    pub async fn wait(self) -> Result<(), AppError> {
        self.task.await.map_err(|e| AppError::Task(e.to_string()))?
    }
}

pub fn server_config(args: &ServerArgs) -> ServerConfig {
    ServerConfig {
        listen: args.listen,
        grace_period_ms: args.grace_period_ms,
        request_timeout_ms: args.request_timeout_ms,
        max_request_bytes: args.max_request_bytes,
        max_concurrent_requests_per_connection: args.max_concurrent_requests,
        ..ServerConfig::default()
    }
}

fn open_embedded(
    dir: &std::path::Path,
    log: &EmbeddedLogArgs,
) -> Result<Arc<EmbeddedLog>, AppError> {
    let options = EmbeddedOptions {
        grow_ahead: log.log_grow_ahead,
        sync_linger_us: log.log_sync_linger_us,
        ..EmbeddedOptions::default()
    };
    Ok(Arc::new(EmbeddedLog::open(dir, options)?))
}

/// The authorizer the configuration asks for, loaded (policy checked against every RPC the
/// binary can serve); `None` without authentication.
fn authorizer(args: &ServerArgs) -> Result<Option<Arc<pl_auth::Authorizer>>, AppError> {
    let Some(settings) = args.auth.settings().map_err(AppError::Config)? else {
        return Ok(None);
    };
    let mut rpcs = pl_auth::policy::rpcs_of(pl_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| AppError::Config(format!("descriptor set: {e}")))?;
    rpcs.extend(server::INFRASTRUCTURE_RPCS.iter().map(|r| (*r).to_owned()));
    let loaded = pl_auth::Authorizer::load(settings, rpcs)
        .map_err(|e| AppError::Config(format!("authentication: {e}")))?;
    Ok(Some(Arc::new(loaded)))
}

/// `up` runs without authentication only where nobody else can reach it: on a loopback
/// address, said in one warning line. Elsewhere it needs authentication and a salt of its own.
pub fn validate_up(args: &UpArgs) -> Result<(), AppError> {
    let open = args
        .server
        .auth
        .settings()
        .map_err(AppError::Config)?
        .is_none();
    let loopback = args.server.listen.ip().is_loopback();
    if !loopback && open {
        return Err(AppError::Config(format!(
            "up on {} (not a loopback address) needs authentication: --auth-policy, --auth-jwks, --auth-issuer and --auth-audience",
            args.server.listen
        )));
    }
    if !loopback && args.server.attribution_hash_salt.is_none() {
        return Err(AppError::Config(format!(
            "up on {} (not a loopback address) needs --attribution-hash-salt: the development salt is public",
            args.server.listen
        )));
    }
    Ok(())
}

/// `up`: everything in one process on the embedded log and the in-process bus.
pub async fn start_up(args: &UpArgs) -> Result<Running, AppError> {
    validate_up(args)?;
    let embedded = open_embedded(&args.data_dir, &args.log)?;
    let bus: SharedBus = Arc::new(InProcessBus::new(InProcessConfig::new(
        args.server.subject_prefix.clone(),
    ))?);
    let hash_salt = args
        .server
        .attribution_hash_salt
        .as_ref()
        .map(|s| s.expose().to_owned())
        .unwrap_or_else(|| {
            tracing::warn!("no attribution hash salt configured; using the development salt");
            DEV_HASH_SALT.to_owned()
        });
    start(Plan {
        services: vec![
            ServiceName::Crm,
            ServiceName::Attribution,
            ServiceName::Commissions,
            ServiceName::Compliance,
        ],
        store: embedded.clone(),
        embedded: Some(embedded),
        bus,
        durable_bus: false,
        server: args.server.clone(),
        hash_salt,
    })
    .await
}

/// Checks what the command line alone cannot: settings that depend on each other and on how
/// the binary was built. `--check-config` runs exactly this.
pub fn validate_serve(args: &ServeArgs) -> Result<(), AppError> {
    if args
        .server
        .auth
        .settings()
        .map_err(AppError::Config)?
        .is_none()
    {
        return Err(AppError::Config(
            "serve never runs without authentication: --auth-policy, --auth-jwks, --auth-issuer and --auth-audience (PL_AUTH_*)".into(),
        ));
    }
    if args.service == ServiceName::Attribution && args.server.attribution_hash_salt.is_none() {
        return Err(AppError::Config(
            "serve attribution needs --attribution-hash-salt (PL_ATTRIBUTION_HASH_SALT)".into(),
        ));
    }
    if args.store == StoreKind::Eventstoredb {
        if !cfg!(feature = "eventstoredb") {
            return Err(AppError::Config(
                "this binary was built without EventStoreDB support (cargo feature `eventstoredb`)"
                    .into(),
            ));
        }
        if args.eventstore_url.is_none() {
            return Err(AppError::Config(
                "--store eventstoredb needs --eventstore-url (PL_EVENTSTORE_URL)".into(),
            ));
        }
    }
    Ok(())
}

/// `serve <service>`: one service, store and bus from configuration.
pub async fn start_serve(args: &ServeArgs) -> Result<Running, AppError> {
    validate_serve(args)?;
    let hash_salt = args
        .server
        .attribution_hash_salt
        .as_ref()
        .map(|s| s.expose().to_owned())
        .unwrap_or_default();
    let (store, embedded): (SharedStore, _) = match args.store {
        StoreKind::Embedded => {
            let log = open_embedded(&args.data_dir, &args.log)?;
            (log.clone(), Some(log))
        }
        StoreKind::Eventstoredb => (open_eventstoredb(args).await?, None),
    };
    let bus: SharedBus = match args.bus {
        BusKind::InProcess => Arc::new(InProcessBus::new(InProcessConfig::new(
            args.server.subject_prefix.clone(),
        ))?),
        BusKind::Nats => {
            let mut cfg = NatsConfig::new(
                &args.nats_url,
                &args.nats_stream,
                &args.server.subject_prefix,
            );
            cfg.replicas = args.nats_replicas;
            if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
                cfg.auth = Some(pl_bus::NatsUser {
                    user: user.clone(),
                    password: password.expose().to_owned(),
                });
            }
            Arc::new(NatsBus::connect(cfg).await?)
        }
    };
    start(Plan {
        services: vec![args.service],
        store,
        embedded,
        bus,
        durable_bus: args.bus == BusKind::Nats,
        server: args.server.clone(),
        hash_salt,
    })
    .await
}

#[cfg(feature = "eventstoredb")]
async fn open_eventstoredb(args: &ServeArgs) -> Result<SharedStore, AppError> {
    let url = args
        .eventstore_url
        .as_ref()
        .map(|s| s.expose())
        .ok_or_else(|| {
            AppError::Config(
                "--store eventstoredb needs --eventstore-url (PL_EVENTSTORE_URL)".into(),
            )
        })?;
    let log =
        pl_eventlog::eventstoredb::EventStoreDbLog::connect(url, pl_eventlog::Limits::default())
            .await?;
    Ok(Arc::new(log))
}

#[cfg(not(feature = "eventstoredb"))]
async fn open_eventstoredb(_args: &ServeArgs) -> Result<SharedStore, AppError> {
    Err(AppError::Config(
        "this binary was built without EventStoreDB support (cargo feature `eventstoredb`)".into(),
    ))
}

/// Chooses the TLS crypto back end for the process. With EventStoreDB support two are linked
/// (the KurrentDB client's aws-lc-rs and NATS's ring) and rustls then refuses to guess: a
/// `tls://` NATS URL on the embedded store panicked at connect. Ring is in every build.
pub fn choose_tls_crypto() {
    // Err means a provider was chosen already (a second call, or a test): nothing to do.
    let _already_chosen = rustls::crypto::ring::default_provider().install_default();
}

fn read_seal_key(path: &std::path::Path) -> Result<pl_audit::seal::SigningKeyRef, AppError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| AppError::Config(format!("--seal-key-file {}: {e}", path.display())))?;
    pl_audit::seal::signing_key_from_pem(&pem)
        .map(Box::new)
        .map_err(|e| AppError::Config(format!("--seal-key-file {}: {e}", path.display())))
}

/// Seals the log every `every` when it grew; a failed seal is logged and retried next time
/// (sealing never stops the service).
async fn seal_periodically(
    store: SharedStore,
    key: pl_audit::seal::SigningKeyRef,
    clock: Arc<dyn Clock>,
    every: std::time::Duration,
    token: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match pl_audit::seal::seal_if_grown(store.as_ref(), &key, clock.now()).await {
            Ok(Some(s)) => {
                tracing::info!(up_to_position = s.up_to_position, streams = s.streams, root = %s.merkle_root, "log sealed")
            }
            Ok(None) => tracing::debug!("log unchanged since the last seal"),
            Err(e) => tracing::warn!(error = %e, "sealing failed; retried at the next interval"),
        }
    }
}

/// The streams each service owns and the events it publishes from them.
fn relay_routes(service: ServiceName) -> Vec<Route> {
    let route = |prefix: &str, events: &[&str]| Route {
        stream_prefix: prefix.to_owned(),
        context: service.as_str().to_owned(),
        event_types: Some(
            events
                .iter()
                .map(|e| (*e).to_owned())
                .collect::<BTreeSet<_>>(),
        ),
    };
    match service {
        ServiceName::Crm => vec![route(
            pl_partner_crm::STREAM_PREFIX,
            pl_partner_crm::INTEGRATION_EVENTS,
        )],
        ServiceName::Attribution => vec![
            route(
                pl_attribution::STREAM_PREFIX,
                pl_attribution::INTEGRATION_EVENTS,
            ),
            // Recorded touchpoints, for compliance's click-velocity and self-referral rules.
            route(
                pl_attribution::streams::TOUCHPOINTS_PREFIX,
                pl_attribution::TOUCHPOINT_EVENTS,
            ),
        ],
        ServiceName::Commissions => vec![route(
            pl_commissions::STREAM_PREFIX,
            pl_commissions::INTEGRATION_EVENTS,
        )],
        ServiceName::Compliance => vec![route(
            pl_compliance::STREAM_PREFIX,
            pl_compliance::INTEGRATION_EVENTS,
        )],
    }
}

async fn start(plan: Plan) -> Result<Running, AppError> {
    // Before any service (and its caches) is built, `up` and `serve` alike.
    pl_runtime::set_cached_events(plan.server.cache_events);
    let auth = authorizer(&plan.server)?;
    if auth.is_none() {
        tracing::warn!(listen = %plan.server.listen, "authentication is off: every caller on this machine may call every rpc (loopback only; README, \"Authentication and authorization\")");
    }
    let config = server_config(&plan.server);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let max = config.max_request_bytes;
    let mut routes = RoutesBuilder::default();
    let mut names = Vec::new();
    let mut commission_caches = Arc::default();
    let mut compliance = None;
    for service in &plan.services {
        match service {
            ServiceName::Crm => {
                routes.add_service(
                    pl_partner_crm::CrmService::new(plan.store.clone(), clock.clone())
                        .into_server(max),
                );
                names.push(pl_partner_crm::grpc::SERVICE_NAME);
            }
            ServiceName::Attribution => {
                let svc = pl_attribution::AttributionService::new(
                    plan.store.clone(),
                    clock.clone(),
                    &plan.hash_salt,
                );
                routes.add_service(svc.into_server(max));
                names.push(pl_attribution::grpc::SERVICE_NAME);
            }
            ServiceName::Commissions => {
                let svc =
                    pl_commissions::CommissionsService::new(plan.store.clone(), clock.clone());
                commission_caches = svc.caches();
                routes.add_service(svc.into_server(max));
                names.push(pl_commissions::grpc::SERVICE_NAME);
                // The auditors' read-only view of the ledger lives with its owner.
                routes.add_service(
                    pl_audit::AuditApi::new(plan.store.clone())
                        .into_server()
                        .max_decoding_message_size(max),
                );
                names.push(pl_audit::grpc::SERVICE_NAME);
            }
            ServiceName::Compliance => {
                let list = match &plan.server.sanctions_list {
                    Some(path) => Some(Arc::new(
                        pl_compliance::SanctionsList::load(path)
                            .map_err(|e| AppError::Config(e.to_string()))?,
                    )),
                    None => None,
                };
                let mut svc = pl_compliance::ComplianceService::with_sanctions(
                    plan.store.clone(),
                    clock.clone(),
                    list,
                );
                if let Some(path) = &plan.server.sanctions_list {
                    svc = svc.with_sanctions_path(path.clone());
                }
                compliance = Some(svc.compliance());
                routes.add_service(svc.into_server(max));
                names.push(pl_compliance::grpc::SERVICE_NAME);
            }
        }
    }

    let shutdown = CancellationToken::new();
    // Background work stops only after the server has drained, so in-flight commands' events
    // still get relayed and consumed up to the moment the process stops.
    let background = CancellationToken::new();
    let mut tasks: Vec<JoinHandle<Result<(), AppError>>> = Vec::new();

    let relay_name = match plan.services.as_slice() {
        [one] => one.as_str().to_owned(),
        _ => "all".to_owned(),
    };
    let relay = Relay::new(
        plan.store.clone(),
        plan.bus.clone(),
        RelayConfig {
            name: relay_name,
            subject_prefix: plan.server.subject_prefix.clone(),
            routes: plan
                .services
                .iter()
                .flat_map(|s| relay_routes(*s))
                .collect(),
            checkpoint_every_events: 1000,
            checkpoint_every_ms: 1000,
            retry_backoff_max_ms: 5000,
            durable_checkpoints: plan.durable_bus,
        },
    )?;
    let token = background.clone();
    tasks.push(tokio::spawn(async move {
        relay.run(token).await.map_err(AppError::from)
    }));

    if plan.services.contains(&ServiceName::Commissions) {
        for (durable, filter) in
            pl_commissions::consumer::subscriptions(&plan.server.subject_prefix)
        {
            let consumer = plan
                .bus
                .consumer(ConsumerSpec::new(durable.clone(), vec![filter]))
                .await?;
            let store = plan.store.clone();
            let caches: Arc<pl_commissions::accruals::Caches> = Arc::clone(&commission_caches);
            let token = background.clone();
            let refusals = Recorder::new(pl_commissions::SERVICE, &durable, clock.clone());
            tasks.push(tokio::spawn(async move {
                // One key's events in order, different keys concurrently (accruals wait on
                // durable appends, so one at a time left the cores idle), and what queued up
                // under one key handled as a batch: one append per book instead of one per
                // accrual, so a busy program's lane keeps up instead of falling behind.
                pl_bus::run_consumer_batched(
                    consumer,
                    pl_commissions::consumer::ordering_key,
                    move |messages: Vec<pl_bus::Message>| {
                        let (store, caches) = (store.clone(), caches.clone());
                        let refusals = refusals.clone();
                        async move {
                            let outcomes = pl_commissions::consumer::handle_batch(
                                store.as_ref(),
                                &caches,
                                &messages,
                            )
                            .await;
                            refusals
                                .settle_all(store.as_ref(), &messages, outcomes)
                                .await
                        }
                    },
                    token,
                    pl_bus::RunnerConfig::default(),
                    pl_commissions::consumer::LANES,
                    pl_commissions::consumer::MAX_BATCH,
                )
                .await
                .map_err(AppError::from)
            }));
        }
    }

    if plan.services.contains(&ServiceName::Crm) {
        for (durable, filter) in
            pl_partner_crm::consumer::subscriptions(&plan.server.subject_prefix)
        {
            let consumer = plan
                .bus
                .consumer(ConsumerSpec::new(durable.clone(), vec![filter]))
                .await?;
            let store = plan.store.clone();
            let token = background.clone();
            let refusals = Recorder::new(pl_partner_crm::SERVICE, &durable, clock.clone());
            tasks.push(tokio::spawn(async move {
                pl_bus::run_consumer(
                    consumer,
                    move |message: pl_bus::Message| {
                        let (store, refusals) = (store.clone(), refusals.clone());
                        async move {
                            let outcome =
                                pl_partner_crm::consumer::handle(store.as_ref(), message.clone())
                                    .await;
                            refusals.settle(store.as_ref(), &message, outcome).await
                        }
                    },
                    token,
                )
                .await
                .map_err(AppError::from)
            }));
        }
    }

    if plan.services.contains(&ServiceName::Attribution) {
        for (durable, filter) in
            pl_attribution::consumer::subscriptions(&plan.server.subject_prefix)
        {
            let consumer = plan
                .bus
                .consumer(ConsumerSpec::new(durable.clone(), vec![filter]))
                .await?;
            let store = plan.store.clone();
            let token = background.clone();
            let refusals = Recorder::new(pl_attribution::SERVICE, &durable, clock.clone());
            tasks.push(tokio::spawn(async move {
                pl_bus::run_consumer(
                    consumer,
                    move |message: pl_bus::Message| {
                        let (store, refusals) = (store.clone(), refusals.clone());
                        async move {
                            let outcome =
                                pl_attribution::consumer::handle(store.as_ref(), message.clone())
                                    .await;
                            refusals.settle(store.as_ref(), &message, outcome).await
                        }
                    },
                    token,
                )
                .await
                .map_err(AppError::from)
            }));
        }
    }

    if let Some(path) = &plan.server.seal_key_file {
        let key = read_seal_key(path)?;
        let (store, clock, token) = (plan.store.clone(), clock.clone(), background.clone());
        let every = std::time::Duration::from_millis(plan.server.seal_interval_ms.max(1000));
        tasks.push(tokio::spawn(async move {
            seal_periodically(store, key, clock, every, token).await;
            Ok(())
        }));
    }

    if let Some(compliance) = compliance {
        for sub in pl_compliance::consumer::subscriptions(&plan.server.subject_prefix) {
            let consumer = plan
                .bus
                .consumer(ConsumerSpec::new(
                    sub.durable_name.clone(),
                    vec![sub.filter_subject],
                ))
                .await?;
            let compliance = compliance.clone();
            let token = background.clone();
            let refusals = Recorder::new(pl_compliance::SERVICE, &sub.durable_name, clock.clone());
            tasks.push(tokio::spawn(async move {
                // One program's events in order, programs concurrently, and what queued up
                // under one program screened as a run: one append per stream instead of one
                // per event, or the screening (a sync per step) falls behind attribution and,
                // once the bus's retention is full, holds every other consumer back with it.
                pl_bus::run_consumer_batched(
                    consumer,
                    pl_compliance::consumer::ordering_key,
                    move |messages: Vec<pl_bus::Message>| {
                        let (compliance, refusals) = (compliance.clone(), refusals.clone());
                        async move {
                            let outcomes =
                                pl_compliance::consumer::handle_batch(&compliance, &messages).await;
                            refusals
                                .settle_all(compliance.store.as_ref(), &messages, outcomes)
                                .await
                        }
                    },
                    token,
                    pl_bus::RunnerConfig::default(),
                    sub.lanes,
                    sub.max_batch,
                )
                .await
                .map_err(AppError::from)
            }));
        }
    }

    if let Some(auth) = auth.clone() {
        let (token, every) = (
            background.clone(),
            std::time::Duration::from_millis(plan.server.auth.auth_reload_ms),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    () = tokio::time::sleep(every) => {}
                }
                match auth.reload_if_changed() {
                    Ok(true) => tracing::info!("authentication policy and keys reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "authentication files not reloaded; the ones in use stay"),
                }
            }
        }));
    }

    let bound = server::bind(config.listen).await?;
    let local_addr = bound.local_addr;
    let server_shutdown = shutdown.clone();
    let services = plan.services.clone();
    let embedded = plan.embedded.clone();
    let task = tokio::spawn(async move {
        // Tracing outermost, so a refused call is traced too; then who may call what.
        let layers = tower::ServiceBuilder::new()
            .layer(pl_telemetry::GrpcTraceLayer::new())
            .layer(pl_auth::AuthLayer::new(auth))
            .into_inner();
        let served = server::serve(
            &config,
            bound,
            routes.routes(),
            names,
            layers,
            server_shutdown,
        )
        .await;
        background.cancel();
        let mut first_error = served.err().map(AppError::from);
        for t in tasks {
            let outcome = t
                .await
                .map_err(|e| AppError::Task(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = outcome {
                tracing::error!(error = %e, "background task failed");
                first_error.get_or_insert(e);
            }
        }
        if let Some(log) = embedded {
            // Flush pending appends and persist the index, so the next start is fast.
            let closed = tokio::task::spawn_blocking(move || log.close())
                .await
                .map_err(|e| AppError::Task(e.to_string()))?;
            if let Err(e) = closed {
                first_error.get_or_insert(e.into());
            }
        }
        tracing::info!("stopped");
        first_error.map_or(Ok(()), Err)
    });
    Ok(Running {
        local_addr,
        services,
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tls_client_config_builds_once_the_crypto_back_end_is_chosen_in_every_build() {
        super::choose_tls_crypto();
        super::choose_tls_crypto();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        let roots = rustls::RootCertStore::empty();
        let _config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
    }
}
