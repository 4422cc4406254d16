//! The in-process harness for the web pages: the whole application (API, pages, custom-domain
//! rewrite) over a fresh SQLite data directory and a manual clock, a merchant who sets up stores
//! through the JSON API, and browsers — each with its own cookie jar — that read pages, follow
//! nothing on their own, and post forms with the token the page gave them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kirana_domain::{ManualClock, Timestamp};
use kirana_server::auth::MemoryNotifier;
use kirana_server::media::MediaStore;
use kirana_server::read_cache::{ReadCache, ReadCacheConfig};
use kirana_server::{AppState, ServerConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{Storage, StoreScope};
use kirana_web::Web;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The platform's public address in tests; its host is what "the platform" answers on.
pub const PUBLIC_URL: &str = "http://kirana.test";
pub const PLATFORM_HOST: &str = "kirana.test";
/// 2026-01-01T00:00:00Z: tests run on a clock of their own.
pub const T0: i64 = 1_767_225_600_000;

/// One running platform: the router and the handles tests reach behind it.
pub struct Platform {
    pub router: Router,
    pub state: AppState,
    pub web: Arc<Web>,
    pub notifier: Arc<MemoryNotifier>,
    pub clock: ManualClock,
    pub storage: Storage,
    /// The databases (a temp directory, temp PostgreSQL databases), removed with the platform.
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// A JSON API answer.
#[derive(Debug, Clone)]
pub struct Json {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Json {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected API status; body: {}", self.body);
        self.body
    }
}

/// A merchant with one store, as the API returned it.
#[derive(Debug, Clone)]
pub struct Shop {
    pub token: String,
    pub store: Value,
}

impl Shop {
    pub fn id(&self) -> String {
        self.store["id"].as_str().expect("store id").to_string()
    }

    pub fn slug(&self) -> String {
        self.store["slug"].as_str().expect("store slug").to_string()
    }

    /// `/api/v1/stores/{id}{rest}`.
    pub fn at(&self, rest: &str) -> String {
        format!("/api/v1/stores/{}{rest}", self.id())
    }
}

impl Platform {
    pub async fn new() -> Platform {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).expect("open storage");
        Platform::over(storage, Box::new(dir))
    }

    /// The platform over `storage` (PostgreSQL, say); `keep` is dropped with it.
    pub fn over(storage: Storage, keep: Box<dyn std::any::Any + Send + Sync>) -> Platform {
        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let notifier = Arc::new(MemoryNotifier::default());
        let state = AppState::new(storage.clone(), Arc::new(clock.clone()), notifier.clone(), ServerConfig::default())
            .with_media(MediaStore::memory());
        let web = Web::new(PUBLIC_URL, &[7u8; 32]);
        let router =
            kirana_web::app(state.clone(), web.clone()).layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        Platform { router, state, web, notifier, clock, storage, _keep: keep }
    }

    /// The platform as `kirana serve` runs it: public reads through a read cache (memory, or
    /// Redis at `redis`), and with `events`, the embedded event pipeline whose cache consumer
    /// bumps versions and tells this node at once.
    pub fn cached(
        mut self,
        config: ReadCacheConfig,
        events: bool,
    ) -> (Platform, ReadCache, Option<kirana_events::Pipeline>) {
        let p = &mut self;
        let cache = ReadCache::new(config).expect("a read cache");
        p.router = p.node(&cache);
        p.state = p.state.clone().with_read_cache(cache.clone());
        let pipeline = events.then(|| {
            let forget = cache.clone();
            kirana_events::Pipeline::start(
                p.storage.clone(),
                kirana_events::consumers::all_consumers_notifying(Arc::new(move |s| forget.forget_version(s))),
                p.notifier.clone(),
                Arc::new(p.clock.clone()),
                kirana_events::PipelineConfig::default(),
            )
        });
        (self, cache, pipeline)
    }

    /// Another node over the same databases, with a read cache of its own.
    pub fn node(&self, cache: &ReadCache) -> Router {
        let state = self.state.clone().with_read_cache(cache.clone());
        kirana_web::app(state, self.web.clone()).layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))))
    }

    /// The same platform taking online payments through `payments`.
    #[allow(dead_code)] // only the payment tests pay online
    pub fn with_payments(mut self, payments: kirana_server::payments::Payments) -> Platform {
        self.state = self.state.clone().with_payments(payments);
        self.router = kirana_web::app(self.state.clone(), self.web.clone())
            .layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        self
    }

    /// A browser with an empty cookie jar, addressing the platform's host.
    pub fn browser(&self) -> Browser {
        Browser::new(self.router.clone(), PLATFORM_HOST)
    }

    /// A JSON API call on the platform host.
    pub async fn api(&self, method: Method, uri: &str, token: Option<&str>, body: Option<Value>) -> Json {
        let mut b = Request::builder().method(method).uri(uri).header(header::HOST, PLATFORM_HOST);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("router answers");
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Json { status, headers, body }
    }

    /// Signs in through the OTP flow, reading the code the notifier "sent": a session token.
    pub async fn sign_in(&self, phone: &str) -> String {
        self.api(Method::POST, "/api/v1/auth/otp", None, Some(json!({ "phone": phone }))).await.expect(202);
        let normalized = kirana_domain::Phone::parse(phone).expect("a valid phone");
        let code = self.notifier.last_code(normalized.as_str()).expect("a code was sent");
        let body = self
            .api(Method::POST, "/api/v1/auth/verify", None, Some(json!({ "phone": phone, "code": code })))
            .await
            .expect(200);
        body["token"].as_str().expect("a token").to_string()
    }

    /// A new merchant (by phone) with one store named `name`.
    pub async fn shop(&self, phone: &str, name: &str) -> Shop {
        let token = self.sign_in(phone).await;
        let store =
            self.api(Method::POST, "/api/v1/stores", Some(&token), Some(json!({ "name": name }))).await.expect(201);
        Shop { token, store }
    }

    pub async fn product(&self, shop: &Shop, body: Value) -> Value {
        self.api(Method::POST, &shop.at("/products"), Some(&shop.token), Some(body)).await.expect(201)
    }

    pub async fn category(&self, shop: &Shop, name: &str) -> Value {
        self.api(Method::POST, &shop.at("/categories"), Some(&shop.token), Some(json!({ "name": name })))
            .await
            .expect(201)
    }

    /// A product as its merchant sees it (stock included).
    pub async fn merchant_product(&self, shop: &Shop, product_id: &str) -> Value {
        self.api(Method::GET, &shop.at(&format!("/products/{product_id}")), Some(&shop.token), None).await.expect(200)
    }

    /// The store's orders, newest first, as its merchant sees them.
    pub async fn orders(&self, shop: &Shop) -> Vec<Value> {
        let page = self.api(Method::GET, &shop.at("/orders"), Some(&shop.token), None).await.expect(200);
        page["items"].as_array().expect("an items list").clone()
    }

    pub async fn patch_store(&self, shop: &Shop, body: Value) -> Value {
        self.api(Method::PATCH, &shop.at(""), Some(&shop.token), Some(body)).await.expect(200)
    }

    /// The storage scope of a store, by its slug.
    pub async fn scope(&self, slug: &str) -> StoreScope {
        self.storage.scope_for_slug(slug).await.expect("the store resolves").0
    }

    /// Stores a theme template as if the merchant had saved it (no validation: the caller decides
    /// whether to run [`kirana_web::theme::Themes::validate`] first).
    pub async fn store_theme_template(&self, slug: &str, name: &str, source: &str) {
        let scope = self.scope(slug).await;
        self.storage
            .shard(&scope)
            .set_theme_template(&scope, name, Some(source.to_string()), Timestamp::from_millis(T0))
            .await
            .expect("theme template stored");
    }
}

