//! Payment providers: what the platform asks of one, and one that speaks HTTP.
//!
//! - [`provider`]: the interface ([`PaymentProvider`]) and the wire types both sides share.
//! - [`signature`]: webhook signatures, signed by the gateway and verified by the platform.
//! - [`http`]: [`HttpGateway`], the provider over HTTP, behind timeouts and a circuit breaker.

pub mod http;
pub mod provider;
pub mod signature;

pub use http::{ClientConfigError, GatewayClientConfig, HttpGateway};
pub use provider::{
    CreatePayment, PaymentProvider, ProviderError, RemotePayment, RemoteRefund, RemoteStatus, WebhookError,
    WebhookEvent, WebhookKind,
};
