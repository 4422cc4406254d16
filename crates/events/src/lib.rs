//! Kirana's event pipeline: every change a shard commits is in its outbox; this crate moves
//! those events to the consumers that act on them, never losing one and never applying one
//! twice, and shows when any part of it falls behind.
//!
//! - [`partition`]: a store's partition; a store's events stay in order within it.
//! - [`consumers`]: what each consumer does with an event, as pure functions from an event to
//!   storage [`Effect`](kirana_storage::Effect)s (cache invalidation, sales rollups,
//!   notifications, webhook fan-out). The storage applies them exactly once.
//! - [`embedded`]: the embedded backend, where the outbox itself is the log: one reader per
//!   (consumer, shard) with a position per partition kept in the shard, retries with backoff,
//!   and poison events parked so their partition moves on.
//! - [`jetstream`]: the NATS JetStream backend: a relay from each shard's outbox to one stream
//!   with subjects partitioned by store, and durable consumers per partition.
//! - [`webhooks`]: delivering events to merchants' endpoints, signed, retried, logged.
//! - [`notify`]: the worker that sends queued notifications through a [`notify::Messenger`].
//! - [`sms`]: the SMS provider over HTTP, behind a timeout, a breaker and a retry budget.
//! - [`status`]: backlog, lag per consumer and partition, heartbeats, dead letters, alerts.
//! - [`assign`]: splitting the background work between the nodes that run it, by lease.
//! - [`Pipeline`]: starts all of it and stops it gracefully.
//! - [`bench`]: events/s and commit-to-effect latency beside a same-run baseline.

pub mod assign;
pub mod bench;
pub mod consumers;
pub mod embedded;
pub mod jetstream;
pub mod notify;
pub mod partition;
pub mod pipeline;
pub mod sms;
pub mod status;
pub mod webhooks;

pub use consumers::{Consumer, all_consumers};
pub use pipeline::{Pipeline, PipelineConfig};
