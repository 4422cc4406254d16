//! A store's own row: name and settings.

use kirana_domain::event::kinds;
use kirana_domain::store::{StoreChange, StoreSettings};
use kirana_domain::{MerchantId, StoreId, Timestamp};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::json;

use super::{emit, placeholders};
use crate::Result;
use crate::error::StorageError;
use crate::shard::StoreRow;

const SELECT: &str = "SELECT store_id, owner_id, name, settings, created_at, updated_at FROM stores";

fn row(r: &Row<'_>) -> rusqlite::Result<(StoreRow, String)> {
    let settings: String = r.get(3)?;
    Ok((
        StoreRow {
            id: StoreId::from_uuid(r.get(0)?),
            owner: MerchantId::from_uuid(r.get(1)?),
            name: r.get(2)?,
            settings: StoreSettings::default(),
            created_at: Timestamp::from_millis(r.get(4)?),
            updated_at: Timestamp::from_millis(r.get(5)?),
        },
        settings,
    ))
}

fn finish((mut row, settings): (StoreRow, String)) -> Result<StoreRow> {
    row.settings = serde_json::from_str(&settings)?;
    Ok(row)
}

pub(super) fn insert(
    c: &Connection,
    id: StoreId,
    owner: MerchantId,
    name: &str,
    settings: &StoreSettings,
    now: Timestamp,
) -> Result<StoreRow> {
    c.prepare_cached(
        "INSERT INTO stores (store_id, owner_id, name, settings, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![id.uuid(), owner.uuid(), name, serde_json::to_string(settings)?, now.millis()])?;
    emit(c, id, kinds::STORE_CREATED, now, json!({ "name": name, "owner_id": owner, "settings": settings }))?;
    get(c, id)
}

pub(super) fn discard(c: &Connection, id: StoreId) -> Result<()> {
    c.prepare_cached("DELETE FROM stores WHERE store_id = ?1")?.execute([id.uuid()])?;
    // Its store.created event must not be published for a store that never came to be.
    c.prepare_cached("DELETE FROM outbox WHERE store_id = ?1")?.execute([id.uuid()])?;
    Ok(())
}

pub(super) fn get(c: &Connection, id: StoreId) -> Result<StoreRow> {
    let r = c
        .prepare_cached(&format!("{SELECT} WHERE store_id = ?1"))?
        .query_row([id.uuid()], row)
        .optional()?
        .ok_or(StorageError::NotFound)?;
    finish(r)
}

pub(super) fn get_many(c: &Connection, ids: &[StoreId]) -> Result<Vec<StoreRow>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut st = c.prepare_cached(&format!("{SELECT} WHERE store_id IN ({})", placeholders(1, ids.len())))?;
    let rows = st.query_map(params_from_iter(ids.iter().map(|i| i.uuid())), row)?;
    rows.map(|r| finish(r?)).collect()
}

pub(super) fn update(c: &Connection, id: StoreId, change: &StoreChange, now: Timestamp) -> Result<StoreRow> {
    let current = get(c, id)?;
    let settings = change.apply_settings(&current.settings)?;
    let name = change.name.clone().unwrap_or(current.name);
    c.prepare_cached("UPDATE stores SET name = ?2, settings = ?3, updated_at = ?4 WHERE store_id = ?1")?
        .execute(params![id.uuid(), name, serde_json::to_string(&settings)?, now.millis()])?;
    let mut payload = json!({ "name": name, "settings": settings });
    if let Some(slug) = &change.slug {
        payload["slug"] = json!(slug);
    }
    if let Some(domain) = &change.custom_domain {
        payload["custom_domain"] = json!(domain);
    }
    emit(c, id, kinds::STORE_UPDATED, now, payload)?;
    get(c, id)
}
