//! Where the PostgreSQL cluster puts new stores: on the shard holding the fewest, and never on a
//! shard dedicated to one store (`kirana shard pin`), whatever its count. Runs on databases of
//! its own on the shared server (127.0.0.1:5432); a server that is down fails the tests.

mod pg_db;

use std::time::Duration;

use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{MerchantId, StoreId};
use kirana_storage::postgres::cluster::{PgCluster, PgConfig, ShardUrls, open};
use kirana_storage::postgres::testing::TempDb;
use kirana_storage::{Directory, ShardId, StorageError};
use pg_db::at;

/// A control database and `n` shard databases, opened as a cluster whose placement counts are
/// cached for a millisecond only (the default caches them for seconds, which would put every
/// store of a quick test on one shard).
async fn cluster(n: usize) -> (PgCluster, Vec<TempDb>) {
    let mut dbs = vec![TempDb::create().await];
    for _ in 0..n {
        dbs.push(TempDb::create().await);
    }
    let shards = dbs[1..].iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
    let mut config = PgConfig::new(dbs[0].url(), shards);
    config.directory_ttl = Duration::from_millis(1);
    (open(&config).await.expect("open the cluster"), dbs)
}

async fn new_store(c: &PgCluster) -> (StoreId, ShardId) {
    // One owner per store: owners have a cap on stores.
    let new =
        NewStore { name: "Corner Shop".into(), slug: None, custom_domain: None, settings: StoreSettings::default() };
    let s = c.storage.create_store(MerchantId::generate(), new, at(0)).await.expect("create a store");
    // Past the placement cache's lifetime, so the next store sees this one counted.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let shard = c.directory.entry(s.id).await.unwrap().expect("registered").shard;
    (s.id, shard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_stores_go_to_the_least_loaded_shard() {
    let (c, _dbs) = cluster(3).await;
    let mut per_shard = [0; 3];
    for _ in 0..9 {
        let (_, s) = new_store(&c).await;
        per_shard[s.0 as usize] += 1;
    }
    assert_eq!(per_shard, [3, 3, 3], "nine stores over three empty shards spread evenly");
    let load = c.directory.placement_load().await.unwrap();
    assert_eq!(load, vec![(ShardId(0), 3), (ShardId(1), 3), (ShardId(2), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_shard_never_receives_a_new_store_even_when_it_is_the_emptiest() {
    let (c, _dbs) = cluster(3).await;
    let (vip, vip_shard) = new_store(&c).await;
    assert_eq!(vip_shard, ShardId(0), "the first store goes to the first empty shard");
    // Shard 2 is empty: the emptiest of all, dedicated to the store on shard 0 (whose move is
    // the caller's business, not the directory's).
    c.directory.dedicate(ShardId(2), vip, at(1)).await.expect("dedicate an empty shard");
    let load = c.directory.placement_load().await.unwrap();
    assert!(load.contains(&(ShardId(2), -1)), "a dedicated shard weighs -1: {load:?}");
    for _ in 0..6 {
        let (_, s) = new_store(&c).await;
        assert_ne!(s, ShardId(2), "a new store landed on the dedicated shard");
    }
    assert_eq!(c.directory.shard_counts().await.unwrap(), vec![(ShardId(0), 4), (ShardId(1), 3)]);

    // Unpinned, the shard is the emptiest again and takes the next store.
    assert_eq!(c.directory.undedicate(ShardId(2)).await.unwrap(), Some(vip));
    let (_, s) = new_store(&c).await;
    assert_eq!(s, ShardId(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicating_refuses_a_shard_that_holds_other_stores_or_belongs_to_another_store() {
    let (c, _dbs) = cluster(2).await;
    let (a, _) = new_store(&c).await; // shard 0
    let (b, _) = new_store(&c).await; // shard 1
    let (d, _) = new_store(&c).await; // shard 0 again
    let e = c.directory.dedicate(ShardId(0), a, at(1)).await.unwrap_err();
    assert!(matches!(&e, StorageError::Conflict { message, .. } if message.contains("holds 1 other store")), "{e}");
    c.directory.dedicate(ShardId(1), b, at(1)).await.expect("b is alone on shard 1");
    c.directory.dedicate(ShardId(1), b, at(2)).await.expect("pinning again is a no-op");
    let e = c.directory.dedicate(ShardId(1), d, at(3)).await.unwrap_err();
    assert!(matches!(&e, StorageError::Conflict { message, .. } if message.contains("already dedicated")), "{e}");
    let dedications = c.directory.dedications().await.unwrap();
    assert_eq!(dedications.len(), 1);
    assert_eq!((dedications[0].0, dedications[0].1), (ShardId(1), b));
}
