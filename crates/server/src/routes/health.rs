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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", reason: None })
}

/// Readiness: every database answers and the node is not draining. 503 tells a balancer to
/// send traffic elsewhere.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    if !s.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "draining", reason: Some("shutting down".into()) }),
        );
    }
    match s.storage.ping().await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ready", reason: None })),
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable", reason: Some(e.to_string()) }))
        }
    }
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
    match crate::metrics::render(&s.storage) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health { status: "unavailable", reason: Some("another metrics recorder is installed".into()) }),
        )
            .into_response(),
    }
}
