//! A shard: the rows of many stores, answered one store at a time.
//!
//! Every method takes a [`StoreScope`] and binds its store id in every statement; a row of
//! another store is indistinguishable from a missing one (`NotFound`). Every method that changes
//! state writes its outbox event in the same transaction.

use async_trait::async_trait;
use kirana_domain::cart::{Cart, Checkout, Quantity};
use kirana_domain::catalog::{Category, CategoryChange, Product, ProductChange, ProductStatus};
use kirana_domain::coupon::{Coupon, CouponChange};
use kirana_domain::customer::Customer;
use kirana_domain::event::Event;
use kirana_domain::order::{Order, OrderStatus, TransitionRequest};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::store::{StoreChange, StoreSettings};
use kirana_domain::{
    CartId, CategoryId, CouponId, CustomerId, MerchantId, OrderId, ProductId, StoreId, Timestamp, VariantId,
};

use crate::Result;
use crate::scope::StoreScope;

/// A store's own row: what the shard knows of it (the slug and domain live in the directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRow {
    pub id: StoreId,
    pub owner: MerchantId,
    pub name: String,
    pub settings: StoreSettings,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a merchant checks all day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DashboardStats {
    pub orders_today: i64,
    /// Sum of today's order totals, in minor units.
    pub revenue_today: i64,
    /// Orders placed and not yet accepted or rejected.
    pub waiting: i64,
}

/// An uploaded image: its content hash and original size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MediaRecord {
    pub hash: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// Which products a list returns.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    pub status: Option<ProductStatus>,
    pub category: Option<CategoryId>,
    /// Words that must appear in the title (case-insensitive).
    pub query: Option<String>,
}

/// A checkout's `Idempotency-Key` and a fingerprint of the request it came with: a repeat with
/// the same key and fingerprint gets the first order back; a different request under the same
/// key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: [u8; 32],
}

/// A shard's servers as an operator watches them: its pools' occupancy and its replicas' lag
/// and place in rotation (empty for an embedded shard). Read at scrape time, never waits.
#[derive(Debug, Clone, Default)]
pub struct ShardHealth {
    pub pools: Vec<PoolGauge>,
    pub replicas: Vec<crate::postgres::replicas::ReplicaReport>,
    /// Replica-level reads the primary served because no replica qualified.
    pub fallback_reads: u64,
}

/// What a shard can do for requests right now (`/readyz`, `kirana doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardReadiness {
    /// Its primary answers: reads and writes.
    Ready,
    /// Its primary does not answer, its replicas serve reads: catalog, pages and order status
    /// work, writes answer 503 with `Retry-After`.
    ReadOnly,
    /// Nothing of it answers.
    Down,
}

/// One connection pool's occupancy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGauge {
    /// `primary` or `replica-N`.
    pub role: String,
    pub size: usize,
    pub idle: usize,
    pub waiting: usize,
    pub max_size: usize,
}

#[async_trait]
pub trait Shard: Send + Sync {
    /// Creates a store's row. Called before the directory knows the store, so it takes an id
    /// rather than a scope; nothing can reach the row until the directory entry exists.
    async fn insert_store(
        &self,
        id: StoreId,
        owner: MerchantId,
        name: &str,
        settings: &StoreSettings,
        now: Timestamp,
    ) -> Result<StoreRow>;
    /// Removes a store row whose directory registration failed.
    async fn discard_store(&self, id: StoreId) -> Result<()>;
    async fn store(&self, scope: &StoreScope) -> Result<StoreRow>;
    async fn stores(&self, scopes: &[StoreScope]) -> Result<Vec<StoreRow>>;
    async fn update_store(&self, scope: &StoreScope, change: &StoreChange, now: Timestamp) -> Result<StoreRow>;

