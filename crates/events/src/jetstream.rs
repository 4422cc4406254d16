//! The NATS JetStream backend: a relay per shard moves the outbox into one stream, and a
//! durable pull consumer per (consumer, partition) applies what it reads exactly once in effect.
//!
//! - **Subjects.** `<prefix>.<partition>.<type>` (`kirana.ev.7.order.placed`): a store's
//!   events share one partition, so one filtered consumer sees them in stream order.
//! - **Relay.** Reads its shard's outbox from a position kept in the shard, publishes each row
//!   with `Nats-Msg-Id` = event id (JetStream drops a republished row inside the duplicate
//!   window), and only then records the position and trims the outbox. A failed publish is
//!   retried from the recorded position, so nothing is lost and nothing is doubled.
//! - **Order.** Publishes are pipelined, but never two of one store at once: a batch goes out
//!   in waves, each holding at most one event per store, and the next wave waits for the
//!   acknowledgements of the last. A publish lost in a reconnect can therefore never be
//!   overtaken by a later event of its store that the client sent after the reconnect.
//!   Consumers read strictly in order and acknowledge only after the effects committed. When a
//!   delivery may have been lost (a reconnect, a gap in the consumer's delivery sequence, a
//!   pull that ended as a message reached it, a restart with messages in flight) the durable
//!   consumer is recreated from its ack floor, so the partition is read again in order from
//!   the first unacknowledged event, instead of JetStream redelivering that one `ack_wait`
//!   later, after its successors.
//! - **Exactly once in effect.** Redelivery is normal (lost acks, resets, a server restart);
//!   the shard records each (consumer, event id) in the transaction that applies the effects.
//! - **Poison.** An event a consumer cannot handle is retried in place with backoff (its
//!   partition waits; the others are tasks of their own), then published to the dead-letter
//!   stream with the error, recorded in the shard's dead letters (so `kirana events dlq` works
//!   as for the embedded backend), acknowledged, and the partition moves on.
//!
//! One node runs a given partition's consumers at a time, under a lease ([`jobs`] and
//! [`crate::assign`]): the consumer's reset deletes and recreates the durable, which two
//! processes sharing it would fight over. Several nodes split the partitions and relays between
//! them, and a dead node's share moves to the others when its leases run out.
//!
//! Effects are applied on the shard where the event's store lives *when they are applied*, not
//! where it was logged: a store moves between shards, and its rollups, dedup records and queues
//! move with it (see `Worker::flush`).

use std::collections::{BTreeMap, HashMap};
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, stream};
use futures::{FutureExt, StreamExt, TryStreamExt};
use kirana_domain::event::Event;
use kirana_domain::{Clock, EventId, StoreId, Timestamp};
use kirana_resilience::{Breaker, BreakerState, Failure};
use kirana_storage::trace::TraceParent;
use kirana_storage::{Applied, Logged, ShardLog, Storage, StorageError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consumers::Consumer;
use crate::embedded::RetryPolicy;
use crate::partition::partition_of;
use crate::status::Heartbeats;

/// The name the relay's position is kept under in each shard (partition 0).
pub const RELAY: &str = "relay";

/// Header naming the shard whose outbox an event came from: consumers apply its effects there
/// without asking the directory, exactly where the embedded backend would.
const SHARD_HEADER: &str = "Kirana-Shard";
/// Header with the event's outbox position in its shard (for people reading the stream).
const SEQ_HEADER: &str = "Kirana-Seq";
const ERROR_HEADER: &str = "Kirana-Error";
/// The W3C trace context of the request that wrote the event, for consumers to join its trace.
const TRACEPARENT_HEADER: &str = "traceparent";

/// How the backend reaches NATS and lays out its streams.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// `nats://host:port`, or several separated by commas.
    pub url: String,
    /// The event stream, e.g. `KIRANA_EVENTS`.
    pub stream: String,
    /// The dead-letter stream, e.g. `KIRANA_DLQ`.
    pub dlq_stream: String,
    /// Events are published to `<subject_prefix>.<partition>.<type>`; the stream holds
    /// `<subject_prefix>.>`. Two streams may not share subjects, so tests use their own.
    pub subject_prefix: String,
    /// Parked events are published to `<dlq_prefix>.<consumer>.<partition>`.
    pub dlq_prefix: String,
    pub partitions: u32,
    /// How long JetStream remembers message ids: a relay that republishes within it (after a
    /// crash between publishing and recording its position) adds nothing to the stream.
    pub duplicate_window: Duration,
    /// How long the stream keeps events. A consumer that is further behind than this loses
    /// events, so it is days, not minutes.
    pub max_age: Duration,
    /// How long the dead-letter stream keeps parked events (zero: for ever).
    pub dlq_max_age: Duration,
    /// How long JetStream waits for a consumer's ack before redelivering. Generous: resets,
    /// not redelivery, put a partition back in order, and a poison event's retries send
    /// progress acks.
    pub ack_wait: Duration,
    /// Outbox rows a relay publishes per batch.
    pub relay_batch: u32,
    /// Messages a consumer asks for per pull.
    pub fetch_batch: usize,
    /// How long a pull waits on the server for messages before it is renewed.
    pub fetch_wait: Duration,
    /// How long an idle relay waits before reading the outbox again.
    pub idle: Duration,
    /// The limit on every request to NATS (connect, publish ack, stream and consumer calls).
    pub timeout: Duration,
    /// How long the connection's breaker, once open, keeps relays and consumers off NATS
    /// before one of them probes it.
    pub breaker_cool_off: Duration,
    /// Readers of the outbox itself, one position per shard (the search indexer), that the
    /// relay's trimming waits for: the stream is the consumers' log, not theirs.
    pub trim_behind: Vec<String>,
}

/// The namespace of a deployment's streams and subjects unless it names its own.
pub const DEFAULT_NAMESPACE: &str = "kirana";

impl JetStreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        JetStreamConfig::namespaced(url, DEFAULT_NAMESPACE)
    }

    /// The streams and subjects of one deployment on a NATS shared with others: `<NS>_EVENTS`
    /// and `<NS>_DLQ`, subjects `<ns>.ev.>` and `<ns>.dlq.>` (durable consumers are named within
    /// their stream, so they cannot meet either). `namespace` must be a valid subject token
    /// ([`valid_namespace`]).
    pub fn namespaced(url: impl Into<String>, namespace: &str) -> Self {
        let upper = namespace.to_ascii_uppercase().replace('-', "_");
        JetStreamConfig {
            url: url.into(),
            stream: format!("{upper}_EVENTS"),
            dlq_stream: format!("{upper}_DLQ"),
            subject_prefix: format!("{namespace}.ev"),
            dlq_prefix: format!("{namespace}.dlq"),
            partitions: crate::partition::DEFAULT_PARTITIONS,
            duplicate_window: Duration::from_secs(10 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            dlq_max_age: Duration::ZERO,
            ack_wait: Duration::from_secs(5 * 60),
            relay_batch: 500,
            fetch_batch: 256,
            fetch_wait: Duration::from_secs(2),
            idle: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            breaker_cool_off: Duration::from_secs(1),
            trim_behind: Vec::new(),
        }
    }
}

