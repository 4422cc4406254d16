//! Kirana's layered cache, for the "cached" consistency level: storefront pages and catalog data.
//!
//! A tour:
//! - `key`: [`CacheKey`] `(store, version, name)`. The version is the store's cache version, so a
//!   write invalidates a whole store in O(1): its old keys are simply never asked for again.
//! - `versions`: [`Versions`], each store's version remembered for a second, and what that costs.
//! - `value`: [`Value`] (bytes, content type, ETag), [`Ttl`] (fresh, then stale), and the layout
//!   of an entry in Redis.
//! - `cache`: [`Cache::get_or_load`]: L1 (moka, bounded in bytes), L2 (Redis), then the loader,
//!   with single flight, stale-while-revalidate and stale-if-error.
//! - `l2`: Redis behind a short deadline and a circuit breaker, so a down Redis
//!   costs one timeout and the node goes on from memory and the database.
//! - `metrics`: the `kirana_cache_*` metrics.
//!
//! Decision 0020 says why it is built this way and what it costs.
//!
//! A page handler, roughly (the version read is the shard's `cache_version`):
//! ```
//! # use std::{sync::Arc, time::Duration};
//! # use kirana_cache::{Cache, CacheKey, Ttl, Value, Versions};
//! # use kirana_domain::StoreId;
//! # async fn page(cache: &Cache, versions: &Versions, store: StoreId) -> Result<(), Arc<std::io::Error>> {
//! let version = versions.get(store, async { Ok::<i64, std::io::Error>(7) }).await.map_err(Arc::new)?;
//! let key = CacheKey::new(store, version, "page:/").expect("a fixed, valid name");
//! let ttl = Ttl::new(Duration::from_secs(30), Duration::from_secs(600));
//! let render = async { Ok::<_, std::io::Error>(Value::new("text/html; charset=utf-8", "<h1>Tea</h1>")) };
//! let page = cache.get_or_load(&key, ttl, render).await?;
//! // page.value.body, page.value.etag (for If-None-Match), page.source (for a debug header)
//! # let _ = page; Ok(()) }
//! ```

mod cache;
mod error;
mod key;
mod l2;
mod metrics;
pub mod testing;
mod value;
mod versions;

pub use cache::{Cache, Cached, Config, Source, StaleReason};
pub use error::CacheError;
pub use key::{CacheKey, MAX_NAME_LEN};
pub use kirana_resilience::BreakerState;
pub use l2::L2Stats;
pub use value::{Ttl, Value};
pub use versions::{DEFAULT_VERSION_TTL, Versions};
