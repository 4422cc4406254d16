//! The embedded pipeline's suite (`embedded.rs`, the same file) on PostgreSQL shards: the
//! readers walk a PostgreSQL outbox through its commit-order safe point, and every guarantee
//! the suite checks on SQLite must hold here too.

#[path = "embedded.rs"]
mod embedded;

pub const BACKEND: embedded::Backend = embedded::Backend::Postgres;
