//! The embedded pipeline while a store moves between PostgreSQL shards: the target's readers
//! hold the store's copied events until the directory flips, the source's skip them after, and
//! the sales rollups on the new shard count every acknowledged order exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kirana_domain::cart::{CheckoutInput, Quantity};
use kirana_domain::catalog::ProductInput;
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, Phone, SystemClock};
use kirana_events::consumers::{Consumer, SalesAnalytics};
use kirana_events::embedded::{Reader, ReaderConfig};
use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
use kirana_storage::postgres::moves::Mover;
use kirana_storage::postgres::pool::{PgPool, PoolRole};
use kirana_storage::postgres::testing::TempDb;
use kirana_storage::{IdempotencyKey, ShardId, StorageError};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_count_every_order_once_across_a_move() {
    let dbs = [TempDb::create().await, TempDb::create().await, TempDb::create().await];
    let urls = dbs[1..].iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
    let cluster = open(&PgConfig::new(dbs[0].url(), urls)).await.unwrap();
    let storage = cluster.storage.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let phone = Phone::parse("+919800000042").unwrap();
    let owner = storage.directory().merchant_for_phone(&phone, clock.now()).await.unwrap().0.id;
    let new = StoreInput { name: Some("Moving Tea".into()), ..StoreInput::default() }.into_new().unwrap();
    let store = storage.create_store(owner, new, clock.now()).await.unwrap();
    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
    let from = scope.shard();
    let to = ShardId(1 - from.0);
    let input: ProductInput =
        serde_json::from_value(json!({ "title": "Tea", "price": 25_000, "stock": 100_000 })).unwrap();
    let product =
        storage.shard(&scope).create_product(&scope, input.into_change(true).unwrap(), clock.now()).await.unwrap();
    let variant = product.variants[0].id;

    // Readers on both shards, stepping all along.
    let stop = Arc::new(AtomicBool::new(false));
    let consumer: Arc<dyn Consumer> = Arc::new(SalesAnalytics);
    let mut readers = Vec::new();
    for shard in 0..2 {
        let cfg = ReaderConfig { batch: 50, ..ReaderConfig::default() };
        let mut reader = Reader::new(consumer.clone(), storage.clone(), shard, cfg, clock.clone());
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // As `Reader::run` does: a store frozen for the move mid-batch is read again
                // once the directory says where it went.
                match reader.step().await {
                    Ok(_) | Err(kirana_storage::StorageError::Moved { .. }) => {}
                    Err(e) => panic!("reader failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reader
        }));
    }

    // A shopper checking out in a loop, retrying a refused write on the new shard.
    let buying = Arc::new(AtomicBool::new(true));
    let shopper = {
        let (storage, buying, clock) = (storage.clone(), buying.clone(), clock.clone());
        tokio::spawn(async move {
            let mut placed = 0u32;
            let mut n = 0u8;
            while buying.load(Ordering::Relaxed) {
                n = n.wrapping_add(1);
                let token = [n; 32];
                let key = IdempotencyKey { key: format!("k{placed}-{n}"), fingerprint: [n; 32] };
                let mut cart = None;
                let mut step = 0;
                loop {
                    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
                    let shard = storage.shard(&scope);
                    let r = match step {
                        0 => shard.create_cart(&scope, token, clock.now()).await.map(|c| cart = Some(c.id)),
                        1 => shard
                            .set_cart_item(
                                &scope,
                                cart.unwrap(),
                                token,
                                variant,
                                Quantity::parse(2).unwrap(),
                                clock.now(),
                            )
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
                                .checkout(
                                    &scope,
                                    cart.unwrap(),
                                    token,
                                    input.parse().unwrap(),
                                    Some(key.clone()),
                                    clock.now(),
                                )
                                .await
                                .map(|_| ())
                        }
                    };
                    match r {
                        Ok(()) if step == 2 => {
                            placed += 1;
                            break;
                        }
                        Ok(()) => step += 1,
                        Err(StorageError::Moved { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Err(e) => panic!("checkout: {e}"),
                    }
                }
            }
            placed
        })
    };

    tokio::time::sleep(Duration::from_millis(400)).await;
    let pool = |url: String, role| Arc::new(PgPool::new(&url, role, Default::default()).unwrap());
    let shards: HashMap<ShardId, Arc<PgPool>> = [
        (ShardId(0), pool(dbs[1].url(), PoolRole::Primary(ShardId(0)))),
        (ShardId(1), pool(dbs[2].url(), PoolRole::Primary(ShardId(1)))),
    ]
    .into_iter()
    .collect();
    let mover = Mover::new(pool(dbs[0].url(), PoolRole::Directory), shards).with_cleanup_delay(Duration::ZERO);
    mover.move_store(store.id, to).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    buying.store(false, Ordering::Relaxed);
    let placed = shopper.await.unwrap();
    assert!(placed > 2, "orders were placed around the move: {placed}");

    // Let the readers finish whatever is left, then stop them.
    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
    assert_eq!(scope.shard(), to);
    let day = kirana_domain::analytics::day_of(clock.now().millis());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let totals = loop {
        let a = storage.shard(&scope).analytics(&scope, day - 1, day + 1).await.unwrap();
        if a.totals.orders >= i64::from(placed) || std::time::Instant::now() > deadline {
            // A little longer: a double count would show up now.
            tokio::time::sleep(Duration::from_millis(300)).await;
            break storage.shard(&scope).analytics(&scope, day - 1, day + 1).await.unwrap().totals;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let mut orders = 0;
    let mut page = kirana_domain::page::PageRequest::default();
    loop {
        let got = storage.shard(&scope).orders(&scope, None, page).await.unwrap();
        orders += got.items.len();
        match got.next_cursor {
            Some(c) => page.after = Some(kirana_domain::page::Cursor::parse(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(orders, placed as usize, "every acknowledged order is on the new shard, once");
    assert_eq!(totals.orders, i64::from(placed), "every acknowledged order counted once on the new shard");
    assert_eq!(totals.revenue, i64::from(placed) * 2 * 25_000);
}
