//! Rebuilding a store's documents from the database: for a fresh index, after trimmed events,
//! or when an operator doubts the index. Reads current state, so it can run beside the
//! indexers (both write what the database holds).

use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_storage::{ProductFilter, Storage, StoreScope};

use crate::error::{Result, SearchError};
use crate::index::SearchIndex;

/// Products read per database query while reindexing.
const PAGE: i64 = 100;

/// Replaces every document of the store with its products as the database has them, then
/// commits. Returns how many products were indexed.
pub async fn reindex_store(index: &SearchIndex, storage: &Storage, scope: &StoreScope) -> Result<usize> {
    let shard = storage.shard(scope);
    index.remove_store(scope.store_id())?;
    let limit = Limit::parse(Some(PAGE)).map_err(SearchError::Query)?;
    let mut after = None;
    let mut count = 0;
    loop {
        let page = shard.products(scope, ProductFilter::default(), PageRequest { after, limit }).await?;
        for p in &page.items {
            index.upsert(scope.store_id(), p)?;
        }
        count += page.items.len();
        match page.next_cursor.as_deref().map(Cursor::parse) {
            Some(Ok(c)) => after = Some(c),
            _ => break,
        }
    }
    index.commit()?;
    Ok(count)
}
