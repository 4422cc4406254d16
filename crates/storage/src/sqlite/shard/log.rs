//! The shard's event log on SQLite: outbox reads in commit order, consumer positions, effects
//! applied once per (consumer, event) in one transaction with the position, dead letters and
//! the notification queue.

use async_trait::async_trait;
use kirana_domain::event::Event;
use kirana_domain::{EventId, StoreId, Timestamp};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteShard;
use crate::Result;
use crate::error::StorageError;
use crate::log::{Applied, DeadLetter, Effect, Logged, OutboxStats, Outgoing, ShardLog};
use crate::scope::ShardId;
use crate::trace::TraceParent;

fn logged(r: &Row<'_>) -> rusqlite::Result<Logged> {
    let payload: String = r.get(6)?;
    Ok(Logged {
        seq: r.get(0)?,
        event: Event {
            store_id: StoreId::from_uuid(r.get(1)?),
            id: EventId::from_uuid(r.get(2)?),
            kind: r.get(3)?,
            version: r.get(4)?,
            occurred_at: Timestamp::from_millis(r.get(5)?),
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        },
        traceparent: r.get::<_, Option<String>>(7)?.as_deref().and_then(TraceParent::parse),
    })
}

fn set_position(c: &Connection, consumer: &str, partition: u32, seq: i64, now: Timestamp) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO consumer_positions (consumer, partition, seq, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (consumer, partition) DO UPDATE SET seq = max(seq, excluded.seq), updated_at = excluded.updated_at",
    )?
    .execute(params![consumer, partition, seq, now.millis()])?;
    Ok(())
}

