//! [`Storage`]: the directory and its shards together, and the flows that touch both.

use std::sync::Arc;

use kirana_domain::page::{Page, PageRequest};
use kirana_domain::store::{NewStore, Store, StoreChange};
use kirana_domain::{MerchantId, Slug, StoreId, Timestamp};

use crate::Result;
use crate::directory::{DirEntry, Directory};
use crate::error::StorageError;
use crate::scope::{ShardId, StoreScope};
use crate::shard::{Shard, StoreRow};

/// Most stores one merchant may own; a guard against scripted abuse, not a business limit.
pub const MAX_STORES_PER_MERCHANT: i64 = 50;

#[derive(Clone)]
pub struct Storage {
    directory: Arc<dyn Directory>,
    shards: Arc<[Arc<dyn Shard>]>,
    cache: Option<DirectoryCache>,
    placement: Placement,
    /// Whether stores may move between these shards (PostgreSQL): only then do event readers
    /// ask where a store lives.
    moves: bool,
    /// Who runs which background work (see `lease`): in memory for one process, the control
    /// database when several nodes share it.
    leases: Arc<dyn crate::lease::Leases>,
}

/// Whether a cached directory entry may answer the running request. A caller holding a write
/// token of another shard may have written to this store there, after a move this node's
/// cache has not seen yet (its old shard keeps the store's rows, frozen, for a few seconds):
/// such a caller gets the directory's word, so its read-your-writes holds across a move.
fn trusts(entry: &DirEntry) -> bool {
    match crate::consistency::current() {
        crate::consistency::Consistency::Replica { after: Some(t) } => t.shard == entry.shard,
        _ => true,
    }
}

/// What a node can serve (see [`Storage::readiness`]).
#[derive(Debug, Clone)]
pub struct Readiness {
    /// Why the directory does not answer, if it does not. Known stores still serve from the
    /// node's cached directory; sign-in and new stores do not.
    pub directory: Option<String>,
    /// Each shard in order: what it can do, and why not more.
    pub shards: Vec<(crate::shard::ShardReadiness, Option<String>)>,
}

/// Where the events of a store read from one shard's outbox belong, while stores move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// The store lives on this shard: apply its events here.
    Here,
    /// The store moved to another shard, whose outbox has copies of these events: skip them.
    Away,
    /// The store is being moved here and the directory has not flipped yet: its copied events
    /// must wait (applying them now would race the catch-up that is still copying rollups).
    Arriving,
}

/// How a new store's shard is chosen. Either way the choice is recorded in the directory, so a
/// change of rule (or of the number of shards) never moves an existing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// By the store id's bits: no lookup, even spread (the embedded default).
    Hash,
    /// The shard holding the fewest stores, leaving out shards dedicated to one store
    /// (`kirana shard pin`); the counts are cached for a few seconds.
    LeastStores,
}

/// The node's copy of directory lookups (store → shard, slug → store). Entries live for `ttl`;
/// a write that finds its store moved away drops the entry at once ([`Storage::forget`]), and
/// renames drop it on the node that made them. Other nodes see a rename within `ttl`.
#[derive(Clone)]
struct DirectoryCache {
    entries: moka::sync::Cache<StoreId, DirEntry>,
    slugs: moka::sync::Cache<String, (DirEntry, bool)>,
    placement: moka::sync::Cache<(), Arc<Vec<(ShardId, i64)>>>,
}

impl DirectoryCache {
    fn forget(&self, store: StoreId) {
        self.entries.invalidate(&store);
        // Slugs are keyed by text; moves and renames are rare enough to drop them all.
        self.slugs.invalidate_all();
        self.placement.invalidate_all();
    }
}

impl Storage {
    pub fn new(directory: Arc<dyn Directory>, shards: Vec<Arc<dyn Shard>>) -> Self {
        assert!(!shards.is_empty(), "storage needs at least one shard");
        Storage {
            directory,
            shards: shards.into(),
            cache: None,
            placement: Placement::Hash,
            moves: false,
            leases: Arc::new(crate::lease::LocalLeases::default()),
        }
    }

    /// Keeps the leases of background work in `leases` (the control database, shared by nodes).
    pub fn with_leases(mut self, leases: Arc<dyn crate::lease::Leases>) -> Self {
        self.leases = leases;
        self
    }

