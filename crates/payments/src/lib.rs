//! Payment providers: what the platform asks of one, one that speaks HTTP, and a test gateway
//! to speak to.
//!
//! - [`provider`]: the interface ([`PaymentProvider`]) and the wire types both sides share.
//! - [`signature`]: webhook signatures, signed by the gateway and verified by the platform.
//! - [`http`]: [`HttpGateway`], the provider over HTTP, behind timeouts and a circuit breaker.
//! - [`gateway`]: the test gateway, the provider's side of the same protocol, in memory, with
//!   switches for latency, failures and dropped webhooks; [`gateway::TestGateway`] for tests.

pub mod gateway;
pub mod http;
pub mod provider;
pub mod signature;

pub use http::{ClientConfigError, GatewayClientConfig, HttpGateway};
pub use provider::{
    CreatePayment, PaymentProvider, ProviderError, RemotePayment, RemoteRefund, RemoteStatus, WebhookError,
    WebhookEvent, WebhookKind,
};
