//! The PostgreSQL backend: shards that are a primary with streaming replicas, and the
//! directory in a control database.
//!
//! - [`cluster`]: opening it all from configuration (`PgConfig`) into a `Storage`.
//! - [`schema`]: the same tables as the SQLite backend, in PostgreSQL's types, and `migrate`.
//! - [`replica`]: a replica's health as the router and `kirana doctor` see it: lag in bytes and
//!   seconds, state (streaming, replay paused, receiver down, promoted), read-your-writes tokens,
//!   and the rotation policy with hysteresis.
//! - [`pool`]: one connection pool per server and role, with a size, an acquire timeout that
//!   becomes `Unavailable` (503) naming the pool, and its status for metrics.
//! - [`directory`]: `PgDirectory`, the directory on the control database, behaving exactly as
//!   the SQLite one (`tests/pg_directory.rs` runs the same checks against both).
//! - [`bounded`]: the deadline on every request's call to the control database.
//! - [`leases`]: the leases of background work, on the control database.
//! - [`shard`]: `PgShard`, and the shard's queries, one module per concern as on SQLite.
//! - [`replicas`]: a shard's replicas as its router sees them, the prober that keeps their
//!   lag current, and the choice of a replica for a read.
//! - [`moves`]: moving a store between shards while it sells (change capture, `COPY`, a short
//!   freeze, the directory flip) and the journal that lets a stopped move resume.
//! - [`testing`]: throwaway databases and replica pairs for the test suites.

pub mod bounded;
pub mod cluster;
pub mod directory;
pub mod leases;
pub mod moves;
pub mod pool;
pub mod replica;
pub mod replicas;
pub mod schema;
pub mod shard;
pub mod testing;
