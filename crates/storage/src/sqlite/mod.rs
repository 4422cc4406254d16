//! The embedded backend: SQLite in WAL mode, one file for the directory and one per shard,
//! under the data directory:
//!
//! ```text
//! <data-dir>/directory.db
//! <data-dir>/shards/shard-0000.db
//! <data-dir>/shards/shard-0001.db   (when configured with more shards, for parallel writers)
//! ```

pub mod baseline;
mod db;
mod directory;
pub(crate) mod schema;
pub mod seed;
mod shard;
mod writer;

use std::path::Path;
use std::sync::Arc;

pub use db::{SqliteOptions, Synchronous};

use crate::error::StorageError;
use crate::shard::Shard;
use crate::{Result, Storage};

/// Opens (creating and migrating as needed) the directory and `shards` shard files.
pub fn open(data_dir: &Path, shards: u32, opts: &SqliteOptions) -> Result<Storage> {
    if shards == 0 {
        return Err(StorageError::Internal("at least one shard is needed".into()));
    }
    let shard_dir = data_dir.join("shards");
    std::fs::create_dir_all(&shard_dir)
        .map_err(|e| StorageError::Unavailable(format!("cannot create {}: {e}", shard_dir.display())))?;
    let dir_db = db::Db::open(&data_dir.join("directory.db"), "dir", opts, schema::DIRECTORY)?;
    let directory = Arc::new(directory::SqliteDirectory::new(dir_db));
    let mut list: Vec<Arc<dyn Shard>> = Vec::with_capacity(shards as usize);
    for i in 0..shards {
        let path = shard_dir.join(format!("shard-{i:04}.db"));
        let db = db::Db::open(&path, &format!("s{i}"), opts, schema::SHARD)?.for_shard(crate::scope::ShardId(i));
        list.push(Arc::new(shard::SqliteShard::new(db, crate::scope::ShardId(i))));
    }
    Ok(Storage::new(directory, list))
}

/// Where each database file is and which schema version it holds (for `kirana migrate`).
pub fn describe(data_dir: &Path, shards: u32) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let mut files = vec![data_dir.join("directory.db")];
    files.extend((0..shards).map(|i| data_dir.join("shards").join(format!("shard-{i:04}.db"))));
    for f in files {
        let c = rusqlite::Connection::open_with_flags(&f, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        out.push((f.display().to_string(), schema::version(&c)?));
    }
    Ok(out)
}
