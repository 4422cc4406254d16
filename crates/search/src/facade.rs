//! [`ProductSearch`]: the one door handlers use. It answers from the index when the index is
//! there and caught up with the store's shard, and from the database's title query otherwise
//! (or when the index fails): slower and plainer, never an error page. Each fallback is counted
//! in `kirana_search_fallbacks_total`.
//!
//! Search results page by offset, not by id: relevance order has no stable key. The offset
//! travels in the usual opaque `cursor` (16 bytes, like the id cursors), so clients page the
//! same way as through any list.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kirana_domain::CategoryId;
use kirana_domain::catalog::{Product, ProductStatus};
use kirana_domain::page::{Cursor, Limit, Page, PageRequest};
use kirana_storage::{ProductFilter, Storage, StorageError, StoreScope};

use crate::index::{MAX_RESULTS, SearchFilter, SearchIndex};
use crate::query::SearchQuery;

/// Which shards the index has caught up with since this process started. Until then a shard's
/// stores are searched in the database, so a node with a new (empty) index never answers
/// "nothing found" for products it has not indexed yet.
#[derive(Clone)]
pub struct Readiness(Arc<[AtomicBool]>);

impl Readiness {
    pub fn new(shards: usize) -> Readiness {
        Readiness((0..shards).map(|_| AtomicBool::new(false)).collect())
    }

    /// Every shard ready at once (an index built by reindexing, in tests and benchmarks).
    pub fn all_ready(shards: usize) -> Readiness {
        let r = Readiness::new(shards);
        (0..shards).for_each(|s| r.mark(s));
        r
    }

    pub fn mark(&self, shard: usize) {
        if let Some(flag) = self.0.get(shard) {
            flag.store(true, Ordering::Release);
        }
    }

    pub fn is_ready(&self, shard: usize) -> bool {
        self.0.get(shard).is_some_and(|f| f.load(Ordering::Acquire))
    }
}

/// The cursor of search results: an offset into the ranking. Offsets are small numbers; an id
/// cursor (a UUIDv7, whose top bits are a timestamp) from another list reads as the start.
pub fn offset_of(cursor: Option<Cursor>) -> usize {
    match cursor.map(|c| c.uuid().as_u128()) {
        Some(n) if n <= MAX_RESULTS as u128 => n as usize,
        _ => 0,
    }
}

pub fn offset_cursor(offset: usize) -> String {
    Cursor::after(uuid::Uuid::from_u128(offset as u128)).encode()
}

#[derive(Clone)]
pub struct ProductSearch {
    storage: Storage,
    index: Option<(Arc<SearchIndex>, Readiness)>,
}

impl ProductSearch {
    /// Search through the index, falling back to the database while a shard is not ready.
    pub fn new(storage: Storage, index: Arc<SearchIndex>, ready: Readiness) -> ProductSearch {
        ProductSearch { storage, index: Some((index, ready)) }
    }

    /// No index on this node: every search is the database query.
    pub fn database_only(storage: Storage) -> ProductSearch {
        ProductSearch { storage, index: None }
    }

    /// The store's active products matching `words`, best first, one page of them.
    pub async fn search(
        &self,
        scope: &StoreScope,
        words: &str,
        category: Option<CategoryId>,
        page: PageRequest,
    ) -> Result<Page<Product>, StorageError> {
        let offset = offset_of(page.after);
        let limit = page.limit.get() as usize;
        let Ok(query) = SearchQuery::parse(words) else { return Ok(Page { items: vec![], next_cursor: None }) };
        let reason = match &self.index {
            None => "disabled",
            Some((_, ready)) if !ready.is_ready(scope.shard().0 as usize) => "not_ready",
            Some((index, _)) => {
                // One more than asked, to know whether a next page exists.
                match index.search(scope.store_id(), &query, SearchFilter { category }, limit + 1, offset) {
                    Ok(hits) => return self.load(scope, hits.into_iter().map(|h| h.product), offset, limit).await,
                    Err(e) => {
                        tracing::warn!(store_id = %scope.store_id(), error = %e, "search index failed; asking the database");
                        "error"
                    }
                }
            }
        };
        metrics::counter!("kirana_search_fallbacks_total", "reason" => reason).increment(1);
        self.database(scope, query, category, offset, page.limit).await
    }

    /// The hits' products, in rank order. A product the index has not caught up with (deleted
    /// or withdrawn a moment ago) is left out rather than shown.
    async fn load(
        &self,
        scope: &StoreScope,
        ids: impl Iterator<Item = kirana_domain::ProductId>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<Product>, StorageError> {
        let ids: Vec<_> = ids.collect();
        let more = ids.len() > limit;
        let shard = self.storage.shard(scope);
        // One batch read for the page, then back into relevance order.
        let wanted: Vec<_> = ids.into_iter().take(limit).collect();
        let mut found: std::collections::HashMap<_, _> =
            shard.products_by_ids(scope, &wanted).await?.into_iter().map(|p| (p.id, p)).collect();
        let items: Vec<_> =
            wanted.iter().filter_map(|id| found.remove(id)).filter(|p| p.status == ProductStatus::Active).collect();
        let next = offset + limit;
        Ok(Page { items, next_cursor: (more && next < MAX_RESULTS).then(|| offset_cursor(next)) })
    }

    /// The database's title query, newest first, paged by the same offsets.
    async fn database(
        &self,
        scope: &StoreScope,
        query: SearchQuery,
        category: Option<CategoryId>,
        offset: usize,
        limit: Limit,
    ) -> Result<Page<Product>, StorageError> {
        let shard = self.storage.shard(scope);
        let filter =
            || ProductFilter { status: Some(ProductStatus::Active), category, query: Some(query.as_str().to_owned()) };
        let want = limit.get() as usize;
        let page_size = Limit::parse(Some(100)).map_err(StorageError::Internal)?;
        let (mut skipped, mut items, mut after) = (0, Vec::with_capacity(want), None);
        loop {
            let page = shard.products(scope, filter(), PageRequest { after, limit: page_size }).await?;
            for p in page.items {
                if skipped < offset {
                    skipped += 1;
                } else if items.len() < want {
                    items.push(p);
                } else {
                    let next = offset + want;
                    return Ok(Page { items, next_cursor: (next < MAX_RESULTS).then(|| offset_cursor(next)) });
                }
            }
            match page.next_cursor.as_deref().map(Cursor::parse) {
                Some(Ok(c)) if offset + want < MAX_RESULTS => after = Some(c),
                _ => return Ok(Page { items, next_cursor: None }),
            }
        }
    }
}
