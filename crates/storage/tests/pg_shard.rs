//! `PgShard` as the rest of kirana uses it: the outbox read only up to its commit-order safe
//! point, the write fence a store move sets, and reads routed by consistency across a real
//! primary and streaming replica (`pg_support`), with lag injected by pausing replay.

mod pg_db;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kirana_domain::catalog::{CategoryChange, NewVariant, ProductChange};
use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{Amount, MerchantId, StoreId};
use kirana_storage::consistency::{self, Consistency, ReadContext, WriteToken};
use kirana_storage::postgres::cluster::{PgCluster, PgConfig, ShardUrls, open};
use kirana_storage::postgres::pool::{PgPool, PoolRole, PoolSettings};
use kirana_storage::postgres::replica::LagPolicy;
use kirana_storage::postgres::replicas::ReplicaSettings;
use kirana_storage::postgres::shard::{PgShard, emit, stores};
use kirana_storage::postgres::testing::PgPair;
use kirana_storage::postgres::testing::TempDb;
use kirana_storage::{ShardId, ShardLog, StorageError, StoreScope};
use pg_db::{at, pg_shard};

async fn cluster(shards: Vec<ShardUrls>, replicas: ReplicaSettings) -> (PgCluster, TempDb) {
    let control = TempDb::create().await;
    let mut config = PgConfig::new(control.url(), shards);
    config.replicas = replicas;
    (open(&config).await.expect("open"), control)
}

async fn store(c: &PgCluster) -> (MerchantId, StoreScope) {
    let owner = MerchantId::generate();
    let new =
        NewStore { name: "Corner Shop".into(), slug: None, custom_domain: None, settings: StoreSettings::default() };
    let s = c.storage.create_store(owner, new, at(0)).await.unwrap();
    (owner, c.storage.scope_for_owner(owner, s.id).await.unwrap())
}

