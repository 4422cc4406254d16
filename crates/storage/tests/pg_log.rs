//! The PostgreSQL shard's event log and the rest of a store's data
//! (`postgres::shard::{log, extras}`), checked against SQLite as `pg_orders.rs` does: one
//! scenario runs on both backends (SQLite through its public `Shard` and `ShardLog`, PostgreSQL
//! through the free functions, a transaction per write, in a database of its own on the shared
//! server at 127.0.0.1:5432, dropped at the end), and the two transcripts must be equal once
//! generated ids are replaced by their order of appearance.

#[macro_use]
mod pg_db;

use std::collections::HashMap;

use async_trait::async_trait;
use kirana_domain::analytics::{Analytics, day_of, hour_of};
use kirana_domain::cart::{Checkout, CheckoutCustomer, Quantity};
use kirana_domain::catalog::{NewVariant, Product, ProductChange};
use kirana_domain::event::Event;
use kirana_domain::order::{Address, Order, PaymentMethod};
use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{Amount, EventId, MerchantId, StoreId, Timestamp};
use kirana_storage::postgres::pool::PgPool;
use kirana_storage::postgres::shard::{carts, catalog, checkout, extras, log, stores};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::webhooks::NewEndpoint;
use kirana_storage::{
    Applied, DashboardStats, DeadLetter, Effect, Logged, MediaRecord, OutboxStats, Outgoing, ProductSale, Storage,
    StorageError, StoreScope,
};
use pg_db::{at, normalise, pg_shard, record, record_dbg};
use serde_json::{Value, json};

fn settings() -> StoreSettings {
    StoreSettings { cod_enabled: true, online_payment_enabled: false, ..StoreSettings::default() }
}

/// A queued webhook delivery, as the test compares it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Queued {
    url: String,
    event_type: String,
    payload: Value,
    attempts: u32,
    created_at: i64,
}

// ---------------------------------------------------------------------------------------------
// The scenario, once per backend

#[async_trait]
trait Backend: Sync {
    // Setup, through what is already ported.
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Product;
    async fn place_order(&self, token: [u8; 32], items: &[(Product, i64)], now: Timestamp) -> Order;
    async fn create_webhook(&self, url: &str, types: &[&str], now: Timestamp);
    async fn webhook_deliveries(&self, now: Timestamp) -> Vec<Queued>;

