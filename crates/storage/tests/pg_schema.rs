//! The PostgreSQL schemas apply to a fresh database (the shared server on 127.0.0.1:5432), are
//! idempotent, and refuse a database newer than the binary.

use kirana_storage::postgres::schema::{DIRECTORY, SHARD, migrate};
use tokio_postgres::NoTls;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}); start it with: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    });
    tokio::spawn(conn);
    client
}

/// A database of its own, dropped at the end.
struct TempDb {
    name: String,
}

impl TempDb {
    async fn create() -> TempDb {
        let name = format!("kirana_t_{}", uuid::Uuid::now_v7().simple());
        connect(ADMIN).await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        TempDb { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn drop(self) {
        connect(ADMIN).await.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).await.unwrap();
    }
}

#[tokio::test]
async fn schemas_apply_once_and_refuse_a_newer_database() {
    for (migrations, table) in [(DIRECTORY, "merchants"), (SHARD, "webhook_deliveries")] {
        let db = TempDb::create().await;
        let mut c = connect(&db.url()).await;
        assert_eq!(migrate(&mut c, migrations).await.unwrap(), migrations.len() as i64);
        assert_eq!(migrate(&mut c, migrations).await.unwrap(), migrations.len() as i64, "idempotent");
        let n: i64 = c
            .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = $1", &[&table])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{table} exists");
        // Every store-owned table keys by store first (the rule that makes a store movable).
        let rows = c
            .query(
                "SELECT t.relname::text, a.attname::text FROM pg_index i
                 JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
                 WHERE i.indisprimary AND n.nspname = 'public'",
                &[],
            )
            .await
            .unwrap();
        for r in rows {
            let (t, first): (String, String) = (r.get(0), r.get(1));
            let shard_infra = ["outbox", "consumer_positions", "dead_letters", "kirana_schema", "move_changes"];
            if migrations.len() == SHARD.len() && !shard_infra.contains(&t.as_str()) {
                assert_eq!(first, "store_id", "{t}'s primary key must start with store_id");
            }
        }
        // A binary older than the database refuses it.
        c.execute("INSERT INTO kirana_schema (version) VALUES ($1)", &[&(migrations.len() as i64 + 1)]).await.unwrap();
        let e = migrate(&mut c, migrations).await.unwrap_err();
        assert!(e.to_string().contains("newer than this kirana knows"), "{e}");
        drop(c);
        db.drop().await;
    }
}