fn apply_effect(c: &Connection, event: &Event, effect: &Effect, now: Timestamp) -> Result<()> {
    let store = event.store_id.uuid();
    match effect {
        Effect::Sales { hour, day, orders, revenue, units, products } => {
            c.prepare_cached(
                "INSERT INTO sales_hourly (store_id, hour, orders, revenue, units) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (store_id, hour) DO UPDATE SET orders = orders + excluded.orders,
                   revenue = revenue + excluded.revenue, units = units + excluded.units",
            )?
            .execute(params![store, hour, orders, revenue, units])?;
            c.prepare_cached(
                "INSERT INTO sales_daily (store_id, day, orders, revenue, units) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (store_id, day) DO UPDATE SET orders = orders + excluded.orders,
                   revenue = revenue + excluded.revenue, units = units + excluded.units",
            )?
            .execute(params![store, day, orders, revenue, units])?;
            for p in products {
                c.prepare_cached(
                    "INSERT INTO product_sales_daily (store_id, day, product_id, title, units, revenue)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (store_id, day, product_id) DO UPDATE SET title = excluded.title,
                       units = units + excluded.units, revenue = revenue + excluded.revenue",
                )?
                .execute(params![store, day, p.product_id.uuid(), p.title, p.units, p.revenue])?;
            }
        }
        Effect::BumpCacheVersion => {
            c.prepare_cached(
                "INSERT INTO cache_versions (store_id, version) VALUES (?1, 1)
                 ON CONFLICT (store_id) DO UPDATE SET version = version + 1",
            )?
            .execute([store])?;
        }
        Effect::Notify { recipient, message } => {
            c.prepare_cached(
                "INSERT OR IGNORE INTO notifications
                   (store_id, event_id, recipient, message, status, attempts, next_attempt_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
            )?
            .execute(params![store, event.id.uuid(), recipient, message, now.millis()])?;
        }
        Effect::Webhooks => {
            // One delivery per active endpoint subscribed to the type ("*" is every type) that
            // existed when the event happened: a new endpoint gets what happens after it.
            c.prepare_cached(
                "INSERT OR IGNORE INTO webhook_deliveries
                   (store_id, endpoint_id, event_id, event_type, payload, status, attempts, next_attempt_at, created_at)
                 SELECT e.store_id, e.endpoint_id, ?2, ?3, ?4, 'pending', 0, ?5, ?5
                 FROM webhook_endpoints e
                 WHERE e.store_id = ?1 AND e.active = 1 AND e.created_at <= ?6
                   AND EXISTS (SELECT 1 FROM json_each(e.event_types) t WHERE t.value IN (?3, '*'))",
            )?
            .execute(params![
                store,
                event.id.uuid(),
                event.kind,
                serde_json::to_string(event).map_err(|e| StorageError::Internal(e.to_string()))?,
                now.millis(),
                event.occurred_at.millis()
            ])?;
        }
    }
    Ok(())
}

fn dead_letter(shard: u32, r: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let event: String = r.get(10)?;
    Ok(DeadLetter {
        id: r.get(0)?,
        shard,
        consumer: r.get(1)?,
        partition: r.get(2)?,
        seq: r.get(3)?,
        store_id: StoreId::from_uuid(r.get(4)?),
        event_id: EventId::from_uuid(r.get(5)?),
        kind: r.get(6)?,
        error: r.get(7)?,
        attempts: r.get(8)?,
        parked_at: Timestamp::from_millis(r.get(9)?),
        event: serde_json::from_str(&event).unwrap_or(serde_json::Value::Null),
        replayed_at: r.get::<_, Option<i64>>(11)?.map(Timestamp::from_millis),
    })
}

const DEAD_LETTER_COLUMNS: &str =
    "id, consumer, partition, seq, store_id, event_id, type, error, attempts, parked_at, event, replayed_at";

#[async_trait]
impl ShardLog for SqliteShard {
    fn shard_id(&self) -> ShardId {
        self.id
    }

    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Logged>> {
        self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, store_id, event_id, type, version, occurred_at, payload, traceparent FROM outbox
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after, limit], logged)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        self.db.read(|c| {
            let (rows, oldest): (i64, Option<i64>) = c
                .prepare_cached("SELECT count(*), min(occurred_at) FROM outbox")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let last_seq: i64 = c
                .prepare_cached("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)")?
                .query_row([], |r| r.get(0))?;
            Ok(OutboxStats { rows, last_seq, oldest_at: oldest.map(Timestamp::from_millis) })
        })
    }

    async fn outbox_backlog(&self, after: i64) -> Result<OutboxStats> {
        self.db.read(|c| {
            let (rows, oldest): (i64, Option<i64>) = c
                .prepare_cached("SELECT count(*), min(occurred_at) FROM outbox WHERE seq > ?1")?
                .query_row([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let last_seq: i64 = c
                .prepare_cached("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)")?
                .query_row([], |r| r.get(0))?;
            Ok(OutboxStats { rows, last_seq, oldest_at: oldest.map(Timestamp::from_millis) })
        })
    }

    async fn trim_outbox(&self, upto: i64) -> Result<u64> {
        self.db
            .write(move |c| Ok(c.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?.execute([upto])? as u64))
            .await
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, i64)>> {
        self.db.read(|c| {
            let mut st = c.prepare_cached("SELECT partition, seq FROM consumer_positions WHERE consumer = ?1")?;
            let rows = st.query_map([consumer], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn all_positions(&self) -> Result<Vec<(String, u32, i64, Timestamp)>> {
        self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT consumer, partition, seq, updated_at FROM consumer_positions ORDER BY consumer, partition",
            )?;
            let rows =
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, Timestamp::from_millis(r.get(3)?))))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn apply(
        &self,
        consumer: &str,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32> {
        let consumer = consumer.to_string();
        self.db
            .write(move |c| {
                let mut fresh = 0;
                for a in &batch {
                    let new = c
                        .prepare_cached(
                            "INSERT OR IGNORE INTO applied_events (store_id, consumer, event_id, applied_at)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![a.event.store_id.uuid(), consumer, a.event.id.uuid(), now.millis()])?;
                    if new == 1 {
                        fresh += 1;
                        for effect in &a.effects {
                            apply_effect(c, &a.event, effect, now)?;
                        }
                    }
                }
                for (partition, seq) in &positions {
                    set_position(c, &consumer, *partition, *seq, now)?;
                }
                Ok(fresh)
            })
            .await
    }

    async fn applied_times(&self, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>> {
        self.db.read(|c| {
            let mut st =
                c.prepare_cached("SELECT event_id, applied_at FROM applied_events WHERE consumer = ?1 LIMIT ?2")?;
            let rows = st.query_map(params![consumer, limit], |r| {
                Ok((EventId::from_uuid(r.get(0)?), Timestamp::from_millis(r.get(1)?)))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn park(
        &self,
        consumer: &str,
        partition: u32,
        logged: &Logged,
        error: &str,
        attempts: u32,
        now: Timestamp,
    ) -> Result<()> {
        let (consumer, error, l) = (consumer.to_string(), error.to_string(), logged.clone());
        let event = serde_json::to_string(&l.event).map_err(|e| StorageError::Internal(e.to_string()))?;
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO dead_letters
                       (consumer, partition, seq, store_id, event_id, type, error, attempts, parked_at, event)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    consumer,
                    partition,
                    l.seq,
                    l.event.store_id.uuid(),
                    l.event.id.uuid(),
                    l.event.kind,
                    error,
                    attempts,
                    now.millis(),
                    event
                ])?;
                if l.seq > 0 {
                    set_position(c, &consumer, partition, l.seq, now)?;
                }
                Ok(())
            })
            .await
    }

    async fn dead_letters(&self, include_replayed: bool, limit: u32) -> Result<Vec<DeadLetter>> {
        let shard = self.id.0;
        self.db.read(|c| {
            let sql = format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE ?1 OR replayed_at IS NULL ORDER BY id LIMIT ?2"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![include_replayed, limit], |r| dead_letter(shard, r))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn dead_letter(&self, id: i64) -> Result<DeadLetter> {
        let shard = self.id.0;
        self.db.read(|c| {
            let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?1");
            c.prepare_cached(&sql)?.query_row([id], |r| dead_letter(shard, r)).optional()?.ok_or(StorageError::NotFound)
        })
    }

    async fn mark_replayed(&self, id: i64, now: Timestamp) -> Result<()> {
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("UPDATE dead_letters SET replayed_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now.millis()])?;
                if n == 0 { Err(StorageError::NotFound) } else { Ok(()) }
            })
            .await
    }

    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>> {
        self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT store_id, event_id, recipient, message, attempts FROM notifications
                 WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2",
            )?;
            let rows = st.query_map(params![now.millis(), limit], |r| {
                Ok(Outgoing {
                    store_id: StoreId::from_uuid(r.get(0)?),
                    event_id: EventId::from_uuid(r.get(1)?),
                    recipient: r.get(2)?,
                    message: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn claim_notification(
        &self,
        store: StoreId,
        event: EventId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool> {
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE notifications SET next_attempt_at = ?4
                         WHERE store_id = ?1 AND event_id = ?2 AND status = 'pending' AND next_attempt_at <= ?3",
                    )?
                    .execute(params![store.uuid(), event.uuid(), now.millis(), until.millis()])?;
                Ok(n == 1)
            })
            .await
    }

    async fn notification_done(
        &self,
        store: StoreId,
        event: EventId,
        outcome: Result<(), (String, Option<Timestamp>)>,
        now: Timestamp,
    ) -> Result<()> {
        self.db
            .write(move |c| {
                match outcome {
                    Ok(()) => c
                        .prepare_cached(
                            "UPDATE notifications SET status = 'sent', attempts = attempts + 1, sent_at = ?3, last_error = NULL
                             WHERE store_id = ?1 AND event_id = ?2",
                        )?
                        .execute(params![store.uuid(), event.uuid(), now.millis()])?,
                    Err((error, retry_at)) => c
                        .prepare_cached(
                            "UPDATE notifications SET attempts = attempts + 1, last_error = ?3,
                               status = CASE WHEN ?4 IS NULL THEN 'failed' ELSE 'pending' END,
                               next_attempt_at = coalesce(?4, next_attempt_at)
                             WHERE store_id = ?1 AND event_id = ?2",
                        )?
                        .execute(params![store.uuid(), event.uuid(), error, retry_at.map(|t| t.millis())])?,
                };
                Ok(())
            })
            .await
    }
}
