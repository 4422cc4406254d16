//! The rest of a store's shard data, the port of what `sqlite::shard` keeps inline in its
//! `Shard` impl: theme templates, media, the dashboard's counts, the cache version, analytics
//! read from the rollups the analytics consumer keeps, and a store's own outbox.
//!
//! PostgreSQL's `sum` of a BIGINT is NUMERIC, so every sum here is cast back to BIGINT (SQLite's
//! integer sum; both fail on overflow rather than wrap).

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use kirana_domain::analytics::{Analytics, DaySales, ProductSales, day_label};
use kirana_domain::event::{Event, kinds};
use kirana_domain::{EventId, ProductId, StoreId, Timestamp};
use serde_json::json;

use super::{emit, exec, one, rows};
use crate::Result;
use crate::shard::{DashboardStats, MediaRecord};

/// A store's overridden templates: (name, source), by name.
pub async fn theme_templates<C: GenericClient>(c: &C, store: StoreId) -> Result<Vec<(String, String)>> {
    let rows =
        rows(c, "SELECT name, source FROM theme_templates WHERE store_id = $1 ORDER BY name", &[&store.uuid()]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Stores a template's source, or removes the override (`None`), and emits `store.updated` —
/// also when there was nothing to remove, as on SQLite.
pub async fn set_theme_template<C: GenericClient>(
    c: &C,
    store: StoreId,
    name: &str,
    source: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    match source {
        Some(src) => {
            exec(
                c,
                "INSERT INTO theme_templates (store_id, name, source, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (store_id, name) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at",
                &[&store.uuid(), &name, &src, &now.millis()],
            )
            .await?;
        }
        None => {
            exec(c, "DELETE FROM theme_templates WHERE store_id = $1 AND name = $2", &[&store.uuid(), &name]).await?;
        }
    }
    emit(c, store, kinds::STORE_UPDATED, now, json!({ "theme_template": name, "removed": source.is_none() })).await
}

/// Records an upload; the same content again (by hash) keeps the first record.
pub async fn record_media<C: GenericClient>(
    c: &C,
    store: StoreId,
    media: MediaRecord,
    now: Timestamp,
) -> Result<MediaRecord> {
    exec(
        c,
        "INSERT INTO media (store_id, hash, width, height, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
        &[
            &store.uuid(),
            &media.hash,
            &i64::from(media.width),
            &i64::from(media.height),
            &(media.bytes as i64),
            &now.millis(),
        ],
    )
    .await?;
    Ok(media)
}

/// (files, bytes) a store has uploaded.
pub async fn media_usage<C: GenericClient>(c: &C, store: StoreId) -> Result<(i64, i64)> {
    let r = one(c, "SELECT count(*), coalesce(sum(bytes), 0)::BIGINT FROM media WHERE store_id = $1", &[&store.uuid()])
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Orders and revenue since `since`, and orders waiting for the merchant.
pub async fn dashboard_stats<C: GenericClient>(c: &C, store: StoreId, since: Timestamp) -> Result<DashboardStats> {
    // Order ids are UUIDv7, so a primary-key range bounds the scan to about a day's orders
    // whatever the store's history; `created_at` (the injected clock) then decides. The range
    // starts a day early so ids minted by a node whose wall clock lags still count. (UUIDs
    // compare bytewise on both backends, so the range is the same.)
    let floor_ms = (since.millis() - 86_400_000).max(0) as u64;
    let floor = uuid::Builder::from_unix_timestamp_millis(floor_ms, &[0; 10]).into_uuid();
    let r = one(
        c,
        "SELECT count(*), coalesce(sum(total), 0)::BIGINT FROM orders
         WHERE store_id = $1 AND order_id >= $2 AND created_at >= $3",
        &[&store.uuid(), &floor, &since.millis()],
    )
    .await?;
    let waiting: i64 =
        one(c, "SELECT count(*) FROM orders WHERE store_id = $1 AND status = 'placed'", &[&store.uuid()]).await?.get(0);
    Ok(DashboardStats { orders_today: r.get(0), revenue_today: r.get(1), waiting })
}

/// The store's cache version (0 before the first bump).
pub async fn cache_version<C: GenericClient>(c: &C, store: StoreId) -> Result<i64> {
    Ok(one(c, "SELECT coalesce((SELECT version FROM cache_versions WHERE store_id = $1), 0)", &[&store.uuid()])
        .await?
        .get(0))
}

/// Sales per day over `from_day..=to_day` (every day, zeros where nothing sold), their totals,
/// and the ten best sellers by revenue.
pub async fn analytics<C: GenericClient>(c: &C, store: StoreId, from_day: i64, to_day: i64) -> Result<Analytics> {
    let s = store.uuid();
    let by_day: HashMap<i64, (i64, i64, i64)> = rows(
        c,
        "SELECT day, orders, revenue, units FROM sales_daily WHERE store_id = $1 AND day BETWEEN $2 AND $3",
        &[&s, &from_day, &to_day],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect();
    let mut totals =
        DaySales { date: format!("{}..{}", day_label(from_day), day_label(to_day)), ..DaySales::default() };
    let days = (from_day..=to_day)
        .map(|d| {
            let (orders, revenue, units) = by_day.get(&d).copied().unwrap_or((0, 0, 0));
            totals.orders += orders;
            totals.revenue += revenue;
            totals.units += units;
            DaySales { date: day_label(d), orders, revenue, units }
        })
        .collect();
    let top_products = rows(
        c,
        "SELECT product_id, max(title), sum(units)::BIGINT, sum(revenue)::BIGINT FROM product_sales_daily
         WHERE store_id = $1 AND day BETWEEN $2 AND $3
         GROUP BY product_id ORDER BY sum(revenue) DESC, product_id LIMIT 10",
        &[&s, &from_day, &to_day],
    )
    .await?
    .iter()
    .map(|r| ProductSales {
        product_id: ProductId::from_uuid(r.get(0)),
        title: r.get(1),
        units: r.get(2),
        revenue: r.get(3),
    })
    .collect();
    Ok(Analytics { from: day_label(from_day), to: day_label(to_day), totals, days, top_products })
}

/// A store's events still in the outbox after position `after`, oldest first.
pub async fn events<C: GenericClient>(c: &C, store: StoreId, after: i64, limit: u32) -> Result<Vec<(i64, Event)>> {
    let rows = rows(
        c,
        "SELECT seq, event_id, type, version, occurred_at, payload FROM outbox
         WHERE store_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[&store.uuid(), &after, &i64::from(limit)],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push((
            r.get(0),
            Event {
                id: EventId::from_uuid(r.get(1)),
                store_id: store,
                kind: r.get(2),
                version: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                occurred_at: Timestamp::from_millis(r.get(4)),
                payload: serde_json::from_str(r.get::<_, &str>(5))?,
            },
        ));
    }
    Ok(out)
}
