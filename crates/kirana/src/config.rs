//! Configuration, layered: built-in defaults, then a TOML file (`--config`), then `KIRANA_…`
//! environment variables, then flags. Each later layer overrides the earlier.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kirana_storage::postgres::cluster::{PgConfig, ShardUrls};
use kirana_storage::postgres::pool::PoolSettings;
use kirana_storage::postgres::replica::LagPolicy;
use kirana_storage::postgres::replicas::ReplicaSettings;
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde::Deserialize;

/// Settings every command shares. Flags carry an `env` name, so clap applies env < flag.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Where the embedded databases live.
    #[arg(long, global = true, env = "KIRANA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A TOML file with any of the settings below.
    #[arg(long, global = true, env = "KIRANA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Number of SQLite shard files (more allow parallel writers). Existing stores stay put.
    #[arg(long, global = true, env = "KIRANA_SHARDS")]
    pub shards: Option<u32>,
    /// `full` (survives power loss) or `normal` (survives a crash of the process).
    #[arg(long, global = true, env = "KIRANA_SYNCHRONOUS")]
    pub synchronous: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "KIRANA_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Where events travel: `embedded` (the outbox is the log) or `nats://HOST:PORT`
    /// (NATS JetStream).
    #[arg(long, global = true, env = "KIRANA_EVENTS")]
    pub events: Option<String>,
    /// The deployment's name on a NATS shared with others: its streams are `<NS>_EVENTS` and
    /// `<NS>_DLQ`, its subjects `<ns>.ev.>` (default `kirana`).
    #[arg(long, global = true, env = "KIRANA_EVENTS_NAMESPACE")]
    pub events_namespace: Option<String>,
    /// The PostgreSQL control database (the directory), e.g. postgres://kirana@db0/kirana.
    /// Absent: the embedded SQLite databases in the data directory.
    #[arg(long, global = true, env = "KIRANA_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// One PostgreSQL shard: `PRIMARY_URL[,REPLICA_URL...]`; repeat in shard order (shard 0
    /// first). In the environment, shards are separated by `;`. Replaces the file's shards.
    #[arg(long = "pg-shard", global = true, env = "KIRANA_PG_SHARDS", value_delimiter = ';', hide_env_values = true)]
    pub pg_shards: Vec<String>,
    /// The pg_auto_failover monitor watching the databases (e.g.
    /// postgres://autoctl_node@mon:5432/pg_auto_failover): `kirana doctor` shows each database's
    /// nodes, their states and the last failover.
    #[arg(long = "pg-monitor", global = true, env = "KIRANA_PG_MONITOR", hide_env_values = true)]
    pub pg_monitor: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KIRANA_LISTEN")]
    pub listen: Option<String>,
    /// Believe X-Forwarded-For (only behind a proxy that sets it). `--trust-proxy` alone means true.
    #[arg(long, env = "KIRANA_TRUST_PROXY", num_args = 0..=1, default_missing_value = "true")]
    pub trust_proxy: Option<bool>,
    /// 64 hex digits keying sign-in code hashes; defaults to `<data-dir>/secret.key`.
    #[arg(long, env = "KIRANA_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Seconds to keep serving after a shutdown signal while `/readyz` says 503, so balancers
    /// stop sending traffic before the listener closes.
    #[arg(long, env = "KIRANA_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// The address shoppers and merchants use, e.g. https://shop.example.com (canonical links,
    /// secure cookies). Defaults to http://<listen>.
    #[arg(long, env = "KIRANA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where uploaded images go: `s3://bucket/prefix` (credentials and endpoint from the usual
    /// `AWS_*` variables) or `file:///dir`. Defaults to `<data-dir>/media`.
    #[arg(long, env = "KIRANA_MEDIA_URL")]
    pub media_url: Option<String>,
    /// Let merchants' webhooks reach loopback and private addresses (development only: in
    /// production a webhook must not be aimable at the platform's own network).
    #[arg(long, env = "KIRANA_WEBHOOKS_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    pub webhooks_allow_private: Option<bool>,
    /// The shared second level of the page cache: `redis://HOST:PORT` (every node then reuses
    /// what another rendered), or `memory` (each node alone; the default).
    #[arg(long, env = "KIRANA_CACHE")]
    pub cache: Option<String>,
    /// Memory for the node's page cache, in MiB (default 256).
    #[arg(long, env = "KIRANA_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// This node's name among several serving the same databases (letters, digits, `-`): it
    /// holds its leases of background work under it (a node restarted under the same name takes
    /// its work back at once), and its search index keeps its place in the event log as
    /// `search.<name>` rather than `search`. Default: the host name and process id.
    #[arg(long, env = "KIRANA_NODE_NAME")]
    pub node_name: Option<String>,
    /// Requests per second one store may have on this node beyond cached pages (bursts of
    /// twice that); default 500.
    #[arg(long, env = "KIRANA_STORE_RPS")]
    pub store_rps: Option<u32>,
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g. http://127.0.0.1:4318
    /// (`/v1/traces` is added unless given). Absent: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The SMS provider's send endpoint (`https://…`): sign-in codes and merchants'
    /// notifications go there. Absent: the dev outbox (`<data-dir>/dev-outbox.jsonl`). Its
    /// bearer token comes from `KIRANA_SMS_TOKEN` (or `sms_token` in the file), never a flag.
    #[arg(long, env = "KIRANA_SMS_URL")]
    pub sms_url: Option<String>,
    /// The payment gateway's API (`https://…`; `kirana gateway` serves a test one). Absent:
    /// online payment is unavailable and stores take cash on delivery. Its API key comes from
    /// `KIRANA_PAYMENT_KEY` and its webhook secret from `KIRANA_PAYMENT_WEBHOOK_SECRET` (or
    /// `payment_key` / `payment_webhook_secret` in the file), never a flag.
    #[arg(long, env = "KIRANA_PAYMENT_GATEWAY_URL")]
    pub payment_gateway_url: Option<String>,
}

