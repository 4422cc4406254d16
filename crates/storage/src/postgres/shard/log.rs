//! The shard's event log on PostgreSQL: the port of `sqlite::shard::log`, as free functions
//! over a client ([`crate::log::ShardLog`]'s operations; `PgShard` will implement the trait on
//! top of them). Writes take the caller's transaction: [`apply`] and [`park`] are several
//! statements that commit together or not at all.
//!
//! What SQLite's single writer gives, this gets from PostgreSQL's conflict handling: an event is
//! applied once per consumer because its `applied_events` row is inserted with `ON CONFLICT DO
//! NOTHING`, which, when a concurrent transaction holds the same key uncommitted, waits for it
//! and then inserts nothing if it committed — so two deliveries of one event racing each other
//! still apply its effects once. Positions only move forward (`GREATEST`), whatever order two
//! batches commit in.

use deadpool_postgres::GenericClient;
use kirana_domain::event::Event;
use kirana_domain::{EventId, StoreId, Timestamp};
use tokio_postgres::Row;

use super::{exec, one, opt, rows};
use crate::Result;
use crate::error::StorageError;
use crate::log::{Applied, DeadLetter, Effect, Logged, OutboxStats, Outgoing};
use crate::trace::TraceParent;

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn logged(r: &Row) -> Logged {
    Logged {
        seq: r.get(0),
        event: Event {
            store_id: StoreId::from_uuid(r.get(1)),
            id: EventId::from_uuid(r.get(2)),
            kind: r.get(3),
            version: u32_of(r.get(4)),
            occurred_at: Timestamp::from_millis(r.get(5)),
            payload: serde_json::from_str(r.get::<_, &str>(6)).unwrap_or(serde_json::Value::Null),
        },
        traceparent: r.get::<_, Option<&str>>(7).and_then(TraceParent::parse),
    }
}

async fn set_position<C: GenericClient>(c: &C, consumer: &str, partition: u32, seq: i64, now: Timestamp) -> Result<()> {
    exec(
        c,
        "INSERT INTO consumer_positions (consumer, partition, seq, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (consumer, partition) DO UPDATE
           SET seq = GREATEST(consumer_positions.seq, excluded.seq), updated_at = excluded.updated_at",
        &[&consumer, &i64::from(partition), &seq, &now.millis()],
    )
    .await?;
    Ok(())
}

async fn apply_effect<C: GenericClient>(c: &C, event: &Event, effect: &Effect, now: Timestamp) -> Result<()> {
    let store = event.store_id.uuid();
    match effect {
        Effect::Sales { hour, day, orders, revenue, units, products } => {
            exec(
                c,
                "INSERT INTO sales_hourly (store_id, hour, orders, revenue, units) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (store_id, hour) DO UPDATE SET orders = sales_hourly.orders + excluded.orders,
                   revenue = sales_hourly.revenue + excluded.revenue, units = sales_hourly.units + excluded.units",
                &[&store, hour, orders, revenue, units],
            )
            .await?;
            exec(
                c,
                "INSERT INTO sales_daily (store_id, day, orders, revenue, units) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (store_id, day) DO UPDATE SET orders = sales_daily.orders + excluded.orders,
                   revenue = sales_daily.revenue + excluded.revenue, units = sales_daily.units + excluded.units",
                &[&store, day, orders, revenue, units],
            )
            .await?;
            for p in products {
                exec(
                    c,
                    "INSERT INTO product_sales_daily (store_id, day, product_id, title, units, revenue)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (store_id, day, product_id) DO UPDATE SET title = excluded.title,
                       units = product_sales_daily.units + excluded.units,
                       revenue = product_sales_daily.revenue + excluded.revenue",
                    &[&store, day, &p.product_id.uuid(), &p.title, &p.units, &p.revenue],
                )
                .await?;
            }
        }
        Effect::BumpCacheVersion => {
            exec(
                c,
                "INSERT INTO cache_versions (store_id, version) VALUES ($1, 1)
                 ON CONFLICT (store_id) DO UPDATE SET version = cache_versions.version + 1",
                &[&store],
            )
            .await?;
        }
        Effect::Notify { recipient, message } => {
            exec(
                c,
                "INSERT INTO notifications
                   (store_id, event_id, recipient, message, status, attempts, next_attempt_at, created_at)
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)
                 ON CONFLICT DO NOTHING",
                &[&store, &event.id.uuid(), recipient, message, &now.millis()],
            )
            .await?;
        }
        Effect::Webhooks => {
            // One delivery per active endpoint subscribed to the type ("*" is every type) that
            // existed when the event happened: a new endpoint gets what happens after it.
            // `event_types` is a JSONB array of strings, so `?` tests membership.
            let payload = serde_json::to_string(event).map_err(|e| StorageError::Internal(e.to_string()))?;
            exec(
                c,
                "INSERT INTO webhook_deliveries
                   (store_id, endpoint_id, event_id, event_type, payload, status, attempts, next_attempt_at, created_at)
                 SELECT e.store_id, e.endpoint_id, $2, $3, $4, 'pending', 0, $5, $5
                 FROM webhook_endpoints e
                 WHERE e.store_id = $1 AND e.active = 1 AND e.created_at <= $6
                   AND (e.event_types ? $3 OR e.event_types ? '*')
                 ON CONFLICT DO NOTHING",
                &[&store, &event.id.uuid(), &event.kind, &payload, &now.millis(), &event.occurred_at.millis()],
            )
            .await?;
        }
    }
    Ok(())
}

