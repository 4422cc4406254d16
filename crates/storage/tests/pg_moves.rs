//! Moving a store between two PostgreSQL shards (`postgres::moves`), against the shared server
//! at 127.0.0.1:5432: each test has its own control database and two shard databases. The
//! store's rows arrive whole, checkouts racing the move are neither lost nor doubled, a move
//! stopped in any state resumes to the same rows, and the moves that make no sense are refused.

#[macro_use]
mod pg_db;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kirana_domain::cart::{Checkout, CheckoutCustomer, Quantity};
use kirana_domain::catalog::{CategoryChange, NewVariant, ProductChange};
use kirana_domain::coupon::{CouponChange, CouponKind};
use kirana_domain::order::{Address, OrderStatus, PaymentMethod, TransitionRequest};
use kirana_domain::store::StoreSettings;
use kirana_domain::{Amount, MerchantId, OrderId, Phone, StoreId, VariantId};
use kirana_storage::MediaRecord;
use kirana_storage::payments::{NewRefund, PaymentNews};
use kirana_storage::postgres::moves::{MoveState, Mover, STORE_TABLES};
use kirana_storage::postgres::pool::{PgPool, PoolRole, PoolSettings};
use kirana_storage::postgres::schema::{DIRECTORY, migrate};
use kirana_storage::postgres::shard::{carts, catalog, checkout, coupons, extras, orders, payments, stores, webhooks};
use kirana_storage::webhooks::NewEndpoint;
use kirana_storage::{ConflictKind, IdempotencyKey, ShardId, StorageError};
use pg_db::{TempDb, at, pg_shard};
use serde_json::Value;
use tokio_postgres::NoTls;

const ONE: ShardId = ShardId(1);
const TWO: ShardId = ShardId(2);

/// A control database with the directory schema and two shards, and a mover over them.
struct World {
    _dbs: Vec<TempDb>,
    control: Arc<PgPool>,
    shards: HashMap<ShardId, Arc<PgPool>>,
    mover: Mover,
}

