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

/// What a call gave, as JSON: the value, or the error's variant and fields. The recorded
/// scenarios (`pg_catalog`, `pg_orders`, `pg_log`, `pg_webhooks`) compare these across backends.
pub fn record<T: serde::Serialize>(
    log: &mut Vec<serde_json::Value>,
    step: &str,
    r: &Result<T, kirana_storage::StorageError>,
) {
    let v = match r {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "err": format!("{e:?}") }),
    };
    log.push(serde_json::json!({ "step": step, "result": v }));
}

/// The same for values that are not `Serialize`: their `Debug` form (ids inside it are still
/// normalised).
pub fn record_dbg<T: std::fmt::Debug>(
    log: &mut Vec<serde_json::Value>,
    step: &str,
    r: &Result<T, kirana_storage::StorageError>,
) {
    let v = match r {
        Ok(v) => serde_json::json!({ "ok": format!("{v:?}") }),
        Err(e) => serde_json::json!({ "err": format!("{e:?}") }),
    };
    log.push(serde_json::json!({ "step": step, "result": v }));
}

/// Replaces every UUID in the transcript by its order of first appearance, so two runs that
/// generated different ids compare equal when they behaved the same.
pub fn normalise(v: &mut serde_json::Value, seen: &mut std::collections::HashMap<String, usize>) {
    match v {
        serde_json::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while !rest.is_empty() {
                if rest.len() >= 36 && rest.is_char_boundary(36) && uuid::Uuid::parse_str(&rest[..36]).is_ok() {
                    let n = seen.len();
                    let n = *seen.entry(rest[..36].to_string()).or_insert(n);
                    out.push_str(&format!("<id{n}>"));
                    rest = &rest[36..];
                } else {
                    let ch = rest.chars().next().unwrap();
                    out.push(ch);
                    rest = &rest[ch.len_utf8()..];
                }
            }
            *s = out;
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, seen)),
        serde_json::Value::Object(o) => {
            // A cursor is an id in disguise.
            if let Some(serde_json::Value::String(c)) = o.get_mut("next_cursor") {
                *c = kirana_domain::page::Cursor::parse(c).unwrap().uuid().to_string();
            }
            o.values_mut().for_each(|x| normalise(x, seen))
        }
        _ => {}
    }
}
