//! Merchant webhook delivery (being built).