    // The log.
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Logged>, StorageError>;
    async fn outbox_stats(&self) -> Result<OutboxStats, StorageError>;
    async fn trim_outbox(&self, upto: i64) -> Result<u64, StorageError>;
    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, i64)>, StorageError>;
    async fn all_positions(&self) -> Result<Vec<(String, u32, i64, Timestamp)>, StorageError>;
    async fn apply(
        &self,
        consumer: &str,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32, StorageError>;
    async fn applied_times(&self, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>, StorageError>;
    async fn park(
        &self,
        consumer: &str,
        partition: u32,
        logged: &Logged,
        error: &str,
        attempts: u32,
        now: Timestamp,
    ) -> Result<(), StorageError>;
    async fn dead_letters(&self, include_replayed: bool, limit: u32) -> Result<Vec<DeadLetter>, StorageError>;
    async fn dead_letter(&self, id: i64) -> Result<DeadLetter, StorageError>;
    async fn mark_replayed(&self, id: i64, now: Timestamp) -> Result<(), StorageError>;
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>, StorageError>;
    async fn notification_done(
        &self,
        event: EventId,
        outcome: Result<(), (String, Option<Timestamp>)>,
        now: Timestamp,
    ) -> Result<(), StorageError>;

    // The rest.
    async fn theme_templates(&self) -> Result<Vec<(String, String)>, StorageError>;
    async fn set_theme_template(&self, name: &str, source: Option<&str>, now: Timestamp) -> Result<(), StorageError>;
    async fn record_media(&self, media: MediaRecord, now: Timestamp) -> Result<MediaRecord, StorageError>;
    async fn media_usage(&self) -> Result<(i64, i64), StorageError>;
    async fn dashboard_stats(&self, since: Timestamp) -> Result<DashboardStats, StorageError>;
    async fn cache_version(&self) -> Result<i64, StorageError>;
    async fn analytics(&self, from_day: i64, to_day: i64) -> Result<Analytics, StorageError>;
    async fn events(&self, after: i64, limit: u32) -> Result<Vec<(i64, Event)>, StorageError>;
}

fn buyer(name: &str, phone: &str) -> Checkout {
    Checkout {
        customer: CheckoutCustomer {
            name: name.into(),
            phone: kirana_domain::Phone::parse(phone).unwrap(),
            email: None,
        },
        address: Address {
            line1: "12 MG Road".into(),
            line2: None,
            landmark: None,
            city: "Bengaluru".into(),
            state: Some("KA".into()),
            postal_code: "560001".into(),
            country: "IN".into(),
        },
        payment_method: PaymentMethod::Cod,
        coupon_code: None,
        note: None,
    }
}

fn endpoint(url: &str, types: &[&str]) -> NewEndpoint {
    NewEndpoint::parse(url, &types.iter().map(|t| t.to_string()).collect::<Vec<_>>()).unwrap()
}

struct OnSqlite {
    storage: Storage,
    scope: StoreScope,
}

impl OnSqlite {
    fn shard(&self) -> &dyn kirana_storage::Shard {
        self.storage.shard(&self.scope)
    }
    fn log(&self) -> &dyn kirana_storage::ShardLog {
        self.shard().log()
    }
}

#[async_trait]
impl Backend for OnSqlite {
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Product {
        self.shard().create_product(&self.scope, change, now).await.unwrap()
    }
    async fn place_order(&self, token: [u8; 32], items: &[(Product, i64)], now: Timestamp) -> Order {
        let s = self.shard();
        let cart = s.create_cart(&self.scope, token, now).await.unwrap().id;
        for (p, n) in items {
            s.set_cart_item(&self.scope, cart, token, p.variants[0].id, Quantity::parse(*n).unwrap(), now)
                .await
                .unwrap();
        }
        s.checkout(&self.scope, cart, token, buyer("Asha", "+919876543210"), None, now).await.unwrap().0
    }
    async fn create_webhook(&self, url: &str, types: &[&str], now: Timestamp) {
        self.shard().webhooks().create_webhook(&self.scope, endpoint(url, types), now).await.unwrap();
    }
    async fn webhook_deliveries(&self, now: Timestamp) -> Vec<Queued> {
        let due = self.shard().webhooks().due_webhook_deliveries(now, 1000, &[]).await.unwrap();
        let mut out: Vec<Queued> = due
            .into_iter()
            .map(|d| Queued {
                url: d.url,
                event_type: d.event_type,
                payload: serde_json::from_str(&d.payload).unwrap(),
                attempts: d.attempts,
                created_at: d.created_at.millis(),
            })
            .collect();
        sort_queued(&mut out);
        out
    }
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Logged>, StorageError> {
        self.log().outbox_after(after, limit).await
    }
    async fn outbox_stats(&self) -> Result<OutboxStats, StorageError> {
        self.log().outbox_stats().await
    }
    async fn trim_outbox(&self, upto: i64) -> Result<u64, StorageError> {
        self.log().trim_outbox(upto).await
    }
    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, i64)>, StorageError> {
        self.log().positions(consumer).await.map(|mut p| {
            p.sort();
            p
        })
    }
    async fn all_positions(&self) -> Result<Vec<(String, u32, i64, Timestamp)>, StorageError> {
        self.log().all_positions().await
    }
    async fn apply(
        &self,
        consumer: &str,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32, StorageError> {
        self.log().apply(consumer, batch, positions, now).await
    }
    async fn applied_times(&self, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>, StorageError> {
        self.log().applied_times(consumer, limit).await
    }
    async fn park(
        &self,
        consumer: &str,
        partition: u32,
        logged: &Logged,
        error: &str,
        attempts: u32,
        now: Timestamp,
    ) -> Result<(), StorageError> {
        self.log().park(consumer, partition, logged, error, attempts, now).await
    }
    async fn dead_letters(&self, include_replayed: bool, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        self.log().dead_letters(include_replayed, limit).await
    }
    async fn dead_letter(&self, id: i64) -> Result<DeadLetter, StorageError> {
        self.log().dead_letter(id).await
    }
    async fn mark_replayed(&self, id: i64, now: Timestamp) -> Result<(), StorageError> {
        self.log().mark_replayed(id, now).await
    }
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>, StorageError> {
        self.log().due_notifications(now, limit).await
    }
    async fn notification_done(
        &self,
        event: EventId,
        outcome: Result<(), (String, Option<Timestamp>)>,
        now: Timestamp,
    ) -> Result<(), StorageError> {
        self.log().notification_done(self.scope.store_id(), event, outcome, now).await
    }
    async fn theme_templates(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.shard().theme_templates(&self.scope).await
    }
    async fn set_theme_template(&self, name: &str, source: Option<&str>, now: Timestamp) -> Result<(), StorageError> {
        self.shard().set_theme_template(&self.scope, name, source.map(Into::into), now).await
    }
    async fn record_media(&self, media: MediaRecord, now: Timestamp) -> Result<MediaRecord, StorageError> {
        self.shard().record_media(&self.scope, media, now).await
    }
    async fn media_usage(&self) -> Result<(i64, i64), StorageError> {
        self.shard().media_usage(&self.scope).await
    }
    async fn dashboard_stats(&self, since: Timestamp) -> Result<DashboardStats, StorageError> {
        self.shard().dashboard_stats(&self.scope, since).await
    }
    async fn cache_version(&self) -> Result<i64, StorageError> {
        self.shard().cache_version(&self.scope).await
    }
    async fn analytics(&self, from_day: i64, to_day: i64) -> Result<Analytics, StorageError> {
        self.shard().analytics(&self.scope, from_day, to_day).await
    }
    async fn events(&self, after: i64, limit: u32) -> Result<Vec<(i64, Event)>, StorageError> {
        self.shard().events(&self.scope, after, limit).await
    }
}

struct OnPostgres {
    pool: PgPool,
    store: StoreId,
    gaps: log::Gaps,
}

#[async_trait]
impl Backend for OnPostgres {
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Product {
        in_tx!(self.pool, |t| catalog::create_product(&t, self.store, change, now).await).unwrap()
    }
    async fn place_order(&self, token: [u8; 32], items: &[(Product, i64)], now: Timestamp) -> Order {
        let cart = in_tx!(self.pool, |t| carts::create(&t, self.store, token, now).await).unwrap().id;
        for (p, n) in items {
            let q = Quantity::parse(*n).unwrap();
            in_tx!(self.pool, |t| carts::set_item(&t, self.store, cart, token, p.variants[0].id, q, now).await)
                .unwrap();
        }
        let req = buyer("Asha", "+919876543210");
        in_tx!(self.pool, |t| checkout::checkout(&t, self.store, cart, token, &req, None, now).await).unwrap().0
    }
    async fn create_webhook(&self, url: &str, types: &[&str], now: Timestamp) {
        // `postgres::shard::webhooks` is not ported yet: the row SQLite's `create` writes.
        let new = endpoint(url, types);
        let types = serde_json::to_string(new.event_types.as_slice()).unwrap();
        let c = self.pool.get().await.unwrap();
        c.execute(
            "INSERT INTO webhook_endpoints (store_id, endpoint_id, url, secret, event_types, active, created_at, updated_at)
             VALUES ($1, $2, $3, 'secret', $4::TEXT::JSONB, 1, $5, $5)",
            &[&self.store.uuid(), &uuid::Uuid::now_v7(), &new.url.as_str(), &types, &now.millis()],
        )
        .await
        .unwrap();
    }
    async fn webhook_deliveries(&self, now: Timestamp) -> Vec<Queued> {
        let c = self.pool.get().await.unwrap();
        let rows = c
            .query(
                "SELECT e.url, d.event_type, d.payload, d.attempts, d.created_at
                 FROM webhook_deliveries d
                 JOIN webhook_endpoints e ON e.store_id = d.store_id AND e.endpoint_id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND e.active = 1",
                &[&now.millis()],
            )
            .await
            .unwrap();
        let mut out: Vec<Queued> = rows
            .iter()
            .map(|r| Queued {
                url: r.get(0),
                event_type: r.get(1),
                payload: serde_json::from_str(r.get::<_, &str>(2)).unwrap(),
                attempts: r.get::<_, i64>(3) as u32,
                created_at: r.get(4),
            })
            .collect();
        sort_queued(&mut out);
        out
    }
    async fn outbox_after(&self, after: i64, limit: u32) -> Result<Vec<Logged>, StorageError> {
        let (rows, snapshot) = log::outbox_window(&self.pool.get().await.unwrap(), after, limit).await?;
        Ok(self.gaps.safe_prefix(after, rows, snapshot))
    }
    async fn outbox_stats(&self) -> Result<OutboxStats, StorageError> {
        log::outbox_stats(&self.pool.get().await.unwrap()).await
    }
    async fn trim_outbox(&self, upto: i64) -> Result<u64, StorageError> {
        in_tx!(self.pool, |t| log::trim_outbox(&t, upto).await)
    }
    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, i64)>, StorageError> {
        log::positions(&self.pool.get().await.unwrap(), consumer).await
    }
    async fn all_positions(&self) -> Result<Vec<(String, u32, i64, Timestamp)>, StorageError> {
        log::all_positions(&self.pool.get().await.unwrap()).await
    }
    async fn apply(
        &self,
        consumer: &str,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32, StorageError> {
        in_tx!(self.pool, |t| log::apply(&t, consumer, &batch, &positions, now).await)
    }
    async fn applied_times(&self, consumer: &str, limit: u32) -> Result<Vec<(EventId, Timestamp)>, StorageError> {
        log::applied_times(&self.pool.get().await.unwrap(), consumer, limit).await
    }
    async fn park(
        &self,
        consumer: &str,
        partition: u32,
        logged: &Logged,
        error: &str,
        attempts: u32,
        now: Timestamp,
    ) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| log::park(&t, consumer, partition, logged, error, attempts, now).await)
    }
    async fn dead_letters(&self, include_replayed: bool, limit: u32) -> Result<Vec<DeadLetter>, StorageError> {
        log::dead_letters(&self.pool.get().await.unwrap(), 0, include_replayed, limit).await
    }
    async fn dead_letter(&self, id: i64) -> Result<DeadLetter, StorageError> {
        log::dead_letter(&self.pool.get().await.unwrap(), 0, id).await
    }
    async fn mark_replayed(&self, id: i64, now: Timestamp) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| log::mark_replayed(&t, id, now).await)
    }
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>, StorageError> {
        log::due_notifications(&self.pool.get().await.unwrap(), now, limit).await
    }
    async fn notification_done(
        &self,
        event: EventId,
        outcome: Result<(), (String, Option<Timestamp>)>,
        now: Timestamp,
    ) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| log::notification_done(&t, self.store, event, outcome, now).await)
    }
    async fn theme_templates(&self) -> Result<Vec<(String, String)>, StorageError> {
        extras::theme_templates(&self.pool.get().await.unwrap(), self.store).await
    }
    async fn set_theme_template(&self, name: &str, source: Option<&str>, now: Timestamp) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| extras::set_theme_template(&t, self.store, name, source, now).await)
    }
    async fn record_media(&self, media: MediaRecord, now: Timestamp) -> Result<MediaRecord, StorageError> {
        in_tx!(self.pool, |t| extras::record_media(&t, self.store, media, now).await)
    }
    async fn media_usage(&self) -> Result<(i64, i64), StorageError> {
        extras::media_usage(&self.pool.get().await.unwrap(), self.store).await
    }
    async fn dashboard_stats(&self, since: Timestamp) -> Result<DashboardStats, StorageError> {
        extras::dashboard_stats(&self.pool.get().await.unwrap(), self.store, since).await
    }
    async fn cache_version(&self) -> Result<i64, StorageError> {
        extras::cache_version(&self.pool.get().await.unwrap(), self.store).await
    }
    async fn analytics(&self, from_day: i64, to_day: i64) -> Result<Analytics, StorageError> {
        extras::analytics(&self.pool.get().await.unwrap(), self.store, from_day, to_day).await
    }
    async fn events(&self, after: i64, limit: u32) -> Result<Vec<(i64, Event)>, StorageError> {
        extras::events(&self.pool.get().await.unwrap(), self.store, after, limit).await
    }
}

