//! Coupons: the port of `sqlite::shard::coupons`, with the same validation, errors and events.
//!
//! What SQLite's single writer guarantees, this gets from PostgreSQL:
//! - the per-store limit: creates serialise on a per-store advisory lock before counting;
//! - unique codes: checked first (for SQLite's exact error), and backed by the unique index
//!   `coupons_by_code`, whose violation by a concurrent writer maps to the very same error;
//! - updates read the row `FOR UPDATE`, so a checkout redeeming the coupon meanwhile either
//!   counted before (and `usage_limit` is checked against its use) or waits for the update;
//! - redemption (in `checkout`) is a guarded increment, backed by the table's CHECK.

use deadpool_postgres::GenericClient;
use kirana_domain::coupon::{Coupon, CouponChange, CouponKind};
use kirana_domain::event::kinds;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{Amount, CouponId, StoreId, Timestamp};
use serde_json::json;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{emit, exec_raw, lock, one, opt, pg, rows, unique_violation};
use crate::Result;
use crate::error::{ConflictKind, StorageError};

pub const MAX_COUPONS: i64 = 10_000;

const SELECT: &str = "SELECT coupon_id, code, kind, value, max_discount, min_order, usage_limit, used_count,
    starts_at, expires_at, active, created_at, updated_at FROM coupons";

fn row(r: &Row) -> Coupon {
    Coupon {
        id: CouponId::from_uuid(r.get(0)),
        code: r.get(1),
        kind: CouponKind::from_stored(r.get::<_, &str>(2)),
        value: r.get(3),
        max_discount: r.get::<_, Option<i64>>(4).map(Amount::from_stored),
        min_order: Amount::from_stored(r.get(5)),
        usage_limit: r.get(6),
        used_count: r.get(7),
        starts_at: r.get::<_, Option<i64>>(8).map(Timestamp::from_millis),
        expires_at: r.get::<_, Option<i64>>(9).map(Timestamp::from_millis),
        active: r.get::<_, i64>(10) != 0,
        created_at: Timestamp::from_millis(r.get(11)),
        updated_at: Timestamp::from_millis(r.get(12)),
    }
}

fn code_taken_error() -> StorageError {
    StorageError::conflict(ConflictKind::CodeTaken, Some("code"), "a coupon with this code exists")
}

/// A write to `coupons`; a concurrent writer that took the code first reads as taken.
fn write_error(e: tokio_postgres::Error) -> StorageError {
    match unique_violation(&e) {
        Some("coupons_by_code") => code_taken_error(),
        _ => pg(e),
    }
}

pub async fn by_code<C: GenericClient>(c: &C, store: StoreId, code: &str) -> Result<Option<Coupon>> {
    Ok(opt(c, &format!("{SELECT} WHERE store_id = $1 AND code = $2"), &[&store.uuid(), &code.to_ascii_uppercase()])
        .await?
        .map(|r| row(&r)))
}

/// The coupon by its code, its row locked until the transaction ends: checkout prices the
/// order with the coupon it redeems, not one changed meanwhile.
pub(crate) async fn by_code_for_update<C: GenericClient>(c: &C, store: StoreId, code: &str) -> Result<Option<Coupon>> {
    Ok(opt(
        c,
        &format!("{SELECT} WHERE store_id = $1 AND code = $2 FOR UPDATE"),
        &[&store.uuid(), &code.to_ascii_uppercase()],
    )
    .await?
    .map(|r| row(&r)))
}

async fn code_taken<C: GenericClient>(c: &C, store: StoreId, code: &str, except: Option<CouponId>) -> Result<bool> {
    let holder =
        opt(c, "SELECT coupon_id FROM coupons WHERE store_id = $1 AND code = $2", &[&store.uuid(), &code]).await?;
    Ok(holder.is_some_and(|r| Some(CouponId::from_uuid(r.get::<_, Uuid>(0))) != except))
}

