//! The PostgreSQL backend (being built, issue 6): shards that are a primary with streaming
//! replicas, and the directory in a control database.
//!
//! - [`schema`]: the same tables as the SQLite backend, in PostgreSQL's types.

pub mod schema;
