//! Per-store product search: what shoppers type into a store's search box, answered from a
//! tantivy index on this node, fed by the product events, with the database as the fallback.
//!
//! - [`index`]: the index itself — its schema, the one writer, the reader, one store's search.
//! - [`query`]: a shopper's words, parsed once ([`SearchQuery`]) and turned into a scoped query.
//! - [`indexer`]: the worker per shard that follows the outbox and keeps the index current.
//! - [`reindex`]: rebuilding one store's documents from the database.
//! - [`facade`]: [`ProductSearch`], what handlers call: the index when it is ready, the
//!   database query otherwise.
//! - [`error`]: [`SearchError`], this layer's one error type.

pub mod error;
pub mod facade;
pub mod index;
pub mod indexer;
pub mod query;
pub mod reindex;

pub use error::{Result, SearchError};
pub use facade::{ProductSearch, Readiness};
pub use index::{Hit, SearchFilter, SearchIndex};
pub use indexer::{Indexer, IndexerConfig, IndexerStep, start};
pub use query::SearchQuery;
pub use reindex::reindex_store;
