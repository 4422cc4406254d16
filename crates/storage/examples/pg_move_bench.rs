//! How fast a store moves between two PostgreSQL shards, and how long its writes pause at the
//! cutover, while a shopper keeps checking out against it.
//!
//! Creates three databases of its own on the server at 127.0.0.1:5432 (a control database and
//! two shards; dropped at the end), seeds one store with `products` products of one variant
//! each and some orders, then moves it back and forth `moves` times while a background task
//! places orders (each write fenced as the shard writes are, retried on the new shard when the
//! store has moved). Prints a markdown table.
//!
//! cargo run --release -p kirana-storage --example pg_move_bench -- [products=20000] [moves=20]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kirana_domain::cart::{Checkout, CheckoutCustomer, Quantity};
use kirana_domain::catalog::{NewVariant, ProductChange};
use kirana_domain::order::{Address, PaymentMethod};
use kirana_domain::store::StoreSettings;
use kirana_domain::{Amount, MerchantId, Phone, StoreId, Timestamp, VariantId};
use kirana_storage::postgres::moves::Mover;
use kirana_storage::postgres::pool::{PgPool, PoolRole, PoolSettings};
use kirana_storage::postgres::schema::{DIRECTORY, SHARD, migrate};
use kirana_storage::postgres::shard::{carts, catalog, checkout, stores};
use kirana_storage::{IdempotencyKey, ShardId};
use tokio_postgres::NoTls;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let products: i64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let moves: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);

    let (admin, conn) = tokio_postgres::connect(&format!("{SERVER}/postgres"), NoTls)
        .await
        .map_err(|e| format!("PostgreSQL is not reachable at {SERVER} ({e})"))?;
    tokio::spawn(conn);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let names: Vec<String> = ["control", "one", "two"].iter().map(|n| format!("kirana_bench_{n}_{tag}")).collect();
    for n in &names {
        admin.batch_execute(&format!("CREATE DATABASE {n}")).await?;
    }
    let result = bench(&names, products, moves).await;
    for n in &names {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)")).await?;
    }
    result
}

struct World {
    control: Arc<PgPool>,
    shards: HashMap<ShardId, Arc<PgPool>>,
}

impl World {
    async fn home(&self, store: StoreId) -> Result<ShardId, Failure> {
        let c = self.control.get().await?;
        let shard: i64 = c.query_one("SELECT shard FROM stores WHERE store_id = $1", &[&store.uuid()]).await?.get(0);
        Ok(ShardId(shard as u32))
    }
}

