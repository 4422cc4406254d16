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
//! - `l2` and `breaker`: Redis behind a short deadline and a circuit breaker, so a down Redis
//!   costs one timeout and the node goes on from memory and the database.
//! - `metrics`: the `kirana_cache_*` metrics.
//!
//! Decision 0020 says why it is built this way and what it costs.

mod breaker;
mod cache;
mod error;
mod key;
mod l2;
mod metrics;
mod value;
mod versions;

pub use breaker::BreakerState;
pub use cache::{Cache, Cached, Config, Source, StaleReason};
pub use error::CacheError;
pub use key::{CacheKey, MAX_NAME_LEN};
pub use l2::L2Stats;
pub use value::{Ttl, Value};
pub use versions::{DEFAULT_VERSION_TTL, Versions};