/// Deliveries in a backend-independent order: by endpoint, then by when the event happened.
fn sort_queued(q: &mut [Queued]) {
    q.sort_by_key(|d| (d.url.clone(), d.payload["occurred_at"].to_string(), d.event_type.clone()));
}

fn product(title: &str, price: i64) -> ProductChange {
    ProductChange {
        title: Some(title.into()),
        variants: Some(vec![NewVariant {
            id: None,
            options: vec![],
            sku: None,
            price: Amount::from_stored(price),
            compare_at_price: None,
            stock: None,
        }]),
        ..Default::default()
    }
}

fn logged_json(l: &Logged) -> Value {
    json!({ "seq": l.seq, "event": l.event })
}

/// Everything the consumers' effects changed, as one value.
async fn effects_state(b: &dyn Backend, days: (i64, i64)) -> Value {
    let notes = b.due_notifications(at(100_000), 100).await.map(|n| format!("{n:?}"));
    json!({
        "cache_version": b.cache_version().await.unwrap(),
        "analytics": b.analytics(days.0, days.1).await.unwrap(),
        "notifications": notes.unwrap(),
        "webhooks": b.webhook_deliveries(at(100_000)).await,
    })
}

/// The scenario. Returns its transcript; asserts what must hold on any backend.
async fn scenario(b: &dyn Backend) -> Vec<Value> {
    let mut log = Vec::new();
    let l = &mut log;

    // Endpoints: every type from the start; products only; orders only, from after the first
    // order; and one for everything that comes after the whole log (it must get nothing).
    b.create_webhook("https://all.example/hook", &["*"], at(1)).await;
    b.create_webhook("https://products.example/hook", &["product.created"], at(1)).await;
    let chai = b.create_product(product("Chai", 20_000), at(2)).await;
    let biscuit = b.create_product(product("Biscuit", 1_000), at(3)).await;
    let rice = b.create_product(product("Rice", 9_000), at(4)).await;
    let first = b.place_order([1; 32], &[(chai.clone(), 2), (biscuit.clone(), 3)], at(10)).await;
    b.create_webhook("https://orders.example/hook", &["order.placed"], at(15)).await;
    let second = b.place_order([2; 32], &[(rice.clone(), 1), (biscuit.clone(), 1)], at(20)).await;
    b.create_webhook("https://late.example/hook", &["*"], at(10_000)).await;

    // Theme and media.
    record(l, "set home", &b.set_theme_template("home", Some("<h1>v1</h1>"), at(25)).await);
    record(l, "set home again", &b.set_theme_template("home", Some("<h1>v2</h1>"), at(26)).await);
    record(l, "set footer", &b.set_theme_template("footer", Some("<p>f</p>"), at(27)).await);
    record(l, "templates", &b.theme_templates().await);
    record(l, "remove footer", &b.set_theme_template("footer", None, at(28)).await);
    record(l, "remove what is not there", &b.set_theme_template("nope", None, at(29)).await);
    record(l, "templates after removal", &b.theme_templates().await);
    record(l, "no media", &b.media_usage().await);
    let m1 = MediaRecord { hash: "ab".repeat(32), width: 800, height: 600, bytes: 120_000 };
    let m2 = MediaRecord { hash: "cd".repeat(32), width: 10, height: 20, bytes: 5_000_000_000 };
    record(l, "media 1", &b.record_media(m1.clone(), at(30)).await);
    record(l, "media 1 again, other size", &b.record_media(MediaRecord { bytes: 1, ..m1 }, at(31)).await);
    record(l, "media 2", &b.record_media(m2, at(32)).await);
    let usage = b.media_usage().await;
    record(l, "media usage", &usage);
    assert_eq!(usage.unwrap(), (2, 5_000_120_000));

    // The outbox as the relay reads it.
    let all = b.outbox_after(0, 1000).await.unwrap();
    log.push(json!({ "outbox": all.iter().map(logged_json).collect::<Vec<_>>() }));
    let page = b.outbox_after(all[2].seq, 3).await.unwrap();
    assert_eq!(page.len(), 3);
    log.push(json!({ "outbox page": page.iter().map(logged_json).collect::<Vec<_>>() }));
    let l = &mut log;
    let stats = b.outbox_stats().await;
    record(l, "stats", &stats);
    assert_eq!(stats.unwrap().last_seq, all.last().unwrap().seq);
    record_dbg(l, "store events", &b.events(0, 1000).await);
    record_dbg(l, "store events after 5, 3", &b.events(5, 3).await);

    // Effects. Days around the orders, for analytics.
    let day = day_of(at(10).millis());
    let days = (day - 2, day + 1);
    let before = effects_state(b, days).await;
    log.push(json!({ "effects before": before }));
    let l = &mut log;
    assert_eq!(before["cache_version"], 0);

    let placed: Vec<&Logged> = all.iter().filter(|x| x.event.kind == "order.placed").collect();
    assert_eq!(placed.len(), 2);
    let sales = |x: &Logged, i: usize| {
        let (o, p1, p2) = if i == 0 { (&first, &chai, &biscuit) } else { (&second, &rice, &biscuit) };
        let units: i64 = o.items.iter().map(|it| i64::from(it.quantity)).sum();
        Effect::Sales {
            hour: hour_of(x.event.occurred_at.millis()),
            day: day_of(x.event.occurred_at.millis()),
            orders: 1,
            revenue: o.totals.total,
            units,
            products: vec![
                ProductSale {
                    product_id: p1.id,
                    title: p1.title.clone(),
                    units: i64::from(o.items[0].quantity),
                    revenue: o.items[0].line_total,
                },
                ProductSale {
                    product_id: p2.id,
                    title: p2.title.clone(),
                    units: i64::from(o.items[1].quantity),
                    revenue: o.items[1].line_total,
                },
            ],
        }
    };
    let analytics: Vec<Applied> = placed
        .iter()
        .enumerate()
        .map(|(i, x)| Applied { event: x.event.clone(), effects: vec![sales(x, i)] })
        .collect();
    let notify: Vec<Applied> = placed
        .iter()
        .map(|x| Applied {
            event: x.event.clone(),
            effects: vec![Effect::Notify { recipient: "+919876543210".into(), message: format!("order {}", x.seq) }],
        })
        .collect();
    let cache = |xs: &[Logged]| -> Vec<Applied> {
        xs.iter().map(|x| Applied { event: x.event.clone(), effects: vec![Effect::BumpCacheVersion] }).collect()
    };
    let hooks: Vec<Applied> = all
        .iter()
        .filter(|x| !x.event.kind.starts_with("cart."))
        .map(|x| Applied { event: x.event.clone(), effects: vec![Effect::Webhooks, Effect::BumpCacheVersion] })
        .collect();
    let last = all.last().unwrap().seq;
    let half = all.len() / 2;

    record(l, "analytics consumer", &b.apply("analytics", analytics.clone(), vec![(0, last)], at(40)).await);
    record(l, "notify consumer", &b.apply("notify", notify.clone(), vec![(0, last), (1, last - 1)], at(41)).await);
    record(
        l,
        "cache consumer, first half",
        &b.apply("cache", cache(&all[..half]), vec![(0, all[half - 1].seq)], at(42)).await,
    );
    record(
        l,
        "cache consumer, the rest",
        &b.apply("cache", cache(&all[half..]), vec![(0, last), (1, last)], at(43)).await,
    );
    record(l, "webhooks consumer", &b.apply("webhooks", hooks.clone(), vec![(3, last)], at(44)).await);
    record(l, "nothing, position only", &b.apply("idle", vec![], vec![(0, 1)], at(45)).await);
    let after = effects_state(b, days).await;
    log.push(json!({ "effects after": after }));
    let l = &mut log;
    assert_eq!(after["cache_version"], json!(all.len() + hooks.len()));
    assert_eq!(after["analytics"]["totals"]["orders"], 2);
    assert_eq!(after["analytics"]["top_products"].as_array().unwrap().len(), 3);
    assert_eq!(after["notifications"].as_str().unwrap().matches("Outgoing").count(), 2);
    // "*" gets all but store.created (before it), products the three, orders the second order.
    let queued: Vec<&str> = after["webhooks"].as_array().unwrap().iter().map(|d| d["url"].as_str().unwrap()).collect();
    let count = |u: &str| queued.iter().filter(|q| q.starts_with(u)).count();
    assert_eq!(hooks.len(), 13);
    assert_eq!(
        (count("https://all."), count("https://products."), count("https://orders."), count("https://late.")),
        (12, 3, 1, 0)
    );

    // Redelivery changes nothing and returns 0; a position never moves back.
    for (consumer, batch) in [("analytics", analytics), ("notify", notify), ("cache", cache(&all)), ("webhooks", hooks)]
    {
        let again = b.apply(consumer, batch, vec![(0, 2)], at(50)).await;
        record(l, &format!("{consumer} again"), &again);
        assert_eq!(again.unwrap(), 0);
    }
    let partial = b.apply("cache", cache(&all[..2]), vec![], at(51)).await;
    assert_eq!(partial.unwrap(), 0);
    assert_eq!(effects_state(b, days).await, after, "redelivery changed something");
    record(l, "cache positions", &b.positions("cache").await);
    record(l, "missing consumer's positions", &b.positions("nobody").await);
    let positions = b.all_positions().await;
    record_dbg(l, "all positions", &positions);
    assert!(positions.unwrap().iter().all(|(c, _, seq, _)| c == "idle" || *seq >= 2));
    let mut times = b.applied_times("notify", 100).await.unwrap();
    times.sort_by_key(|(id, _)| id.uuid());
    record_dbg(l, "applied times", &Ok::<_, StorageError>(times));
    record(l, "applied times, limited", &b.applied_times("cache", 3).await.map(|t| t.len()));

    // Dead letters.
    record(l, "no dead letters", &b.dead_letters(true, 10).await);
    record(l, "park", &b.park("webhooks", 7, &all[1], "endpoint said 500", 5, at(60)).await);
    let synthetic = Logged {
        seq: 0,
        event: Event::new(all[0].event.store_id, "test.synthetic", at(61), json!({"x": 1})),
        traceparent: None,
    };
    record(l, "park an unlogged event", &b.park("webhooks", 8, &synthetic, "bad", 1, at(61)).await);
    record(l, "park behind the position", &b.park("cache", 0, &all[0], "late", 2, at(62)).await);
    record(l, "positions after parking", &b.positions("webhooks").await);
    record(l, "cache positions after parking", &b.positions("cache").await);
    let dead = b.dead_letters(false, 10).await;
    record(l, "dead letters", &dead);
    let ids: Vec<i64> = dead.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 3);
    record(l, "dead letters, limit 2", &b.dead_letters(false, 2).await);
    record(l, "replay the first", &b.mark_replayed(ids[0], at(63)).await);
    record(l, "pending dead letters", &b.dead_letters(false, 10).await);
    record(l, "every dead letter", &b.dead_letters(true, 10).await);
    record(l, "the first", &b.dead_letter(ids[0]).await);
    record(l, "missing dead letter", &b.dead_letter(9_999).await);
    record(l, "replay a missing one", &b.mark_replayed(9_999, at(64)).await);

    // Notifications: queued at apply time (41).
    record_dbg(l, "due before queued", &b.due_notifications(at(40), 10).await);
    let due = b.due_notifications(at(41), 10).await.unwrap();
    record_dbg(l, "due", &Ok::<_, StorageError>(&due));
    assert_eq!(due.len(), 2);
    record_dbg(l, "due, limit 1", &b.due_notifications(at(41), 1).await.map(|d| d.len()));
    record(l, "sent", &b.notification_done(due[0].event_id, Ok(()), at(70)).await);
    record(
        l,
        "failed, retry",
        &b.notification_done(due[1].event_id, Err(("smtp down".into(), Some(at(200)))), at(71)).await,
    );
    record_dbg(l, "due after", &b.due_notifications(at(100), 10).await);
    record_dbg(l, "due at the retry", &b.due_notifications(at(200), 10).await);
    record(
        l,
        "failed, give up",
        &b.notification_done(due[1].event_id, Err(("still down".into(), None)), at(201)).await,
    );
    record(l, "unknown notification", &b.notification_done(EventId::generate(), Ok(()), at(202)).await);
    record_dbg(l, "due at the end", &b.due_notifications(at(100_000), 10).await);

    // Dashboard: since before everything, since between the orders, since after.
    record(l, "dashboard since 0", &b.dashboard_stats(at(0)).await);
    record(l, "dashboard since 15", &b.dashboard_stats(at(15)).await);
    record(l, "dashboard since 1000", &b.dashboard_stats(at(1000)).await);
    record(l, "analytics, an empty range", &b.analytics(day + 5, day + 6).await);
    record(l, "analytics, one day", &b.analytics(day, day).await);

    // Trimming.
    let upto = all[3].seq;
    record(l, "trim", &b.trim_outbox(upto).await);
    record(l, "trim again", &b.trim_outbox(upto).await);
    let stats = b.outbox_stats().await;
    record(l, "stats after trim", &stats);
    let stats = stats.unwrap();
    assert_eq!((stats.rows, stats.last_seq), (all.len() as i64 - 4, last));
    // PostgreSQL may hold a read at a gap (here the trimmed rows) until every transaction that
    // was running when it first saw it has ended — on a shared server, other tests' ones too.
    let mut rest = b.outbox_after(0, 1).await.unwrap();
    for _ in 0..500 {
        if !rest.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        rest = b.outbox_after(0, 1).await.unwrap();
    }
    assert_eq!(rest[0].seq, all[4].seq);
    record(l, "trim everything", &b.trim_outbox(last).await);
    record(l, "stats when empty", &b.outbox_stats().await);
    record_dbg(l, "store events when empty", &b.events(0, 10).await);
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_behaves_as_on_sqlite() {
    let owner = MerchantId::generate();

    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..Default::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
    let new = NewStore { name: "Corner Shop".into(), slug: None, custom_domain: None, settings: settings() };
    let store = storage.create_store(owner, new, at(0)).await.unwrap();
    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
    let sqlite = OnSqlite { storage, scope };
    let mut on_sqlite = Value::Array(scenario(&sqlite).await);

    let (_db, pool) = pg_shard(4).await;
    let id = StoreId::generate();
    in_tx!(pool, |t| stores::insert(&t, id, owner, "Corner Shop", &settings(), at(0)).await).unwrap();
    let postgres = OnPostgres { pool, store: id, gaps: Default::default() };
    let mut on_postgres = Value::Array(scenario(&postgres).await);

    normalise(&mut on_sqlite, &mut HashMap::new());
    normalise(&mut on_postgres, &mut HashMap::new());
    let (a, b) = (on_sqlite.as_array().unwrap(), on_postgres.as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y, "SQLite (left) and PostgreSQL (right) differ");
    }
}

