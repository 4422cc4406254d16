//! The payment provider over HTTP ([`HttpGateway`]): the client side of the gateway REST API
//! that the test gateway ([`crate::gateway`]) serves for development and tests.
//!
//! Wire protocol, every call with `Authorization: Bearer <key>` and JSON bodies:
//! - `POST /v1/payments` with a [`CreatePayment`] → 201 (or 200 for a `reference` seen before)
//!   and a [`RemotePayment`];
//! - `GET /v1/payments/{id}` → [`RemotePayment`];
//! - `POST /v1/payments/{id}/capture` `{"amount": …}` → [`RemotePayment`];
//! - `POST /v1/payments/{id}/cancel` → [`RemotePayment`];
//! - `POST /v1/payments/{id}/refunds` `{"amount": …, "key": …}` → [`RemoteRefund`].
//!
//! Errors are `{"error": {"code": "…", "message": "…"}}`. A 404 is [`ProviderError::NotFound`];
//! another 4xx is [`ProviderError::Rejected`] with `"<code>: <message>"` and says nothing of the
//! provider's health; a 429, a 5xx, a timeout or a failed connection is
//! [`ProviderError::Unavailable`] and counts against the provider's circuit breaker
//! (`kirana_breaker_state{dependency="payment_gateway"}`). While the breaker is open, calls
//! fail at once without touching the network, and [`PaymentProvider::available`] says so, so
//! checkout can stop offering online payment instead of making shoppers wait.
//!
//! Every call is bounded (connect and total timeouts). Every call is idempotent at the
//! provider (creations by reference, refunds by key, the rest by their nature), so a quick
//! failure is retried once at once, within a retry budget; a timeout is not retried, since it
//! already cost the caller its patience. Webhooks are verified with [`crate::signature`].
//!
//! Calls are counted in `kirana_payment_provider_calls_total{op, outcome}`, `outcome` one of
//! `ok`, `unavailable`, `rejected`, `not_found`.

use std::time::Duration;

use async_trait::async_trait;
use kirana_resilience::{Breaker, BreakerState, Failure, RetryBudget};
use rand::Rng;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::provider::{
    CreatePayment, PaymentProvider, ProviderError, RemotePayment, RemoteRefund, WebhookError, WebhookEvent,
};
use crate::signature;

/// Where and how to reach the gateway.
#[derive(Clone)]
pub struct GatewayClientConfig {
    /// The API's base (`https://…`); paths such as `/v1/payments` are appended to it.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`.
    pub key: String,
    /// The key webhooks are signed with.
    pub webhook_secret: String,
    /// The whole request, connect to last byte: a shopper may be waiting on it.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Quick failures in a row that open the breaker (one timeout opens it at once).
    pub breaker_threshold: u32,
    pub breaker_cool_off: Duration,
    /// How far a webhook's signing time may be from our clock, either way (seconds).
    pub replay_window_secs: i64,
}

/// The key and the secret are credentials: never in a log line or a panic message.
impl std::fmt::Debug for GatewayClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClientConfig")
            .field("base_url", &self.base_url)
            .field("key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cool_off", &self.breaker_cool_off)
            .field("replay_window_secs", &self.replay_window_secs)
            .finish()
    }
}

impl GatewayClientConfig {
    /// The defaults: 3 s per call (1 s to connect), a breaker opened by 3 quick failures in a
    /// row for 15 s, and webhooks accepted within 5 minutes of their signing.
    pub fn new(base_url: impl Into<String>, key: impl Into<String>, webhook_secret: impl Into<String>) -> Self {
        GatewayClientConfig {
            base_url: base_url.into(),
            key: key.into(),
            webhook_secret: webhook_secret.into(),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 3,
            breaker_cool_off: Duration::from_secs(15),
            replay_window_secs: 300,
        }
    }
}

/// Why an [`HttpGateway`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    #[error("the payment gateway URL {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("could not build the payment gateway's HTTP client: {0}")]
    Client(String),
}

pub struct HttpGateway {
    cfg: GatewayClientConfig,
    base: Url,
    client: reqwest::Client,
    breaker: Breaker,
    retries: RetryBudget,
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway").field("cfg", &self.cfg).field("breaker", &self.breaker.state()).finish()
    }
}

/// What one request came to.
enum Answer<T> {
    Ok(T),
    NotFound,
    Rejected(String),
    Failed(String, Failure),
}

