//! [`PgShard`]: one PostgreSQL shard — a primary and its replicas — behind the [`Shard`],
//! [`ShardLog`] and [`Webhooks`] traits, exactly as the SQLite shard answers them.
//!
//! Each method unwraps the scope, picks a server, and calls the concern's free function:
//! - writes open a transaction on the primary whose first statement is the store's write fence
//!   ([`stores::fence`]), commit, and, inside a request, record the primary's WAL position as
//!   the caller's write token;
//! - reads go where the request's [`Consistency`] allows: the primary for strong reads (and
//!   outside any request), else a replica in rotation that has replayed the caller's token, else
//!   the primary. A read that fails on a replica is retried once on the primary and the replica
//!   leaves rotation until the prober sees it healthy;
//! - the event log and the webhook worker's queue always use the primary.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Object;
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

use super::{carts, catalog, checkout, coupons, extras, log, orders, payments, pg, stores, webhooks};
use crate::Result;
use crate::consistency::{self, Consistency, WriteToken};
use crate::error::StorageError;
use crate::log::{Applied, DeadLetter, Logged, OutboxStats, Outgoing, ShardLog};
use crate::payments::{NewRefund, NewsApplied, PaymentNews};
use crate::postgres::pool::{PgPool, PoolStatus};
use crate::postgres::replicas::{ReplicaReport, ReplicaSet, ReplicaSettings};
use crate::scope::{ShardId, StoreScope};
use crate::shard::{
    DashboardStats, IdempotencyKey, MediaRecord, PoolGauge, ProductFilter, Shard, ShardHealth, StoreRow,
};
use crate::webhooks::{
    AttemptRecord, CreatedEndpoint, Delivery, DeliveryKey, DueDelivery, Endpoint, EndpointId, NewEndpoint, Recorded,
    Webhooks,
};
use kirana_domain::payment::{Balance, FeePlans, LedgerEntry, Payment, Payout, Refund};
use kirana_domain::{PaymentId, RefundId};

use kirana_resilience::RetryBudget;

/// Called with a store that a write found moved away: the node's directory cache drops it.
pub type OnMoved = Arc<dyn Fn(StoreId) + Send + Sync>;

pub struct PgShard {
    id: ShardId,
    primary: PgPool,
    /// A small pool of its own on the primary for background work (event consumers, trimming,
    /// notifications, webhook deliveries): a bulkhead, so a pipeline catching up on a backlog
    /// cannot take the connections checkout needs.
    background: PgPool,
    replicas: ReplicaSet,
    /// Reads a replica failed that may be retried on the primary.
    retries: RetryBudget,
    gaps: log::Gaps,
    on_moved: std::sync::RwLock<Option<OnMoved>>,
}

/// Where a read runs.
enum Reader {
    Primary(Object),
    Replica(u32, Object),
}

/// Runs `$body` (an expression over the client `$c`) where the request's consistency allows,
/// and once more on the primary if a replica failed it or did not answer within the read
/// deadline ([`ReplicaSettings::read_deadline`]).
macro_rules! read {
    ($self:ident, |$c:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let (out, role) = match $self.reader().await? {
            Reader::Primary(conn) => (on_primary!($self, conn, |$c| $body), "primary"),
            Reader::Replica(index, conn) => 'read: {
                $self.retries.attempt();
                let deadline = $self.replicas.settings().read_deadline;
                let first = {
                    let $c = &conn;
                    tokio::time::timeout(deadline, $body).await
                };
                let error = match first {
                    Ok(Err(StorageError::Unavailable(e))) => e,
                    Ok(other) => break 'read (other, "replica"),
                    Err(_) => {
                        // Detached from the pool, not returned to it: the abandoned query's
                        // answer may still be on its way, and the next reader would wait for it.
                        drop(Object::take(conn));
                        format!("shard {} replica {index}: no answer within the read deadline {deadline:?}", $self.id.0)
                    }
                };
                $self.replicas.failed(index, &error);
                // When replicas fail together, retrying every read on the primary would add
                // their whole load to it at once: past the budget the caller gets the error.
                if !$self.retries.retry() {
                    break 'read (Err(StorageError::Unavailable(error)), "replica");
                }
                let conn = $self.primary.get().await?;
                (on_primary!($self, conn, |$c| $body), "primary")
            }
        };
        $self.record_latency(role, "read", started);
        out
    }};
}

