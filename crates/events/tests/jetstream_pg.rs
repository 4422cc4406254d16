//! The JetStream backend over PostgreSQL shards, as a fleet runs it: stores moving between shards
//! while they sell, and several nodes sharing the partitions by lease.
//!
//! - Events published before a store's move and applied after it are applied where the store
//!   lives then, once; the other stores of its partition never wait on it.
//! - Two nodes split the relays and partitions without fighting over durable consumers (no
//!   resets once split), and a node that dies hands its share over when its leases run out.

mod nats_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use kirana_domain::cart::{CheckoutInput, Quantity};
use kirana_domain::catalog::ProductInput;
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, MerchantId, Phone, StoreId, SystemClock, VariantId};
use kirana_events::assign::AssignConfig;
use kirana_events::jetstream::JetStreamBus;
use kirana_events::notify::Messenger;
use kirana_events::partition::partition_of;
use kirana_events::pipeline::Backend;
use kirana_events::{Pipeline, PipelineConfig};
use kirana_storage::postgres::cluster::{PgCluster, PgConfig, ShardUrls, open};
use kirana_storage::postgres::moves::Mover;
use kirana_storage::postgres::pool::{PgPool, PoolRole};
use kirana_storage::postgres::testing::TempDb;
use kirana_storage::{ShardId, Storage, StorageError, StoreScope};
use nats_support::*;
use serde_json::json;

const PARTITIONS: u32 = 16;

/// A control database and two shards of the test's own.
struct Cluster {
    cluster: PgCluster,
    dbs: [TempDb; 3],
}

impl Cluster {
    async fn new() -> Cluster {
        let dbs = [TempDb::create().await, TempDb::create().await, TempDb::create().await];
        let urls = dbs[1..].iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
        let cluster = open(&PgConfig::new(dbs[0].url(), urls)).await.unwrap();
        Cluster { cluster, dbs }
    }

    fn storage(&self) -> Storage {
        self.cluster.storage.clone()
    }

    fn mover(&self) -> Mover {
        let pool = |url: String, role| Arc::new(PgPool::new(&url, role, Default::default()).unwrap());
        let shards: HashMap<ShardId, Arc<PgPool>> = [
            (ShardId(0), pool(self.dbs[1].url(), PoolRole::Primary(ShardId(0)))),
            (ShardId(1), pool(self.dbs[2].url(), PoolRole::Primary(ShardId(1)))),
        ]
        .into_iter()
        .collect();
        Mover::new(pool(self.dbs[0].url(), PoolRole::Directory), shards).with_cleanup_delay(Duration::from_millis(200))
    }

    /// Rows of `table` for a store on the shard that holds it now.
    async fn count(&self, table: &str, store: StoreId) -> i64 {
        let shard = self.storage().home_of(store).await.unwrap();
        let url = self.dbs[1 + shard.0 as usize].url();
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.query_one(&format!("SELECT count(*) FROM {table} WHERE store_id = $1"), &[&store.uuid()])
            .await
            .unwrap()
            .get(0)
    }
}

/// A store with one product in stock, and how many orders it took.
struct Shop {
    owner: MerchantId,
    store: StoreId,
    variant: VariantId,
    price: i64,
    placed: AtomicI64,
}

async fn shop(storage: &Storage, owner: MerchantId, name: &str, price: i64) -> Shop {
    let clock = SystemClock;
    let new = StoreInput { name: Some(name.into()), ..StoreInput::default() }.into_new().unwrap();
    let store = storage.create_store(owner, new, clock.now()).await.unwrap();
    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
    let input: ProductInput =
        serde_json::from_value(json!({ "title": format!("{name} tea"), "price": price, "stock": 1_000_000 })).unwrap();
    let product =
        storage.shard(&scope).create_product(&scope, input.into_change(true).unwrap(), clock.now()).await.unwrap();
    Shop { owner, store: store.id, variant: product.variants[0].id, price, placed: AtomicI64::new(0) }
}

impl Shop {
    async fn scope(&self, storage: &Storage) -> StoreScope {
        storage.scope_for_owner(self.owner, self.store).await.unwrap()
    }

