//! The cache's metric names and labels, in one place. Labels are levels, results and reasons:
//! never a store id or a key, which would grow without bound.

use kirana_resilience::BreakerState;

pub(crate) fn request(level: &'static str, result: &'static str) {
    metrics::counter!("kirana_cache_requests_total", "level" => level, "result" => result).increment(1);
}

pub(crate) fn load() {
    metrics::counter!("kirana_cache_loads_total").increment(1);
}

pub(crate) fn load_error() {
    metrics::counter!("kirana_cache_load_errors_total").increment(1);
}

/// `reason`: `revalidating` (served while a refresh runs), `loader_error` (the database failed and
/// the stale value was served instead), `version_error` (the store's version could not be read and
/// the last known one was used).
pub(crate) fn stale_served(reason: &'static str) {
    metrics::counter!("kirana_cache_stale_served_total", "reason" => reason).increment(1);
}

pub(crate) fn l2_error(kind: &'static str) {
    metrics::counter!("kirana_cache_l2_errors_total", "kind" => kind).increment(1);
}

pub(crate) fn breaker_state(state: BreakerState) {
    metrics::gauge!("kirana_cache_l2_breaker_state").set(state.as_gauge());
}
