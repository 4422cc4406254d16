//! `kirana seed` at the storage level: counts, distributions, consistency, and restarts.

use std::path::Path;

use kirana_domain::page::{Limit, PageRequest};
use kirana_storage::sqlite::seed::{self, Progress, SeedPlan};
use kirana_storage::sqlite::{self, SqliteOptions};
use rusqlite::Connection;

fn plan(stores: u64) -> SeedPlan {
    SeedPlan { stores, products_mean: 12.0, orders_mean: 6.0, max_products: 2_000, seed: 7, chunk: 64 }
}

fn quiet(_: &Progress) {}

fn query_i64(db: &Path, sql: &str) -> i64 {
    Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn shard_sum(dir: &Path, shards: u32, sql: &str) -> i64 {
    (0..shards).map(|i| query_i64(&dir.join(format!("shards/shard-{i:04}.db")), sql)).sum()
}

/// A fingerprint of everything seeded: equal fingerprints, equal data.
fn fingerprint(dir: &Path, shards: u32) -> Vec<i64> {
    let mut out = vec![query_i64(&dir.join("directory.db"), "SELECT count(*) FROM slugs")];
    for table in ["stores", "categories", "products", "variants", "customers", "orders", "order_items", "order_history"]
    {
        out.push(shard_sum(dir, shards, &format!("SELECT count(*) FROM {table}")));
    }
    out.push(shard_sum(dir, shards, "SELECT coalesce(sum(total), 0) % 1000000007 FROM orders"));
    out.push(shard_sum(dir, shards, "SELECT coalesce(sum(stock), 0) FROM variants"));
    out
}

#[test]
fn seeding_creates_every_store_with_the_requested_shape() {
    let dir = tempfile::tempdir().unwrap();
    let summary = seed::seed(dir.path(), 2, &plan(600), &mut quiet).unwrap();
    assert_eq!(summary.stores, 600);
    let d = dir.path().join("directory.db");
    assert_eq!(query_i64(&d, "SELECT count(*) FROM stores"), 600);
    assert_eq!(query_i64(&d, "SELECT count(*) FROM merchants"), 600);
    assert_eq!(query_i64(&d, "SELECT count(*) FROM slugs WHERE slug LIKE 'seed-%'"), 600);
    assert_eq!(shard_sum(dir.path(), 2, "SELECT count(*) FROM stores"), 600);
    // Both shards got stores, and each store's rows are on the shard the directory names.
    for i in 0..2 {
        let n = query_i64(&dir.path().join(format!("shards/shard-{i:04}.db")), "SELECT count(*) FROM stores");
        assert!(n > 200, "shard {i} holds {n} of 600 stores");
    }

    // Products per store: mean near the requested 12, median a handful, a long tail.
    let mut sizes = Vec::new();
    for i in 0..2 {
        let c = Connection::open(dir.path().join(format!("shards/shard-{i:04}.db"))).unwrap();
        let mut st = c.prepare("SELECT count(*) FROM products GROUP BY store_id").unwrap();
        sizes.extend(st.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(Result::unwrap));
    }
    assert_eq!(sizes.len(), 600, "every store has at least one product");
    sizes.sort_unstable();
    let mean = sizes.iter().sum::<i64>() as f64 / sizes.len() as f64;
    let median = sizes[sizes.len() / 2];
    assert!((8.0..=16.0).contains(&mean), "mean products per store {mean}");
    assert!(median <= 8, "median {median}: most stores have a handful");
    assert!(*sizes.last().unwrap() >= 60, "largest store has {}: the tail is heavy", sizes.last().unwrap());

    // Orders are consistent with their lines, customers and the store counter.
    let orders = shard_sum(dir.path(), 2, "SELECT count(*) FROM orders");
    assert!((orders as f64 / 600.0 - 6.0).abs() < 2.5, "{orders} orders for 600 stores");
    assert_eq!(
        shard_sum(
            dir.path(),
            2,
            "SELECT count(*) FROM orders o WHERE subtotal != (SELECT sum(line_total) FROM order_items i WHERE i.store_id = o.store_id AND i.order_id = o.order_id)"
        ),
        0
    );
    assert_eq!(
        shard_sum(dir.path(), 2, "SELECT coalesce(sum(orders_count), 0) FROM customers"),
        orders,
        "customers' order counts add up"
    );
    assert_eq!(
        shard_sum(
            dir.path(),
            2,
            "SELECT count(*) FROM stores s WHERE next_order_number != 1001 + (SELECT count(*) FROM orders o WHERE o.store_id = s.store_id)"
        ),
        0
    );
    assert_eq!(
        shard_sum(
            dir.path(),
            2,
            "SELECT count(*) FROM orders o WHERE status != (SELECT to_status FROM order_history h WHERE h.store_id = o.store_id AND h.order_id = o.order_id ORDER BY seq DESC LIMIT 1)"
        ),
        0,
        "each order's last history step is its status"
    );
    assert_eq!(shard_sum(dir.path(), 2, "SELECT count(*) FROM variants WHERE stock < 0"), 0);
    assert_eq!(shard_sum(dir.path(), 2, "SELECT count(*) FROM outbox"), 0, "a bulk import writes no events");
}

#[test]
fn a_seed_is_deterministic_and_continues_where_it_stopped() {
    let whole = tempfile::tempdir().unwrap();
    seed::seed(whole.path(), 1, &plan(300), &mut quiet).unwrap();

    // In two steps: 130 stores, then up to 300.
    let steps = tempfile::tempdir().unwrap();
    seed::seed(steps.path(), 1, &plan(130), &mut quiet).unwrap();
    let resumed = seed::seed(steps.path(), 1, &plan(300), &mut quiet).unwrap();
    assert_eq!(resumed.resumed_from, 130);
    assert_eq!(fingerprint(steps.path(), 1), fingerprint(whole.path(), 1));

    // Interrupted mid-way (the process dies between chunks), then run again.
    let broken = tempfile::tempdir().unwrap();
    let outcome = std::panic::catch_unwind(|| {
        seed::seed(broken.path(), 1, &plan(300), &mut |p: &Progress| {
            if p.stores_done >= 128 {
                panic!("simulated crash");
            }
        })
    });
    assert!(outcome.is_err());
    let done = query_i64(&broken.path().join("directory.db"), "SELECT next_index FROM seed_progress");
    assert!((128..300).contains(&done), "progress was recorded up to {done}");
    seed::seed(broken.path(), 1, &plan(300), &mut quiet).unwrap();
    assert_eq!(fingerprint(broken.path(), 1), fingerprint(whole.path(), 1));

    // A chunk whose shard rows were written but whose directory commit was lost is re-run
    // harmlessly: simulate by rolling the progress marker back one chunk.
    let c = Connection::open(broken.path().join("directory.db")).unwrap();
    c.execute("UPDATE seed_progress SET next_index = 236", []).unwrap();
    c.execute("DELETE FROM slugs WHERE CAST(substr(slug, 6) AS INTEGER) >= 236", []).unwrap();
    drop(c);
    seed::seed(broken.path(), 1, &plan(300), &mut quiet).unwrap();
    assert_eq!(fingerprint(broken.path(), 1), fingerprint(whole.path(), 1));
}

#[test]
fn a_seed_of_another_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    seed::seed(dir.path(), 1, &plan(50), &mut quiet).unwrap();
    let other = SeedPlan { products_mean: 30.0, ..plan(100) };
    let e = seed::seed(dir.path(), 1, &other, &mut quiet).unwrap_err();
    assert!(e.to_string().contains("different shape"), "{e}");
}