/// Runs `$body` over the primary's connection `$conn` within the primary's operation deadline;
/// past it, the connection is discarded and the caller gets `Unavailable`.
macro_rules! on_primary {
    ($self:ident, $conn:ident, |$c:ident| $body:expr) => {{
        let deadline = $self.primary.operation_deadline();
        let outcome = {
            let $c = &$conn;
            tokio::time::timeout(deadline, $body).await
        };
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // Its answer may still come; the next user of the connection would wait for it.
                drop(Object::take($conn));
                Err(StorageError::Unavailable(format!("{}: no answer within {deadline:?}", $self.primary.role())))
            }
        }
    }};
}

/// Runs `$body` (an expression over the client `$c`) on a connection of the background pool,
/// within that pool's operation deadline: no worker waits for ever on a server that stopped
/// answering.
macro_rules! on_background {
    ($self:ident, |$c:ident| $body:expr) => {{
        let conn = $self.background.get().await?;
        let deadline = $self.background.operation_deadline();
        let outcome = {
            let $c = &conn;
            tokio::time::timeout(deadline, $body).await
        };
        match outcome {
            Ok(result) => result,
            Err(_) => {
                drop(Object::take(conn));
                Err(StorageError::Unavailable(format!("{}: no answer within {deadline:?}", $self.background.role())))
            }
        }
    }};
}

/// Runs `$body` in a transaction `$t` on the primary: the store's fence first (unless `$store`
/// is `None`, for a store row that does not exist yet), commit if `$body` succeeded, then the
/// write token.
///
/// The whole transaction runs within the primary's operation deadline. Past it the caller gets
/// `Unavailable` without knowing whether the commit landed (it may have been on its way): that
/// is what idempotency keys are for, and why a retried checkout finds its first attempt's order.
macro_rules! write {
    ($self:ident, $store:expr, |$t:ident| $body:expr) => {
        write!($self, on primary, $store, |$t| $body)
    };
    // A write no public read shows (a cart: carts are only ever read on the primary): it earns
    // the caller no write token, so the caller's next storefront pages still come from the cache.
    ($self:ident, untracked, $store:expr, |$t:ident| $body:expr) => {{
        let _untracked = consistency::untracked();
        write!($self, on primary, $store, |$t| $body)
    }};
    // `on background`: the event pipeline's and webhook worker's pool (see `PgShard::background`).
    ($self:ident, on $pool:ident, $store:expr, |$t:ident| $body:expr) => {{
        let started = std::time::Instant::now();
        let mut conn = $self.$pool.get().await?;
        let deadline = $self.$pool.operation_deadline();
        let outcome = tokio::time::timeout(deadline, async {
            let $t = conn.transaction().await.map_err(pg)?;
            if let Some(store) = $store {
                if let Err(e) = stores::fence(&$t, store).await {
                    if let StorageError::Moved { store, .. } = &e {
                        $self.moved(*store);
                    }
                    return Err(e);
                }
            }
            let out = $body.await?;
            $t.commit().await.map_err(pg)?;
            $self.token(&conn).await;
            Ok::<_, StorageError>(out)
        })
        .await;
        let out = match outcome {
            Ok(result) => {
                if result.as_ref().is_err_and(crate::postgres::pool::from_a_standby) {
                    // The server behind this connection is a standby now (a failover demoted
                    // it): never reuse it; the next connection finds the new primary among the
                    // URL's hosts (`target_session_attrs=read-write`).
                    drop(Object::take(conn));
                }
                result
            }
            Err(_) => {
                // Its answer may still come; the next user of the connection would wait for it.
                drop(Object::take(conn));
                Err(StorageError::Unavailable(format!("{}: no answer within {deadline:?}", $self.$pool.role())))
            }
        };
        let background = stringify!($pool) == "background";
        $self.record_latency(
            if background { "background" } else { "primary" },
            if background { "background_write" } else { "write" },
            started,
        );
        out
    }};
}

