//! A shard on PostgreSQL: [`PgShard`] (the `Shard`, `ShardLog` and `Webhooks` traits over a
//! primary and its replicas) on top of one module per concern, as on SQLite, each a set of free
//! functions over a client and a store id.
//!
//! The concern modules are public so the behavioural tests (`tests/pg_catalog.rs`,
//! `pg_orders.rs`, `pg_log.rs`, `pg_webhooks.rs`) can record each one against SQLite; the
//! application only ever reaches them through `PgShard`, with a `StoreScope`. Callers pass a
//! transaction for every write: a write is several statements and its outbox event, committed
//! together or not at all.
//!
//! SQLite gets its atomicity from one writer thread; here writers run concurrently, so every
//! read-then-write either locks what it read (`FOR UPDATE`, `FOR KEY SHARE`), serialises on a
//! transaction-scoped advisory lock when what it counts may not exist yet, or is backed by a
//! unique index whose violation maps to the same error SQLite's pre-check gives. It must never
//! answer differently from SQLite: a difference is a bug in one of the two.
//!
//! - [`stores`]: the store's own row (name, settings, the order-number counter).
//! - [`catalog`]: categories, products and their variants.
//! - [`carts`], [`checkout`], [`orders`], [`coupons`]: buying, the order state machine, discounts.
//! - [`log`]: the shard's event log as `ShardLog` defines it (outbox reads up to the
//!   commit-order safe point, positions, effects applied once, dead letters, notifications).
//! - [`webhooks`]: merchant webhook endpoints, their deliveries and attempts, for the API and
//!   the delivery worker.
//! - [`payments`]: online payments, refunds, the ledger and payouts.
//! - [`extras`]: themes, media, dashboard numbers, cache versions, analytics, a store's events.

pub mod carts;
pub mod catalog;
pub mod checkout;
pub mod coupons;
pub mod extras;
pub mod log;
pub mod orders;
pub mod payments;
mod pg_shard;
pub mod stores;
pub mod webhooks;

pub use pg_shard::{OnMoved, PgShard};

use deadpool_postgres::GenericClient;
use kirana_domain::event::Event;
use kirana_domain::{StoreId, Timestamp};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::pool::{PoolRole, query_error};
use crate::Result;
use crate::error::StorageError;

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Maps an error the caller did not expect: retryable when the connection or server went away,
/// otherwise a bug. (The free functions do not know which shard they run on; `PgShard` names
/// it in its logs.)
pub(crate) fn pg(e: tokio_postgres::Error) -> StorageError {
    let message = format!("shard primary: {e}");
    match query_error(PoolRole::Directory, e) {
        StorageError::Unavailable(_) => StorageError::Unavailable(message),
        _ => StorageError::Internal(message),
    }
}

/// The name of the unique index or constraint a statement violated, if that is what failed.
pub(crate) fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (*db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION).then(|| db.constraint()).flatten()
}

pub(crate) async fn rows<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&st, params).await.map_err(pg)
}

pub(crate) async fn opt<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&st, params).await.map_err(pg)
}

pub(crate) async fn one<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Row> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&st, params).await.map_err(pg)
}

/// Runs a statement, handing its raw error back so the caller can map the violations it
/// expects (a unique index) before the rest go through [`pg`].
pub(crate) async fn exec_raw<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, params).await
}

pub(crate) async fn exec<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<u64> {
    exec_raw(c, sql, params).await.map_err(pg)
}

/// Serialises this transaction with every other holding the same key, until it ends.
pub(crate) async fn lock<C: GenericClient>(c: &C, key: &str) -> Result<()> {
    exec(c, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&key]).await?;
    Ok(())
}

/// Appends an event to the outbox, inside the caller's transaction.
///
/// `seq` is an identity column, so positions follow insertion, which on PostgreSQL is not
/// commit order: a transaction that took seq 7 may commit after one that took seq 8. Readers
/// therefore stop at the first position a running transaction may still fill
/// ([`log::Gaps`]); SQLite has one writer, so there insertion order is commit order. See
/// docs/decisions/0018-postgres-shards-and-read-routing.md.
pub async fn emit<C: GenericClient>(
    c: &C,
    store: StoreId,
    kind: &str,
    now: Timestamp,
    payload: serde_json::Value,
) -> Result<()> {
    let event = Event::new(store, kind, now, payload);
    exec(
        c,
        "INSERT INTO outbox (store_id, event_id, type, version, occurred_at, payload, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &store.uuid(),
            &event.id.uuid(),
            &event.kind,
            &i64::from(event.version),
            &now.millis(),
            &event.payload.to_string(),
            &crate::trace::current().map(|tp| tp.to_string()),
        ],
    )
    .await?;
    Ok(())
}