const DEAD_LETTER_COLUMNS: &str =
    "id, consumer, partition, seq, store_id, event_id, type, error, attempts, parked_at, event, replayed_at";

fn dead_letter_row(shard: u32, r: &Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        shard,
        consumer: r.get(1),
        partition: u32_of(r.get(2)),
        seq: r.get(3),
        store_id: StoreId::from_uuid(r.get(4)),
        event_id: EventId::from_uuid(r.get(5)),
        kind: r.get(6),
        error: r.get(7),
        attempts: u32_of(r.get(8)),
        parked_at: Timestamp::from_millis(r.get(9)),
        event: serde_json::from_str(r.get::<_, &str>(10)).unwrap_or(serde_json::Value::Null),
        replayed_at: r.get::<_, Option<i64>>(11).map(Timestamp::from_millis),
    }
}

/// Outbox rows after `after`, oldest first by position, with the snapshot they were read in
/// (`pg_snapshot_xmin`, `pg_snapshot_xmax` of the same statement). Callers that walk the log
/// must not use this directly: [`Gaps::safe_prefix`] cuts it at the first position a running
/// transaction may still fill.
pub async fn outbox_window<C: GenericClient>(c: &C, after: i64, limit: u32) -> Result<(Vec<Logged>, Snapshot)> {
    let found = rows(
        c,
        "SELECT o.seq, o.store_id, o.event_id, o.type, o.version, o.occurred_at, o.payload, o.traceparent,
                pg_snapshot_xmin(s)::text::BIGINT, pg_snapshot_xmax(s)::text::BIGINT
         FROM pg_current_snapshot() s LEFT JOIN LATERAL
              (SELECT * FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2) o ON true
         ORDER BY o.seq",
        &[&after, &i64::from(limit)],
    )
    .await?;
    let snapshot = found.first().map_or(Snapshot { xmin: 0, xmax: 0 }, |r| Snapshot { xmin: r.get(8), xmax: r.get(9) });
    let logged = found.iter().filter(|r| r.get::<_, Option<i64>>(0).is_some()).map(logged).collect();
    Ok((logged, snapshot))
}

/// The transaction-id bounds of the snapshot a read saw: every transaction below `xmin` had
/// ended; every one at or above `xmax` had not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: i64,
    pub xmax: i64,
}

/// The outbox's commit-order safe point.
///
/// Positions come from an identity sequence, taken at insert, so they are not commit order: a
/// transaction holding position 7 may commit after the one holding 8 was read, and a reader
/// that moved past 8 would skip 7 for ever. A missing position is either held by a transaction
/// still running or gone for good (rolled back, trimmed). Every writer has its transaction id
/// before it takes a position (its first statement locks the store row, see
/// `stores::fence`), and a position below a visible one was taken before that one committed, so
/// its holder's id is below the `xmax` of the snapshot that saw the gap. Once the oldest
/// running transaction (`xmin`) is at or past that `xmax`, the holder has ended: the position
/// is visible now or never will be. So a read stops at the first gap until then.
///
/// The first sight of each gap is remembered here (per node, in memory): losing it only
/// delays a reader by one more look.
#[derive(Debug, Default)]
pub struct Gaps {
    first_seen: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
}

impl Gaps {
    /// The rows a reader may take: `rows` (read after `after`) up to the first gap that a
    /// running transaction may still fill.
    pub fn safe_prefix(&self, after: i64, rows: Vec<Logged>, snap: Snapshot) -> Vec<Logged> {
        let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of distinct gaps is only forgotten (and looked at again).
        if seen.len() > 10_000 {
            seen.clear();
        }
        let mut expect = after + 1;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if row.seq > expect {
                let xmax_then = *seen.entry(expect).or_insert(snap.xmax);
                if snap.xmin < xmax_then {
                    break;
                }
                seen.remove(&expect);
            }
            expect = row.seq + 1;
            out.push(row);
        }
        out
    }
}