impl PgShard {
    /// A shard over its primary's pool and its replicas' pools (in the configured order).
    pub fn new(
        id: ShardId,
        primary: PgPool,
        background: PgPool,
        replicas: Vec<PgPool>,
        settings: ReplicaSettings,
    ) -> PgShard {
        PgShard {
            id,
            primary,
            background,
            replicas: ReplicaSet::new(id, replicas, settings),
            retries: RetryBudget::standard("replica_read"),
            gaps: log::Gaps::default(),
            on_moved: std::sync::RwLock::new(None),
        }
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// The background work's pool on the primary.
    pub fn background(&self) -> &PgPool {
        &self.background
    }

    /// Tells the node's directory cache about stores found moved away.
    pub fn set_on_moved(&self, f: OnMoved) {
        *self.on_moved.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Probes the replicas every `probe_every` until `shutdown` says so (no-op without
    /// replicas).
    pub async fn run_prober(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        if !self.replicas.is_empty() {
            self.replicas.run_prober(&self.primary, shutdown).await;
        }
    }

    /// Probes every replica once, now (tests and `kirana doctor`).
    pub async fn probe_now(&self) {
        self.replicas.probe_all(&self.primary).await;
    }

    /// Each replica's last probe and place in rotation.
    pub fn replica_report(&self) -> Vec<ReplicaReport> {
        self.replicas.report()
    }

    /// Replica-level reads the primary served because no replica qualified.
    pub fn fallback_reads(&self) -> u64 {
        self.replicas.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pools' occupancy: the primary's, then each replica's.
    pub fn pool_status(&self) -> (PoolStatus, Vec<PoolStatus>) {
        (self.primary.status(), self.replicas.pool_status())
    }

    pub fn replica_settings(&self) -> ReplicaSettings {
        self.replicas.settings()
    }

    /// `kirana_db_seconds{db="s<shard>",role,op}`: the histogram the SQLite backend records too;
    /// `role` is where the answer came from (`primary`, `replica`, or the `background` pool).
    fn record_latency(&self, role: &'static str, op: &'static str, started: std::time::Instant) {
        metrics::histogram!("kirana_db_seconds", "db" => format!("s{}", self.id.0), "role" => role, "op" => op)
            .record(started.elapsed().as_secs_f64());
    }

    fn moved(&self, store: StoreId) {
        if let Some(f) = &*self.on_moved.read().unwrap_or_else(|p| p.into_inner()) {
            f(store);
        }
    }

    async fn reader(&self) -> Result<Reader> {
        let after = match consistency::current() {
            Consistency::Strong => return Ok(Reader::Primary(self.primary.get().await?)),
            Consistency::Replica { after: None } => None,
            Consistency::Replica { after: Some(t) } if t.shard == self.id => Some(t.lsn),
            // A token from another shard: the store moved since the caller's write (or the
            // token is not ours); only the primary is sure to have it.
            Consistency::Replica { after: Some(_) } => return Ok(Reader::Primary(self.primary.get().await?)),
        };
        match self.replicas.pick(after).await {
            Some((index, conn)) => Ok(Reader::Replica(index, conn)),
            None => Ok(Reader::Primary(self.primary.get().await?)),
        }
    }

    /// After a commit, inside a request: the caller's token. Also on a shard without replicas:
    /// the token is what tells the read cache to show the caller its own write rather than a
    /// cached copy (and the shard may get replicas later). A failure only costs the caller
    /// read-your-writes on a replica (its later reads use the primary).
    async fn token(&self, conn: &Object) {
        if !consistency::wants_token() {
            return;
        }
        match conn.query_one("SELECT pg_current_wal_lsn()", &[]).await {
            Ok(row) => {
                let lsn: tokio_postgres::types::PgLsn = row.get(0);
                consistency::record_write(WriteToken { shard: self.id, lsn: u64::from(lsn) });
            }
            Err(e) => tracing::warn!(shard = self.id.0, error = %e, "could not read the write position"),
        }
    }
}

#[async_trait]
impl Shard for PgShard {
    async fn insert_store(
        &self,
        id: StoreId,
        owner: MerchantId,
        name: &str,
        settings: &StoreSettings,
        now: Timestamp,
    ) -> Result<StoreRow> {
        write!(self, None, |t| stores::insert(&t, id, owner, name, settings, now))
    }

    async fn discard_store(&self, id: StoreId) -> Result<()> {
        write!(self, None, |t| stores::discard(&t, id))
    }

    async fn store(&self, scope: &StoreScope) -> Result<StoreRow> {
        read!(self, |c| stores::get(c, scope.store_id()))
    }

    async fn stores(&self, scopes: &[StoreScope]) -> Result<Vec<StoreRow>> {
        let ids: Vec<StoreId> = scopes.iter().map(|s| s.store_id()).collect();
        read!(self, |c| stores::get_many(c, &ids))
    }

    async fn update_store(&self, scope: &StoreScope, change: &StoreChange, now: Timestamp) -> Result<StoreRow> {
        let s = scope.store_id();
        write!(self, Some(s), |t| stores::update(&t, s, change, now))
    }

    async fn create_category(&self, scope: &StoreScope, change: CategoryChange, now: Timestamp) -> Result<Category> {
        let s = scope.store_id();
        write!(self, Some(s), |t| catalog::create_category(&t, s, change, now))
    }

    async fn categories(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Category>> {
        read!(self, |c| catalog::categories(c, scope.store_id(), page))
    }

    async fn category(&self, scope: &StoreScope, id: CategoryId) -> Result<Category> {
        read!(self, |c| catalog::category(c, scope.store_id(), id))
    }

    async fn update_category(
        &self,
        scope: &StoreScope,
        id: CategoryId,
        change: CategoryChange,
        now: Timestamp,
    ) -> Result<Category> {
        let s = scope.store_id();
        write!(self, Some(s), |t| catalog::update_category(&t, s, id, change, now))
    }

    async fn delete_category(&self, scope: &StoreScope, id: CategoryId, now: Timestamp) -> Result<()> {
        let s = scope.store_id();
        write!(self, Some(s), |t| catalog::delete_category(&t, s, id, now))
    }

    async fn create_product(&self, scope: &StoreScope, change: ProductChange, now: Timestamp) -> Result<Product> {
        let s = scope.store_id();
        write!(self, Some(s), |t| catalog::create_product(&t, s, change, now))
    }

    async fn products(&self, scope: &StoreScope, filter: ProductFilter, page: PageRequest) -> Result<Page<Product>> {
        read!(self, |c| catalog::products(c, scope.store_id(), &filter, page))
    }

    async fn product(&self, scope: &StoreScope, id: ProductId) -> Result<Product> {
        read!(self, |c| catalog::product(c, scope.store_id(), id))
    }

    async fn products_by_ids(&self, scope: &StoreScope, ids: &[ProductId]) -> Result<Vec<Product>> {
        read!(self, |c| catalog::products_by_ids(c, scope.store_id(), ids))
    }

    async fn update_product(
        &self,
        scope: &StoreScope,
        id: ProductId,
        change: ProductChange,
        now: Timestamp,
    ) -> Result<Product> {
        let s = scope.store_id();
        write!(self, Some(s), |t| catalog::update_product(&t, s, id, change, now))
    }

    async fn delete_product(&self, scope: &StoreScope, id: ProductId, now: Timestamp) -> Result<()> {
        let s = scope.store_id();
        write!(self, Some(s), |t| catalog::delete_product(&t, s, id, now))
    }

    async fn create_cart(&self, scope: &StoreScope, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
        let s = scope.store_id();
        write!(self, untracked, Some(s), |t| carts::create(&t, s, token_hash, now))
    }

    async fn cart(&self, scope: &StoreScope, id: CartId, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
        // A cart is read to be written next (items, checkout): always the primary.
        let c = self.primary.get().await?;
        carts::get(&c, scope.store_id(), id, token_hash, now).await
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
        write!(self, untracked, Some(s), |t| carts::set_item(&t, s, id, token_hash, variant, quantity, now))
    }

    async fn checkout(
        &self,
        scope: &StoreScope,
        id: CartId,
        token_hash: [u8; 32],
        req: Checkout,
        idempotency: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Result<(Order, bool)> {
        let s = scope.store_id();
        write!(self, Some(s), |t| checkout::checkout(&t, s, id, token_hash, &req, idempotency.as_ref(), now))
    }

    async fn orders(&self, scope: &StoreScope, status: Option<OrderStatus>, page: PageRequest) -> Result<Page<Order>> {
        read!(self, |c| orders::list(c, scope.store_id(), status, page))
    }

    async fn order(&self, scope: &StoreScope, id: OrderId) -> Result<Order> {
        read!(self, |c| orders::get(c, scope.store_id(), id))
    }

    async fn order_for_shopper(&self, scope: &StoreScope, id: OrderId, token_hash: [u8; 32]) -> Result<Order> {
        read!(self, |c| orders::get_for_shopper(c, scope.store_id(), id, token_hash))
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
        let s = scope.store_id();
        write!(self, Some(s), |t| orders::transition(&t, s, id, &request, &actor, fees, now))
    }

    async fn customers(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Customer>> {
        read!(self, |c| orders::customers(c, scope.store_id(), page))
    }

    async fn customer(&self, scope: &StoreScope, id: CustomerId) -> Result<Customer> {
        read!(self, |c| orders::customer(c, scope.store_id(), id))
    }

    async fn create_coupon(&self, scope: &StoreScope, change: CouponChange, now: Timestamp) -> Result<Coupon> {
        let s = scope.store_id();
        write!(self, Some(s), |t| coupons::create(&t, s, change, now))
    }

    async fn coupons(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Coupon>> {
        read!(self, |c| coupons::list(c, scope.store_id(), page))
    }

    async fn coupon(&self, scope: &StoreScope, id: CouponId) -> Result<Coupon> {
        read!(self, |c| coupons::get(c, scope.store_id(), id))
    }

    async fn update_coupon(
        &self,
        scope: &StoreScope,
        id: CouponId,
        change: CouponChange,
        now: Timestamp,
    ) -> Result<Coupon> {
        let s = scope.store_id();
        write!(self, Some(s), |t| coupons::update(&t, s, id, change, now))
    }

    async fn theme_templates(&self, scope: &StoreScope) -> Result<Vec<(String, String)>> {
        read!(self, |c| extras::theme_templates(c, scope.store_id()))
    }

    async fn set_theme_template(
        &self,
        scope: &StoreScope,
        name: &str,
        source: Option<String>,
        now: Timestamp,
    ) -> Result<()> {
        let s = scope.store_id();
        write!(self, Some(s), |t| extras::set_theme_template(&t, s, name, source.as_deref(), now))
    }

    async fn dashboard_stats(&self, scope: &StoreScope, since: Timestamp) -> Result<DashboardStats> {
        read!(self, |c| extras::dashboard_stats(c, scope.store_id(), since))
    }

    async fn record_media(&self, scope: &StoreScope, media: MediaRecord, now: Timestamp) -> Result<MediaRecord> {
        let s = scope.store_id();
        write!(self, Some(s), |t| extras::record_media(&t, s, media, now))
    }

    async fn media_usage(&self, scope: &StoreScope) -> Result<(i64, i64)> {
        read!(self, |c| extras::media_usage(c, scope.store_id()))
    }

    fn log(&self) -> &dyn ShardLog {
        self
    }

    fn webhooks(&self) -> &dyn Webhooks {
        self
    }

    fn payments(&self) -> &dyn crate::payments::Payments {
        self
    }

    async fn cache_version(&self, scope: &StoreScope) -> Result<i64> {
        read!(self, |c| extras::cache_version(c, scope.store_id()))
    }

    async fn analytics(&self, scope: &StoreScope, from_day: i64, to_day: i64) -> Result<Analytics> {
        read!(self, |c| extras::analytics(c, scope.store_id(), from_day, to_day))
    }

    async fn events(&self, scope: &StoreScope, after: i64, limit: u32) -> Result<Vec<(i64, Event)>> {
        let c = self.primary.get().await?;
        extras::events(&c, scope.store_id(), after, limit).await
    }

    async fn ping(&self) -> Result<()> {
        let c = self.primary.get().await?;
        c.simple_query("SELECT 1").await.map_err(pg)?;
        Ok(())
    }

    async fn readiness(&self) -> (crate::shard::ShardReadiness, Option<String>) {
        use crate::shard::ShardReadiness;
        let ping = tokio::time::timeout(self.replicas.settings().probe_timeout, self.ping()).await;
        let error = match ping {
            Ok(Ok(())) => return (ShardReadiness::Ready, None),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                format!("shard {} primary: no answer within {:?}", self.id.0, self.replicas.settings().probe_timeout)
            }
        };
        if self.replicas.primary_down() && self.replicas.any_serving() {
            (ShardReadiness::ReadOnly, Some(error))
        } else {
            (ShardReadiness::Down, Some(error))
        }
    }

    async fn holds(&self, store: StoreId) -> Result<Option<bool>> {
        let c = self.primary.get().await?;
        let row = c
            .query_opt("SELECT moved_to IS NULL FROM stores WHERE store_id = $1", &[&store.uuid()])
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn health(&self) -> ShardHealth {
        let (primary, replicas) = self.pool_status();
        let gauge = |role: String, p: PoolStatus| PoolGauge {
            role,
            size: p.size,
            idle: p.available,
            waiting: p.waiting,
            max_size: p.max_size,
        };
        let mut pools = vec![gauge("primary".into(), primary), gauge("background".into(), self.background.status())];
        pools.extend(replicas.into_iter().enumerate().map(|(i, p)| gauge(format!("replica-{i}"), p)));
        ShardHealth { pools, replicas: self.replica_report(), fallback_reads: self.fallback_reads() }
    }
}

#[async_trait]
impl ShardLog for PgShard {
    fn shard_id(&self) -> ShardId {
        self.id
    }

    /// Only up to the commit-order safe point: see [`log::Gaps`].
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Logged>> {
        let (rows, snapshot) = on_background!(self, |c| log::outbox_window(c, after, limit))?;
        Ok(self.gaps.safe_prefix(after, rows, snapshot))
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        on_background!(self, |c| log::outbox_stats(c))
    }

    async fn outbox_backlog(&self, after: i64) -> Result<OutboxStats> {
        on_background!(self, |c| log::outbox_backlog(c, after))
    }

    async fn trim_outbox(&self, upto: i64) -> Result<u64> {
        on_background!(self, |c| log::trim_outbox(c, upto))
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, i64)>> {
        on_background!(self, |c| log::positions(c, consumer))
    }

    async fn all_positions(&self) -> Result<Vec<(String, u32, i64, Timestamp)>> {
        on_background!(self, |c| log::all_positions(c))
    }

    async fn apply(
        &self,
        consumer: &str,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32> {
        // Effects are store data like any other write, so they pass each store's write fence: once
        // a move froze a store here, its effects belong on the target (where its events are
        // applied after the flip), and applying them here too would count them twice; while a
        // move is still copying a store here, its effects belong on the source (the copy would
        // overwrite them). A store with no row here at all was routed here by a stale directory
        // (or its row is being replaced by a move's replay): nothing is written for it.
        let touched: std::collections::BTreeSet<StoreId> =
            batch.iter().filter(|a| !a.effects.is_empty()).map(|a| a.event.store_id).collect();
        write!(self, on background, None::<StoreId>, |t| async {
            for store in &touched {
                match stores::fence(&t, *store).await {
                    Ok(()) => {}
                    Err(StorageError::NotFound) => {
                        self.moved(*store);
                        return Err(StorageError::Unavailable(format!(
                            "store {store} has no row on shard {} (it is moving or moved); its events wait",
                            self.id.0
                        )));
                    }
                    Err(e) => {
                        if let StorageError::Moved { store, .. } = &e {
                            self.moved(*store);
                        }
                        return Err(e);
                    }
                }
            }
            log::apply(&t, consumer, &batch, &positions, now).await
        })
    }

    async fn applied_times(&self, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>> {
        on_background!(self, |c| log::applied_times(c, consumer, limit))
    }

    async fn park(
        &self,
        consumer: &str,
        partition: u32,
        logged: &Logged,
        error: &str,
        attempts: u32,
        now: Timestamp,
    ) -> Result<()> {
        write!(self, on background, None::<StoreId>, |t| log::park(&t, consumer, partition, logged, error, attempts, now))
    }

    async fn dead_letters(&self, include_replayed: bool, limit: u32) -> Result<Vec<DeadLetter>> {
        on_background!(self, |c| log::dead_letters(c, self.id.0, include_replayed, limit))
    }

    async fn dead_letter(&self, id: i64) -> Result<DeadLetter> {
        on_background!(self, |c| log::dead_letter(c, self.id.0, id))
    }

    async fn mark_replayed(&self, id: i64, now: Timestamp) -> Result<()> {
        on_background!(self, |c| log::mark_replayed(c, id, now))
    }

    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>> {
        on_background!(self, |c| log::due_notifications(c, now, limit))
    }

    async fn claim_notification(
        &self,
        store: StoreId,
        event: EventId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool> {
        write!(self, on background, Some(store), |t| log::claim_notification(&t, store, event, now, until))
    }

    async fn notification_done(
        &self,
        store: StoreId,
        event: EventId,
        outcome: std::result::Result<(), (String, Option<Timestamp>)>,
        now: Timestamp,
    ) -> Result<()> {
        write!(self, on background, Some(store), |t| log::notification_done(&t, store, event, outcome, now))
    }
}

#[async_trait]
impl Webhooks for PgShard {
    async fn create_webhook(&self, scope: &StoreScope, new: NewEndpoint, now: Timestamp) -> Result<CreatedEndpoint> {
        let s = scope.store_id();
        write!(self, Some(s), |t| webhooks::create(&t, s, &new, now))
    }

    async fn list_webhooks(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Endpoint>> {
        read!(self, |c| webhooks::list(c, scope.store_id(), page))
    }

    async fn get_webhook(&self, scope: &StoreScope, id: EndpointId) -> Result<Endpoint> {
        read!(self, |c| webhooks::get(c, scope.store_id(), id))
    }

    async fn delete_webhook(&self, scope: &StoreScope, id: EndpointId) -> Result<()> {
        let s = scope.store_id();
        write!(self, Some(s), |t| webhooks::delete(&t, s, id))
    }

    async fn webhook_deliveries(
        &self,
        scope: &StoreScope,
        id: EndpointId,
        page: PageRequest,
    ) -> Result<Page<Delivery>> {
        read!(self, |c| webhooks::deliveries(c, scope.store_id(), id, page))
    }

    async fn due_webhook_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        skip: &[EndpointId],
    ) -> Result<Vec<DueDelivery>> {
        on_background!(self, |c| webhooks::due(c, now, limit, skip))
    }

    async fn claim_webhook_deliveries(
        &self,
        keys: Vec<DeliveryKey>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryKey>> {
        // A store leaving or arriving (a move's freeze, or its copy not yet live) is not claimed
        // here: its deliveries are sent from the shard it lives on, where the move takes them
        // (a claim made before the freeze moves with them, so they are not sent twice).
        write!(self, on background, None::<StoreId>, |t| async {
            let stores: std::collections::BTreeSet<StoreId> = keys.iter().map(|k| k.store_id).collect();
            let mut live = std::collections::HashSet::new();
            for store in stores {
                if stores::fence(&t, store).await.is_ok() {
                    live.insert(store);
                }
            }
            let keys: Vec<DeliveryKey> = keys.iter().filter(|k| live.contains(&k.store_id)).copied().collect();
            webhooks::claim(&t, &keys, now, until).await
        })
    }

    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<Recorded> {
        // Recorded where the store lives: `Moved` sends the caller to its new shard.
        let store = record.key.store_id;
        write!(self, on background, Some(store), |t| webhooks::record(&t, &record))
    }
}

#[async_trait]
impl crate::payments::Payments for PgShard {
    async fn payment_for_order(&self, scope: &StoreScope, order: OrderId) -> Result<Payment> {
        read!(self, |c| payments::for_order(c, scope.store_id(), order))
    }

    async fn payment(&self, scope: &StoreScope, id: PaymentId) -> Result<Payment> {
        read!(self, |c| payments::get(c, scope.store_id(), id))
    }

    async fn attach_provider(
        &self,
        scope: &StoreScope,
        id: PaymentId,
        provider: &str,
        provider_ref: &str,
        checkout_url: &str,
        now: Timestamp,
    ) -> Result<Payment> {
        let s = scope.store_id();
        write!(self, Some(s), |t| payments::attach(&t, s, id, provider, provider_ref, checkout_url, now))
    }

    async fn apply_payment_news(
        &self,
        scope: &StoreScope,
        id: PaymentId,
        news: PaymentNews,
        fees: &FeePlans,
        now: Timestamp,
    ) -> Result<NewsApplied> {
        let s = scope.store_id();
        write!(self, Some(s), |t| payments::apply_news(&t, s, id, &news, fees, now))
    }

    async fn begin_refund(&self, scope: &StoreScope, refund: NewRefund, now: Timestamp) -> Result<Refund> {
        let s = scope.store_id();
        write!(self, Some(s), |t| payments::begin_refund(&t, s, &refund, now))
    }

    async fn finish_refund(
        &self,
        scope: &StoreScope,
        id: RefundId,
        outcome: std::result::Result<String, String>,
        now: Timestamp,
    ) -> Result<Refund> {
        let s = scope.store_id();
        write!(self, Some(s), |t| payments::finish_refund(&t, s, id, &outcome, now))
    }

    async fn refunds(&self, scope: &StoreScope, order: OrderId) -> Result<Vec<Refund>> {
        read!(self, |c| payments::refunds(c, scope.store_id(), order))
    }

    async fn set_plan(&self, scope: &StoreScope, plan: Option<&str>, now: Timestamp) -> Result<()> {
        let s = scope.store_id();
        write!(self, Some(s), |t| payments::set_plan(&t, s, plan, now))
    }

    async fn plan(&self, scope: &StoreScope) -> Result<Option<String>> {
        read!(self, |c| payments::plan(c, scope.store_id()))
    }

    async fn balance(&self, scope: &StoreScope) -> Result<Balance> {
        read!(self, |c| payments::balance(c, scope.store_id()))
    }

    async fn ledger(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<LedgerEntry>> {
        read!(self, |c| payments::ledger(c, scope.store_id(), page))
    }

    async fn payouts(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Payout>> {
        read!(self, |c| payments::payouts(c, scope.store_id(), page))
    }

    async fn pay_out(&self, scope: &StoreScope, slot: Timestamp, now: Timestamp) -> Result<Option<Payout>> {
        let s = scope.store_id();
        write!(self, on background, Some(s), |t| payments::pay_out(&t, s, slot, now))
    }

    async fn open_payments(&self, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Payment)>> {
        on_background!(self, |c| payments::open_payments(c, before, limit))
    }

    async fn pending_refunds(&self, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Refund)>> {
        on_background!(self, |c| payments::pending_refunds(c, before, limit))
    }

    async fn stores_with_unpaid_lines(&self, after: Option<StoreId>, limit: u32) -> Result<Vec<StoreId>> {
        on_background!(self, |c| payments::stores_with_unpaid_lines(c, after, limit))
    }
}
