//! Signing in by phone and code, sessions and API keys: what keeps a merchant's account theirs.
//!
//! Codes are read from the in-memory notifier, and time moves only when a test advances the
//! harness clock, so expiry and per-phone limits are exact to the second. The per-IP limiter
//! counts real requests, so its tests use a small `otp_per_ip`.

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request};
use kirana_server::ServerConfig;
use serde_json::{Value, json};

use crate::common::*;

const DAY: i64 = 24 * 3600;

async fn request_code(app: &TestApp, phone: &str) -> Resp {
    app.post("/api/v1/auth/otp", None, json!({ "phone": phone })).await
}

async fn verify(app: &TestApp, phone: &str, code: &str) -> Resp {
    app.post("/api/v1/auth/verify", None, json!({ "phone": phone, "code": code })).await
}

/// The code the notifier last "sent" to `phone` (as written in E.164).
fn code_for(app: &TestApp, phone: &str) -> String {
    app.notifier.last_code(phone).expect("a code was sent")
}

/// A six-digit code that is not `code`.
fn wrong(code: &str) -> String {
    if code == "000000" { "111111".into() } else { "000000".into() }
}

/// Sends a code and returns it.
async fn fresh_code(app: &TestApp, phone: &str) -> String {
    request_code(app, phone).await.expect(202);
    code_for(app, phone)
}

#[track_caller]
fn assert_field_error(r: &Resp, status: u16, field: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.body);
    assert!(r.is_problem(), "not a problem document: {:?}", r.headers);
    let fields: Vec<&str> =
        r.body["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    assert!(fields.contains(&field), "expected an error naming {field}, got {}", r.body);
}

#[track_caller]
fn retry_after(r: &Resp) -> i64 {
    r.headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("a {} without Retry-After: {}", r.status, r.body))
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

#[track_caller]
fn assert_rate_limited(r: &Resp) -> i64 {
    assert_eq!(r.status.as_u16(), 429, "body: {}", r.body);
    assert!(r.is_problem());
    assert!(r.body["type"].as_str().unwrap().ends_with("/rate-limited"), "{}", r.body);
    retry_after(r)
}

#[track_caller]
fn assert_unauthorized(r: &Resp) {
    assert_eq!(r.status.as_u16(), 401, "body: {}", r.body);
    assert!(r.is_problem(), "not a problem document: {:?}", r.headers);
    assert_eq!(
        r.headers.get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("Bearer"),
        "a 401 must carry a Bearer challenge"
    );
}

async fn me(app: &TestApp, token: &str) -> Resp {
    app.get("/api/v1/me", Some(token)).await
}

#[tokio::test]
async fn signing_in_creates_the_merchant_once_however_the_phone_is_written() {
    let app = TestApp::new().await;
    let phone = "+919800000101";

    let code = fresh_code(&app, phone).await;
    let first = verify(&app, phone, &code).await.expect(200);
    assert_eq!(first["new_merchant"], true);
    assert_eq!(first["merchant"]["phone"], phone);
    assert!(first["token"].as_str().unwrap().starts_with("kir_"));
    let merchant_id = first["merchant"]["id"].as_str().unwrap().to_string();

    // The same phone written as a local number, a little later.
    app.clock.advance_secs(30);
    let local = "98000 00101";
    let code = fresh_code(&app, phone).await;
    let second = verify(&app, local, &code).await.expect(200);
    assert_eq!(second["new_merchant"], false, "a returning merchant is not new");
    assert_eq!(second["merchant"]["id"], merchant_id.as_str(), "the second sign-in must find the same merchant");
    assert_ne!(second["token"], first["token"], "each sign-in gets its own session");

    for token in [&first["token"], &second["token"]] {
        let m = me(&app, token.as_str().unwrap()).await.expect(200);
        assert_eq!(m["id"], merchant_id.as_str());
        assert_eq!(m["phone"], phone);
    }
}

#[tokio::test]
async fn a_code_signs_in_only_once() {
    let app = TestApp::new().await;
    let phone = "+919800000102";
    let code = fresh_code(&app, phone).await;
    verify(&app, phone, &code).await.expect(200);
    let again = verify(&app, phone, &code).await;
    assert_field_error(&again, 422, "code");
    assert!(again.body.get("token").is_none());
}

