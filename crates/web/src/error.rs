//! Errors as pages: a shopper or merchant sees a plain page that says what happened, never an
//! internal detail. Storage and API errors map to the same statuses the JSON API uses.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use kirana_server::error::ApiError;
use kirana_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("not found")]
    NotFound,
    #[error("the form has expired; reload the page and try again")]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    /// Input the rules refused, field by field (forms show each beside its input).
    #[error(transparent)]
    Invalid(#[from] kirana_domain::Invalid),
    #[error("sign in to continue")]
    SignIn,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    Internal(String),
}

pub type WebResult<T> = Result<T, WebError>;

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Storage(s) => WebError::Storage(s),
            ApiError::NotFound => WebError::NotFound,
            ApiError::Invalid(i) => WebError::Invalid(i),
            ApiError::Unauthorized(_) => WebError::SignIn,
            // The page says to wait, with the same statuses the API uses (never a 500).
            ApiError::RateLimited { retry_after_secs } => {
                WebError::Storage(StorageError::RateLimited { retry_after_secs })
            }
            ApiError::Unavailable(detail) | ApiError::DependencyDown { detail, .. } => {
                WebError::Storage(StorageError::Unavailable(detail))
            }
            other => WebError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match &self {
            WebError::NotFound => (StatusCode::NOT_FOUND, "Not found", "There is nothing at this address.".to_string()),
            WebError::Csrf => (StatusCode::FORBIDDEN, "Form expired", self.to_string()),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Something is not right", m.clone()),
            WebError::Invalid(i) => (StatusCode::BAD_REQUEST, "Something is not right", i.to_string()),
            WebError::SignIn => {
                return axum::response::Redirect::to("/dashboard/sign-in").into_response();
            }
            WebError::Storage(StorageError::NotFound) => {
                (StatusCode::NOT_FOUND, "Not found", "There is nothing at this address.".to_string())
            }
            WebError::Storage(StorageError::RateLimited { retry_after_secs }) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                format!("Please wait {retry_after_secs} seconds and try again."),
            ),
            WebError::Storage(StorageError::Unavailable(_) | StorageError::Moved { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "Temporarily unavailable", "Please try again in a moment.".into())
            }
            WebError::Storage(
                e @ (StorageError::Invalid(_) | StorageError::Conflict { .. } | StorageError::Coupon(_)),
            )
            | WebError::Storage(e @ (StorageError::InsufficientStock(_) | StorageError::InvalidTransition { .. })) => {
                (StatusCode::CONFLICT, "That did not work", e.to_string())
            }
            WebError::Storage(e) => {
                tracing::error!(error = %e, "page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "It has been logged; please try again.".into(),
                )
            }
            WebError::Template(e) | WebError::Internal(e) => {
                tracing::error!(error = %e, "page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "It has been logged; please try again.".into(),
                )
            }
        };
        let mut res = (status, Html(error_page(title, &detail))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A database outage or a store mid-move: worth retrying soon, as the API says too.
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
        }
        res
    }
}

/// A minimal self-contained error page (no template: it must render even when templates fail).
pub fn error_page(title: &str, detail: &str) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}</style></head><body><h1>{t}</h1><p>{d}</p><p><a href=\"javascript:history.back()\">Go back</a></p></body></html>",
        t = esc(title),
        d = esc(detail)
    )
}
