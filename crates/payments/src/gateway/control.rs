//! The test gateway's fault switches and event log over HTTP, under `/control` (see
//! [`crate::gateway`]), for the subcommand and scripts; tests call the same things on
//! [`super::TestGateway`]. Behind the API key: whoever can flip these can break payments.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::Deserialize;

use super::Shared;
use super::api::{ApiError, authorized, parse, unauthorized};
use super::deliver::{self, DeliveryError};

pub(super) fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route("/control", get(show).post(set))
        .route("/control/events", get(events))
        .route("/control/events/{id}/redeliver", post(redeliver))
        .layer(middleware::from_fn_with_state(shared, guard))
}

async fn guard(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if !authorized(req.headers(), &shared.key) {
        return unauthorized();
    }
    next.run(req).await
}

fn settings(shared: &Shared) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "latency_ms": shared.latency_ms.load(Ordering::Relaxed),
        "failing": shared.failing(),
        "drop_webhooks": shared.dropping(),
        "webhook_url": shared.webhook_url(),
        "api_calls": shared.api_calls.load(Ordering::Relaxed),
    }))
}

async fn show(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    settings(&shared)
}

/// Each field present changes that switch; the others stay as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    latency_ms: Option<u64>,
    failing: Option<bool>,
    drop_webhooks: Option<bool>,
    /// `""` clears it.
    webhook_url: Option<String>,
}

async fn set(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let new: Settings = parse(&body)?;
    if let Some(url) = new.webhook_url.as_deref().filter(|u| !u.is_empty())
        && !reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "webhook_url must be an http(s) URL"));
    }
    if let Some(ms) = new.latency_ms {
        shared.set_latency(Duration::from_millis(ms));
    }
    if let Some(failing) = new.failing {
        shared.failing.store(failing, Ordering::Relaxed);
    }
    if let Some(drop) = new.drop_webhooks {
        shared.drop_webhooks.store(drop, Ordering::Relaxed);
    }
    if let Some(url) = new.webhook_url {
        shared.set_webhook_url(Some(url));
    }
    tracing::info!(
        latency_ms = shared.latency_ms.load(Ordering::Relaxed),
        failing = shared.failing(),
        drop_webhooks = shared.dropping(),
        "test gateway controls changed"
    );
    Ok(settings(&shared))
}

async fn events(State(shared): State<Arc<Shared>>) -> Json<Vec<serde_json::Value>> {
    let ledger = shared.ledger();
    let events = ledger
        .events()
        .iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "type": e.kind,
                "delivered": e.delivered,
                "attempts": e.attempts,
                "signature": e.signature,
                // Recorded from our own serialization: it parses.
                "event": serde_json::from_slice::<serde_json::Value>(&e.body).unwrap_or_default(),
            })
        })
        .collect();
    Json(events)
}

async fn redeliver(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let refused = match deliver::attempt(&shared, &id).await {
        Ok(()) => return Json(serde_json::json!({ "delivered": true })).into_response(),
        Err(e @ DeliveryError::UnknownEvent(_)) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        Err(e @ DeliveryError::NoWebhookUrl) => ApiError::new(StatusCode::CONFLICT, "no_webhook_url", e.to_string()),
        Err(e @ DeliveryError::Failed(_)) => ApiError::new(StatusCode::BAD_GATEWAY, "delivery_failed", e.to_string()),
    };
    refused.into_response()
}
