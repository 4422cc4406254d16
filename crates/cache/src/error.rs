//! The cache layer's one error type. Loader errors are not here: they are the caller's own type,
//! handed back as they came (see `Cache::get_or_load`).

/// What the cache itself can refuse.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache key name must be 1 to {max} bytes of printable ASCII without spaces (got {len} bytes)", max = crate::key::MAX_NAME_LEN)]
    InvalidKeyName { len: usize },
    #[error("invalid Redis URL for the cache: {0}")]
    InvalidRedisUrl(#[source] redis::RedisError),
}
