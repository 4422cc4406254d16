//! Counting the statements the SQLite backend runs, so tests can prove the queries behind a page
//! do not grow with the data. The hook exists only with the `query-count` feature (tests turn it
//! on); production builds carry none and [`statements`] stays 0.
//!
//! The count is process-wide: a test that reads it runs no other database work meanwhile (no
//! event pipeline), and nextest runs each test in a process of its own.

use std::sync::atomic::{AtomicU64, Ordering};

static STATEMENTS: AtomicU64 = AtomicU64::new(0);

/// Statements run so far on any shard or directory connection (trigger bodies not counted
/// apart from the statement that fired them).
pub fn statements() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

#[cfg(feature = "query-count")]
pub(crate) fn watch(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    conn.trace_v2(
        TraceEventCodes::SQLITE_TRACE_STMT,
        Some(|event: TraceEvent<'_>| {
            // A trigger's subprogram reports itself as `-- TRIGGER name`: part of its statement.
            if let TraceEvent::Stmt(_, sql) = event
                && !sql.starts_with("--")
            {
                STATEMENTS.fetch_add(1, Ordering::Relaxed);
            }
        }),
    )
}

#[cfg(not(feature = "query-count"))]
pub(crate) fn watch(_: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    Ok(())
}