/// Whether `ns` can name a deployment's streams: 1–32 of `a-z`, `0-9`, `_` and `-`, starting
/// with a letter (a subject token and, upper-cased, a stream name).
pub fn valid_namespace(ns: &str) -> bool {
    (1..=32).contains(&ns.len())
        && ns.starts_with(|c: char| c.is_ascii_lowercase())
        && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig::new("nats://127.0.0.1:4222")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn nats(e: impl std::fmt::Display) -> Error {
    Error::Nats(e.to_string())
}

/// What a failed step says about NATS: nothing when the database failed it.
fn breaker_failure(e: &Error) -> Option<Failure> {
    match e {
        // Our own deadline, or the client's ("request timed out").
        Error::Nats(m) if m.contains(NO_ANSWER) || m.contains("timed out") => Some(Failure::Timeout),
        Error::Nats(_) => Some(Failure::Error),
        Error::Storage(_) => None,
    }
}

/// `host:port` of the first server in a NATS URL list, for the breaker's label.
fn nats_instance(url: &str) -> String {
    let first = url.split(',').next().unwrap_or(url).trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    rest.rsplit_once('@').map_or(rest, |(_, r)| r).trim_end_matches('/').to_string()
}

/// Says a call hit its deadline (see [`within`]).
const NO_ANSWER: &str = "no answer within";

impl JetStreamBus {
    /// Before a step: whether the connection's breaker lets it go, else how long to wait.
    fn may_call(&self) -> Result<(), Duration> {
        if self.inner.breaker.allow() {
            Ok(())
        } else {
            Err(self.inner.breaker.open_for().unwrap_or(Duration::from_millis(100)))
        }
    }

    /// After a step: tells the breaker how NATS did.
    fn called<T>(&self, result: &Result<T, Error>) {
        match result {
            Ok(_) => self.inner.breaker.success(),
            Err(e) => {
                let Some(f) = breaker_failure(e) else { return };
                if f == Failure::Timeout {
                    self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("kirana_nats_timeouts_total").increment(1);
                }
                if self.inner.breaker.failure(f) {
                    tracing::warn!(error = %e, "NATS is not answering; relays and consumers wait for a probe");
                }
            }
        }
    }

    /// Steps that waited out a NATS deadline since the connection opened.
    pub fn timeouts(&self) -> u64 {
        self.inner.timeouts.load(Ordering::Relaxed)
    }

    /// Durable consumers recreated from their ack floor since the connection opened.
    pub fn resets(&self) -> u64 {
        self.inner.resets.load(Ordering::Relaxed)
    }

    /// The connection's breaker state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }
}

/// Runs `fut` with a deadline: no call to NATS may hang a worker.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| Error::Nats(format!("{what}: {e}"))),
        Err(_) => Err(Error::Nats(format!("{what}: {NO_ANSWER} {limit:?}"))),
    }
}

/// A connection to NATS and the streams the backend uses. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: JetStreamConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Moves on every disconnect. A consumer that sees it move resets before reading on: a
    /// delivery or pull request may have been lost with the connection.
    epoch: watch::Sender<u64>,
    /// Both streams are known to exist (cleared when a publish fails, so a server that came
    /// back without its data gets them again).
    ready: AtomicBool,
    heartbeats: Arc<Heartbeats>,
    /// The connection's breaker, shared by every relay and consumer on it: when NATS stops
    /// answering, one of them pays the timeout and the rest wait for a probe instead of each
    /// paying it (a node runs a consumer task per partition and consumer: dozens).
    breaker: Arc<Breaker>,
    /// Calls that hit their deadline (`kirana_nats_timeouts_total`).
    timeouts: Arc<std::sync::atomic::AtomicU64>,
    /// Durable consumers this node recreated from their ack floor
    /// (`kirana_jetstream_consumer_resets_total`): one per handover or lost delivery; a steady
    /// stream of them means two processes share a partition.
    resets: Arc<std::sync::atomic::AtomicU64>,
}

