//! `Shard::products_by_ids` (a page of search hits in a fixed number of queries) on both
//! backends: only the asked store's products, missing ids left out, variants attached.

use kirana_domain::catalog::{NewVariant, ProductChange};
use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{Amount, MerchantId, ProductId, Timestamp};
use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
use kirana_storage::postgres::testing::TempDb;
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{Storage, StoreScope};

fn product(title: &str) -> ProductChange {
    ProductChange {
        title: Some(title.into()),
        variants: Some(vec![NewVariant {
            id: None,
            options: vec![],
            sku: None,
            price: Amount::from_stored(100),
            compare_at_price: None,
            stock: None,
        }]),
        ..Default::default()
    }
}

async fn store(storage: &Storage, name: &str) -> StoreScope {
    let owner = MerchantId::generate();
    let now = Timestamp::from_millis(1_750_000_000_000);
    let new = NewStore { name: name.into(), slug: None, custom_domain: None, settings: StoreSettings::default() };
    let s = storage.create_store(owner, new, now).await.unwrap();
    storage.scope_for_owner(owner, s.id).await.unwrap()
}

async fn check(storage: &Storage) {
    let now = Timestamp::from_millis(1_750_000_000_000);
    let (a, b) = (store(storage, "A").await, store(storage, "B").await);
    let mut mine = Vec::new();
    for t in ["Tea", "Coffee", "Cocoa"] {
        mine.push(storage.shard(&a).create_product(&a, product(t), now).await.unwrap().id);
    }
    let theirs = storage.shard(&b).create_product(&b, product("Tea"), now).await.unwrap().id;
    let asked = [mine[2], theirs, ProductId::generate(), mine[0]];
    let mut got = storage.shard(&a).products_by_ids(&a, &asked).await.unwrap();
    got.sort_by_key(|p| p.title.clone());
    let titles: Vec<&str> = got.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["Cocoa", "Tea"], "only store A's, only those asked, missing ones left out");
    assert!(got.iter().all(|p| p.variants.len() == 1), "variants attached");
    assert!(storage.shard(&a).products_by_ids(&a, &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
    check(&kirana_storage::sqlite::open(dir.path(), 2, &opts).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let dbs = [TempDb::create().await, TempDb::create().await, TempDb::create().await];
    let shards = dbs[1..].iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
    check(&open(&PgConfig::new(dbs[0].url(), shards)).await.unwrap().storage).await;
}
