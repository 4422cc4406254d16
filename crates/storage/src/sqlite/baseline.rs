//! The database's own limits, measured in the same run as kirana's numbers, so a benchmark can
//! say how close checkout gets to what the storage engine itself can do.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::Synchronous;
use crate::Result;

/// Rates measured on a scratch file next to the data.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct InsertRates {
    /// One row per transaction, one after another: the plain single-row insert rate.
    pub single_row_tx_per_sec: f64,
    /// 100 rows per transaction: the batched ceiling group commit can approach.
    pub batched_rows_per_sec: f64,
}

/// Inserts rows shaped like an order line (a few integers and a short text, a 16-byte key)
/// into a scratch table with the same journal mode and durability kirana uses, for `each` of
/// the two patterns. The scratch file is removed afterwards.
pub fn insert_rates(dir: &Path, synchronous: Synchronous, each: Duration) -> Result<InsertRates> {
    let path = dir.join("baseline-scratch.db");
    let _ = std::fs::remove_file(&path);
    let c = Connection::open(&path)?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {};
         CREATE TABLE t (id BLOB PRIMARY KEY, store BLOB NOT NULL, qty INTEGER NOT NULL, price INTEGER NOT NULL, title TEXT NOT NULL) WITHOUT ROWID;",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    ))?;
    let store = uuid::Uuid::now_v7();
    let insert = |n: usize| -> Result<()> {
        c.execute_batch("BEGIN")?;
        let mut st = c.prepare_cached("INSERT INTO t (id, store, qty, price, title) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for _ in 0..n {
            st.execute(params![uuid::Uuid::now_v7(), store, 2, 49_900, "Masala Chai 250 g"])?;
        }
        c.execute_batch("COMMIT")?;
        Ok(())
    };
    let rate = |n: usize| -> Result<f64> {
        let start = Instant::now();
        let mut rows = 0u64;
        while start.elapsed() < each {
            insert(n)?;
            rows += n as u64;
        }
        Ok(rows as f64 / start.elapsed().as_secs_f64())
    };
    let single = rate(1)?;
    let batched = rate(100)?;
    drop(c);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("baseline-scratch.db{suffix}")));
    }
    Ok(InsertRates { single_row_tx_per_sec: single, batched_rows_per_sec: batched })
}
