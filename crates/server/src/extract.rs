//! Extractors: where raw HTTP becomes parsed, checked input, or a problem response.
//!
//! - [`Body`]: JSON bodies, bounded, with errors that name the offending field.
//! - [`Merchant`]: a bearer credential resolved to its merchant.
//! - [`StoreAccess`]: a merchant's own store, resolved through the directory; anyone else's is
//!   404. Handlers under `/stores/{store_id}` can reach a shard only through it.
//! - [`Shop`]: a store resolved by its public slug.
//! - [`CartToken`], [`IdempotencyKey`], [`ClientIp`]: small headers, checked.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header;
use axum::http::request::Parts;
use kirana_domain::{MerchantId, StoreId, TokenId};
use kirana_storage::StoreScope;
use serde::de::DeserializeOwned;

use crate::auth::hash_token;
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, parsed into `T` with field-level errors.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge,
            other => ApiError::Malformed(other.body_text()),
        })?;
        parse_json(&bytes).map(Body)
    }
}

/// Parses a JSON object body. Not JSON at all (or trailing bytes after it) is 400; JSON of the
/// wrong shape is 422 naming the field by its path (e.g. `variants[2].price`). Parsing into a
/// `Value` first keeps the two apart: serde reports some shape errors (a number where an enum
/// is expected) as syntax errors when deserializing straight from bytes.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::Malformed(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::Invalid(kirana_domain::Invalid::field("body", "must be a JSON object")));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let raw = e.into_inner().to_string();
        let (field, message) = humane(&path, &raw);
        ApiError::Invalid(kirana_domain::Invalid::field(field, message))
    })
}

/// Turns serde's wording into a field name and a message a form can show.
fn humane(path: &str, raw: &str) -> (String, String) {
    let base = if path == "." || path.is_empty() { String::new() } else { path.to_string() };
    let join = |name: &str| if base.is_empty() { name.to_string() } else { format!("{base}.{name}") };
    let quoted = |s: &str| s.split('`').nth(1).map(str::to_string);
    if let Some(name) = raw.strip_prefix("missing field ").and_then(quoted) {
        return (join(&name), "is required".into());
    }
    if raw.starts_with("unknown field ") {
        // serde_path_to_error already ends the path with the unknown key, whatever its name.
        let field = if base.is_empty() || base.ends_with('.') { format!("{base}\"\"") } else { base };
        return (field, "is not a field of this request".into());
    }
    let field = if base.is_empty() { "body".to_string() } else { base };
    let message = if raw.contains("expected i64") || raw.contains("expected u32") || raw.contains("expected u64") {
        if raw.starts_with("invalid value: integer") || raw.contains("out of range") {
            "is out of range".to_string()
        } else {
            "must be a whole number".to_string()
        }
    } else if raw.contains("expected a boolean") {
        "must be true or false".to_string()
    } else if raw.contains("expected a string") {
        "must be a string".to_string()
    } else if raw.contains("expected a sequence") {
        "must be a list".to_string()
    } else if raw.contains("expected struct") || raw.contains("expected a map") {
        "must be an object".to_string()
    } else {
        raw.to_string()
    };
    (field, message)
}

/// Query-string parameters as raw strings; each handler parses the ones it takes.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        if q.len() > 4096 {
            return Err(ApiError::Malformed("the query string is too long".into()));
        }
        let map: HashMap<String, String> = form_urlencoded(q);
        Ok(Params(map))
    }
}

fn form_urlencoded(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

impl Params {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The page a list asks for: `cursor` and `limit`.
    pub fn page(&self) -> Result<kirana_domain::page::PageRequest, ApiError> {
        let mut c = kirana_domain::validate::Checker::new();
        let limit = c.check(
            "limit",
            match self.text("limit") {
                None => kirana_domain::page::Limit::parse(None),
                Some(raw) => raw
                    .parse::<i64>()
                    .map_err(|_| "must be a whole number".to_string())
                    .and_then(|n| kirana_domain::page::Limit::parse(Some(n))),
            },
        );
        let after = c.check_opt("cursor", self.text("cursor"), kirana_domain::page::Cursor::parse);
        c.finish()?;
        Ok(kirana_domain::page::PageRequest {
            after: kirana_domain::validate::checked(after),
            limit: kirana_domain::validate::checked(limit),
        })
    }
}

/// Path parameters by name.
pub struct PathIds(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = RawPathParams::from_request_parts(parts, state).await.map_err(|_| ApiError::NotFound)?;
        Ok(PathIds(raw.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }
}

impl PathIds {
    /// An id from the path; a malformed one is answered exactly like a missing one (404).
    pub fn id<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, ApiError> {
        self.0.get(name).and_then(|s| parse(s)).ok_or(ApiError::NotFound)
    }

    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// How stale a credential's "last used" may get before a request refreshes it.
const TOUCH_EVERY_SECS: i64 = 600;

/// The merchant behind the request's bearer credential.
#[derive(Debug, Clone, Copy)]
pub struct Merchant {
    pub id: MerchantId,
    pub token: TokenId,
}

impl FromRequestParts<AppState> for Merchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(m) = parts.extensions.get::<Merchant>() {
            return Ok(*m);
        }
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("send a bearer token: Authorization: Bearer <token>"))?;
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty() && t.len() <= 200)
            .ok_or(ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        let m = authenticate(state, token).await?;
        parts.extensions.insert(m);
        Ok(m)
    }
}

