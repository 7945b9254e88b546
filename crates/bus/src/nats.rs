//! The NATS JetStream adapter: one file-backed stream for `<prefix>.>` with a duplicate window
//! (message id = `Nats-Msg-Id`), durable pull consumers with explicit ack.
//!
//! Dead letters: the server is asked for one delivery more than `max_deliver`. A delivery that
//! fails on its last allowed attempt is published to `<prefix>.dlq.<durable_name>` by
//! [`Delivery::nak`]; one that arrives over the limit (the handler crashed or hung on the last
//! attempt) is dead-lettered by the consumer itself before it could be handled again. Either
//! way the original is then terminated, so nothing is silently dropped at `max_deliver`.
//!
//! Reconnecting is the client's job; every call here is bounded by `request_timeout_ms`, so an
//! outage surfaces as [`BusError::Unavailable`] instead of a hang.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{DiscardPolicy, RetentionPolicy, StorageType},
    AckKind,
};
use async_nats::HeaderMap;
use async_trait::async_trait;
use futures::StreamExt;
use uuid::Uuid;

use crate::error::BusError;
use crate::message::{check_token, dead_letter_subject, Message};
use crate::port::{Acker, Bus, Consumer, ConsumerSpec, Delivery};

/// Header JetStream de-duplicates on.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Pull requests ask for at most this many messages (also capped by `max_ack_pending`).
const MAX_PULL_BATCH: usize = 256;
/// Publishes sent before their acks are awaited, at most (bounds what a failure leaves
/// unconfirmed and what one round of acks holds).
const MAX_PUBLISHES_IN_FLIGHT: usize = 256;
/// A pull request lives this long; the server sends heartbeats at a third of it, so a dead
/// connection is noticed within about this time.
const PULL_EXPIRES_MS: u64 = 6_000;

/// A NATS user and password. The password never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUser {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for NatsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsUser {{ user: {:?}, password: *** }}", self.user)
    }
}

/// Where and how to reach JetStream, and the stream's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats://host:port`; several comma-separated for a cluster.
    pub url: String,
    pub stream_name: String,
    /// The stream holds `<subject_prefix>.>`.
    pub subject_prefix: String,
    /// A re-published message id within this time is stored once.
    pub duplicate_window_ms: u64,
    /// Stream bounds. Discard policy is `new`: when full, publish fails ([`BusError::Full`])
    /// rather than dropping messages a consumer has not seen.
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Messages older than this are removed whatever consumers have seen: a consumer must not
    /// lag further behind.
    pub max_age_ms: u64,
    pub max_payload_bytes: usize,
    pub replicas: usize,
    /// Bounds every request to the server: publish acks, stream and consumer management, acks.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Reconnect attempts back off linearly up to this.
    pub reconnect_delay_max_ms: u64,
    /// When NATS cannot be reached at start, connect in the background and create the stream
    /// and consumers on first use, instead of failing: a service then starts (and its commands
    /// succeed) while NATS is down, and the relay catches up later (principle 10).
    pub start_without_server: bool,
    /// Credentials, when the server requires them.
    pub auth: Option<NatsUser>,
}

impl NatsConfig {
    pub fn new(
        url: impl Into<String>,
        stream_name: impl Into<String>,
        subject_prefix: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            stream_name: stream_name.into(),
            subject_prefix: subject_prefix.into(),
            duplicate_window_ms: 10 * 60 * 1000,
            max_messages: 10_000_000,
            max_bytes: 1024 * 1024 * 1024,
            max_age_ms: 7 * 24 * 60 * 60 * 1000,
            max_payload_bytes: 1024 * 1024,
            replicas: 1,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            reconnect_delay_max_ms: 2_000,
            start_without_server: true,
            auth: None,
        }
    }

    fn validate(&self) -> Result<(), BusError> {
        check_token(&self.subject_prefix)
            .map_err(|reason| BusError::InvalidConfig(format!("subject prefix: {reason}")))?;
        let name_ok = !self.stream_name.is_empty()
            && self
                .stream_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !name_ok {
            return Err(BusError::InvalidConfig(format!(
                "stream name {:?}: use letters, digits, '_' and '-'",
                self.stream_name
            )));
        }
        for (what, v) in [
            ("duplicate_window_ms", self.duplicate_window_ms),
            ("max_messages", self.max_messages),
            ("max_bytes", self.max_bytes),
            ("max_age_ms", self.max_age_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if v == 0 || i64::try_from(v).is_err() {
                return Err(BusError::InvalidConfig(format!(
                    "{what} must be positive and fit in i64, got {v}"
                )));
            }
        }
        if self.duplicate_window_ms > self.max_age_ms {
            return Err(BusError::InvalidConfig(
                "duplicate_window_ms must not exceed max_age_ms".to_owned(),
            ));
        }
        Ok(())
    }
}