async fn bench(names: &[String], products: i64, moves: usize) -> Result<(), Failure> {
    let settings =
        PoolSettings { max_size: 8, acquire_timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(5) };
    let mut pools = vec![];
    for (i, n) in names.iter().enumerate() {
        let url = format!("{SERVER}/{n}");
        let (mut c, conn) = tokio_postgres::connect(&url, NoTls).await?;
        tokio::spawn(conn);
        migrate(&mut c, if i == 0 { DIRECTORY } else { SHARD }).await?;
        let role = if i == 0 { PoolRole::Directory } else { PoolRole::Primary(ShardId(i as u32)) };
        pools.push(Arc::new(PgPool::new(&url, role, settings)?));
    }
    let world = Arc::new(World {
        control: pools[0].clone(),
        shards: HashMap::from([(ShardId(1), pools[1].clone()), (ShardId(2), pools[2].clone())]),
    });
    let mover = Mover::new(world.control.clone(), world.shards.clone()).with_cleanup_delay(Duration::ZERO);

    // The store, on shard 1.
    let t0 = Instant::now();
    let store = StoreId::generate();
    let owner = MerchantId::generate();
    let now = Timestamp::from_millis(1_750_000_000_000);
    {
        let mut c = pools[1].get().await?;
        let t = c.transaction().await?;
        stores::insert(&t, store, owner, "Bench", &StoreSettings::default(), now).await?;
        t.commit().await?;
        world
            .control
            .get()
            .await?
            .execute(
                "INSERT INTO stores (store_id, shard, owner_id, created_at) VALUES ($1, 1, $2, $3)",
                &[&store.uuid(), &owner.uuid(), &now.millis()],
            )
            .await?;
        // The catalog in bulk: the move copies rows, however they were written.
        c.execute(
            "WITH p AS (
                 INSERT INTO products (store_id, product_id, title, description, status, category_id, images, options, created_at, updated_at)
                 SELECT $1, gen_random_uuid(), 'Product ' || i, repeat('words ', 20), 'active', NULL,
                        '[\"https://img.example/p.jpg\"]', '[]', $3, $3
                 FROM generate_series(1::bigint, $2::bigint) i
                 RETURNING product_id)
             INSERT INTO variants (store_id, variant_id, product_id, position, options, sku, price, compare_at_price, stock)
             SELECT $1, gen_random_uuid(), product_id, 0, '[]', NULL, 10000, NULL, 100 FROM p",
            &[&store.uuid(), &products, &now.millis()],
        )
        .await?;
        let t = c.transaction().await?;
        let hot = catalog::create_product(
            &t,
            store,
            ProductChange {
                title: Some("Hot".into()),
                images: Some(vec![]),
                options: Some(vec![]),
                variants: Some(vec![NewVariant {
                    id: None,
                    options: vec![],
                    sku: Some("HOT".into()),
                    price: Amount::from_stored(5_000),
                    compare_at_price: None,
                    stock: Some(10_000_000),
                }]),
                ..Default::default()
            },
            now,
        )
        .await?;
        t.commit().await?;
        drop(c);
        let variant = hot.variants[0].id;
        for i in 0..200 {
            place(&world, store, variant, i, now).await?;
        }
        let seeded = t0.elapsed();
        let c = pools[1].get().await?;
        let rows: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM products WHERE store_id = $1) + (SELECT count(*) FROM variants WHERE store_id = $1)
                      + (SELECT count(*) FROM orders WHERE store_id = $1)",
                &[&store.uuid()],
            )
            .await?
            .get(0);
        eprintln!("seeded {rows} product, variant and order rows in {seeded:?}");

        // A shopper checking out all along.
        let stop = Arc::new(AtomicBool::new(false));
        let shopper = {
            let (world, stop) = (world.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut placed, mut refused, mut slowest) = (0u64, 0u64, Duration::ZERO);
                let mut i = 1_000;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    refused += place(&world, store, variant, i, now).await?;
                    slowest = slowest.max(t.elapsed());
                    placed += 1;
                    i += 1;
                }
                Ok::<_, Failure>((placed, refused, slowest))
            })
        };

        let mut reports = vec![];
        for m in 0..moves {
            let to = if m % 2 == 0 { ShardId(2) } else { ShardId(1) };
            let r = mover.move_store(store, to).await?;
            eprintln!(
                "move {:>2} -> shard {}: {} rows, copy {:?}, {} rounds / {} changes, pause {:?}, total {:?}",
                m + 1,
                to.0,
                r.rows_copied,
                r.copy,
                r.catch_up_rounds,
                r.changes_applied,
                r.cutover_pause,
                r.total
            );
            reports.push(r);
        }
        stop.store(true, Ordering::Relaxed);
        let (placed, refused, slowest) = shopper.await??;

        let mut rates: Vec<f64> = reports.iter().map(|r| r.rows_copied as f64 / r.copy.as_secs_f64()).collect();
        let mut pauses: Vec<Duration> = reports.iter().map(|r| r.cutover_pause).collect();
        let mut totals: Vec<Duration> = reports.iter().map(|r| r.total).collect();
        rates.sort_by(f64::total_cmp);
        pauses.sort();
        totals.sort();
        let rows = reports.iter().map(|r| r.rows_copied).max().unwrap_or(0);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!("`cargo run --release -p kirana-storage --example pg_move_bench -- {products} {moves}`\n");
        println!(
            "| moves | rows (last move) | copy rate p50 (min) | cutover pause p50 | pause max | move total p50 | checkouts during | fenced retries | slowest checkout |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {moves} | {rows} | {:.0} rows/s ({:.0}) | {} | {} | {} | {placed} | {refused} | {} |",
            rates[rates.len() / 2],
            rates[0],
            ms(pauses[pauses.len() / 2]),
            ms(pauses[pauses.len() - 1]),
            ms(totals[totals.len() / 2]),
            ms(slowest),
        );
    }
    for p in &pools {
        p.close();
    }
    Ok(())
}

/// One order of the hot product, each write fenced as a shard write is; returns how many
/// times a write was refused because the store had moved.
async fn place(world: &World, store: StoreId, variant: VariantId, i: u64, now: Timestamp) -> Result<u64, Failure> {
    let mut token = [0u8; 32];
    token[..8].copy_from_slice(&i.to_le_bytes());
    let req = Checkout {
        customer: CheckoutCustomer {
            name: "Bench".into(),
            phone: Phone::parse(&format!("+9198{:08}", i % 100_000_000)).map_err(|e| format!("{e:?}"))?,
            email: None,
        },
        address: Address {
            line1: "1 Main Road".into(),
            line2: None,
            landmark: None,
            city: "Pune".into(),
            state: None,
            postal_code: "411001".into(),
            country: "IN".into(),
        },
        payment_method: PaymentMethod::Cod,
        coupon_code: None,
        note: None,
    };
    let idem = IdempotencyKey { key: format!("bench-{i}"), fingerprint: [1; 32] };
    let mut refused = 0;
    let mut cart = None;
    for step in 0..3 {
        loop {
            let pool = &world.shards[&world.home(store).await?];
            let mut c = pool.get().await?;
            let t = c.transaction().await?;
            let fence =
                t.query_opt("SELECT moved_to FROM stores WHERE store_id = $1 FOR KEY SHARE", &[&store.uuid()]).await?;
            if !matches!(fence.map(|r| r.get::<_, Option<i64>>(0)), Some(None)) {
                t.rollback().await?;
                refused += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            match step {
                0 => cart = Some(carts::create(&t, store, token, now).await?.id),
                1 => {
                    let q = Quantity::parse(1).map_err(|e| format!("{e:?}"))?;
                    carts::set_item(&t, store, cart.ok_or("no cart")?, token, variant, q, now).await?;
                }
                _ => {
                    checkout::checkout(&t, store, cart.ok_or("no cart")?, token, &req, Some(&idem), now).await?;
                }
            }
            t.commit().await?;
            break;
        }
    }
    Ok(refused)
}
