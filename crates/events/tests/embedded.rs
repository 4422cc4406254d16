//! The embedded pipeline, against real SQLite shards: every event applied exactly once across
//! reader restarts and redelivery; a poison event holds back only its partition, is parked and
//! replays after the fix; the outbox is trimmed only behind every consumer; status shows lag
//! and raises the alerts; the whole pipeline turns orders into rollups and notifications.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kirana_domain::cart::{CheckoutInput, Quantity};
use kirana_domain::catalog::ProductInput;
use kirana_domain::event::Event;
use kirana_domain::order::{OrderStatus, TransitionRequest};
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, MerchantId, Phone, StoreId, SystemClock, VariantId};
use kirana_events::consumers::{CacheInvalidation, Consumer, SalesAnalytics};
use kirana_events::embedded::{Reader, ReaderConfig, RetryPolicy, trim, trim_behind};
use kirana_events::notify::Messenger;
use kirana_events::partition::partition_of;
use kirana_events::{Pipeline, PipelineConfig, all_consumers};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{Applied, Effect, Storage, StoreScope};
use serde_json::json;

/// Which storage the suite runs on: this file on SQLite; `embedded_pg.rs` includes it and runs
/// it on PostgreSQL (where the outbox is read only up to its commit-order safe point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[allow(dead_code)] // the crate root's when this file is the suite of embedded_pg.rs
pub const BACKEND: Backend = Backend::Sqlite;

struct World {
    storage: Storage,
    clock: Arc<dyn Clock>,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

struct Shop {
    scope: StoreScope,
    variant: VariantId,
    owner_phone: Phone,
}

impl World {
    async fn new(shards: u32) -> World {
        let (storage, keep): (Storage, Box<dyn std::any::Any + Send + Sync>) = match crate::BACKEND {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
                (kirana_storage::sqlite::open(dir.path(), shards, &opts).unwrap(), Box::new(dir))
            }
            Backend::Postgres => {
                use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
                use kirana_storage::postgres::testing::TempDb;
                let mut dbs = vec![TempDb::create().await];
                for _ in 0..shards {
                    dbs.push(TempDb::create().await);
                }
                let urls = dbs[1..].iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
                let cluster = open(&PgConfig::new(dbs[0].url(), urls)).await.unwrap();
                (cluster.storage, Box::new(dbs))
            }
        };
        World { storage, clock: Arc::new(SystemClock), _keep: keep }
    }

    async fn merchant(&self, n: u32) -> (MerchantId, Phone) {
        let phone = Phone::parse(&format!("+9198{n:08}")).unwrap();
        let (m, _) = self.storage.directory().merchant_for_phone(&phone, self.clock.now()).await.unwrap();
        (m.id, phone)
    }

    async fn shop(&self, n: u32) -> Shop {
        let (owner, owner_phone) = self.merchant(n).await;
        let new = StoreInput { name: Some(format!("Store {n}")), ..StoreInput::default() }.into_new().unwrap();
        let store = self.storage.create_store(owner, new, self.clock.now()).await.unwrap();
        let scope = self.storage.scope_for_owner(owner, store.id).await.unwrap();
        let input: ProductInput =
            serde_json::from_value(json!({ "title": format!("Tea {n}"), "price": 25_000, "stock": 10_000 })).unwrap();
        let product = self
            .storage
            .shard(&scope)
            .create_product(&scope, input.into_change(true).unwrap(), self.clock.now())
            .await
            .unwrap();
        Shop { scope, variant: product.variants[0].id, owner_phone }
    }

    /// A shopper buys `qty` units; returns the order's total.
    async fn order(&self, shop: &Shop, qty: i64) -> (kirana_domain::OrderId, i64) {
        let shard = self.storage.shard(&shop.scope);
        let token = [7u8; 32];
        let cart = shard.create_cart(&shop.scope, token, self.clock.now()).await.unwrap();
        shard
            .set_cart_item(&shop.scope, cart.id, token, shop.variant, Quantity::parse(qty).unwrap(), self.clock.now())
            .await
            .unwrap();
        let input: CheckoutInput = serde_json::from_value(json!({
            "customer": { "name": "Asha Rao", "phone": "+919812345678" },
            "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
            "payment_method": "cod"
        }))
        .unwrap();
        let (order, _) =
            shard.checkout(&shop.scope, cart.id, token, input.parse().unwrap(), None, self.clock.now()).await.unwrap();
        (order.id, order.totals.total)
    }