/// `last_seq` is the outbox identity sequence's last value (0 before its first use), which is
/// what SQLite's `sqlite_sequence` row holds: the highest position ever taken, whether or not
/// the relay trimmed it since. One difference: a sequence is not transactional, so a position
/// taken by a transaction that rolled back counts here (on SQLite it is given back).
pub async fn outbox_stats<C: GenericClient>(c: &C) -> Result<OutboxStats> {
    let r = one(
        c,
        "SELECT (SELECT count(*) FROM outbox), (SELECT min(occurred_at) FROM outbox),
                coalesce(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'seq')::regclass), 0)",
        &[],
    )
    .await?;
    Ok(OutboxStats {
        rows: r.get(0),
        oldest_at: r.get::<_, Option<i64>>(1).map(Timestamp::from_millis),
        last_seq: r.get(2),
    })
}

/// Rows after `after` (not cut at gaps) and the oldest one's time; see `ShardLog::outbox_backlog`.
pub async fn outbox_backlog<C: GenericClient>(c: &C, after: i64) -> Result<OutboxStats> {
    let r = one(
        c,
        "SELECT (SELECT count(*) FROM outbox WHERE seq > $1), (SELECT min(occurred_at) FROM outbox WHERE seq > $1),
                coalesce(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'seq')::regclass), 0)",
        &[&after],
    )
    .await?;
    Ok(OutboxStats {
        rows: r.get(0),
        oldest_at: r.get::<_, Option<i64>>(1).map(Timestamp::from_millis),
        last_seq: r.get(2),
    })
}

/// Deletes rows up to and including `upto`.
pub async fn trim_outbox<C: GenericClient>(c: &C, upto: i64) -> Result<u64> {
    exec(c, "DELETE FROM outbox WHERE seq <= $1", &[&upto]).await
}

/// A consumer's positions, by partition.
pub async fn positions<C: GenericClient>(c: &C, consumer: &str) -> Result<Vec<(u32, i64)>> {
    let rows =
        rows(c, "SELECT partition, seq FROM consumer_positions WHERE consumer = $1 ORDER BY partition", &[&consumer])
            .await?;
    Ok(rows.iter().map(|r| (u32_of(r.get(0)), r.get(1))).collect())
}

/// Every consumer's positions: (consumer, partition, seq, updated_at).
pub async fn all_positions<C: GenericClient>(c: &C) -> Result<Vec<(String, u32, i64, Timestamp)>> {
    let rows = rows(
        c,
        "SELECT consumer, partition, seq, updated_at FROM consumer_positions ORDER BY consumer, partition",
        &[],
    )
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), u32_of(r.get(1)), r.get(2), Timestamp::from_millis(r.get(3)))).collect())
}

/// Applies each event's effects unless this consumer already applied it, and records the
/// consumer's new positions, in the caller's transaction. Returns how many events were new.
pub async fn apply<C: GenericClient>(
    c: &C,
    consumer: &str,
    batch: &[Applied],
    positions: &[(u32, i64)],
    now: Timestamp,
) -> Result<u32> {
    let mut fresh = 0;
    for a in batch {
        let new = exec(
            c,
            "INSERT INTO applied_events (store_id, consumer, event_id, applied_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&a.event.store_id.uuid(), &consumer, &a.event.id.uuid(), &now.millis()],
        )
        .await?;
        if new == 1 {
            fresh += 1;
            for effect in &a.effects {
                apply_effect(c, &a.event, effect, now).await?;
            }
        }
    }
    for (partition, seq) in positions {
        set_position(c, consumer, *partition, *seq, now).await?;
    }
    Ok(fresh)
}

