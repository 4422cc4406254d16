//! `kirana doctor`: one look at the databases as an operator needs it — every shard's primary,
//! schema and stores, every replica probed now with its lag and *why* it is in or out of
//! rotation, moves in progress, and each shard's event backlog. It only reads: it never pauses,
//! resumes, promotes or moves anything. The exit code is the verdict, so scripts and alerts can
//! use it: non-zero when something needs an operator (a database unreachable, a replica out of
//! rotation, a move stuck, a schema behind).

use std::time::Duration;

use anyhow::Context;
use kirana_domain::{Clock, SystemClock, Timestamp};
use kirana_storage::postgres::cluster::{PgCluster, PgConfig};
use kirana_storage::postgres::moves::{MoveState, MoveStatus};
use kirana_storage::postgres::pool::PoolStatus;
use kirana_storage::postgres::replica::{ReplicaHealth, ReplicaState};
use kirana_storage::postgres::replicas::ReplicaReport;
use kirana_storage::postgres::schema;
use kirana_storage::{Directory, Storage};
use serde::Serialize;

use crate::backend::{self, host_of};
use crate::config::Config;

/// An unfinished move whose journal has not changed for this long, with no mover holding its
/// lock, is reported stuck.
const STUCK_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
struct Report {
    backend: &'static str,
    healthy: bool,
    /// What makes the verdict unhealthy, one sentence each.
    problems: Vec<String>,
    /// Worth a look, but not failing the check.
    warnings: Vec<String>,
    directory: DirectoryReport,
    shards: Vec<ShardReport>,
    moves: Vec<MoveJson>,
    /// Each PostgreSQL database's servers (every host of its URL: which is the primary, on which
    /// timeline) and, with a pg_auto_failover monitor, its nodes' states and last failover.
    ha: Vec<HaReport>,
    /// The event pipeline as `kirana events status` sees it: backlog and lag per partition on
    /// either backend (the JetStream stream included), who holds which lease, its alerts.
    pipeline: Option<kirana_events::status::EventsStatus>,
    /// The nodes asked with `--node`: their objectives as `GET /api/v1/ops/slo` gives them.
    nodes: Vec<NodeReport>,
}

#[derive(Debug, Serialize)]
struct NodeReport {
    url: String,
    objectives: Vec<serde_json::Value>,
    error: Option<String>,
}

