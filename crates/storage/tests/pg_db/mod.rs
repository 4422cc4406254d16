//! What the PostgreSQL shard tests share: a database of their own on the shared server (dropped
//! even when a test fails), the shard schema on it with a pool, fixed test times, and `in_tx!`.
//! Each test binary uses a subset of it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::Duration;

use kirana_domain::Timestamp;
use kirana_storage::ShardId;
use kirana_storage::postgres::pool::{PgPool, PoolRole, PoolSettings};
use kirana_storage::postgres::schema::{SHARD, migrate};
use tokio_postgres::NoTls;

pub use kirana_storage::postgres::testing::{ADMIN, START_HINT, TempDb, admin};

pub const T0: i64 = 1_750_000_000_000;

pub fn at(k: i64) -> Timestamp {
    Timestamp::from_millis(T0 + k * 1000)
}

/// A fresh shard database with the SHARD schema, and a pool of `size` connections on it.
pub async fn pg_shard(size: usize) -> (TempDb, PgPool) {
    let db = TempDb::create().await;
    let (mut c, conn) = tokio_postgres::connect(&db.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    migrate(&mut c, SHARD).await.unwrap();
    let settings = PoolSettings {
        max_size: size,
        acquire_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
    };
    let pool = PgPool::new(&db.url(), PoolRole::Primary(ShardId(0)), settings).unwrap();
    (db, pool)
}

/// Runs `$body` (which uses `&$t`, a transaction) and commits if it succeeded, else rolls back.
macro_rules! in_tx {
    ($pool:expr, |$t:ident| $body:expr) => {{
        let mut conn = $pool.get().await.unwrap();
        let $t = conn.transaction().await.unwrap();
        let r = $body;
        if r.is_ok() {
            $t.commit().await.unwrap();
        } else {
            $t.rollback().await.unwrap();
        }
        r
    }};
}