/// When each event was applied by a consumer: (event id, applied at). Like SQLite, in no
/// particular order.
pub async fn applied_times<C: GenericClient>(c: &C, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>> {
    let rows = rows(
        c,
        "SELECT event_id, applied_at FROM applied_events WHERE consumer = $1 LIMIT $2",
        &[&consumer, &i64::from(limit)],
    )
    .await?;
    Ok(rows.iter().map(|r| (EventId::from_uuid(r.get(0)), Timestamp::from_millis(r.get(1)))).collect())
}

/// Parks an event that failed every retry and moves the consumer's position past it.
pub async fn park<C: GenericClient>(
    c: &C,
    consumer: &str,
    partition: u32,
    logged: &Logged,
    error: &str,
    attempts: u32,
    now: Timestamp,
) -> Result<()> {
    let event = serde_json::to_string(&logged.event).map_err(|e| StorageError::Internal(e.to_string()))?;
    exec(
        c,
        "INSERT INTO dead_letters
           (consumer, partition, seq, store_id, event_id, type, error, attempts, parked_at, event)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &consumer,
            &i64::from(partition),
            &logged.seq,
            &logged.event.store_id.uuid(),
            &logged.event.id.uuid(),
            &logged.event.kind,
            &error,
            &i64::from(attempts),
            &now.millis(),
            &event,
        ],
    )
    .await?;
    if logged.seq > 0 {
        set_position(c, consumer, partition, logged.seq, now).await?;
    }
    Ok(())
}

/// Parked events, oldest first; replayed ones only when asked. `shard` names the shard in each
/// (the free functions do not know which one they run on).
pub async fn dead_letters<C: GenericClient>(
    c: &C,
    shard: u32,
    include_replayed: bool,
    limit: u32,
) -> Result<Vec<DeadLetter>> {
    let rows = rows(
        c,
        &format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE $1 OR replayed_at IS NULL ORDER BY id LIMIT $2"),
        &[&include_replayed, &i64::from(limit)],
    )
    .await?;
    Ok(rows.iter().map(|r| dead_letter_row(shard, r)).collect())
}

pub async fn dead_letter<C: GenericClient>(c: &C, shard: u32, id: i64) -> Result<DeadLetter> {
    let r = opt(c, &format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1"), &[&id])
        .await?
        .ok_or(StorageError::NotFound)?;
    Ok(dead_letter_row(shard, &r))
}

pub async fn mark_replayed<C: GenericClient>(c: &C, id: i64, now: Timestamp) -> Result<()> {
    let n = exec(c, "UPDATE dead_letters SET replayed_at = $2 WHERE id = $1", &[&id, &now.millis()]).await?;
    if n == 0 { Err(StorageError::NotFound) } else { Ok(()) }
}

/// Queued notifications that are due, oldest first (ties by store and event, which SQLite
/// leaves to its index).
pub async fn due_notifications<C: GenericClient>(c: &C, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>> {
    let rows = rows(
        c,
        "SELECT store_id, event_id, recipient, message, attempts FROM notifications
         WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, store_id, event_id LIMIT $2",
        &[&now.millis(), &i64::from(limit)],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Outgoing {
            store_id: StoreId::from_uuid(r.get(0)),
            event_id: EventId::from_uuid(r.get(1)),
            recipient: r.get(2),
            message: r.get(3),
            attempts: u32_of(r.get(4)),
        })
        .collect())
}

/// Takes a due notification for sending (see `ShardLog::claim_notification`).
pub async fn claim_notification<C: GenericClient>(
    c: &C,
    store: StoreId,
    event: EventId,
    now: Timestamp,
    until: Timestamp,
) -> Result<bool> {
    let n = exec(
        c,
        "UPDATE notifications SET next_attempt_at = $4
         WHERE store_id = $1 AND event_id = $2 AND status = 'pending' AND next_attempt_at <= $3",
        &[&store.uuid(), &event.uuid(), &now.millis(), &until.millis()],
    )
    .await?;
    Ok(n == 1)
}

/// Records a notification's outcome: sent, or failed with the time to try again (`None`: give
/// up). An unknown notification is not an error, as on SQLite.
pub async fn notification_done<C: GenericClient>(
    c: &C,
    store: StoreId,
    event: EventId,
    outcome: Result<(), (String, Option<Timestamp>)>,
    now: Timestamp,
) -> Result<()> {
    match outcome {
        Ok(()) => {
            exec(
                c,
                "UPDATE notifications SET status = 'sent', attempts = attempts + 1, sent_at = $3, last_error = NULL
                 WHERE store_id = $1 AND event_id = $2",
                &[&store.uuid(), &event.uuid(), &now.millis()],
            )
            .await?
        }
        Err((error, retry_at)) => {
            exec(
                c,
                "UPDATE notifications SET attempts = attempts + 1, last_error = $3,
                   status = CASE WHEN $4::BIGINT IS NULL THEN 'failed' ELSE 'pending' END,
                   next_attempt_at = coalesce($4, next_attempt_at)
                 WHERE store_id = $1 AND event_id = $2",
                &[&store.uuid(), &event.uuid(), &error, &retry_at.map(|t| t.millis())],
            )
            .await?
        }
    };
    Ok(())
}
