//! The replica lag probe against a real PostgreSQL primary and its streaming replica (see
//! `pg_support`). Each test has its own pair, and waits by bounded polling, never by sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

use kirana_storage::postgres::replica::{
    LagPolicy, ReplicaHealth, ReplicaState, Rotation, caught_up, probe, write_token,
};
use kirana_storage::postgres::testing::PgPair;
use tokio_postgres::{Client, NoTls};

/// Comfortable bounds for a replica on the same machine.
const ROOMY: LagPolicy = LagPolicy { max_bytes: 16 * 1024 * 1024, max_seconds: 5.0 };
/// Bounds a paused replica overruns with a few writes.
const TIGHT: LagPolicy = LagPolicy { max_bytes: 1024, max_seconds: 0.5 };
const PATIENCE: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"));
    tokio::spawn(async move {
        // Ends with an error when a test stops or kills the server: that is the point.
        let _ = connection.await;
    });
    client
}

/// Polls `attempt` every 20 ms until it yields something, for at most `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {PATIENCE:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Probes until the replica streams and has replayed `token`.
async fn streaming_past(primary: &Client, replica: &Client, token: u64) -> ReplicaHealth {
    eventually("the replica streams and has replayed the token", || async {
        probe(primary, replica).await.ok().filter(|h| h.state == ReplicaState::Streaming && h.caught_up_with(token))
    })
    .await
}

async fn setup_table(primary: &Client) -> u64 {
    primary
        .batch_execute(
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
             INSERT INTO notes VALUES (1, 'first');",
        )
        .await
        .unwrap();
    write_token(primary).await.unwrap()
}

