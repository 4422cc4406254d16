//! Form protection: every form carries a token derived (HMAC) from a random per-browser cookie.
//! A cross-site page can make a browser post a form, but cannot read the cookie to compute the
//! token; `SameSite=Lax` keeps the cookie off cross-site posts besides.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::WebError;
use crate::{Web, cookies};

/// The form-token key, derived so it never equals the key it comes from.
pub fn derive_key(secret: &[u8; 32]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(b"kirana csrf v1");
    mac.finalize().into_bytes().into()
}

fn token_for(key: &[u8; 32], cookie: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(cookie.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The request's form token, and the cookie jar to send back (holding a new cookie when the
/// browser had none).
pub struct Csrf {
    token: String,
    fresh: bool,
    pub jar: CookieJar,
    /// The web settings the token was derived with.
    pub web: std::sync::Arc<Web>,
}

impl Csrf {
    /// The value forms put in their hidden `_csrf` field.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same token with a changed jar (a handler that added a cookie).
    pub fn with_jar(mut self, jar: CookieJar) -> Self {
        self.jar = jar;
        self
    }

    /// Accepts a submitted form only if its token matches this browser's cookie.
    pub fn check(&self, submitted: &str) -> Result<(), WebError> {
        if self.fresh || !bool::from(submitted.as_bytes().ct_eq(self.token.as_bytes())) {
            return Err(WebError::Csrf);
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let web = parts
            .extensions
            .get::<std::sync::Arc<Web>>()
            .cloned()
            .ok_or_else(|| WebError::Internal("web extension missing".into()))?;
        let jar = CookieJar::from_headers(&parts.headers);
        match jar.get(cookies::CSRF).map(|c| c.value().to_string()).filter(|v| v.len() >= 32 && v.len() <= 64) {
            Some(value) => Ok(Csrf { token: token_for(&web.csrf_key, &value), fresh: false, jar, web }),
            None => {
                let bytes: [u8; 32] = rand::rng().random();
                let value = URL_SAFE_NO_PAD.encode(bytes);
                let token = token_for(&web.csrf_key, &value);
                let jar = jar.add(cookies::build(&web, cookies::CSRF, value, "/", None));
                Ok(Csrf { token, fresh: true, jar, web })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_depend_on_the_key_and_the_cookie() {
        let k1 = derive_key(&[1; 32]);
        let k2 = derive_key(&[2; 32]);
        assert_ne!(k1, [1; 32]);
        assert_eq!(token_for(&k1, "a"), token_for(&k1, "a"));
        assert_ne!(token_for(&k1, "a"), token_for(&k1, "b"));
        assert_ne!(token_for(&k1, "a"), token_for(&k2, "a"));
    }
}
