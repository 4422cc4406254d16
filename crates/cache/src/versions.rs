//! The node's short-lived memory of each store's cache version, so building a key does not cost
//! a database read per request.
//!
//! The trade: a write becomes visible on this node at most `ttl` after the invalidation consumer
//! bumped the version (plus the consumer's own lag). With the default of one second, a merchant
//! who saves a product and reloads the storefront may see the old page for up to a second; the
//! version read is then one point read per store per node per second, whatever the traffic.
//!
//! When the read fails (the database is down), the last version known is used, so cached pages
//! keep being served; it is counted as `kirana_cache_stale_served_total{reason="version_error"}`.

use std::time::Duration;

use kirana_domain::StoreId;
use tokio::time::Instant;

use crate::metrics as m;

/// Default time a version is trusted without asking again.
pub const DEFAULT_VERSION_TTL: Duration = Duration::from_secs(1);

pub struct Versions {
    ttl: Duration,
    /// Store → (version, when it was read). Kept well past `ttl` (moka evicts by count and by its
    /// own idle timer) so that an outage finds a version to fall back on.
    known: moka::sync::Cache<StoreId, (i64, Instant)>,
}

impl Versions {
    /// `max_stores`: how many stores' versions this node remembers.
    pub fn new(ttl: Duration, max_stores: u64) -> Self {
        let known =
            moka::sync::Cache::builder().max_capacity(max_stores).time_to_idle(Duration::from_secs(3600)).build();
        Self { ttl, known }
    }

    /// The store's version: remembered if read less than `ttl` ago, else `read` (normally
    /// `Shard::cache_version`). Versions only grow: a read that returns less than what was seen
    /// (a lagging replica) keeps the higher one.
    pub async fn get<F, E>(&self, store: StoreId, read: F) -> Result<i64, E>
    where
        F: Future<Output = Result<i64, E>>,
    {
        let known = self.known.get(&store);
        if let Some((version, at)) = known
            && Instant::now() < at + self.ttl
        {
            return Ok(version);
        }
        match read.await {
            Ok(read) => {
                let version = known.map_or(read, |(v, _)| v.max(read));
                self.known.insert(store, (version, Instant::now()));
                Ok(version)
            }
            Err(e) => match known {
                Some((version, _)) => {
                    m::stale_served("version_error");
                    Ok(version)
                }
                None => Err(e),
            },
        }
    }

    /// The store's version if it was read less than `ttl` ago; never reads it.
    pub fn peek(&self, store: StoreId) -> Option<i64> {
        self.known.get(&store).filter(|(_, at)| Instant::now() < *at + self.ttl).map(|(v, _)| v)
    }

    /// Forgets the store's version, so the next `get` reads it. For the node that made a write
    /// and wants its own next page to show it.
    pub fn forget(&self, store: StoreId) {
        self.known.invalidate(&store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: i64) -> std::future::Ready<Result<i64, &'static str>> {
        std::future::ready(Ok(v))
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_is_reused_for_the_ttl_then_read_again() {
        let versions = Versions::new(Duration::from_secs(1), 100);
        let store = StoreId::generate();
        assert_eq!(versions.get(store, ok(3)).await, Ok(3));
        assert_eq!(versions.get(store, ok(4)).await, Ok(3), "within the ttl, not read");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(versions.get(store, ok(4)).await, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_falls_back_to_the_last_known_version() {
        let versions = Versions::new(Duration::from_secs(1), 100);
        let store = StoreId::generate();
        assert_eq!(versions.get(store, std::future::ready(Err("down"))).await, Err("down"));
        versions.get(store, ok(5)).await.unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(versions.get(store, std::future::ready(Err("down"))).await, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_never_goes_backwards_and_forget_reads_again() {
        let versions = Versions::new(Duration::from_secs(1), 100);
        let store = StoreId::generate();
        versions.get(store, ok(7)).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(versions.get(store, ok(6)).await, Ok(7));
        versions.forget(store);
        assert_eq!(versions.get(store, ok(8)).await, Ok(8));
    }
}
