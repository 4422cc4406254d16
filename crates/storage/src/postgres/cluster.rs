//! Opening the PostgreSQL backend from its configuration: the directory on the control
//! database, and each shard's primary and replicas, migrated and wired into a [`Storage`].

use std::sync::Arc;
use std::time::Duration;

use super::directory::PgDirectory;
use super::pool::{PgPool, PoolRole, PoolSettings};
use super::replicas::ReplicaSettings;
use super::schema;
use super::shard::PgShard;
use crate::Result;
use crate::scope::ShardId;
use crate::storage::{Placement, Storage};

/// How long one background operation (an event batch applied, a relay's read or record) may take.
pub const BACKGROUND_DEADLINE: Duration = Duration::from_secs(30);

/// One shard's servers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardUrls {
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PgConfig {
    /// The control database (the directory).
    pub directory: String,
    /// Shards in order: shard `i` is `shards[i]`. Shards are only ever appended.
    pub shards: Vec<ShardUrls>,
    pub pool: PoolSettings,
    pub replicas: ReplicaSettings,
    /// How long one operation on a shard's primary may take (see
    /// [`PgPool::with_operation_deadline`]): past it the caller gets `Unavailable` (a 503).
    pub primary_deadline: Duration,
    /// How long a node trusts its cached directory lookups.
    pub directory_ttl: Duration,
    /// Connections per shard primary for background work (event consumers, webhooks), apart
    /// from `pool`'s: the pipeline can never hold more than these.
    pub background_pool: usize,
}

impl PgConfig {
    pub fn new(directory: impl Into<String>, shards: Vec<ShardUrls>) -> PgConfig {
        PgConfig {
            directory: directory.into(),
            shards,
            pool: PoolSettings::default(),
            replicas: ReplicaSettings::default(),
            primary_deadline: super::pool::DEFAULT_OPERATION_DEADLINE,
            directory_ttl: Duration::from_secs(5),
            background_pool: 4,
        }
    }
}

/// The opened backend: the `Storage` the application uses, and the parts operators look at.
#[derive(Clone)]
pub struct PgCluster {
    pub storage: Storage,
    pub directory: Arc<PgDirectory>,
    pub shards: Vec<Arc<PgShard>>,
}

/// Connects to the control database and migrates it (that must succeed: without the directory
/// nothing can be served), then builds every shard's pools and migrates each primary it can
/// reach. A shard that is down is logged and left to answer 503 until it returns.
pub async fn open(config: &PgConfig) -> Result<PgCluster> {
    let directory = Arc::new(PgDirectory::connect(&config.directory, config.pool).await?);
    let mut shards = Vec::with_capacity(config.shards.len());
    for (i, urls) in config.shards.iter().enumerate() {
        let id = ShardId(i as u32);
        let primary = PgPool::new(&urls.primary, PoolRole::Primary(id), config.pool)?
            .with_operation_deadline(config.primary_deadline);
        match primary.get().await {
            Ok(mut c) => {
                schema::migrate(&mut c, schema::SHARD).await?;
            }
            Err(e) => tracing::error!(shard = i, error = %e, "shard primary unreachable; its stores answer 503"),
        }
        let replicas = urls
            .replicas
            .iter()
            .enumerate()
            .map(|(r, url)| PgPool::new(url, PoolRole::Replica(id, r as u32), config.pool))
            .collect::<Result<Vec<_>>>()?;
        let background_settings = PoolSettings { max_size: config.background_pool.max(1), ..config.pool };
        // Background batches are longer than a request's queries, but no worker may wait for
        // ever on a server that stopped answering (or a commit waiting on a standby that never
        // acknowledges): past this it errs, drops the connection and tries again.
        let background = PgPool::new(&urls.primary, PoolRole::Background(id), background_settings)?
            .with_operation_deadline(BACKGROUND_DEADLINE);
        shards.push(Arc::new(PgShard::new(id, primary, background, replicas, config.replicas)));
    }
    // Requests wait at most the primary deadline on the control database too.
    let bounded = Arc::new(super::bounded::Bounded::new(directory.clone(), config.primary_deadline));
    let leases = Arc::new(super::leases::PgLeases::new(directory.clone(), config.primary_deadline));
    let storage = Storage::new(bounded, shards.iter().map(|s| s.clone() as Arc<dyn crate::Shard>).collect())
        .with_leases(leases)
        .with_directory_cache(config.directory_ttl)
        .with_placement(Placement::LeastStores)
        .with_store_moves();
    for s in &shards {
        s.set_on_moved(storage.forgetter());
    }
    Ok(PgCluster { storage, directory, shards })
}

impl PgCluster {
    /// Starts every shard's replica prober; they stop when `shutdown` turns true.
    pub fn start_probers(&self, shutdown: tokio::sync::watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.shards.iter().map(|s| tokio::spawn(s.clone().run_prober(shutdown.clone()))).collect()
    }
}