/// The file layer: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    shards: Option<u32>,
    synchronous: Option<String>,
    log_format: Option<String>,
    events: Option<String>,
    events_namespace: Option<String>,
    /// How long a node's lease of background work lasts unrenewed: how long a dead node's share
    /// waits before another node takes it (default 10).
    lease_ttl_secs: Option<u64>,
    listen: Option<String>,
    trust_proxy: Option<bool>,
    secret_key: Option<String>,
    drain_secs: Option<u64>,
    public_url: Option<String>,
    media_url: Option<String>,
    webhooks_allow_private: Option<bool>,
    cache: Option<String>,
    cache_mb: Option<u64>,
    node_name: Option<String>,
    store_rps: Option<u32>,
    otlp_endpoint: Option<String>,
    sms_url: Option<String>,
    sms_token: Option<String>,
    payment_gateway_url: Option<String>,
    payment_key: Option<String>,
    payment_webhook_secret: Option<String>,
    payments: Option<FilePayments>,
    postgres: Option<FilePostgres>,
    /// `[[slo]]` tables: the service level objectives, replacing the defaults as a whole.
    #[serde(default)]
    slo: Vec<FileSlo>,
}

/// One `[[slo]]`: `name`, `journey` (`storefront` | `checkout`), `target` (a percentage, e.g.
/// 99.9), and `latency_ms` for a latency objective (absent: availability).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSlo {
    name: String,
    journey: String,
    target: f64,
    latency_ms: Option<u64>,
}

fn objectives(file: Vec<FileSlo>) -> anyhow::Result<Vec<kirana_server::slo::Objective>> {
    use kirana_server::slo::{Indicator, Journey, Objective};
    if file.is_empty() {
        return Ok(Objective::defaults());
    }
    file.into_iter()
        .map(|s| {
            let journey = match s.journey.as_str() {
                "storefront" => Journey::Storefront,
                "checkout" => Journey::Checkout,
                other => bail!("slo {:?}: journey must be storefront or checkout, not {other:?}", s.name),
            };
            if !(s.target > 0.0 && s.target < 100.0) {
                bail!("slo {:?}: target is a percentage between 0 and 100 (e.g. 99.9), not {}", s.name, s.target);
            }
            let indicator = match s.latency_ms {
                None => Indicator::Availability,
                Some(0) => bail!("slo {:?}: latency_ms must be more than 0", s.name),
                Some(ms) => Indicator::LatencyBelow { ms },
            };
            Ok(Objective { name: s.name, journey, indicator, target: s.target / 100.0 })
        })
        .collect()
}

/// `[payments]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePayments {
    /// Minutes an unpaid online order holds its stock (default 15).
    hold_minutes: Option<u64>,
    /// When payouts run, India time: `["10:00", "15:00", "20:00"]` (the default).
    payout_times: Option<Vec<String>>,
    /// The plan a store is on unless put on another (default `standard`).
    default_plan: Option<String>,
    /// `[payments.plans.<name>]`: `percent_bps` (200 = 2 %) and `cap` (minor units per order).
    #[serde(default)]
    plans: std::collections::BTreeMap<String, kirana_domain::payment::FeePlan>,
}

fn payment_settings(file: Option<FilePayments>) -> anyhow::Result<kirana_server::payments::PaymentSettings> {
    let mut settings = kirana_server::payments::PaymentSettings::default();
    let Some(file) = file else { return Ok(settings) };
    if let Some(m) = file.hold_minutes {
        if m == 0 || m > 24 * 60 {
            bail!("payments.hold_minutes must be between 1 and 1440, not {m}");
        }
        settings.hold = Duration::from_secs(m * 60);
    }
    if let Some(times) = file.payout_times {
        let mut minutes = Vec::with_capacity(times.len());
        for t in &times {
            let parsed = t
                .split_once(':')
                .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
                .filter(|(h, m)| *h < 24 && *m < 60);
            let Some((h, m)) = parsed else {
                bail!("payments.payout_times: {t:?} is not a time of day like \"15:00\"")
            };
            minutes.push(h * 60 + m);
        }
        if minutes.is_empty() {
            bail!("payments.payout_times needs at least one time");
        }
        settings.payout_times = minutes;
    }
    if !file.plans.is_empty() {
        for (name, plan) in &file.plans {
            if plan.percent_bps > 10_000 || plan.cap.is_some_and(|c| c < 0) {
                bail!("payments.plans.{name}: percent_bps is at most 10000 and cap is not negative");
            }
        }
        settings.fees.plans = file.plans;
    }
    if let Some(d) = file.default_plan {
        settings.fees.default = d;
    }
    if !settings.fees.plans.contains_key(&settings.fees.default) {
        bail!("payments.default_plan {:?} is not one of the plans", settings.fees.default);
    }
    Ok(settings)
}

