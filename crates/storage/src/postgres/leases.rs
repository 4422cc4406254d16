//! [`Leases`] on the control database: the one place every node of a deployment already reaches,
//! replicated with it (under pg_auto_failover, synchronously), and with one clock for everyone.
//!
//! Each call is one statement. Taking a lease is an upsert whose `WHERE` lets it through only
//! when the lease is free or already the caller's: two nodes racing for an expired lease are
//! serialised on its row, and the second finds it taken.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::directory::PgDirectory;
use super::pool::{PoolRole, query_error};
use crate::Result;
use crate::error::StorageError;
use crate::lease::{LeaseRow, Leases};

pub struct PgLeases {
    directory: Arc<PgDirectory>,
    /// No lease call may hang a node's work loop: past this it fails and is tried again.
    deadline: Duration,
}

impl PgLeases {
    pub fn new(directory: Arc<PgDirectory>, deadline: Duration) -> PgLeases {
        PgLeases { directory, deadline }
    }

    async fn run<T>(&self, what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Unavailable(format!(
                "the control database did not answer {what} within {:?}",
                self.deadline
            ))),
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StorageError {
    query_error(PoolRole::Directory, e)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Leases for PgLeases {
    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Vec<String>> {
        self.run("a lease heartbeat", async {
            let c = self.directory.pool().get().await?;
            let rows = c
                .query(
                    "WITH me AS (
                       INSERT INTO lease_nodes (node, started_at, expires_at)
                       VALUES ($1, now(), now() + $2::bigint * interval '1 millisecond')
                       ON CONFLICT (node) DO UPDATE SET expires_at = EXCLUDED.expires_at
                       RETURNING node)
                     SELECT node FROM lease_nodes WHERE expires_at > now() AND node <> $1
                     UNION ALL SELECT node FROM me ORDER BY 1",
                    &[&node, &millis(ttl)],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn renew(&self, node: &str, names: &[String], ttl: Duration) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(vec![]);
        }
        self.run("a lease renewal", async {
            let c = self.directory.pool().get().await?;
            let rows = c
                .query(
                    "UPDATE leases SET expires_at = now() + $3::bigint * interval '1 millisecond'
                     WHERE holder = $1 AND name = ANY($2) RETURNING name",
                    &[&node, &names, &millis(ttl)],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn acquire(&self, node: &str, names: &[String], ttl: Duration) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(vec![]);
        }
        self.run("taking leases", async {
            let c = self.directory.pool().get().await?;
            let rows = c
                .query(
                    "INSERT INTO leases (name, holder, epoch, acquired_at, expires_at)
                     SELECT n, $1, 1, now(), now() + $3::bigint * interval '1 millisecond' FROM unnest($2::text[]) n
                     ON CONFLICT (name) DO UPDATE SET
                       holder = EXCLUDED.holder,
                       epoch = leases.epoch + CASE WHEN leases.holder = EXCLUDED.holder THEN 0 ELSE 1 END,
                       acquired_at = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.acquired_at ELSE now() END,
                       expires_at = EXCLUDED.expires_at
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= now()
                     RETURNING name",
                    &[&node, &names, &millis(ttl)],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    async fn release(&self, node: &str, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        self.run("releasing leases", async {
            let c = self.directory.pool().get().await?;
            c.execute(
                "UPDATE leases SET expires_at = now() WHERE holder = $1 AND name = ANY($2) AND expires_at > now()",
                &[&node, &names],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn leave(&self, node: &str) -> Result<()> {
        self.run("leaving the lease members", async {
            let c = self.directory.pool().get().await?;
            c.execute("DELETE FROM lease_nodes WHERE node = $1", &[&node]).await.map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<LeaseRow>> {
        self.run("listing leases", async {
            let c = self.directory.pool().get().await?;
            let rows = c
                .query(
                    "SELECT name, holder, epoch, extract(epoch FROM expires_at - now())::float8 FROM leases ORDER BY name",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| LeaseRow { name: r.get(0), holder: r.get(1), epoch: r.get(2), expires_in_seconds: r.get(3) })
                .collect())
        })
        .await
    }
}
