//! Cache keys: which store, which of its versions, and what. The version is the store's
//! `cache_version`, bumped by the cache-invalidation consumer on every change, so a write makes
//! every older key unreachable at once (O(1) invalidation, no scan, no delete).
//!
//! A key is parsed once here; the rest of the crate only ever sees a valid, bounded key.

use kirana_domain::StoreId;

use crate::CacheError;

/// Longest `name` accepted. Keys live in Redis and in every node's memory: a bound keeps a
/// caller that puts a whole query string in the name from growing either without limit.
pub const MAX_NAME_LEN: usize = 200;

/// The format tag in every rendered key. Bump it when the stored layout (see `value`) changes, so
/// nodes of two releases never read each other's entries.
const FORMAT: &str = "v1";

/// `(store, version, name)`, rendered as `k:v1:{store}:{version}:{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    store: StoreId,
    version: i64,
    name: String,
}

impl CacheKey {
    /// `name` says what is cached (`page:/products/tea`, `catalog:categories`): 1 to
    /// [`MAX_NAME_LEN`] bytes of printable ASCII without spaces. Percent-encode anything else.
    pub fn new(store: StoreId, version: i64, name: &str) -> Result<Self, CacheError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CacheError::InvalidKeyName { len: name.len() });
        }
        Ok(Self { store, version, name: name.to_owned() })
    }

    pub fn store(&self) -> StoreId {
        self.store
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The string both levels are keyed by.
    pub fn render(&self) -> String {
        format!("k:{FORMAT}:{}:{}:{}", self.store, self.version, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_renders_with_format_store_version_and_name() {
        let store = StoreId::generate();
        let key = CacheKey::new(store, 7, "page:/products/tea?p=2").unwrap();
        assert_eq!(key.render(), format!("k:v1:{store}:7:page:/products/tea?p=2"));
    }

    #[test]
    fn a_version_bump_is_a_different_key() {
        let store = StoreId::generate();
        let a = CacheKey::new(store, 1, "home").unwrap();
        let b = CacheKey::new(store, 2, "home").unwrap();
        assert_ne!(a.render(), b.render());
    }

    #[test]
    fn names_that_are_empty_too_long_or_not_printable_ascii_are_refused() {
        let store = StoreId::generate();
        assert!(CacheKey::new(store, 1, "").is_err());
        assert!(CacheKey::new(store, 1, &"a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(CacheKey::new(store, 1, &"a".repeat(MAX_NAME_LEN)).is_ok());
        assert!(CacheKey::new(store, 1, "with space").is_err());
        assert!(CacheKey::new(store, 1, "chá").is_err());
        assert!(CacheKey::new(store, 1, "line\nbreak").is_err());
    }
}
