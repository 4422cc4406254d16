//! HTTP caching for the API, fit for a CDN: which responses may be shared, for how long, and
//! strong ETags with `304 Not Modified`.
//!
//! - The shopper API's public reads (a store, its products, a product) are the same for every
//!   caller: `Cache-Control: public, max-age=0, s-maxage=30, stale-while-revalidate=60,
//!   stale-if-error=86400` — browsers revalidate every time (a 304 costs a few bytes), a CDN
//!   serves them for 30 s after an edit at most, refreshes in the background for a minute more,
//!   and keeps serving the last copy for a day if kirana cannot answer.
//! - Carts and order status (a bearer token in the request) and everything a merchant reads:
//!   `private, no-store`.
//! - A response that already says how to cache it (media, pages) is left alone. No `Vary`: the
//!   public reads depend on nothing but the URL (no compression, no cookies, no auth).
//!
//! The ETag is a hash of the body, so it is strong: equal tags mean equal bytes.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

pub const PUBLIC: &str = "public, max-age=0, s-maxage=30, stale-while-revalidate=60, stale-if-error=86400";
pub const PRIVATE: &str = "private, no-store";
/// Largest body hashed for an ETag; anything bigger is passed through untagged.
const MAX_TAGGED_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Public,
    Private,
    /// Not the API: the pages and media set their own.
    Untouched,
}

fn policy(method: &Method, path: &str) -> Policy {
    let Some(rest) = path.strip_prefix("/api/v1/") else { return Policy::Untouched };
    if let Some(shop) = rest.strip_prefix("storefront/")
        && (method == Method::GET || method == Method::HEAD)
    {
        // {slug} | {slug}/products | {slug}/products/{id}
        let parts: Vec<&str> = shop.split('/').collect();
        let public = matches!(parts.as_slice(), [_] | [_, "products"] | [_, "products", _]);
        return if public { Policy::Public } else { Policy::Private };
    }
    if matches!(rest, "openapi.json") {
        return Policy::Untouched;
    }
    Policy::Private
}

/// Whether a request is one of the shopper API's public reads (the same answer for everyone).
pub fn is_public_read(method: &Method, path: &str) -> bool {
    policy(method, path) == Policy::Public
}

/// The middleware.
pub async fn http_cache(req: Request, next: Next) -> Response {
    let policy = policy(req.method(), req.uri().path());
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    let mut res = next.run(req).await;
    if policy == Policy::Untouched || res.headers().contains_key(header::CACHE_CONTROL) {
        return res;
    }
    if policy == Policy::Private || res.status() != StatusCode::OK {
        // Errors are not shared either: a 404 must not outlive the product created next.
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(PRIVATE));
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_TAGGED_BYTES).await {
        Ok(b) => b,
        Err(_) => return crate::error::ApiError::Internal("a response body could not be read".into()).into_response(),
    };
    let etag = etag_of(&bytes);
    parts.headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(PUBLIC));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        parts.headers.insert(header::ETAG, v);
    }
    if if_none_match.as_ref().is_some_and(|v| matches_etag(v, &etag)) {
        parts.status = StatusCode::NOT_MODIFIED;
        strip_entity_headers(&mut parts.headers);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// `"<base64url of the first 16 bytes of SHA-256>"`.
pub fn etag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]))
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `*`, or any listed tag equal
/// once a `W/` prefix is ignored.
pub(crate) fn matches_etag(header: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = header.to_str() else { return false };
    list.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// A 304 carries the validators and caching headers, not the entity's.
fn strip_entity_headers(h: &mut HeaderMap) {
    for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::CONTENT_ENCODING] {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_reads_are_the_store_and_its_products_only() {
        let get = Method::GET;
        assert_eq!(policy(&get, "/api/v1/storefront/chai"), Policy::Public);
        assert_eq!(policy(&get, "/api/v1/storefront/chai/products"), Policy::Public);
        assert_eq!(policy(&get, "/api/v1/storefront/chai/products/0190"), Policy::Public);
        assert_eq!(policy(&Method::HEAD, "/api/v1/storefront/chai/products"), Policy::Public);
        assert_eq!(policy(&get, "/api/v1/storefront/chai/carts/1"), Policy::Private);
        assert_eq!(policy(&get, "/api/v1/storefront/chai/orders/1"), Policy::Private);
        assert_eq!(policy(&Method::POST, "/api/v1/storefront/chai/carts"), Policy::Private);
        assert_eq!(policy(&get, "/api/v1/stores/1/products"), Policy::Private);
        assert_eq!(policy(&get, "/chai/product/1"), Policy::Untouched);
        assert_eq!(policy(&get, "/media/a/b/c"), Policy::Untouched);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let tag = etag_of(b"hello");
        assert!(matches_etag(&HeaderValue::from_str(&tag).unwrap(), &tag));
        assert!(matches_etag(&HeaderValue::from_str(&format!("W/{tag}")).unwrap(), &tag));
        assert!(matches_etag(&HeaderValue::from_str(&format!("\"x\", {tag}")).unwrap(), &tag));
        assert!(matches_etag(&HeaderValue::from_static("*"), &tag));
        assert!(!matches_etag(&HeaderValue::from_static("\"other\""), &tag));
        assert_ne!(etag_of(b"hello"), etag_of(b"hello!"));
    }
}
