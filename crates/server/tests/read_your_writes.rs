//! Reads routed by consistency, through the HTTP API, against a real PostgreSQL primary and its
//! streaming replica: a write's response carries a token; a caller that sends it back never
//! reads an older value, even from a replica whose replay is paused; reads without one are
//! served by a replica within the lag bound, and by the primary when none qualifies.

#[path = "api/common.rs"]
#[allow(dead_code)]
mod common;

pub const BACKEND: common::Backend = common::Backend::PostgresWithReplica;

use std::time::{Duration, Instant};

use axum::http::Method;
use common::TestApp;
use kirana_storage::postgres::cluster::PgCluster;
use serde_json::json;

fn cluster(app: &TestApp) -> &PgCluster {
    app.cluster.as_ref().expect("the PostgreSQL backend")
}

fn replica_reads(app: &TestApp) -> u64 {
    cluster(app).shards[0].replica_report()[0].reads
}

/// Probes until `want` holds of the replica's place in rotation (at most 15 s).
async fn until_rotation(app: &TestApp, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        cluster(app).shards[0].probe_now().await;
        if cluster(app).shards[0].replica_report()[0].in_rotation == want {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never got in_rotation = {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_its_write_token_never_reads_an_older_value() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000001", "Chai Corner").await;
    let product =
        app.create_product(&token, &store, json!({ "title": "Masala chai", "variants": [{ "price": 12000 }] })).await;
    let uri = format!("/api/v1/stores/{}/products/{}", store["id"].as_str().unwrap(), product["id"].as_str().unwrap());

    // A read without a token, with the replica streaming: served by the replica (once it has
    // replayed the product; until then a bounded read may 404 or, on a busy machine with the
    // replica briefly out of rotation, come from the primary).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        until_rotation(&app, true).await;
        let before = replica_reads(&app);
        if app.get(&uri, Some(&token)).await.status == 200 && replica_reads(&app) > before {
            break;
        }
        assert!(Instant::now() < deadline, "bounded-staleness reads never came from the replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Replay paused, then the merchant edits: the response carries the write's token.
    pause(&app).await;
    let edit = app.call(Method::PATCH, &uri, Some(&token), &[], Some(json!({ "title": "Masala chai, 250 g" }))).await;
    assert_eq!(edit.status, 200, "{}", edit.body);
    let write_token =
        edit.headers.get("x-kirana-write-token").expect("a write answers with its token").to_str().unwrap();
    let write_token = write_token.to_string();

    // With the token, the caller sees its edit at once (the replica cannot serve it: primary).
    let before = replica_reads(&app);
    let read = app.call(Method::GET, &uri, Some(&token), &[("x-kirana-write-token", &write_token)], None).await;
    assert_eq!(read.body["title"], "Masala chai, 250 g");
    assert_eq!(replica_reads(&app), before, "the paused replica is behind the token");

    // Out of rotation once probed: reads without a token go to the primary too, and the
    // metrics say so.
    until_rotation(&app, false).await;
    let metrics = app.get("/metrics", None).await.body;
    let metrics = metrics.as_str().expect("text");
    assert!(metrics.contains(r#"kirana_replica_in_rotation{shard="0",replica="0"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"kirana_db_pool_max{shard="0",role="replica-0"}"#), "{metrics}");
    let lag = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"kirana_replica_lag_bytes{shard="0",replica="0"} "#))
        .expect("a lag gauge");
    assert!(lag.parse::<f64>().unwrap() > 0.0, "the paused replica is behind: {lag}");
    let read = app.get(&uri, Some(&token)).await;
    assert_eq!(read.body["title"], "Masala chai, 250 g");
    assert_eq!(replica_reads(&app), before);

    // `X-Kirana-Consistency: strong` always reads the primary.
    resume(&app).await;
    let lsn = kirana_storage::consistency::WriteToken::parse(&write_token).unwrap().lsn;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        until_rotation(&app, true).await;
        if cluster(&app).shards[0].replica_report()[0].health.as_ref().is_some_and(|h| h.caught_up_with(lsn)) {
            break;
        }
        assert!(Instant::now() < deadline, "the resumed replica never replayed the token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = replica_reads(&app);
    let read = app.call(Method::GET, &uri, Some(&token), &[("x-kirana-consistency", "strong")], None).await;
    assert_eq!(read.body["title"], "Masala chai, 250 g");
    assert_eq!(replica_reads(&app), before);

    // Caught up, the replica serves the token-bearing caller.
    let read = app.call(Method::GET, &uri, Some(&token), &[("x-kirana-write-token", &write_token)], None).await;
    assert_eq!(read.body["title"], "Masala chai, 250 g");
    assert_eq!(replica_reads(&app), before + 1);
}

async fn pause(app: &TestApp) {
    pair_sql(app, "SELECT pg_wal_replay_pause()").await;
}

async fn resume(app: &TestApp) {
    pair_sql(app, "SELECT pg_wal_replay_resume()").await;
}

/// Runs a statement on the replica, as its superuser.
async fn pair_sql(app: &TestApp, sql: &str) {
    let replica_url = app.replica_url.clone().expect("the replica's URL");
    let (c, conn) = tokio_postgres::connect(&replica_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}
