//! The cookies pages set, with the attributes every one of them needs: `HttpOnly` (no script
//! reads them; the cart count is the one exception), `SameSite=Lax` (not sent on cross-site form posts), `Secure` on https.

use axum_extra::extract::cookie::{Cookie, SameSite};
use time::Duration;

use crate::Web;

/// The shopper's cart for one store: `<cart id>.<cart token>`, scoped to the store's path.
pub const CART: &str = "kirana_cart";
/// The random value form tokens are derived from.
pub const CSRF: &str = "kirana_csrf";
/// How many items the shopper's cart holds, for the cached pages' header: the one cookie a
/// script reads (it says nothing a shopper's own page does not show).
pub const CART_COUNT: &str = "kirana_cart_n";
/// The merchant's dashboard session: a session token, as the API's bearer tokens.
pub const SESSION: &str = "kirana_session";

pub fn build(web: &Web, name: &'static str, value: String, path: &str, max_age: Option<Duration>) -> Cookie<'static> {
    let mut c = Cookie::build((name, value))
        .path(if path.is_empty() { "/".to_string() } else { path.to_string() })
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(web.secure());
    if let Some(age) = max_age {
        c = c.max_age(age);
    }
    c.build()
}

/// A cookie the page's script may read (not `HttpOnly`); otherwise as [`build`].
pub fn visible(web: &Web, name: &'static str, value: String, path: &str) -> Cookie<'static> {
    let mut c = build(web, name, value, path, Some(Duration::days(30)));
    c.set_http_only(false);
    c
}

/// A cookie that tells the browser to forget `name` at `path`.
pub fn removal(web: &Web, name: &'static str, path: &str) -> Cookie<'static> {
    build(web, name, String::new(), path, Some(Duration::ZERO))
}