/// The merchant a session token or API key belongs to: bearer headers and dashboard cookies
/// both end here.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Merchant, ApiError> {
    let now = state.clock.now();
    let found = state.storage.directory().authenticate(hash_token(token), now).await?;
    let cred = found.ok_or(ApiError::Unauthorized("the token is unknown, expired or revoked"))?;
    // "Last used" is worth a write only when it would change what a merchant sees: at most
    // one per credential per ten minutes. Its failure must not fail the request.
    if cred.last_used_at.is_none_or(|t| now.millis() - t.millis() >= TOUCH_EVERY_SECS * 1000)
        && let Err(e) = state.storage.directory().touch_token(cred.token, now).await
    {
        tracing::warn!(error = %e, "could not record a credential's use");
    }
    Ok(Merchant { id: cred.merchant, token: cred.token })
}

/// A store the authenticated merchant owns, resolved from `{store_id}` in the path.
pub struct StoreAccess {
    pub merchant: Merchant,
    pub scope: StoreScope,
    pub path: PathIds,
}

impl FromRequestParts<AppState> for StoreAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let merchant = Merchant::from_request_parts(parts, state).await?;
        let path = PathIds::from_request_parts(parts, state).await?;
        let store_id = path.id("store_id", StoreId::parse)?;
        let scope = state.storage.scope_for_owner(merchant.id, store_id).await?;
        state.store_limits.check(scope.store_id())?;
        crate::trace::record_store(scope.store_id());
        Ok(StoreAccess { merchant, scope, path })
    }
}

/// A store as shoppers reach it, from `{slug}` in the path.
pub struct Shop {
    pub scope: StoreScope,
    pub path: PathIds,
}

impl FromRequestParts<AppState> for Shop {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let path = PathIds::from_request_parts(parts, state).await?;
        let slug = path.raw("slug").filter(|s| s.len() <= 64).ok_or(ApiError::NotFound)?;
        let (scope, _canonical) = state.storage.scope_for_slug(&slug.to_ascii_lowercase()).await?;
        state.store_limits.check(scope.store_id())?;
        crate::trace::record_store(scope.store_id());
        Ok(Shop { scope, path })
    }
}

/// The `X-Cart-Token` header, hashed: what opens a cart.
pub struct CartToken(pub [u8; 32]);

pub const CART_TOKEN_HEADER: &str = "x-cart-token";

impl<S: Send + Sync> FromRequestParts<S> for CartToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(CART_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 200)
            .ok_or(ApiError::Unauthorized("send the cart's token in the X-Cart-Token header"))?;
        Ok(CartToken(hash_token(token)))
    }
}

/// The optional `Idempotency-Key` header of a checkout.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::Invalid(kirana_domain::Invalid::field(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                ))
            })?;
        Ok(IdempotencyKey(Some(key.to_string())))
    }
}

/// The client's address: the peer, or with `trust_proxy` the first `X-Forwarded-For` hop.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if state.config.trust_proxy {
            let forwarded = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|ip| ip.trim().parse().ok());
            if let Some(ip) = forwarded {
                return Ok(ClientIp(ip));
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ClientIp(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        qty: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        lines: Vec<Inner>,
    }

    #[test]
    fn trailing_bytes_and_enum_types_are_classified_right() {
        assert!(matches!(parse_json::<Outer>(br#"{"name":"x","lines":[]} junk"#), Err(ApiError::Malformed(_))));
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct WithEnum {
            kind: Kind,
        }
        match parse_json::<WithEnum>(br#"{"kind": 1}"#) {
            Err(ApiError::Invalid(inv)) => assert_eq!(inv.0[0].field, "kind"),
            other => panic!("{other:?}"),
        }
    }

    fn field_of(body: &str) -> (String, String) {
        match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::Invalid(inv)) => (inv.0[0].field.clone(), inv.0[0].message.clone()),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"name":"x","lines":[{"qty":"many"}]}"#),
            ("lines[0].qty".into(), "must be a whole number".into())
        );
        assert_eq!(field_of(r#"{"name":"x","lines":[{"qty":1e99}]}"#).0, "lines[0].qty");
        assert_eq!(field_of(r#"{"lines":[]}"#), ("name".into(), "is required".into()));
        assert_eq!(
            field_of(r#"{"name":"x","lines":[{"qty":1,"price":5}]}"#),
            ("lines[0].price".into(), "is not a field of this request".into())
        );
        assert_eq!(field_of(r#"{"name":7,"lines":[]}"#), ("name".into(), "must be a string".into()));
        assert_eq!(field_of(r#""hello""#), ("body".into(), "must be a JSON object".into()));
        assert_eq!(field_of(r#"{"name":"x","lines":[{"qty":1,"a`b":2}]}"#).0, "lines[0].a`b");
    }

    #[test]
    fn broken_json_is_a_malformed_request() {
        assert!(matches!(parse_json::<Outer>(b"{\"name\": "), Err(ApiError::Malformed(_))));
        assert!(matches!(parse_json::<Outer>(b"not json"), Err(ApiError::Malformed(_))));
    }

    #[test]
    fn query_strings_decode() {
        let m = form_urlencoded("q=red+shoes&limit=5&cursor=a%2Db&bad=%zz");
        assert_eq!(m["q"], "red shoes");
        assert_eq!(m["cursor"], "a-b");
        assert_eq!(m["bad"], "%zz");
    }
}
