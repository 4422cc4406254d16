//! Throwaway PostgreSQL for tests of this crate and of the crates above it: databases of a
//! test's own on the shared server, dropped when it ends (also when it fails; a server that is
//! down fails the test with the command that starts it), and [`PgPair`], a primary with a
//! streaming replica of a test's own, on its own ports, for tests that pause, stop or kill it;
//! and [`AutoFailover`], formations of a primary and a synchronous standby under a
//! pg_auto_failover monitor, for tests of failover.

mod autofailover;
mod pair;

pub use autofailover::{AutoFailover, MONITOR_TUNING, NodeState};
pub use pair::PgPair;
use tokio_postgres::NoTls;

/// The shared server the test suites use (trust auth, as the machines run it).
pub const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const START_HINT: &str = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// A connection to the server's `postgres` database; panics with [`START_HINT`] if it is down.
pub async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(ADMIN, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {ADMIN} ({e}); {START_HINT}"));
    tokio::spawn(conn);
    client
}

/// A database of its own, dropped when the value is (with `FORCE`: open pools do not stop it).
pub struct TempDb {
    pub name: String,
}

impl TempDb {
    pub async fn create() -> TempDb {
        let name = format!("kirana_t_{}", uuid::Uuid::now_v7().simple());
        admin().await.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        TempDb { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A thread of its own: Drop may run inside a runtime that must not be blocked on.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async { admin().await.batch_execute(&sql).await.ok() })
        })
        .join();
    }
}