    /// Where background work is leased.
    pub fn leases(&self) -> &Arc<dyn crate::lease::Leases> {
        &self.leases
    }

    /// Caches directory lookups on this node for `ttl` (the PostgreSQL backend: the directory is
    /// a network hop away).
    pub fn with_directory_cache(mut self, ttl: std::time::Duration) -> Self {
        self.cache = Some(DirectoryCache {
            entries: moka::sync::Cache::builder().max_capacity(1_000_000).time_to_live(ttl).build(),
            slugs: moka::sync::Cache::builder().max_capacity(1_000_000).time_to_live(ttl).build(),
            placement: moka::sync::Cache::builder().time_to_live(ttl.min(std::time::Duration::from_secs(5))).build(),
        });
        self
    }

    pub fn with_placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Declares that stores may move between these shards (see [`Storage::residence`]).
    pub fn with_store_moves(mut self) -> Self {
        self.moves = true;
        self
    }

    /// Drops what this node cached about a store (it moved, or was renamed).
    pub fn forget(&self, store: StoreId) {
        if let Some(c) = &self.cache {
            c.forget(store);
        }
    }

    /// [`Storage::forget`] as a callback for the shards (which must not hold the `Storage`
    /// that holds them).
    pub fn forgetter(&self) -> Arc<dyn Fn(StoreId) + Send + Sync> {
        let cache = self.cache.clone();
        Arc::new(move |store| {
            if let Some(c) = &cache {
                c.forget(store);
            }
        })
    }

    async fn entry(&self, store: StoreId) -> Result<Option<DirEntry>> {
        let Some(c) = &self.cache else { return self.directory.entry(store).await };
        if let Some(e) = c.entries.get(&store)
            && trusts(&e)
        {
            return Ok(Some(e));
        }
        let found = self.directory.entry(store).await?;
        if let Some(e) = &found {
            c.entries.insert(store, e.clone());
        }
        Ok(found)
    }

    async fn resolve_slug(&self, slug: &str) -> Result<Option<(DirEntry, bool)>> {
        let Some(c) = &self.cache else { return self.directory.resolve_slug(slug).await };
        if let Some(hit) = c.slugs.get(slug)
            && trusts(&hit.0)
        {
            return Ok(Some(hit));
        }
        let found = self.directory.resolve_slug(slug).await?;
        if let Some(hit) = &found {
            c.slugs.insert(slug.to_owned(), hit.clone());
        }
        Ok(found)
    }

    pub fn directory(&self) -> &dyn Directory {
        &*self.directory
    }