/// See the module docs. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Set once the stream is known to exist with our config; cleared when the server says it
    /// does not (a server restarted with an empty store), so the next call re-creates it.
    stream_ready: AtomicBool,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("config", &self.inner.config)
            .field("state", &self.inner.client.connection_state())
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl NatsBus {
    /// Connects and creates or updates the stream. When the server cannot be reached within
    /// `connect_timeout_ms` this fails with [`BusError::Unavailable`], unless
    /// `start_without_server` is set: then the client keeps connecting in the background and the
    /// stream is created on first use.
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        config.validate()?;
        let reconnect_max = ms(config.reconnect_delay_max_ms);
        let mut options = async_nats::ConnectOptions::new()
            .name("pl-bus")
            .connection_timeout(ms(config.connect_timeout_ms))
            .request_timeout(Some(ms(config.request_timeout_ms)))
            .reconnect_delay_callback(move |attempts| {
                ms(100_u64.saturating_mul(attempts as u64)).min(reconnect_max)
            });
        if config.start_without_server {
            options = options.retry_on_initial_connect();
        }
        if let Some(auth) = &config.auth {
            options = options.user_and_password(auth.user.clone(), auth.password.clone());
        }
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(unavailable)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ms(config.request_timeout_ms))
            .build(client.clone());
        let bus = Self {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                stream_ready: AtomicBool::new(false),
            }),
        };
        match bus.ensure_stream().await {
            Ok(()) => {}
            Err(BusError::Unavailable(reason)) if bus.inner.config.start_without_server => {
                tracing::warn!(
                    url = %bus.inner.config.url,
                    reason,
                    "nats unavailable at start; connecting in the background"
                );
            }
            Err(e) => return Err(e),
        }
        Ok(bus)
    }

    /// Creates or updates the stream unless that is already done.
    async fn ensure_stream(&self) -> Result<(), BusError> {
        if self.inner.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = &self.inner.config;
        let stream = jetstream::stream::Config {
            name: config.stream_name.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            duplicate_window: ms(config.duplicate_window_ms),
            max_messages: i64::try_from(config.max_messages).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
            max_age: ms(config.max_age_ms),
            max_message_size: i32::try_from(config.max_payload_bytes).unwrap_or(i32::MAX),
            num_replicas: config.replicas,
            ..Default::default()
        };
        let created = tokio::time::timeout(
            self.timeout(),
            self.inner.js.create_or_update_stream(stream),
        )
        .await
        .map_err(|_| BusError::Unavailable("creating the stream timed out".to_owned()))?;
        created.map_err(|e| {
            use async_nats::jetstream::context::CreateStreamErrorKind as K;
            match e.kind() {
                K::TimedOut | K::JetStreamUnavailable => unavailable(&e),
                _ => BusError::Backend(format!("creating stream: {e}")),
            }
        })?;
        self.inner.stream_ready.store(true, Ordering::Release);
        tracing::info!(
            url = %config.url,
            stream = %config.stream_name,
            prefix = %config.subject_prefix,
            "nats jetstream stream ready"
        );
        Ok(())
    }

    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The underlying client, for tests and tools that need a plain NATS subscription.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    fn timeout(&self) -> Duration {
        ms(self.inner.config.request_timeout_ms)
    }

    /// The major and minor version of the connected server.
    fn server_version(&self) -> (u32, u32) {
        let info = self.inner.client.server_info();
        let mut parts = info
            .version
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    fn pull_config(spec: &ConsumerSpec) -> pull::Config {
        let mut config = pull::Config {
            durable_name: Some(spec.durable_name.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ms(spec.ack_wait_ms),
            // One extra delivery: the one that arrives over the limit is dead-lettered by the
            // consumer instead of being dropped silently by the server.
            max_deliver: i64::from(spec.max_deliver) + 1,
            max_ack_pending: i64::from(spec.max_ack_pending),
            ..Default::default()
        };
        match spec.filter_subjects.as_slice() {
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        config
    }

    async fn create_consumer(&self, config: &pull::Config) -> Result<PullConsumer, BusError> {
        use async_nats::jetstream::stream::ConsumerErrorKind as K;
        self.ensure_stream().await?;
        // Before 2.10 the server ignores `filter_subjects` and would deliver everything.
        if config.filter_subjects.len() > 1 && self.server_version() < (2, 10) {
            return Err(BusError::InvalidConfig(format!(
                "consumer {}: several filter subjects need nats-server 2.10 or later",
                config.durable_name.as_deref().unwrap_or_default()
            )));
        }
        self.inner
            .js
            .create_consumer_on_stream(config.clone(), self.inner.config.stream_name.as_str())
            .await
            .map_err(|e| match e.kind() {
                K::TimedOut | K::Request => unavailable(&e),
                _ => BusError::Backend(format!("creating consumer: {e}")),
            })
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, msg: Message) -> Result<(), BusError> {
        self.publish_many(vec![msg]).await
    }

    /// Sends up to [`MAX_PUBLISHES_IN_FLIGHT`] messages before awaiting their acks (in order),
    /// so a batch costs about one round trip per window instead of one per message. Each ack
    /// still says the message is stored; nothing is reported accepted before it is.
    async fn publish_many(&self, msgs: Vec<Message>) -> Result<(), BusError> {
        let config = &self.inner.config;
        for msg in &msgs {
            msg.validate(&config.subject_prefix, config.max_payload_bytes)?;
        }
        self.ensure_stream().await?;
        let js = &self.inner.js;
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let window: Vec<Message> = msgs.by_ref().take(MAX_PUBLISHES_IN_FLIGHT).collect();
            let sent = async {
                let mut acks = Vec::with_capacity(window.len());
                for msg in window {
                    let mut headers = HeaderMap::new();
                    for (name, value) in &msg.headers {
                        headers.insert(name.as_str(), value.as_str());
                    }
                    let publish = PublishMessage::build()
                        .payload(msg.payload)
                        .headers(headers)
                        .message_id(msg.id.to_string());
                    let ack = js
                        .send_publish(msg.subject.clone(), publish)
                        .await
                        .map_err(|e| (msg.id, e))?;
                    acks.push((msg.id, msg.subject, ack));
                }
                for (id, subject, ack) in acks {
                    let ack = ack.await.map_err(|e| (id, e))?;
                    if ack.duplicate {
                        tracing::debug!(message_id = %id, %subject, "duplicate publish dropped by jetstream");
                    }
                }
                Ok::<(), (Uuid, async_nats::jetstream::context::PublishError)>(())
            };
            match tokio::time::timeout(self.timeout(), sent).await {
                Err(_) => return Err(BusError::Unavailable("publish ack timed out".to_owned())),
                Ok(Err((id, e))) => {
                    if e.kind() == PublishErrorKind::StreamNotFound {
                        self.inner.stream_ready.store(false, Ordering::Release);
                    }
                    return Err(publish_error(id, &e));
                }
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BusError> {
        spec.validate()?;
        let config = Self::pull_config(&spec);
        let consumer = match self.create_consumer(&config).await {
            Ok(c) => Some(c),
            // Created on the first `next` once the server is back.
            Err(BusError::Unavailable(reason)) if self.inner.config.start_without_server => {
                tracing::warn!(consumer = %spec.durable_name, reason, "nats unavailable; consumer will be created on first use");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Box::new(NatsConsumer {
            bus: self.clone(),
            dead_letter_subject: dead_letter_subject(
                &self.inner.config.subject_prefix,
                &spec.durable_name,
            ),
            spec,
            config,
            consumer,
            messages: None,
        }))
    }
}

fn publish_error(id: Uuid, e: &jetstream::context::PublishError) -> BusError {
    let text = e.to_string();
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => BusError::Unavailable(text),
        PublishErrorKind::MaxPayloadExceeded => BusError::InvalidMessage { id, reason: text },
        // JetStream's discard-new refusals: "maximum messages exceeded", "maximum bytes exceeded".
        _ if text.contains("maximum") => BusError::Full(text),
        _ => BusError::Backend(text),
    }
}

struct NatsConsumer {
    bus: NatsBus,
    spec: ConsumerSpec,
    config: pull::Config,
    dead_letter_subject: String,
    /// `None` after an error: re-created (idempotently) on the next call, which also brings a
    /// deleted consumer back.
    consumer: Option<PullConsumer>,
    messages: Option<pull::Stream>,
}

impl NatsConsumer {
    async fn open(&mut self) -> Result<&mut pull::Stream, BusError> {
        if self.messages.is_none() {
            let consumer = match self.consumer.take() {
                Some(c) => c,
                None => self.bus.create_consumer(&self.config).await?,
            };
            let batch = MAX_PULL_BATCH
                .min(self.spec.max_ack_pending as usize)
                .max(1);
            let opened = tokio::time::timeout(
                self.bus.timeout(),
                consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .expires(ms(PULL_EXPIRES_MS))
                    .heartbeat(ms(PULL_EXPIRES_MS / 3))
                    .messages(),
            )
            .await
            .map_err(|_| BusError::Unavailable("opening pull subscription timed out".to_owned()))?
            .map_err(unavailable)?;
            self.consumer = Some(consumer);
            self.messages = Some(opened);
        }
        self.messages
            .as_mut()
            .ok_or_else(|| BusError::Unavailable("pull subscription closed".to_owned()))
    }

    fn reset(&mut self, reason: &str) -> BusError {
        tracing::warn!(consumer = %self.spec.durable_name, reason, "pull subscription lost; reopening on next call");
        self.messages = None;
        self.consumer = None;
        BusError::Unavailable(reason.to_owned())
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let received = self.open().await?.next().await;
            let raw = match received {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(self.reset(&e.to_string())),
                None => return Err(self.reset("pull subscription ended")),
            };
            let (delivered, stream_sequence) = match raw.info() {
                Ok(info) => (info.delivered, info.stream_sequence),
                Err(e) => {
                    // Without an ack subject it cannot be settled; it will come back.
                    tracing::warn!(error = %e, "message without jetstream metadata skipped");
                    continue;
                }
            };
            let delivered_count = u32::try_from(delivered).unwrap_or(u32::MAX);
            let (message, defect) =
                to_message(&raw, &self.bus.inner.config.stream_name, stream_sequence);
            let acker = Box::new(NatsAcker {
                bus: self.bus.clone(),
                raw,
            });
            let delivery = Delivery::new(
                message,
                delivered_count,
                &self.spec,
                self.dead_letter_subject.clone(),
                acker,
            );
            let reason = match defect {
                Some(defect) => defect,
                None if delivered_count > self.spec.max_deliver => {
                    "not acknowledged after max_deliver deliveries".to_owned()
                }
                None => return Ok(delivery),
            };
            if let Err(e) = delivery.dead_letter(&reason).await {
                tracing::warn!(consumer = %self.spec.durable_name, error = %e, "dead-lettering failed; it will be retried on redelivery");
            }
        }
    }
}

/// The bus message of a JetStream message, and what is wrong with it if it cannot be handled.
fn to_message(
    raw: &jetstream::Message,
    stream_name: &str,
    stream_sequence: u64,
) -> (Message, Option<String>) {
    let mut headers = BTreeMap::new();
    let mut id = None;
    if let Some(h) = &raw.headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.last() else { continue };
            if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                id = Uuid::parse_str(value.as_str()).ok();
            } else if !(name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-")) {
                headers.insert(name.to_owned(), value.as_str().to_owned());
            }
        }
    }
    let defect = id
        .is_none()
        .then(|| "message has no uuid Nats-Msg-Id".to_owned());
    // A stable stand-in id, so its dead letter is de-duplicated too.
    let id = id.unwrap_or_else(|| {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("nats:{stream_name}:{stream_sequence}").as_bytes(),
        )
    });
    let message = Message {
        id,
        subject: raw.subject.to_string(),
        payload: raw.payload.clone(),
        headers,
    };
    (message, defect)
}

struct NatsAcker {
    bus: NatsBus,
    raw: jetstream::Message,
}

impl NatsAcker {
    async fn send(&self, kind: AckKind) -> Result<(), BusError> {
        // A plain ack is fire-and-forget: if it is lost the message is redelivered, which the
        // idempotent handler absorbs. The timeout only bounds handing it to the client.
        tokio::time::timeout(self.bus.timeout(), self.raw.ack_with(kind))
            .await
            .map_err(|_| BusError::Unavailable("ack timed out".to_owned()))?
            .map_err(unavailable)
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.send(AckKind::Ack).await
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.send(AckKind::Nak(Some(delay))).await
    }

    async fn term(&self) -> Result<(), BusError> {
        self.send(AckKind::Term).await
    }

    async fn publish(&self, msg: Message) -> Result<(), BusError> {
        self.bus.publish(msg).await
    }
}
