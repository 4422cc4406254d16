//! The storefront: a store's pages, server-rendered, at `/{slug}/…` (or at `/…` on its custom
//! domain, see `domains`). Every page works without JavaScript; forms post and redirect.

mod buy;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
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

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/robots.txt", get(pages::platform_robots))
        .route("/{slug}", get(pages::home))
        .route("/{slug}/", get(pages::home))
        .route("/{slug}/category/{category_id}", get(pages::category))
        .route("/{slug}/product/{product_id}", get(pages::product))
        .route("/{slug}/search", get(pages::search))
        .route("/{slug}/sitemap.xml", get(pages::sitemap))
        .route("/{slug}/robots.txt", get(pages::store_robots))
        .route("/{slug}/cart", get(buy::cart).post(buy::change_cart))
        .route("/{slug}/checkout", get(buy::checkout_form).post(buy::checkout))
        .route("/{slug}/order/{order_id}", get(buy::order))
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

    /// The shared part of every page's context.
    pub async fn site(&self, state: &AppState, csrf: &str, jar: &CookieJar, meta: Meta) -> WebResult<Site> {
        let page = PageRequest { after: None, limit: Limit::parse(Some(100)).map_err(WebError::Internal)? };
        let categories = state.storage.shard(&self.scope).categories(&self.scope, page).await?.items;
        let cart_count = match buy::cart_cookie(jar) {
            Some((id, token)) => state
                .storage
                .shard(&self.scope)
                .cart(&self.scope, id, token, state.clock.now())
                .await
                .map(|c| {
                    if c.status == kirana_domain::cart::CartStatus::Open {
                        c.items.iter().map(|l| l.quantity).sum()
                    } else {
                        0
                    }
                })
                .unwrap_or(0),
            None => 0,
        };
        Ok(Site {
            store: PublicStore::from(&self.store),
            base: self.base.clone(),
            categories,
            cart_count,
            csrf: csrf.to_string(),
            canonical: format!("{}{}", self.origin, meta.path),
            title: meta.title,
            description: meta.description,
            og_image: meta.image.map(|i| og_image(&self.web.public_url, i)),
            og_type: meta.kind,
        })
    }

    /// Renders a page with the store's theme, as an uncacheable HTML response (it carries this
    /// browser's form token and cart).
    pub fn page(&self, name: &str, ctx: impl Serialize, jar: CookieJar) -> WebResult<Response> {
        let html: Html<String> = self.web.themes.render(&self.web.pages, &self.overrides, name, ctx)?;
        let mut res = (jar, html).into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        Ok(res)
    }

    pub fn cookie_path(&self) -> String {
        if self.base.is_empty() { "/".into() } else { self.base.clone() }
    }

    pub fn cookie(&self, name: &'static str, value: String) -> axum_extra::extract::cookie::Cookie<'static> {
        cookies::build(&self.web, name, value, &self.cookie_path(), Some(time::Duration::days(30)))
    }
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
    pub cart_count: u32,
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
        let (scope, canonical) = state.storage.scope_for_slug(&slug).await.map_err(|_| WebError::NotFound)?;
        let domain = parts.extensions.get::<OnCustomDomain>().cloned();
        if !canonical && domain.is_none() {
            // An old slug: send browsers (and search engines) to the current one.
            // Everything after the first path segment, however the slug was typed or encoded.
            let path = parts.uri.path().trim_start_matches('/');
            let rest = path.split_once('/').map(|(_, r)| format!("/{r}")).unwrap_or_default();
            let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            return Ok(Resolve::Moved(Moved(format!("/{}{rest}{query}", scope.slug()))));
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