    /// One order, retried while a move refuses the store's writes for a moment.
    async fn order(&self, storage: &Storage, n: u64) {
        let clock = SystemClock;
        let token = [(n % 251) as u8; 32];
        let mut cart = None;
        let mut step = 0;
        loop {
            let scope = self.scope(storage).await;
            let shard = storage.shard(&scope);
            let r = match step {
                0 => shard.create_cart(&scope, token, clock.now()).await.map(|c| cart = Some(c.id)),
                1 => shard
                    .set_cart_item(&scope, cart.unwrap(), token, self.variant, Quantity::parse(1).unwrap(), clock.now())
                    .await
                    .map(|_| ()),
                _ => {
                    let input: CheckoutInput = serde_json::from_value(json!({
                        "customer": { "name": "Asha Rao", "phone": "+919812345678" },
                        "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
                        "payment_method": "cod"
                    }))
                    .unwrap();
                    shard
                        .checkout(&scope, cart.unwrap(), token, input.parse().unwrap(), None, clock.now())
                        .await
                        .map(|_| ())
                }
            };
            match r {
                Ok(()) if step == 2 => {
                    self.placed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(()) => step += 1,
                Err(StorageError::Moved { .. } | StorageError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("checkout: {e}"),
            }
        }
    }

    /// The orders and revenue the sales rollups count, where the store lives now.
    async fn counted(&self, storage: &Storage) -> (i64, i64) {
        let scope = self.scope(storage).await;
        let day = kirana_domain::analytics::day_of(SystemClock.now().millis());
        let a = storage.shard(&scope).analytics(&scope, day - 1, day + 1).await.unwrap();
        (a.totals.orders, a.totals.revenue)
    }

    fn expected(&self) -> (i64, i64) {
        let n = self.placed.load(Ordering::SeqCst);
        (n, n * self.price)
    }
}

/// Messages sent, by idempotency key (the event id), for "each notification once".
#[derive(Default)]
struct Outbox {
    sent: std::sync::Mutex<HashMap<String, u32>>,
}

#[async_trait::async_trait]
impl Messenger for Outbox {
    async fn send(&self, _to: &Phone, _message: &str, key: &str) -> Result<(), String> {
        *self.sent.lock().unwrap().entry(key.to_owned()).or_default() += 1;
        Ok(())
    }
}

fn pipeline(
    storage: &Storage,
    bus_cfg: &kirana_events::jetstream::JetStreamConfig,
    node: &str,
    ttl: Duration,
    messenger: Arc<Outbox>,
) -> Pipeline {
    Pipeline::start(
        storage.clone(),
        kirana_events::all_consumers(),
        messenger,
        Arc::new(SystemClock),
        PipelineConfig {
            backend: Backend::JetStream(Box::new(bus_cfg.clone())),
            assign: AssignConfig { ttl, stop_wait: Duration::from_secs(2), ..AssignConfig::new(node) },
            watch_every: Duration::from_millis(500),
            ..PipelineConfig::default()
        },
    )
}

async fn settled(shops: &[&Shop], storage: &Storage) -> Result<(), String> {
    for s in shops {
        let (got, want) = (s.counted(storage).await, s.expected());
        if got != want {
            return Err(format!("store {}: rollups count {got:?}, orders taken {want:?}", s.store));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moving_both_ways_while_it_sells_loses_no_event_and_holds_up_no_other_store() {
    logs();
    let url = shared_nats();
    let c = Cluster::new().await;
    let storage = c.storage();
    let clock = SystemClock;
    let phone = Phone::parse("+919800000077").unwrap();
    let owner = storage.directory().merchant_for_phone(&phone, clock.now()).await.unwrap().0.id;
    let moving = shop(&storage, owner, "Moving Chai", 25_000).await;
    let from = moving.scope(&storage).await.shard();
    let to = ShardId(1 - from.0);
    // A store that never moves, in the same partition and on the same shard as the moving one:
    // the failure this guards against held up every store of the partition, and one that also
    // shares the shard shares its transactions.
    let mut i = 0;
    let neighbour = loop {
        let s = shop(&storage, owner, &format!("Neighbour {i}"), 12_000).await;
        if partition_of(s.store, PARTITIONS) == partition_of(moving.store, PARTITIONS)
            && s.scope(&storage).await.shard() == from
        {
            break s;
        }
        i += 1;
        assert!(i < 400, "no store shares the moving store's partition and shard");
    };

    let cfg = test_config(&url, PARTITIONS);
    let outbox = Arc::new(Outbox::default());
    let node = pipeline(&storage, &cfg, "solo", Duration::from_secs(5), outbox.clone());

    let (moving, neighbour) = (Arc::new(moving), Arc::new(neighbour));
    let buying = Arc::new(AtomicBool::new(true));
    let mut shoppers = Vec::new();
    for (k, s) in [moving.clone(), moving.clone(), neighbour.clone()].into_iter().enumerate() {
        let (storage, buying) = (storage.clone(), buying.clone());
        shoppers.push(tokio::spawn(async move {
            let mut n = k as u64;
            while buying.load(Ordering::Relaxed) {
                s.order(&storage, n).await;
                n += 3;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(600)).await;
    let mover = c.mover();
    let there = mover.move_store(moving.store, to).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let back = mover.move_store(moving.store, from).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    buying.store(false, Ordering::Relaxed);
    for s in shoppers {
        s.await.unwrap();
    }
    assert!(there.cutover_pause > Duration::ZERO && back.cutover_pause > Duration::ZERO);
    assert!(moving.placed.load(Ordering::SeqCst) > 10 && neighbour.placed.load(Ordering::SeqCst) > 5);

    let both: [&Shop; 2] = [&moving, &neighbour];
    eventually(Duration::from_secs(60), "every acknowledged order counted once", || settled(&both, &storage)).await;
    // A little longer: a double count, or a late duplicate, would show now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    settled(&both, &storage).await.unwrap();

    // Every order queued one message to its merchant, once, on the shard the store lives on,
    // and each was sent once.
    for s in [&moving, &neighbour] {
        assert_eq!(c.count("notifications", s.store).await, s.placed.load(Ordering::SeqCst), "queued once per order");
    }
    let want = moving.placed.load(Ordering::SeqCst) + neighbour.placed.load(Ordering::SeqCst);
    eventually(Duration::from_secs(30), "every notification sent", || async {
        let sent = outbox.sent.lock().unwrap();
        let once = sent.values().all(|n| *n == 1);
        if sent.len() as i64 >= want && once {
            Ok(())
        } else {
            Err(format!("{} of {want} sent, once each: {once}", sent.len()))
        }
    })
    .await;

    // Nothing waits in any partition: the status watcher (and `events status`) say so.
    let bus = node.jetstream().expect("the bus opened");
    let names: Vec<&str> = kirana_events::all_consumers().iter().map(|c| c.name()).collect();
    let status = kirana_events::status::status_of(&storage, &names, PARTITIONS, Some(&bus), clock.now()).await.unwrap();
    assert!(status.alerts.is_empty(), "{:?}", status.alerts);
    assert_eq!(status.partition_lags().iter().map(|l| l.2).sum::<i64>(), 0);
    node.stop().await;
    drop_streams(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_split_the_work_without_resets_and_a_dead_nodes_share_resumes_within_the_lease() {
    logs();
    let url = shared_nats();
    let c = Cluster::new().await;
    let storage = c.storage();
    let clock = SystemClock;
    let phone = Phone::parse("+919800000078").unwrap();
    let owner = storage.directory().merchant_for_phone(&phone, clock.now()).await.unwrap().0.id;
    let mut shops = Vec::new();
    for i in 0..12 {
        shops.push(Arc::new(shop(&storage, owner, &format!("Shop {i}"), 10_000 + 100 * i).await));
    }
    let cfg = test_config(&url, PARTITIONS);
    let ttl = Duration::from_secs(3);
    let outbox = Arc::new(Outbox::default());
    let a = pipeline(&storage, &cfg, "node-a", ttl, outbox.clone());
    let b = pipeline(&storage, &cfg, "node-b", ttl, outbox.clone());
    // 2 relays, 16 partitions and 2 notification senders: 20 jobs, 10 each.
    let jobs = 2 + PARTITIONS as usize + 2;
    let split = |a: &Pipeline, b: &Pipeline| {
        let (sa, sb) = (a.share.borrow().clone(), b.share.borrow().clone());
        sa.held.len() + sb.held.len() == jobs && sa.held.is_disjoint(&sb.held) && sa.held.len() == jobs / 2
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !split(&a, &b) {
        assert!(
            Instant::now() < deadline,
            "the nodes never split the work: {:?} / {:?}",
            a.share.borrow(),
            b.share.borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Steady state: orders flow through both nodes' partitions; nobody recreates a consumer.
    let (bus_a, bus_b) = (a.jetstream().unwrap(), b.jetstream().unwrap());
    let resets_before = bus_a.resets() + bus_b.resets();
    let order_all = |n: u64| {
        let (shops, storage) = (shops.clone(), storage.clone());
        async move {
            for k in 0..n {
                shops[(k % shops.len() as u64) as usize].order(&storage, k).await;
            }
        }
    };
    order_all(120).await;
    let refs: Vec<&Shop> = shops.iter().map(|s| &**s).collect();
    eventually(Duration::from_secs(60), "both nodes apply every order", || settled(&refs, &storage)).await;
    assert!(split(&a, &b), "the split held");
    assert_eq!(bus_a.resets() + bus_b.resets(), resets_before, "no consumer was reset in steady state");

    // Node b dies: its relays and partitions stop mid-flight and its leases run out; node a
    // takes them and applies what b left and everything after.
    let died = Instant::now();
    b.kill();
    order_all(60).await;
    eventually(Duration::from_secs(30), "the survivor applies every order", || settled(&refs, &storage)).await;
    let resumed = died.elapsed();
    assert_eq!(a.share.borrow().held.len(), jobs, "a holds everything");
    assert!(resumed <= ttl + Duration::from_secs(6), "resumed within the lease's life and a few ticks: {resumed:?}");

    // Each order's merchant message was sent; a kill may resend one it was sending, never lose one.
    let want: i64 = shops.iter().map(|s| s.placed.load(Ordering::SeqCst)).sum();
    eventually(Duration::from_secs(30), "every notification sent", || async {
        let n = outbox.sent.lock().unwrap().len() as i64;
        if n >= want { Ok(()) } else { Err(format!("{n} of {want}")) }
    })
    .await;
    a.stop().await;
    drop_streams(&bus_a).await;
}

#[tokio::test]
async fn two_deployments_on_one_nats_keep_their_streams_and_subjects_apart() {
    use kirana_events::jetstream::{JetStreamConfig, valid_namespace};
    let a = JetStreamConfig::namespaced("nats://x", "shop-a");
    let b = JetStreamConfig::namespaced("nats://x", "shop_b");
    assert_eq!((a.stream.as_str(), a.subject_prefix.as_str()), ("SHOP_A_EVENTS", "shop-a.ev"));
    assert_ne!(a.stream, b.stream);
    assert_ne!(a.dlq_stream, b.dlq_stream);
    assert!(!a.subject_prefix.starts_with(&b.subject_prefix) && !b.subject_prefix.starts_with(&a.subject_prefix));
    let default = JetStreamConfig::new("nats://x");
    assert_eq!((default.stream.as_str(), default.subject_prefix.as_str()), ("KIRANA_EVENTS", "kirana.ev"));
    for bad in ["", "A", "1a", "a.b", "a b", "a*", &"a".repeat(33)] {
        assert!(!valid_namespace(bad), "{bad:?}");
    }

    // And on a real server both deployments' relays publish into their own stream only.
    let url = shared_nats();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (mut na, mut nb) =
        (JetStreamConfig::namespaced(&url, &format!("a{tag}")), JetStreamConfig::namespaced(&url, &format!("b{tag}")));
    na.max_age = Duration::from_secs(3600);
    nb.max_age = Duration::from_secs(3600);
    let (ba, bb) = (JetStreamBus::open(na).await.unwrap(), JetStreamBus::open(nb).await.unwrap());
    ba.ensure_streams().await.unwrap();
    bb.ensure_streams().await.unwrap();
    ba.jetstream().publish(ba.subject(3, "order.placed"), "{}".into()).await.unwrap().await.unwrap();
    assert_eq!(stream_messages(&ba, &ba.config().stream).await, 1);
    assert_eq!(stream_messages(&bb, &bb.config().stream).await, 0);
    drop_streams(&ba).await;
    drop_streams(&bb).await;
}
