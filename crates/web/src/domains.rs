//! Custom domains: a store can answer at `https://shop.example.com/` as well as at `/{slug}`.
//! A request whose `Host` is a store's domain is rewritten, before routing, to the store's slug
//! path; the pages then build their links without the slug.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use kirana_server::AppState;
use tokio::time::Instant;

/// Present on requests that arrived on a store's custom domain (the host, lower-cased).
#[derive(Debug, Clone)]
pub struct OnCustomDomain(pub String);

/// Paths that belong to the platform on every host.
const PLATFORM_PATHS: &[&str] = &["/api/", "/dashboard", "/media/", "/healthz", "/readyz", "/openapi.json", "/metrics"];

/// What the rewrite knows: the platform's own host, and the custom domains it has looked up
/// lately (host → the store's slug, or none), so a store on its own domain costs no directory
/// read per request, and keeps being served from the last answer when the directory is down.
pub struct Domains {
    platform_host: String,
    known: moka::sync::Cache<String, (Option<String>, Instant)>,
    ttl: Duration,
}

impl Domains {
    /// `ttl`: how long a lookup is trusted (a domain moved to another store is seen that late).
    pub fn new(platform_host: String, ttl: Duration) -> Domains {
        Domains { platform_host, known: moka::sync::Cache::builder().max_capacity(1_000_000).build(), ttl }
    }

    /// The slug of the store on `host`, if any.
    async fn slug(&self, app: &AppState, host: &str) -> Option<String> {
        let known = self.known.get(host);
        if let Some((slug, at)) = &known
            && Instant::now() < *at + self.ttl
        {
            return slug.clone();
        }
        match app.storage.directory().resolve_domain(host).await {
            Ok(entry) => {
                let slug = entry.map(|e| e.slug.to_string());
                self.known.insert(host.to_owned(), (slug.clone(), Instant::now()));
                slug
            }
            Err(e) => {
                tracing::warn!(host, error = %e, "the directory cannot resolve a custom domain: using the last answer");
                known.and_then(|(slug, _)| slug)
            }
        }
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(state, rewrite)` wrapped *around* the
/// router (so it runs before routing).
pub async fn rewrite(State(state): State<(AppState, Arc<Domains>)>, mut req: Request, next: Next) -> Response {
    let (app, domains) = &state;
    let platform_host = &domains.platform_host;
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':').map_or(h, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { h })
        })
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let Some(host) = host else { return next.run(req).await };
    let path = req.uri().path().to_string();
    let local = host == *platform_host
        || host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok()
        || !host.contains('.');
    if local || PLATFORM_PATHS.iter().any(|p| path.starts_with(p)) {
        return next.run(req).await;
    }
    match domains.slug(app, &host).await {
        Some(slug) => {
            let rest = if path == "/" { String::new() } else { path };
            let pq = match req.uri().query() {
                Some(q) => format!("/{slug}{rest}?{q}"),
                None => format!("/{slug}{rest}"),
            };
            if let Ok(uri) = pq.parse::<Uri>() {
                *req.uri_mut() = uri;
                req.extensions_mut().insert(OnCustomDomain(host));
            }
            next.run(req).await
        }
        None => next.run(req).await,
    }
}

/// The host part of the platform's public URL (`https://kirana.example:8443` → `kirana.example`).
pub fn platform_host(public_url: &str) -> String {
    let rest = public_url.split_once("://").map_or(public_url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    host.rsplit_once(':').map_or(host, |(h, _)| h).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_host_is_read_from_its_url() {
        assert_eq!(platform_host("https://Kirana.example:8443/x"), "kirana.example");
        assert_eq!(platform_host("http://127.0.0.1:8080"), "127.0.0.1");
    }
}
