//! Prometheus metrics at `GET /metrics`: the process-wide recorder (the `metrics` facade with
//! the Prometheus exporter), and the storage gauges read at scrape time.
//!
//! Storage's pools and replicas are sampled when scraped rather than pushed: their state lives
//! in the pools and the prober, and a scrape is the only moment anyone needs it. Labels are
//! bounded (shard number, pool role, replica number); never a store id.

use std::sync::OnceLock;

use kirana_storage::Storage;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use. `None` if another recorder was installed
/// first (a library user's own): then `/metrics` says so instead of lying with an empty page.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Histogram buckets for every `*_seconds` metric: 1 ms to 10 s, dense where the SLOs are
/// (100 ms storefront p99, 300 ms checkout p99).
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0];

/// Which part of the platform a request is for: a bounded label for request metrics.
pub fn route_group(path: &str) -> &'static str {
    if let Some(api) = path.strip_prefix("/api/v1/") {
        if api.starts_with("storefront/") {
            return "shopper_api";
        }
        if api.starts_with("ops/") {
            return "ops";
        }
        // The payment provider's callbacks: money already taken, never shed with merchants' work.
        if api.starts_with("payments/") {
            return "payments";
        }
        return "merchant_api";
    }
    if path == "/dashboard" || path.starts_with("/dashboard/") {
        return "dashboard";
    }
    if path.starts_with("/media/") {
        return "media";
    }
    if matches!(path, "/healthz" | "/readyz" | "/metrics" | "/ops" | "/openapi.json" | "/api/v1/openapi.json") {
        return "ops";
    }
    "storefront"
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The middleware counting every request by route group, status class and shopper journey, with
/// its latency: `kirana_http_requests_total{group,class,journey}`,
/// `kirana_http_request_duration_seconds{group,class,journey}`.
/// Wrapped around everything (the edge cache's hits included), so what it sees is what clients
/// got.
/// Requests of a shopper journey are also recorded against the node's objectives (`slo`).
pub async fn track(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let group = route_group(req.uri().path());
    let journey = crate::slo::Journey::of(req.method(), req.uri().path());
    let started = tokio::time::Instant::now();
    let res = next.run(req).await;
    let elapsed = started.elapsed();
    let class = status_class(res.status().as_u16());
    let journey_label = match journey {
        Some(crate::slo::Journey::Storefront) => "storefront",
        Some(crate::slo::Journey::Checkout) => "checkout",
        None => "none",
    };
    // `journey` lets Prometheus compute the same objectives across nodes (deploy/prometheus).
    let labels = [("group", group), ("class", class), ("journey", journey_label)];
    counter!("kirana_http_requests_total", &labels).increment(1);
    histogram!("kirana_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    if let Some(journey) = journey {
        state.slos.record(journey, res.status().as_u16(), elapsed);
    }
    res
}

/// The exposition text, with the storage and event gauges sampled now.
pub async fn render(storage: &Storage) -> Option<String> {
    let handle = handle()?;
    sample_storage(storage);
    sample_events(storage).await;
    Some(handle.render())
}

/// Each shard's outbox (rows waiting, age of the oldest). One bounded read per shard: a shard
/// that does not answer within a second keeps its last values rather than holding the scrape.
/// Consumers' lag per partition (`kirana_consumer_lag_events`, `kirana_consumer_lag_seconds`)
/// is kept current by the pipeline's status watcher (`kirana_events::status::watch`), on either
/// backend.
async fn sample_events(storage: &Storage) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    for log in storage.logs() {
        let shard = log.shard_id().0.to_string();
        let Ok(Ok(stats)) = tokio::time::timeout(std::time::Duration::from_secs(1), log.outbox_stats()).await else {
            continue;
        };
        gauge!("kirana_outbox_rows", "shard" => shard.clone()).set(stats.rows as f64);
        let age = stats.oldest_at.map_or(0.0, |at| (now_ms - at.millis()).max(0) as f64 / 1000.0);
        gauge!("kirana_outbox_oldest_age_seconds", "shard" => shard.clone()).set(age);
    }
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

/// Counts an order just placed (not an idempotent replay): `kirana_orders_total{currency}` and
/// `kirana_order_revenue_minor_total{currency}` (the order total in minor units: paise, cents).
pub fn order_placed(order: &kirana_domain::order::Order) {
    let currency = order.currency.code();
    counter!("kirana_orders_total", "currency" => currency).increment(1);
    counter!("kirana_order_revenue_minor_total", "currency" => currency)
        .increment(u64::try_from(order.totals.total).unwrap_or(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_falls_in_one_bounded_group() {
        assert_eq!(route_group("/api/v1/storefront/chai/products"), "shopper_api");
        assert_eq!(route_group("/api/v1/stores/1/orders"), "merchant_api");
        assert_eq!(route_group("/api/v1/ops/slo"), "ops");
        assert_eq!(route_group("/api/v1/payments/webhooks/testgw"), "payments");
        assert_eq!(route_group("/dashboard"), "dashboard");
        assert_eq!(route_group("/dashboard/stores/1"), "dashboard");
        assert_eq!(route_group("/dashboardx"), "storefront", "a store may be called that");
        assert_eq!(route_group("/media/a/b"), "media");
        assert_eq!(route_group("/readyz"), "ops");
        assert_eq!(route_group("/ops"), "ops");
        assert_eq!(route_group("/chai/product/1"), "storefront");
        assert_eq!(
            (status_class(204), status_class(304), status_class(429), status_class(503)),
            ("2xx", "3xx", "4xx", "5xx")
        );
    }
}
