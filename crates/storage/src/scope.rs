//! The proof that a store was resolved through the directory.
//!
//! Every shard operation takes a [`StoreScope`], and only this crate can make one: from a
//! directory entry the caller was allowed to see (its owner's, or a public slug's). So a
//! handler cannot query a store it did not resolve, and every query binds the scope's store id.

use kirana_domain::{MerchantId, Slug, StoreId};

/// Which shard holds a store. Shards are numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreScope {
    store_id: StoreId,
    shard: ShardId,
    owner: MerchantId,
    slug: Slug,
}

impl StoreScope {
    pub(crate) fn new(store_id: StoreId, shard: ShardId, owner: MerchantId, slug: Slug) -> Self {
        StoreScope { store_id, shard, owner, slug }
    }

    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn owner(&self) -> MerchantId {
        self.owner
    }

    /// The store's current (canonical) slug.
    pub fn slug(&self) -> &Slug {
        &self.slug
    }
}