pub fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// The first variant's id: what a simple product's form posts.
pub fn variant(product: &Value) -> String {
    product["variants"][0]["id"].as_str().expect("a variant id").to_string()
}

/// A page as a browser received it.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    #[track_caller]
    pub fn expect(&self, status: u16) -> &str {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body:\n{}", self.body);
        &self.body
    }

    /// The body of a 200 `text/html` page.
    #[track_caller]
    pub fn html(&self) -> &str {
        self.expect(200);
        assert!(self.content_type().starts_with("text/html"), "not HTML: {:?}", self.headers);
        &self.body
    }

    pub fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
    }

    /// Where a redirect (any 3xx) points.
    #[track_caller]
    pub fn redirect(&self) -> &str {
        assert!(self.status.is_redirection(), "expected a redirect, got {}; body:\n{}", self.status, self.body);
        self.location().expect("a redirect has a Location")
    }

    /// Names of the cookies this response set.
    pub fn set_cookie_names(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next()?.split_once('=').map(|(n, _)| n.trim().to_string()))
            .collect()
    }

    /// The value of the form field `name` (the first `name="…" value="…"` in the page).
    #[track_caller]
    pub fn field(&self, name: &str) -> String {
        field(&self.body, name).unwrap_or_else(|| panic!("no field {name:?} in page:\n{}", self.body))
    }

    /// A response header, or "" when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }

    /// The `_csrf` token of the page's forms.
    #[track_caller]
    pub fn csrf(&self) -> String {
        self.field("_csrf")
    }

    /// The `content` of `<meta property|name="…" content="…">`.
    pub fn meta(&self, key: &str) -> Option<String> {
        attr_after(&self.body, &[&format!("property=\"{key}\""), &format!("name=\"{key}\"")], "content")
    }

    /// The `href` of `<link rel="canonical">`.
    pub fn canonical(&self) -> Option<String> {
        attr_after(&self.body, &["rel=\"canonical\""], "href")
    }

    /// Every `href="…"` in the page, unescaped.
    pub fn hrefs(&self) -> Vec<String> {
        let mut out = vec![];
        let mut rest = self.body.as_str();
        while let Some(i) = rest.find("href=\"") {
            rest = &rest[i + 6..];
            let end = rest.find('"').unwrap_or(rest.len());
            out.push(unescape(&rest[..end]));
            rest = &rest[end..];
        }
        out
    }
}

