//! The merchant dashboard at `/dashboard`: sign in by phone, run stores from the browser.
//!
//! Every page is server-rendered and every change is a plain form post answered by a redirect,
//! so the dashboard works on any phone browser; the home page's numbers refresh with a few lines
//! of script that poll a JSON endpoint. The session is the API's session token in an HttpOnly,
//! SameSite cookie; every form carries a CSRF token. Writes go through the same domain rules and
//! storage calls as the JSON API.

mod account;
mod catalog;
mod form;
mod money;
mod orders;
mod settings;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_extra::extract::CookieJar;
use kirana_domain::StoreId;
use kirana_domain::store::Store;
use kirana_server::AppState;
use kirana_server::extract::{Merchant, PathIds};
use kirana_storage::StoreScope;
use serde::Serialize;

use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};
use crate::{Web, cookies};

pub use form::{Submitted, show_amount};

/// The dashboard's templates, compiled into the binary.
pub static TEMPLATES: &[(&str, &str)] = &[
    ("dashboard/layout.html", include_str!("../../templates/dashboard/layout.html")),
    ("dashboard/sign_in.html", include_str!("../../templates/dashboard/sign_in.html")),
    ("dashboard/code.html", include_str!("../../templates/dashboard/code.html")),
    ("dashboard/stores.html", include_str!("../../templates/dashboard/stores.html")),
    ("dashboard/new_store.html", include_str!("../../templates/dashboard/new_store.html")),
    ("dashboard/home.html", include_str!("../../templates/dashboard/home.html")),
    ("dashboard/products.html", include_str!("../../templates/dashboard/products.html")),
    ("dashboard/product.html", include_str!("../../templates/dashboard/product.html")),
    ("dashboard/orders.html", include_str!("../../templates/dashboard/orders.html")),
    ("dashboard/order.html", include_str!("../../templates/dashboard/order.html")),
    ("dashboard/customers.html", include_str!("../../templates/dashboard/customers.html")),
    ("dashboard/coupons.html", include_str!("../../templates/dashboard/coupons.html")),
    ("dashboard/money.html", include_str!("../../templates/dashboard/money.html")),
    ("dashboard/settings.html", include_str!("../../templates/dashboard/settings.html")),
    ("dashboard/theme.html", include_str!("../../templates/dashboard/theme.html")),
];

pub fn router() -> Router<AppState> {
    let s = "/dashboard/stores/{store_id}";
    // Product and settings forms carry an image; only they may be as large as an upload.
    let uploads = Router::new()
        .route(&format!("{s}/products/new"), get(catalog::new_form).post(catalog::create))
        .route(&format!("{s}/products/{{product_id}}"), get(catalog::edit_form).post(catalog::update))
        .route(&format!("{s}/settings"), get(settings::form).post(settings::save))
        .layer(DefaultBodyLimit::max(kirana_server::media::MAX_UPLOAD_BYTES + 256 * 1024));
    Router::new()
        .route("/dashboard", get(account::index))
        .route("/dashboard/", get(account::index))
        .route("/dashboard/sign-in", get(account::sign_in_form).post(account::send_code))
        .route("/dashboard/sign-in/code", get(account::code_form).post(account::verify))
        .route("/dashboard/sign-out", post(account::sign_out))
        .route("/dashboard/stores/new", get(account::new_store_form).post(account::create_store))
        .route(s, get(account::store_home))
        .route(&format!("{s}/stats.json"), get(account::stats))
        .route(&format!("{s}/products"), get(catalog::list))
        .route(&format!("{s}/categories"), post(catalog::create_category))
        .route(&format!("{s}/orders"), get(orders::list))
        .route(&format!("{s}/orders/{{order_id}}"), get(orders::show))
        .route(&format!("{s}/orders/{{order_id}}/transitions"), post(orders::transition))
        .route(&format!("{s}/orders/{{order_id}}/refunds"), post(money::refund))
        .route(&format!("{s}/money"), get(money::money))
        .route(&format!("{s}/customers"), get(orders::customers))
        .route(&format!("{s}/coupons"), get(settings::coupons).post(settings::create_coupon))
        .route(&format!("{s}/coupons/{{coupon_id}}"), post(settings::toggle_coupon))
        .route(&format!("{s}/theme"), get(settings::theme).post(settings::save_theme))
        .merge(uploads)
        // Every dashboard response, error pages and sign-in redirects included, is the
        // merchant's alone and never framed.
        .layer(axum::middleware::map_response(|res: Response| async move { private(res) }))
}

