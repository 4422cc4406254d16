//! The provider interface: create a payment for an order, send the shopper to the provider's
//! page, learn the outcome from a signed webhook (or by asking), capture, cancel, refund.
//!
//! Every call that changes something carries a key the provider deduplicates on (our payment's
//! reference for a creation, our refund's id for a refund), so a retry after a timeout never
//! charges or refunds twice.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A payment to create: `reference` is the platform's own payment id, unique and reused on retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePayment {
    pub reference: String,
    /// Minor units (paise).
    pub amount: i64,
    pub currency: String,
    pub store_id: String,
    pub order_id: String,
    /// Where the provider's page sends the shopper when they are done.
    pub return_url: String,
}

/// Where a payment stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteStatus {
    /// Created; the shopper has not paid yet.
    Created,
    /// The shopper paid; the money is held, not yet taken.
    Authorized,
    /// The money is taken.
    Captured,
    /// Declined, or the shopper gave up.
    Failed,
    /// Cancelled by the platform before capture.
    Cancelled,
}

/// A payment as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePayment {
    /// The provider's id.
    pub id: String,
    /// The platform's reference ([`CreatePayment::reference`]).
    pub reference: String,
    pub store_id: String,
    pub order_id: String,
    pub status: RemoteStatus,
    pub amount: i64,
    pub captured: i64,
    pub refunded: i64,
    /// The provider's page the shopper pays on.
    pub checkout_url: String,
}

/// A refund as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRefund {
    pub id: String,
    /// The platform's key the refund was created with.
    pub key: String,
    pub amount: i64,
    pub payment: RemotePayment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookKind {
    #[serde(rename = "payment.authorized")]
    PaymentAuthorized,
    #[serde(rename = "payment.captured")]
    PaymentCaptured,
    #[serde(rename = "payment.failed")]
    PaymentFailed,
    #[serde(rename = "refund.processed")]
    RefundProcessed,
}

/// A webhook whose signature and age were checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The provider's event id: the same event delivered twice has the same id.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: WebhookKind,
    /// Unix seconds at the provider.
    pub created_at: i64,
    /// The payment as it stood when the event was sent.
    pub payment: RemotePayment,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// No answer in time, a refused connection, a 5xx or 429, or the breaker open: the call may
    /// be retried later with the same key.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request (a 4xx): retrying will not help.
    #[error("the payment provider refused: {0}")]
    Rejected(String),
    /// No such payment at the provider.
    #[error("the payment provider does not know {0}")]
    NotFound(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing or malformed signature header")]
    MissingSignature,
    #[error("the signature does not match")]
    BadSignature,
    /// Signed too long ago (or in the future): a replay.
    #[error("the webhook is outside the replay window")]
    Stale,
    #[error("the webhook body is not an event: {0}")]
    Malformed(String),
}

#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// The provider's name, as it appears in webhook URLs and metrics.
    fn name(&self) -> &'static str;
    /// Whether calls may go to the provider now (its breaker is not open): when not, checkout
    /// offers online payment as unavailable.
    fn available(&self) -> bool;
    /// Creates (or, for a reference seen before, returns) a payment.
    async fn create(&self, payment: &CreatePayment) -> Result<RemotePayment, ProviderError>;
    async fn fetch(&self, id: &str) -> Result<RemotePayment, ProviderError>;
    /// Takes `amount` of an authorized payment (all of it in practice).
    async fn capture(&self, id: &str, amount: i64) -> Result<RemotePayment, ProviderError>;
    /// Cancels a payment not yet captured (a stock hold that timed out).
    async fn cancel(&self, id: &str) -> Result<RemotePayment, ProviderError>;
    /// Refunds `amount` of a captured payment; `key` (our refund's id) makes a retry harmless.
    async fn refund(&self, id: &str, amount: i64, key: &str) -> Result<RemoteRefund, ProviderError>;
    /// Checks a webhook's signature (header value as received) and age against `now` (Unix
    /// seconds) and parses it.
    fn verify_webhook(&self, signature: Option<&str>, body: &[u8], now: i64) -> Result<WebhookEvent, WebhookError>;
}