pub async fn create<C: GenericClient>(c: &C, store: StoreId, ch: CouponChange, now: Timestamp) -> Result<Coupon> {
    let (Some(code), Some(kind), Some(value)) = (ch.code.clone(), ch.kind, ch.value) else {
        return Err(StorageError::invalid("code", "code, kind and value are required"));
    };
    // Rival creates would each count below the limit; one at a time per store counts right.
    lock(c, &format!("coupons:{store}")).await?;
    let count: i64 = one(c, "SELECT count(*) FROM coupons WHERE store_id = $1", &[&store.uuid()]).await?.get(0);
    if count >= MAX_COUPONS {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_COUPONS} coupons"),
        ));
    }
    if code_taken(c, store, &code, None).await? {
        return Err(code_taken_error());
    }
    let id = CouponId::generate();
    exec_raw(
        c,
        "INSERT INTO coupons (store_id, coupon_id, code, kind, value, max_discount, min_order, usage_limit, used_count,
            starts_at, expires_at, active, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11, $12, $12)",
        &[
            &store.uuid(),
            &id.uuid(),
            &code,
            &kind.as_str(),
            &value,
            &ch.max_discount.flatten().map(Amount::minor),
            &ch.min_order.map(Amount::minor).unwrap_or(0),
            &ch.usage_limit.flatten(),
            &ch.starts_at.flatten().map(Timestamp::millis),
            &ch.expires_at.flatten().map(Timestamp::millis),
            &i64::from(ch.active.unwrap_or(true)),
            &now.millis(),
        ],
    )
    .await
    .map_err(write_error)?;
    let coupon = get(c, store, id).await?;
    emit(c, store, kinds::COUPON_CREATED, now, json!(coupon)).await?;
    Ok(coupon)
}

pub async fn list<C: GenericClient>(c: &C, store: StoreId, page: PageRequest) -> Result<Page<Coupon>> {
    let after = page.after.map(|p| p.uuid());
    let rows = rows(
        c,
        &format!(
            "{SELECT} WHERE store_id = $1 AND ($2::uuid IS NULL OR coupon_id < $2) ORDER BY coupon_id DESC LIMIT $3"
        ),
        &[&store.uuid(), &after, &page.limit.probe()],
    )
    .await?;
    Ok(Page::from_probe(rows.iter().map(row).collect(), page.limit, |c| c.id.uuid()))
}

pub async fn get<C: GenericClient>(c: &C, store: StoreId, id: CouponId) -> Result<Coupon> {
    opt(c, &format!("{SELECT} WHERE store_id = $1 AND coupon_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .map(|r| row(&r))
        .ok_or(StorageError::NotFound)
}

pub async fn update<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: CouponId,
    ch: CouponChange,
    now: Timestamp,
) -> Result<Coupon> {
    let cur =
        opt(c, &format!("{SELECT} WHERE store_id = $1 AND coupon_id = $2 FOR UPDATE"), &[&store.uuid(), &id.uuid()])
            .await?
            .map(|r| row(&r))
            .ok_or(StorageError::NotFound)?;
    if ch.kind.is_some() && ch.value.is_none() {
        return Err(StorageError::invalid("value", "must be given when kind changes"));
    }
    let code = ch.code.unwrap_or(cur.code);
    if code_taken(c, store, &code, Some(id)).await? {
        return Err(code_taken_error());
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
    exec_raw(
        c,
        "UPDATE coupons SET code = $3, kind = $4, value = $5, max_discount = $6, min_order = $7, usage_limit = $8,
            starts_at = $9, expires_at = $10, active = $11, updated_at = $12
         WHERE store_id = $1 AND coupon_id = $2",
        &[
            &store.uuid(),
            &id.uuid(),
            &code,
            &ch.kind.unwrap_or(cur.kind).as_str(),
            &ch.value.unwrap_or(cur.value),
            &ch.max_discount.unwrap_or(cur.max_discount).map(Amount::minor),
            &ch.min_order.unwrap_or(cur.min_order).minor(),
            &usage_limit,
            &starts_at.map(Timestamp::millis),
            &expires_at.map(Timestamp::millis),
            &i64::from(ch.active.unwrap_or(cur.active)),
            &now.millis(),
        ],
    )
    .await
    .map_err(write_error)?;
    let coupon = get(c, store, id).await?;
    emit(c, store, kinds::COUPON_UPDATED, now, json!(coupon)).await?;
    Ok(coupon)
}