#[tokio::test]
async fn seeded_stores_serve_through_the_normal_storage_api() {
    let dir = tempfile::tempdir().unwrap();
    seed::seed(dir.path(), 2, &plan(40), &mut quiet).unwrap();
    let storage = sqlite::open(dir.path(), 2, &SqliteOptions::default()).unwrap();
    for i in [0, 17, 39] {
        let (scope, canonical) = storage.scope_for_slug(&format!("seed-{i}")).await.unwrap();
        assert!(canonical);
        let store = storage.store(&scope).await.unwrap();
        assert_eq!(store.slug.as_str(), format!("seed-{i}"));
        let shard = storage.shard(&scope);
        let page = PageRequest { after: None, limit: Limit::parse(Some(100)).unwrap() };
        let products = shard.products(&scope, Default::default(), page).await.unwrap();
        assert!(!products.items.is_empty());
        assert!(products.items.iter().all(|p| !p.variants.is_empty()));
        let orders = shard.orders(&scope, None, page).await.unwrap();
        for o in &orders.items {
            assert!(!o.items.is_empty() && !o.history.is_empty());
            assert_eq!(o.totals.subtotal, o.items.iter().map(|i| i.line_total).sum::<i64>());
        }
        let merchant = storage.directory().merchant(scope.owner()).await.unwrap();
        assert_eq!(merchant.phone.as_str(), format!("+919{i:09}"));
    }
}