impl HttpGateway {
    pub fn new(cfg: GatewayClientConfig) -> Result<HttpGateway, ClientConfigError> {
        let base = Url::parse(&cfg.base_url).map_err(|_| ClientConfigError::BadUrl(cfg.base_url.clone()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientConfigError::BadUrl(cfg.base_url.clone()));
        }
        // The breaker's label is host and port, not the URL: a URL may carry a user and password.
        let instance = format!("{}:{}", base.host_str().unwrap_or(""), base.port_or_known_default().unwrap_or(0));
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kirana/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientConfigError::Client(e.to_string()))?;
        Ok(HttpGateway {
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cool_off).named("payment_gateway", instance),
            retries: RetryBudget::standard("payment_gateway"),
            base,
            client,
            cfg,
        })
    }

    /// How long the gateway is known to be out (its breaker open); `None` when it may be tried.
    pub fn unavailable_for(&self) -> Option<Duration> {
        self.breaker.open_for()
    }

    /// `base` + the path segments, each escaped: an id is data, never a path.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// One call: the breaker, the request, at most one quick retry, the metric.
    async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        segments: &[&str],
        body: Option<Vec<u8>>,
        subject: Option<&str>,
    ) -> Result<T, ProviderError> {
        // A URL drops `.` and `..` segments instead of escaping them, so such an id would
        // address another resource (`/v1/payments/../capture` is `/v1/payments/capture`); no
        // payment has one.
        let answer = if subject.is_some_and(|id| matches!(id, "" | "." | "..")) {
            Answer::NotFound
        } else {
            self.attempts(&method, segments, body.as_deref()).await
        };
        let result = match (answer, subject) {
            (Answer::Ok(value), _) => Ok(value),
            (Answer::NotFound, Some(id)) => Err(ProviderError::NotFound(id.to_owned())),
            // Only a payment's own URL can be unknown; a 404 elsewhere is a wrong base URL.
            (Answer::NotFound, None) => {
                Err(ProviderError::Rejected(format!("HTTP 404: no API at {}", self.url(segments).path())))
            }
            (Answer::Rejected(why), _) => Err(ProviderError::Rejected(why)),
            (Answer::Failed(why, _), _) => Err(ProviderError::Unavailable(why)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ProviderError::Unavailable(_)) => "unavailable",
            Err(ProviderError::Rejected(_)) => "rejected",
            Err(ProviderError::NotFound(_)) => "not_found",
        };
        metrics::counter!("kirana_payment_provider_calls_total", "op" => op, "outcome" => outcome).increment(1);
        if let Err(e) = &result {
            tracing::debug!(op, payment = subject, error = %e, "payment gateway call failed");
        }
        result
    }

    async fn attempts<T: DeserializeOwned>(
        &self,
        method: &Method,
        segments: &[&str],
        body: Option<&[u8]>,
    ) -> Answer<T> {
        self.retries.attempt();
        let mut retried = false;
        loop {
            if !self.breaker.allow() {
                return Answer::Failed("its circuit breaker is open after recent failures".into(), Failure::Error);
            }
            match self.send(method, segments, body).await {
                Answer::Failed(why, failure) => {
                    let opened = self.breaker.failure(failure);
                    if opened {
                        tracing::warn!(error = %why, "the payment gateway is failing; its breaker opened");
                    }
                    // A timeout already cost the caller its patience; a quick failure earns one
                    // more try, spread a little so a burst does not retry in step. The provider
                    // deduplicates every call, so the retry cannot charge or refund twice.
                    if retried || opened || failure == Failure::Timeout || !self.retries.retry() {
                        return Answer::Failed(why, failure);
                    }
                    retried = true;
                    let pause = rand::rng().random_range(20..=100);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                // A refusal is an answer: the provider is up.
                answer => {
                    self.breaker.success();
                    return answer;
                }
            }
        }
    }

    async fn send<T: DeserializeOwned>(&self, method: &Method, segments: &[&str], body: Option<&[u8]>) -> Answer<T> {
        let mut req = self.client.request(method.clone(), self.url(segments)).bearer_auth(&self.cfg.key);
        if let Some(body) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
        }
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => return self.transport_failure(e),
        };
        let status = res.status();
        let bytes = match res.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return self.transport_failure(e),
        };
        if status.is_success() {
            return match serde_json::from_slice(&bytes) {
                Ok(value) => Answer::Ok(value),
                // A 2xx we cannot read is the provider misbehaving, not a refusal of this call.
                Err(e) => Answer::Failed(format!("HTTP {status} with an unreadable body: {e}"), Failure::Error),
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Answer::Failed(format!("HTTP {status}: {}", error_message(&bytes)), Failure::Error);
        }
        if status == StatusCode::NOT_FOUND {
            return Answer::NotFound;
        }
        Answer::Rejected(format!("HTTP {status}: {}", error_message(&bytes)))
    }

    fn transport_failure<T>(&self, e: reqwest::Error) -> Answer<T> {
        if e.is_timeout() {
            Answer::Failed(format!("no answer within {:?}", self.cfg.timeout), Failure::Timeout)
        } else {
            Answer::Failed(format!("request failed: {e}"), Failure::Error)
        }
    }
}

