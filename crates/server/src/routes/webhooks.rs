//! A store's webhook endpoints and their delivery log.
//!
//! An endpoint receives the store's events as signed `POST`s (the `webhooks` worker in
//! `kirana-events` sends them; its module documentation describes the headers and the
//! signature). The signing secret is shown once, in the answer to the `POST` that creates the
//! endpoint, as Stripe and Shopify do: whoever can list endpoints later cannot read it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kirana_domain::page::Page;
use kirana_domain::{EventId, Timestamp};
use kirana_storage::{Attempt, Delivery, DeliveryStatus, Endpoint, EndpointId, NewEndpoint};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Problem};
use crate::extract::{Body, Params, StoreAccess};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
}

/// The body of `POST /webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Where to send events: `https://` to a public host (`http://` only for localhost, in
    /// development).
    #[schema(example = "https://example.com/kirana/webhooks")]
    pub url: String,
    /// Event types to receive (`order.placed`, `product.updated`, …), or `["*"]` for all,
    /// including types added later. Cart events are never sent.
    #[schema(example = json!(["order.placed", "order.transitioned"]))]
    pub event_types: Vec<String>,
}

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    #[schema(value_type = String, format = Uuid)]
    pub id: EndpointId,
    pub url: String,
    pub event_types: Vec<String>,
    /// False once disabled for failing every delivery for a day; create it anew to resume.
    pub active: bool,
    pub disabled_reason: Option<String>,
    /// When the endpoint began failing with no success since; absent while healthy.
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The signing secret (`whsec_…`): present only in the answer that created the endpoint.
    /// Verify `Kirana-Signature: v1=<hex HMAC-SHA256(secret, "{Kirana-Timestamp}.{body}")>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl Webhook {
    fn from(e: Endpoint, secret: Option<String>) -> Self {
        Webhook {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            active: e.active,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            created_at: e.created_at,
            updated_at: e.updated_at,
            secret,
        }
    }
}

/// One try at delivering an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// 1 for the first try.
    pub attempt: u32,
    pub at: Timestamp,
    /// The endpoint's HTTP status; absent when it did not answer (timeout, refused).
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// An event's delivery to an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDelivery {
    pub event_id: EventId,
    pub event_type: String,
    /// `pending` (retrying for up to 24 h), `delivered` (answered 2xx) or `failed` (gave up).
    #[schema(example = "delivered")]
    pub status: String,
    pub attempts: u32,
    /// When the next try is due (pending deliveries).
    pub next_attempt_at: Option<Timestamp>,
    /// The HTTP status of the latest try.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The latest tries, newest first (at most 10).
    pub recent_attempts: Vec<DeliveryAttempt>,
}

impl From<Delivery> for WebhookDelivery {
    fn from(d: Delivery) -> Self {
        let attempt = |a: Attempt| DeliveryAttempt {
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
        };
        WebhookDelivery {
            event_id: d.event_id,
            event_type: d.event_type,
            status: match d.status {
                DeliveryStatus::Pending => "pending",
                DeliveryStatus::Delivered => "delivered",
                DeliveryStatus::Failed => "failed",
            }
            .into(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
            recent_attempts: d.recent_attempts.into_iter().map(attempt).collect(),
        }
    }
}

/// Registers an endpoint for some or all of the store's events. The answer carries the signing
/// secret, which is never shown again. Each event is sent once per endpoint (receivers
/// deduplicate retries by `Kirana-Event-Id`), retried with backoff for up to 24 hours; an
/// endpoint that fails every try for 24 hours is disabled.
#[utoipa::path(post, path = "/api/v1/stores/{store_id}/webhooks", tag = "webhooks", security(("merchant" = [])),
    params(("store_id" = String, Path)), request_body = WebhookInput,
    responses((status = 201, body = Webhook), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_webhook(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<WebhookInput>,
) -> ApiResult<(StatusCode, Json<Webhook>)> {
    let new = NewEndpoint::parse(&input.url, &input.event_types)?;
    let created = s.storage.shard(&a.scope).webhooks().create_webhook(&a.scope, new, s.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(Webhook::from(created.endpoint, Some(created.secret)))))
}

/// The store's webhook endpoints, newest first.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/webhooks", tag = "webhooks", security(("merchant" = [])),
    params(("store_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Webhook>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_webhooks(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Webhook>>> {
    let page = s.storage.shard(&a.scope).webhooks().list_webhooks(&a.scope, p.page()?).await?;
    Ok(Json(page.map(|e| Webhook::from(e, None))))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/webhooks/{webhook_id}", tag = "webhooks", security(("merchant" = [])),
    params(("store_id" = String, Path), ("webhook_id" = String, Path)),
    responses((status = 200, body = Webhook), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_webhook(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Webhook>> {
    let id = a.path.id("webhook_id", EndpointId::parse)?;
    let e = s.storage.shard(&a.scope).webhooks().get_webhook(&a.scope, id).await?;
    Ok(Json(Webhook::from(e, None)))
}

/// Removes an endpoint at once, with its delivery log: nothing more is sent to it, including
/// deliveries still waiting for a retry.
#[utoipa::path(delete, path = "/api/v1/stores/{store_id}/webhooks/{webhook_id}", tag = "webhooks", security(("merchant" = [])),
    params(("store_id" = String, Path), ("webhook_id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn delete_webhook(State(s): State<AppState>, a: StoreAccess) -> ApiResult<StatusCode> {
    let id = a.path.id("webhook_id", EndpointId::parse)?;
    s.storage.shard(&a.scope).webhooks().delete_webhook(&a.scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The endpoint's delivery log, newest event first: each delivery's status, attempts, the
/// latest HTTP status and error, and its latest tries.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/webhooks/{webhook_id}/deliveries", tag = "webhooks", security(("merchant" = [])),
    params(("store_id" = String, Path), ("webhook_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<WebhookDelivery>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_deliveries(
    State(s): State<AppState>,
    a: StoreAccess,
    p: Params,
) -> ApiResult<Json<Page<WebhookDelivery>>> {
    let id = a.path.id("webhook_id", EndpointId::parse)?;
    let page = p.page()?;
    let log = s.storage.shard(&a.scope).webhooks().webhook_deliveries(&a.scope, id, page).await?;
    Ok(Json(log.map(WebhookDelivery::from)))
}
