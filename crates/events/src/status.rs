//! Watching the pipeline: backlog per shard, lag per consumer and partition (events and
//! seconds) on either backend, heartbeats, dead letters, who holds which lease, and the alerts
//! they imply. `kirana events status` and `kirana doctor` print it; [`watch`] keeps it in
//! `/metrics` on every node.
//!
//! The alert that matters most is [`STALL_ALERT_SECS`]: a partition whose oldest unapplied event
//! has waited that long is stuck or too slow, whatever the reason (a store move it cannot get
//! past, a dead node whose lease has not moved, a poison event being retried, a consumer that
//! cannot keep up). It needs no history: the age of the oldest waiting event grows by one second
//! per second while nothing moves.

use std::collections::HashMap;
use std::sync::Mutex;

use kirana_domain::Timestamp;
use kirana_storage::{LeaseRow, Storage};
use serde::Serialize;

use crate::partition::partition_of;

/// In-process liveness of each reader, by `consumer/shard-N`.
#[derive(Default)]
pub struct Heartbeats {
    last: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Heartbeats {
    pub fn beat(&self, key: &str) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), tokio::time::Instant::now());
    }

    /// Seconds since each reader last completed a step.
    pub fn ages(&self) -> Vec<(String, f64)> {
        let now = tokio::time::Instant::now();
        let mut v: Vec<_> = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, t)| (k.clone(), now.duration_since(*t).as_secs_f64()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A consumer whose heartbeat is older than this is reported as stuck.
pub const HEARTBEAT_ALERT_SECS: i64 = 60;
/// A partition whose oldest unapplied event has waited this long is stalled (or too slow), and
/// so is a relay whose oldest unpublished row has. With Prometheus scraping every 15 s and
/// evaluating every 15 s, the alert on it fires within a minute of the event's commit
/// (deploy/prometheus, `KiranaEventsStalled`).
pub const STALL_ALERT_SECS: f64 = 30.0;
/// A partition this far behind (events) while the consumer's median partition is not, is lagging.
pub const PARTITION_LAG_ALERT: i64 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: u32,
    pub position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub consumer: String,
    /// Seconds since its positions were last written in this shard (a heartbeat every 10 s).
    pub heartbeat_age_seconds: Option<f64>,
    pub lag_events: i64,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    pub outbox_rows: i64,
    pub outbox_oldest_age_seconds: Option<f64>,
    pub last_seq: i64,
    pub dead_letters: usize,
    pub consumers: Vec<ConsumerStatus>,
    /// JetStream: what the shard's relay has yet to publish (rows after its recorded position;
    /// rows before it may stay in the outbox a while, for readers of the outbox itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayStatus {
    pub position: i64,
    pub unpublished_rows: i64,
    pub oldest_unpublished_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub name: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventsStatus {
    /// `embedded` (the outbox is the log) or `jetstream`.
    pub backend: &'static str,
    /// Each shard's outbox; on the embedded backend also each consumer's partitions in it.
    pub shards: Vec<ShardStatus>,
    /// The JetStream backend's stream and consumers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamStatus>,
    /// Who runs which background work (empty when the lease store cannot be read).
    pub leases: Vec<LeaseRow>,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JetStreamStatus {
    pub stream: String,
    /// Events the stream holds (all partitions, applied or not: it keeps them for days).
    pub messages: Option<u64>,
    /// Each consumer's partitions: position is the ack floor's stream sequence.
    pub consumers: Vec<ConsumerStatus>,
    /// Why the stream could not be read, if it could not.
    pub error: Option<String>,
}

impl EventsStatus {
    /// Every (consumer, partition) with its lag, merged over shards (embedded: events summed,
    /// the oldest wait is the longest) or as the stream has it (JetStream).
    pub fn partition_lags(&self) -> Vec<(String, u32, i64, f64)> {
        let mut out: std::collections::BTreeMap<(String, u32), (i64, f64)> = std::collections::BTreeMap::new();
        let consumers = self.shards.iter().flat_map(|s| s.consumers.iter());
        let streamed = self.jetstream.iter().flat_map(|j| j.consumers.iter());
        for c in consumers.chain(streamed) {
            for p in &c.partitions {
                let e = out.entry((c.consumer.clone(), p.partition)).or_insert((0, 0.0));
                e.0 += p.lag_events;
                e.1 = e.1.max(p.lag_seconds);
            }
        }
        out.into_iter().map(|((c, p), (n, s))| (c, p, n, s)).collect()
    }
}

/// How many outbox rows status reads per shard to measure lag (the outbox is kept short; a
/// longer one is itself the alert). Lag in events is capped by it; the oldest waiting event is
/// among the first rows, so lag in seconds is right.
const STATUS_SCAN: u32 = 200_000;

/// The embedded backend's status: positions in the shards (see [`status_of`]).
pub async fn status(
    storage: &Storage,
    consumers: &[&str],
    partitions: u32,
    now: Timestamp,
) -> kirana_storage::Result<EventsStatus> {
    status_of(storage, consumers, partitions, None, now).await
}

/// The pipeline's status on either backend: with `bus`, consumers' lag is the stream's and the
/// outbox only feeds the relay; without, positions in each shard's outbox.
pub async fn status_of(
    storage: &Storage,
    consumers: &[&str],
    partitions: u32,
    bus: Option<&crate::jetstream::JetStreamBus>,
    now: Timestamp,
) -> kirana_storage::Result<EventsStatus> {
    status_scanning(storage, consumers, partitions, bus, now, STATUS_SCAN).await
}

/// [`status_of`], reading at most `scan` outbox rows per shard.
async fn status_scanning(
    storage: &Storage,
    consumers: &[&str],
    partitions: u32,
    bus: Option<&crate::jetstream::JetStreamBus>,
    now: Timestamp,
    scan: u32,
) -> kirana_storage::Result<EventsStatus> {
    let outbox_readers: &[&str] = if bus.is_some() { &[] } else { consumers };
    let mut s = shards_status(storage, outbox_readers, partitions, now, scan).await?;
    if let Some(bus) = bus {
        let cfg = bus.config();
        let (messages, consumers, error) = match crate::jetstream::partitions_status(bus, consumers, now).await {
            Ok(list) => (crate::jetstream::stream_messages(bus).await.ok(), list, None),
            Err(e) => (None, vec![], Some(e.to_string())),
        };
        if let Some(e) = &error {
            s.alerts.push(Alert { name: "EventStreamUnreadable", detail: format!("stream {}: {e}", cfg.stream) });
        }
        s.backend = "jetstream";
        s.jetstream = Some(JetStreamStatus { stream: cfg.stream.clone(), messages, consumers, error });
        for (shard, log) in s.shards.iter_mut().zip(storage.logs()) {
            let position =
                log.positions(crate::jetstream::RELAY).await?.into_iter().find(|(p, _)| *p == 0).map_or(0, |(_, q)| q);
            let backlog = log.outbox_backlog(position).await?;
            let age = backlog.oldest_at.map(|t| (now.millis() - t.millis()).max(0) as f64 / 1000.0);
            shard.relay =
                Some(RelayStatus { position, unpublished_rows: backlog.rows, oldest_unpublished_age_seconds: age });
            if let Some(age) = age.filter(|a| *a >= STALL_ALERT_SECS) {
                s.alerts.push(Alert {
                    name: "RelayStalled",
                    detail: format!(
                        "shard {}: {} outbox rows after the relay's position {position} are not in the stream, the oldest for {age:.0} s (is NATS reachable? is a node holding events.relay.shard-{}?)",
                        shard.shard, backlog.rows, shard.shard
                    ),
                });
            }
        }
    }
    for (consumer, partition, events, seconds) in s.partition_lags() {
        if events > 0 && seconds >= STALL_ALERT_SECS {
            s.alerts.push(Alert {
                name: "PartitionStalled",
                detail: format!(
                    "consumer {consumer}, partition {partition}: {events} events waiting, the oldest for {seconds:.0} s (stuck or too slow; see the lease holder of events.partition-{partition} and its log)"
                ),
            });
        }
    }
    s.leases = storage.leases().list().await.unwrap_or_default();
    Ok(s)
}

/// Every shard's outbox and, for `consumers` reading it, their partitions.
async fn shards_status(
    storage: &Storage,
    consumers: &[&str],
    partitions: u32,
    now: Timestamp,
    scan: u32,
) -> kirana_storage::Result<EventsStatus> {
    let mut shards = Vec::new();
    let mut alerts = Vec::new();
    for log in storage.logs() {
        let stats = log.outbox_stats().await?;
        // Only readers of the outbox itself need its rows (JetStream's consumers read the stream).
        let rows = if consumers.is_empty() { vec![] } else { log.outbox_after(0, scan).await? };
        let positions = log.all_positions().await?;
        let dead = log.dead_letters(false, 10_000).await?.len();
        let shard = log.shard_id().0;
        let mut list = Vec::new();
        for name in consumers {
            let mine: Vec<_> = positions.iter().filter(|(c, ..)| c == name).collect();
            let mut parts = Vec::new();
            for p in 0..partitions {
                let position = mine.iter().find(|(_, q, ..)| *q == p).map(|(_, _, s, _)| *s).unwrap_or(0);
                let waiting: Vec<_> = rows
                    .iter()
                    .filter(|r| r.seq > position && partition_of(r.event.store_id, partitions) == p)
                    .collect();
                let lag_seconds = waiting
                    .first()
                    .map(|r| (now.millis() - r.event.occurred_at.millis()).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                parts.push(PartitionLag { partition: p, position, lag_events: waiting.len() as i64, lag_seconds });
            }
            let heartbeat = mine.iter().map(|(.., t)| t.millis()).max();
            let age = heartbeat.map(|t| (now.millis() - t).max(0) as f64 / 1000.0);
            let lag_events: i64 = parts.iter().map(|p| p.lag_events).sum();
            let oldest_wait = parts.iter().map(|p| p.lag_seconds).fold(0.0, f64::max);
            // Silent for a minute with events that have waited a minute: a reader that just
            // started (no heartbeat yet) with fresh events is not one.
            if age.is_none_or(|a| a > HEARTBEAT_ALERT_SECS as f64)
                && lag_events > 0
                && oldest_wait > HEARTBEAT_ALERT_SECS as f64
            {
                alerts.push(Alert {
                    name: "ConsumerNoHeartbeat",
                    detail: format!(
                        "consumer {name} on shard {shard} has not recorded progress for {} with {lag_events} events waiting",
                        age.map(|a| format!("{a:.0} s")).unwrap_or_else(|| "ever".into())
                    ),
                });
            }
            let mut sorted: Vec<i64> = parts.iter().map(|p| p.lag_events).collect();
            sorted.sort_unstable();
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
            for p in &parts {
                if p.lag_events >= PARTITION_LAG_ALERT && p.lag_events > 10 * median.max(1) {
                    alerts.push(Alert {
                        name: "PartitionLagging",
                        detail: format!(
                            "consumer {name} on shard {shard}: partition {} is {} events ({:.0} s) behind while the median partition is {median}",
                            p.partition, p.lag_events, p.lag_seconds
                        ),
                    });
                }
            }
            list.push(ConsumerStatus {
                consumer: name.to_string(),
                heartbeat_age_seconds: age,
                lag_events,
                partitions: parts,
            });
        }
        if dead > 0 {
            alerts.push(Alert {
                name: "DeadLetters",
                detail: format!("shard {shard} holds {dead} parked events; see `kirana events dlq list`"),
            });
        }
        shards.push(ShardStatus {
            shard,
            outbox_rows: stats.rows,
            outbox_oldest_age_seconds: stats.oldest_at.map(|t| (now.millis() - t.millis()).max(0) as f64 / 1000.0),
            last_seq: stats.last_seq,
            dead_letters: dead,
            consumers: list,
            relay: None,
        });
    }
    Ok(EventsStatus { backend: "embedded", shards, jetstream: None, leases: vec![], alerts })
}

/// Keeps the pipeline's lag in this node's `/metrics` until `shutdown`, read every `every`:
/// `kirana_consumer_lag_events{consumer,partition}`, `kirana_consumer_lag_seconds{…}` (the
/// age of the oldest unapplied event, the stall alert's input), `kirana_events_stream_messages`
/// and `kirana_events_alerts{alert}`. Every node runs one: the series are the same on each, so
/// a dead node loses nothing, and the alert rules take the maximum.
pub async fn watch(
    storage: Storage,
    consumers: Vec<&'static str>,
    partitions: u32,
    bus: Option<crate::jetstream::JetStreamBus>,
    every: std::time::Duration,
    clock: std::sync::Arc<dyn kirana_domain::Clock>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut known_alerts: std::collections::BTreeSet<&'static str> = Default::default();
    loop {
        // A smaller scan than the CLI's: this runs every few seconds on every node. Lag in events
        // is capped by it, the oldest wait (what alerts) is not.
        let read = status_scanning(&storage, &consumers, partitions, bus.as_ref(), clock.now(), 20_000);
        match tokio::time::timeout(every.max(std::time::Duration::from_secs(5)), read).await {
            Ok(Ok(s)) => {
                for (consumer, partition, events, seconds) in s.partition_lags() {
                    let labels = [("consumer", consumer), ("partition", partition.to_string())];
                    metrics::gauge!("kirana_consumer_lag_events", &labels).set(events as f64);
                    metrics::gauge!("kirana_consumer_lag_seconds", &labels).set(seconds);
                }
                if let Some(m) = s.jetstream.as_ref().and_then(|j| j.messages) {
                    metrics::gauge!("kirana_events_stream_messages").set(m as f64);
                }
                let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
                for a in &s.alerts {
                    *counts.entry(a.name).or_default() += 1;
                }
                for name in known_alerts.iter().chain(counts.keys()).copied().collect::<std::collections::BTreeSet<_>>()
                {
                    metrics::gauge!("kirana_events_alerts", "alert" => name)
                        .set(*counts.get(name).unwrap_or(&0) as f64);
                }
                known_alerts.extend(counts.keys());
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the event pipeline's status"),
            Err(_) => tracing::warn!("reading the event pipeline's status took too long"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}