#[tokio::test]
async fn a_wrong_code_is_refused_naming_the_code_field() {
    let app = TestApp::new().await;
    let phone = "+919800000103";
    let code = fresh_code(&app, phone).await;

    assert_field_error(&verify(&app, phone, &wrong(&code)).await, 422, "code");
    // Not six digits: refused the same way, before any lookup.
    assert_field_error(&verify(&app, phone, "12ab56").await, 422, "code");
    assert_field_error(&verify(&app, phone, "12345").await, 422, "code");
    // A code sent to one phone does not open another.
    assert_field_error(&verify(&app, "+919800000104", &code).await, 422, "code");

    // A few wrong guesses do not spoil the right code.
    let ok = verify(&app, phone, &code).await.expect(200);
    assert_eq!(ok["merchant"]["phone"], phone);
}

#[tokio::test]
async fn five_wrong_guesses_burn_the_code_so_even_the_right_one_fails() {
    let app = TestApp::new().await;
    let phone = "+919800000105";
    let code = fresh_code(&app, phone).await;
    let bad = wrong(&code);

    for guess in 1..=4 {
        let r = verify(&app, phone, &bad).await;
        assert_eq!(r.status, 422, "guess {guess}: {}", r.body);
    }
    let fifth = verify(&app, phone, &bad).await;
    assert!(assert_rate_limited(&fifth) > 0);

    let right = verify(&app, phone, &code).await;
    assert!(
        matches!(right.status.as_u16(), 422 | 429),
        "a burned code must not sign in; got {} {}",
        right.status,
        right.body
    );
    assert!(right.body.get("token").is_none());

    // A new code (after the per-phone interval) works again.
    app.clock.advance_secs(30);
    let code = fresh_code(&app, phone).await;
    verify(&app, phone, &code).await.expect(200);
}

#[tokio::test]
async fn a_code_expires_after_three_hundred_seconds() {
    let app = TestApp::new().await;
    let (a, b) = ("+919800000106", "+919800000107");
    let code_a = fresh_code(&app, a).await;
    let code_b = fresh_code(&app, b).await;

    app.clock.advance_secs(299);
    verify(&app, a, &code_a).await.expect(200);

    app.clock.advance_secs(2);
    assert_field_error(&verify(&app, b, &code_b).await, 422, "code");
}

#[tokio::test]
async fn a_newer_code_replaces_an_older_one() {
    let app = TestApp::new().await;
    let phone = "+919800000108";
    let old = fresh_code(&app, phone).await;
    app.clock.advance_secs(30);
    let new = fresh_code(&app, phone).await;

    // Random six-digit codes coincide one time in a million; then "old" cannot be told apart.
    if old != new {
        assert_field_error(&verify(&app, phone, &old).await, 422, "code");
    }
    verify(&app, phone, &new).await.expect(200);
}

#[tokio::test]
async fn a_phone_waits_thirty_seconds_between_codes() {
    let app = TestApp::new().await;
    let phone = "+919800000109";
    let first = fresh_code(&app, phone).await;

    let r = request_code(&app, phone).await;
    assert_eq!(assert_rate_limited(&r), 30);
    assert_eq!(code_for(&app, phone), first, "a refused request sends no code");

    app.clock.advance_secs(10);
    assert_eq!(assert_rate_limited(&request_code(&app, phone).await), 20);

    app.clock.advance_secs(20);
    let body = request_code(&app, phone).await.expect(202);
    assert_eq!(body["expires_in_secs"], 300);

    // The limit is the phone's, not everyone's.
    request_code(&app, "+919800000110").await.expect(202);
}

#[tokio::test]
async fn a_phone_gets_at_most_five_codes_an_hour() {
    let app = TestApp::new().await;
    let phone = "+919800000111";
    for i in 0..5 {
        if i > 0 {
            app.clock.advance_secs(30);
        }
        request_code(&app, phone).await.expect(202);
    }
    let fifth = code_for(&app, phone);

    app.clock.advance_secs(30); // t = 150 s
    let r = request_code(&app, phone).await;
    assert!(assert_rate_limited(&r) > 0);
    assert_eq!(code_for(&app, phone), fifth, "a refused request sends no code");
    // The refusal does not take the code already sent.
    verify(&app, phone, &fifth).await.expect(200);

    // An hour after the first code, one slot is free again.
    app.clock.advance_secs(3600 - 150 + 1);
    request_code(&app, phone).await.expect(202);
}

