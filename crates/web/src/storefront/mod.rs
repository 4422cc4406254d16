//! The storefront: a store's pages, server-rendered, at `/{slug}/…` (or at `/…` on its custom
//! domain, see `domains`). Every page works without JavaScript; forms post and redirect.

mod buy;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum_extra::extract::CookieJar;
use kirana_domain::catalog::Category;
use kirana_domain::page::{Limit, PageRequest};
use kirana_domain::store::{PublicStore, Store};
use kirana_server::AppState;
use kirana_storage::StoreScope;
use serde::Serialize;

use crate::domains::OnCustomDomain;
use crate::error::{WebError, WebResult};
use crate::{Web, cookies};

pub use buy::sample_contexts;

pub fn router(state: &AppState) -> Router<AppState> {
    // The pages every visitor sees alike, served through the node's read cache.
    let public = Router::new()
        .route("/{slug}", get(pages::home))
        .route("/{slug}/", get(pages::home))
        .route("/{slug}/category/{category_id}", get(pages::category))
        .route("/{slug}/product/{product_id}", get(pages::product))
        .route("/{slug}/search", get(pages::search))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), page_cache));
    Router::new()
        .merge(public)
        .route("/robots.txt", get(pages::platform_robots))
        .route("/{slug}/sitemap.xml", get(pages::sitemap))
        .route("/{slug}/robots.txt", get(pages::store_robots))
        .route("/{slug}/cart", get(buy::cart).post(buy::change_cart))
        .route("/{slug}/checkout", get(buy::checkout_form).post(buy::checkout))
        .route("/{slug}/order/{order_id}", get(buy::order))
}

/// Query parameters a public page reads; any other (`utm_source`, `fbclid`, …) changes nothing
/// on the page, so it is left out of the cache key rather than making a copy per campaign link.
const PAGE_PARAMS: &[&str] = &["q", "after", "added"];

/// The read cache in front of the public pages: keyed by the host the page is for (its links
/// differ on a custom domain), its path, and the parameters it reads, in a fixed order.
async fn page_cache(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cache) = state.read_cache.clone() else { return next.run(req).await };
    let (slug, what) = page_key(&req);
    cache.serve(&state.storage, &slug, &what, kirana_server::http_cache::PUBLIC, req, next).await
}

/// The slug and the cache name of a public page request.
pub fn page_key(req: &Request) -> (String, String) {
    let domain = req.extensions().get::<OnCustomDomain>().map(|d| d.0.as_str());
    let path = req.uri().path();
    let slug = path.trim_start_matches('/').split('/').next().unwrap_or("").to_ascii_lowercase();
    let mut params: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| PAGE_PARAMS.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    params.sort();
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    (slug, format!("page:{}:{path}?{query}", domain.unwrap_or("-")))
}

