//! A shard and the control database under pg_auto_failover (a monitor, a primary and a
//! synchronous standby each, all of the test's own): their primaries are killed while shoppers
//! check out, the standbys are promoted, and kirana follows the new primaries without a restart
//! or a configuration change (multi-host URLs with `target_session_attrs`). Every checkout that
//! was acknowledged is there afterwards, once; the write outage is measured.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kirana_domain::cart::{CheckoutInput, Quantity};
use kirana_domain::catalog::ProductInput;
use kirana_domain::page::{Cursor, PageRequest};
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, OrderId, Phone, SystemClock};
use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
use kirana_storage::postgres::testing::AutoFailover;
use kirana_storage::{IdempotencyKey, Storage, StorageError};
use serde_json::json;
use tokio::sync::Mutex;

/// Checks out one order, retrying its refusals (503s) with the same idempotency key until it is
/// acknowledged: what a shopper's app does. Returns the order and when it was first refused, if
/// it was.
async fn buy(
    storage: &Storage,
    owner: kirana_domain::MerchantId,
    store: kirana_domain::StoreId,
    variant: kirana_domain::VariantId,
    n: u64,
) -> (OrderId, Option<Instant>) {
    let clock = SystemClock;
    let token = [(n % 250) as u8 + 1; 32];
    let key = IdempotencyKey { key: format!("order-{n}"), fingerprint: [7; 32] };
    let mut refused_at = None;
    let mut cart = None;
    let mut step = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "order {n} was refused for 90 s: the shard never came back");
        let r: Result<Option<OrderId>, StorageError> = async {
            let scope = storage.scope_for_owner(owner, store).await?;
            let shard = storage.shard(&scope);
            match step {
                0 => {
                    cart = Some(shard.create_cart(&scope, token, clock.now()).await?.id);
                    Ok(None)
                }
                1 => {
                    shard
                        .set_cart_item(&scope, cart.unwrap(), token, variant, Quantity::parse(1).unwrap(), clock.now())
                        .await?;
                    Ok(None)
                }
                _ => {
                    let input: CheckoutInput = serde_json::from_value(json!({
                        "customer": { "name": "Asha Rao", "phone": "+919812345678" },
                        "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
                        "payment_method": "cod"
                    }))
                    .unwrap();
                    let (order, _) = shard
                        .checkout(&scope, cart.unwrap(), token, input.parse().unwrap(), Some(key.clone()), clock.now())
                        .await?;
                    Ok(Some(order.id))
                }
            }
        }
        .await;
        match r {
            Ok(Some(id)) => return (id, refused_at),
            Ok(None) => step += 1,
            Err(StorageError::Unavailable(_) | StorageError::Moved { .. }) => {
                refused_at.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The cart was taken by the first attempt of a checkout whose answer was lost: the
            // idempotency key finds its order.
            Err(e) => panic!("order {n}, step {step}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_promotes_its_standby_and_no_acknowledged_order_is_lost() {
    let af = Arc::new(tokio::task::spawn_blocking(|| AutoFailover::start(&["control", "s0"])).await.unwrap());
    let mut pg = PgConfig::new(
        af.url("control"),
        vec![ShardUrls { primary: af.url("s0"), replicas: vec![af.standby_url("s0")] }],
    );
    pg.pool.acquire_timeout = Duration::from_secs(2);
    pg.pool.connect_timeout = Duration::from_secs(1);
    pg.primary_deadline = Duration::from_secs(3);
    let cluster = open(&pg).await.expect("open the cluster through the multi-host URLs");
    let storage = cluster.storage.clone();
    let clock = SystemClock;
    let owner = storage
        .directory()
        .merchant_for_phone(&Phone::parse("+919800000099").unwrap(), clock.now())
        .await
        .unwrap()
        .0
        .id;
    let new = StoreInput { name: Some("Failover Foods".into()), ..StoreInput::default() }.into_new().unwrap();
    let store = storage.create_store(owner, new, clock.now()).await.unwrap().id;
    let scope = storage.scope_for_owner(owner, store).await.unwrap();
    let input: ProductInput =
        serde_json::from_value(json!({ "title": "Poha", "price": 4000, "stock": 100_000 })).unwrap();
    let variant = storage
        .shard(&scope)
        .create_product(&scope, input.into_change(true).unwrap(), clock.now())
        .await
        .unwrap()
        .variants[0]
        .id;

    // Shoppers buy all along; every acknowledged order is noted.
    let acked: Arc<Mutex<Vec<OrderId>>> = Arc::default();
    let outages: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let buying = Arc::new(AtomicBool::new(true));
    let mut shoppers = Vec::new();
    for k in 0..3u64 {
        let (storage, acked, outages, buying) = (storage.clone(), acked.clone(), outages.clone(), buying.clone());
        shoppers.push(tokio::spawn(async move {
            let mut n = k;
            while buying.load(Ordering::Relaxed) {
                let (id, refused) = buy(&storage, owner, store, variant, n).await;
                if let Some(at) = refused {
                    outages.lock().await.push(at.elapsed());
                }
                acked.lock().await.push(id);
                n += 3;
            }
        }));
    }
    let wait_orders = |min: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked.lock().await.len() < min {
                assert!(Instant::now() < deadline, "orders stopped at {}", acked.lock().await.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_orders(30).await;

    // The shard's primary dies: its standby is promoted, writes resume on it.
    let old = af.primary("s0").expect("a primary");
    let killed = Instant::now();
    tokio::task::spawn_blocking({
        let (af, old) = (af.clone(), old.clone());
        move || af.kill(&old)
    })
    .await
    .unwrap();
    let gone = {
        let (af, old) = (af.clone(), old.clone());
        tokio::task::spawn_blocking(move || af.node_sql(&old, "SELECT 1")).await.unwrap()
    };
    assert!(gone.is_err(), "the killed primary answers no more: {gone:?}");
    let before = acked.lock().await.len();
    wait_orders(before + 30).await;
    let shard_outage = killed.elapsed();
    let new_primary = af.primary("s0").expect("a new primary");
    assert_ne!(new_primary, old, "the standby was promoted");

    // Then the control database's primary: sign-ins and directory lookups follow it too.
    let old_control = af.primary("control").expect("a control primary");
    tokio::task::spawn_blocking({
        let (af, old) = (af.clone(), old_control.clone());
        move || af.kill(&old)
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let phone = Phone::parse("+919800000098").unwrap();
        match storage.directory().merchant_for_phone(&phone, clock.now()).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the control database never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = acked.lock().await.len();
    wait_orders(before + 10).await;
    buying.store(false, Ordering::Relaxed);
    for s in shoppers {
        s.await.unwrap();
    }

    // Every acknowledged order is on the shard, once; none that nobody acknowledged.
    let acked: HashSet<OrderId> = acked.lock().await.iter().copied().collect();
    let mut stored = HashSet::new();
    let mut page = PageRequest::default();
    loop {
        let got = storage.shard(&scope).orders(&scope, None, page).await.unwrap();
        for o in &got.items {
            assert!(stored.insert(o.id), "order {} listed twice", o.id);
        }
        match got.next_cursor {
            Some(c) => page.after = Some(Cursor::parse(&c).unwrap()),
            None => break,
        }
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged orders lost: {lost:?}", lost.len());
    assert_eq!(stored.len(), acked.len(), "no order nobody was told of");
    let stock = storage
        .shard(&scope)
        .product(
            &scope,
            storage.shard(&scope).products(&scope, Default::default(), PageRequest::default()).await.unwrap().items[0]
                .id,
        )
        .await
        .unwrap()
        .variants[0]
        .stock;
    assert_eq!(stock, Some(100_000 - acked.len() as i64), "stock moved with every order, once");
    let worst = outages.lock().await.iter().max().copied().unwrap_or_default();
    println!(
        "failover: {} orders; shard primary killed, writes back {:?} later; longest a shopper waited {worst:?}",
        acked.len(),
        shard_outage
    );
    assert!(worst < Duration::from_secs(30), "a shopper waited {worst:?}");

    // The killed nodes come back as standbys.
    for node in [old, old_control] {
        let af = af.clone();
        tokio::task::spawn_blocking(move || af.restart(&node)).await.unwrap();
    }
    let af2 = af.clone();
    tokio::task::spawn_blocking(move || {
        af2.wait_replicating("s0");
        af2.wait_replicating("control");
    })
    .await
    .unwrap();
    drop(cluster);
    tokio::task::spawn_blocking(move || drop(af)).await.unwrap();
}