/// A signed-in merchant, from the session cookie. Without one, pages redirect to sign-in.
pub struct Session {
    pub merchant: Merchant,
    pub web: Arc<Web>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let web = web(parts)?;
        let jar = CookieJar::from_headers(&parts.headers);
        let token = jar
            .get(cookies::SESSION)
            .map(|c| c.value().to_string())
            .filter(|t| !t.is_empty() && t.len() <= 200)
            .ok_or(WebError::SignIn)?;
        let merchant = kirana_server::extract::authenticate(state, &token).await.map_err(|e| match e {
            kirana_server::error::ApiError::Unauthorized(_) => WebError::SignIn,
            other => WebError::from(other),
        })?;
        Ok(Session { merchant, web })
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Option<Self>, Self::Rejection> {
        match <Session as FromRequestParts<AppState>>::from_request_parts(parts, state).await {
            Ok(s) => Ok(Some(s)),
            Err(WebError::SignIn) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn web(parts: &Parts) -> WebResult<Arc<Web>> {
    parts.extensions.get::<Arc<Web>>().cloned().ok_or_else(|| WebError::Internal("web extension missing".into()))
}

/// A store the signed-in merchant owns, from `{store_id}`. Another merchant's store is "not
/// found", exactly as in the API.
pub struct Owned {
    pub session: Session,
    pub scope: StoreScope,
    pub store: Store,
    pub path: PathIds,
}

impl FromRequestParts<AppState> for Owned {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await?;
        let path = PathIds::from_request_parts(parts, state).await.map_err(WebError::from)?;
        let id = path.raw("store_id").and_then(StoreId::parse).ok_or(WebError::NotFound)?;
        let scope = state.storage.scope_for_owner(session.merchant.id, id).await?;
        let store = state.storage.store(&scope).await?;
        Ok(Owned { session, scope, store, path })
    }
}

impl Owned {
    /// An id from the path; a malformed one is "not found".
    pub fn id<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> WebResult<T> {
        self.path.raw(name).and_then(parse).ok_or(WebError::NotFound)
    }

    /// Where this store's dashboard pages live.
    pub fn base(&self) -> String {
        format!("/dashboard/stores/{}", self.store.id)
    }

    /// The store's public address.
    pub fn storefront(&self) -> String {
        format!("{}/{}", self.session.web.public_url, self.store.slug)
    }

    /// The frame every store page shares: the store, the nav, the form token.
    pub fn chrome(&self, csrf: &Csrf, section: &'static str) -> Chrome {
        Chrome {
            csrf: csrf.token().to_string(),
            store: Some(self.store.clone()),
            base: self.base(),
            storefront: self.storefront(),
            section,
        }
    }
}

/// What the layout needs on every page.
#[derive(Serialize)]
pub struct Chrome {
    pub csrf: String,
    pub store: Option<Store>,
    pub base: String,
    pub storefront: String,
    pub section: &'static str,
}

impl Chrome {
    /// The frame of pages outside any store (sign-in, the store list).
    pub fn bare(csrf: &Csrf) -> Chrome {
        Chrome {
            csrf: csrf.token().to_string(),
            store: None,
            base: String::new(),
            storefront: String::new(),
            section: "",
        }
    }
}

/// Renders a dashboard page: never cached, never framed.
pub fn page(web: &Web, name: &str, ctx: impl Serialize, jar: CookieJar) -> WebResult<Response> {
    let html = web.pages.render(name, ctx)?;
    Ok(private((jar, html).into_response()))
}

/// Marks a dashboard response as the merchant's alone.
pub fn private(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    res
}

/// Sends the browser on after a form post (303: the next request is a GET).
pub fn see_other(jar: CookieJar, to: &str) -> Response {
    private((jar, axum::response::Redirect::to(to)).into_response())
}

/// A form shown again with its errors.
pub fn unprocessable(mut res: Response) -> Response {
    *res.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    res
}

/// The first `n` items of a list.
pub fn first_page(n: i64) -> WebResult<kirana_domain::page::PageRequest> {
    let limit = kirana_domain::page::Limit::parse(Some(n)).map_err(WebError::Internal)?;
    Ok(kirana_domain::page::PageRequest { after: None, limit })
}