fn attr_after(html: &str, markers: &[&str], attr: &str) -> Option<String> {
    for marker in markers {
        if let Some(i) = html.find(marker) {
            let tag_start = html[..i].rfind('<')?;
            let tag_end = i + html[i..].find('>')?;
            let tag = &html[tag_start..tag_end];
            let key = format!("{attr}=\"");
            let j = tag.find(&key)? + key.len();
            let end = tag[j..].find('"')?;
            return Some(unescape(&tag[j..j + end]));
        }
    }
    None
}

/// The value of the first input named `name` in `html`.
pub fn field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"");
    let i = html.find(&marker)?;
    let tag_start = html[..i].rfind('<')?;
    let tag_end = i + html[i..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let j = tag.find("value=\"")? + 7;
    let end = tag[j..].find('"')?;
    Some(unescape(&tag[j..j + end]))
}

/// HTML-escapes as the templates do (`& < > " '`).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// A cookie as the browser keeps it.
#[derive(Debug, Clone)]
struct Kept {
    host: String,
    name: String,
    path: String,
    value: String,
}

/// A browser without JavaScript: a cookie jar (per host and path, as RFC 6265 matches them) and
/// requests that send what a browser would. It follows no redirects by itself.
#[derive(Clone)]
pub struct Browser {
    router: Router,
    host: String,
    jar: Arc<Mutex<Vec<Kept>>>,
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}

impl Browser {
    pub fn new(router: Router, host: &str) -> Browser {
        Browser { router, host: host.to_string(), jar: Arc::new(Mutex::new(vec![])) }
    }

    /// The same browser (same jar) addressing another host.
    pub fn on_host(&self, host: &str) -> Browser {
        Browser { router: self.router.clone(), host: host.to_string(), jar: self.jar.clone() }
    }

    fn host_name(&self) -> String {
        self.host.split(':').next().unwrap_or("").to_ascii_lowercase()
    }

    /// The value of cookie `name` kept for exactly `path` on this host.
    pub fn cookie(&self, name: &str, path: &str) -> Option<String> {
        let host = self.host_name();
        let jar = self.jar.lock().unwrap();
        jar.iter().find(|c| c.host == host && c.name == name && c.path == path).map(|c| c.value.clone())
    }

    /// Puts a cookie in the jar by hand (as a tampering or confused client could).
    pub fn set_cookie(&self, name: &str, path: &str, value: &str) {
        let host = self.host_name();
        let mut jar = self.jar.lock().unwrap();
        jar.retain(|c| !(c.host == host && c.name == name && c.path == path));
        jar.push(Kept { host, name: name.into(), path: path.into(), value: value.into() });
    }

    fn cookie_header(&self, path: &str) -> Option<String> {
        let host = self.host_name();
        let jar = self.jar.lock().unwrap();
        let mut matching: Vec<&Kept> = jar.iter().filter(|c| c.host == host && path_matches(&c.path, path)).collect();
        // Longer paths first, as browsers send them.
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        let pairs: Vec<String> = matching.iter().map(|c| format!("{}={}", c.name, c.value)).collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn keep(&self, headers: &HeaderMap, request_path: &str) {
        let host = self.host_name();
        let mut jar = self.jar.lock().unwrap();
        for raw in headers.get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            let mut parts = raw.split(';');
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else { continue };
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            // Default-path per RFC 6265 §5.1.4: the request path up to its last slash.
            let mut path = match request_path.rfind('/') {
                Some(0) | None => "/".to_string(),
                Some(i) => request_path[..i].to_string(),
            };
            let mut expired = false;
            for attr in parts {
                let (k, v) = attr.split_once('=').map_or((attr.trim(), ""), |(k, v)| (k.trim(), v.trim()));
                if k.eq_ignore_ascii_case("path") && v.starts_with('/') {
                    path = v.to_string();
                }
                if k.eq_ignore_ascii_case("max-age") && v.parse::<i64>().is_ok_and(|s| s <= 0) {
                    expired = true;
                }
            }
            jar.retain(|c| !(c.host == host && c.name == name && c.path == path));
            if !expired {
                jar.push(Kept { host: host.clone(), name, path, value });
            }
        }
    }

