//! The node's cache in front of what every visitor of a store sees alike: the storefront's
//! public pages and the shopper API's public reads. A hit costs no query at all: the store's
//! scope and cache version are remembered (for a second, see `kirana_cache::Versions`)
//! and the bytes come from memory, or from Redis when another node rendered them.
//!
//! Keys are `(store, cache_version, what)`. The cache-invalidation consumer bumps the version on
//! every change a page could show, so one write retires all of a store's entries at once; this
//! node also forgets the version the moment its own consumer bumps it (`forget_version`), so the
//! next read here sees the change.
//!
//! When the database is down, a store's last known scope and version are used and entries are
//! served past their freshness (`kirana_cache_stale_served_total`); a page never loaded before
//! answers as the handler does without a database (503 and `Retry-After`).
//!
//! Only `200` answers without cookies are kept; anything else (a 404, a redirect, a 503) goes
//! to the caller as the handler gave it, to every caller that waited on the same load.
//!
//! A caller that sends a write token (it wrote lately: an edit, an order) is not served from the
//! cache at all (`x-kirana-cache: bypass`): the version it would be keyed by may not know of the
//! write yet (the consumer that bumps it runs after the write commits, on some node), and the
//! handler's read honours the token wherever it lands. Any token, not only one of the store's
//! shard as this node knows it: after a move the caller's token names the store's new shard
//! while this node's memory of the store may still name the old one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kirana_cache::{Cache, CacheError, CacheKey, Source, Ttl, Value, Versions};
use kirana_domain::StoreId;
use kirana_storage::{Storage, StorageError, StoreScope};
use sha2::{Digest, Sha256};

/// Largest answer kept (a page of 100 products as JSON is well under this).
const MAX_CACHED_BYTES: usize = 2 << 20;

/// How the read cache is built.
#[derive(Debug, Clone)]
pub struct ReadCacheConfig {
    /// L1 size, Redis, its deadline and breaker.
    pub cache: kirana_cache::Config,
    /// How long an entry is served as is, then how long more as stale (while it is refreshed,
    /// or while the database is down). Entries are retired by version long before `fresh` ends;
    /// `fresh` bounds only what no event announces (a coupon expiring, say).
    pub ttl: Ttl,
    /// How long a store's cache version is trusted before it is read again.
    pub version_ttl: Duration,
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        Self {
            cache: kirana_cache::Config::default(),
            ttl: Ttl::new(Duration::from_secs(60), Duration::from_secs(24 * 3600)),
            version_ttl: kirana_cache::DEFAULT_VERSION_TTL,
        }
    }
}

/// The read cache. Cheap to clone.
#[derive(Clone)]
pub struct ReadCache {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Cache,
    versions: Versions,
    /// Slug → scope and when it was resolved: trusted for `scope_ttl`, and past it whenever the
    /// directory cannot answer.
    scopes: moka::sync::Cache<String, (StoreScope, Instant)>,
    scope_ttl: Duration,
    ttl: Ttl,
}

/// An answer the cache does not keep, handed as is to every caller that waited on its load.
#[derive(Debug)]
struct Passthrough {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl std::fmt::Display for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an answer that is not kept ({})", self.status)
    }
}