async fn count_notes(client: &Client) -> i64 {
    client.query_one("SELECT count(*) FROM notes", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_primary_is_read_on_the_replica_once_the_probe_says_it_is_caught_up() {
    let pair = PgPair::start();
    let primary = connect(&pair.primary_url()).await;
    let replica = connect(&pair.replica_url()).await;

    let token = setup_table(&primary).await;
    let health = streaming_past(&primary, &replica, token).await;

    let body: String = replica.query_one("SELECT body FROM notes WHERE id = 1", &[]).await.unwrap().get(0);
    assert_eq!(body, "first");
    assert!(caught_up(health.replay_lsn, token));
    assert!(health.receive_lsn >= health.replay_lsn, "{health:?}");
    assert_eq!(health.receiver_status.as_deref(), Some("streaming"));
    assert!(ROOMY.admits(&health), "{health}");
    assert!(Rotation::new(ROOMY).observe(Some(&health)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_falls_behind_leaves_rotation_and_returns_once_resumed() {
    let pair = PgPair::start();
    let primary = connect(&pair.primary_url()).await;
    let replica = connect(&pair.replica_url()).await;
    let before = setup_table(&primary).await;
    let mut rotation = Rotation::new(TIGHT);
    assert!(rotation.observe(Some(&streaming_past(&primary, &replica, before).await)));

    pair.pause_replay();
    primary
        .execute("INSERT INTO notes SELECT n, repeat('x', 100) FROM generate_series(2, 1001) AS n", &[])
        .await
        .unwrap();
    let token = write_token(&primary).await.unwrap();

    // The WAL arrives but is not applied.
    let paused = eventually("the paused replica has received the new WAL", || async {
        probe(&primary, &replica).await.ok().filter(|h| h.receive_lsn >= token)
    })
    .await;
    assert_eq!(paused.state, ReplicaState::ReplayPaused, "{paused}");
    assert!(paused.lag_bytes > TIGHT.max_bytes, "{paused}");
    assert!(paused.lag_seconds > 0.0, "{paused}");
    assert!(!paused.caught_up_with(token), "{paused}");
    assert!(!TIGHT.admits(&paused), "{paused}");
    assert!(!ROOMY.admits(&paused), "a paused replica is refused whatever the bounds: {paused}");
    assert!(!rotation.observe(Some(&paused)));
    assert_eq!(count_notes(&replica).await, 1, "the replica still shows the world before the pause");
    assert!(paused.to_string().starts_with("replay paused: "), "{paused}");

    pair.resume_replay();
    let resumed = streaming_past(&primary, &replica, token).await;
    assert_eq!(count_notes(&replica).await, 1001);
    assert!(TIGHT.admits(&resumed), "{resumed}");
    assert!(rotation.observe(Some(&resumed)), "caught up: back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_caught_up_replica_is_zero_seconds_behind_however_old_its_last_commit() {
    let pair = PgPair::start();
    let primary = connect(&pair.primary_url()).await;
    let replica = connect(&pair.replica_url()).await;
    let token = setup_table(&primary).await;
    streaming_past(&primary, &replica, token).await;

    // Let the last replayed commit age past the tight bound; the assertion below polls.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let idle = eventually("a probe finds the idle replica caught up", || async {
        probe(&primary, &replica).await.ok().filter(|h| h.state == ReplicaState::Streaming && h.lag_bytes == 0)
    })
    .await;
    let age: f64 = replica
        .query_one("SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8", &[])
        .await
        .unwrap()
        .get(0);
    assert!(age > 1.0, "the last replayed commit is {age} s old");
    assert_eq!(idle.lag_seconds, 0.0, "{idle}");
    assert!(idle.replay_lsn >= idle.primary_lsn, "{idle}");
    assert!(TIGHT.admits(&idle), "{idle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_killed_replica_fails_the_probe_and_streams_again_once_restarted() {
    let pair = PgPair::start();
    let primary = connect(&pair.primary_url()).await;
    let replica = connect(&pair.replica_url()).await;
    let token = setup_table(&primary).await;
    let mut rotation = Rotation::new(ROOMY);
    assert!(rotation.observe(Some(&streaming_past(&primary, &replica, token).await)));

    pair.stop_replica();
    let failed = probe(&primary, &replica).await;
    assert!(failed.is_err(), "a stopped replica cannot answer: {failed:?}");
    assert!(!rotation.observe(failed.as_ref().ok()), "out of rotation");
    assert!(tokio_postgres::connect(&pair.replica_url(), NoTls).await.is_err(), "and it is unreachable");

    // Written while it was down: it must catch up once started.
    primary.execute("INSERT INTO notes VALUES (2, 'while stopped')", &[]).await.unwrap();
    let token = write_token(&primary).await.unwrap();
    pair.start_replica();
    let replica = connect(&pair.replica_url()).await;
    let back = streaming_past(&primary, &replica, token).await;
    assert_eq!(count_notes(&replica).await, 2);
    assert!(rotation.observe(Some(&back)), "{back}");

    pair.kill_replica();
    assert!(probe(&primary, &replica).await.is_err(), "a crashed replica cannot answer");
    assert!(!rotation.observe(None));
    primary.execute("INSERT INTO notes VALUES (3, 'while crashed')", &[]).await.unwrap();
    let token = write_token(&primary).await.unwrap();
    pair.start_replica();
    let replica = connect(&pair.replica_url()).await;
    let back = streaming_past(&primary, &replica, token).await;
    assert_eq!(count_notes(&replica).await, 3);
    assert!(rotation.observe(Some(&back)), "{back}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_primary_reports_its_receiver_down() {
    let pair = PgPair::start();
    let primary = connect(&pair.primary_url()).await;
    let replica = connect(&pair.replica_url()).await;
    let token = setup_table(&primary).await;
    streaming_past(&primary, &replica, token).await;

    // Point the WAL receiver at a port nothing listens on; PostgreSQL 13+ restarts the
    // receiver when primary_conninfo changes on reload.
    let conninfo: String = replica.query_one("SHOW primary_conninfo", &[]).await.unwrap().get(0);
    // ALTER SYSTEM refuses to run in a transaction block, even the implicit one of a
    // multi-statement query: one statement per call.
    replica.batch_execute("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'").await.unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let down = eventually("the probe reports the receiver down", || async {
        probe(&primary, &replica).await.ok().filter(|h| h.state == ReplicaState::ReceiverDown)
    })
    .await;
    assert!(!ROOMY.admits(&down), "{down}");
    assert!(down.to_string().starts_with("receiver down: "), "{down}");

    replica.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = {}", quote(&conninfo))).await.unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    primary.execute("INSERT INTO notes VALUES (2, 'while cut off')", &[]).await.unwrap();
    let token = write_token(&primary).await.unwrap();
    let back = streaming_past(&primary, &replica, token).await;
    assert!(ROOMY.admits(&back), "{back}");
}

/// A SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
