//! A store's own row: name, settings and the order-number counter. The port of
//! `sqlite::shard::stores`.

use deadpool_postgres::GenericClient;
use kirana_domain::event::kinds;
use kirana_domain::store::{StoreChange, StoreSettings};
use kirana_domain::{MerchantId, StoreId, Timestamp};
use serde_json::json;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{emit, exec, one, opt, rows};
use crate::Result;
use crate::error::StorageError;
use crate::shard::StoreRow;

const SELECT: &str = "SELECT store_id, owner_id, name, settings, created_at, updated_at FROM stores";

fn row(r: &Row) -> Result<StoreRow> {
    Ok(StoreRow {
        id: StoreId::from_uuid(r.get(0)),
        owner: MerchantId::from_uuid(r.get(1)),
        name: r.get(2),
        settings: serde_json::from_str(r.get::<_, &str>(3))?,
        created_at: Timestamp::from_millis(r.get(4)),
        updated_at: Timestamp::from_millis(r.get(5)),
    })
}

pub async fn insert<C: GenericClient>(
    c: &C,
    id: StoreId,
    owner: MerchantId,
    name: &str,
    settings: &StoreSettings,
    now: Timestamp,
) -> Result<StoreRow> {
    exec(
        c,
        "INSERT INTO stores (store_id, owner_id, name, settings, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
        &[&id.uuid(), &owner.uuid(), &name, &serde_json::to_string(settings)?, &now.millis()],
    )
    .await?;
    emit(c, id, kinds::STORE_CREATED, now, json!({ "name": name, "owner_id": owner, "settings": settings })).await?;
    get(c, id).await
}

/// The first statement of every write transaction of a store: takes a KEY SHARE lock on the
/// store's row (writers never block one another) and refuses the write once a store move has
/// frozen the store (`moved_to` set). A writer that locked the row before the freeze committed
/// has its transaction id by then, and the move waits for every such transaction to end before
/// its last catch-up; one that locks it after reads the frozen version (READ COMMITTED follows
/// an updated row to its newest version). So nothing reaches the source after the last
/// catch-up. See `moves.rs`.
///
/// On the target of a move the store's row carries `arriving_from` until the move's last
/// drain: the store still lives on that shard, and the fence refuses the write as "moved" there,
/// for a writer (or an event consumer) whose directory is stale. Only the mover writes an
/// arriving store.
///
/// It also gives the transaction its id before any outbox insert, which the outbox's safe
/// point relies on (see `log::outbox_window`).
pub async fn fence<C: GenericClient>(c: &C, id: StoreId) -> Result<()> {
    let row = opt(c, "SELECT moved_to, arriving_from FROM stores WHERE store_id = $1 FOR KEY SHARE", &[&id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
        (None, None) => Ok(()),
        (Some(to), _) | (None, Some(to)) => Err(StorageError::Moved { store: id, to: crate::ShardId(to as u32) }),
    }
}

pub async fn discard<C: GenericClient>(c: &C, id: StoreId) -> Result<()> {
    exec(c, "DELETE FROM stores WHERE store_id = $1", &[&id.uuid()]).await?;
    // Its store.created event must not be published for a store that never came to be.
    exec(c, "DELETE FROM outbox WHERE store_id = $1", &[&id.uuid()]).await?;
    Ok(())
}

pub async fn get<C: GenericClient>(c: &C, id: StoreId) -> Result<StoreRow> {
    let r = opt(c, &format!("{SELECT} WHERE store_id = $1"), &[&id.uuid()]).await?.ok_or(StorageError::NotFound)?;
    row(&r)
}

pub async fn get_many<C: GenericClient>(c: &C, ids: &[StoreId]) -> Result<Vec<StoreRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = ids.iter().map(StoreId::uuid).collect();
    rows(c, &format!("{SELECT} WHERE store_id = ANY($1)"), &[&ids]).await?.iter().map(row).collect()
}

/// Reads the row under `FOR UPDATE`: two changes to the same store's settings apply one after
/// the other, each to the other's result (SQLite's single writer gives the same).
pub async fn update<C: GenericClient>(c: &C, id: StoreId, change: &StoreChange, now: Timestamp) -> Result<StoreRow> {
    let current = opt(c, &format!("{SELECT} WHERE store_id = $1 FOR UPDATE"), &[&id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    let current = row(&current)?;
    let settings = change.apply_settings(&current.settings)?;
    let name = change.name.clone().unwrap_or(current.name);
    exec(
        c,
        "UPDATE stores SET name = $2, settings = $3, updated_at = $4 WHERE store_id = $1",
        &[&id.uuid(), &name, &serde_json::to_string(&settings)?, &now.millis()],
    )
    .await?;
    let mut payload = json!({ "name": name, "settings": settings });
    if let Some(slug) = &change.slug {
        payload["slug"] = json!(slug);
    }
    if let Some(domain) = &change.custom_domain {
        payload["custom_domain"] = json!(domain);
    }
    emit(c, id, kinds::STORE_UPDATED, now, payload).await?;
    get(c, id).await
}

/// Takes the store's next order number (checkout's step in `sqlite::shard::checkout`). The
/// row lock it takes holds rival checkouts of the same store until this transaction ends, so
/// numbers are gap-free among committed orders, as on SQLite.
pub async fn next_order_number<C: GenericClient>(c: &C, id: StoreId) -> Result<i64> {
    Ok(one(
        c,
        "UPDATE stores SET next_order_number = next_order_number + 1 WHERE store_id = $1 RETURNING next_order_number - 1",
        &[&id.uuid()],
    )
    .await?
    .get(0))
}