impl Passthrough {
    fn response(&self) -> Response {
        let mut res = Response::new(Body::from(self.body.clone()));
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

impl ReadCache {
    pub fn new(config: ReadCacheConfig) -> Result<Self, CacheError> {
        let inner = Inner {
            cache: Cache::new(config.cache)?,
            versions: Versions::new(config.version_ttl, 1_000_000),
            scopes: moka::sync::Cache::builder().max_capacity(1_000_000).build(),
            scope_ttl: config.version_ttl,
            ttl: config.ttl,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The layered cache underneath (for `/metrics`, doctor and tests).
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// Makes this node read the store's version again on its next request: called when this
    /// node's invalidation consumer bumped it.
    pub fn forget_version(&self, store: StoreId) {
        self.inner.versions.forget(store);
    }

    /// The answer to a public read of the store at `slug` if everything it needs is in this
    /// node's memory and fresh (the slug's scope, the store's version, the entry); `None`
    /// otherwise, and then the request goes the long way ([`ReadCache::serve`]). Never touches a
    /// database or Redis, so it may run before routing, for any path.
    pub fn serve_hit(&self, slug: &str, what: &str, cache_control: &'static str, req: &Request) -> Option<Response> {
        if req.method() != Method::GET || req.headers().get("x-kirana-consistency").is_some() {
            return None;
        }
        if wrote_lately(req) {
            return None;
        }
        let (scope, at) = self.inner.scopes.get(slug)?;
        if Instant::now() >= at + self.inner.scope_ttl {
            return None;
        }
        let version = self.inner.versions.peek(scope.store_id())?;
        let key = self.key(scope.store_id(), version, what);
        let value = self.inner.cache.peek(&key)?;
        Some(respond(&value, Source::L1, cache_control, req.headers().get(header::IF_NONE_MATCH)))
    }

    fn key(&self, store: StoreId, version: i64, what: &str) -> CacheKey {
        CacheKey::new(store, version, what).unwrap_or_else(|_| {
            let digest = Sha256::digest(what.as_bytes());
            let hex = kirana_domain::hex::encode(&digest);
            CacheKey::new(store, version, &format!("h:{hex}")).expect("a hex digest is a valid name")
        })
    }

    /// Serves a public read of the store at `slug` from the cache, running the rest of the stack
    /// (`next`) only on a miss. `what` names the read (`page:…`, `api:…`); it is hashed when too
    /// long for a key. `cache_control` is what the answer tells browsers and CDNs.
    pub async fn serve(
        &self,
        storage: &Storage,
        slug: &str,
        what: &str,
        cache_control: &'static str,
        req: Request,
        next: Next,
    ) -> Response {
        let strong = req.headers().get("x-kirana-consistency").is_some_and(|v| v.as_bytes() == b"strong");
        if req.method() != Method::GET || strong {
            return next.run(req).await;
        }
        if wrote_lately(&req) {
            let mut res = next.run(req).await;
            res.headers_mut().insert("x-kirana-cache", HeaderValue::from_static("bypass"));
            return res;
        }
        let Some(scope) = self.scope(storage, slug).await else { return next.run(req).await };
        let read = async { storage.shard(&scope).cache_version(&scope).await };
        let Ok(version) = self.inner.versions.get(scope.store_id(), read).await else {
            return next.run(req).await;
        };
        let key = self.key(scope.store_id(), version, what);
        let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
        match self.inner.cache.get_or_load(&key, self.inner.ttl, load(req, next)).await {
            Ok(cached) => respond(&cached.value, cached.source, cache_control, if_none_match.as_ref()),
            Err(pass) => pass.response(),
        }
    }

    /// The scope of a current slug; `None` for an old slug or an unknown one (the handler
    /// redirects or answers 404). Remembered as long as a version is (a renamed store's old
    /// slug may serve its cached pages that long before it redirects); when the directory
    /// fails, the last scope seen for the slug.
    async fn scope(&self, storage: &Storage, slug: &str) -> Option<StoreScope> {
        let known = self.inner.scopes.get(slug);
        if let Some((scope, at)) = &known
            && Instant::now() < *at + self.inner.scope_ttl
        {
            return Some(scope.clone());
        }
        match storage.scope_for_slug(slug).await {
            Ok((scope, true)) => {
                self.inner.scopes.insert(slug.to_owned(), (scope.clone(), Instant::now()));
                Some(scope)
            }
            Ok((_, false)) | Err(StorageError::NotFound) => {
                self.inner.scopes.invalidate(slug);
                None
            }
            Err(e) => {
                let (scope, _) = known?;
                tracing::warn!(slug, error = %e, "the directory cannot answer: using the store's last known scope");
                Some(scope)
            }
        }
    }
}

/// Whether the caller holds a write token: then no cached copy is sure to hold its write (see the
/// module docs).
fn wrote_lately(req: &Request) -> bool {
    crate::read_routing::write_token(req).is_some()
}

/// Runs the handler for a miss, keeping its answer only if it is the same for everyone: a 200
/// that sets no cookie.
async fn load(mut req: Request, next: Next) -> Result<Value, Passthrough> {
    // The caller's validators are for the caller; the load makes the full answer.
    req.headers_mut().remove(header::IF_NONE_MATCH);
    let res = next.run(req).await;
    let (parts, body) = res.into_parts();
    let body = match axum::body::to_bytes(body, MAX_CACHED_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let err = crate::error::ApiError::Internal("an answer too large to keep".into()).into_response();
            let (parts, body) = err.into_parts();
            let body = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
            return Err(Passthrough { status: parts.status, headers: parts.headers, body });
        }
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match content_type {
        Some(ct) if parts.status == StatusCode::OK && !parts.headers.contains_key(header::SET_COOKIE) => {
            Ok(Value::new(ct, body))
        }
        _ => Err(Passthrough { status: parts.status, headers: parts.headers, body }),
    }
}

fn respond(
    value: &Value,
    source: Source,
    cache_control: &'static str,
    if_none_match: Option<&HeaderValue>,
) -> Response {
    let fresh_304 = if_none_match.is_some_and(|v| crate::http_cache::matches_etag(v, &value.etag));
    let mut res = if fresh_304 {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(value.body.clone()))
    };
    let h = res.headers_mut();
    if !fresh_304 && let Ok(ct) = HeaderValue::from_str(&value.content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(etag) = HeaderValue::from_str(&value.etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    let label = match source {
        Source::L1 => "hit",
        Source::L2 => "hit-shared",
        Source::Loaded => "miss",
        Source::Stale(_) => "stale",
    };
    h.insert("x-kirana-cache", HeaderValue::from_static(label));
    res
}

/// The middleware in front of the shopper API's public reads (a store, its products, a
/// product), keyed by path and query.
pub async fn public_api(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(cache) = state.read_cache.clone() else { return next.run(req).await };
    let Some((slug, what)) = api_key(&req) else { return next.run(req).await };
    cache.serve(&state.storage, &slug, &what, crate::http_cache::PUBLIC, req, next).await
}

/// The slug and the cache name of a shopper-API public read; `None` for any other request.
pub fn api_key(req: &Request) -> Option<(String, String)> {
    let path = req.uri().path();
    if !crate::http_cache::is_public_read(req.method(), path) {
        return None;
    }
    let slug = path.trim_start_matches("/api/v1/storefront/").split('/').next().unwrap_or("").to_ascii_lowercase();
    let what = match req.uri().query() {
        Some(q) => format!("api:{path}?{q}"),
        None => format!("api:{path}"),
    };
    Some((slug, what))
}