    async fn send(&self, method: Method, uri: &str, form: Option<String>) -> Page {
        // Browsers say where every form post comes from.
        let origin = (method == Method::POST).then(|| format!("http://{}", self.host));
        self.send_from(method, uri, origin.as_deref(), None, form).await
    }

    /// Posts an urlencoded `body` with the given `Origin` and `Referer` (or none), as a form on
    /// another site, or an old browser, would.
    pub async fn post_raw(&self, uri: &str, origin: Option<&str>, referer: Option<&str>, body: String) -> Page {
        self.send_from(Method::POST, uri, origin, referer, Some(body)).await
    }

    async fn send_from(
        &self,
        method: Method,
        uri: &str,
        origin: Option<&str>,
        referer: Option<&str>,
        form: Option<String>,
    ) -> Page {
        let path = uri.split('?').next().unwrap_or(uri).to_string();
        let mut b = Request::builder().method(method).uri(uri).header(header::HOST, &self.host);
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(r) = referer {
            b = b.header(header::REFERER, r);
        }
        if let Some(cookies) = self.cookie_header(&path) {
            b = b.header(header::COOKIE, cookies);
        }
        let req = match form {
            Some(body) => b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(body)),
            None => b.body(Body::empty()),
        }
        .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("router answers");
        let status = res.status();
        let headers = res.headers().clone();
        self.keep(&headers, &path);
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// A GET with extra request headers (`If-None-Match`, say), keeping no cookie.
    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Page {
        let mut b = Request::builder().method(Method::GET).uri(uri).header(header::HOST, &self.host);
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let res = self.router.clone().oneshot(b.body(Body::empty()).expect("request")).await.expect("router answers");
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, uri: &str) -> Page {
        self.send(Method::GET, uri, None).await
    }

    /// Posts a form, urlencoded as a browser would.
    pub async fn post(&self, uri: &str, fields: &[(&str, &str)]) -> Page {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        self.send(Method::POST, uri, Some(body)).await
    }

    /// Posts a body already encoded (a multipart form, say) with this browser's cookies, keeping
    /// what the answer sets, as [`Browser::post`] does.
    pub async fn post_body(&self, uri: &str, content_type: &str, body: Vec<u8>) -> Page {
        let path = uri.split('?').next().unwrap_or(uri).to_string();
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::HOST, &self.host)
            .header(header::ORIGIN, format!("http://{}", self.host))
            .header(header::CONTENT_TYPE, content_type);
        if let Some(cookies) = self.cookie_header(&path) {
            b = b.header(header::COOKIE, cookies);
        }
        let req = b.body(Body::from(body)).expect("request");
        let res = self.router.clone().oneshot(req).await.expect("router answers");
        let status = res.status();
        let headers = res.headers().clone();
        self.keep(&headers, &path);
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }
}

/// Signs `b` in through the dashboard's own pages: phone → code page → code → session cookie.
#[allow(dead_code)] // not every test binary signs merchants in
pub async fn sign_in_with(p: &Platform, b: &Browser, phone: &str) {
    // The same phone may have had a code moments ago (the API sign-in); codes are at least 30 s
    // apart.
    p.clock.advance_secs(31);
    let form = b.get("/dashboard/sign-in").await;
    form.html();
    let sent = b.post("/dashboard/sign-in", &[("_csrf", &form.csrf()), ("phone", phone)]).await;
    assert_eq!(sent.status.as_u16(), 303, "{}", sent.body);
    let code_page = b.get(sent.redirect()).await;
    code_page.html();
    let normalized = kirana_domain::Phone::parse(phone).expect("a valid phone");
    let code = p.notifier.last_code(normalized.as_str()).expect("a code was sent");
    let done = b
        .post(
            "/dashboard/sign-in/code",
            &[("_csrf", &code_page.csrf()), ("phone", &code_page.field("phone")), ("code", &code)],
        )
        .await;
    assert_eq!(done.status.as_u16(), 303, "{}", done.body);
    assert_eq!(done.redirect(), "/dashboard");
}
