//! The test gateway's provider API under `/v1` (see [`crate::gateway`] for the protocol): the
//! key check, the failing switch, and handlers that parse, ask the books, and answer JSON.
//! Errors leave here in one shape, `{"error": {"code", "message"}}`, mapped once from
//! [`LedgerError`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::Shared;
use super::ledger::LedgerError;
use crate::provider::CreatePayment;

pub(super) fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/payments", post(create))
        .route("/v1/payments/{id}", get(fetch))
        .route("/v1/payments/{id}/capture", post(capture))
        .route("/v1/payments/{id}/cancel", post(cancel))
        .route("/v1/payments/{id}/refunds", post(refund))
        .layer(middleware::from_fn_with_state(shared, guard))
}

/// An error as the API sends it.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            LedgerError::Invalid(code, message) => ApiError::new(StatusCode::BAD_REQUEST, code, message),
            LedgerError::Conflict(code, message) => ApiError::new(StatusCode::CONFLICT, code, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The body as `T`, or a 400 saying why: not axum's `Json`, whose refusals are plain text.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("the body is not valid: {e}")))
}

/// Whether the request carries `Authorization: Bearer <key>`, compared in constant time.
pub(super) fn authorized(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())))
}

pub(super) fn unauthorized() -> Response {
    let mut res =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid Bearer key is required").into_response();
    res.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    res
}

/// Counts every request that reaches `/v1`, before the latency and the failing switch: a test
/// sees exactly how many calls a client's breaker let through.
pub(super) async fn count(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    shared.api_calls.fetch_add(1, Ordering::Relaxed);
    next.run(req).await
}

/// The failing switch, then the key.
async fn guard(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if shared.failing() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the gateway is failing (test mode)")
            .into_response();
    }
    if !authorized(req.headers(), &shared.key) {
        return unauthorized();
    }
    next.run(req).await
}

pub(super) async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreatePayment = parse(&body)?;
    let reference = req.reference.clone();
    let (payment, new) = shared.change(|l| l.create(req, &shared.public_base).map(|created| (created, None)))?;
    if new {
        tracing::info!(payment = %payment.id, %reference, amount = payment.amount, "payment created");
    }
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(payment)).into_response())
}

async fn fetch(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(shared.ledger().get(&id)?).into_response())
}

#[derive(Deserialize)]
struct CaptureBody {
    amount: i64,
}

async fn capture(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let CaptureBody { amount } = parse(&body)?;
    let payment = shared.change(|l| l.capture(&id, amount))?;
    tracing::info!(payment = %id, amount, "payment captured");
    Ok(Json(payment).into_response())
}

async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let payment = shared.change(|l| l.cancel(&id).map(|p| (p, None)))?;
    tracing::info!(payment = %id, "payment cancelled");
    Ok(Json(payment).into_response())
}

#[derive(Deserialize)]
struct RefundBody {
    amount: i64,
    key: String,
}

async fn refund(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let RefundBody { amount, key } = parse(&body)?;
    let refund = shared.change(|l| l.refund(&id, amount, &key))?;
    tracing::info!(payment = %id, refund = %refund.id, amount, "payment refunded");
    Ok(Json(refund).into_response())
}