impl JetStreamBus {
    /// A client that connects in the background and reconnects for ever: nothing here waits
    /// for the server, so a node whose NATS is down at start still starts, keeps taking orders
    /// into the outbox, and relays them once NATS answers. Fails only on a malformed URL.
    pub async fn open(cfg: JetStreamConfig) -> Result<JetStreamBus, Error> {
        let (epoch, _) = watch::channel(0u64);
        let epoch_tx = epoch.clone();
        let client = async_nats::ConnectOptions::new()
            .name("kirana-events")
            .connection_timeout(cfg.timeout)
            .request_timeout(Some(cfg.timeout))
            .ping_interval(Duration::from_secs(10))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50u64.saturating_mul(1 << attempts.min(6))).min(Duration::from_secs(2))
            })
            .event_callback(move |event| {
                let epoch = epoch_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting");
                            epoch.send_modify(|e| *e += 1);
                        }
                        other => tracing::warn!(event = %other, "NATS client event"),
                    }
                }
            })
            .connect(cfg.url.as_str())
            .await
            .map_err(nats)?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(cfg.timeout)
            .ack_timeout(cfg.timeout)
            .build(client.clone());
        let breaker = Arc::new(Breaker::new(3, cfg.breaker_cool_off).named("nats", nats_instance(&cfg.url)));
        Ok(JetStreamBus {
            inner: Arc::new(Inner {
                cfg,
                client,
                js,
                epoch,
                ready: AtomicBool::new(false),
                heartbeats: Arc::new(Heartbeats::default()),
                breaker,
                timeouts: Arc::default(),
                resets: Arc::default(),
            }),
        })
    }

    /// Reports liveness of every relay (`relay/shard-N`) and consumer (`<name>/pN`) here.
    pub fn with_heartbeats(self, heartbeats: Arc<Heartbeats>) -> Self {
        let i = &self.inner;
        JetStreamBus {
            inner: Arc::new(Inner {
                cfg: i.cfg.clone(),
                client: i.client.clone(),
                js: i.js.clone(),
                epoch: i.epoch.clone(),
                ready: AtomicBool::new(i.ready.load(Ordering::Relaxed)),
                heartbeats,
                breaker: i.breaker.clone(),
                timeouts: i.timeouts.clone(),
                resets: i.resets.clone(),
            }),
        }
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.inner.cfg
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub fn heartbeats(&self) -> &Arc<Heartbeats> {
        &self.inner.heartbeats
    }

    fn epoch(&self) -> u64 {
        *self.inner.epoch.borrow()
    }

    /// The subject of an event: `<prefix>.<partition>.<type>`.
    pub fn subject(&self, partition: u32, kind: &str) -> String {
        format!("{}.{partition}.{}", self.inner.cfg.subject_prefix, subject_tokens(kind))
    }

    /// Everything in one partition.
    pub fn partition_filter(&self, partition: u32) -> String {
        format!("{}.{partition}.>", self.inner.cfg.subject_prefix)
    }

    pub fn dlq_subject(&self, consumer: &str, partition: u32) -> String {
        format!("{}.{}.{partition}", self.inner.cfg.dlq_prefix, subject_tokens(consumer))
    }

    /// The durable consumer of one consumer's partition.
    pub fn durable_name(consumer: &str, partition: u32) -> String {
        let name: String =
            consumer.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        format!("{name}-p{partition}")
    }

    /// Creates the event and dead-letter streams unless they exist (an existing stream's
    /// settings are left as they are).
    pub async fn ensure_streams(&self) -> Result<(), Error> {
        if self.inner.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let cfg = &self.inner.cfg;
        let events = stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject_prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: cfg.duplicate_window,
            max_age: cfg.max_age,
            num_replicas: 1,
            ..Default::default()
        };
        within(cfg.timeout, "creating the event stream", self.inner.js.get_or_create_stream(events)).await?;
        let dlq = stream::Config {
            name: cfg.dlq_stream.clone(),
            subjects: vec![format!("{}.>", cfg.dlq_prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: cfg.duplicate_window,
            max_age: cfg.dlq_max_age,
            num_replicas: 1,
            ..Default::default()
        };
        within(cfg.timeout, "creating the dead-letter stream", self.inner.js.get_or_create_stream(dlq)).await?;
        self.inner.ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn stream(&self) -> Result<stream::Stream<()>, Error> {
        self.ensure_streams().await?;
        within(
            self.inner.cfg.timeout,
            "opening the event stream",
            self.inner.js.get_stream_no_info(&self.inner.cfg.stream),
        )
        .await
    }
}

/// Opens the bus and makes sure its streams exist: for commands that need NATS now
/// (`kirana events status`). A server that does not answer within the timeout is an error.
pub async fn connect(cfg: JetStreamConfig) -> Result<JetStreamBus, Error> {
    let bus = JetStreamBus::open(cfg).await?;
    bus.ensure_streams().await?;
    Ok(bus)
}

/// A subject token from free text: dots kept as separators, anything a subject may not hold
/// replaced, no empty tokens.
fn subject_tokens(s: &str) -> String {
    let t: Vec<String> = s
        .split('.')
        .filter(|t| !t.is_empty())
        .map(|t| t.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect())
        .collect();
    if t.is_empty() { "_".into() } else { t.join(".") }
}

/// The pause after `failures` consecutive failures to reach NATS or the database: exponential
/// with full jitter, capped at 5 s.
fn outage_delay(failures: u32) -> Duration {
    RetryPolicy { attempts: u32::MAX, base: Duration::from_millis(100), max: Duration::from_secs(5) }
        .delay(failures.saturating_sub(1))
}

/// Waits `d`, or less if shutdown is asked for. Returns whether to stop.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// Moves one shard's outbox into the stream until `shutdown`: reads from the relay's recorded
/// position, publishes, records the new position, trims what was published. When NATS is
/// down the outbox simply grows (checkouts do not notice), and drains when it returns.
pub async fn run_relay(
    bus: JetStreamBus,
    storage: Storage,
    shard: usize,
    mut shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) {
    let key = format!("{RELAY}/shard-{shard}");
    let mut relay = Relay { bus, storage, shard, clock, position: None };
    let mut failures = 0u32;
    let mut last_beat = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Err(wait) = relay.bus.may_call() {
            relay.bus.inner.heartbeats.beat(&key);
            if pause(wait, &mut shutdown).await {
                return;
            }
            continue;
        }
        let step = relay.step().await;
        relay.bus.called(&step);
        let wait = match step {
            Ok(0) => {
                failures = 0;
                relay.bus.inner.cfg.idle
            }
            Ok(_) => {
                failures = 0;
                Duration::ZERO
            }
            Err(e) => {
                failures += 1;
                relay.position = None;
                let d = outage_delay(failures);
                tracing::warn!(relay = %key, error = %e, failures, retry_in_ms = d.as_millis() as u64,
                    "relay failed; retrying from its recorded position");
                d
            }
        };
        relay.bus.inner.heartbeats.beat(&key);
        if failures == 0 && last_beat.elapsed() >= Duration::from_secs(10) {
            // Rewrites the position as it is: status sees the relay alive while idle.
            if let Err(e) = relay.beat().await {
                tracing::warn!(relay = %key, error = %e, "could not record a heartbeat");
            }
            last_beat = tokio::time::Instant::now();
        }
        if !wait.is_zero() && pause(wait, &mut shutdown).await {
            return;
        }
    }
}

struct Relay {
    bus: JetStreamBus,
    storage: Storage,
    shard: usize,
    clock: Arc<dyn Clock>,
    /// Everything up to here is in the stream and recorded; `None`: read it from the shard.
    position: Option<i64>,
}

impl Relay {
    fn log(&self) -> Result<&dyn ShardLog, Error> {
        self.storage
            .logs()
            .nth(self.shard)
            .ok_or_else(|| Error::Storage(StorageError::Internal(format!("there is no shard {}", self.shard))))
    }

    async fn position(&mut self) -> Result<i64, Error> {
        if let Some(p) = self.position {
            return Ok(p);
        }
        let p = self.log()?.positions(RELAY).await?.into_iter().find(|(p, _)| *p == 0).map(|(_, s)| s).unwrap_or(0);
        self.position = Some(p);
        Ok(p)
    }

    async fn beat(&mut self) -> Result<(), Error> {
        let p = self.position().await?;
        self.log()?.apply(RELAY, vec![], vec![(0, p)], self.clock.now()).await?;
        Ok(())
    }

    /// Publishes one batch. Returns how many rows it moved.
    async fn step(&mut self) -> Result<usize, Error> {
        let from = self.position().await?;
        let rows = self.log()?.outbox_after(from, self.bus.inner.cfg.relay_batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        self.bus.ensure_streams().await?;
        let (acked, failure) = self.publish(&rows).await;
        if acked > 0 {
            let upto = rows[acked - 1].seq;
            let log = self.log()?;
            log.apply(RELAY, vec![], vec![(0, upto)], self.clock.now()).await?;
            // The relay, not the consumers, trims in this backend (the stream is their log),
            // but no further than what the outbox's own readers have read.
            let mut floor = upto;
            for name in &self.bus.inner.cfg.trim_behind {
                let read = log.positions(name).await?.iter().find(|(p, _)| *p == 0).map_or(0, |(_, s)| *s);
                floor = floor.min(read);
            }
            if floor > 0 {
                log.trim_outbox(floor).await?;
            }
            self.position = Some(upto);
        }
        match failure {
            Some(e) => {
                self.bus.inner.ready.store(false, Ordering::Release);
                Err(e)
            }
            None => Ok(rows.len()),
        }
    }

    /// Publishes rows in waves of at most one event per store (see the module docs), each wave
    /// pipelined. Returns the length of the prefix of `rows` the stream acknowledged, and the
    /// first failure.
    async fn publish(&self, rows: &[Logged]) -> (usize, Option<Error>) {
        let cfg = &self.bus.inner.cfg;
        let mut waves: Vec<Vec<usize>> = Vec::new();
        let mut seen: HashMap<StoreId, usize> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            let n = seen.entry(r.event.store_id).or_insert(0);
            if waves.len() <= *n {
                waves.push(Vec::new());
            }
            waves[*n].push(i);
            *n += 1;
        }
        let mut acked = vec![false; rows.len()];
        let mut failure = None;
        for wave in waves {
            let mut pending = Vec::with_capacity(wave.len());
            for i in wave {
                let r = &rows[i];
                let payload = match serde_json::to_vec(&r.event) {
                    Ok(p) => p,
                    Err(e) => {
                        failure = Some(Error::Nats(format!("cannot encode event {}: {e}", r.event.id)));
                        break;
                    }
                };
                let subject = self.bus.subject(partition_of(r.event.store_id, cfg.partitions), &r.event.kind);
                let mut msg = Publish::build()
                    .payload(payload.into())
                    .message_id(r.event.id.to_string())
                    .header(SHARD_HEADER, self.shard.to_string())
                    .header(SEQ_HEADER, r.seq.to_string());
                if let Some(tp) = r.traceparent {
                    msg = msg.header(TRACEPARENT_HEADER, tp.to_string());
                }
                match within(cfg.timeout, "publishing", self.bus.inner.js.send_publish(subject, msg)).await {
                    Ok(ack) => pending.push((i, ack)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            // One deadline for the whole wave: acks lost with a connection must not be waited
            // for one timeout after another.
            let deadline = tokio::time::Instant::now() + cfg.timeout;
            for (i, ack) in pending {
                match tokio::time::timeout_at(deadline, ack.into_future()).await {
                    Ok(Ok(_)) => acked[i] = true,
                    Ok(Err(e)) => {
                        failure.get_or_insert(nats(format!("waiting for the stream's ack: {e}")));
                    }
                    Err(_) => {
                        failure.get_or_insert(Error::Nats(format!("no ack from the stream within {:?}", cfg.timeout)));
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        (acked.iter().take_while(|a| **a).count(), failure)
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers.

/// The event as the relay serialised it ([`Event`] is only `Serialize`).
#[derive(Deserialize)]
struct Wire {
    id: EventId,
    store_id: StoreId,
    #[serde(rename = "type")]
    kind: String,
    version: u32,
    occurred_at: Timestamp,
    payload: Value,
}

impl From<Wire> for Event {
    fn from(w: Wire) -> Event {
        Event {
            id: w.id,
            store_id: w.store_id,
            kind: w.kind,
            version: w.version,
            occurred_at: w.occurred_at,
            payload: w.payload,
        }
    }
}

/// What a message turned out to be.
enum Judged {
    /// Its effects, and the shard to apply them in.
    Ready(usize, Applied),
    /// A poison message: the error, and the event and its shard when those could be read.
    Failed(String, Option<(Event, Option<usize>)>),
}

/// One message read but not yet acknowledged, whose effects are ready.
struct Ready {
    msg: jetstream::Message,
    /// The shard whose outbox logged it: where it is applied when the directory cannot say
    /// where its store lives now.
    logged_on: usize,
    applied: Applied,
}

/// Whether a worker should go on or stop (shutdown was asked for while it waited).
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Idle,
    Progress,
    Stop,
}

/// Applies one consumer's partition from the stream until `shutdown`. Reads in stream order,
/// applies each event's effects in the shard that logged it (once per event id, whatever the
/// redeliveries) and acknowledges after they committed. A failing event is retried with
/// `retry`, then parked; database or NATS trouble is retried until it passes, without acking.
pub async fn run_consumer(
    bus: JetStreamBus,
    storage: Storage,
    consumer: Arc<dyn Consumer>,
    partition: u32,
    mut shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
) {
    let key = format!("{}/p{partition}", consumer.name());
    let mut w = Worker {
        durable: JetStreamBus::durable_name(consumer.name(), partition),
        bus,
        storage,
        consumer,
        partition,
        clock,
        retry,
        pull: None,
        epoch: 0,
        batch: None,
        seen: 0,
        verify: false,
        reset: false,
        floor: None,
    };
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Err(wait) = w.bus.may_call() {
            w.bus.inner.heartbeats.beat(&key);
            if pause(wait, &mut shutdown).await {
                return;
            }
            continue;
        }
        let step = w.step(&mut shutdown).await;
        w.bus.called(&step);
        let wait = match step {
            Ok(Step::Stop) => return,
            Ok(Step::Progress) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(Step::Idle) => {
                failures = 0;
                w.bus.inner.cfg.idle
            }
            Err(e) => {
                failures += 1;
                w.pull = None;
                w.batch = None;
                let d = outage_delay(failures);
                tracing::warn!(consumer = %key, error = %e, failures, retry_in_ms = d.as_millis() as u64,
                    "event consumer could not read; retrying");
                d
            }
        };
        w.bus.inner.heartbeats.beat(&key);
        if !wait.is_zero() && pause(wait, &mut shutdown).await {
            return;
        }
    }
}

struct Worker {
    bus: JetStreamBus,
    storage: Storage,
    consumer: Arc<dyn Consumer>,
    partition: u32,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    durable: String,
    /// The durable consumer, opened (and reset if need be) in connection epoch `epoch`.
    pull: Option<PullConsumer>,
    epoch: u64,
    /// The pull request being read. It is kept across steps until it ends: dropping one the
    /// server still serves would lose its deliveries.
    batch: Option<Pull>,
    /// The consumer sequence of the last delivery this worker saw. JetStream numbers
    /// deliveries 1, 2, 3…; a gap means one was delivered and lost (to a pull that ended just
    /// as it arrived, or with a connection). JetStream would redeliver it only after
    /// `ack_wait`, behind its successors; the worker resets instead.
    seen: u64,
    /// A pull ended before it was filled: before the next, make sure nothing was delivered
    /// to it after it ended.
    verify: bool,
    /// Reset the consumer at the next open, whatever its state.
    reset: bool,
    /// The ack floor seen at the last reset, to recreate the consumer from should it vanish
    /// between the delete and the create.
    floor: Option<u64>,
}

struct Pull {
    batch: Batch,
    /// When it is over at the latest (see [`PULL_GRACE`]).
    over: tokio::time::Instant,
    received: usize,
}

/// How long after a pull's expiry the worker waits for the server to say it expired. Some
/// servers (2.9) now and then never say so when a message reaches the pull just as it expires;
/// waiting longer would hold the partition up for nothing. Ending a pull too early is safe: if
/// the server still delivers to it, the next delivery shows a gap, or the check after an
/// unfilled pull sees a delivery the worker never saw, and the consumer is reset.
const PULL_GRACE: Duration = Duration::from_millis(200);

impl Worker {
    fn timeout(&self) -> Duration {
        self.bus.inner.cfg.timeout
    }

    /// Opens the durable consumer, creating it if missing. If anything is in flight (messages
    /// delivered but not acknowledged, or a pull request still waiting) it was delivered to a
    /// reader that is gone: the consumer is recreated from its ack floor so those events come
    /// again, in order, before anything after them.
    async fn open(&mut self) -> Result<(), Error> {
        self.batch = None;
        self.pull = None;
        self.verify = false;
        let epoch = self.bus.epoch();
        let stream = self.bus.stream().await?;
        let t = self.timeout();
        let start_after = match tokio::time::timeout(t, stream.consumer_info(&self.durable)).await {
            Err(_) => return Err(Error::Nats("reading the consumer: no answer".into())),
            Ok(Ok(info)) => {
                if !self.reset && info.num_ack_pending == 0 && info.num_waiting == 0 {
                    let pull = within(t, "opening the consumer", stream.get_consumer(&self.durable)).await?;
                    self.seen = info.delivered.consumer_sequence;
                    self.pull = Some(pull);
                    self.epoch = epoch;
                    return Ok(());
                }
                // A consumer recreated at sequence n reports a floor of 0 until its first ack,
                // yet nothing before n can reach it.
                let start = match info.config.deliver_policy {
                    DeliverPolicy::ByStartSequence { start_sequence } => start_sequence.saturating_sub(1),
                    _ => 0,
                };
                let floor = info.ack_floor.stream_sequence.max(start);
                tracing::info!(consumer = %self.durable, ack_floor = floor, in_flight = info.num_ack_pending,
                    waiting = info.num_waiting, "resetting the consumer to its ack floor");
                self.bus.inner.resets.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kirana_jetstream_consumer_resets_total").increment(1);
                self.floor = Some(floor);
                within(t, "resetting the consumer", stream.delete_consumer(&self.durable)).await?;
                floor
            }
            Ok(Err(e)) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => self.floor.unwrap_or(0),
            Ok(Err(e)) => {
                if matches!(e.kind(), ConsumerInfoErrorKind::StreamNotFound) {
                    self.bus.inner.ready.store(false, Ordering::Release);
                }
                return Err(nats(format!("reading the consumer: {e}")));
            }
        };
        let cfg = &self.bus.inner.cfg;
        let config = consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(format!("{} on partition {}", self.consumer.name(), self.partition)),
            filter_subject: self.bus.partition_filter(self.partition),
            ack_policy: AckPolicy::Explicit,
            ack_wait: cfg.ack_wait,
            max_ack_pending: (cfg.fetch_batch as i64 * 4).max(1000),
            deliver_policy: if start_after == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence { start_sequence: start_after + 1 }
            },
            ..Default::default()
        };
        let pull = within(t, "creating the consumer", stream.create_consumer(config)).await?;
        self.seen = pull.cached_info().delivered.consumer_sequence;
        self.pull = Some(pull);
        self.epoch = epoch;
        self.reset = false;
        Ok(())
    }

    /// After a pull that ended unfilled: was anything delivered that this worker never saw?
    async fn verify(&mut self) -> Result<(), Error> {
        let t = self.timeout();
        let pull = self.pull.as_mut().expect("open");
        let delivered = within(t, "reading the consumer", pull.info()).await?.delivered.consumer_sequence;
        if delivered != self.seen {
            tracing::info!(consumer = %self.durable, delivered, seen = self.seen, "a delivery was lost");
            self.reset = true;
            self.pull = None;
        }
        self.verify = false;
        Ok(())
    }

    /// Ends the current pull; one that ended unfilled is verified before the next.
    fn end_pull(&mut self) {
        if let Some(p) = self.batch.take() {
            self.verify |= p.received < self.bus.inner.cfg.fetch_batch.max(1);
        }
    }

    async fn step(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Step, Error> {
        if self.pull.is_none() || self.bus.epoch() != self.epoch {
            self.open().await?;
        }
        if self.verify {
            self.verify().await?;
            if self.pull.is_none() {
                self.open().await?;
            }
        }
        let cfg = &self.bus.inner.cfg;
        let (n, wait, t) = (cfg.fetch_batch.max(1), cfg.fetch_wait, cfg.timeout);
        if self.batch.is_none() {
            let pull = self.pull.as_ref().expect("opened above");
            let batch = within(t, "pulling", pull.batch().max_messages(n).expires(wait).messages()).await?;
            let over = tokio::time::Instant::now() + wait + PULL_GRACE;
            self.batch = Some(Pull { batch, over, received: 0 });
        }
        let mut epoch = self.bus.inner.epoch.subscribe();
        let first = {
            let p = self.batch.as_mut().expect("set above");
            tokio::select! {
                r = tokio::time::timeout_at(p.over, p.batch.next()) => r,
                r = shutdown.changed() => {
                    return Ok(if r.is_err() || *shutdown.borrow() { Step::Stop } else { Step::Progress });
                }
                _ = epoch.changed() => {
                    // The connection went: what was in flight may be lost.
                    self.pull = None;
                    self.batch = None;
                    return Ok(Step::Idle);
                }
            }
        };
        let mut group = match first {
            // Expired (or filled), with or without the server's word: renew it.
            Err(_) | Ok(None) => {
                self.end_pull();
                return Ok(Step::Idle);
            }
            Ok(Some(Err(e))) => {
                self.pull = None;
                self.batch = None;
                return Err(nats(format!("pulling: {e}")));
            }
            Ok(Some(Ok(m))) => vec![m],
        };
        if let Some(p) = self.batch.as_mut() {
            p.received += 1;
        }
        // Whatever else has already arrived is handled with it, in one transaction per shard.
        while group.len() < n {
            let Some(p) = self.batch.as_mut() else { break };
            match p.batch.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    p.received += 1;
                    group.push(m);
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(consumer = %self.durable, error = %e, "pull failed; resetting after this group");
                    self.pull = None;
                    self.batch = None;
                }
                Some(None) => self.end_pull(),
                None => break,
            }
        }
        // Deliveries must follow on from the last one seen; after a gap, nothing is handled
        // until the consumer is reset and the lost one comes again.
        let mut next = Vec::with_capacity(group.len());
        for m in group {
            let seq = m.info().map(|i| i.consumer_sequence).unwrap_or(0);
            if seq != self.seen + 1 {
                tracing::info!(consumer = %self.durable, expected = self.seen + 1, got = seq,
                    "a delivery was lost; resetting the consumer");
                self.reset = true;
                self.pull = None;
                self.batch = None;
                break;
            }
            self.seen = seq;
            next.push(m);
        }
        match self.handle(next, shutdown).await {
            Flow::Go => Ok(Step::Progress),
            Flow::Stop => Ok(Step::Stop),
        }
    }

    /// Handles messages in order: runs of good ones are applied together; a poison one is
    /// retried and parked before anything after it.
    async fn handle(&mut self, group: Vec<jetstream::Message>, shutdown: &mut watch::Receiver<bool>) -> Flow {
        let mut ready = Vec::with_capacity(group.len());
        for msg in group {
            match self.judge(&msg, shutdown).await {
                None => return Flow::Stop,
                Some(Judged::Ready(shard, applied)) => ready.push(Ready { msg, logged_on: shard, applied }),
                Some(Judged::Failed(error, parsed)) => {
                    if self.flush(&mut ready, shutdown).await == Flow::Stop {
                        return Flow::Stop;
                    }
                    if self.poison(msg, error, parsed, shutdown).await == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        }
        self.flush(&mut ready, shutdown).await
    }

    /// Reads a message and computes its effects. Storage trouble finding the shard is retried
    /// here until it passes; `None` means shutdown came first.
    async fn judge(&self, msg: &jetstream::Message, shutdown: &mut watch::Receiver<bool>) -> Option<Judged> {
        let event: Event = match serde_json::from_slice::<Wire>(&msg.payload) {
            Ok(w) => w.into(),
            Err(e) => return Some(Judged::Failed(format!("the message is not an event: {e}"), None)),
        };
        let named = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(SHARD_HEADER))
            .and_then(|v| v.as_str().parse::<usize>().ok())
            .filter(|s| *s < self.storage.shard_count());
        let shard = match named {
            Some(s) => s,
            // Published by something other than the relay: the directory knows the shard.
            None => {
                let mut failures = 0;
                loop {
                    match self.storage.log_for_store(event.store_id).await {
                        Ok(log) => break log.shard_id().0 as usize,
                        Err(StorageError::NotFound) => {
                            return Some(Judged::Failed(
                                format!("store {} is not in the directory", event.store_id),
                                Some((event, None)),
                            ));
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(consumer = %self.durable, error = %e, "cannot find the event's shard; retrying");
                            if pause(outage_delay(failures), shutdown).await {
                                return None;
                            }
                        }
                    }
                }
            }
        };
        let traceparent =
            msg.headers.as_ref().and_then(|h| h.get(TRACEPARENT_HEADER)).and_then(|v| TraceParent::parse(v.as_str()));
        Some(match crate::consumers::effects_in_trace(&*self.consumer, &event, traceparent.as_ref()) {
            Ok(effects) => Judged::Ready(shard, Applied { event, effects }),
            Err(e) => Judged::Failed(e, Some((event, Some(shard)))),
        })
    }

    /// Where a store's events are applied: the shard the directory places it on now (a store
    /// moves, and the shard that logged an event may have given the store away since: its
    /// rollups, dedup records and queues moved with it). When the directory cannot answer, the
    /// shard that logged the event: its write fence refuses the store if it moved, and the
    /// batch is tried again.
    async fn home(&self, store: StoreId, logged_on: usize) -> usize {
        match self.storage.home_of(store).await {
            Ok(shard) if (shard.0 as usize) < self.storage.shard_count() => shard.0 as usize,
            Ok(shard) => {
                tracing::error!(consumer = %self.durable, %store, shard = shard.0, "the directory names a shard this node does not know");
                logged_on
            }
            Err(e) => {
                tracing::debug!(consumer = %self.durable, %store, error = %e, "no directory answer; applying where the event was logged");
                logged_on
            }
        }
    }

    /// Applies the ready events where their stores live now (one transaction per shard, the
    /// shards in parallel), retrying failures until they pass, then acknowledges them in order.
    /// A store that moves meanwhile fails its shard's transaction as `Moved` (nothing of it is
    /// written); the shard drops the directory entry, so the next round applies it on the new
    /// shard, once the move has flipped.
    async fn flush(&self, ready: &mut Vec<Ready>, shutdown: &mut watch::Receiver<bool>) -> Flow {
        if ready.is_empty() {
            return Flow::Go;
        }
        let name = self.consumer.name();
        let mut failures = 0;
        loop {
            let now = self.clock.now();
            let mut by_shard: BTreeMap<usize, Vec<Applied>> = BTreeMap::new();
            let mut homes: HashMap<StoreId, usize> = HashMap::new();
            for r in ready.iter() {
                let store = r.applied.event.store_id;
                let shard = match homes.get(&store) {
                    Some(s) => *s,
                    None => {
                        let s = self.home(store, r.logged_on).await;
                        homes.insert(store, s);
                        s
                    }
                };
                by_shard.entry(shard).or_default().push(r.applied.clone());
            }
            let applies = by_shard.into_iter().map(|(shard, batch)| async move {
                match self.storage.logs().nth(shard) {
                    Some(log) => log.apply(name, batch, vec![], now).await.map(|_| ()),
                    None => Err(StorageError::Internal(format!("there is no shard {shard}"))),
                }
            });
            let errors: Vec<StorageError> =
                futures::future::join_all(applies).await.into_iter().filter_map(Result::err).collect();
            let Some(e) = errors.into_iter().next() else {
                self.consumer.applied(&crate::consumers::touched(ready.iter().map(|r| &r.applied)));
                metrics::counter!("kirana_events_applied_total", "consumer" => name, "partition" => self.partition.to_string())
                    .increment(ready.len() as u64);
                break;
            };
            failures += 1;
            let wait = match &e {
                // A move's freeze lasts a fraction of a second: look again soon, where the
                // directory says the store lives by then.
                StorageError::Moved { store, to } => {
                    tracing::info!(consumer = %self.durable, %store, to = to.0, failures,
                        "a store of this batch moved; applying where it lives now");
                    Duration::from_millis(100)
                }
                _ => {
                    tracing::error!(consumer = %self.durable, error = %e, failures, "could not apply events; retrying");
                    outage_delay(failures)
                }
            };
            if pause(wait, shutdown).await {
                return Flow::Stop;
            }
        }
        for r in ready.drain(..) {
            // A lost ack means a redelivery, which the shard's record of applied events absorbs.
            if let Err(e) = within(self.timeout(), "acknowledging", r.msg.ack()).await {
                tracing::warn!(consumer = %self.durable, error = %e, "could not acknowledge an applied event");
            }
        }
        Flow::Go
    }

    /// Retries a failing message in place, then parks it: dead-letter stream, the shard's dead
    /// letters, ack. The partition waits meanwhile; the others do not.
    async fn poison(
        &self,
        msg: jetstream::Message,
        mut error: String,
        mut parsed: Option<(Event, Option<usize>)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let mut attempts = 1;
        while attempts < self.retry.attempts {
            tracing::warn!(consumer = %self.durable, error = %error, attempts, "event failed; retrying");
            // Keeps JetStream from redelivering it while it is being retried.
            let _ = within(self.timeout(), "extending the ack wait", msg.ack_with(AckKind::Progress)).await;
            if pause(self.retry.delay(attempts), shutdown).await {
                return Flow::Stop;
            }
            attempts += 1;
            match self.judge(&msg, shutdown).await {
                None => return Flow::Stop,
                Some(Judged::Ready(shard, applied)) => {
                    let mut ready = vec![Ready { msg, logged_on: shard, applied }];
                    return self.flush(&mut ready, shutdown).await;
                }
                Some(Judged::Failed(e, p)) => {
                    error = e;
                    parsed = p;
                }
            }
        }
        self.park(msg, &error, parsed, attempts, shutdown).await
    }

    async fn park(
        &self,
        msg: jetstream::Message,
        error: &str,
        parsed: Option<(Event, Option<usize>)>,
        attempts: u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let name = self.consumer.name();
        let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        let event_id = parsed.as_ref().map(|(e, _)| e.id.to_string()).unwrap_or_else(|| format!("seq-{stream_seq}"));
        tracing::error!(consumer = %self.durable, event_id = %event_id, error = %error, attempts,
            "event parked in the dead letters");
        let now = self.clock.now();
        let raw: Value = serde_json::from_slice(&msg.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&msg.payload).into_owned()));
        let body = json!({
            "consumer": name,
            "partition": self.partition,
            "error": error,
            "attempts": attempts,
            "parked_at": now,
            "stream_sequence": stream_seq,
            "subject": msg.subject.as_str(),
            "event": raw,
        });
        let header: String = error.chars().filter(|c| !c.is_control()).take(200).collect();
        let subject = self.bus.dlq_subject(name, self.partition);
        let t = self.timeout();
        let mut failures = 0;
        // Its message id makes a retried publish (after a lost ack) a no-op.
        loop {
            let publish = Publish::build()
                .payload(body.to_string().into_bytes().into())
                .message_id(format!("{name}.{event_id}"))
                .header(ERROR_HEADER, header.as_str());
            let sent = async {
                self.bus.ensure_streams().await?;
                let ack =
                    within(t, "publishing a dead letter", self.bus.inner.js.send_publish(subject.clone(), publish))
                        .await?;
                within(t, "waiting for the dead letter's ack", ack.into_future()).await
            };
            match sent.await {
                Ok(_) => break,
                Err(e) => {
                    failures += 1;
                    self.bus.inner.ready.store(false, Ordering::Release);
                    tracing::warn!(consumer = %self.durable, error = %e, "could not publish a dead letter; retrying");
                    if pause(outage_delay(failures), shutdown).await {
                        return Flow::Stop;
                    }
                }
            }
        }
        if let Some((event, Some(shard))) = parsed {
            // Position 0: the shard's positions are the embedded backend's, not touched here.
            let logged = Logged { seq: 0, event, traceparent: None };
            let mut failures = 0;
            loop {
                let r = match self.storage.logs().nth(shard) {
                    Some(log) => log.park(name, self.partition, &logged, error, attempts, now).await,
                    None => Err(StorageError::Internal(format!("there is no shard {shard}"))),
                };
                match r {
                    Ok(()) => break,
                    Err(e) => {
                        failures += 1;
                        tracing::error!(consumer = %self.durable, error = %e, "could not record a dead letter; retrying");
                        if pause(outage_delay(failures), shutdown).await {
                            return Flow::Stop;
                        }
                    }
                }
            }
        }
        if let Err(e) = within(self.timeout(), "acknowledging", msg.ack()).await {
            tracing::warn!(consumer = %self.durable, error = %e, "could not acknowledge a parked event");
        }
        Flow::Go
    }
}

// ---------------------------------------------------------------------------------------------
// Status and start.

/// Events each consumer has yet to finish, per partition: not yet delivered plus delivered and
/// not acknowledged. A consumer not created yet owes everything in its partition.
pub async fn lag(bus: &JetStreamBus, consumers: &[&str], partitions: u32) -> Result<Vec<(String, u32, u64)>, Error> {
    let t = bus.inner.cfg.timeout;
    let stream = bus.stream().await?;
    let mut out = Vec::with_capacity(consumers.len() * partitions as usize);
    for name in consumers {
        for p in 0..partitions {
            let durable = JetStreamBus::durable_name(name, p);
            let pending = match tokio::time::timeout(t, stream.consumer_info(&durable)).await {
                Err(_) => return Err(Error::Nats(format!("reading consumer {durable}: no answer"))),
                Ok(Ok(info)) => info.num_pending + info.num_ack_pending as u64,
                Ok(Err(e)) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => partition_messages(bus, p).await?,
                Ok(Err(e)) => return Err(nats(format!("reading consumer {durable}: {e}"))),
            };
            out.push((name.to_string(), p, pending));
        }
    }
    Ok(out)
}

/// Each consumer's partitions as the stream sees them: the position (the ack floor's stream
/// sequence), the events not yet applied (delivered or not), and how long the oldest of them
/// has been in the stream. One consumer info per (consumer, partition), and one message read
/// per partition that has events waiting.
pub async fn partitions_status(
    bus: &JetStreamBus,
    consumers: &[&str],
    now: Timestamp,
) -> Result<Vec<crate::status::ConsumerStatus>, Error> {
    let t = bus.inner.cfg.timeout;
    let partitions = bus.inner.cfg.partitions;
    let stream = bus.stream().await?;
    let mut out = Vec::with_capacity(consumers.len());
    for name in consumers {
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let durable = JetStreamBus::durable_name(name, p);
            let (floor, waiting) = match tokio::time::timeout(t, stream.consumer_info(&durable)).await {
                Err(_) => return Err(Error::Nats(format!("reading consumer {durable}: no answer"))),
                Ok(Ok(info)) => {
                    let start = match info.config.deliver_policy {
                        DeliverPolicy::ByStartSequence { start_sequence } => start_sequence.saturating_sub(1),
                        _ => 0,
                    };
                    (info.ack_floor.stream_sequence.max(start), info.num_pending + info.num_ack_pending as u64)
                }
                // Never created: everything in its partition is waiting for it.
                Ok(Err(e)) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {
                    (0, partition_messages(bus, p).await?)
                }
                Ok(Err(e)) => return Err(nats(format!("reading consumer {durable}: {e}"))),
            };
            let mut lag_seconds = 0.0;
            if waiting > 0 {
                let oldest =
                    stream.raw_message_builder().sequence(floor + 1).next_by_subject(bus.partition_filter(p)).send();
                match tokio::time::timeout(t, oldest).await {
                    Ok(Ok(m)) => {
                        let at = (m.time.unix_timestamp_nanos() / 1_000_000) as i64;
                        lag_seconds = (now.millis() - at).max(0) as f64 / 1000.0;
                    }
                    // Gone meanwhile (applied and the stream trimmed by age): nothing to age.
                    Ok(Err(_)) => {}
                    Err(_) => return Err(Error::Nats(format!("reading partition {p}'s oldest event: no answer"))),
                }
            }
            parts.push(crate::status::PartitionLag {
                partition: p,
                position: i64::try_from(floor).unwrap_or(i64::MAX),
                lag_events: i64::try_from(waiting).unwrap_or(i64::MAX),
                lag_seconds,
            });
        }
        out.push(crate::status::ConsumerStatus {
            consumer: name.to_string(),
            heartbeat_age_seconds: None,
            lag_events: parts.iter().map(|p| p.lag_events).sum(),
            partitions: parts,
        });
    }
    Ok(out)
}

/// Messages in the event stream (all partitions).
pub async fn stream_messages(bus: &JetStreamBus) -> Result<u64, Error> {
    let t = bus.inner.cfg.timeout;
    let mut stream = within(t, "reading the stream", bus.inner.js.get_stream(&bus.inner.cfg.stream)).await?;
    Ok(within(t, "reading the stream", stream.info()).await?.state.messages)
}

/// Messages in one partition of the stream.
async fn partition_messages(bus: &JetStreamBus, partition: u32) -> Result<u64, Error> {
    let t = bus.inner.cfg.timeout;
    let stream = within(t, "reading the stream", bus.inner.js.get_stream(&bus.inner.cfg.stream)).await?;
    let subjects =
        within(t, "reading the stream's subjects", stream.info_with_subjects(bus.partition_filter(partition))).await?;
    let counts: Vec<(String, usize)> = within(t, "reading the stream's subjects", subjects.try_collect()).await?;
    Ok(counts.into_iter().map(|(_, n)| n as u64).sum())
}

/// The backend's work as leased jobs ([`crate::assign`]): a relay per shard
/// (`events.relay.shard-N`), and per partition (`events.partition-P`) a worker for each
/// consumer. Each job runs until its receiver turns true (each worker after its current step;
/// events in flight are redelivered to the next holder). Heartbeats go to
/// [`JetStreamBus::with_heartbeats`]'s.
pub fn jobs(
    bus: JetStreamBus,
    storage: Storage,
    consumers: Vec<Arc<dyn Consumer>>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
) -> Vec<crate::assign::Job> {
    let mut jobs = Vec::new();
    for shard in 0..storage.shard_count() {
        let (bus, storage, clock) = (bus.clone(), storage.clone(), clock.clone());
        jobs.push(crate::assign::Job::new(format!("events.relay.shard-{shard}"), move |rx| {
            run_relay(bus.clone(), storage.clone(), shard, rx, clock.clone())
        }));
    }
    for p in 0..bus.inner.cfg.partitions {
        let (bus, storage, consumers, clock) = (bus.clone(), storage.clone(), consumers.clone(), clock.clone());
        jobs.push(crate::assign::Job::new(format!("events.partition-{p}"), move |rx| {
            let workers: Vec<_> = consumers
                .iter()
                .map(|c| {
                    tokio::spawn(run_consumer(
                        bus.clone(),
                        storage.clone(),
                        c.clone(),
                        p,
                        rx.clone(),
                        clock.clone(),
                        retry,
                    ))
                })
                .collect();
            async move {
                for w in workers {
                    if let Err(e) = w.await {
                        tracing::error!(partition = p, error = %e, "a JetStream consumer ended abnormally");
                    }
                }
            }
        }));
    }
    jobs
}

/// Starts every job of the backend on this node, without leases: for tests and tools that run
/// one process alone. All stop when `shutdown` turns true.
pub fn start(
    bus: JetStreamBus,
    storage: Storage,
    consumers: Vec<Arc<dyn Consumer>>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    jobs(bus, storage, consumers, clock, retry).into_iter().map(|j| tokio::spawn((j.run)(shutdown.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_the_type_and_refuse_wildcards() {
        assert_eq!(subject_tokens("order.placed"), "order.placed");
        assert_eq!(subject_tokens("a..b*>.c d"), "a.b__.c_d");
        assert_eq!(subject_tokens(""), "_");
        assert_eq!(JetStreamBus::durable_name("cache", 3), "cache-p3");
        assert_eq!(JetStreamBus::durable_name("web.hooks", 0), "web_hooks-p0");
    }
}
