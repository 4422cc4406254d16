//! How fresh a read must be, carried with each request: strong (the primary), after the
//! caller's own write (a replica that has replayed the caller's write token), or bounded
//! staleness (any replica within the lag bound).
//!
//! The HTTP layer decides the level per request and runs the handler inside [`scope`]; the
//! PostgreSQL shard reads it when it picks a server, and records the position of every write it
//! commits so the response can hand the caller a [`WriteToken`]. Outside a scope (workers, the
//! CLI, tests) every read is strong. SQLite shards have no replicas: they ignore all of it.
//!
//! A task-local rather than a parameter on every `Shard` method: the level is a property of the
//! request, not of the query, and threading it through ~50 methods and their callers would add a
//! parameter every caller passes through unread. See docs/decisions/0018-read-routing.md.

use std::sync::{Arc, Mutex};

use crate::scope::ShardId;

/// Where a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The shard's primary: checkout, and anything that writes next.
    Strong,
    /// A replica within the lag bound that has replayed `after` if given (read-your-writes),
    /// else the primary.
    Replica { after: Option<WriteToken> },
}

/// A caller's last write: the shard and the primary's WAL position after its commit. A replica
/// of that shard that has replayed this far shows the caller everything it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteToken {
    pub shard: ShardId,
    pub lsn: u64,
}

impl WriteToken {
    /// `"<shard>.<lsn hex>"`, e.g. `3.16B374D8`: short, opaque to callers, safe in a header and a
    /// cookie.
    pub fn encode(&self) -> String {
        format!("{}.{:X}", self.shard.0, self.lsn)
    }

    /// `None` for anything malformed: a bad token only costs the caller a primary read.
    pub fn parse(s: &str) -> Option<WriteToken> {
        let (shard, lsn) = s.trim().split_once('.')?;
        if shard.len() > 10 || lsn.is_empty() || lsn.len() > 16 {
            return None;
        }
        Some(WriteToken { shard: ShardId(shard.parse().ok()?), lsn: u64::from_str_radix(lsn, 16).ok()? })
    }
}

/// One request's reading level, and the write token its writes earned.
#[derive(Debug)]
pub struct ReadContext {
    pub consistency: Consistency,
    written: Mutex<Option<WriteToken>>,
    /// Live [`Untracked`] guards: while any is, writes earn no token.
    untracked: std::sync::atomic::AtomicUsize,
}

impl ReadContext {
    pub fn new(consistency: Consistency) -> Arc<ReadContext> {
        Arc::new(ReadContext { consistency, written: Mutex::new(None), untracked: Default::default() })
    }

    /// The token of the request's last write, if a shard with replicas recorded one.
    pub fn written(&self) -> Option<WriteToken> {
        *self.written.lock().unwrap_or_else(|p| p.into_inner())
    }
}

tokio::task_local! {
    static CONTEXT: Arc<ReadContext>;
}

/// Runs `f` with `ctx` as the reading level of every storage call it makes.
pub async fn scope<F: std::future::Future>(ctx: Arc<ReadContext>, f: F) -> F::Output {
    CONTEXT.scope(ctx, f).await
}

/// The level of the running request; strong outside any.
pub fn current() -> Consistency {
    CONTEXT.try_with(|c| c.consistency).unwrap_or(Consistency::Strong)
}

/// Whether anyone will read a write token: only then is it worth a round trip to get one.
pub(crate) fn wants_token() -> bool {
    CONTEXT.try_with(|c| c.untracked.load(std::sync::atomic::Ordering::Relaxed) == 0).unwrap_or(false)
}

/// While the guard lives, the running request's writes earn no write token: for writes that no
/// read other than the primary's ever shows (carts), whose token would only make the caller's
/// next pages skip the read cache for nothing.
pub fn untracked() -> Untracked {
    let ctx = CONTEXT.try_with(Arc::clone).ok();
    if let Some(c) = &ctx {
        c.untracked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Untracked { ctx }
}

/// See [`untracked`].
pub struct Untracked {
    ctx: Option<Arc<ReadContext>>,
}

impl Drop for Untracked {
    fn drop(&mut self) {
        if let Some(c) = &self.ctx {
            c.untracked.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Records a committed write's position for the running request (called by shards after each
/// commit of a request's write).
pub fn record_write(token: WriteToken) {
    let _ = CONTEXT.try_with(|c| {
        if c.untracked.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return;
        }
        let mut w = c.written.lock().unwrap_or_else(|p| p.into_inner());
        // Positions only grow; keep the furthest (one request touches one shard).
        if w.is_none_or(|old| old.shard != token.shard || old.lsn < token.lsn) {
            *w = Some(token);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_junk() {
        let t = WriteToken { shard: ShardId(3), lsn: 0x16_B374_D848 };
        assert_eq!(t.encode(), "3.16B374D848");
        assert_eq!(WriteToken::parse(&t.encode()), Some(t));
        for bad in ["", "3", "3.", ".1", "x.1", "3.zz", "3.12345678901234567", "99999999999.1", "-1.5"] {
            assert_eq!(WriteToken::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_level_and_the_token_live_only_inside_the_scope() {
        assert_eq!(current(), Consistency::Strong);
        record_write(WriteToken { shard: ShardId(0), lsn: 5 }); // outside: dropped, no panic
        let ctx = ReadContext::new(Consistency::Replica { after: None });
        scope(ctx.clone(), async {
            assert_eq!(current(), Consistency::Replica { after: None });
            assert!(wants_token());
            record_write(WriteToken { shard: ShardId(1), lsn: 9 });
            record_write(WriteToken { shard: ShardId(1), lsn: 7 });
        })
        .await;
        assert_eq!(ctx.written(), Some(WriteToken { shard: ShardId(1), lsn: 9 }));
        assert!(!wants_token());
    }
}