/// Whether a path has the shape of a public page (`/{slug}`, `/{slug}/`, `/{slug}/search`,
/// `/{slug}/product/{id}`, `/{slug}/category/{id}`), as `router` routes them.
pub fn is_page_path(path: &str) -> bool {
    // Runs on every GET at the edge: no allocation.
    let mut parts = path.trim_start_matches('/').splitn(4, '/');
    let (slug, second, third, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    if slug.is_none_or(str::is_empty) || rest.is_some() {
        return false;
    }
    matches!((second, third), (None, None) | (Some("" | "search"), None) | (Some("product" | "category"), Some(_)))
}

/// A store as its pages see it, resolved from `{slug}`.
pub struct Front {
    pub web: Arc<Web>,
    pub scope: StoreScope,
    pub store: Store,
    /// Where the store's pages live as the browser sees them: `/slug`, or `` on its domain.
    pub base: String,
    /// The store's absolute address, for canonical URLs and sitemaps.
    pub origin: String,
    pub overrides: Vec<(String, String)>,
    path: RawPath,
}

struct RawPath(Vec<(String, String)>);

impl Front {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.path.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The shared part of a public page's context: the same for every visitor, so the page can
    /// be cached and shared (no form token, no cart count; the layout's script shows the count
    /// from the `kirana_cart_n` cookie).
    pub async fn site(&self, state: &AppState, meta: Meta) -> WebResult<Site> {
        let page = PageRequest { after: None, limit: Limit::parse(Some(100)).map_err(WebError::Internal)? };
        let categories = state.storage.shard(&self.scope).categories(&self.scope, page).await?.items;
        Ok(Site {
            store: PublicStore::from(&self.store),
            base: self.base.clone(),
            categories,
            cart_count: None,
            csrf: String::new(),
            canonical: format!("{}{}", self.origin, meta.path),
            title: meta.title,
            description: meta.description,
            og_image: meta.image.map(|i| og_image(&self.web.public_url, i)),
            og_type: meta.kind,
        })
    }

    /// The context of a page only this browser sees (cart, checkout, order): with its form token
    /// and the number of items in its cart.
    pub async fn private_site(
        &self,
        state: &AppState,
        csrf: &str,
        cart: Option<&kirana_domain::cart::Cart>,
        meta: Meta,
    ) -> WebResult<Site> {
        let mut site = self.site(state, meta).await?;
        site.csrf = csrf.to_string();
        site.cart_count = Some(cart.map_or(0, cart_count));
        Ok(site)
    }

    /// Renders a public page with the store's theme: identical for every visitor, so it sets no
    /// cookie and may be kept by the node's cache and by a CDN (see `page_cache`).
    pub fn page(&self, name: &str, ctx: impl Serialize) -> WebResult<Response> {
        let html: Html<String> = self.web.themes.render(&self.web.pages, &self.overrides, name, ctx)?;
        let mut res = html.into_response();
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(kirana_server::http_cache::PUBLIC));
        security_headers(&mut res);
        Ok(res)
    }

    /// Renders a page that carries this browser's form token and cart: never stored anywhere.
    pub fn private_page(&self, name: &str, ctx: impl Serialize, jar: CookieJar) -> WebResult<Response> {
        let html: Html<String> = self.web.themes.render(&self.web.pages, &self.overrides, name, ctx)?;
        let mut res = (jar, html).into_response();
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        security_headers(&mut res);
        Ok(res)
    }

    pub fn cookie_path(&self) -> String {
        if self.base.is_empty() { "/".into() } else { self.base.clone() }
    }

    pub fn cookie(&self, name: &'static str, value: String) -> axum_extra::extract::cookie::Cookie<'static> {
        cookies::build(&self.web, name, value, &self.cookie_path(), Some(time::Duration::days(30)))
    }
}

fn security_headers(res: &mut Response) {
    let h = res.headers_mut();
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
}

/// Items in an open cart (0 once it became an order).
pub fn cart_count(cart: &kirana_domain::cart::Cart) -> u32 {
    if cart.status == kirana_domain::cart::CartStatus::Open { cart.items.iter().map(|l| l.quantity).sum() } else { 0 }
}

/// An image URL chat apps can fetch: absolute, and for an upload one of its variant files
/// (the 640-px one when the original was that wide; link previews do not need more).
fn og_image(public_url: &str, url: String) -> String {
    match kirana_server::media::dimensions(&url) {
        Some((w, _)) => format!("{public_url}{url}/{}.jpg", if w >= 640 { 640 } else { 320 }),
        None if url.starts_with('/') => format!("{public_url}{url}"),
        None => url,
    }
}

/// What a page says about itself, for `<head>`.
pub struct Meta {
    pub path: String,
    pub title: String,
    pub description: String,
    pub image: Option<String>,
    pub kind: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Site {
    pub store: PublicStore,
    pub base: String,
    pub categories: Vec<Category>,
    /// Only on private pages; public ones leave it to the layout's script.
    pub cart_count: Option<u32>,
    /// This browser's form token; empty on public pages, which have no form that needs one.
    pub csrf: String,
    pub canonical: String,
    pub title: String,
    pub description: String,
    pub og_image: Option<String>,
    pub og_type: &'static str,
}

/// A response that sends the browser to the store's canonical address (an old slug).
pub struct Moved(pub String);

impl IntoResponse for Moved {
    fn into_response(self) -> Response {
        Redirect::permanent(&self.0).into_response()
    }
}

pub enum Resolve {
    Found(Box<Front>),
    Moved(Moved),
}

impl FromRequestParts<AppState> for Resolve {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let web =
            parts.extensions.get::<Arc<Web>>().cloned().ok_or_else(|| WebError::Internal("web missing".into()))?;
        let raw = RawPathParams::from_request_parts(parts, state).await.map_err(|_| WebError::NotFound)?;
        let path: Vec<(String, String)> = raw.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let slug = path
            .iter()
            .find(|(k, _)| k == "slug")
            .map(|(_, v)| v.to_ascii_lowercase())
            .filter(|s| s.len() <= 64)
            .ok_or(WebError::NotFound)?;
        let (scope, canonical) = state.storage.scope_for_slug(&slug).await?;
        let domain = parts.extensions.get::<OnCustomDomain>().cloned();
        if !canonical && domain.is_none() {
            // An old slug: send browsers (and search engines) to the current one.
            // Everything after the first path segment, however the slug was typed or encoded.
            let path = parts.uri.path().trim_start_matches('/');
            let rest = path.split_once('/').map(|(_, r)| format!("/{r}")).unwrap_or_default();
            let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            return Ok(Resolve::Moved(Moved(format!("/{}{rest}{query}", scope.slug()))));
        }
        if state.store_limits.check(scope.store_id()).is_err() {
            return Err(WebError::Storage(kirana_storage::StorageError::RateLimited { retry_after_secs: 1 }));
        }
        let store = state.storage.store(&scope).await?;
        let overrides = state.storage.shard(&scope).theme_templates(&scope).await?;
        let (base, origin) = match domain {
            Some(d) => (String::new(), format!("{}://{}", if web.secure() { "https" } else { "http" }, d.0)),
            None => (format!("/{}", scope.slug()), format!("{}/{}", web.public_url, scope.slug())),
        };
        Ok(Resolve::Found(Box::new(Front { web, scope, store, base, origin, overrides, path: RawPath(path) })))
    }
}

/// Unwraps a [`Resolve`] inside a handler: `let f = found!(resolve);`.
macro_rules! found {
    ($r:expr) => {
        match $r {
            $crate::storefront::Resolve::Found(f) => f,
            $crate::storefront::Resolve::Moved(m) => return Ok(axum::response::IntoResponse::into_response(m)),
        }
    };
}
pub(crate) use found;

#[cfg(test)]
mod tests {
    use super::is_page_path;

    #[test]
    fn page_paths_are_the_public_routes_shapes() {
        for page in ["/chai", "/chai/", "/chai/search", "/chai/product/01", "/chai/category/01"] {
            assert!(is_page_path(page), "{page}");
        }
        for other in ["/", "/chai/cart", "/chai/checkout", "/chai/order/01", "/chai/product", "/chai/product/01/x"] {
            assert!(!is_page_path(other), "{other}");
        }
    }
}
