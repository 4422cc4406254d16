//! One SQLite database file: its writer thread and its pool of read connections.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::schema::Migration;
use super::writer::Writer;
use crate::Result;
use crate::error::StorageError;

/// How durable a commit is. `Full` survives power loss; `Normal` survives a process crash
/// (`kill -9`) but may lose the last commits if the machine loses power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// Read connections per database file.
    pub readers: usize,
    /// Most write jobs committed together.
    pub max_batch: usize,
    /// Write jobs that may wait for the writer before callers are made to wait.
    pub queue: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { synchronous: Synchronous::Full, readers: 4, max_batch: 256, queue: 4096 }
    }
}

pub(crate) struct Db {
    /// The file's name (`directory`, `shard-0000`…): the `db` label of its latency histogram.
    name: String,
    writer: Writer,
    /// Dropping this ends the checkpointer thread (after a last checkpoint).
    _checkpointer: std::sync::mpsc::Sender<()>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    /// A shard's file: each write made for a request earns the caller a write token naming the
    /// shard (see `consistency`). There is no replica to wait for here; the token still tells
    /// the read cache to show the caller what it just wrote rather than a cached copy.
    shard: Option<crate::scope::ShardId>,
}

impl Db {
    /// Opens (creating if needed) the file, brings its schema up to date, starts the writer.
    pub(crate) fn open(path: &Path, name: &str, opts: &SqliteOptions, migrations: &[Migration]) -> Result<Db> {
        let mut writer = Connection::open(path)?;
        crate::query_count::watch(&mut writer)?;
        configure(&writer, opts, false)?;
        super::schema::migrate(&writer, migrations)?;
        // Checkpoints copy the WAL back into the database file. Left to SQLite they run inside a
        // COMMIT on the writer, and every caller in that batch waits for them; a thread of its own
        // runs them instead, PASSIVE, so they never block the writer or readers.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = spawn_checkpointer(path, name)?;
        let mut readers = Vec::with_capacity(opts.readers.max(1));
        for _ in 0..opts.readers.max(1) {
            let mut c =
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            crate::query_count::watch(&mut c)?;
            configure(&c, opts, true)?;
            readers.push(Mutex::new(c));
        }
        let writer = Writer::spawn(writer, format!("kirana-writer-{name}"), opts.max_batch, opts.queue)
            .map_err(|e| StorageError::Internal(format!("could not start the writer thread: {e}")))?;
        Ok(Db {
            name: name.to_owned(),
            writer,
            _checkpointer: checkpointer,
            readers,
            next: AtomicUsize::new(0),
            shard: None,
        })
    }

    /// Marks the file as shard `id`'s: its writes hand out write tokens (see the field).
    pub(crate) fn for_shard(mut self, id: crate::scope::ShardId) -> Db {
        self.shard = Some(id);
        self
    }

    /// Runs `work` in the next write transaction; answers after it is committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        // From the caller's point of view: the wait for the writer's batch included.
        let started = std::time::Instant::now();
        let out = self.writer.write(work).await;
        metrics::histogram!("kirana_db_seconds", "db" => self.name.clone(), "role" => "primary", "op" => "write")
            .record(started.elapsed().as_secs_f64());
        if let (Some(shard), Ok(_)) = (self.shard, &out) {
            crate::consistency::record_write(crate::consistency::WriteToken { shard, lsn: 0 });
        }
        out
    }

    /// Runs a read on a pooled connection, on the calling thread.
    ///
    /// Reads are bounded index lookups (every list is keyset-paginated, ≤ 100 rows), so they
    /// run inline rather than hopping to a blocking pool: on this hardware inline SQLite reads
    /// served ~1.5× the requests of `spawn_blocking` ones (docs/decisions/0002).
    pub(crate) fn read<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let out = self.read_inner(work);
        metrics::histogram!("kirana_db_seconds", "db" => self.name.clone(), "role" => "primary", "op" => "read")
            .record(started.elapsed().as_secs_f64());
        out
    }

    fn read_inner<T>(&self, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        // The first free reader, always searched from the first: the busiest connection keeps the
        // warmest page cache, and the others serve only when reads overlap. (Round-robin spread
        // the hot pages over every connection's private cache and measured slower.)
        for conn in &self.readers {
            if let Ok(conn) = conn.try_lock() {
                return work(&conn);
            }
        }
        // Every reader busy: wait for one. Reads never hold a connection across an await, so
        // this wait is as short as the read in progress.
        let n = self.readers.len();
        let pick = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let conn = self.readers[pick].lock().unwrap_or_else(PoisonError::into_inner);
        work(&conn)
    }
}

fn spawn_checkpointer(path: &Path, name: &str) -> Result<std::sync::mpsc::Sender<()>> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let (stop, stopped) = channel::<()>();
    std::thread::Builder::new()
        .name(format!("kirana-ckpt-{name}"))
        .spawn(move || {
            loop {
                let last =
                    matches!(stopped.recv_timeout(Duration::from_millis(500)), Err(RecvTimeoutError::Disconnected));
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "checkpoint failed; the WAL grows until one succeeds");
                }
                if last {
                    return;
                }
            }
        })
        .map_err(|e| StorageError::Internal(format!("could not start the checkpointer: {e}")))?;
    Ok(stop)
}

fn configure(c: &Connection, opts: &SqliteOptions, reader: bool) -> Result<()> {
    c.busy_timeout(Duration::from_secs(5))?;
    // Without the query-planner stability guarantee, SQLite marks a statement for re-preparation
    // whenever a bound value *could* change its plan (partial indexes, LIMIT, LIKE), and then
    // re-parses it on the next step — which here meant re-parsing nearly every cached statement
    // on every request (45 % of CPU in a profile). Our statements are all keyed lookups whose
    // plan never depends on the values.
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(
        None,
        "synchronous",
        match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    c.pragma_update(None, "foreign_keys", "OFF")?;
    c.pragma_update(None, "temp_store", "MEMORY")?;
    // Each connection caches pages privately; at a million stores the hot set (the popular
    // stores, the upper levels of every B-tree) is far larger than SQLite's 2 MiB default.
    c.pragma_update(None, "cache_size", -65_536)?; // KiB
    c.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    c.set_prepared_statement_cache_capacity(128);
    if reader {
        c.pragma_update(None, "query_only", "ON")?;
    }
    Ok(())
}
