//! The HTTP layer's error type, and the one place any error becomes a response:
//! `application/problem+json` (RFC 9457) with a stable `type`, a human `detail` and, for bad
//! input, the offending fields. Internal detail is logged here once and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kirana_domain::cart::Shortage;
use kirana_domain::coupon::CouponRejection;
use kirana_domain::{FieldError, Invalid};
use kirana_storage::{ConflictKind, StorageError};
use serde::Serialize;

pub const PROBLEM_BASE: &str = "https://kirana.dev/problems/";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("not found")]
    NotFound,
    #[error("body too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("rate limited")]
    RateLimited { retry_after_secs: i64 },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A dependency is known to be down (its breaker is open): 503 with its own `Retry-After`.
    #[error("dependency down: {detail}")]
    DependencyDown { detail: String, retry_after_secs: i64 },
    #[error("internal: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The problem document, as documented in the OpenAPI description.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem; clients branch on this.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For invalid input: every offending field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// For insufficient stock: every line that cannot be had, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shortages: Vec<Shortage>,
}

impl Problem {
    fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("{PROBLEM_BASE}{kind}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: vec![],
            shortages: vec![],
        }
    }

    fn fields(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }
}

fn invalid(errors: Vec<FieldError>) -> Problem {
    let detail = match errors.as_slice() {
        [one] => format!("{}: {}", one.field, one.message),
        many => format!("{} fields are invalid", many.len()),
    };
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid input", detail).fields(errors)
}

fn from_storage(e: StorageError) -> (Problem, Option<i64>) {
    use StatusCode as S;
    let p = match e {
        StorageError::NotFound => Problem::new(S::NOT_FOUND, "not-found", "Not found", "no such resource"),
        StorageError::Invalid(inv) => invalid(inv.0),
        StorageError::Conflict { kind, field, message } => {
            let (slug, title) = match kind {
                ConflictKind::SlugTaken => ("slug-taken", "Slug taken"),
                ConflictKind::DomainTaken => ("domain-taken", "Domain taken"),
                ConflictKind::CartClosed => ("cart-closed", "Cart already checked out"),
                ConflictKind::IdempotencyKeyReused => {
                    let p = Problem::new(
                        S::UNPROCESSABLE_ENTITY,
                        "idempotency-key-reused",
                        "Idempotency key reused",
                        message.clone(),
                    );
                    return (
                        p.fields(vec![FieldError { field: field.unwrap_or("Idempotency-Key").into(), message }]),
                        None,
                    );
                }
                ConflictKind::CodeTaken => ("code-taken", "Code taken"),
                ConflictKind::NameTaken => ("name-taken", "Name taken"),
                ConflictKind::SkuTaken => ("sku-taken", "SKU taken"),
                ConflictKind::TooMany => ("limit-reached", "Limit reached"),
            };
            let errors =
                field.map(|f| vec![FieldError { field: f.into(), message: message.clone() }]).unwrap_or_default();
            Problem::new(S::CONFLICT, slug, title, message).fields(errors)
        }
        StorageError::InsufficientStock(shortages) => {
            let names: Vec<String> = shortages
                .iter()
                .map(|s| format!("'{}' ({} requested, {} available)", s.title, s.requested, s.available.max(0)))
                .collect();
            let mut p = Problem::new(
                S::CONFLICT,
                "insufficient-stock",
                "Insufficient stock",
                format!("not enough stock for {}", names.join(", ")),
            );
            p.shortages = shortages;
            p
        }
        StorageError::InvalidTransition { from, to } => Problem::new(
            S::CONFLICT,
            "invalid-transition",
            "Invalid transition",
            format!(
                "an order that is {} cannot become {}; it can become: {}",
                from.as_str(),
                to.as_str(),
                from.next().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ").if_empty("nothing (final state)")
            ),
        ),
        StorageError::Coupon(r) => {
            let status = if r == CouponRejection::UsedUp { S::CONFLICT } else { S::UNPROCESSABLE_ENTITY };
            Problem::new(status, "coupon-rejected", "Coupon not applicable", r.to_string())
                .fields(vec![FieldError { field: "coupon".into(), message: r.to_string() }])
        }
        StorageError::RateLimited { retry_after_secs } => {
            return (
                Problem::new(
                    S::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    format!("try again in {retry_after_secs} seconds"),
                ),
                Some(retry_after_secs),
            );
        }
        StorageError::Moved { .. } => {
            // A store move's cutover: the write was refused whole; the retry finds the new shard.
            return (
                Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    "this store is being moved; retry in a moment",
                ),
                Some(1),
            );
        }
        StorageError::Unavailable(detail) => {
            tracing::error!(%detail, "storage unavailable");
            return (
                Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    "storage is unavailable; retry shortly",
                ),
                Some(1),
            );
        }
        StorageError::Internal(detail) => {
            tracing::error!(%detail, "storage failure");
            Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "something went wrong on our side; it has been logged",
            )
        }
    };
    (p, None)
}

trait IfEmpty {
    fn if_empty(self, alt: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, alt: &str) -> String {
        if self.is_empty() { alt.to_string() } else { self }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use StatusCode as S;
        let (problem, retry_after) = match self {
            ApiError::Storage(e) => from_storage(e),
            ApiError::Invalid(inv) => (invalid(inv.0), None),
            ApiError::Malformed(detail) => {
                (Problem::new(S::BAD_REQUEST, "malformed", "Malformed request", detail), None)
            }
            ApiError::Unauthorized(detail) => {
                (Problem::new(S::UNAUTHORIZED, "unauthorized", "Unauthorized", detail), None)
            }
            ApiError::NotFound => (Problem::new(S::NOT_FOUND, "not-found", "Not found", "no such resource"), None),
            ApiError::PayloadTooLarge => (
                Problem::new(
                    S::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "Payload too large",
                    format!("request bodies are limited to {} bytes", crate::MAX_BODY_BYTES),
                ),
                None,
            ),
            ApiError::UnsupportedMediaType => (
                Problem::new(
                    S::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "Unsupported media type",
                    "send the body as application/json",
                ),
                None,
            ),
            ApiError::RateLimited { retry_after_secs } => (
                Problem::new(
                    S::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    format!("try again in {retry_after_secs} seconds"),
                ),
                Some(retry_after_secs),
            ),
            ApiError::Unavailable(detail) => {
                (Problem::new(S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail), Some(1))
            }
            ApiError::DependencyDown { detail, retry_after_secs } => (
                Problem::new(S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail),
                Some(retry_after_secs),
            ),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    Problem::new(
                        S::INTERNAL_SERVER_ERROR,
                        "internal",
                        "Internal error",
                        "something went wrong on our side; it has been logged",
                    ),
                    None,
                )
            }
        };
        problem_response(problem, retry_after)
    }
}

pub fn problem_response(problem: Problem, retry_after: Option<i64>) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string())
    {
        h.insert(header::RETRY_AFTER, v);
    }
    res
}

/// Answers for paths and methods the API does not have, in the same problem format.
pub async fn no_route() -> Response {
    ApiError::NotFound.into_response()
}

pub async fn no_method() -> Response {
    problem_response(
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not accept that method",
        ),
        None,
    )
}

pub fn uri_too_long() -> Response {
    problem_response(
        Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            format!("request targets are limited to {} bytes", crate::MAX_URI_BYTES),
        ),
        None,
    )
}