// ---------------------------------------------------------------------------------------------
// What only PostgreSQL can get wrong: deliveries racing each other

/// The same batch delivered eight times at once (a relay and a broker redelivering): its
/// effects happen once, exactly one delivery counts it, and the position ends at the highest
/// any of them recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_eight_times_at_once_applies_once() {
    let (_db, pool) = pg_shard(8).await;
    let c = pool.get().await.unwrap();
    let empty = log::outbox_stats(&c).await.unwrap();
    assert_eq!(empty, OutboxStats { rows: 0, last_seq: 0, oldest_at: None }, "a sequence never used is 0");
    drop(c);

    let store = StoreId::generate();
    let batch: Vec<Applied> = (0..5)
        .map(|k| Applied {
            event: Event::new(store, "order.placed", at(k), json!({})),
            effects: vec![
                Effect::BumpCacheVersion,
                Effect::Notify { recipient: "+919876543210".into(), message: format!("order {k}") },
            ],
        })
        .collect();
    let pool = std::sync::Arc::new(pool);
    let tasks: Vec<_> = (0..8i64)
        .map(|i| {
            let (pool, batch) = (pool.clone(), batch.clone());
            tokio::spawn(async move {
                in_tx!(pool, |t| log::apply(&t, "cache", &batch, &[(0, 10 + i), (1, 20 - i)], at(30)).await)
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        fresh += t.await.unwrap().unwrap();
    }
    assert_eq!(fresh, 5, "each event counted by exactly one delivery");
    let c = pool.get().await.unwrap();
    assert_eq!(extras::cache_version(&c, store).await.unwrap(), 5);
    assert_eq!(log::due_notifications(&c, at(30), 100).await.unwrap().len(), 5);
    assert_eq!(log::positions(&c, "cache").await.unwrap(), vec![(0, 17), (1, 20)]);
}