#[tokio::test]
async fn one_address_may_request_only_its_quota_of_codes() {
    let app = TestApp::with_config(1, ServerConfig { otp_per_ip: 3, ..Default::default() }).await;
    for i in 1..=3 {
        request_code(&app, &format!("+91980000020{i}")).await.expect(202);
    }
    let fourth = "+919800000204";
    assert!(assert_rate_limited(&request_code(&app, fourth).await) > 0);
    assert!(app.notifier.last_code(fourth).is_none(), "a refused request sends no code");

    // Without trust_proxy, X-Forwarded-For is the client's say-so and changes nothing.
    let spoofed = app
        .call(
            Method::POST,
            "/api/v1/auth/otp",
            None,
            &[("x-forwarded-for", "203.0.113.9")],
            Some(json!({ "phone": fourth })),
        )
        .await;
    assert_rate_limited(&spoofed);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_address_has_its_own_quota() {
    let app = TestApp::with_config(1, ServerConfig { otp_per_ip: 3, trust_proxy: true, ..Default::default() }).await;
    let from = |ip: &'static str, phone: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/api/v1/auth/otp",
                None,
                &[("x-forwarded-for", ip)],
                Some(json!({ "phone": phone })),
            )
            .await
        }
    };
    for i in 1..=3 {
        from("203.0.113.1", format!("+91980000030{i}")).await.expect(202);
    }
    assert_rate_limited(&from("203.0.113.1", "+919800000304".into()).await);
    from("203.0.113.2", "+919800000305".into()).await.expect(202);
}

#[tokio::test]
async fn a_session_works_for_thirty_days_and_then_stops() {
    let app = TestApp::new().await;
    let phone = "+919800000112";
    let code = fresh_code(&app, phone).await;
    let signed = verify(&app, phone, &code).await.expect(200);
    let token = signed["token"].as_str().unwrap().to_string();
    assert!(signed["expires_at"].is_string());

    assert_eq!(me(&app, &token).await.expect(200)["phone"], phone);
    app.clock.advance_secs(30 * DAY - 1);
    me(&app, &token).await.expect(200);
    app.clock.advance_secs(2);
    assert_unauthorized(&me(&app, &token).await);
    // Expired is expired everywhere, not just on /me.
    assert_unauthorized(&app.get("/api/v1/stores", Some(&token)).await);
}

fn ids(list: &Value) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn api_keys_are_listed_without_their_secret_and_stop_working_when_revoked() {
    let app = TestApp::new().await;
    let session = app.sign_in("+919800000113").await;
    let merchant = me(&app, &session).await.expect(200);

    let created = app.post("/api/v1/api-keys", Some(&session), json!({ "name": "inventory sync" })).await.expect(201);
    let key_id = created["key"]["id"].as_str().unwrap().to_string();
    let secret = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["key"]["name"], "inventory sync");
    assert_eq!(created["key"]["kind"], "api_key");
    assert!(created["key"]["expires_at"].is_null(), "an API key lives until revoked");

    assert_eq!(me(&app, &secret).await.expect(200)["id"], merchant["id"]);

    let listed = app.get("/api/v1/api-keys", Some(&session)).await.expect(200);
    assert!(ids(&listed).contains(&key_id));
    let text = listed.to_string();
    assert!(!text.contains(&secret), "a key's secret must never be listed: {text}");
    assert!(!text.contains(&session), "a session's secret must never be listed: {text}");
    for item in listed["items"].as_array().unwrap() {
        assert!(
            item.get("token").is_none() && item.get("token_hash").is_none() && item.get("hash").is_none(),
            "{item}"
        );
    }

    let r = app.call(Method::DELETE, &format!("/api/v1/api-keys/{key_id}"), Some(&session), &[], None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_unauthorized(&me(&app, &secret).await);
    assert!(!ids(&app.get("/api/v1/api-keys", Some(&session)).await.expect(200)).contains(&key_id));
    let again = app.call(Method::DELETE, &format!("/api/v1/api-keys/{key_id}"), Some(&session), &[], None).await;
    assert_eq!(again.status, 404, "revoking twice: {}", again.body);
    // Revoking the key leaves the session alone.
    me(&app, &session).await.expect(200);
}

