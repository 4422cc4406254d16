//! Kirana's storage: where every byte a merchant or shopper gives us is kept.
//!
//! The store is the tenant and the shard key. A [`Directory`] maps each store to the shard that
//! holds all of its rows; a [`Shard`] holds many stores and answers only questions scoped by a
//! [`StoreScope`], which only the directory can hand out. Nothing here queries across stores.
//!
//! A tour:
//! - [`error`]: the one error type of this layer.
//! - [`scope`]: `StoreScope` and `ShardId`, the proof that a store was resolved.
//! - [`directory`]: merchants, credentials, OTP codes, and the store → shard map with slugs.
//! - [`shard`]: everything a store owns: settings, catalog, carts, checkout, orders, customers,
//!   coupons, and the outbox of events written in the same transaction as each change.
//! - [`log`]: a shard's event log as the event pipeline walks it: outbox in commit order,
//!   consumer positions, effects applied once, dead letters.
//! - [`trace`]: the W3C trace context a write happens under, which its outbox rows carry.
//! - [`webhooks`]: merchants' webhook endpoints, their delivery log, and the worker's queue.
//! - [`storage`]: [`Storage`], the directory and its shards together, and the flows that touch
//!   both (creating a store, renaming its slug).
//! - [`lease`]: which node runs each piece of background work that must run on one node at a
//!   time, with leases that move when a node dies.
//! - [`consistency`]: how fresh a request's reads must be (strong, read-your-writes by write
//!   token, bounded staleness), carried with the request.
//! - [`postgres`]: the PostgreSQL backend: shards of a primary and streaming replicas, reads
//!   routed by consistency and lag, the directory in a control database, online store moves.
//! - [`sqlite`]: the embedded backend: one SQLite file for the directory and one per shard, each
//!   with a single writer thread that group-commits and a pool of readers.

pub mod consistency;
pub mod directory;
pub mod error;
pub mod lease;
pub mod log;
pub mod payments;
pub mod postgres;
pub mod query_count;
pub mod scope;
pub mod shard;
pub mod sqlite;
pub mod storage;
pub mod trace;
pub mod webhooks;

pub use directory::{Credential, DirEntry, Directory, OtpPolicy, SignIn};
pub use error::{ConflictKind, Shortage, StorageError};
pub use lease::{LeaseRow, Leases, LocalLeases};
pub use log::{Applied, DeadLetter, Effect, Logged, OutboxStats, Outgoing, ProductSale, ShardLog};
pub use scope::{ShardId, StoreScope};
pub use shard::{
    DashboardStats, IdempotencyKey, MediaRecord, PoolGauge, ProductFilter, Shard, ShardHealth, ShardReadiness, StoreRow,
};
pub use storage::{Placement, Readiness, Residence, Storage};
pub use webhooks::{
    Attempt, AttemptRecord, CreatedEndpoint, Delivery, DeliveryKey, DeliveryStatus, DueDelivery, Endpoint, EndpointId,
    EventTypes, NewEndpoint, Outcome, Recorded, WebhookUrl, Webhooks,
};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
