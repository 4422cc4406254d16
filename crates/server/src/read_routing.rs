//! How fresh each request's reads must be, and the write token a request's writes earn.
//!
//! Every request runs inside a [`ReadContext`] (see `kirana_storage::consistency`):
//! - a caller that sends a write token (`X-Kirana-Write-Token`, or the `kirana_wt` cookie the
//!   pages set) reads from a replica only once that replica has replayed the token: it always
//!   sees its own writes (read-your-writes);
//! - `X-Kirana-Consistency: strong` asks for the primary;
//! - every other read may come from a replica within the lag bound (bounded staleness): the
//!   storefront, and merchants' reads when they have written nothing lately.
//!
//! Writes always go to the primary. A response to a request that wrote carries its token in the
//! `X-Kirana-Write-Token` header and, for the pages (dashboard, storefront forms), in a
//! short-lived cookie, so the page the browser is sent to next reads what was just written.
//! Tokens are WAL positions, not secrets; a forged one only costs its sender a primary read.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use kirana_storage::consistency::{self, Consistency, ReadContext, WriteToken};

pub const WRITE_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-kirana-write-token");
pub const CONSISTENCY_HEADER: HeaderName = HeaderName::from_static("x-kirana-consistency");
pub const WRITE_TOKEN_COOKIE: &str = "kirana_wt";
/// How long the pages' cookie lives: far longer than any replica may lag and stay in rotation.
const COOKIE_MAX_AGE_SECS: u32 = 60;

/// The middleware: picks the request's level, runs it, and hands back the token it earned.
pub async fn route_reads(req: Request, next: Next) -> Response {
    let level = level(&req);
    let pages = !req.uri().path().starts_with("/api/");
    let ctx = ReadContext::new(level);
    let mut res = consistency::scope(ctx.clone(), next.run(req)).await;
    if let Some(token) = ctx.written() {
        let value = token.encode();
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(WRITE_TOKEN_HEADER, v);
        }
        if pages
            && let Ok(v) = HeaderValue::from_str(&format!(
                "{WRITE_TOKEN_COOKIE}={value}; Path=/; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax"
            ))
        {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

fn level(req: &Request) -> Consistency {
    let headers = req.headers();
    if headers.get(CONSISTENCY_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("strong")) {
        return Consistency::Strong;
    }
    Consistency::Replica { after: write_token(req) }
}

/// The caller's write token: the header, else the pages' cookie.
pub fn write_token(req: &Request) -> Option<WriteToken> {
    let from_header = req.headers().get(WRITE_TOKEN_HEADER).and_then(|v| v.to_str().ok()).and_then(WriteToken::parse);
    from_header.or_else(|| cookie_token(req))
}

fn cookie_token(req: &Request) -> Option<WriteToken> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == WRITE_TOKEN_COOKIE)
        .and_then(|(_, value)| WriteToken::parse(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kirana_storage::ShardId;

    fn req(headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri("/api/v1/stores");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_level_comes_from_the_header_then_the_cookie_else_bounded() {
        let t = WriteToken { shard: ShardId(2), lsn: 0xABC };
        assert_eq!(level(&req(&[])), Consistency::Replica { after: None });
        assert_eq!(level(&req(&[("x-kirana-write-token", "2.ABC")])), Consistency::Replica { after: Some(t) });
        assert_eq!(level(&req(&[("cookie", "a=b; kirana_wt=2.ABC")])), Consistency::Replica { after: Some(t) });
        assert_eq!(level(&req(&[("x-kirana-write-token", "junk")])), Consistency::Replica { after: None });
        assert_eq!(
            level(&req(&[("x-kirana-consistency", "STRONG"), ("x-kirana-write-token", "2.ABC")])),
            Consistency::Strong
        );
    }

    #[tokio::test]
    async fn a_write_answers_with_its_token_and_pages_also_get_a_cookie() {
        use tower::ServiceExt;
        let handler = || async {
            assert_eq!(consistency::current(), Consistency::Replica { after: None });
            consistency::record_write(WriteToken { shard: ShardId(1), lsn: 0x2F });
            "ok"
        };
        let app = axum::Router::new()
            .route("/api/v1/thing", axum::routing::post(handler))
            .route("/dashboard/thing", axum::routing::post(handler))
            .route("/quiet", axum::routing::get(|| async { "nothing written" }))
            .layer(axum::middleware::from_fn(route_reads));
        let call = |uri: &'static str, method: &'static str| {
            app.clone().oneshot(Request::builder().method(method).uri(uri).body(axum::body::Body::empty()).unwrap())
        };
        let api = call("/api/v1/thing", "POST").await.unwrap();
        assert_eq!(api.headers()[WRITE_TOKEN_HEADER], "1.2F");
        assert!(api.headers().get(header::SET_COOKIE).is_none(), "API clients get the header only");
        let page = call("/dashboard/thing", "POST").await.unwrap();
        assert_eq!(page.headers()[WRITE_TOKEN_HEADER], "1.2F");
        let cookie = page.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("kirana_wt=1.2F;") && cookie.contains("HttpOnly"), "{cookie}");
        let quiet = call("/quiet", "GET").await.unwrap();
        assert!(quiet.headers().get(WRITE_TOKEN_HEADER).is_none());
    }
}
