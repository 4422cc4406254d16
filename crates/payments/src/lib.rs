//! Payment providers: what the platform asks of one ([`PaymentProvider`]), and the wire types
//! both sides of it share.

pub mod provider;

pub use provider::{
    CreatePayment, PaymentProvider, ProviderError, RemotePayment, RemoteRefund, RemoteStatus, WebhookError,
    WebhookEvent, WebhookKind,
};
