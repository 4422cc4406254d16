//! The API, exercised in-process through the real router (`Router::oneshot`): one binary, many
//! modules, each test with its own data directory.

mod common;

/// This binary runs the suite on the embedded default; `tests/api_pg` runs it on PostgreSQL.
pub const BACKEND: common::Backend = common::Backend::Sqlite;

mod analytics;
mod auth;
mod bad_input;
mod catalog;
mod checkout;
mod http_cache;
mod isolation;
mod limits;
mod orders;
mod payments;
mod stores;
mod trace_context;
mod webhooks;
