//! Per-store rate limits: one store's flash crowd cannot take the whole node from the others.
//! GCRA (governor's keyed limiter) per store id, checked where a request is resolved to a store
//! (the shopper extractors and the merchant's store access). Cached pages answered by the edge
//! never get here: a crowd reading cached pages costs nothing worth limiting.
//!
//! Each node limits what it sees, so a store's whole-platform rate is this times the nodes
//! behind the balancer; per-phone and per-IP limits on sign-in live with sign-in.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kirana_domain::StoreId;

use crate::error::ApiError;

/// Checks between sweeps of stores not seen lately (the keyed state grows with stores seen).
const SWEEP_EVERY: u64 = 100_000;

pub struct StoreLimits {
    limiter: DefaultKeyedRateLimiter<StoreId>,
    per_second: u32,
    checks: AtomicU64,
}

impl StoreLimits {
    /// `per_second` sustained per store on this node, bursts up to `burst`.
    pub fn new(per_second: u32, burst: u32) -> StoreLimits {
        let rate = NonZeroU32::new(per_second.max(1)).expect("max(1) is non-zero");
        let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero");
        StoreLimits {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            per_second: rate.get(),
            checks: AtomicU64::new(0),
        }
    }

    /// Lets one request for `store` through, or says when to come back (429).
    pub fn check(&self, store: StoreId) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&store).map_err(|_| {
            metrics::counter!("kirana_rate_limited_total", "scope" => "store").increment(1);
            // Whole seconds: a request's worth of the store's rate, at least one.
            ApiError::RateLimited { retry_after_secs: i64::from(1 / self.per_second.max(1)).max(1) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_past_its_burst_is_limited_and_others_are_not() {
        let limits = StoreLimits::new(1, 5);
        let (busy, quiet) = (StoreId::generate(), StoreId::generate());
        for _ in 0..5 {
            limits.check(busy).expect("within the burst");
        }
        assert!(matches!(limits.check(busy), Err(ApiError::RateLimited { retry_after_secs: 1 })));
        limits.check(quiet).expect("another store has its own budget");
    }
}
