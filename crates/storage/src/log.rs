//! A shard's event log, as the event pipeline sees it: the outbox read in commit order, each
//! consumer's position, effects applied exactly once, and parked (dead-letter) events.
//!
//! This is shard infrastructure, not a store's data: the relay and consumers walk a shard's
//! outbox across the stores in it, the way operator jobs walk shards. Everything they write
//! still lands in store-scoped rows (`store_id` first) through [`Effect`]s.

use async_trait::async_trait;
use kirana_domain::event::Event;
use kirana_domain::{EventId, ProductId, StoreId, Timestamp};
use serde::Serialize;

use crate::Result;
use crate::scope::ShardId;
use crate::trace::TraceParent;

/// An outbox row: the event and its position in the shard's commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub seq: i64,
    pub event: Event,
    /// The trace of the request that wrote it, for the relay (a NATS header) and consumers to
    /// join. Kept beside the event rather than in it: webhooks send the event to merchants.
    pub traceparent: Option<TraceParent>,
}

/// How much the relay has yet to move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Rows still in the outbox.
    pub rows: i64,
    /// Position of the newest row ever written (0 when none was).
    pub last_seq: i64,
    /// When the oldest row still there was written.
    pub oldest_at: Option<Timestamp>,
}

/// What applying one event changes. Consumers compute effects from events (pure, testable);
/// the storage applies them in one transaction with the consumer's bookkeeping, so an event's
/// effects happen exactly once however often it is delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Adds to a store's sales rollups for the hour and day an order was placed.
    Sales {
        /// Start of the hour, epoch milliseconds.
        hour: i64,
        /// Days since 1970-01-01 in the store's reporting time zone.
        day: i64,
        orders: i64,
        revenue: i64,
        units: i64,
        products: Vec<ProductSale>,
    },
    /// Moves the store's cache version on, so every cached page of it is stale at once.
    BumpCacheVersion,
    /// Queues a message for the notifier (sent by its own worker, retried there).
    Notify { recipient: String, message: String },
    /// Queues a delivery of this event to each of the store's active webhook endpoints that
    /// subscribe to its type.
    Webhooks,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductSale {
    pub product_id: ProductId,
    pub title: String,
    pub units: i64,
    pub revenue: i64,
}

/// One event's effects, as a consumer hands them to the storage.
#[derive(Debug, Clone)]
pub struct Applied {
    pub event: Event,
    pub effects: Vec<Effect>,
}

/// A parked event: it failed every retry, so its partition moved on without it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub shard: u32,
    pub consumer: String,
    pub partition: u32,
    pub seq: i64,
    pub event_id: EventId,
    pub store_id: StoreId,
    #[serde(rename = "type")]
    pub kind: String,
    pub error: String,
    pub attempts: u32,
    pub parked_at: Timestamp,
    pub replayed_at: Option<Timestamp>,
    /// The event as it was logged, for `kirana events dlq show`.
    pub event: serde_json::Value,
}

/// A queued notification for the notifier's worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub store_id: StoreId,
    pub event_id: EventId,
    pub recipient: String,
    pub message: String,
    pub attempts: u32,
}

#[async_trait]
pub trait ShardLog: Send + Sync {
    fn shard_id(&self) -> ShardId;

    /// Outbox rows after `after`, oldest first.
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Logged>>;
    async fn outbox_stats(&self) -> Result<OutboxStats>;
    /// Rows after position `after` and the oldest one's time, read directly (not cut at gaps
    /// as [`ShardLog::outbox_after`] is): what a reader at `after` has yet to pass. `last_seq`
    /// as in [`ShardLog::outbox_stats`].
    async fn outbox_backlog(&self, after: i64) -> Result<OutboxStats>;
    /// Deletes rows up to and including `upto` (every consumer or the relay is past them).
    async fn trim_outbox(&self, upto: i64) -> Result<u64>;

    /// A consumer's positions in this shard's outbox, by partition.
    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, i64)>>;
    /// Every consumer's positions: (consumer, partition, seq, updated_at).
    async fn all_positions(&self) -> Result<Vec<(String, u32, i64, Timestamp)>>;

    /// Applies each event's effects unless this consumer already applied that event (by id),
    /// and, in the same transaction, records the consumer's new positions (partition, seq).
    /// Returns how many events were new.
    async fn apply(
        &self,
        consumer: &str,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32>;

    /// When each event was applied by a consumer, for latency measurement: (event id, applied
    /// at). Event ids are UUIDv7, so they carry when the event was written.
    async fn applied_times(&self, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>>;

    /// Parks an event that failed every retry and moves the consumer's position past it.
    async fn park(
        &self,
        consumer: &str,
        partition: u32,
        logged: &Logged,
        error: &str,
        attempts: u32,
        now: Timestamp,
    ) -> Result<()>;
    async fn dead_letters(&self, include_replayed: bool, limit: u32) -> Result<Vec<DeadLetter>>;
    async fn dead_letter(&self, id: i64) -> Result<DeadLetter>;
    async fn mark_replayed(&self, id: i64, now: Timestamp) -> Result<()>;

    /// Queued notifications that are due, oldest first.
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>>;
    /// Takes a due notification for sending: its next attempt moves to `until`, so no other
    /// worker sends it meanwhile (nor this shard's, nor the one its store moves to: the lease
    /// moves with the row). `false` when it is no longer due (sent, or taken). On PostgreSQL it
    /// passes the store's write fence: a store leaving this shard is sent from its new one.
    async fn claim_notification(
        &self,
        store: StoreId,
        event: EventId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool>;
    /// Records a notification's outcome: sent, or failed with the time to try again (`None`:
    /// give up). On PostgreSQL it passes the store's write fence (`Moved`: record it on the
    /// store's shard now, where the move took the row).
    async fn notification_done(
        &self,
        store: StoreId,
        event: EventId,
        outcome: Result<(), (String, Option<Timestamp>)>,
        now: Timestamp,
    ) -> Result<()>;
}

/// The payload of `stock.changed` when a sale took a variant's last unit: what pages (sold out)
/// and merchants' webhooks need to know.
pub(crate) fn sold_out(product: kirana_domain::ProductId, variant: kirana_domain::VariantId) -> serde_json::Value {
    serde_json::json!({ "product_id": product, "variant_id": variant, "stock": 0, "reason": "sold_out" })
}