    async fn create_category(&self, scope: &StoreScope, change: CategoryChange, now: Timestamp) -> Result<Category>;
    async fn categories(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Category>>;
    async fn category(&self, scope: &StoreScope, id: CategoryId) -> Result<Category>;
    async fn update_category(
        &self,
        scope: &StoreScope,
        id: CategoryId,
        change: CategoryChange,
        now: Timestamp,
    ) -> Result<Category>;
    async fn delete_category(&self, scope: &StoreScope, id: CategoryId, now: Timestamp) -> Result<()>;

    async fn create_product(&self, scope: &StoreScope, change: ProductChange, now: Timestamp) -> Result<Product>;
    async fn products(&self, scope: &StoreScope, filter: ProductFilter, page: PageRequest) -> Result<Page<Product>>;
    async fn product(&self, scope: &StoreScope, id: ProductId) -> Result<Product>;
    /// The store's products among `ids` (at most 100; missing ones left out), in no particular
    /// order, in a fixed number of queries: for pages of search hits.
    async fn products_by_ids(&self, scope: &StoreScope, ids: &[ProductId]) -> Result<Vec<Product>>;
    async fn update_product(
        &self,
        scope: &StoreScope,
        id: ProductId,
        change: ProductChange,
        now: Timestamp,
    ) -> Result<Product>;
    async fn delete_product(&self, scope: &StoreScope, id: ProductId, now: Timestamp) -> Result<()>;

    async fn create_cart(&self, scope: &StoreScope, token_hash: [u8; 32], now: Timestamp) -> Result<Cart>;
    /// The cart, if `token_hash` is its token's; `NotFound` otherwise, and once expired.
    async fn cart(&self, scope: &StoreScope, id: CartId, token_hash: [u8; 32], now: Timestamp) -> Result<Cart>;
    async fn set_cart_item(
        &self,
        scope: &StoreScope,
        id: CartId,
        token_hash: [u8; 32],
        variant: VariantId,
        quantity: Quantity,
        now: Timestamp,
    ) -> Result<Cart>;
    /// Turns a cart into an order in one transaction: prices from the catalog, stock taken with
    /// a guarded decrement, coupon redeemed with a guarded increment, customer recorded, event
    /// written. Returns the order and whether it was a replay of an earlier identical request.
    async fn checkout(
        &self,
        scope: &StoreScope,
        id: CartId,
        token_hash: [u8; 32],
        checkout: Checkout,
        idempotency: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Result<(Order, bool)>;

    async fn orders(&self, scope: &StoreScope, status: Option<OrderStatus>, page: PageRequest) -> Result<Page<Order>>;
    async fn order(&self, scope: &StoreScope, id: OrderId) -> Result<Order>;
    /// The order, if `token_hash` is the token of the cart that placed it.
    async fn order_for_shopper(&self, scope: &StoreScope, id: OrderId, token_hash: [u8; 32]) -> Result<Order>;
    /// Moves an order one step; delivering a cash-on-delivery order charges the store's fee
    /// (`fees`, by the store's plan) in the same transaction.
    async fn transition_order(
        &self,
        scope: &StoreScope,
        id: OrderId,
        request: TransitionRequest,
        actor: String,
        fees: &kirana_domain::payment::FeePlans,
        now: Timestamp,
    ) -> Result<Order>;

    async fn customers(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Customer>>;
    async fn customer(&self, scope: &StoreScope, id: CustomerId) -> Result<Customer>;

    async fn create_coupon(&self, scope: &StoreScope, change: CouponChange, now: Timestamp) -> Result<Coupon>;
    async fn coupons(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Coupon>>;
    async fn coupon(&self, scope: &StoreScope, id: CouponId) -> Result<Coupon>;
    async fn update_coupon(
        &self,
        scope: &StoreScope,
        id: CouponId,
        change: CouponChange,
        now: Timestamp,
    ) -> Result<Coupon>;

    /// The store's theme overrides: (template name, source).
    async fn theme_templates(&self, scope: &StoreScope) -> Result<Vec<(String, String)>>;
    /// Stores a template the caller has already validated; `None` removes the override.
    async fn set_theme_template(
        &self,
        scope: &StoreScope,
        name: &str,
        source: Option<String>,
        now: Timestamp,
    ) -> Result<()>;

    /// The numbers a dashboard shows all day: orders and revenue since `since`, and orders
    /// waiting for the merchant (placed, not yet accepted).
    async fn dashboard_stats(&self, scope: &StoreScope, since: Timestamp) -> Result<DashboardStats>;

    /// Records an uploaded image (idempotent: the same bytes are the same row).
    async fn record_media(&self, scope: &StoreScope, media: MediaRecord, now: Timestamp) -> Result<MediaRecord>;
    /// How many images the store holds, and their total size.
    async fn media_usage(&self, scope: &StoreScope) -> Result<(i64, i64)>;

    /// The shard's event log (for the relay and consumers, which walk it across stores).
    fn log(&self) -> &dyn crate::log::ShardLog;

    /// The shard's webhook endpoints and deliveries (store-scoped for the API, shard-wide for
    /// the delivery worker).
    fn webhooks(&self) -> &dyn crate::webhooks::Webhooks;

    /// The shard's payments, refunds, ledger and payouts.
    fn payments(&self) -> &dyn crate::payments::Payments;

    /// The store's cache version: bumped on every change to the store by the invalidation
    /// consumer; cache keys carry it.
    async fn cache_version(&self, scope: &StoreScope) -> Result<i64>;

    /// Sales per day over `from_day..=to_day` (reporting days) and the best sellers, from
    /// rollups: the cost is the days covered, not the orders in them.
    async fn analytics(
        &self,
        scope: &StoreScope,
        from_day: i64,
        to_day: i64,
    ) -> Result<kirana_domain::analytics::Analytics>;

    /// The store's outbox after position `after`, oldest first (for the relay, and tests).
    async fn events(&self, scope: &StoreScope, after: i64, limit: u32) -> Result<Vec<(i64, Event)>>;

    async fn ping(&self) -> Result<()>;

    /// What the shard can serve now, and why not more (see [`ShardReadiness`]).
    async fn readiness(&self) -> (ShardReadiness, Option<String>) {
        match self.ping().await {
            Ok(()) => (ShardReadiness::Ready, None),
            Err(e) => (ShardReadiness::Down, Some(e.to_string())),
        }
    }

    /// Whether this shard still holds `store` for writing: `Some(true)` yes, `Some(false)` its
    /// row here is a moved store's tombstone (or a frozen source), `None` no row here. Shard
    /// infrastructure (event readers) asks this, not request handlers. Embedded shards never
    /// move stores.
    async fn holds(&self, store: StoreId) -> Result<Option<bool>> {
        let _ = store;
        Ok(Some(true))
    }

    /// Pools and replicas, for metrics and `kirana doctor` (nothing for an embedded shard).
    fn health(&self) -> ShardHealth {
        ShardHealth::default()
    }
}
