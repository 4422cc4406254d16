//! Kirana's HTTP edge: the merchant API, the shopper API, probes and the OpenAPI description.
//!
//! - [`routes`]: one module per resource, each owning its routes and their OpenAPI entries.
//! - [`extract`]: where raw requests become checked input (bodies, credentials, store scopes).
//! - [`error`]: the single mapping from any error to `application/problem+json`.
//! - [`auth`]: tokens, sign-in codes and how codes are delivered.
//! - [`state`]: what handlers share.
//! - [`http_cache`]: `Cache-Control`, strong ETags and 304s for the API.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`read_cache`]: public storefront reads (pages, the shopper API) served from memory/Redis.
//! - [`trace`]: the `request` span, W3C `traceparent` and `X-Request-Id` in and out.
//! - [`payments`]: online payments through the provider, refunds, the reconciler and payouts.
//! - [`read_routing`]: how fresh each request's reads must be; write tokens for read-your-writes.
//!
//! [`app`] builds the whole router; the binary serves it, and tests call it in-process.

pub mod admission;
pub mod auth;
pub mod error;
pub mod extract;
pub mod http_cache;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod payments;
pub mod read_cache;
pub mod read_routing;
pub mod routes;
pub mod slo;
pub mod state;
pub mod trace;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

pub use state::{AppState, ServerConfig};

/// Largest request body accepted (a product with 100 variants fits with room to spare).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The whole application.
pub fn app(state: AppState) -> Router {
    app_with(state.clone(), Router::new()).layer(axum::middleware::from_fn_with_state(state, metrics::track))
}

/// The application with more routes (the web pages) merged in, under the same limits, timeouts,
/// tracing and error handling as the API (a caller that wraps [`trace::trace`] around more, as
/// the web app does around its edge cache, gets one span, not two). Request metrics (`metrics::track`) are the caller's to wrap
/// around the whole (`app` does; the web app does, outside its edge cache).
pub fn app_with(state: AppState, pages: Router<AppState>) -> Router {
    // The recorder must exist before the first request counts anything, not at the first scrape.
    let _ = metrics::handle();
    let (router, api) = routes::api().split_for_parts();
    let _ = routes::health::OPENAPI.set(api.to_json().unwrap_or_else(|_| "{}".into()));
    router
        .merge(pages)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::no_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(limit_uri))
        .layer(axum::middleware::from_fn_with_state(state.clone(), read_cache::public_api))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admission::admit))
        .layer(axum::middleware::from_fn(http_cache::http_cache))
        .layer(axum::middleware::from_fn(read_routing::route_reads))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, state.config.request_timeout))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            use axum::response::IntoResponse;
            error::ApiError::Internal("a handler panicked".into()).into_response()
        }))
        // Outside the panic catcher, so even that answer names its trace. (tower-http's
        // TraceLayer is not used: its span records the URI, and query strings are the client's.)
        .layer(axum::middleware::from_fn(trace::trace))
        .with_state(state)
}

/// Longest request target accepted; longer ones are refused before routing.
pub const MAX_URI_BYTES: usize = 8 * 1024;

async fn limit_uri(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    // Measured without rendering it: this runs on every request.
    let uri = req.uri();
    let len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        return error::uri_too_long();
    }
    next.run(req).await
}

/// The OpenAPI document as JSON (for `kirana openapi` and tests).
pub fn openapi_json() -> String {
    routes::api().into_openapi().to_pretty_json().unwrap_or_default()
}