fn product(title: &str) -> ProductChange {
    ProductChange {
        title: Some(title.into()),
        variants: Some(vec![NewVariant {
            id: None,
            options: vec![],
            sku: None,
            price: Amount::from_stored(1000),
            compare_at_price: None,
            stock: None,
        }]),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_read_only_up_to_what_no_running_transaction_can_still_fill() {
    let (db, pool) = pg_shard(8).await;
    let background = PgPool::new(&db.url(), PoolRole::Background(ShardId(0)), PoolSettings::default()).unwrap();
    let shard = PgShard::new(ShardId(0), pool, background, vec![], ReplicaSettings::default());
    let store = StoreId::generate();
    {
        let mut c = shard.primary().get().await.unwrap();
        let t = c.transaction().await.unwrap();
        stores::insert(&t, store, MerchantId::generate(), "s", &StoreSettings::default(), at(0)).await.unwrap();
        t.commit().await.unwrap();
    }
    let base = shard.outbox_after(0, 100).await.unwrap().last().unwrap().seq;

    // T1 takes the next position and stays open; T2 takes the one after and commits.
    let mut c1 = shard.primary().get().await.unwrap();
    let t1 = c1.transaction().await.unwrap();
    stores::fence(&t1, store).await.unwrap();
    emit(&t1, store, "test.first", at(1), serde_json::json!({})).await.unwrap();
    {
        let mut c2 = shard.primary().get().await.unwrap();
        let t2 = c2.transaction().await.unwrap();
        stores::fence(&t2, store).await.unwrap();
        emit(&t2, store, "test.second", at(2), serde_json::json!({})).await.unwrap();
        t2.commit().await.unwrap();
    }
    // A plain read by position would hand out T2's event and move past T1's for ever.
    for _ in 0..3 {
        assert_eq!(
            shard.outbox_after(base, 100).await.unwrap(),
            vec![],
            "nothing past the open transaction's position"
        );
    }
    t1.commit().await.unwrap();
    let kinds: Vec<String> = shard.outbox_after(base, 100).await.unwrap().into_iter().map(|l| l.event.kind).collect();
    assert_eq!(kinds, ["test.first", "test.second"]);

    // A position given up by a rollback is passed over, but only once every transaction that
    // was running when the gap was seen has ended.
    let base = shard.outbox_stats().await.unwrap().last_seq;
    {
        let mut c3 = shard.primary().get().await.unwrap();
        let t3 = c3.transaction().await.unwrap();
        stores::fence(&t3, store).await.unwrap();
        emit(&t3, store, "test.rolled-back", at(3), serde_json::json!({})).await.unwrap();
        t3.rollback().await.unwrap();
    }
    let mut c5 = shard.primary().get().await.unwrap();
    let bystander = c5.transaction().await.unwrap();
    stores::fence(&bystander, store).await.unwrap(); // has a transaction id, holds no position
    {
        let mut c4 = shard.primary().get().await.unwrap();
        let t4 = c4.transaction().await.unwrap();
        stores::fence(&t4, store).await.unwrap();
        emit(&t4, store, "test.after-gap", at(4), serde_json::json!({})).await.unwrap();
        t4.commit().await.unwrap();
    }
    assert_eq!(shard.outbox_after(base, 100).await.unwrap(), vec![], "the gap may still be filled");
    bystander.commit().await.unwrap();
    // Snapshots are server-wide: other tests' transactions on the shared server may hold the
    // gap a little longer; it must open once they end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let kinds = loop {
        let kinds: Vec<String> =
            shard.outbox_after(base, 100).await.unwrap().into_iter().map(|l| l.event.kind).collect();
        if !kinds.is_empty() || Instant::now() > deadline {
            break kinds;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(kinds, ["test.after-gap"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_store_that_moved_away_is_refused_whole_and_the_node_forgets_the_entry() {
    let db = TempDb::create().await;
    let (c, _control) = cluster(vec![ShardUrls { primary: db.url(), replicas: vec![] }], Default::default()).await;
    let (_, scope) = store(&c).await;
    let shard = c.storage.shard(&scope);
    shard
        .create_category(&scope, CategoryChange { name: Some("Tea".into()), ..Default::default() }, at(1))
        .await
        .unwrap();

    let forgotten = Arc::new(Mutex::new(Vec::new()));
    let seen = forgotten.clone();
    c.shards[0].set_on_moved(Arc::new(move |s| seen.lock().unwrap().push(s)));
    let admin = c.shards[0].primary().get().await.unwrap();
    admin.execute("UPDATE stores SET moved_to = 7 WHERE store_id = $1", &[&scope.store_id().uuid()]).await.unwrap();

    let before = shard.log().outbox_stats().await.unwrap().rows;
    let refused = shard
        .create_category(&scope, CategoryChange { name: Some("Coffee".into()), ..Default::default() }, at(2))
        .await;
    assert!(
        matches!(refused, Err(StorageError::Moved { store, to: ShardId(7) }) if store == scope.store_id()),
        "{refused:?}"
    );
    assert_eq!(*forgotten.lock().unwrap(), vec![scope.store_id()]);
    assert_eq!(shard.log().outbox_stats().await.unwrap().rows, before, "nothing was written");
    let names: Vec<String> =
        shard.categories(&scope, Default::default()).await.unwrap().items.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["Tea"]);
}

/// Polls every 20 ms for at most 15 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replica_reads(c: &PgCluster) -> u64 {
    c.shards[0].replica_report()[0].reads
}

fn in_rotation(c: &PgCluster) -> bool {
    c.shards[0].replica_report()[0].in_rotation
}

/// Runs `f` as a request at `level` would, returning its result and the write token it earned.
async fn as_request<T>(level: Consistency, f: impl Future<Output = T>) -> (T, Option<WriteToken>) {
    let ctx = ReadContext::new(level);
    let out = consistency::scope(ctx.clone(), f).await;
    (out, ctx.written())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_consistency_and_lag_across_a_real_replica() {
    let pair = PgPair::start();
    let settings = ReplicaSettings {
        policy: LagPolicy { max_bytes: 16 << 20, max_seconds: 5.0 },
        probe_every: Duration::from_millis(50),
        probe_timeout: Duration::from_secs(2),
        // As roomy as the probe's: this test is about lag, not slowness, on a busy machine.
        read_deadline: Duration::from_secs(2),
    };
    let (c, _control) =
        cluster(vec![ShardUrls { primary: pair.primary_url(), replicas: vec![pair.replica_url()] }], settings).await;
    assert_eq!(c.shards[0].primary().role(), PoolRole::Primary(ShardId(0)));
    let (_, scope) = store(&c).await;
    let shard = c.storage.shard(&scope);
    let p = shard.create_product(&scope, product("Masala chai"), at(1)).await.unwrap();
    let bounded = Consistency::Replica { after: None };

    // Streaming and caught up: storefront reads within the bound are served by the replica.
    eventually("the replica is in rotation", async || {
        c.shards[0].probe_now().await;
        in_rotation(&c)
    })
    .await;
    let before = replica_reads(&c);
    let (title, _) = as_request(bounded, async { shard.product(&scope, p.id).await.map(|p| p.title) }).await;
    // The replica may not have replayed the product yet (bounded staleness): poll until it has.
    if title.is_err() {
        eventually("the replica has the product", async || {
            as_request(bounded, async { shard.product(&scope, p.id).await }).await.0.is_ok()
        })
        .await;
    }
    assert!(replica_reads(&c) > before, "a bounded read went to the replica");

    // Strong reads never touch it.
    let before = replica_reads(&c);
    as_request(Consistency::Strong, async { shard.product(&scope, p.id).await.unwrap() }).await;
    assert_eq!(replica_reads(&c), before);

    // Replay paused: the replica falls behind and leaves rotation at the next probe.
    pair.pause_replay();
    let change = ProductChange { title: Some("Masala chai, 250 g".into()), ..Default::default() };
    let (updated, token) =
        as_request(Consistency::Strong, async { shard.update_product(&scope, p.id, change, at(2)).await.unwrap() })
            .await;
    let token = token.expect("a write inside a request earns a token");
    assert_eq!(token.shard, ShardId(0));
    eventually("the paused replica leaves rotation", async || {
        c.shards[0].probe_now().await;
        !in_rotation(&c)
    })
    .await;
    let report = &c.shards[0].replica_report()[0];
    let health = report.health.as_ref().expect("the paused replica still answers probes");
    assert_eq!(health.state.to_string(), "replay paused", "{health}");

    // The caller's read after its own write never sees the old value; neither does a bounded
    // read: both go to the primary while the replica is out.
    let before = (replica_reads(&c), c.shards[0].fallback_reads());
    for level in [Consistency::Replica { after: Some(token) }, bounded] {
        let (title, _) = as_request(level, async { shard.product(&scope, p.id).await.unwrap().title }).await;
        assert_eq!(title, updated.title, "{level:?}");
    }
    assert_eq!(replica_reads(&c), before.0, "the laggard served nothing");
    assert_eq!(c.shards[0].fallback_reads(), before.1 + 2);

    // Replay resumed: it returns once caught up, and then serves the caller's token.
    pair.resume_replay();
    eventually("the replica is back in rotation past the token", async || {
        c.shards[0].probe_now().await;
        in_rotation(&c) && c.shards[0].replica_report()[0].health.as_ref().is_some_and(|h| h.caught_up_with(token.lsn))
    })
    .await;
    let before = replica_reads(&c);
    let (title, _) = as_request(Consistency::Replica { after: Some(token) }, async {
        shard.product(&scope, p.id).await.unwrap().title
    })
    .await;
    assert_eq!(title, updated.title);
    assert_eq!(replica_reads(&c), before + 1, "the caught-up replica served the caller's read");

    // Every replica gone: reads still succeed, on the primary.
    pair.kill_replica();
    eventually("the dead replica leaves rotation", async || {
        c.shards[0].probe_now().await;
        !in_rotation(&c)
    })
    .await;
    let (title, _) = as_request(bounded, async { shard.product(&scope, p.id).await.unwrap().title }).await;
    assert_eq!(title, updated.title);
    assert!(c.shards[0].replica_report()[0].error.is_some(), "the report says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_fails_a_read_is_left_for_the_primary_at_once() {
    let pair = PgPair::start();
    let settings = ReplicaSettings {
        probe_timeout: Duration::from_secs(2),
        read_deadline: Duration::from_secs(2),
        ..Default::default()
    };
    let (c, _control) =
        cluster(vec![ShardUrls { primary: pair.primary_url(), replicas: vec![pair.replica_url()] }], settings).await;
    let (_, scope) = store(&c).await;
    let shard = c.storage.shard(&scope);
    let p = shard.create_product(&scope, product("Ginger tea"), at(1)).await.unwrap();
    eventually("the replica has the product and is in rotation", async || {
        c.shards[0].probe_now().await;
        in_rotation(&c)
            && as_request(Consistency::Replica { after: None }, async { shard.product(&scope, p.id).await })
                .await
                .0
                .is_ok()
    })
    .await;
    // The prober has not noticed yet: the next read finds the replica dead and retries on the
    // primary, and the replica is out of rotation without waiting for a probe.
    pair.kill_replica();
    let (title, _) =
        as_request(Consistency::Replica { after: None }, async { shard.product(&scope, p.id).await.unwrap().title })
            .await;
    assert_eq!(title, "Ginger tea");
    assert!(!in_rotation(&c));
}

fn buyer(n: usize) -> kirana_domain::cart::Checkout {
    use kirana_domain::cart::{Checkout, CheckoutCustomer};
    use kirana_domain::order::{Address, PaymentMethod};
    Checkout {
        customer: CheckoutCustomer {
            name: format!("Buyer {n}"),
            phone: kirana_domain::Phone::parse(&format!("+9198{:08}", n)).unwrap(),
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

/// The whole path a node takes: checkouts through `Storage` and `PgShard` (fence, `Moved`,
/// directory cache dropped, retried with the same idempotency key on the new shard) while the
/// store moves. Nodes cache the directory for a minute here, so only the fence can send a
/// writer to the new shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_through_storage_keep_going_while_the_store_moves() {
    use kirana_domain::cart::Quantity;
    use kirana_storage::IdempotencyKey;
    use kirana_storage::postgres::moves::Mover;
    use kirana_storage::postgres::pool::PgPool;

    let (a, b) = (TempDb::create().await, TempDb::create().await);
    let control = TempDb::create().await;
    let mut config = PgConfig::new(
        control.url(),
        vec![ShardUrls { primary: a.url(), replicas: vec![] }, ShardUrls { primary: b.url(), replicas: vec![] }],
    );
    config.directory_ttl = Duration::from_secs(60);
    let c = open(&config).await.unwrap();
    let (owner, scope) = store(&c).await;
    let from = scope.shard();
    let to = ShardId(1 - from.0);
    let mut change = product("Flash sale tea");
    change.variants.as_mut().unwrap()[0].stock = Some(500);
    let p = c.storage.shard(&scope).create_product(&scope, change, at(1)).await.unwrap();
    let variant = p.variants[0].id;
    let store_id = scope.store_id();

    let buyers = 6;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..buyers {
        let (storage, stop) = (c.storage.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut placed = Vec::new();
            let mut refused = 0;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = IdempotencyKey { key: format!("w{w}-{n}"), fingerprint: [w as u8; 32] };
                let token = [n as u8; 32];
                // Each step retried on a refusal: the node re-reads the directory first.
                let mut step = 0;
                let mut cart = None;
                loop {
                    let scope = storage.scope_for_owner(owner, store_id).await.unwrap();
                    let shard = storage.shard(&scope);
                    let r = match step {
                        0 => shard.create_cart(&scope, token, at(2)).await.map(|c| {
                            cart = Some(c.id);
                        }),
                        1 => shard
                            .set_cart_item(&scope, cart.unwrap(), token, variant, Quantity::parse(1).unwrap(), at(2))
                            .await
                            .map(|_| ()),
                        _ => match shard
                            .checkout(&scope, cart.unwrap(), token, buyer(w * 10_000 + n), Some(key.clone()), at(3))
                            .await
                        {
                            Ok((order, _)) => {
                                placed.push(order.id);
                                break;
                            }
                            Err(e) => Err(e),
                        },
                    };
                    match r {
                        Ok(()) => step += 1,
                        Err(StorageError::Moved { .. }) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => panic!("buyer {w}: {e}"),
                    }
                }
            }
            (placed, refused)
        }));
    }
    // Let the buyers get going, then move the store under them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pool = |url: String, role| Arc::new(PgPool::new(&url, role, Default::default()).unwrap());
    let mover = Mover::new(
        pool(control.url(), PoolRole::Directory),
        [
            (ShardId(0), pool(a.url(), PoolRole::Primary(ShardId(0)))),
            (ShardId(1), pool(b.url(), PoolRole::Primary(ShardId(1)))),
        ]
        .into_iter()
        .collect(),
    )
    .with_cleanup_delay(Duration::ZERO);
    let report = mover.move_store(scope.store_id(), to).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let mut refusals = 0;
    for t in tasks {
        let (placed, refused) = t.await.unwrap();
        acknowledged.extend(placed);
        refusals += refused;
    }

    let now = c.storage.scope_for_owner(owner, scope.store_id()).await.unwrap();
    assert_eq!(now.shard(), to, "the directory names the new shard");
    let shard = c.storage.shard(&now);
    let mut on_target = Vec::new();
    let mut page = kirana_domain::page::PageRequest::default();
    loop {
        let got = shard.orders(&now, None, page).await.unwrap();
        on_target.extend(got.items.iter().map(|o| o.id));
        match got.next_cursor {
            Some(next) => {
                page = kirana_domain::page::PageRequest {
                    after: Some(kirana_domain::page::Cursor::parse(&next).unwrap()),
                    ..page
                }
            }
            None => break,
        }
    }
    acknowledged.sort();
    on_target.sort();
    assert!(acknowledged.len() > buyers, "checkouts ran during the move: {}", acknowledged.len());
    assert_eq!(on_target, acknowledged, "every acknowledged order is on the new shard, once");
    let stock = shard.product(&now, p.id).await.unwrap().variants[0].stock.unwrap();
    assert_eq!(stock + acknowledged.len() as i64, 500, "stock + units sold = the stock there was");
    eprintln!(
        "{} orders, {refusals} writes refused during the cutover and retried; pause {:?}",
        acknowledged.len(),
        report.cutover_pause
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_has_its_own_connections_and_cannot_take_the_ones_writes_need() {
    let db = TempDb::create().await;
    let control = TempDb::create().await;
    let mut config = PgConfig::new(control.url(), vec![ShardUrls { primary: db.url(), replicas: vec![] }]);
    config.background_pool = 1;
    config.pool.acquire_timeout = std::time::Duration::from_millis(300);
    let c = open(&config).await.expect("open");
    let (_, scope) = store(&c).await;
    let shard = c.storage.shard(&scope);

    // The pipeline is busy: every background connection is taken (a long catch-up, say).
    let held = c.shards[0].background().get().await.unwrap();
    let starved = shard.log().outbox_stats().await;
    assert!(matches!(starved, Err(StorageError::Unavailable(_))), "background work waits its turn: {starved:?}");
    // Shoppers' and merchants' work is untouched.
    for n in 0..20 {
        let name = format!("Shelf {n}");
        shard.create_category(&scope, CategoryChange { name: Some(name), ..Default::default() }, at(n)).await.unwrap();
    }
    let health = shard.health();
    let background = health.pools.iter().find(|p| p.role == "background").expect("the background pool is reported");
    assert_eq!((background.size, background.idle, background.max_size), (1, 0, 1));
    drop(held);
    assert!(shard.log().outbox_stats().await.unwrap().rows >= 20, "and background work goes on once free");
}