    async fn rename(&self, shop: &Shop, name: &str) {
        let change = StoreInput { name: Some(name.into()), ..StoreInput::default() }.into_change().unwrap();
        self.storage.update_store(&shop.scope, change, self.clock.now()).await.unwrap();
    }

    fn reader(&self, consumer: Arc<dyn Consumer>, shard: usize, cfg: ReaderConfig) -> Reader {
        Reader::new(consumer, self.storage.clone(), shard, cfg, self.clock.clone())
    }

    /// Steps a reader until it reads nothing more (bounded).
    async fn drain(&self, reader: &mut Reader) {
        for _ in 0..1000 {
            if reader.step().await.unwrap().read == 0 {
                return;
            }
        }
        panic!("the reader never caught up");
    }

    async fn totals(&self, shop: &Shop) -> (i64, i64) {
        let day = kirana_domain::analytics::day_of(self.clock.now().millis());
        let a = self.storage.shard(&shop.scope).analytics(&shop.scope, day - 1, day + 1).await.unwrap();
        (a.totals.orders, a.totals.revenue)
    }

    async fn version(&self, shop: &Shop) -> i64 {
        self.storage.shard(&shop.scope).cache_version(&shop.scope).await.unwrap()
    }

    /// Events of a store that change its pages (everything but carts).
    async fn page_events(&self, shop: &Shop) -> i64 {
        let events = self.storage.shard(&shop.scope).events(&shop.scope, 0, 10_000).await.unwrap();
        events.iter().filter(|(_, e)| kirana_events::consumers::changes_pages(e)).count() as i64
    }
}

fn small_batches() -> ReaderConfig {
    ReaderConfig { batch: 7, ..ReaderConfig::default() }
}

#[tokio::test]
async fn every_event_is_applied_once_across_restarts_and_redelivery() {
    let w = World::new(2).await;
    let mut shops = Vec::new();
    for n in 0..8 {
        shops.push(w.shop(n).await);
    }
    let mut expected: HashMap<StoreId, (i64, i64)> = HashMap::new();
    for i in 0..40 {
        let shop = &shops[i % shops.len()];
        let (_, total) = w.order(shop, (i % 3 + 1) as i64).await;
        let e = expected.entry(shop.scope.store_id()).or_default();
        e.0 += 1;
        e.1 += total;
    }
    for shard in 0..2 {
        // A reader that stops after two small steps, as if the process died…
        let mut first = w.reader(Arc::new(SalesAnalytics), shard, small_batches());
        first.step().await.unwrap();
        first.step().await.unwrap();
        drop(first);
        // …and its successor, which resumes from the positions in the shard.
        let mut second = w.reader(Arc::new(SalesAnalytics), shard, small_batches());
        w.drain(&mut second).await;
        let mut cache = w.reader(Arc::new(CacheInvalidation), shard, ReaderConfig::default());
        w.drain(&mut cache).await;
    }
    for shop in &shops {
        let want = expected.get(&shop.scope.store_id()).copied().unwrap_or_default();
        assert_eq!(w.totals(shop).await, want, "rollups of {}", shop.scope.store_id());
        assert_eq!(w.version(shop).await, w.page_events(shop).await, "one bump per page-changing event");
    }

    // A broker redelivering everything (or a relay crash replaying the log) changes nothing.
    for shop in &shops {
        let log = w.storage.log_for_store(shop.scope.store_id()).await.unwrap();
        let events: Vec<Event> = w
            .storage
            .shard(&shop.scope)
            .events(&shop.scope, 0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        let again: Vec<Applied> =
            events.iter().map(|e| Applied { event: e.clone(), effects: SalesAnalytics.effects(e).unwrap() }).collect();
        let fresh = log.apply("analytics", again, vec![], w.clock.now()).await.unwrap();
        assert_eq!(fresh, 0, "every event was already applied");
        let want = expected.get(&shop.scope.store_id()).copied().unwrap_or_default();
        assert_eq!(w.totals(shop).await, want);
    }
}

/// Fails on one store's events while `broken` is set: a poison event.
struct Flaky {
    poison: StoreId,
    broken: AtomicBool,
}

impl Consumer for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        if event.store_id == self.poison && self.broken.load(Ordering::SeqCst) {
            return Err("cannot read this event".into());
        }
        Ok(vec![Effect::BumpCacheVersion])
    }
}

/// Two stores of one shard in different partitions.
async fn two_partitions(w: &World) -> (Shop, Shop) {
    let a = w.shop(100).await;
    for n in 101..200 {
        let b = w.shop(n).await;
        if partition_of(b.scope.store_id(), 16) != partition_of(a.scope.store_id(), 16) {
            return (a, b);
        }
    }
    panic!("no two partitions in a hundred stores");
}

