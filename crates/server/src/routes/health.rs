//! Probes for balancers and orchestrators, and the API's own description.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The OpenAPI document, rendered once at startup.
pub(crate) static OPENAPI: OnceLock<String> = OnceLock::new();

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi))
        .routes(routes!(metrics))
        .routes(routes!(slo))
        .routes(routes!(status_page))
}

/// The node's service level objectives: for each, the requests over the budget window (30 days,
/// or since the node started), the error budget left, burn rates over 5 m, 30 m, 1 h and 6 h, and
/// the alerts firing (`page`: 1 h and 5 m faster than 14.4×; `ticket`: 6 h and 30 m faster than
/// 6×).
#[utoipa::path(get, path = "/api/v1/ops/slo", tag = "operations",
    responses((status = 200, description = "objectives and their state", content_type = "application/json")))]
async fn slo(State(s): State<AppState>) -> Response {
    Json(serde_json::json!({ "objectives": s.slos.status() })).into_response()
}

/// The operator's status page: the objectives as a table, alerts first.
#[utoipa::path(get, path = "/ops", tag = "operations",
    responses((status = 200, description = "an HTML page", content_type = "text/html")))]
async fn status_page(State(s): State<AppState>) -> Response {
    let mut rows = String::new();
    let mut status = s.slos.status();
    status.sort_by_key(|o| std::cmp::Reverse(o.alerts.len()));
    for o in status {
        let alerts = if o.alerts.is_empty() { "—".to_string() } else { o.alerts.join(", ") };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{:.2} %</td><td>{} / {}</td><td>{:.1} %</td><td>{:.1} · {:.1} · {:.1} · {:.1}</td><td><b>{}</b></td></tr>",
            o.objective.name,
            o.objective.target * 100.0,
            o.window.good,
            o.window.total,
            o.budget_remaining * 100.0,
            o.burn_rate.m5,
            o.burn_rate.m30,
            o.burn_rate.h1,
            o.burn_rate.h6,
            alerts,
        ));
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"15\"><title>kirana · status</title>\
         <style>body{{font:15px/1.4 system-ui,sans-serif;margin:2rem}}td,th{{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:left}}</style></head>\
         <body><h1>Service level objectives (this node)</h1><table><tr><th>objective</th><th>target</th><th>good / all (30 d)</th>\
         <th>budget left</th><th>burn 5 m · 30 m · 1 h · 6 h</th><th>alerts</th></tr>{rows}</table>\
         <p>JSON: <a href=\"/api/v1/ops/slo\">/api/v1/ops/slo</a> · metrics: <a href=\"/metrics\">/metrics</a></p></body></html>"
    );
    let mut res = axum::response::Html(html).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("private, no-store"));
    res
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness); `ready`, `degraded` (serving, with shards read-only or down, or the
    /// directory unreachable), `unavailable` or `draining` (readiness).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Readiness: each shard that cannot do everything, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardState>,
}

/// A shard that cannot do everything right now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardState {
    pub shard: u32,
    /// `read_only` (its primary is down, its replicas serve reads) or `down`.
    pub state: &'static str,
    pub error: Option<String>,
}

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", reason: None, shards: vec![] })
}

/// Readiness, per shard: a node stays ready while it can serve most stores. It answers 503 only
/// when draining, or when more than half of the shards can serve nothing at all (that is this
/// node's trouble, or the whole fleet's: either way a balancer should look elsewhere). A shard
/// whose primary is down but whose replicas serve reads, a shard that is down, or an
/// unreachable directory are listed in the body (`degraded`), not made the node's fault: every
/// node shares them, and pulling every node out would take the healthy shards' stores down too.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    if !s.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "draining", reason: Some("shutting down".into()), shards: vec![] }),
        );
    }
    let r = s.storage.readiness().await;
    let shards: Vec<ShardState> = r
        .shards
        .iter()
        .enumerate()
        .filter_map(|(i, (state, error))| {
            let state = match state {
                kirana_storage::ShardReadiness::Ready => return None,
                kirana_storage::ShardReadiness::ReadOnly => "read_only",
                kirana_storage::ShardReadiness::Down => "down",
            };
            Some(ShardState { shard: i as u32, state, error: error.clone() })
        })
        .collect();
    let down = shards.iter().filter(|s| s.state == "down").count();
    let total = r.shards.len().max(1);
    if down * 2 > total {
        let reason = format!("{down} of {total} shards can serve nothing");
        return (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable", reason: Some(reason), shards }));
    }
    let status = if shards.is_empty() && r.directory.is_none() { "ready" } else { "degraded" };
    let reason = r.directory.map(|e| format!("the directory does not answer (known stores still serve): {e}"));
    (StatusCode::OK, Json(Health { status, reason, shards }))
}

/// This document: OpenAPI 3.1 describing every endpoint.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi() -> Response {
    let body = OPENAPI.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Prometheus metrics (text exposition format): database pools per shard and role, replica lag
/// and rotation per replica, reads the primary served for want of a replica. Meant for the
/// operator's network, not the public.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"), (status = 503, body = Health)))]
async fn metrics(State(s): State<AppState>) -> Response {
    match crate::metrics::render(&s.storage).await {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                reason: Some("another metrics recorder is installed".into()),
                shards: vec![],
            }),
        )
            .into_response(),
    }
}
