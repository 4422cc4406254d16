//! A shard on SQLite. The [`Shard`] methods here only unwrap the scope and hop to the writer or
//! a reader; the SQL lives in one module per concern, as free functions over a connection and a
//! store id. Those functions are private to this backend: outside it, the only way in is a
//! `StoreScope`.

mod carts;
mod catalog;
mod checkout;
mod coupons;
mod log;
mod orders;
mod payments;
mod stores;
mod webhooks;

use async_trait::async_trait;
use kirana_domain::analytics::Analytics;
use kirana_domain::cart::{Cart, Checkout, Quantity};
use kirana_domain::catalog::{Category, CategoryChange, Product, ProductChange};
use kirana_domain::coupon::{Coupon, CouponChange};
use kirana_domain::customer::Customer;
use kirana_domain::event::Event;
use kirana_domain::order::{Order, OrderStatus, TransitionRequest};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::store::{StoreChange, StoreSettings};
use kirana_domain::{
    CartId, CategoryId, CouponId, CustomerId, EventId, MerchantId, OrderId, ProductId, StoreId, Timestamp, VariantId,
};
use rusqlite::{Connection, params};

use super::db::Db;
use crate::Result;
use crate::scope::StoreScope;
use crate::shard::{DashboardStats, IdempotencyKey, MediaRecord, ProductFilter, Shard, StoreRow};

pub(crate) struct SqliteShard {
    db: Db,
    id: crate::scope::ShardId,
}

impl SqliteShard {
    pub(crate) fn new(db: Db, id: crate::scope::ShardId) -> Self {
        SqliteShard { db, id }
    }
}

/// Appends an event to the outbox, inside the caller's transaction.
pub(super) fn emit(
    c: &Connection,
    store: StoreId,
    kind: &str,
    now: Timestamp,
    payload: serde_json::Value,
) -> Result<()> {
    let event = Event::new(store, kind, now, payload);
    c.prepare_cached(
        "INSERT INTO outbox (store_id, event_id, type, version, occurred_at, payload, traceparent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        store.uuid(),
        event.id.uuid(),
        event.kind,
        event.version,
        now.millis(),
        event.payload.to_string(),
        crate::trace::current().map(|tp| tp.to_string())
    ])?;
    Ok(())
}

/// `?2, ?3, …` for an `IN (…)` list of `n` values bound after `first - 1` other parameters.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

#[async_trait]
impl Shard for SqliteShard {
    async fn insert_store(
        &self,
        id: StoreId,
        owner: MerchantId,
        name: &str,
        settings: &StoreSettings,
        now: Timestamp,
    ) -> Result<StoreRow> {
        let (name, settings) = (name.to_string(), settings.clone());
        self.db.write(move |c| stores::insert(c, id, owner, &name, &settings, now)).await
    }

    async fn discard_store(&self, id: StoreId) -> Result<()> {
        self.db.write(move |c| stores::discard(c, id)).await
    }

    async fn store(&self, scope: &StoreScope) -> Result<StoreRow> {
        self.db.read(|c| stores::get(c, scope.store_id()))
    }

    async fn stores(&self, scopes: &[StoreScope]) -> Result<Vec<StoreRow>> {
        let ids: Vec<StoreId> = scopes.iter().map(StoreScope::store_id).collect();
        self.db.read(|c| stores::get_many(c, &ids))
    }

    async fn update_store(&self, scope: &StoreScope, change: &StoreChange, now: Timestamp) -> Result<StoreRow> {
        let (s, change) = (scope.store_id(), change.clone());
        self.db.write(move |c| stores::update(c, s, &change, now)).await
    }

    async fn create_category(&self, scope: &StoreScope, change: CategoryChange, now: Timestamp) -> Result<Category> {
        let s = scope.store_id();
        self.db.write(move |c| catalog::create_category(c, s, change, now)).await
    }