impl World {
    async fn new(shard_pool: usize) -> World {
        let control_db = TempDb::create().await;
        let (mut c, conn) = tokio_postgres::connect(&control_db.url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        migrate(&mut c, DIRECTORY).await.unwrap();
        let settings = PoolSettings {
            max_size: 10,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        };
        let control = Arc::new(PgPool::new(&control_db.url(), PoolRole::Directory, settings).unwrap());
        let (db1, p1) = pg_shard(shard_pool).await;
        let (db2, p2) = pg_shard(shard_pool).await;
        let shards = HashMap::from([(ONE, Arc::new(p1)), (TWO, Arc::new(p2))]);
        let mover = Mover::new(control.clone(), shards.clone()).with_cleanup_delay(Duration::ZERO);
        World { _dbs: vec![control_db, db1, db2], control, shards, mover }
    }

    fn shard(&self, s: ShardId) -> &PgPool {
        &self.shards[&s]
    }

    /// Where the directory says the store is.
    async fn home(&self, store: StoreId) -> ShardId {
        let c = self.control.get().await.unwrap();
        let shard: i64 =
            c.query_one("SELECT shard FROM stores WHERE store_id = $1", &[&store.uuid()]).await.unwrap().get(0);
        ShardId(shard as u32)
    }

    /// A store on `shard`, in the directory too.
    async fn store(&self, shard: ShardId, name: &str) -> StoreId {
        let id = StoreId::generate();
        let owner = MerchantId::generate();
        in_tx!(self.shard(shard), |t| stores::insert(&t, id, owner, name, &StoreSettings::default(), at(0)).await)
            .unwrap();
        self.control
            .get()
            .await
            .unwrap()
            .execute(
                "INSERT INTO stores (store_id, shard, owner_id, created_at) VALUES ($1, $2, $3, $4)",
                &[&id.uuid(), &i64::from(shard.0), &owner.uuid(), &at(0).millis()],
            )
            .await
            .unwrap();
        id
    }
}

/// Runs `$body` in a write transaction of `$store` on the shard the directory names, starting
/// as every shard write does: `moved_to` read under `FOR KEY SHARE`, and a store that has moved
/// refused and retried wherever the directory then says. Evaluates to (the body's result, how
/// many times the write was refused).
macro_rules! fenced {
    ($world:expr, $store:expr, |$t:ident| $body:expr) => {{
        let mut refused = 0u64;
        loop {
            let home = $world.home($store).await;
            let mut conn = $world.shard(home).get().await.unwrap();
            let $t = conn.transaction().await.unwrap();
            let fence = $t
                .query_opt("SELECT moved_to FROM stores WHERE store_id = $1 FOR KEY SHARE", &[&$store.uuid()])
                .await
                .unwrap();
            if !matches!(fence.map(|r| r.get::<_, Option<i64>>(0)), Some(None)) {
                $t.rollback().await.unwrap();
                refused += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let r = $body;
            if r.is_ok() {
                $t.commit().await.unwrap();
            } else {
                $t.rollback().await.unwrap();
            }
            break (r, refused);
        }
    }};
}

fn q(n: i64) -> Quantity {
    Quantity::parse(n).unwrap()
}

fn product(title: &str, sku: Option<String>, stock: Option<i64>) -> ProductChange {
    ProductChange {
        title: Some(title.into()),
        images: Some(vec![format!("https://img.example/{}.jpg", title.to_lowercase())]),
        options: Some(vec![]),
        variants: Some(vec![NewVariant {
            id: None,
            options: vec![],
            sku,
            price: Amount::from_stored(10_000),
            compare_at_price: None,
            stock,
        }]),
        ..Default::default()
    }
}

fn buyer(phone: u64) -> Checkout {
    Checkout {
        customer: CheckoutCustomer {
            name: "Asha".into(),
            phone: Phone::parse(&format!("+9198{:08}", phone % 100_000_000)).unwrap(),
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

/// One order of `qty` of `variant`: a cart, its item and the checkout, each a fenced write.
/// Returns the order and how many times a write was refused.
async fn order(w: &World, store: StoreId, variant: VariantId, qty: i64, n: u64, key: &str) -> (OrderId, u64) {
    let mut token = [0u8; 32];
    token[..8].copy_from_slice(&n.to_le_bytes());
    let (cart, r1) = fenced!(w, store, |t| carts::create(&t, store, token, at(2)).await);
    let cart = cart.unwrap().id;
    let (_, r2) = fenced!(w, store, |t| carts::set_item(&t, store, cart, token, variant, q(qty), at(3)).await);
    let idem = IdempotencyKey { key: key.into(), fingerprint: [7; 32] };
    let (placed, r3) =
        fenced!(w, store, |t| checkout::checkout(&t, store, cart, token, &buyer(n), Some(&idem), at(4)).await);
    (placed.unwrap().0.id, r1 + r2 + r3)
}

/// Puts rows of the store in every table a move carries.
async fn fill(w: &World, store: StoreId, products: usize) {
    let pool = w.shard(w.home(store).await);
    let category = in_tx!(pool, |t| catalog::create_category(
        &t,
        store,
        CategoryChange { name: Some("Tea".into()), description: Some("leaves".into()) },
        at(1)
    )
    .await)
    .unwrap();
    let mut first = None;
    for i in 0..products {
        let change =
            ProductChange { category_id: Some(Some(category.id)), ..product(&format!("Tea {i}"), None, Some(50)) };
        let p = in_tx!(pool, |t| catalog::create_product(&t, store, change, at(1)).await).unwrap();
        first.get_or_insert(p.variants[0].id);
    }
    in_tx!(pool, |t| coupons::create(
        &t,
        store,
        CouponChange {
            code: Some("TEN".into()),
            kind: Some(CouponKind::Percent),
            value: Some(10),
            ..Default::default()
        },
        at(1)
    )
    .await)
    .unwrap();
    let (placed, _) = order(w, store, first.unwrap(), 2, 1, "fill-1").await;
    let (paid, _) = order(w, store, first.unwrap(), 1, 2, "fill-2").await;
    // Its money: a payment captured (sale and fee), part refunded, the order ended and paid out.
    in_tx!(pool, |t| payments::open(&t, store, paid, 30_000, "INR", at(5)).await).unwrap();
    let payment = in_tx!(pool, |t| payments::for_order(&t, store, paid).await).unwrap().id;
    let news = PaymentNews {
        state: kirana_domain::payment::PaymentState::Captured,
        captured: 30_000,
        event_id: Some("evt_fill".into()),
    };
    in_tx!(pool, |t| payments::apply_news(&t, store, payment, &news, &Default::default(), at(5)).await).unwrap();
    let back = NewRefund { order_id: paid, amount: 5_000, reason: None, actor: "owner".into() };
    let refund = in_tx!(pool, |t| payments::begin_refund(&t, store, &back, at(5)).await).unwrap();
    in_tx!(pool, |t| payments::finish_refund(&t, store, refund.id, &Ok("rf_fill".to_string()), at(5)).await).unwrap();
    let cancel = TransitionRequest { to: OrderStatus::Cancelled, note: None, tracking: None };
    in_tx!(pool, |t| orders::transition(&t, store, paid, &cancel, "owner", &Default::default(), at(5)).await).unwrap();
    let payout = in_tx!(pool, |t| payments::pay_out(&t, store, at(6), at(6)).await).unwrap();
    assert!(payout.is_some(), "the ended order's money is paid out");
    let to = TransitionRequest { to: OrderStatus::Accepted, note: Some("ok".into()), tracking: None };
    in_tx!(pool, |t| orders::transition(&t, store, placed, &to, "owner", &Default::default(), at(5)).await).unwrap();
    // An open cart, with an item.
    let token = [9u8; 32];
    let cart = in_tx!(pool, |t| carts::create(&t, store, token, at(6)).await).unwrap().id;
    in_tx!(pool, |t| carts::set_item(&t, store, cart, token, first.unwrap(), q(1), at(6)).await).unwrap();
    in_tx!(pool, |t| extras::set_theme_template(&t, store, "home.html", Some("<h1>hi</h1>"), at(7)).await).unwrap();
    let media = MediaRecord { hash: "ab".repeat(32), width: 10, height: 20, bytes: 300 };
    in_tx!(pool, |t| extras::record_media(&t, store, media, at(7)).await).unwrap();
    let hook = NewEndpoint::parse("https://hooks.example.com/k", &["*".to_string()]).unwrap();
    in_tx!(pool, |t| webhooks::create(&t, store, &hook, at(8)).await).unwrap();
    // What the event consumers would have written, straight in.
    let c = pool.get().await.unwrap();
    let event = uuid::Uuid::now_v7();
    let s = store.uuid();
    c.execute(
        "INSERT INTO applied_events (store_id, consumer, event_id, applied_at) VALUES ($1, 'analytics', $2, 1)",
        &[&s, &event],
    )
    .await
    .unwrap();
    for sql in [
        "INSERT INTO sales_hourly VALUES ($1, 3600000, 2, 30000, 3)",
        "INSERT INTO sales_daily VALUES ($1, 20000, 2, 30000, 3)",
        "INSERT INTO product_sales_daily VALUES ($1, 20000, gen_random_uuid(), 'Tea 0', 3, 30000)",
        "INSERT INTO cache_versions VALUES ($1, 4)",
        "INSERT INTO notifications VALUES ($1, gen_random_uuid(), '+919800000001', 'hi', 'pending', 0, 1, NULL, 1, NULL)",
    ] {
        c.execute(sql, &[&s]).await.unwrap();
    }
    let endpoint: uuid::Uuid =
        c.query_one("SELECT endpoint_id FROM webhook_endpoints WHERE store_id = $1", &[&s]).await.unwrap().get(0);
    c.execute(
        "INSERT INTO webhook_deliveries VALUES ($1, $2, $3, 'order.placed', '{}', 'pending', 1, 5, 500, 'boom', NULL, 1)",
        &[&s, &endpoint, &event],
    )
    .await
    .unwrap();
    c.execute("INSERT INTO webhook_attempts VALUES ($1, $2, $3, 1, 2, 500, 'boom', 12)", &[&s, &endpoint, &event])
        .await
        .unwrap();
}

/// Every row of the store on a shard, table by table, as sorted JSON: the outbox without its
/// positions (each shard numbers its own), the store's row without its fence.
async fn dump(pool: &PgPool, store: StoreId) -> BTreeMap<&'static str, Value> {
    let c = pool.get().await.unwrap();
    let mut out = BTreeMap::new();
    for &t in STORE_TABLES {
        let drop = match t {
            "outbox" => " - 'seq'",
            "stores" => " - 'moved_to'",
            _ => "",
        };
        let sql = format!(
            "SELECT coalesce(jsonb_agg(x ORDER BY x::text), '[]'::jsonb)
             FROM (SELECT to_jsonb(r){drop} AS x FROM {t} r WHERE store_id = $1) s"
        );
        out.insert(t, c.query_one(&sql, &[&store.uuid()]).await.unwrap().get(0));
    }
    out
}

fn rows(d: &BTreeMap<&'static str, Value>) -> usize {
    d.values().map(|v| v.as_array().unwrap().len()).sum()
}

async fn moved_to(pool: &PgPool, store: StoreId) -> Option<i64> {
    let c = pool.get().await.unwrap();
    c.query_one("SELECT moved_to FROM stores WHERE store_id = $1", &[&store.uuid()]).await.unwrap().get(0)
}

/// What is left of a store on a shard it left: its `stores` row (the tombstone) and nothing else.
async fn assert_only_tombstone(pool: &PgPool, store: StoreId, to: ShardId) {
    let left = dump(pool, store).await;
    for (t, v) in &left {
        let n = v.as_array().unwrap().len();
        assert_eq!(n, usize::from(*t == "stores"), "{t} still holds {n} row(s) of the store on the source");
    }
    assert_eq!(moved_to(pool, store).await, Some(i64::from(to.0)));
    let c = pool.get().await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM move_changes WHERE store_id = $1) + (SELECT count(*) FROM moving_stores WHERE store_id = $1)",
            &[&store.uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no capture left behind");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_with_store_rows_is_captured_and_moved() {
    let w = World::new(2).await;
    let c = w.shard(ONE).get().await.unwrap();
    let with_store: BTreeSet<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND column_name = 'store_id'
               AND table_name NOT IN ('dead_letters', 'moving_stores', 'move_changes')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let moved: BTreeSet<String> = STORE_TABLES.iter().map(|t| t.to_string()).collect();
    assert_eq!(with_store, moved, "STORE_TABLES must list every table holding a store's rows");
    // Each has the capture trigger, told its table's primary key.
    for &t in STORE_TABLES {
        let r = c
            .query_one(
                "SELECT encode(tg.tgargs, 'escape'),
                        (SELECT string_agg(a.attname, E'\\\\000' ORDER BY k.n) || E'\\\\000'
                         FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         WHERE i.indrelid = tg.tgrelid AND i.indisprimary)
                 FROM pg_trigger tg WHERE tg.tgrelid = $1::text::regclass AND tg.tgname = 'capture_move'",
                &[&t],
            )
            .await
            .unwrap_or_else(|e| panic!("{t} has no capture_move trigger: {e}"));
        let (args, key): (String, String) = (r.get(0), r.get(1));
        assert_eq!(args, key, "{t}'s trigger arguments are its primary key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moves_whole_leaves_a_tombstone_and_never_blocks_its_neighbour() {
    let w = Arc::new(World::new(6).await);
    let store = w.store(ONE, "Movers").await;
    fill(&w, store, 40).await;
    let neighbour = w.store(ONE, "Next door").await;
    fill(&w, neighbour, 3).await;
    let before = dump(w.shard(ONE), store).await;
    for (t, v) in &before {
        assert!(!v.as_array().unwrap().is_empty(), "the test store has no {t} rows: the comparison would miss them");
    }
    let neighbour_before = dump(w.shard(ONE), neighbour).await;

    // The neighbour keeps writing all along; it must never be refused, nor wait long.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (w, stop) = (w.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut refused, mut slowest) = (0u64, 0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let (r, f) = fenced!(w, neighbour, |t| extras::set_theme_template(
                    &t,
                    neighbour,
                    &format!("page-{n}.html"),
                    Some("x"),
                    at(9)
                )
                .await);
                r.unwrap();
                slowest = slowest.max(t0.elapsed());
                refused += f;
                n += 1;
            }
            (n, refused, slowest)
        })
    };

