//! Payment providers: what the platform asks of one ([`PaymentProvider`]), and the wire types
//! both sides of it share.
//!
//! - [`provider`]: the interface ([`PaymentProvider`]) and the wire types both sides share.
//! - [`signature`]: webhook signatures, signed by the gateway and verified by the platform.

pub mod provider;
pub mod signature;

pub use provider::{
    CreatePayment, PaymentProvider, ProviderError, RemotePayment, RemoteRefund, RemoteStatus, WebhookError,
    WebhookEvent, WebhookKind,
};