#[tokio::test]
async fn a_poison_event_holds_back_only_its_partition_then_is_parked_and_replays_after_the_fix() {
    let w = World::new(1).await;
    let (a, b) = two_partitions(&w).await;
    let flaky = Arc::new(Flaky { poison: a.scope.store_id(), broken: AtomicBool::new(true) });
    let retry = RetryPolicy { attempts: 4, base: Duration::from_millis(1), max: Duration::from_millis(5) };
    let mut reader = w.reader(flaky.clone(), 0, ReaderConfig { retry, ..ReaderConfig::default() });
    let before_b = w.page_events(&b).await;

    reader.step().await.unwrap();
    assert_eq!(w.version(&b).await, before_b, "the healthy partition is applied");
    assert_eq!(w.version(&a).await, 0, "the poison partition is held back");

    // The healthy store keeps moving while the other partition retries.
    w.rename(&b, "Still Open").await;
    let mut parked = 0;
    for _ in 0..200 {
        parked += reader.step().await.unwrap().parked;
        if parked > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(w.version(&b).await, before_b + 1, "other partitions never waited");
    assert!(parked >= 1, "after its last attempt the event is parked");

    let log = w.storage.logs().next().unwrap();
    let dead = log.dead_letters(false, 100).await.unwrap();
    assert!(!dead.is_empty(), "the parked event is listed");
    assert!(dead.iter().all(|d| d.store_id == a.scope.store_id() && d.consumer == "flaky" && d.attempts == 4));
    assert!(dead[0].error.contains("cannot read"));

    // The fix ships; the operator replays every parked event.
    flaky.broken.store(false, Ordering::SeqCst);
    let consumers: Vec<Arc<dyn Consumer>> = vec![flaky.clone()];
    // Events of the store after the parked ones are applied as the partition moves on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        reader.step().await.unwrap();
        let parked = log.dead_letters(false, 100).await.unwrap().len() as i64;
        if w.version(&a).await + parked == w.page_events(&a).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the poisoned partition never caught up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for d in log.dead_letters(false, 100).await.unwrap() {
        let applied = kirana_events::pipeline::replay(&w.storage, &consumers, 0, d.id, &*w.clock).await.unwrap();
        assert_eq!(applied, 1);
        let again = kirana_events::pipeline::replay(&w.storage, &consumers, 0, d.id, &*w.clock).await.unwrap();
        assert_eq!(again, 0, "replaying twice applies nothing twice");
    }
    assert!(log.dead_letters(false, 100).await.unwrap().is_empty(), "all replayed");
    assert_eq!(w.version(&a).await, w.page_events(&a).await, "every event of the poisoned store is applied once");
}

#[tokio::test]
async fn the_outbox_is_trimmed_only_behind_every_consumer() {
    let w = World::new(1).await;
    let shop = w.shop(1).await;
    for _ in 0..5 {
        w.order(&shop, 1).await;
    }
    let log = w.storage.logs().next().unwrap();
    let rows = log.outbox_stats().await.unwrap().rows;
    assert!(rows > 5);
    let mut analytics = w.reader(Arc::new(SalesAnalytics), 0, ReaderConfig::default());
    w.drain(&mut analytics).await;
    trim(&w.storage, &["analytics", "cache"], 16).await.unwrap();
    assert_eq!(log.outbox_stats().await.unwrap().rows, rows, "the cache consumer has read nothing yet");
    let mut cache = w.reader(Arc::new(CacheInvalidation), 0, ReaderConfig::default());
    w.drain(&mut cache).await;

    // A whole-shard reader (one position, like the search indexer) holds trimming back too:
    // nothing before its first position, then only what it has read.
    let search = vec!["search".to_string()];
    trim_behind(&w.storage, &["analytics", "cache"], 16, &search).await.unwrap();
    assert_eq!(log.outbox_stats().await.unwrap().rows, rows, "the indexer has read nothing yet");
    let all = log.outbox_after(0, 1000).await.unwrap();
    let halfway = all[all.len() / 2].seq;
    log.apply("search", vec![], vec![(0, halfway)], w.clock.now()).await.unwrap();
    trim_behind(&w.storage, &["analytics", "cache"], 16, &search).await.unwrap();
    let beyond = all.iter().filter(|l| l.seq > halfway).count() as i64;
    assert_eq!(log.outbox_stats().await.unwrap().rows, beyond, "trimmed up to the indexer, no further");
    log.apply("search", vec![], vec![(0, all.last().unwrap().seq)], w.clock.now()).await.unwrap();

    trim_behind(&w.storage, &["analytics", "cache"], 16, &search).await.unwrap();
    let stats = log.outbox_stats().await.unwrap();
    assert_eq!(stats.rows, 0, "everyone is past every row");
    assert!(stats.last_seq >= rows, "positions survive trimming");
}

#[tokio::test]
async fn status_shows_lag_per_partition_and_raises_alerts() {
    let w = World::new(1).await;
    let (a, b) = two_partitions(&w).await;
    let now = w.clock.now();
    let s = kirana_events::status::status(&w.storage, &["cache"], 16, now).await.unwrap();
    let consumer = &s.shards[0].consumers[0];
    assert!(consumer.lag_events > 0, "nothing read yet");
    assert!(s.alerts.is_empty(), "events just written, a reader not yet started: no alarm yet: {:?}", s.alerts);
    // A minute on, still nothing read: silent, and every waiting partition stalled.
    let later = now.plus_millis(61_000);
    let s = kirana_events::status::status(&w.storage, &["cache"], 16, later).await.unwrap();
    assert!(s.alerts.iter().any(|a| a.name == "ConsumerNoHeartbeat"), "{:?}", s.alerts);
    let pa = partition_of(a.scope.store_id(), 16);
    assert!(
        s.alerts.iter().any(|x| x.name == "PartitionStalled" && x.detail.contains(&format!("partition {pa}:"))),
        "{:?}",
        s.alerts
    );

    // One partition stuck behind a poison event while the rest keep up.
    let flaky = Arc::new(Flaky { poison: a.scope.store_id(), broken: AtomicBool::new(true) });
    let retry = RetryPolicy { attempts: 1000, base: Duration::from_secs(60), max: Duration::from_secs(60) };
    let mut reader = w.reader(flaky, 0, ReaderConfig { retry, ..ReaderConfig::default() });
    reader.step().await.unwrap();
    for i in 0..120 {
        w.rename(&a, &format!("A {i}")).await;
        w.rename(&b, &format!("B {i}")).await;
        reader.step().await.unwrap();
    }
    let s = kirana_events::status::status(&w.storage, &["flaky"], 16, w.clock.now()).await.unwrap();
    let parts = &s.shards[0].consumers[0].partitions;
    let pa = partition_of(a.scope.store_id(), 16) as usize;
    let pb = partition_of(b.scope.store_id(), 16) as usize;
    assert!(parts[pa].lag_events > 100, "{:?}", parts[pa]);
    assert_eq!(parts[pb].lag_events, 0);
    assert!(
        s.alerts.iter().any(|x| x.name == "PartitionLagging" && x.detail.contains(&format!("partition {pa} "))),
        "{:?}",
        s.alerts
    );
    assert!(!s.alerts.iter().any(|x| x.name == "ConsumerNoHeartbeat"), "it is alive: {:?}", s.alerts);
}

/// Records what the notifier was asked to send.
#[derive(Default)]
struct Outbox(Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl Messenger for Outbox {
    async fn send(&self, to: &Phone, message: &str, _key: &str) -> Result<(), String> {
        self.0.lock().unwrap().push((to.as_str().to_string(), message.to_string()));
        Ok(())
    }
}

#[tokio::test]
async fn the_pipeline_turns_orders_into_rollups_notifications_and_cache_versions() {
    let w = World::new(2).await;
    let shops = [w.shop(1).await, w.shop(2).await];
    let outbox = Arc::new(Outbox::default());
    let pipeline =
        Pipeline::start(w.storage.clone(), all_consumers(), outbox.clone(), w.clock.clone(), PipelineConfig::default());
    let (order, total) = w.order(&shops[0], 2).await;
    w.order(&shops[1], 1).await;
    let shard = w.storage.shard(&shops[0].scope);
    let req = TransitionRequest { to: OrderStatus::Accepted, note: None, tracking: None };
    shard
        .transition_order(&shops[0].scope, order, req, "merchant:test".into(), &Default::default(), w.clock.now())
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = outbox.0.lock().unwrap().clone();
        let done = sent.iter().filter(|(_, m)| m.starts_with("New order")).count() == 2
            && sent.iter().any(|(to, m)| to == "+919812345678" && m.contains("is now accepted"))
            && w.totals(&shops[0]).await == (1, total)
            && w.version(&shops[0]).await == w.page_events(&shops[0]).await;
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pipeline did not deliver: {sent:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = outbox.0.lock().unwrap().clone();
    assert!(sent.iter().any(|(to, _)| to == shops[0].owner_phone.as_str()), "the merchant hears of the order");
    pipeline.stop().await;
}