/// `[postgres]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePostgres {
    control: Option<String>,
    /// The pg_auto_failover monitor, for `kirana doctor`.
    monitor: Option<String>,
    directory_ttl_secs: Option<u64>,
    pool_size: Option<usize>,
    background_pool_size: Option<usize>,
    acquire_timeout_ms: Option<u64>,
    lag_max_seconds: Option<f64>,
    lag_max_bytes: Option<u64>,
    /// How long one read on a replica may take before it moves to the primary.
    replica_read_deadline_ms: Option<u64>,
    /// How long one operation on a shard's primary may take before the caller gets a 503.
    primary_deadline_ms: Option<u64>,
    #[serde(default)]
    shards: Vec<ShardUrls>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub shards: u32,
    pub sqlite: SqliteOptions,
    pub json_logs: bool,
    /// `None`: embedded; `Some(url)`: NATS JetStream at that URL.
    pub nats_url: Option<String>,
    /// The deployment's streams and subjects on NATS (`--events-namespace`).
    pub events_namespace: String,
    /// This node's name among the nodes sharing leases of background work.
    pub node: String,
    /// A lease's life.
    pub lease_ttl: Duration,
    /// Only `serve` listens, so only `serve` requires a valid address.
    pub listen: Option<SocketAddr>,
    pub trust_proxy: bool,
    pub secret_key: Option<String>,
    pub drain_secs: u64,
    pub public_url: Option<String>,
    /// Where uploaded images live (an object_store URL); `None`: `<data-dir>/media`.
    pub media_url: Option<String>,
    pub webhooks_allow_private: bool,
    /// `Some(redis://…)`: the page cache's shared level; `None`: memory only.
    pub cache_url: Option<String>,
    /// The node's page-cache memory bound, in bytes.
    pub cache_bytes: u64,
    /// The consumer name the node's search indexer keeps its positions under.
    pub search_consumer: String,
    /// Per-store request rate on this node.
    pub store_rps: u32,
    /// The service level objectives each node evaluates (`[[slo]]`, else the defaults).
    pub objectives: Vec<kirana_server::slo::Objective>,
    /// `None`: embedded SQLite in `data_dir`; `Some`: the PostgreSQL cluster.
    pub postgres: Option<PgConfig>,
    /// The pg_auto_failover monitor of the PostgreSQL databases, if any.
    pub pg_monitor: Option<String>,
    /// Where spans are exported (the full OTLP/HTTP traces URL); `None`: nowhere.
    pub otlp_traces_url: Option<String>,
    /// The SMS provider; `None`: the dev outbox.
    pub sms: Option<kirana_events::sms::SmsConfig>,
    /// The payment gateway; `None`: online payment unavailable.
    pub payment_gateway: Option<kirana_payments::GatewayClientConfig>,
    pub payments: kirana_server::payments::PaymentSettings,
}

