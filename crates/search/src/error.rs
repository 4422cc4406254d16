//! [`SearchError`]: everything that can go wrong in the search layer. Handlers never see it:
//! the facade answers from the database instead and counts the fallback.

use kirana_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The shopper's words cannot be searched (empty once cleaned up).
    #[error("search query {0}")]
    Query(String),
    /// A blocking index task was lost (the runtime is shutting down).
    #[error("search task: {0}")]
    Task(String),
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;