    let report = w.mover.move_store(store, TWO).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (written, refused, slowest) = writer.await.unwrap();
    println!("{report:?}; neighbour wrote {written}, slowest {slowest:?}");
    assert_eq!(refused, 0, "the neighbour was never fenced");
    assert!(slowest < Duration::from_secs(2), "the neighbour waited {slowest:?}");
    assert_eq!((report.from, report.to, report.resumed_from), (ONE, TWO, MoveState::Copying));
    assert_eq!(report.rows_copied as usize, rows(&before));
    assert!(report.cutover_pause <= report.total);

    assert_eq!(w.home(store).await, TWO);
    assert_eq!(dump(w.shard(TWO), store).await, before, "the target holds exactly the source's rows");
    assert_eq!(moved_to(w.shard(TWO), store).await, None, "the store is writable on its new shard");
    assert_only_tombstone(w.shard(ONE), store, TWO).await;
    // The neighbour's rows are all still there (plus the pages it wrote meanwhile).
    let neighbour_after = dump(w.shard(ONE), neighbour).await;
    for (t, v) in &neighbour_before {
        if *t != "theme_templates" && *t != "outbox" && *t != "stores" {
            assert_eq!(&neighbour_after[t], v, "the neighbour's {t} changed");
        }
    }
    assert_eq!(neighbour_after["theme_templates"].as_array().unwrap().len() as u64, 1 + written);
    assert_eq!(moved_to(w.shard(ONE), neighbour).await, None);