impl Config {
    pub fn resolve(g: &GlobalArgs, serve: Option<&ServeArgs>) -> anyhow::Result<Config> {
        let file = match &g.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = g.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("./kirana-data"));
        let shards = g.shards.or(file.shards).unwrap_or(1);
        if shards == 0 || shards > 1024 {
            bail!("shards must be between 1 and 1024, not {shards}");
        }
        let synchronous = match g.synchronous.clone().or(file.synchronous).as_deref().unwrap_or("full") {
            "full" => Synchronous::Full,
            "normal" => Synchronous::Normal,
            other => bail!("synchronous must be 'full' or 'normal', not '{other}'"),
        };
        let json_logs = match g.log_format.clone().or(file.log_format).as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => bail!("log format must be 'text' or 'json', not '{other}'"),
        };
        let listen = match serve {
            None => None,
            Some(s) => {
                let raw = s.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
                Some(
                    raw.parse()
                        .with_context(|| format!("listen address '{raw}' is not host:port, e.g. 127.0.0.1:8080"))?,
                )
            }
        };
        let secret_key = serve.and_then(|s| s.secret_key.clone()).or(file.secret_key);
        if let Some(hex) = &secret_key
            && (hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bail!("the secret key must be 64 hex digits");
        }
        let nats_url = match g.events.clone().or(file.events).as_deref().map(str::trim) {
            None | Some("embedded") | Some("") => None,
            Some(u) if u.starts_with("nats://") || u.starts_with("tls://") => Some(u.to_string()),
            Some(other) => bail!("--events must be `embedded` or a nats:// URL, not {other:?}"),
        };
        let pg_monitor = g
            .pg_monitor
            .clone()
            .or_else(|| file.postgres.as_ref().and_then(|p| p.monitor.clone()))
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty());
        if let Some(m) = &pg_monitor {
            check_url("the pg_auto_failover monitor (--pg-monitor)", m)?;
        }
        let postgres = postgres_config(g, file.postgres)?;
        let cache_url = match serve.and_then(|s| s.cache.clone()).or(file.cache).as_deref().map(str::trim) {
            None | Some("memory") | Some("") => None,
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => Some(u.to_string()),
            Some(other) => bail!("--cache must be `memory` or a redis:// URL, not {other:?}"),
        };
        let cache_mb = serve.and_then(|s| s.cache_mb).or(file.cache_mb).unwrap_or(256);
        if !(1..=1 << 20).contains(&cache_mb) {
            bail!("cache memory must be between 1 and 1048576 MiB, not {cache_mb}");
        }
        let node_name = serve.and_then(|s| s.node_name.clone()).or(file.node_name);
        let search_consumer = match &node_name {
            None => "search".to_string(),
            Some(name)
                if (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                format!("search.{}", name.to_ascii_lowercase())
            }
            Some(name) => bail!("--node-name must be 1 to 32 letters, digits or '-', not {name:?}"),
        };
        let node = node_name.map(|n| n.to_ascii_lowercase()).unwrap_or_else(kirana_events::assign::default_node_name);
        let events_namespace =
            g.events_namespace.clone().or(file.events_namespace).unwrap_or_else(|| "kirana".into()).trim().to_string();
        if !kirana_events::jetstream::valid_namespace(&events_namespace) {
            bail!(
                "--events-namespace must be 1 to 32 lower-case letters, digits, '_' or '-', starting with a letter, not {events_namespace:?}"
            );
        }
        let lease_ttl_secs = file.lease_ttl_secs.unwrap_or(10);
        if !(2..=600).contains(&lease_ttl_secs) {
            bail!("lease_ttl_secs must be between 2 and 600, not {lease_ttl_secs}");
        }
        let store_rps = serve.and_then(|s| s.store_rps).or(file.store_rps).unwrap_or(500);
        if store_rps == 0 {
            bail!("--store-rps must be at least 1");
        }
        let otlp_traces_url = match serve.and_then(|s| s.otlp_endpoint.clone()).or(file.otlp_endpoint) {
            None => None,
            Some(u) if u.trim().is_empty() => None,
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                let base = u.trim().trim_end_matches('/');
                Some(if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") })
            }
            Some(other) => bail!("--otlp-endpoint must be an http:// or https:// URL, not {other:?}"),
        };
        let objectives = objectives(file.slo)?;
        let sms = match serve.and_then(|s| s.sms_url.clone()).or(file.sms_url) {
            Some(u) if !u.trim().is_empty() => {
                let u = u.trim().to_string();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    bail!("--sms-url must be an http:// or https:// URL, not {u:?}");
                }
                let token = std::env::var("KIRANA_SMS_TOKEN").ok().or(file.sms_token).filter(|t| !t.is_empty());
                Some(kirana_events::sms::SmsConfig { token, ..kirana_events::sms::SmsConfig::new(u) })
            }
            _ => None,
        };
        let payment_gateway = match serve.and_then(|s| s.payment_gateway_url.clone()).or(file.payment_gateway_url) {
            Some(u) if !u.trim().is_empty() => {
                let u = u.trim().to_string();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    bail!("--payment-gateway-url must be an http:// or https:// URL, not {u:?}");
                }
                let key = std::env::var("KIRANA_PAYMENT_KEY").ok().or(file.payment_key).filter(|t| !t.is_empty());
                let secret = std::env::var("KIRANA_PAYMENT_WEBHOOK_SECRET")
                    .ok()
                    .or(file.payment_webhook_secret)
                    .filter(|t| !t.is_empty());
                let (Some(key), Some(secret)) = (key, secret) else {
                    bail!("--payment-gateway-url needs KIRANA_PAYMENT_KEY and KIRANA_PAYMENT_WEBHOOK_SECRET");
                };
                Some(kirana_payments::GatewayClientConfig::new(u, key, secret))
            }
            _ => None,
        };
        let payments = payment_settings(file.payments)?;
        Ok(Config {
            payment_gateway,
            payments,
            sms,
            objectives,
            store_rps,
            otlp_traces_url,
            search_consumer,
            cache_url,
            cache_bytes: cache_mb << 20,
            postgres,
            pg_monitor,
            nats_url,
            events_namespace,
            node,
            lease_ttl: Duration::from_secs(lease_ttl_secs),
            data_dir,
            shards,
            sqlite: SqliteOptions { synchronous, ..SqliteOptions::default() },
            json_logs,
            listen,
            trust_proxy: serve.and_then(|s| s.trust_proxy).or(file.trust_proxy).unwrap_or(false),
            secret_key,
            drain_secs: serve.and_then(|s| s.drain_secs).or(file.drain_secs).unwrap_or(0),
            public_url: serve.and_then(|s| s.public_url.clone()).or(file.public_url),
            media_url: serve.and_then(|s| s.media_url.clone()).or(file.media_url),
            webhooks_allow_private: serve
                .and_then(|s| s.webhooks_allow_private)
                .or(file.webhooks_allow_private)
                .unwrap_or(false),
        })
    }
}