    async fn categories(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Category>> {
        self.db.read(|c| catalog::categories(c, scope.store_id(), page))
    }

    async fn category(&self, scope: &StoreScope, id: CategoryId) -> Result<Category> {
        self.db.read(|c| catalog::category(c, scope.store_id(), id))
    }

    async fn update_category(
        &self,
        scope: &StoreScope,
        id: CategoryId,
        change: CategoryChange,
        now: Timestamp,
    ) -> Result<Category> {
        let s = scope.store_id();
        self.db.write(move |c| catalog::update_category(c, s, id, change, now)).await
    }

    async fn delete_category(&self, scope: &StoreScope, id: CategoryId, now: Timestamp) -> Result<()> {
        let s = scope.store_id();
        self.db.write(move |c| catalog::delete_category(c, s, id, now)).await
    }

    async fn create_product(&self, scope: &StoreScope, change: ProductChange, now: Timestamp) -> Result<Product> {
        let s = scope.store_id();
        self.db.write(move |c| catalog::create_product(c, s, change, now)).await
    }

    async fn products(&self, scope: &StoreScope, filter: ProductFilter, page: PageRequest) -> Result<Page<Product>> {
        self.db.read(|c| catalog::products(c, scope.store_id(), &filter, page))
    }

    async fn product(&self, scope: &StoreScope, id: ProductId) -> Result<Product> {
        self.db.read(|c| catalog::product(c, scope.store_id(), id))
    }

    async fn products_by_ids(&self, scope: &StoreScope, ids: &[ProductId]) -> Result<Vec<Product>> {
        self.db.read(|c| catalog::products_by_ids(c, scope.store_id(), ids))
    }

    async fn update_product(
        &self,
        scope: &StoreScope,
        id: ProductId,
        change: ProductChange,
        now: Timestamp,
    ) -> Result<Product> {
        let s = scope.store_id();
        self.db.write(move |c| catalog::update_product(c, s, id, change, now)).await
    }

    async fn delete_product(&self, scope: &StoreScope, id: ProductId, now: Timestamp) -> Result<()> {
        let s = scope.store_id();
        self.db.write(move |c| catalog::delete_product(c, s, id, now)).await
    }

    async fn create_cart(&self, scope: &StoreScope, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
        let s = scope.store_id();
        // A cart is no page's business: its write earns no token (see `consistency::untracked`).
        let _untracked = crate::consistency::untracked();
        self.db.write(move |c| carts::create(c, s, token_hash, now)).await
    }

    async fn cart(&self, scope: &StoreScope, id: CartId, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
        self.db.read(|c| carts::get(c, scope.store_id(), id, token_hash, now))
    }

    async fn set_cart_item(
        &self,
        scope: &StoreScope,
        id: CartId,
        token_hash: [u8; 32],
        variant: VariantId,
        quantity: Quantity,
        now: Timestamp,
    ) -> Result<Cart> {
        let s = scope.store_id();
        let _untracked = crate::consistency::untracked();
        self.db.write(move |c| carts::set_item(c, s, id, token_hash, variant, quantity, now)).await
    }

    async fn checkout(
        &self,
        scope: &StoreScope,
        id: CartId,
        token_hash: [u8; 32],
        checkout: Checkout,
        idempotency: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Result<(Order, bool)> {
        let s = scope.store_id();
        self.db.write(move |c| checkout::checkout(c, s, id, token_hash, &checkout, idempotency.as_ref(), now)).await
    }

    async fn orders(&self, scope: &StoreScope, status: Option<OrderStatus>, page: PageRequest) -> Result<Page<Order>> {
        self.db.read(|c| orders::list(c, scope.store_id(), status, page))
    }

    async fn order(&self, scope: &StoreScope, id: OrderId) -> Result<Order> {
        self.db.read(|c| orders::get(c, scope.store_id(), id))
    }

    async fn order_for_shopper(&self, scope: &StoreScope, id: OrderId, token_hash: [u8; 32]) -> Result<Order> {
        self.db.read(|c| orders::get_for_shopper(c, scope.store_id(), id, token_hash))
    }

    async fn transition_order(
        &self,
        scope: &StoreScope,
        id: OrderId,
        request: TransitionRequest,
        actor: String,
        fees: &kirana_domain::payment::FeePlans,
        now: Timestamp,
    ) -> Result<Order> {
        let (s, fees) = (scope.store_id(), fees.clone());
        self.db.write(move |c| orders::transition(c, s, id, &request, &actor, &fees, now)).await
    }

    async fn customers(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Customer>> {
        self.db.read(|c| orders::customers(c, scope.store_id(), page))
    }

    async fn customer(&self, scope: &StoreScope, id: CustomerId) -> Result<Customer> {
        self.db.read(|c| orders::customer(c, scope.store_id(), id))
    }

    async fn create_coupon(&self, scope: &StoreScope, change: CouponChange, now: Timestamp) -> Result<Coupon> {
        let s = scope.store_id();
        self.db.write(move |c| coupons::create(c, s, change, now)).await
    }

    async fn coupons(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Coupon>> {
        self.db.read(|c| coupons::list(c, scope.store_id(), page))
    }

    async fn coupon(&self, scope: &StoreScope, id: CouponId) -> Result<Coupon> {
        self.db.read(|c| coupons::get(c, scope.store_id(), id))
    }

    async fn update_coupon(
        &self,
        scope: &StoreScope,
        id: CouponId,
        change: CouponChange,
        now: Timestamp,
    ) -> Result<Coupon> {
        let s = scope.store_id();
        self.db.write(move |c| coupons::update(c, s, id, change, now)).await
    }

    async fn theme_templates(&self, scope: &StoreScope) -> Result<Vec<(String, String)>> {
        self.db.read(|c| {
            let mut st =
                c.prepare_cached("SELECT name, source FROM theme_templates WHERE store_id = ?1 ORDER BY name")?;
            let rows = st.query_map([scope.store_id().uuid()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn set_theme_template(
        &self,
        scope: &StoreScope,
        name: &str,
        source: Option<String>,
        now: Timestamp,
    ) -> Result<()> {
        let (store, name) = (scope.store_id(), name.to_string());
        self.db
            .write(move |c| {
                match &source {
                    Some(src) => {
                        c.prepare_cached(
                            "INSERT INTO theme_templates (store_id, name, source, updated_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (store_id, name) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at",
                        )?
                        .execute(params![store.uuid(), name, src, now.millis()])?;
                    }
                    None => {
                        c.prepare_cached("DELETE FROM theme_templates WHERE store_id = ?1 AND name = ?2")?
                            .execute(params![store.uuid(), name])?;
                    }
                }
                emit(c, store, kirana_domain::event::kinds::STORE_UPDATED, now, serde_json::json!({ "theme_template": name, "removed": source.is_none() }))
            })
            .await
    }

    async fn dashboard_stats(&self, scope: &StoreScope, since: Timestamp) -> Result<DashboardStats> {
        // Order ids are UUIDv7, so a primary-key range bounds the scan to about a day's orders
        // whatever the store's history; `created_at` (the injected clock) then decides. The
        // range starts a day early so ids minted by a node whose wall clock lags still count.
        let floor_ms = (since.millis() - 86_400_000).max(0) as u64;
        let floor = uuid::Builder::from_unix_timestamp_millis(floor_ms, &[0; 10]).into_uuid();
        self.db.read(move |c| {
            let (orders_today, revenue_today) = c
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(total), 0) FROM orders
                     WHERE store_id = ?1 AND order_id >= ?2 AND created_at >= ?3",
                )?
                .query_row(params![scope.store_id().uuid(), floor, since.millis()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let waiting = c
                .prepare_cached("SELECT count(*) FROM orders WHERE store_id = ?1 AND status = 'placed'")?
                .query_row([scope.store_id().uuid()], |r| r.get(0))?;
            Ok(DashboardStats { orders_today, revenue_today, waiting })
        })
    }

    async fn record_media(&self, scope: &StoreScope, media: MediaRecord, now: Timestamp) -> Result<MediaRecord> {
        let store = scope.store_id();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO media (store_id, hash, width, height, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![store.uuid(), media.hash, media.width, media.height, media.bytes as i64, now.millis()])?;
                Ok(media)
            })
            .await
    }

    async fn media_usage(&self, scope: &StoreScope) -> Result<(i64, i64)> {
        self.db.read(|c| {
            Ok(c.prepare_cached("SELECT count(*), coalesce(sum(bytes), 0) FROM media WHERE store_id = ?1")?
                .query_row([scope.store_id().uuid()], |r| Ok((r.get(0)?, r.get(1)?)))?)
        })
    }

    fn log(&self) -> &dyn crate::log::ShardLog {
        self
    }

    fn webhooks(&self) -> &dyn crate::webhooks::Webhooks {
        self
    }

    fn payments(&self) -> &dyn crate::payments::Payments {
        self
    }

    async fn cache_version(&self, scope: &StoreScope) -> Result<i64> {
        self.db.read(|c| {
            Ok(c.prepare_cached("SELECT coalesce((SELECT version FROM cache_versions WHERE store_id = ?1), 0)")?
                .query_row([scope.store_id().uuid()], |r| r.get(0))?)
        })
    }

    async fn analytics(&self, scope: &StoreScope, from_day: i64, to_day: i64) -> Result<Analytics> {
        use kirana_domain::analytics::{DaySales, ProductSales, day_label};
        let store = scope.store_id().uuid();
        self.db.read(|c| {
            let mut by_day = std::collections::HashMap::new();
            let mut st = c.prepare_cached(
                "SELECT day, orders, revenue, units FROM sales_daily WHERE store_id = ?1 AND day BETWEEN ?2 AND ?3",
            )?;
            for row in st.query_map(params![store, from_day, to_day], |r| {
                Ok((r.get::<_, i64>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
            })? {
                let (day, v) = row?;
                by_day.insert(day, v);
            }
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
            let mut st = c.prepare_cached(
                "SELECT product_id, max(title), sum(units), sum(revenue) FROM product_sales_daily
                 WHERE store_id = ?1 AND day BETWEEN ?2 AND ?3
                 GROUP BY product_id ORDER BY sum(revenue) DESC, product_id LIMIT 10",
            )?;
            let top_products = st
                .query_map(params![store, from_day, to_day], |r| {
                    Ok(ProductSales {
                        product_id: ProductId::from_uuid(r.get(0)?),
                        title: r.get(1)?,
                        units: r.get(2)?,
                        revenue: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Analytics { from: day_label(from_day), to: day_label(to_day), totals, days, top_products })
        })
    }

    async fn events(&self, scope: &StoreScope, after: i64, limit: u32) -> Result<Vec<(i64, Event)>> {
        let store = scope.store_id();
        self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, event_id, type, version, occurred_at, payload FROM outbox
                 WHERE store_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = st.query_map(params![store.uuid(), after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, uuid::Uuid>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, id, kind, version, at, payload) = row?;
                out.push((
                    seq,
                    Event {
                        id: EventId::from_uuid(id),
                        store_id: store,
                        kind,
                        version,
                        occurred_at: Timestamp::from_millis(at),
                        payload: serde_json::from_str(&payload)?,
                    },
                ));
            }
            Ok(out)
        })
    }

    async fn ping(&self) -> Result<()> {
        self.db.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
    }
}
