//! Leases: which node runs each piece of background work that must run on one node at a time
//! (a shard's relay, the consumers of an event partition, a shard's notification sender).
//!
//! A lease is a name, a holder and an expiry. The holder renews it well before it runs out; a
//! node that dies stops renewing and, once the lease expires, another node takes it. Nodes also
//! renew a membership row, so each can count the nodes alive and take only its fair share
//! (decision 0025). Expiries are measured on the lease store's own clock (the control database's
//! `now()`), so nodes' clocks never have to agree.
//!
//! A lease is an *efficiency* guarantee here, never the only safety: every piece of work it
//! guards is also safe when, for a moment, two nodes run it (a paused node waking after its
//! lease moved): effects are applied once by event id, the relay's publishes are deduplicated by
//! message id, and webhook deliveries are leased row by row.
//!
//! - [`Leases`]: the store of leases, on the control database (`postgres::leases`).
//! - [`LocalLeases`]: the same in memory, for a single process (the embedded backend, whose
//!   SQLite files only one process can serve, and tests of several "nodes" in one process).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::Result;

/// One lease as recorded, for `kirana events status` and `kirana doctor`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    /// Raised each time the lease changes hands: how often the work moved between nodes.
    pub epoch: i64,
    /// Seconds until it runs out (negative: it ran out that long ago and nobody took it).
    pub expires_in_seconds: f64,
}

/// The store of leases and of the nodes that share them.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Records `node` alive for `ttl` and returns the nodes alive now, itself included.
    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Vec<String>>;
    /// Extends `node`'s leases among `names` to `ttl` from now; returns the ones it still holds.
    /// A lease that ran out is still renewed if nobody else took it meanwhile.
    async fn renew(&self, node: &str, names: &[String], ttl: Duration) -> Result<Vec<String>>;
    /// Takes each of `names` that is free (never held, expired or released) or already
    /// `node`'s, for `ttl`; returns the ones granted.
    async fn acquire(&self, node: &str, names: &[String], ttl: Duration) -> Result<Vec<String>>;
    /// Gives `names` up at once (their work has stopped), so another node may take them.
    async fn release(&self, node: &str, names: &[String]) -> Result<()>;
    /// Removes `node` from the members (a clean shutdown): the others' shares grow at once.
    async fn leave(&self, node: &str) -> Result<()>;
    /// Every lease as recorded.
    async fn list(&self) -> Result<Vec<LeaseRow>>;
}

/// Leases in this process's memory, on tokio's clock: for a single process, where every
/// "node" is a task of it.
#[derive(Default)]
pub struct LocalLeases {
    state: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    /// name → (holder, epoch, expiry)
    leases: HashMap<String, (String, i64, tokio::time::Instant)>,
    nodes: HashMap<String, tokio::time::Instant>,
}

impl LocalLeases {
    fn state(&self) -> std::sync::MutexGuard<'_, Local> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Leases for LocalLeases {
    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Vec<String>> {
        let now = tokio::time::Instant::now();
        let mut s = self.state();
        s.nodes.insert(node.to_owned(), now + ttl);
        s.nodes.retain(|_, until| *until > now);
        let mut alive: Vec<String> = s.nodes.keys().cloned().collect();
        alive.sort();
        Ok(alive)
    }

    async fn renew(&self, node: &str, names: &[String], ttl: Duration) -> Result<Vec<String>> {
        let now = tokio::time::Instant::now();
        let mut s = self.state();
        let mut held = Vec::new();
        for name in names {
            if let Some((holder, _, until)) = s.leases.get_mut(name)
                && holder == node
            {
                *until = now + ttl;
                held.push(name.clone());
            }
        }
        Ok(held)
    }

    async fn acquire(&self, node: &str, names: &[String], ttl: Duration) -> Result<Vec<String>> {
        let now = tokio::time::Instant::now();
        let mut s = self.state();
        let mut got = Vec::new();
        for name in names {
            match s.leases.get_mut(name) {
                Some((holder, _, until)) if holder == node => *until = now + ttl,
                Some((holder, epoch, until)) if *until <= now => {
                    *holder = node.to_owned();
                    *epoch += 1;
                    *until = now + ttl;
                }
                Some(_) => continue,
                None => {
                    s.leases.insert(name.clone(), (node.to_owned(), 1, now + ttl));
                }
            }
            got.push(name.clone());
        }
        Ok(got)
    }

    async fn release(&self, node: &str, names: &[String]) -> Result<()> {
        let now = tokio::time::Instant::now();
        let mut s = self.state();
        for name in names {
            if let Some((holder, _, until)) = s.leases.get_mut(name)
                && holder == node
            {
                *until = now;
            }
        }
        Ok(())
    }

    async fn leave(&self, node: &str) -> Result<()> {
        self.state().nodes.remove(node);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<LeaseRow>> {
        let now = tokio::time::Instant::now();
        let s = self.state();
        let mut rows: Vec<LeaseRow> = s
            .leases
            .iter()
            .map(|(name, (holder, epoch, until))| LeaseRow {
                name: name.clone(),
                holder: holder.clone(),
                epoch: *epoch,
                expires_in_seconds: if *until >= now {
                    (*until - now).as_secs_f64()
                } else {
                    -(now - *until).as_secs_f64()
                },
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_one_nodes_until_it_runs_out_or_is_released() {
        let leases = LocalLeases::default();
        let ttl = Duration::from_secs(10);
        assert_eq!(leases.acquire("a", &names(&["x", "y"]), ttl).await.unwrap(), names(&["x", "y"]));
        assert!(leases.acquire("b", &names(&["x"]), ttl).await.unwrap().is_empty(), "held by a");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(leases.renew("a", &names(&["x"]), ttl).await.unwrap(), names(&["x"]));
        tokio::time::advance(Duration::from_secs(6)).await;
        // y was not renewed: it ran out and b takes it; x was renewed and is still a's.
        assert_eq!(leases.acquire("b", &names(&["x", "y"]), ttl).await.unwrap(), names(&["y"]));
        assert!(leases.renew("a", &names(&["y"]), ttl).await.unwrap().is_empty(), "a lost y");
        leases.release("a", &names(&["x"])).await.unwrap();
        assert_eq!(leases.acquire("b", &names(&["x"]), ttl).await.unwrap(), names(&["x"]));
        let rows = leases.list().await.unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.name.as_str(), r.holder.as_str(), r.epoch)).collect::<Vec<_>>(),
            [("x", "b", 2), ("y", "b", 2)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_that_stop_renewing_drop_out_of_the_members() {
        let leases = LocalLeases::default();
        let ttl = Duration::from_secs(10);
        leases.heartbeat("a", ttl).await.unwrap();
        assert_eq!(leases.heartbeat("b", ttl).await.unwrap(), names(&["a", "b"]));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(leases.heartbeat("b", ttl).await.unwrap(), names(&["b"]));
        leases.leave("b").await.unwrap();
        assert_eq!(leases.heartbeat("a", ttl).await.unwrap(), names(&["a"]));
    }
}