    /// The shard that holds a resolved store.
    pub fn shard(&self, scope: &StoreScope) -> &dyn Shard {
        &*self.shards[scope.shard().0 as usize]
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The event log of the shard that holds a store (consumers fed from a broker, whose
    /// partitions mix shards, find where to apply an event this way).
    pub async fn log_for_store(&self, store: StoreId) -> Result<&dyn crate::log::ShardLog> {
        let entry = self.entry(store).await?.ok_or(StorageError::NotFound)?;
        Ok(self.shard_at(entry.shard)?.log())
    }

    /// The shard the directory places a store on now (this node's cached view: a write there
    /// that finds the store moved drops the entry, see [`Storage::forget`]).
    pub async fn home_of(&self, store: StoreId) -> Result<ShardId> {
        Ok(self.entry(store).await?.ok_or(StorageError::NotFound)?.shard)
    }

    /// Where `store`'s events in `shard`'s outbox belong (see [`Residence`]). One cached
    /// directory lookup, plus one query on the shard only when the directory places the store
    /// elsewhere (during and after a move).
    pub async fn residence(&self, store: StoreId, shard: ShardId) -> Result<Residence> {
        if !self.moves {
            return Ok(Residence::Here);
        }
        let Some(entry) = self.entry(store).await? else { return Ok(Residence::Here) };
        if entry.shard == shard {
            return Ok(Residence::Here);
        }
        Ok(match self.shard_at(shard)?.holds(store).await? {
            Some(true) => Residence::Arriving,
            Some(false) | None => Residence::Away,
        })
    }

    /// Every shard's event log, in shard order (for the relay and consumers).
    pub fn logs(&self) -> impl Iterator<Item = &dyn crate::log::ShardLog> {
        self.shards.iter().map(|s| s.log())
    }

    /// Every shard, in shard order, for workers that serve a whole shard (webhook delivery).
    /// Store-scoped work goes through [`Storage::shard`] with a scope instead.
    pub fn all_shards(&self) -> impl Iterator<Item = &dyn Shard> {
        self.shards.iter().map(|s| &**s)
    }

    async fn place(&self, id: StoreId) -> Result<ShardId> {
        match self.placement {
            Placement::Hash => Ok(placement(id, self.shards.len())),
            Placement::LeastStores => {
                let load = match &self.cache {
                    Some(c) => match c.placement.get(&()) {
                        Some(l) => l,
                        None => {
                            let l = Arc::new(self.directory.placement_load().await?);
                            c.placement.insert((), l.clone());
                            l
                        }
                    },
                    None => Arc::new(self.directory.placement_load().await?),
                };
                Ok(least_loaded(&load, self.shards.len()).unwrap_or_else(|| placement(id, self.shards.len())))
            }
        }
    }

    fn shard_at(&self, shard: ShardId) -> Result<&dyn Shard> {
        self.shards.get(shard.0 as usize).map(|s| &**s).ok_or_else(|| {
            StorageError::Internal(format!(
                "directory names shard {} but only {} are configured",
                shard.0,
                self.shards.len()
            ))
        })
    }

    /// The scope of a store its owner asked for; `NotFound` for anyone else's, exactly as for a
    /// store that does not exist.
    pub async fn scope_for_owner(&self, owner: MerchantId, store_id: StoreId) -> Result<StoreScope> {
        match self.entry(store_id).await? {
            Some(e) if e.owner == owner => {
                self.shard_at(e.shard)?;
                Ok(e.scope())
            }
            _ => Err(StorageError::NotFound),
        }
    }

    /// The scope of a store the platform itself names: a shard's own rows (the payment
    /// reconciler, the payout run) or a provider's signed callback, never a client's request.
    pub async fn scope_for_platform(&self, store_id: StoreId) -> Result<StoreScope> {
        let e = self.entry(store_id).await?.ok_or(StorageError::NotFound)?;
        self.shard_at(e.shard)?;
        Ok(e.scope())
    }

    /// The scope of a store by any of its slugs, and whether the slug is its current one.
    pub async fn scope_for_slug(&self, slug: &str) -> Result<(StoreScope, bool)> {
        match self.resolve_slug(slug).await? {
            Some((e, canonical)) => {
                self.shard_at(e.shard)?;
                Ok((e.scope(), canonical))
            }
            None => Err(StorageError::NotFound),
        }
    }

    /// Creates a store: its row on its shard first, then its directory entry. The directory
    /// entry is the commit point: until it exists nothing can reach the row, and if registering
    /// fails (slug taken) the row is removed. A crash in between leaves an unreachable row, never
    /// a directory entry pointing at nothing.
    pub async fn create_store(&self, owner: MerchantId, new: NewStore, now: Timestamp) -> Result<Store> {
        let id = StoreId::generate();
        let shard_id = self.place(id).await?;
        let shard = self.shard_at(shard_id)?;
        let candidates = slug_candidates(&new, id);
        let row = shard.insert_store(id, owner, &new.name, &new.settings, now).await?;
        let entry = match self
            .directory
            .register_store(id, shard_id, owner, candidates, new.custom_domain.clone(), MAX_STORES_PER_MERCHANT, now)
            .await
        {
            Ok(e) => e,
            Err(e) => {
                if let Err(cleanup) = shard.discard_store(id).await {
                    tracing::warn!(store_id = %id, error = %cleanup, "could not discard an unregistered store row");
                }
                return Err(e);
            }
        };
        Ok(assemble(&entry, row))
    }

    pub async fn store(&self, scope: &StoreScope) -> Result<Store> {
        let entry = self.entry(scope.store_id()).await?.ok_or(StorageError::NotFound)?;
        let row = self.shard(scope).store(scope).await?;
        Ok(assemble(&entry, row))
    }

    /// Applies a change: slug and domain in the directory first (they can conflict with other
    /// stores), then the store's own row.
    pub async fn update_store(&self, scope: &StoreScope, change: StoreChange, now: Timestamp) -> Result<Store> {
        // Check the settings before touching the directory, so a refused change changes nothing.
        let current = self.shard(scope).store(scope).await?;
        change.apply_settings(&current.settings)?;
        let slug = change.slug.as_ref().filter(|s| *s != scope.slug());
        let domain = change.custom_domain.as_ref().map(|d| d.as_deref());
        if slug.is_some() || domain.is_some() {
            self.directory.rename(scope.store_id(), slug, domain, now).await?;
            self.forget(scope.store_id());
        }
        let row = self.shard(scope).update_store(scope, &change, now).await?;
        let entry = self.directory.entry(scope.store_id()).await?.ok_or(StorageError::NotFound)?;
        Ok(assemble(&entry, row))
    }

    /// The merchant's stores, newest first.
    pub async fn stores_of(&self, owner: MerchantId, page: PageRequest) -> Result<Page<Store>> {
        let entries = self.directory.owned(owner, page).await?;
        let mut out = Vec::with_capacity(entries.items.len());
        // One query per shard, not per store.
        let mut by_shard: std::collections::BTreeMap<ShardId, Vec<StoreScope>> = Default::default();
        for e in &entries.items {
            by_shard.entry(e.shard).or_default().push(e.scope());
        }
        let mut rows = std::collections::HashMap::new();
        for (shard, scopes) in by_shard {
            for row in self.shard_at(shard)?.stores(&scopes).await? {
                rows.insert(row.id, row);
            }
        }
        for e in &entries.items {
            if let Some(row) = rows.remove(&e.store_id) {
                out.push(assemble(e, row));
            }
        }
        Ok(Page { items: out, next_cursor: entries.next_cursor })
    }

    /// Checks every database answers: the directory and each shard.
    /// What this node can serve now: the directory's error if it does not answer, and each
    /// shard's readiness (all asked at once, each within its own short bound).
    pub async fn readiness(&self) -> Readiness {
        let directory = async {
            match tokio::time::timeout(std::time::Duration::from_secs(2), self.directory.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the control database did not answer within 2 s".into()),
            }
        };
        let shards = futures::future::join_all(self.shards.iter().map(|s| s.readiness()));
        let (directory, shards) = futures::join!(directory, shards);
        Readiness { directory, shards }
    }

    pub async fn ping(&self) -> Result<()> {
        self.directory.ping().await?;
        for s in self.shards.iter() {
            s.ping().await?;
        }
        Ok(())
    }
}

/// The open shard (not dedicated to one store) with the fewest stores; shards the directory has
/// never counted hold none. `None` when every shard is dedicated.
fn least_loaded(load: &[(ShardId, i64)], shards: usize) -> Option<ShardId> {
    (0..shards as u32)
        .map(ShardId)
        .filter_map(|s| match load.iter().find(|(id, _)| *id == s) {
            Some((_, n)) if *n < 0 => None, // dedicated
            Some((_, n)) => Some((*n, s)),
            None => Some((0, s)),
        })
        .min()
        .map(|(_, s)| s)
}

/// Where a new store goes among `shards` shards. Placement is recorded in the directory, so
/// changing this rule (or adding shards) never moves an existing store.
pub fn placement(id: StoreId, shards: usize) -> ShardId {
    ShardId((id.uuid().as_u128() % shards.max(1) as u128) as u32)
}

fn slug_candidates(new: &NewStore, id: StoreId) -> Vec<Slug> {
    if let Some(chosen) = &new.slug {
        return vec![chosen.clone()];
    }
    // Short random suffix from the id's random bits, so two "Chai Shop"s race to different slugs.
    let tail = format!("{:05x}", id.uuid().as_u128() & 0xf_ffff);
    match Slug::derive(&new.name) {
        Some(base) => {
            let mut c = vec![base.clone()];
            c.extend((2..=5).filter_map(|n| base.with_suffix(&n.to_string())));
            c.extend(base.with_suffix(&tail));
            c
        }
        None => Slug::parse(&format!("store-{tail}")).into_iter().collect(),
    }
}

fn assemble(entry: &DirEntry, row: StoreRow) -> Store {
    Store {
        id: row.id,
        path: format!("/{}", entry.slug),
        slug: entry.slug.clone(),
        name: row.name,
        settings: row.settings,
        custom_domain: entry.custom_domain.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}
