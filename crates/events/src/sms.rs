//! The SMS provider over HTTP: sign-in codes and merchants' notifications leave the platform
//! here when `--sms-url` is set (the dev outbox otherwise).
//!
//! The wire shape is the common one of Indian and global SMS gateways, kept small so an adapter
//! in front of any provider is a few lines: `POST <url>` with `Authorization: Bearer <token>`,
//! `Idempotency-Key: <key>` and the JSON body `{"to": "+91…", "message": "…"}`. A 2xx means the
//! provider took the message; another 4xx (not 429) means it refused this one message (a bad
//! number) and says nothing of its health; a 429, a 5xx or no answer means the provider is in
//! trouble.
//!
//! Every call is bounded (connect and total timeouts), the provider sits behind a circuit
//! breaker (`kirana_breaker_state{dependency="sms"}`), and a transient failure is retried once
//! at once, with the same idempotency key, within a retry budget. While the breaker is open,
//! sign-in answers 503 with `Retry-After` without touching the provider, and notifications wait
//! in their queue with their usual backoff.

use std::time::Duration;

use kirana_domain::Phone;
use kirana_resilience::{Breaker, Failure, RetryBudget};
use rand::Rng;

/// Where and how to reach the provider.
#[derive(Clone)]
pub struct SmsConfig {
    /// The provider's send endpoint (`https://…`).
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<String>,
    /// The whole request, connect to last byte: a code a shopper waits for.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Quick failures in a row that open the breaker (one timeout opens it at once).
    pub breaker_threshold: u32,
    pub breaker_cool_off: Duration,
}

/// The token is a credential: never in a log line or a panic message.
impl std::fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SmsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        SmsConfig {
            url: url.into(),
            token: None,
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 3,
            breaker_cool_off: Duration::from_secs(15),
        }
    }
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    /// The provider is down or refusing work; try again after `retry_after` if known.
    #[error("the SMS provider is unavailable: {message}")]
    Unavailable { message: String, retry_after: Option<Duration> },
    /// The provider refused this message (a 4xx): retrying it will not help.
    #[error("the SMS provider refused the message: {0}")]
    Rejected(String),
}

pub struct HttpSms {
    cfg: SmsConfig,
    client: reqwest::Client,
    breaker: Breaker,
    retries: RetryBudget,
}

/// What one request came to.
enum Sent {
    Ok,
    Rejected(String),
    Failed(String, Failure),
}

impl HttpSms {
    pub fn new(cfg: SmsConfig) -> Result<HttpSms, String> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| format!("--sms-url {:?} is not a URL: {e}", cfg.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--sms-url must be an http:// or https:// URL, not {:?}", cfg.url));
        }
        let instance = format!("{}:{}", url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0));
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kirana/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("could not build the SMS HTTP client: {e}"))?;
        Ok(HttpSms {
            breaker: Breaker::new(cfg.breaker_threshold, cfg.breaker_cool_off).named("sms", instance),
            retries: RetryBudget::standard("sms"),
            client,
            cfg,
        })
    }

    /// How long the provider is known to be out (its breaker open); `None` when it may be tried.
    pub fn unavailable_for(&self) -> Option<Duration> {
        self.breaker.open_for()
    }

    /// Sends `message` to `to`; `key` makes a retried request the same message to the provider.
    pub async fn send(&self, to: &Phone, message: &str, key: &str) -> Result<(), SmsError> {
        self.retries.attempt();
        let mut retried = false;
        loop {
            if !self.breaker.allow() {
                return Err(SmsError::Unavailable {
                    message: "its circuit breaker is open after recent failures".into(),
                    retry_after: self.breaker.open_for(),
                });
            }
            match self.post(to, message, key).await {
                Sent::Ok => {
                    self.breaker.success();
                    return Ok(());
                }
                Sent::Rejected(why) => {
                    self.breaker.success();
                    return Err(SmsError::Rejected(why));
                }
                Sent::Failed(why, failure) => {
                    let opened = self.breaker.failure(failure);
                    if opened {
                        tracing::warn!(error = %why, "the SMS provider is failing; its breaker opened");
                    }
                    // A timeout already cost the caller its patience; a quick failure earns one
                    // more try, spread a little so a burst does not retry in step.
                    if retried || opened || failure == Failure::Timeout || !self.retries.retry() {
                        return Err(SmsError::Unavailable { message: why, retry_after: self.breaker.open_for() });
                    }
                    retried = true;
                    let pause = rand::rng().random_range(20..=100);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }

    async fn post(&self, to: &Phone, message: &str, key: &str) -> Sent {
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "to": to.as_str(), "message": message }));
        if let Some(token) = &self.cfg.token {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(res) if res.status().is_success() => Sent::Ok,
            Ok(res) => {
                let status = res.status();
                if status.as_u16() == 429 || status.is_server_error() {
                    Sent::Failed(format!("HTTP {status}"), Failure::Error)
                } else {
                    let body = res.text().await.unwrap_or_default();
                    Sent::Rejected(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()))
                }
            }
            Err(e) if e.is_timeout() => {
                Sent::Failed(format!("no answer within {:?}", self.cfg.timeout), Failure::Timeout)
            }
            Err(e) => Sent::Failed(format!("request failed: {e}"), Failure::Error),
        }
    }
}
