//! Watching the pipeline: backlog per shard, lag per consumer and partition (events and
//! seconds), heartbeats, dead letters, and the alerts they imply. `kirana events status` prints
//! it; the observability issue exposes it as metrics.

use std::collections::HashMap;
use std::sync::Mutex;

use kirana_domain::Timestamp;
use kirana_storage::Storage;
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub name: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventsStatus {
    pub shards: Vec<ShardStatus>,
    pub alerts: Vec<Alert>,
}

/// How many outbox rows status reads per shard to measure lag (the outbox is kept short; a
/// longer one is itself the alert).
const STATUS_SCAN: u32 = 200_000;

pub async fn status(
    storage: &Storage,
    consumers: &[&str],
    partitions: u32,
    now: Timestamp,
) -> kirana_storage::Result<EventsStatus> {
    let mut shards = Vec::new();
    let mut alerts = Vec::new();
    for log in storage.logs() {
        let stats = log.outbox_stats().await?;
        let rows = log.outbox_after(0, STATUS_SCAN).await?;
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
            if age.is_none_or(|a| a > HEARTBEAT_ALERT_SECS as f64) && lag_events > 0 {
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
        });
    }
    Ok(EventsStatus { shards, alerts })
}