#[tokio::test]
async fn an_api_key_outlives_the_session_that_made_it() {
    let app = TestApp::new().await;
    let session = app.sign_in("+919800000114").await;
    let created = app.post("/api/v1/api-keys", Some(&session), json!({ "name": "pos" })).await.expect(201);
    let secret = created["token"].as_str().unwrap().to_string();

    app.clock.advance_secs(31 * DAY);
    assert_unauthorized(&me(&app, &session).await);
    me(&app, &secret).await.expect(200);
}

#[tokio::test]
async fn the_key_list_shows_when_a_key_was_last_used() {
    let app = TestApp::new().await;
    let session = app.sign_in("+919800000118").await;
    let created = app.post("/api/v1/api-keys", Some(&session), json!({ "name": "sync" })).await.expect(201);
    let (key_id, secret) = (created["key"]["id"].clone(), created["token"].as_str().unwrap().to_string());
    // Used, and used again well later, so even a coarse (throttled) update must have landed.
    me(&app, &secret).await.expect(200);
    app.clock.advance_secs(2 * 3600);
    me(&app, &secret).await.expect(200);
    let listed = app.get("/api/v1/api-keys", Some(&session)).await.expect(200);
    let key = listed["items"].as_array().unwrap().iter().find(|k| k["id"] == key_id).expect("the key is listed");
    assert!(key["last_used_at"].is_string(), "a used key must say when it was last used: {key}");
}

#[tokio::test]
async fn expired_sessions_are_not_listed_as_live_credentials() {
    let app = TestApp::new().await;
    let phone = "+919800000119";
    let old = app.sign_in(phone).await;
    let old_id = app.get("/api/v1/api-keys", Some(&old)).await.expect(200)["items"][0]["id"].clone();
    app.clock.advance_secs(31 * DAY);
    assert_unauthorized(&me(&app, &old).await);
    let new = app.sign_in(phone).await;
    let listed = app.get("/api/v1/api-keys", Some(&new)).await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "only the live session: {listed}");
    assert!(listed["items"].as_array().unwrap().iter().all(|k| k["id"] != old_id), "{listed}");
}

#[tokio::test]
async fn an_api_key_needs_a_name() {
    let app = TestApp::new().await;
    let session = app.sign_in("+919800000115").await;
    for body in [json!({}), json!({ "name": "   " })] {
        assert_field_error(&app.post("/api/v1/api-keys", Some(&session), body).await, 422, "name");
    }
}

async fn me_with_header(app: &TestApp, value: HeaderValue) -> Resp {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/me")
        .header("authorization", value)
        .body(Body::empty())
        .unwrap();
    app.send(req).await
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused_with_a_bearer_challenge() {
    let app = TestApp::new().await;
    let token = app.sign_in("+919800000116").await;
    me(&app, &token).await.expect(200);

    // No header at all.
    assert_unauthorized(&app.get("/api/v1/me", None).await);
    let long = format!("Bearer {}", "k".repeat(201));
    let headers = [
        String::new(),
        "Bearer".into(),
        "Bearer ".into(),
        "Bearer      ".into(),
        "Basic dXNlcjpwYXNz".into(),
        format!("Basic {token}"),
        format!("Token {token}"),
        token.clone(),
        format!("Bearer{token}"),
        format!("Bearer {token}x"),
        format!("Bearer {}", &token[..token.len() - 1]),
        "Bearer kir_not-a-real-token".into(),
        long,
    ];
    for h in headers {
        let r = me_with_header(&app, HeaderValue::from_str(&h).unwrap()).await;
        assert_unauthorized(&r);
        assert!(!r.body.to_string().contains(&token), "a refusal must not echo the credential");
    }
    // Bytes that are not text.
    assert_unauthorized(&me_with_header(&app, HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap()).await);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::new().await;
    let token = app.sign_in("+919800000117").await;
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let r = me_with_header(&app, HeaderValue::from_str(&format!("{scheme} {token}")).unwrap()).await;
        assert_eq!(r.status, 200, "scheme {scheme}: {}", r.body);
    }
}