/// The PostgreSQL backend's settings, if any layer names it. The control URL comes from the
/// flag or environment, else the file; shards given as flags (or in the environment) replace the
/// file's list as a whole, since shard numbers are positions in it.
fn postgres_config(g: &GlobalArgs, file: Option<FilePostgres>) -> anyhow::Result<Option<PgConfig>> {
    let file_given = file.is_some();
    let file = file.unwrap_or_default();
    let control = g.postgres.clone().or(file.control).map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    let flag_shards: Vec<&str> = g.pg_shards.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    let shards = if flag_shards.is_empty() {
        file.shards
    } else {
        flag_shards.iter().map(|raw| parse_shard(raw)).collect::<anyhow::Result<Vec<_>>>()?
    };
    let Some(control) = control else {
        if file_given || !shards.is_empty() {
            bail!(
                "PostgreSQL shards are configured but no control database: pass --postgres URL (KIRANA_POSTGRES) \
                 or set `control` under [postgres]"
            );
        }
        return Ok(None);
    };
    check_url("the control database (--postgres)", &control)?;
    if shards.is_empty() {
        bail!(
            "the PostgreSQL backend needs at least one shard: pass --pg-shard PRIMARY_URL[,REPLICA_URL...] \
             (KIRANA_PG_SHARDS, `;` between shards) or add [[postgres.shards]] with `primary = \"...\"`"
        );
    }
    for (i, s) in shards.iter().enumerate() {
        check_url(&format!("shard {i}'s primary"), &s.primary)?;
        for (r, url) in s.replicas.iter().enumerate() {
            check_url(&format!("shard {i}'s replica {r}"), url)?;
        }
    }
    let mut pg = PgConfig::new(control, shards);
    if let Some(secs) = file.directory_ttl_secs {
        pg.directory_ttl = Duration::from_secs(secs);
    }
    let defaults = PoolSettings::default();
    let pool_size = file.pool_size.unwrap_or(defaults.max_size);
    if pool_size == 0 || pool_size > 10_000 {
        bail!("postgres.pool_size must be between 1 and 10000, not {pool_size}");
    }
    let acquire_timeout = file.acquire_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.acquire_timeout);
    if acquire_timeout.is_zero() {
        bail!("postgres.acquire_timeout_ms must be more than 0");
    }
    pg.pool = PoolSettings { max_size: pool_size, acquire_timeout, ..defaults };
    let background = file.background_pool_size.unwrap_or(pg.background_pool);
    if background == 0 || background > pool_size {
        bail!("postgres.background_pool_size must be between 1 and pool_size ({pool_size}), not {background}");
    }
    pg.background_pool = background;
    let policy = ReplicaSettings::default().policy;
    let max_seconds = file.lag_max_seconds.unwrap_or(policy.max_seconds);
    if !(max_seconds.is_finite() && max_seconds >= 0.0) {
        bail!("postgres.lag_max_seconds must be a number of seconds, 0 or more, not {max_seconds}");
    }
    let replica_defaults = ReplicaSettings::default();
    let read_deadline =
        file.replica_read_deadline_ms.map(Duration::from_millis).unwrap_or(replica_defaults.read_deadline);
    if read_deadline.is_zero() {
        bail!("postgres.replica_read_deadline_ms must be more than 0");
    }
    pg.replicas = ReplicaSettings {
        policy: LagPolicy { max_bytes: file.lag_max_bytes.unwrap_or(policy.max_bytes), max_seconds },
        read_deadline,
        ..replica_defaults
    };
    if let Some(ms) = file.primary_deadline_ms {
        if ms == 0 {
            bail!("postgres.primary_deadline_ms must be more than 0");
        }
        pg.primary_deadline = Duration::from_millis(ms);
    }
    Ok(Some(pg))
}

/// `PRIMARY_URL[,REPLICA_URL...]`, as `--pg-shard` takes it.
fn parse_shard(raw: &str) -> anyhow::Result<ShardUrls> {
    // A comma starts the next URL only where a URL starts: a URL may itself list several hosts
    // (`postgres://h1,h2/db?target_session_attrs=read-write`, a primary and its standby).
    let mut parts: Vec<String> = Vec::new();
    for piece in raw.split(',') {
        let starts_url = ["postgres://", "postgresql://"].iter().any(|p| piece.trim_start().starts_with(p));
        match parts.last_mut() {
            Some(last) if !starts_url && !piece.trim().is_empty() => {
                last.push(',');
                last.push_str(piece.trim());
            }
            _ => parts.push(piece.trim().to_string()),
        }
    }
    let mut urls = parts.into_iter();
    let primary = urls
        .next()
        .filter(|p| !p.is_empty())
        .with_context(|| format!("--pg-shard {raw:?} has no primary URL; the form is PRIMARY_URL[,REPLICA_URL...]"))?;
    let replicas: Vec<String> = urls.collect();
    if replicas.iter().any(String::is_empty) {
        bail!("--pg-shard {raw:?} has an empty replica URL (a stray comma?)");
    }
    Ok(ShardUrls { primary, replicas })
}

/// A PostgreSQL URL in the form kirana's pools accept; `what` names it in the message.
fn check_url(what: &str, url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("{what} must be a postgres:// or postgresql:// URL, not {:?}", redact(url));
    }
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| anyhow::anyhow!("{what} is not a valid PostgreSQL URL ({}): {e}", redact(url)))?;
    Ok(())
}