    let journal = w.mover.moves().await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!((journal[0].store, journal[0].state, journal[0].error.as_deref()), (store, MoveState::Cleaned, None));
    assert_eq!(journal[0].rows_copied, report.rows_copied);
    assert!(journal[0].cutover_ms.is_some());

    // And back again, onto its own tombstone.
    let (placed, _) = order(&w, store, first_variant(w.shard(TWO), store).await, 1, 77, "after-move").await;
    let there = dump(w.shard(TWO), store).await;
    let back = w.mover.move_store(store, ONE).await.unwrap();
    assert_eq!((back.from, back.to), (TWO, ONE));
    assert_eq!(w.home(store).await, ONE);
    assert_eq!(dump(w.shard(ONE), store).await, there);
    assert_eq!(moved_to(w.shard(ONE), store).await, None);
    assert_only_tombstone(w.shard(TWO), store, ONE).await;
    let c = w.shard(ONE).get().await.unwrap();
    assert_eq!(orders::get(&c, store, placed).await.unwrap().id, placed);
}

async fn first_variant(pool: &PgPool, store: StoreId) -> VariantId {
    let c = pool.get().await.unwrap();
    let id: uuid::Uuid = c
        .query_one("SELECT variant_id FROM variants WHERE store_id = $1 ORDER BY variant_id LIMIT 1", &[&store.uuid()])
        .await
        .unwrap()
        .get(0);
    VariantId::from_uuid(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_racing_a_move_are_neither_lost_nor_doubled() {
    const TASKS: u64 = 8;
    const STOCK: i64 = 1_000_000;
    let w = Arc::new(World::new(10).await);
    let store = w.store(ONE, "Busy").await;
    fill(&w, store, 200).await;
    let p = in_tx!(w.shard(ONE), |t| catalog::create_product(
        &t,
        store,
        product("Hot", Some("HOT".into()), Some(STOCK)),
        at(1)
    )
    .await)
    .unwrap();
    let variant = p.variants[0].id;

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (w, stop, refused) = (w.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                let mut placed = vec![];
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n = 1_000 + task * 100_000 + i;
                    let qty = 1 + (i % 3) as i64;
                    let (id, r) = order(&w, store, variant, qty, n, &format!("k-{task}-{i}")).await;
                    refused.fetch_add(r, Ordering::Relaxed);
                    placed.push((id, qty));
                    i += 1;
                }
                placed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = w.mover.move_store(store, TWO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (id, qty) in t.await.unwrap() {
            assert!(acked.insert(id, qty).is_none(), "an order id acknowledged twice");
        }
    }
    println!(
        "{} orders acknowledged, {} fenced writes retried; {report:?}",
        acked.len(),
        refused.load(Ordering::Relaxed)
    );
    assert!(report.cutover_pause > Duration::ZERO && report.cutover_pause < Duration::from_secs(5));
    assert_eq!(w.home(store).await, TWO);

    let c = w.shard(TWO).get().await.unwrap();
    let s = store.uuid();
    let hot = p.id.uuid();
    let on_target: BTreeMap<OrderId, i64> = c
        .query(
            "SELECT o.order_id, i.quantity FROM orders o JOIN order_items i USING (store_id, order_id)
             WHERE o.store_id = $1 AND i.product_id = $2",
            &[&s, &hot],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (OrderId::from_uuid(r.get(0)), r.get(1)))
        .collect();
    assert_eq!(on_target, acked, "every acknowledged order is on the target, once, and no other");
    let r =
        c.query_one("SELECT count(*), count(DISTINCT number) FROM orders WHERE store_id = $1", &[&s]).await.unwrap();
    let (count, distinct): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(count, distinct, "order numbers stay unique across the move");
    let stock = catalog::product(&c, store, p.id).await.unwrap().variants[0].stock.unwrap();
    let sold: i64 = acked.values().sum();
    assert_eq!(stock + sold, STOCK, "stock + units sold = initial stock");
    let placed_events: i64 = c
        .query_one("SELECT count(*) FROM outbox WHERE store_id = $1 AND type = 'order.placed'", &[&s])
        .await
        .unwrap()
        .get(0);
    assert_eq!(placed_events as usize, acked.len() + 2, "one order.placed per order on the target's outbox");
    assert_only_tombstone(w.shard(ONE), store, TWO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_stopped_in_any_state_resumes_to_the_same_rows() {
    let w = World::new(4).await;
    for state in [MoveState::Copying, MoveState::CatchingUp, MoveState::Frozen, MoveState::Flipped] {
        let store = w.store(ONE, &format!("Crash {state}")).await;
        fill(&w, store, 5).await;
        let variant = first_variant(w.shard(ONE), store).await;
        w.mover.crash_after(state);
        let e = w.mover.move_store(store, TWO).await.unwrap_err();
        assert!(matches!(e, StorageError::Unavailable(_)), "{state}: {e:?}");
        let j = w.mover.moves().await.unwrap().into_iter().find(|m| m.store == store).unwrap();
        assert_eq!((j.store, j.from, j.to, j.state), (store, ONE, TWO, state));
        assert!(j.error.as_deref().unwrap_or("").contains("test hook"), "{j:?}");
        // A new move of it is refused while this one is unfinished, and leaves the journal be.
        let e = w.mover.move_store(store, TWO).await.unwrap_err();
        assert!(matches!(e, StorageError::Conflict { kind: ConflictKind::TooMany, .. }), "{e:?}");
        assert_eq!(w.mover.moves().await.unwrap().into_iter().find(|m| m.store == store).unwrap(), j);

        match state {
            MoveState::Copying | MoveState::CatchingUp => {
                // The store still sells on the source; these writes must follow it.
                assert_eq!(w.home(store).await, ONE);
                order(&w, store, variant, 1, 5, &format!("during-{state}")).await;
                let (r, refused) =
                    fenced!(w, store, |t| catalog::create_product(&t, store, product("Late", None, Some(3)), at(9))
                        .await);
                r.unwrap();
                assert_eq!(refused, 0);
            }
            MoveState::Frozen => {
                assert_eq!(moved_to(w.shard(ONE), store).await, Some(2), "frozen");
                // As if the freeze had not committed (the journal says `frozen` first): the
                // store is still writable, and the resume must freeze it again.
                let c = w.shard(ONE).get().await.unwrap();
                c.execute("UPDATE stores SET moved_to = NULL WHERE store_id = $1", &[&store.uuid()]).await.unwrap();
                order(&w, store, variant, 2, 6, "unfrozen").await;
            }
            MoveState::Flipped => assert_eq!(w.home(store).await, TWO),
            _ => unreachable!(),
        }
        let expected = dump(w.shard(ONE), store).await;
        let report = w.mover.resume(store).await.unwrap();
        assert_eq!(report.resumed_from, state);
        assert_eq!(w.home(store).await, TWO, "{state}");
        assert_eq!(dump(w.shard(TWO), store).await, expected, "resumed from {state}");
        assert_only_tombstone(w.shard(ONE), store, TWO).await;
        let j = w.mover.moves().await.unwrap().into_iter().find(|m| m.store == store).unwrap();
        assert_eq!((j.state, j.error), (MoveState::Cleaned, None));
        // Resuming a finished move changes nothing.
        assert_eq!(w.mover.resume(store).await.unwrap().resumed_from, MoveState::Cleaned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_that_make_no_sense_are_refused() {
    let w = World::new(4).await;
    let store = w.store(ONE, "Stay").await;
    let invalid = |e: StorageError, what: &str| match e {
        StorageError::Invalid(i) => assert!(format!("{i:?}").contains(what), "{i:?}"),
        other => panic!("expected Invalid ({what}), got {other:?}"),
    };
    invalid(w.mover.move_store(store, ONE).await.unwrap_err(), "already on shard 1");
    invalid(w.mover.move_store(store, ShardId(9)).await.unwrap_err(), "unknown shard 9");
    invalid(w.mover.move_store(StoreId::generate(), TWO).await.unwrap_err(), "no such store");
    invalid(w.mover.resume(store).await.unwrap_err(), "no move to resume");
    assert!(w.mover.moves().await.unwrap().is_empty(), "a refused move leaves no journal");

    // A move that is running: held up waiting for an older transaction of the source.
    let blocker_pool = w.shard(ONE);
    let mut blocker = blocker_pool.get().await.unwrap();
    let t = blocker.transaction().await.unwrap();
    t.execute("SELECT pg_current_xact_id()", &[]).await.unwrap();
    let (first, second) = tokio::join!(w.mover.move_store(store, TWO), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = w.mover.move_store(store, TWO).await;
        let resumed = w.mover.resume(store).await;
        t.commit().await.unwrap();
        (second, resumed)
    });
    first.unwrap();
    for e in [second.0.unwrap_err(), second.1.unwrap_err()] {
        match e {
            StorageError::Conflict { kind: ConflictKind::TooMany, message, .. } => {
                assert!(message.contains("already running"), "{message}")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(w.home(store).await, TWO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_arriving_on_a_shard_is_written_there_by_the_mover_alone_until_the_flip() {
    use kirana_domain::event::Event;
    use kirana_storage::postgres::replicas::ReplicaSettings;
    use kirana_storage::postgres::shard::PgShard;
    use kirana_storage::{Applied, Effect, Shard};

    let w = World::new(4).await;
    let store = w.store(ONE, "Arriving").await;
    fill(&w, store, 3).await;
    // Copied and caught up, not yet frozen: the store lives on ONE, its copy sits on TWO.
    w.mover.crash_after(MoveState::CatchingUp);
    w.mover.move_store(store, TWO).await.unwrap_err();
    assert_eq!(w.home(store).await, ONE);

    // A writer whose directory is stale, on the target: refused, sent to the source.
    let r = in_tx!(w.shard(TWO), |t| stores::fence(&t, store).await);
    assert!(matches!(r, Err(StorageError::Moved { to: ONE, .. })), "{r:?}");
    // An event consumer routed there by a stale directory: nothing of the store is written
    // (the catch-up would overwrite it: a rollup counted there would be lost).
    let url = w._dbs[2].url();
    let pool = |role| PgPool::new(&url, role, PoolSettings::default()).unwrap();
    let target = PgShard::new(
        TWO,
        pool(PoolRole::Primary(TWO)),
        pool(PoolRole::Background(TWO)),
        vec![],
        ReplicaSettings::default(),
    );
    let sales = async || -> i64 {
        let c = w.shard(TWO).get().await.unwrap();
        c.query_one("SELECT coalesce(sum(orders), 0)::bigint FROM sales_daily WHERE store_id = $1", &[&store.uuid()])
            .await
            .unwrap()
            .get(0)
    };
    let before = sales().await;
    let event = Event::new(store, "order.placed", at(50), serde_json::json!({}));
    let sale = Effect::Sales { hour: 1, day: 1, orders: 1, revenue: 500, units: 1, products: vec![] };
    let applied = kirana_storage::ShardLog::apply(
        target.log(),
        "analytics",
        vec![Applied { event: event.clone(), effects: vec![sale.clone()] }],
        vec![],
        at(50),
    )
    .await;
    assert!(matches!(applied, Err(StorageError::Moved { to: ONE, .. })), "{applied:?}");
    assert_eq!(sales().await, before, "no effect of the arriving store was written on the target");
    // The source takes writes as ever.
    in_tx!(w.shard(ONE), |t| stores::fence(&t, store).await).unwrap();

    // Once the move has flipped, the target is the store's home: both go through there.
    w.mover.resume(store).await.unwrap();
    assert_eq!(w.home(store).await, TWO);
    in_tx!(w.shard(TWO), |t| stores::fence(&t, store).await).unwrap();
    let applied = kirana_storage::ShardLog::apply(
        target.log(),
        "analytics",
        vec![Applied { event, effects: vec![sale] }],
        vec![],
        at(51),
    )
    .await;
    assert_eq!(applied.unwrap(), 1);
    assert_eq!(sales().await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_step_that_loses_a_race_is_run_again_and_one_that_keeps_losing_stops_saying_why() {
    let w = World::new(4).await;
    let lucky = w.store(ONE, "Lucky").await;
    fill(&w, lucky, 3).await;
    // Three lost races (as a deadlock with an event consumer was, before arriving stores were
    // fenced): each step is idempotent and simply runs again.
    w.mover.lose_races(3);
    w.mover.move_store(lucky, TWO).await.unwrap();
    assert_eq!(w.home(lucky).await, TWO);
    assert_only_tombstone(w.shard(ONE), lucky, TWO).await;

    // A step that keeps losing stops the move with a message an operator can act on, in the
    // error and in the journal; the move resumes from where it stopped.
    let unlucky = w.store(ONE, "Unlucky").await;
    fill(&w, unlucky, 3).await;
    let expected = dump(w.shard(ONE), unlucky).await;
    w.mover.lose_races(5);
    let e = w.mover.move_store(unlucky, TWO).await.unwrap_err().to_string();
    assert!(e.contains("copy lost a race with other transactions 5 times") && e.contains("SQLSTATE 40P01"), "{e}");
    let j = w.mover.moves().await.unwrap().into_iter().find(|m| m.store == unlucky).unwrap();
    assert_eq!(j.state, MoveState::Copying);
    assert!(j.error.as_deref().is_some_and(|m| m.contains("SQLSTATE 40P01")), "{j:?}");
    w.mover.resume(unlucky).await.unwrap();
    assert_eq!(dump(w.shard(TWO), unlucky).await, expected);
}
