//! Request tracing: every request runs inside a span `request` that joins the caller's W3C
//! trace (`traceparent`) or starts one, carries a request id (`X-Request-Id`, the caller's if
//! sane) and, once an extractor resolved it, the store. Both headers are returned on every
//! response, and the trace context is made current for storage, so the outbox rows a request
//! writes name it.
//!
//! The span's fields are what JSON logs carry for every line logged inside the request. They
//! must never hold what a client could use to act as someone: no URI (cart and sign-in paths
//! are fine today, but query strings are the client's), no headers, no body.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use kirana_domain::StoreId;
use kirana_storage::trace::{self, TraceParent};
use tracing::Instrument;
use tracing::field::Empty;

/// The W3C trace context header, accepted and returned.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The request id header, accepted (if sane) and returned.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Marks a request already traced: the web app wraps this middleware around its edge cache
/// and the API's stack again inside; the inner one must not start a second span.
#[derive(Clone, Copy)]
struct Traced;

/// The middleware. Wrap it outermost, so that every answer (an edge-cache hit, a timeout, a
/// caught panic) leaves with the headers.
pub async fn trace(mut req: Request, next: Next) -> Response {
    if req.extensions().get::<Traced>().is_some() {
        return next.run(req).await;
    }
    let parent = req.headers().get(&TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane_request_id(v))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route = crate::metrics::route_group(req.uri().path()),
        request_id = %request_id,
        trace_id = Empty,
        span_id = Empty,
        store_id = Empty,
    );
    let own = trace::join(&span, parent.as_ref());
    req.extensions_mut().insert(Traced);
    let started = std::time::Instant::now();
    let mut res = trace::scope(own, next.run(req)).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(status = res.status().as_u16(), latency_ms = started.elapsed().as_millis() as u64, "answered")
    });
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&own.to_string()) {
        headers.insert(TRACEPARENT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, v);
    }
    res
}

/// Names the store the current request is for on its span (the extractors call this once the
/// store is resolved and, for merchants, its ownership checked).
pub fn record_store(store: StoreId) {
    tracing::Span::current().record("store_id", tracing::field::display(store));
}

/// A request id is echoed into logs and headers, so only short plain tokens are taken.
fn sane_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_request_ids_are_taken() {
        assert!(sane_request_id("7d1c-req_1.a"));
        assert!(!sane_request_id(""));
        assert!(!sane_request_id("a b"));
        assert!(!sane_request_id("x\u{1b}[31m"));
        assert!(!sane_request_id(&"a".repeat(129)));
    }
}
