//! Opening the configured storage backend: the embedded SQLite files in the data directory, or
//! the PostgreSQL cluster (a control database and its shards). Commands that work on both take
//! the [`Storage`]; those that only make sense on PostgreSQL (moves, replicas) ask for the
//! cluster and say clearly when there is none.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use kirana_storage::Storage;
use kirana_storage::postgres::cluster::{self, PgCluster, PgConfig};
use kirana_storage::postgres::moves::Mover;
use kirana_storage::postgres::pool::{PgPool, PoolRole};
use kirana_storage::scope::ShardId;

use crate::config::{Config, redact};

/// The opened backend.
pub enum Backend {
    Sqlite(Storage),
    Postgres(PgCluster),
}

impl Backend {
    pub fn storage(&self) -> &Storage {
        match self {
            Backend::Sqlite(s) => s,
            Backend::Postgres(c) => &c.storage,
        }
    }
}

/// Opens (and migrates) whichever backend the configuration names.
pub async fn open(config: &Config) -> anyhow::Result<Backend> {
    match &config.postgres {
        None => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
            let storage = kirana_storage::sqlite::open(&config.data_dir, config.shards, &config.sqlite)
                .with_context(|| format!("cannot open the databases in {}", config.data_dir.display()))?;
            Ok(Backend::Sqlite(storage))
        }
        Some(pg) => Ok(Backend::Postgres(open_postgres(pg).await?)),
    }
}

/// Opens (and migrates) the PostgreSQL cluster; fails only when the control database cannot
/// be, as a shard that is down is left to answer 503 (and to `kirana doctor`).
pub async fn open_postgres(pg: &PgConfig) -> anyhow::Result<PgCluster> {
    cluster::open(pg)
        .await
        .with_context(|| format!("cannot open the PostgreSQL control database {}", redact(&pg.directory)))
}

/// The [`Storage`] of whichever backend is configured.
pub async fn open_storage(config: &Config) -> anyhow::Result<Storage> {
    Ok(match open(config).await? {
        Backend::Sqlite(s) => s,
        Backend::Postgres(c) => c.storage,
    })
}

/// The PostgreSQL settings, or a message that `what` needs them.
pub fn require_postgres<'a>(config: &'a Config, what: &str) -> anyhow::Result<&'a PgConfig> {
    config.postgres.as_ref().with_context(|| {
        format!(
            "{what} needs the PostgreSQL backend (store moves and replicas exist only there); \
             pass --postgres URL and --pg-shard URL… or configure [postgres]"
        )
    })
}

/// A mover over pools of its own: the control database and every shard's primary. Its pools
/// are separate from the cluster's on purpose; a move holds a control connection (its lock) for
/// its whole length, and must not starve the commands' other work.
pub fn mover(pg: &PgConfig) -> anyhow::Result<Mover> {
    let control = Arc::new(PgPool::new(&pg.directory, PoolRole::Directory, pg.pool)?);
    let mut shards = HashMap::new();
    for (i, s) in pg.shards.iter().enumerate() {
        let id = ShardId(i as u32);
        shards.insert(id, Arc::new(PgPool::new(&s.primary, PoolRole::Primary(id), pg.pool)?));
    }
    Ok(Mover::new(control, shards))
}

/// The host (and port) of a PostgreSQL URL, for tables: never the user or password. A URL with
/// several hosts (a primary and its standby under pg_auto_failover) lists them all.
pub fn host_of(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let db = c.get_dbname().map(|d| format!("/{d}")).unwrap_or_default();
            let hosts = hosts_of(&c);
            if hosts.is_empty() { format!("localhost{db}") } else { format!("{}{db}", hosts.join(",")) }
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Every `host[:port]` a parsed URL names, in order.
pub fn hosts_of(c: &tokio_postgres::Config) -> Vec<String> {
    let ports = c.get_ports();
    c.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            // One port for all hosts, or one per host.
            match ports.get(i).or(if ports.len() == 1 { ports.first() } else { None }) {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect()
}
