//! Kirana's web pages, server-rendered: what shoppers and merchants see in a browser.
//!
//! - [`storefront`]: a store's pages at `/{slug}/…` (and at `/` on its custom domain): home,
//!   category, product, search, cart, checkout, order status, sitemap. Buying works with
//!   JavaScript off: plain forms and redirects.
//! - [`dashboard`]: the merchant's app at `/dashboard`.
//! - [`theme`]: the default theme and merchant-edited templates, rendered in a sandbox (bounded
//!   fuel and output, no file or network access), with the last good version kept.
//! - [`csrf`], [`cookies`]: form protection and the cookies pages use.
//! - [`domains`]: answering on a store's custom domain.
//!
//! Everything here goes through the same `Storage` and rules as the JSON API; these modules own
//! only presentation and browser plumbing.

pub mod cookies;
pub mod csrf;
pub mod dashboard;
pub mod domains;
pub mod error;
pub mod render;
pub mod storefront;
pub mod theme;

use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use kirana_server::AppState;

/// What the pages share besides [`AppState`].
pub struct Web {
    /// The platform's public address, e.g. `https://kirana.example` (canonical URLs, cookies).
    pub public_url: String,
    /// Built-in templates: the default storefront theme and the dashboard.
    pub pages: render::Pages,
    /// Merchant-edited themes, compiled once per version.
    pub themes: theme::Themes,
    /// Keys form tokens; derived from the server's secret key.
    pub csrf_key: [u8; 32],
}

impl Web {
    pub fn new(public_url: &str, secret: &[u8; 32]) -> Arc<Web> {
        Arc::new(Web {
            public_url: public_url.trim_end_matches('/').to_string(),
            pages: render::Pages::new(),
            themes: theme::Themes::new(),
            csrf_key: csrf::derive_key(secret),
        })
    }

    /// Whether cookies must be `Secure` (the platform is served over https).
    pub fn secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

/// The whole application: the API (with its limits and error handling), the pages, and the
/// custom-domain rewrite in front of routing.
pub fn app(state: AppState, web: Arc<Web>) -> Router {
    // A custom domain's store is looked up once per second at most (as slugs are).
    let domains = Arc::new(domains::Domains::new(domains::platform_host(&web.public_url), Duration::from_secs(1)));
    let inner = kirana_server::app_with(state.clone(), router(&state, web));
    // The inner router is this one's fallback, so the middleware sees (and may rewrite) every
    // request before the inner router matches it.
    Router::new()
        .fallback_service(inner)
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge_cache))
        .layer(axum::middleware::from_fn_with_state((state.clone(), domains), domains::rewrite))
        .layer(axum::middleware::from_fn_with_state(state, kirana_server::metrics::track))
        // Outermost, so edge-cache hits return `traceparent` too; the API's own copy inside
        // sees the request already traced and steps aside.
        .layer(axum::middleware::from_fn(kirana_server::trace::trace))
}

/// Answers a public page or shopper-API read straight from this node's memory when everything
/// it needs is there and fresh, before routing and the API's layers: a cached page costs a few
/// map lookups. Anything else (a miss, stale, any other request) goes on unchanged, and the
/// routes' own read cache handles it.
async fn edge_cache(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(cache) = &state.read_cache
        && req.method() == axum::http::Method::GET
    {
        let key = if storefront::is_page_path(req.uri().path()) {
            Some(storefront::page_key(&req))
        } else {
            kirana_server::read_cache::api_key(&req)
        };
        if let Some((slug, what)) = key
            && let Some(hit) = cache.serve_hit(&slug, &what, kirana_server::http_cache::PUBLIC, &req)
        {
            return hit;
        }
    }
    next.run(req).await
}

/// The pages' routes, to merge into the application router.
pub fn router(state: &AppState, web: Arc<Web>) -> Router<AppState> {
    Router::new().merge(storefront::router(state)).merge(dashboard::router()).layer(Extension(web))
}
