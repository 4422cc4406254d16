//! Prometheus metrics at `GET /metrics`: the process-wide recorder (the `metrics` facade with
//! the Prometheus exporter), and the storage gauges read at scrape time.
//!
//! Storage's pools and replicas are sampled when scraped rather than pushed: their state lives
//! in the pools and the prober, and a scrape is the only moment anyone needs it. Labels are
//! bounded (shard number, pool role, replica number); never a store id.

use std::sync::OnceLock;

use kirana_storage::Storage;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use. `None` if another recorder was installed
/// first (a library user's own): then `/metrics` says so instead of lying with an empty page.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).as_ref()
}

/// The exposition text, with the storage gauges sampled now.
pub fn render(storage: &Storage) -> Option<String> {
    let handle = handle()?;
    sample_storage(storage);
    Some(handle.render())
}

fn sample_storage(storage: &Storage) {
    for shard in storage.all_shards() {
        let health = shard.health();
        let id = shard.log().shard_id().0.to_string();
        for p in &health.pools {
            let labels = [("shard", id.clone()), ("role", p.role.clone())];
            gauge!("kirana_db_pool_connections", &labels).set(p.size as f64);
            gauge!("kirana_db_pool_idle", &labels).set(p.idle as f64);
            gauge!("kirana_db_pool_waiting", &labels).set(p.waiting as f64);
            gauge!("kirana_db_pool_max", &labels).set(p.max_size as f64);
        }
        for r in &health.replicas {
            let labels = [("shard", id.clone()), ("replica", r.index.to_string())];
            gauge!("kirana_replica_in_rotation", &labels).set(if r.in_rotation { 1.0 } else { 0.0 });
            gauge!("kirana_replica_up", &labels).set(if r.health.is_some() { 1.0 } else { 0.0 });
            if let Some(h) = &r.health {
                gauge!("kirana_replica_lag_bytes", &labels).set(h.lag_bytes as f64);
                // An unknown lag (behind, nothing replayed yet) is reported as very large.
                gauge!("kirana_replica_lag_seconds", &labels).set(h.lag_seconds.min(1e9));
            }
            counter!("kirana_replica_reads_total", &labels).absolute(r.reads);
        }
        if !health.replicas.is_empty() {
            counter!("kirana_replica_fallback_reads_total", "shard" => id.clone()).absolute(health.fallback_reads);
        }
    }
}