/// Asks each node for its objectives; a page alert or an unreachable node is a problem, a
/// ticket alert a warning.
async fn nodes(urls: &[String], problems: &mut Vec<String>, warnings: &mut Vec<String>) -> Vec<NodeReport> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("an HTTP client");
    let mut out = Vec::new();
    for url in urls {
        let base = url.trim_end_matches('/');
        let got = async {
            let res = client.get(format!("{base}/api/v1/ops/slo")).send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("answered {}", res.status()));
            }
            let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
            Ok(body["objectives"].as_array().cloned().unwrap_or_default())
        }
        .await;
        match got {
            Ok(objectives) => {
                for o in &objectives {
                    let name = o["name"].as_str().unwrap_or("?");
                    let alerts: Vec<&str> =
                        o["alerts"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                    if alerts.contains(&"page") {
                        problems.push(format!("node {base}: {name} is burning its error budget fast (page)"));
                    } else if alerts.contains(&"ticket") {
                        warnings.push(format!("node {base}: {name} is burning its error budget (ticket)"));
                    }
                }
                out.push(NodeReport { url: base.to_string(), objectives, error: None });
            }
            Err(e) => {
                problems.push(format!("node {base} did not answer its objectives: {e}"));
                out.push(NodeReport { url: base.to_string(), objectives: vec![], error: Some(e) });
            }
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct DirectoryReport {
    /// The control database's host, or the SQLite file.
    location: String,
    reachable: bool,
    schema_version: Option<i64>,
    /// What this kirana migrates to (PostgreSQL; SQLite files are migrated on every open).
    expected_version: Option<i64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ShardReport {
    shard: u32,
    /// The primary's host (PostgreSQL) or the shard's file (SQLite).
    location: String,
    reachable: bool,
    error: Option<String>,
    schema_version: Option<i64>,
    expected_version: Option<i64>,
    stores: i64,
    dedicated_to: Option<String>,
    /// This process's pool to the primary (PostgreSQL).
    pool: Option<PoolJson>,
    replicas: Vec<ReplicaJson>,
    events: EventsJson,
}

#[derive(Debug, Serialize)]
struct PoolJson {
    size: usize,
    available: usize,
    waiting: usize,
    max_size: usize,
}

impl From<PoolStatus> for PoolJson {
    fn from(p: PoolStatus) -> Self {
        PoolJson { size: p.size, available: p.available, waiting: p.waiting, max_size: p.max_size }
    }
}

#[derive(Debug, Serialize)]
struct ReplicaJson {
    replica: u32,
    host: String,
    in_rotation: bool,
    /// `streaming`, `replay paused`, `receiver down`, `not in recovery`, or `unreachable`.
    state: String,
    /// Why it is where it is, in a sentence.
    why: String,
    lag_bytes: Option<u64>,
    /// `None` when unknown (behind with no replayed commit since it started) or unreachable.
    lag_seconds: Option<f64>,
    error: Option<String>,
    pool: PoolJson,
}

#[derive(Debug, Serialize)]
struct HaReport {
    /// `control` or `shard N`.
    database: String,
    hosts: Vec<HostJson>,
    /// The monitor's nodes serving these hosts (empty without `--pg-monitor`).
    monitor: Vec<MonitorNode>,
    /// The monitor's last promotion in this database's group: when, and what it said.
    last_failover: Option<String>,
}

#[derive(Debug, Serialize)]
struct HostJson {
    host: String,
    /// `primary`, `standby` or `unreachable`.
    role: String,
    /// The WAL timeline: it moves on at each promotion, so > 1 means a failover happened.
    timeline: Option<i64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct MonitorNode {
    name: String,
    host: String,
    reported: String,
    assigned: String,
}

#[derive(Debug, Serialize)]
struct EventsJson {
    outbox_rows: Option<i64>,
    oldest_age_seconds: Option<f64>,
    dead_letters: Option<usize>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct MoveJson {
    store: String,
    from: u32,
    to: u32,
    state: String,
    started_at: String,
    updated_at: String,
    rows_copied: u64,
    /// A mover holds the store's move lock right now.
    running: bool,
    stuck: bool,
    error: Option<String>,
}

pub async fn run(config: &Config, json: bool, node_urls: &[String]) -> anyhow::Result<()> {
    let mut report = match &config.postgres {
        Some(pg) => match backend::open_postgres(pg).await {
            Ok(cluster) => {
                let mut r = postgres(pg, &cluster).await;
                pipeline(config, &cluster.storage, &mut r).await;
                r.ha = ha(pg, config.pg_monitor.as_deref(), &mut r.problems, &mut r.warnings).await;
                r
            }
            Err(e) => {
                let mut r = unreachable_control(pg, &e);
                r.ha = ha(pg, config.pg_monitor.as_deref(), &mut r.problems, &mut r.warnings).await;
                r
            }
        },
        None => {
            let (mut r, storage) = sqlite(config).await?;
            pipeline(config, &storage, &mut r).await;
            r
        }
    };
    report.nodes = nodes(node_urls, &mut report.problems, &mut report.warnings).await;
    report.healthy = report.problems.is_empty();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if !report.healthy {
        anyhow::bail!(
            "unhealthy: {} problem{} (see above)",
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// The event pipeline's status (NATS asked too when configured): a stalled partition or relay,
/// an unreadable stream or a silent consumer is a problem; parked events are warned about per
/// shard already.
async fn pipeline(config: &Config, storage: &Storage, report: &mut Report) {
    let names: Vec<&str> = kirana_events::all_consumers().iter().map(|c| c.name()).collect();
    let bus = match &config.nats_url {
        None => None,
        Some(url) => {
            let cfg = kirana_events::jetstream::JetStreamConfig::namespaced(url, &config.events_namespace);
            match kirana_events::jetstream::connect(cfg).await {
                Ok(bus) => Some(bus),
                Err(e) => {
                    report.problems.push(format!("NATS at {url} is unreachable: {e}"));
                    None
                }
            }
        }
    };
    if config.nats_url.is_some() && bus.is_none() {
        return;
    }
    let partitions = kirana_events::partition::DEFAULT_PARTITIONS;
    match kirana_events::status::status_of(storage, &names, partitions, bus.as_ref(), SystemClock.now()).await {
        Ok(s) => {
            for a in s.alerts.iter().filter(|a| a.name != "DeadLetters") {
                report.problems.push(format!("events: {} — {}", a.name, a.detail));
            }
            report.pipeline = Some(s);
        }
        Err(e) => report.problems.push(format!("cannot read the event pipeline's status: {e}")),
    }
}

/// Every PostgreSQL database's hosts as they answer now, and what a pg_auto_failover monitor says
/// of them. No primary among a database's hosts is a problem (writes fail until a failover
/// completes); two primaries is a problem too (a split: one of them must be fenced).
async fn ha(
    pg: &PgConfig,
    monitor: Option<&str>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Vec<HaReport> {
    let mut dbs = vec![("control".to_string(), pg.directory.clone())];
    dbs.extend(pg.shards.iter().enumerate().map(|(i, s)| (format!("shard {i}"), s.primary.clone())));
    let nodes = match monitor {
        Some(url) => match monitor_nodes(url).await {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("the pg_auto_failover monitor is unreachable: {e}"));
                None
            }
        },
        None => None,
    };
    let mut out = Vec::new();
    for (name, url) in dbs {
        let Ok(parsed) = url.parse::<tokio_postgres::Config>() else { continue };
        let hosts = backend::hosts_of(&parsed);
        let mut list = Vec::new();
        for host in &hosts {
            list.push(host_role(&parsed, host).await);
        }
        let primaries = list.iter().filter(|h| h.role == "primary").count();
        if primaries == 0 {
            problems.push(format!("{name}: none of its hosts ({}) is a primary: writes fail", hosts.join(", ")));
        } else if primaries > 1 {
            problems.push(format!("{name}: {primaries} of its hosts are primaries: a split; fence the stale one"));
        }
        for h in list.iter().filter(|h| h.role == "unreachable") {
            if hosts.len() > 1 {
                warnings.push(format!("{name}: host {} is unreachable (its standby role is not covered)", h.host));
            }
        }
        let (monitor, last_failover) = match &nodes {
            Some(all) => {
                let mine: Vec<&(MonitorNode, i64, i64, Option<String>)> =
                    all.iter().filter(|(n, ..)| hosts.contains(&n.host)).collect();
                let last = mine.iter().filter_map(|(.., f)| f.clone()).max();
                for (n, ..) in &mine {
                    if n.reported != n.assigned {
                        warnings.push(format!(
                            "{name}: node {} ({}) is {} on its way to {}",
                            n.name, n.host, n.reported, n.assigned
                        ));
                    }
                }
                (
                    mine.iter()
                        .map(|(n, ..)| MonitorNode {
                            name: n.name.clone(),
                            host: n.host.clone(),
                            reported: n.reported.clone(),
                            assigned: n.assigned.clone(),
                        })
                        .collect(),
                    last,
                )
            }
            None => (vec![], None),
        };
        out.push(HaReport { database: name, hosts: list, monitor, last_failover });
    }
    out
}

/// One host of a database: primary or standby, and its timeline.
async fn host_role(parsed: &tokio_postgres::Config, host: &str) -> HostJson {
    let mut c = parsed.clone();
    let (h, port) = host.rsplit_once(':').map_or((host, None), |(h, p)| (h, p.parse::<u16>().ok()));
    let mut one = tokio_postgres::Config::new();
    one.host(h);
    if let Some(p) = port.or(c.get_ports().first().copied()) {
        one.port(p);
    }
    if let Some(u) = c.get_user() {
        one.user(u);
    }
    if let Some(d) = c.get_dbname() {
        one.dbname(d);
    }
    if let Some(pw) = c.get_password() {
        one.password(pw);
    }
    one.connect_timeout(Duration::from_secs(2));
    c = one;
    let probe = async {
        let (client, conn) = c.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT pg_is_in_recovery(), timeline_id::bigint FROM pg_control_checkpoint()", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((row.get::<_, bool>(0), row.get::<_, i64>(1)))
    };
    match tokio::time::timeout(Duration::from_secs(3), probe).await {
        Ok(Ok((standby, timeline))) => HostJson {
            host: host.to_string(),
            role: if standby { "standby" } else { "primary" }.into(),
            timeline: Some(timeline),
            error: None,
        },
        Ok(Err(e)) => HostJson { host: host.to_string(), role: "unreachable".into(), timeline: None, error: Some(e) },
        Err(_) => HostJson {
            host: host.to_string(),
            role: "unreachable".into(),
            timeline: None,
            error: Some("no answer within 3 s".into()),
        },
    }
}

/// The monitor's nodes: (node, formation, group, the last promotion of its group).
async fn monitor_nodes(url: &str) -> Result<Vec<(MonitorNode, i64, i64, Option<String>)>, String> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .map_err(|_| "no answer within 3 s".to_string())?
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT n.nodename, n.nodehost || ':' || n.nodeport, n.reportedstate::text, n.goalstate::text,
                    hashtext(n.formationid)::bigint, n.groupid::bigint,
                    (SELECT to_char(e.eventtime AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || ' ' || e.description
                       FROM pgautofailover.event e
                      WHERE e.formationid = n.formationid AND e.groupid = n.groupid
                        AND e.goalstate::text = 'prepare_promotion'
                      ORDER BY e.eventtime DESC LIMIT 1)
               FROM pgautofailover.node n ORDER BY n.formationid, n.groupid, n.nodeid",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                MonitorNode { name: r.get(0), host: r.get(1), reported: r.get(2), assigned: r.get(3) },
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect())
}

/// The report when even the control database cannot be opened: nothing else can be known.
fn unreachable_control(pg: &PgConfig, e: &anyhow::Error) -> Report {
    let error = format!("{e:#}");
    Report {
        backend: "postgres",
        healthy: false,
        problems: vec![format!("the control database is unreachable: {error}")],
        warnings: vec![],
        directory: DirectoryReport {
            location: host_of(&pg.directory),
            reachable: false,
            schema_version: None,
            expected_version: Some(schema::DIRECTORY.len() as i64),
            error: Some(error),
        },
        shards: vec![],
        moves: vec![],
        ha: vec![],
        pipeline: None,
        nodes: vec![],
    }
}

async fn postgres(pg: &PgConfig, cluster: &PgCluster) -> Report {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let expected_dir = schema::DIRECTORY.len() as i64;
    let directory = match version(cluster.directory.pool().get().await).await {
        Ok(v) => {
            if v < expected_dir {
                problems.push(format!("the control database is at schema {v} of {expected_dir}: run kirana migrate"));
            }
            DirectoryReport {
                location: host_of(&pg.directory),
                reachable: true,
                schema_version: Some(v),
                expected_version: Some(expected_dir),
                error: None,
            }
        }
        Err(e) => {
            problems.push(format!("the control database is unreachable: {e}"));
            DirectoryReport {
                location: host_of(&pg.directory),
                reachable: false,
                schema_version: None,
                expected_version: Some(expected_dir),
                error: Some(e),
            }
        }
    };
    let counts = cluster.directory.shard_counts().await.unwrap_or_else(|e| {
        problems.push(format!("cannot count stores per shard: {e}"));
        vec![]
    });
    let dedications = cluster.directory.dedications().await.unwrap_or_else(|e| {
        problems.push(format!("cannot read shard dedications: {e}"));
        vec![]
    });
    // Every shard's replicas at once: a probe waits up to its timeout on a silent server.
    probe_replicas(cluster).await;
    let expected_shard = schema::SHARD.len() as i64;
    let mut shards = Vec::new();
    for (i, shard) in cluster.shards.iter().enumerate() {
        let stores = counts.iter().find(|(s, _)| s.0 as usize == i).map_or(0, |(_, n)| *n);
        let dedicated = dedications.iter().find(|(s, ..)| s.0 as usize == i).map(|(_, st, _)| *st);
        if let Some(owner) = dedicated {
            // A node with placement counts cached from before the pin may have put a store here.
            let owner_here = match cluster.directory.entry(owner).await {
                Ok(e) => e.is_some_and(|e| e.shard.0 as usize == i),
                Err(_) => true, // unknown: do not accuse the shard on a failed lookup
            };
            let others = stores - i64::from(owner_here);
            if others > 0 {
                problems.push(format!(
                    "shard {i} is dedicated to store {owner} but holds {others} other store{}: move {} away \
                     (kirana shard move)",
                    if others == 1 { "" } else { "s" },
                    if others == 1 { "it" } else { "them" }
                ));
            }
        }
        let (reachable, error, schema_version) = match version(shard.primary().get().await).await {
            Ok(v) => {
                if v < expected_shard {
                    problems.push(format!("shard {i} is at schema {v} of {expected_shard}: run kirana migrate"));
                }
                (true, None, Some(v))
            }
            Err(e) => {
                problems.push(format!("shard {i} primary is unreachable: {e}"));
                (false, Some(e), None)
            }
        };
        let (primary_pool, replica_pools) = shard.pool_status();
        let replicas: Vec<ReplicaJson> = shard
            .replica_report()
            .into_iter()
            .map(|r| {
                let host = pg.shards[i].replicas.get(r.index as usize).map(|u| host_of(u)).unwrap_or_default();
                let pool = replica_pools.get(r.index as usize).copied().map(PoolJson::from).unwrap_or(PoolJson {
                    size: 0,
                    available: 0,
                    waiting: 0,
                    max_size: 0,
                });
                let j = replica_json(&r, host, pool, shard.replica_settings().policy);
                // With the primary down the replica's being out of rotation is the primary's
                // problem (reported above), not the replica's: it serves reads alone.
                if !j.in_rotation && !r.serving_without_primary {
                    problems.push(format!("shard {i} replica {}: out of rotation — {}", r.index, j.why));
                }
                j
            })
            .collect();
        let events = events(cluster.storage.logs().nth(i)).await;
        if let Some(n) = events.dead_letters.filter(|n| *n > 0) {
            warnings.push(format!("shard {i}: {n} dead letters (kirana events dlq list)"));
        }
        shards.push(ShardReport {
            shard: i as u32,
            location: host_of(&pg.shards[i].primary),
            reachable,
            error,
            schema_version,
            expected_version: Some(expected_shard),
            stores,
            dedicated_to: dedicated.map(|d| d.to_string()),
            pool: Some(primary_pool.into()),
            replicas,
            events,
        });
    }
    for (s, n) in counts.iter().filter(|(s, _)| s.0 as usize >= pg.shards.len()) {
        problems
            .push(format!("the directory places {n} stores on shard {}, which this configuration does not name", s.0));
    }
    let moves = moves(pg, cluster, &mut problems).await;
    Report {
        backend: "postgres",
        healthy: problems.is_empty(),
        problems,
        warnings,
        directory,
        shards,
        moves,
        ha: vec![],
        pipeline: None,
        nodes: vec![],
    }
}

/// Probes every shard's replicas now, concurrently.
async fn probe_replicas(cluster: &PgCluster) {
    let mut set = tokio::task::JoinSet::new();
    for s in &cluster.shards {
        let s = s.clone();
        set.spawn(async move { s.probe_now().await });
    }
    while set.join_next().await.is_some() {}
}

/// The schema version a database records, from a connection attempt.
async fn version(conn: kirana_storage::Result<deadpool_postgres::Object>) -> Result<i64, String> {
    let c = conn.map_err(|e| e.to_string())?;
    c.query_one("SELECT coalesce(max(version), 0) FROM kirana_schema", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| e.to_string())
}

fn replica_json(
    r: &ReplicaReport,
    host: String,
    pool: PoolJson,
    policy: kirana_storage::postgres::replica::LagPolicy,
) -> ReplicaJson {
    match &r.health {
        Some(h) => ReplicaJson {
            replica: r.index,
            host,
            in_rotation: r.in_rotation,
            state: h.state.to_string(),
            why: if r.serving_without_primary {
                format!(
                    "the primary does not answer: this replica serves the shard's reads alone, as of what it last \
                     received ({} behind that)",
                    bytes(h.lag_bytes)
                )
            } else {
                why(h, r.in_rotation, policy)
            },
            lag_bytes: Some(h.lag_bytes),
            lag_seconds: h.lag_seconds.is_finite().then_some(h.lag_seconds),
            error: None,
            pool,
        },
        None => {
            let error = r.error.clone().unwrap_or_else(|| "never probed".into());
            ReplicaJson {
                replica: r.index,
                host,
                in_rotation: r.in_rotation,
                state: "unreachable".into(),
                why: format!("unreachable: {error}"),
                lag_bytes: None,
                lag_seconds: None,
                error: Some(error),
                pool,
            }
        }
    }
}

/// Why a probed replica is in or out of rotation, then how far behind it is.
fn why(h: &ReplicaHealth, in_rotation: bool, policy: kirana_storage::postgres::replica::LagPolicy) -> String {
    let cause = match h.state {
        ReplicaState::Streaming if in_rotation => "streaming".to_string(),
        // Out while streaming: past a bound, or not yet back within half of each (hysteresis).
        ReplicaState::Streaming => format!(
            "streaming but too far behind (in rotation within {} and {} s; back within half of each)",
            bytes(policy.max_bytes),
            policy.max_seconds
        ),
        ReplicaState::ReplayPaused => "replay paused (pg_wal_replay_pause)".to_string(),
        ReplicaState::ReceiverDown => format!(
            "receiver down: no WAL arrives from the primary ({})",
            h.receiver_status.as_deref().map_or("no receiver process".to_string(), |s| format!("receiver {s}"))
        ),
        ReplicaState::NotInRecovery => "not in recovery: promoted or misconfigured; it may diverge".to_string(),
    };
    let seconds = if h.lag_seconds.is_finite() { format!("{:.1} s", h.lag_seconds) } else { "an unknown time".into() };
    format!("{cause}; {} and {seconds} behind", bytes(h.lag_bytes))
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

async fn events(log: Option<&dyn kirana_storage::ShardLog>) -> EventsJson {
    let Some(log) = log else {
        return EventsJson { outbox_rows: None, oldest_age_seconds: None, dead_letters: None, error: None };
    };
    let now = SystemClock.now();
    let stats = log.outbox_stats().await;
    let dead = log.dead_letters(false, 100_000).await;
    let error = [stats.as_ref().err(), dead.as_ref().err()].into_iter().flatten().next().map(|e| e.to_string());
    EventsJson {
        outbox_rows: stats.as_ref().ok().map(|s| s.rows),
        oldest_age_seconds: stats.as_ref().ok().and_then(|s| s.oldest_at).map(|t| age(now, t)),
        dead_letters: dead.as_ref().ok().map(Vec::len),
        error,
    }
}

fn age(now: Timestamp, then: Timestamp) -> f64 {
    (now.millis() - then.millis()).max(0) as f64 / 1000.0
}

/// Unfinished moves from the journal. One is stuck when no mover holds its lock and its journal
/// has not changed for [`STUCK_AFTER`]: a crashed `kirana shard move` leaves exactly that.
async fn moves(pg: &PgConfig, cluster: &PgCluster, problems: &mut Vec<String>) -> Vec<MoveJson> {
    let journal = match backend::mover(pg) {
        Ok(m) => m.moves().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let journal: Vec<MoveStatus> = match journal {
        Ok(j) => j,
        Err(e) => {
            problems.push(format!("cannot read the move journal: {e}"));
            return vec![];
        }
    };
    let now = SystemClock.now();
    let mut out = Vec::new();
    for m in journal.into_iter().filter(|m| m.state != MoveState::Cleaned) {
        let running = mover_running(cluster, m.store).await.unwrap_or(false);
        let idle = Duration::from_secs_f64(age(now, m.updated_at));
        let stuck = !running && (m.error.is_some() || idle >= STUCK_AFTER);
        if stuck {
            problems.push(format!(
                "the move of store {} from shard {} to shard {} is stuck at `{}` (no mover, idle {:.0} s{}): \
                 kirana shard resume {}",
                m.store,
                m.from.0,
                m.to.0,
                m.state,
                idle.as_secs_f64(),
                m.error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default(),
                m.store
            ));
        }
        out.push(MoveJson {
            store: m.store.to_string(),
            from: m.from.0,
            to: m.to.0,
            state: m.state.to_string(),
            started_at: m.started_at.to_rfc3339(),
            updated_at: m.updated_at.to_rfc3339(),
            rows_copied: m.rows_copied,
            running,
            stuck,
            error: m.error,
        });
    }
    out
}

/// Whether a mover holds the store's move lock, read from `pg_locks` (never by taking the lock,
/// which would make a move starting that instant fail). The key is the one `postgres::moves`
/// locks: `hashtextextended('store-move:<id>', 0)`, split by PostgreSQL into two 32-bit halves.
async fn mover_running(cluster: &PgCluster, store: kirana_domain::StoreId) -> Result<bool, String> {
    let c = cluster.directory.pool().get().await.map_err(|e| e.to_string())?;
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid = ((k >> 32) & 4294967295)::oid AND objid = (k & 4294967295)::oid)
         FROM (SELECT hashtextextended($1, 0) AS k) x",
        &[&format!("store-move:{store}")],
    )
    .await
    .map(|r| r.get::<_, bool>(0))
    .map_err(|e| e.to_string())
}

async fn sqlite(config: &Config) -> anyhow::Result<(Report, Storage)> {
    let storage: Storage = backend::open_storage(config).await?;
    let files = kirana_storage::sqlite::describe(&config.data_dir, config.shards)
        .context("cannot read the schema versions of the SQLite files")?;
    let counts = storage.directory().shard_counts().await?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let (dir_file, dir_version) = files.first().cloned().context("no directory file")?;
    let directory = DirectoryReport {
        location: dir_file,
        reachable: true,
        schema_version: Some(dir_version),
        expected_version: None,
        error: None,
    };
    let mut shards = Vec::new();
    for (i, (file, v)) in files.iter().skip(1).enumerate() {
        let events = events(storage.logs().nth(i)).await;
        if let Some(e) = &events.error {
            problems.push(format!("shard {i}: cannot read its event log: {e}"));
        }
        if let Some(n) = events.dead_letters.filter(|n| *n > 0) {
            warnings.push(format!("shard {i}: {n} dead letters (kirana events dlq list)"));
        }
        shards.push(ShardReport {
            shard: i as u32,
            location: file.clone(),
            reachable: true,
            error: None,
            schema_version: Some(*v),
            expected_version: None,
            stores: counts.iter().find(|(s, _)| s.0 as usize == i).map_or(0, |(_, n)| *n),
            dedicated_to: None,
            pool: None,
            replicas: vec![],
            events,
        });
    }
    let report = Report {
        backend: "sqlite",
        healthy: problems.is_empty(),
        problems,
        warnings,
        directory,
        shards,
        moves: vec![],
        ha: vec![],
        pipeline: None,
        nodes: vec![],
    };
    Ok((report, storage))
}

fn print_text(r: &Report) {
    let d = &r.directory;
    match (&d.schema_version, &d.error) {
        (Some(v), _) => println!("directory {}: schema version {v}{}", d.location, of(d.expected_version)),
        (None, e) => println!("directory {}: UNREACHABLE — {}", d.location, e.as_deref().unwrap_or("?")),
    }
    for s in &r.shards {
        let head = match (&s.schema_version, &s.error) {
            (Some(v), _) => format!("schema version {v}{}", of(s.expected_version)),
            (None, e) => format!("primary UNREACHABLE — {}", e.as_deref().unwrap_or("?")),
        };
        let dedicated = s.dedicated_to.as_deref().map(|d| format!(", dedicated to store {d}")).unwrap_or_default();
        let pool = s
            .pool
            .as_ref()
            .map(|p| format!(", pool {}/{} open ({} idle, {} waiting)", p.size, p.max_size, p.available, p.waiting))
            .unwrap_or_default();
        println!("shard {} {}: {head}, {} stores{dedicated}{pool}", s.shard, s.location, s.stores);
        for rep in &s.replicas {
            println!(
                "shard {} replica {} {}: {} rotation — {}",
                s.shard,
                rep.replica,
                rep.host,
                if rep.in_rotation { "IN" } else { "OUT of" },
                rep.why
            );
        }
        let e = &s.events;
        match &e.error {
            Some(err) => println!("shard {} events: unreadable — {err}", s.shard),
            None => println!(
                "shard {} events: outbox {} rows (oldest {}), {} dead letters",
                s.shard,
                e.outbox_rows.unwrap_or(0),
                e.oldest_age_seconds.map(|a| format!("{a:.1} s ago")).unwrap_or_else(|| "—".into()),
                e.dead_letters.unwrap_or(0)
            ),
        }
    }
    if r.backend == "postgres" {
        if r.moves.is_empty() {
            println!("moves: none in progress");
        }
        for m in &r.moves {
            println!(
                "move of store {}: shard {} -> {} at `{}`, {} rows copied, {}{}",
                m.store,
                m.from,
                m.to,
                m.state,
                m.rows_copied,
                if m.running {
                    "running"
                } else if m.stuck {
                    "STUCK"
                } else {
                    "not running"
                },
                m.error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
        }
    }
    for h in &r.ha {
        let hosts: Vec<String> = h
            .hosts
            .iter()
            .map(|x| match x.timeline {
                Some(t) => format!("{} {} (timeline {t})", x.host, x.role),
                None => format!("{} UNREACHABLE", x.host),
            })
            .collect();
        println!("ha {}: {}", h.database, hosts.join(", "));
        if !h.monitor.is_empty() {
            let nodes: Vec<String> =
                h.monitor.iter().map(|n| format!("{} {}/{}", n.name, n.reported, n.assigned)).collect();
            println!(
                "ha {}: monitor says {}; last failover {}",
                h.database,
                nodes.join(", "),
                h.last_failover.as_deref().unwrap_or("never")
            );
        }
    }
    if let Some(p) = &r.pipeline {
        if let Some(js) = &p.jetstream {
            let waiting: i64 = js.consumers.iter().map(|c| c.lag_events).sum();
            println!(
                "events: JetStream stream {} holds {} events, {waiting} not yet applied by every consumer{}",
                js.stream,
                js.messages.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
                js.error.as_ref().map(|e| format!(" — unreadable: {e}")).unwrap_or_default()
            );
        }
        let worst = p.partition_lags().into_iter().max_by(|a, b| a.3.total_cmp(&b.3));
        if let Some((consumer, partition, events, seconds)) = worst.filter(|w| w.2 > 0) {
            println!(
                "events: most behind: {consumer} partition {partition}, {events} events, oldest waiting {seconds:.1} s"
            );
        }
        let mut holders: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for l in p.leases.iter().filter(|l| l.expires_in_seconds > 0.0) {
            *holders.entry(l.holder.as_str()).or_default() += 1;
        }
        let expired = p.leases.iter().filter(|l| l.expires_in_seconds <= 0.0).count();
        // The embedded backend keeps its leases in the serving process's memory.
        if !p.leases.is_empty() {
            println!(
                "events: leases {}{}",
                if holders.is_empty() {
                    "held by nobody".to_string()
                } else {
                    holders.iter().map(|(h, n)| format!("{h} {n}")).collect::<Vec<_>>().join(", ")
                },
                if expired > 0 { format!(", {expired} expired (their work waits for a node)") } else { String::new() }
            );
        }
    }
    for n in &r.nodes {
        match &n.error {
            Some(e) => println!("node {}: UNREACHABLE — {e}", n.url),
            None => {
                for o in &n.objectives {
                    let alerts: Vec<&str> =
                        o["alerts"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                    println!(
                        "node {} {}: target {:.2} %, {} of {} good, budget left {:.1} %, burn 1 h {:.1}×{}",
                        n.url,
                        o["name"].as_str().unwrap_or("?"),
                        o["target"].as_f64().unwrap_or(0.0) * 100.0,
                        o["window"]["good"].as_u64().unwrap_or(0),
                        o["window"]["total"].as_u64().unwrap_or(0),
                        o["budget_remaining"].as_f64().unwrap_or(0.0) * 100.0,
                        o["burn_rate"]["1h"].as_f64().unwrap_or(0.0),
                        if alerts.is_empty() { String::new() } else { format!(" — ALERT {}", alerts.join(", ")) },
                    );
                }
            }
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    if r.healthy {
        println!("healthy");
    } else {
        for p in &r.problems {
            println!("PROBLEM: {p}");
        }
    }
}

fn of(expected: Option<i64>) -> String {
    expected.map(|e| format!(" (of {e})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::redact;

    #[test]
    fn sizes_read_as_an_operator_would_say_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1_258_291), "1.2 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_paused_replica_says_so_with_its_lag() {
        let h = ReplicaHealth {
            state: ReplicaState::ReplayPaused,
            primary_lsn: 2_000_000,
            receive_lsn: 2_000_000,
            replay_lsn: 741_709,
            lag_bytes: 1_258_291,
            lag_seconds: 3.42,
            receiver_status: Some("streaming".into()),
        };
        let policy = kirana_storage::postgres::replica::LagPolicy { max_bytes: 16 << 20, max_seconds: 1.0 };
        assert_eq!(why(&h, false, policy), "replay paused (pg_wal_replay_pause); 1.2 MiB and 3.4 s behind");
    }

    #[test]
    fn redacted_urls_keep_the_host() {
        assert_eq!(redact("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(host_of("postgres://u:p@db1:5433/shard0"), "db1:5433/shard0");
    }
}
