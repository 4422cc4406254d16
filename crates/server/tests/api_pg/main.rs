//! The API suite of `tests/api`, the same files, on the PostgreSQL backend: a control database
//! and shard databases of its own per test on the shared server (127.0.0.1:5432). Any answer
//! that differs from SQLite's fails here.

#[path = "../api/common.rs"]
mod common;

pub const BACKEND: common::Backend = common::Backend::Postgres;

#[path = "../api/analytics.rs"]
mod analytics;
#[path = "../api/auth.rs"]
mod auth;
#[path = "../api/bad_input.rs"]
mod bad_input;
#[path = "../api/catalog.rs"]
mod catalog;
#[path = "../api/checkout.rs"]
mod checkout;
#[path = "../api/http_cache.rs"]
mod http_cache;
#[path = "../api/isolation.rs"]
mod isolation;
#[path = "../api/orders.rs"]
mod orders;
#[path = "../api/payments.rs"]
mod payments;
#[path = "../api/stores.rs"]
mod stores;
#[path = "../api/trace_context.rs"]
mod trace_context;
#[path = "../api/webhooks.rs"]
mod webhooks;