/// A URL fit for a message: any password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globals() -> GlobalArgs {
        GlobalArgs {
            data_dir: None,
            config: None,
            shards: None,
            synchronous: None,
            log_format: None,
            events: None,
            events_namespace: None,
            postgres: None,
            pg_shards: vec![],
            pg_monitor: None,
        }
    }

    fn serve_args() -> ServeArgs {
        ServeArgs {
            listen: None,
            trust_proxy: None,
            secret_key: None,
            drain_secs: None,
            public_url: None,
            media_url: None,
            webhooks_allow_private: None,
            cache: None,
            cache_mb: None,
            node_name: None,
            store_rps: None,
            otlp_endpoint: None,
            sms_url: None,
            payment_gateway_url: None,
        }
    }

    #[test]
    fn a_named_node_keeps_its_search_position_under_its_own_name() {
        assert_eq!(Config::resolve(&globals(), Some(&serve_args())).unwrap().search_consumer, "search");
        let mut named = serve_args();
        named.node_name = Some("Node-2".into());
        assert_eq!(Config::resolve(&globals(), Some(&named)).unwrap().search_consumer, "search.node-2");
        named.node_name = Some("a b".into());
        assert!(Config::resolve(&globals(), Some(&named)).is_err());
    }

    #[test]
    fn objectives_come_from_slo_tables_or_are_the_defaults() {
        let c = Config::resolve(&globals(), Some(&serve_args())).unwrap();
        assert_eq!(c.objectives, kirana_server::slo::Objective::defaults());
        let (_dir, g) = with_file(
            "[[slo]]\nname = \"checkout-availability\"\njourney = \"checkout\"\ntarget = 99.99\n\
             [[slo]]\nname = \"storefront-latency\"\njourney = \"storefront\"\ntarget = 99.5\nlatency_ms = 250\n",
        );
        let c = Config::resolve(&g, Some(&serve_args())).unwrap();
        assert_eq!(c.objectives.len(), 2, "the file's objectives replace the defaults");
        assert!((c.objectives[0].target - 0.9999).abs() < 1e-12);
        assert_eq!(c.objectives[1].indicator, kirana_server::slo::Indicator::LatencyBelow { ms: 250 });
        let (_dir, g) = with_file("[[slo]]\nname = \"x\"\njourney = \"dashboard\"\ntarget = 99\n");
        let e = Config::resolve(&g, Some(&serve_args())).unwrap_err().to_string();
        assert!(e.contains("journey"), "{e}");
        let (_dir, g) = with_file("[[slo]]\nname = \"x\"\njourney = \"checkout\"\ntarget = 0.999\n");
        assert!(Config::resolve(&g, Some(&serve_args())).is_ok(), "0.999 % is odd but a percentage");
        let (_dir, g) = with_file("[[slo]]\nname = \"x\"\njourney = \"checkout\"\ntarget = 100\n");
        assert!(Config::resolve(&g, Some(&serve_args())).is_err(), "100 % leaves no budget");
    }

    #[test]
    fn the_page_cache_is_memory_unless_a_redis_url_is_given() {
        let c = Config::resolve(&globals(), Some(&serve_args())).unwrap();
        assert_eq!((c.cache_url, c.cache_bytes), (None, 256 << 20));
        let (_dir, g) = with_file("cache = \"redis://127.0.0.1:6379\"\ncache_mb = 64\n");
        let c = Config::resolve(&g, Some(&serve_args())).unwrap();
        assert_eq!((c.cache_url.as_deref(), c.cache_bytes), (Some("redis://127.0.0.1:6379"), 64 << 20));
        let mut flags = serve_args();
        flags.cache = Some("memory".into());
        assert_eq!(Config::resolve(&g, Some(&flags)).unwrap().cache_url, None, "the flag wins over the file");
        flags.cache = Some("memcached://x".into());
        let e = Config::resolve(&g, Some(&flags)).unwrap_err().to_string();
        assert!(e.contains("--cache"), "{e}");
    }

    #[test]
    fn codes_go_to_the_configured_sms_provider_else_the_dev_outbox() {
        assert!(Config::resolve(&globals(), Some(&serve_args())).unwrap().sms.is_none());
        let (_dir, g) = with_file("sms_url = \"https://sms.example/send\"\nsms_token = \"tok\"\n");
        let sms = Config::resolve(&g, Some(&serve_args())).unwrap().sms.unwrap();
        assert_eq!(sms.url, "https://sms.example/send");
        // The environment wins over the file, when the test's environment sets it.
        if std::env::var("KIRANA_SMS_TOKEN").is_err() {
            assert_eq!(sms.token.as_deref(), Some("tok"));
        }
        let mut flags = serve_args();
        flags.sms_url = Some("sms.example:443".into());
        let e = Config::resolve(&g, Some(&flags)).unwrap_err().to_string();
        assert!(e.contains("--sms-url"), "{e}");
    }

    #[test]
    fn traces_are_exported_only_to_a_configured_otlp_endpoint() {
        assert_eq!(Config::resolve(&globals(), Some(&serve_args())).unwrap().otlp_traces_url, None);
        let (_dir, g) = with_file("otlp_endpoint = \"http://127.0.0.1:4318\"\n");
        let c = Config::resolve(&g, Some(&serve_args())).unwrap();
        assert_eq!(c.otlp_traces_url.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        let mut flags = serve_args();
        flags.otlp_endpoint = Some("http://collector:4318/v1/traces".into());
        let c = Config::resolve(&g, Some(&flags)).unwrap();
        assert_eq!(c.otlp_traces_url.as_deref(), Some("http://collector:4318/v1/traces"), "the flag wins, kept whole");
        flags.otlp_endpoint = Some("collector:4317".into());
        let e = Config::resolve(&g, Some(&flags)).unwrap_err().to_string();
        assert!(e.contains("--otlp-endpoint"), "{e}");
    }

    #[test]
    fn defaults_are_the_embedded_laptop_setup() {
        let serve = serve_args();
        let c = Config::resolve(&globals(), Some(&serve)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./kirana-data"));
        assert_eq!(c.listen.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.shards, 1);
        assert_eq!(c.sqlite.synchronous, Synchronous::Full);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kirana.toml");
        std::fs::write(&path, "shards = 4\nlisten = \"0.0.0.0:9000\"\nsynchronous = \"normal\"\n").unwrap();
        let mut g = globals();
        g.config = Some(path);
        g.shards = Some(2);
        let serve = serve_args();
        let c = Config::resolve(&g, Some(&serve)).unwrap();
        assert_eq!(c.shards, 2, "flag wins over file");
        assert_eq!(c.listen.unwrap().to_string(), "0.0.0.0:9000", "file wins over default");
        assert_eq!(c.sqlite.synchronous, Synchronous::Normal);
    }

    #[test]
    fn bad_settings_are_refused_with_a_message() {
        let mut g = globals();
        g.synchronous = Some("sometimes".into());
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("synchronous"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kirana.toml");
        std::fs::write(&path, "shard = 4\n").unwrap();
        let mut g = globals();
        g.config = Some(path);
        assert!(Config::resolve(&g, None).is_err(), "unknown keys are typos, not ignored");
    }

    #[test]
    fn payments_are_configured_from_the_file_and_bad_values_are_named() {
        let d = Config::resolve(&globals(), Some(&serve_args())).unwrap();
        assert!(d.payment_gateway.is_none(), "no provider unless configured");
        assert_eq!(d.payments.payout_times, [600, 900, 1200]);
        let (_dir, g) = with_file(
            "[payments]\nhold_minutes = 10\npayout_times = [\"09:30\", \"18:00\"]\ndefault_plan = \"pro\"\n\
             [payments.plans.pro]\npercent_bps = 100\n[payments.plans.lite]\npercent_bps = 300\ncap = 1500\n",
        );
        let c = Config::resolve(&g, Some(&serve_args())).unwrap();
        assert_eq!(c.payments.hold, Duration::from_secs(600));
        assert_eq!(c.payments.payout_times, [570, 1080]);
        assert_eq!(c.payments.fees.for_store(None).fee(100_000), 1_000, "the default plan is pro: 1 %, uncapped");
        assert_eq!(c.payments.fees.for_store(Some("lite")).fee(100_000), 1_500, "lite: 3 % capped at ₹15");
        for (bad, says) in [
            ("[payments]\npayout_times = [\"25:00\"]\n", "payout_times"),
            ("[payments]\nhold_minutes = 0\n", "hold_minutes"),
            ("[payments]\ndefault_plan = \"gold\"\n", "default_plan"),
            ("[payments.plans.x]\npercent_bps = 20000\n", "percent_bps"),
        ] {
            let (_dir, g) = with_file(bad);
            let e = Config::resolve(&g, Some(&serve_args())).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let mut flags = serve_args();
        flags.payment_gateway_url = Some("http://127.0.0.1:9100".into());
        let e = Config::resolve(&globals(), Some(&flags)).unwrap_err().to_string();
        assert!(e.contains("KIRANA_PAYMENT_KEY"), "a provider needs its credentials: {e}");
    }

    fn with_file(text: &str) -> (tempfile::TempDir, GlobalArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kirana.toml");
        std::fs::write(&path, text).unwrap();
        let mut g = globals();
        g.config = Some(path);
        (dir, g)
    }

    #[test]
    fn without_postgres_settings_the_backend_is_sqlite() {
        assert!(Config::resolve(&globals(), None).unwrap().postgres.is_none());
    }

    #[test]
    fn postgres_comes_from_flags_with_replicas_after_commas() {
        let mut g = globals();
        g.postgres = Some("postgres://kirana@db0/control".into());
        g.pg_shards = vec![
            "postgres://kirana@db1/shard0,postgresql://kirana@db1r/shard0".into(),
            " postgres://kirana@db2/shard1 ".into(),
        ];
        let pg = Config::resolve(&g, None).unwrap().postgres.expect("postgres");
        assert_eq!(pg.directory, "postgres://kirana@db0/control");
        assert_eq!(pg.shards.len(), 2);
        assert_eq!(pg.shards[0].replicas, vec!["postgresql://kirana@db1r/shard0".to_string()]);
        assert_eq!(pg.shards[1].primary, "postgres://kirana@db2/shard1");
        assert!(pg.shards[1].replicas.is_empty());
        assert_eq!(pg.directory_ttl, Duration::from_secs(5), "the default TTL");
        assert_eq!(pg.replicas.read_deadline, Duration::from_millis(250), "the default replica read deadline");
        assert_eq!(pg.primary_deadline, Duration::from_secs(5), "the default primary deadline");
    }

    #[test]
    fn a_shard_flag_takes_multi_host_urls_for_a_primary_and_its_standby() {
        let mut g = globals();
        g.postgres = Some("postgres://kirana@db0a,db0b/control?target_session_attrs=read-write".into());
        g.pg_shards = vec![
            "postgres://kirana@db1a:5432,db1b:5433/shard0?target_session_attrs=read-write,\
             postgres://kirana@db1a:5432,db1b:5433/shard0?target_session_attrs=read-only"
                .into(),
        ];
        g.pg_monitor = Some("postgres://autoctl_node@mon/pg_auto_failover".into());
        let config = Config::resolve(&g, None).unwrap();
        let pg = config.postgres.expect("postgres");
        assert_eq!(
            pg.shards[0].primary,
            "postgres://kirana@db1a:5432,db1b:5433/shard0?target_session_attrs=read-write"
        );
        assert_eq!(
            pg.shards[0].replicas,
            vec!["postgres://kirana@db1a:5432,db1b:5433/shard0?target_session_attrs=read-only".to_string()]
        );
        assert_eq!(config.pg_monitor.as_deref(), Some("postgres://autoctl_node@mon/pg_auto_failover"));
        g.pg_shards = vec!["postgres://kirana@db1/shard0,,postgres://kirana@db1r/shard0".into()];
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("empty replica URL"), "{e}");
    }

    #[test]
    fn postgres_comes_from_the_file_and_flags_replace_its_shards() {
        let (_dir, mut g) = with_file(
            r#"
[postgres]
control = "postgres://kirana@db0/control"
directory_ttl_secs = 1
pool_size = 4
acquire_timeout_ms = 750
lag_max_seconds = 2.5
lag_max_bytes = 1048576
replica_read_deadline_ms = 400
primary_deadline_ms = 3000

[[postgres.shards]]
primary = "postgres://kirana@db1/s0"
replicas = ["postgres://kirana@db1r/s0"]

[[postgres.shards]]
primary = "postgres://kirana@db2/s1"
"#,
        );
        let pg = Config::resolve(&g, None).unwrap().postgres.expect("postgres");
        assert_eq!(pg.directory_ttl, Duration::from_secs(1));
        assert_eq!(pg.pool.max_size, 4);
        assert_eq!(pg.pool.acquire_timeout, Duration::from_millis(750));
        assert_eq!(pg.replicas.policy, LagPolicy { max_bytes: 1 << 20, max_seconds: 2.5 });
        assert_eq!(pg.replicas.read_deadline, Duration::from_millis(400));
        assert_eq!(pg.primary_deadline, Duration::from_secs(3));
        assert_eq!(pg.shards.len(), 2);
        assert_eq!(pg.shards[0].replicas.len(), 1);

        g.postgres = Some("postgres://other@db9/control".into());
        g.pg_shards = vec!["postgres://other@db9/only".into()];
        let pg = Config::resolve(&g, None).unwrap().postgres.expect("postgres");
        assert_eq!(pg.directory, "postgres://other@db9/control", "the flag wins over the file");
        assert_eq!(pg.shards, vec![ShardUrls { primary: "postgres://other@db9/only".into(), replicas: vec![] }]);
        assert_eq!(pg.pool.max_size, 4, "the file's other settings still apply");
    }

    #[test]
    fn postgres_settings_are_checked_with_clear_messages() {
        let mut g = globals();
        g.postgres = Some("postgres://kirana@db0/control".into());
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("at least one shard"), "{e}");

        g.pg_shards = vec!["mysql://db1/s0".into()];
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("shard 0's primary must be a postgres://"), "{e}");

        g.pg_shards = vec!["postgres://db1/s0,".into()];
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("empty replica URL"), "{e}");

        g.pg_shards = vec!["postgres://db1/s0".into()];
        g.postgres = Some("db0".into());
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("control database"), "{e}");

        let mut g = globals();
        g.pg_shards = vec!["postgres://db1/s0".into()];
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("no control database"), "{e}");

        let (_dir, g) = with_file(
            "[postgres]\ncontrol = \"postgres://db0/c\"\npool_size = 0\n[[postgres.shards]]\nprimary = \"postgres://db1/s\"\n",
        );
        let e = Config::resolve(&g, None).unwrap_err().to_string();
        assert!(e.contains("pool_size"), "{e}");

        let (_dir, g) = with_file(
            "[postgres]\ncontrol = \"postgres://db0/c\"\n[[postgres.shards]]\nprimery = \"postgres://db1/s\"\n",
        );
        assert!(Config::resolve(&g, None).is_err(), "a misspelt shard key is refused");
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(redact("postgres://kirana:s3cret@db0/c"), "postgres://kirana:***@db0/c");
        assert_eq!(redact("postgres://kirana@db0/c"), "postgres://kirana@db0/c");
        let mut g = globals();
        g.postgres = Some("postgres://kirana:s3cret@db0:notaport/c".into());
        g.pg_shards = vec!["postgres://db1/s0".into()];
        let e = format!("{:#}", Config::resolve(&g, None).unwrap_err());
        assert!(!e.contains("s3cret"), "{e}");
    }
}
