//! Coupons.

use kirana_domain::coupon::{Coupon, CouponChange, CouponKind};
use kirana_domain::event::kinds;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{Amount, CouponId, StoreId, Timestamp};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::json;
use uuid::Uuid;

use super::emit;
use crate::Result;
use crate::error::{ConflictKind, StorageError};

pub(super) const MAX_COUPONS: i64 = 10_000;

const SELECT: &str = "SELECT coupon_id, code, kind, value, max_discount, min_order, usage_limit, used_count,
    starts_at, expires_at, active, created_at, updated_at FROM coupons";

fn row(r: &Row<'_>) -> rusqlite::Result<Coupon> {
    Ok(Coupon {
        id: CouponId::from_uuid(r.get(0)?),
        code: r.get(1)?,
        kind: CouponKind::from_stored(&r.get::<_, String>(2)?),
        value: r.get(3)?,
        max_discount: r.get::<_, Option<i64>>(4)?.map(Amount::from_stored),
        min_order: Amount::from_stored(r.get(5)?),
        usage_limit: r.get(6)?,
        used_count: r.get(7)?,
        starts_at: r.get::<_, Option<i64>>(8)?.map(Timestamp::from_millis),
        expires_at: r.get::<_, Option<i64>>(9)?.map(Timestamp::from_millis),
        active: r.get(10)?,
        created_at: Timestamp::from_millis(r.get(11)?),
        updated_at: Timestamp::from_millis(r.get(12)?),
    })
}

pub(super) fn by_code(c: &Connection, store: StoreId, code: &str) -> Result<Option<Coupon>> {
    Ok(c.prepare_cached(&format!("{SELECT} WHERE store_id = ?1 AND code = ?2"))?
        .query_row(params![store.uuid(), code.to_ascii_uppercase()], row)
        .optional()?)
}

fn code_taken(c: &Connection, store: StoreId, code: &str, except: Option<CouponId>) -> Result<bool> {
    let holder: Option<Uuid> = c
        .prepare_cached("SELECT coupon_id FROM coupons WHERE store_id = ?1 AND code = ?2")?
        .query_row(params![store.uuid(), code], |r| r.get(0))
        .optional()?;
    Ok(holder.is_some_and(|h| Some(CouponId::from_uuid(h)) != except))
}

pub(super) fn create(c: &Connection, store: StoreId, ch: CouponChange, now: Timestamp) -> Result<Coupon> {
    let (Some(code), Some(kind), Some(value)) = (ch.code.clone(), ch.kind, ch.value) else {
        return Err(StorageError::invalid("code", "code, kind and value are required"));
    };
    let count: i64 = c
        .prepare_cached("SELECT count(*) FROM coupons WHERE store_id = ?1")?
        .query_row([store.uuid()], |r| r.get(0))?;
    if count >= MAX_COUPONS {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_COUPONS} coupons"),
        ));
    }
    if code_taken(c, store, &code, None)? {
        return Err(StorageError::conflict(ConflictKind::CodeTaken, Some("code"), "a coupon with this code exists"));
    }
    let id = CouponId::generate();
    c.prepare_cached(
        "INSERT INTO coupons (store_id, coupon_id, code, kind, value, max_discount, min_order, usage_limit, used_count,
            starts_at, expires_at, active, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, ?12, ?12)",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        code,
        kind.as_str(),
        value,
        ch.max_discount.flatten().map(Amount::minor),
        ch.min_order.map(Amount::minor).unwrap_or(0),
        ch.usage_limit.flatten(),
        ch.starts_at.flatten().map(Timestamp::millis),
        ch.expires_at.flatten().map(Timestamp::millis),
        ch.active.unwrap_or(true),
        now.millis()
    ])?;
    let coupon = get(c, store, id)?;
    emit(c, store, kinds::COUPON_CREATED, now, json!(coupon))?;
    Ok(coupon)
}

pub(super) fn list(c: &Connection, store: StoreId, page: PageRequest) -> Result<Page<Coupon>> {
    let after = page.after.map(|p| p.uuid());
    let rows = c
        .prepare_cached(&format!(
            "{SELECT} WHERE store_id = ?1 AND (?2 IS NULL OR coupon_id < ?2) ORDER BY coupon_id DESC LIMIT ?3"
        ))?
        .query_map(params![store.uuid(), after, page.limit.probe()], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit, |c| c.id.uuid()))
}

pub(super) fn get(c: &Connection, store: StoreId, id: CouponId) -> Result<Coupon> {
    c.prepare_cached(&format!("{SELECT} WHERE store_id = ?1 AND coupon_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], row)
        .optional()?
        .ok_or(StorageError::NotFound)
}

pub(super) fn update(c: &Connection, store: StoreId, id: CouponId, ch: CouponChange, now: Timestamp) -> Result<Coupon> {
    let cur = get(c, store, id)?;
    if ch.kind.is_some() && ch.value.is_none() {
        return Err(StorageError::invalid("value", "must be given when kind changes"));
    }
    let code = ch.code.unwrap_or(cur.code);
    if code_taken(c, store, &code, Some(id))? {
        return Err(StorageError::conflict(ConflictKind::CodeTaken, Some("code"), "a coupon with this code exists"));
    }
    let usage_limit = ch.usage_limit.unwrap_or(cur.usage_limit);
    if usage_limit.is_some_and(|l| l < cur.used_count) {
        return Err(StorageError::invalid(
            "usage_limit",
            &format!("cannot be below the {} uses already made", cur.used_count),
        ));
    }
    let starts_at = ch.starts_at.unwrap_or(cur.starts_at);
    let expires_at = ch.expires_at.unwrap_or(cur.expires_at);
    if let (Some(s), Some(e)) = (starts_at, expires_at)
        && e <= s
    {
        return Err(StorageError::invalid("expires_at", "must be after starts_at"));
    }
    c.prepare_cached(
        "UPDATE coupons SET code = ?3, kind = ?4, value = ?5, max_discount = ?6, min_order = ?7, usage_limit = ?8,
            starts_at = ?9, expires_at = ?10, active = ?11, updated_at = ?12
         WHERE store_id = ?1 AND coupon_id = ?2",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        code,
        ch.kind.unwrap_or(cur.kind).as_str(),
        ch.value.unwrap_or(cur.value),
        ch.max_discount.unwrap_or(cur.max_discount).map(Amount::minor),
        ch.min_order.unwrap_or(cur.min_order).minor(),
        usage_limit,
        starts_at.map(Timestamp::millis),
        expires_at.map(Timestamp::millis),
        ch.active.unwrap_or(cur.active),
        now.millis()
    ])?;
    let coupon = get(c, store, id)?;
    emit(c, store, kinds::COUPON_UPDATED, now, json!(coupon))?;
    Ok(coupon)
}