/// `"<code>: <message>"` from an error body, or its first 200 characters when it is not one.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error }) => format!("{}: {}", error.code, error.message),
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// A request body. Encoding our own plain types cannot fail; if it ever did, that is ours to
/// fix, not the provider's outage.
fn json(body: &impl Serialize) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(body).map_err(|e| ProviderError::Rejected(format!("could not encode the request: {e}")))
}

#[async_trait]
impl PaymentProvider for HttpGateway {
    fn name(&self) -> &'static str {
        "testgw"
    }

    /// False only while the breaker is open and cooling off. A half-open breaker counts as
    /// available: its probe may belong to a caller that gave up (and so never reports), and
    /// the breaker lets a fresh probe through only when someone asks; answering false there
    /// would keep checkout from ever asking again. A caller who finds the probe still out gets
    /// `Unavailable`, as during an outage.
    fn available(&self) -> bool {
        self.breaker.state() != BreakerState::Open || self.breaker.open_for().is_none()
    }

    async fn create(&self, payment: &CreatePayment) -> Result<RemotePayment, ProviderError> {
        self.call("create", Method::POST, &["v1", "payments"], Some(json(payment)?), None).await
    }

    async fn fetch(&self, id: &str) -> Result<RemotePayment, ProviderError> {
        self.call("fetch", Method::GET, &["v1", "payments", id], None, Some(id)).await
    }

    async fn capture(&self, id: &str, amount: i64) -> Result<RemotePayment, ProviderError> {
        let body = json(&serde_json::json!({ "amount": amount }))?;
        self.call("capture", Method::POST, &["v1", "payments", id, "capture"], Some(body), Some(id)).await
    }

    async fn cancel(&self, id: &str) -> Result<RemotePayment, ProviderError> {
        self.call("cancel", Method::POST, &["v1", "payments", id, "cancel"], None, Some(id)).await
    }

    async fn refund(&self, id: &str, amount: i64, key: &str) -> Result<RemoteRefund, ProviderError> {
        let body = json(&serde_json::json!({ "amount": amount, "key": key }))?;
        self.call("refund", Method::POST, &["v1", "payments", id, "refunds"], Some(body), Some(id)).await
    }

    fn verify_webhook(&self, signature: Option<&str>, body: &[u8], now: i64) -> Result<WebhookEvent, WebhookError> {
        signature::verify(self.cfg.webhook_secret.as_bytes(), signature, body, now, self.cfg.replay_window_secs)?;
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key_or_the_secret() {
        let cfg = GatewayClientConfig::new("http://127.0.0.1:9", "sk_live_123", "whsec_456");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk_live_123") && !shown.contains("whsec_456"), "{shown}");
        let gw = HttpGateway::new(cfg).expect("a good URL");
        let shown = format!("{gw:?}");
        assert!(!shown.contains("sk_live_123") && !shown.contains("whsec_456"), "{shown}");
    }

    #[test]
    fn ids_are_escaped_into_one_path_segment() {
        let gw = HttpGateway::new(GatewayClientConfig::new("http://gw.test/api/", "k", "s")).expect("a good URL");
        assert_eq!(gw.url(&["v1", "payments", "../x?y#z"]).as_str(), "http://gw.test/api/v1/payments/..%2Fx%3Fy%23z");
        assert_eq!(
            gw.url(&["v1", "payments", ".."]).as_str(),
            "http://gw.test/api/v1/payments",
            "why `call` refuses dot segments"
        );
        let gw = HttpGateway::new(GatewayClientConfig::new("http://gw.test", "k", "s")).expect("a good URL");
        assert_eq!(gw.url(&["v1", "payments"]).as_str(), "http://gw.test/v1/payments");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        for url in ["ftp://gw.test", "not a url", "mailto:x@y.z"] {
            assert!(matches!(
                HttpGateway::new(GatewayClientConfig::new(url, "k", "s")),
                Err(ClientConfigError::BadUrl(_))
            ));
        }
    }

    #[test]
    fn error_bodies_become_code_and_message() {
        assert_eq!(
            error_message(br#"{"error":{"code":"refund_exceeds_captured","message":"too much"}}"#),
            "refund_exceeds_captured: too much"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
    }
}
