//! The `kirana` binary: parse the command line, build the application, run it.
//!
//! - [`config`]: the layered settings (defaults < TOML < `KIRANA_*` < flags), SQLite or PostgreSQL.
//! - [`backend`]: opening whichever storage backend is configured.
//! - [`doctor`]: `kirana doctor`, the databases' health with an exit code.
//! - [`shard_cli`]: `kirana shard …`, listing, moving and pinning stores (moves on PostgreSQL).
//! - [`events_cli`], [`seed`]: the event pipeline's and the bulk loader's commands.

/// mimalloc instead of glibc's malloc: a cached page is mostly small short-lived allocations
/// (headers, keys, futures), where glibc's allocator took ~11 % of the serving CPU in the profile of
/// a cached page (BENCHMARKS.md, "Read cache").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backend;
mod config;
mod doctor;
mod events_cli;
mod seed;
mod shard_cli;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kirana_domain::merchant::TokenKind;
use kirana_domain::{Clock, Phone, SystemClock};
use kirana_server::auth::{DevOutbox, hash_token, load_or_create_key, new_token, parse_key};
use kirana_server::{AppState, ServerConfig};
use kirana_storage::postgres::schema;

use crate::backend::Backend;
use crate::config::{Config, GlobalArgs, ServeArgs, redact};

#[derive(Debug, Parser)]
#[command(name = "kirana", version, about = "Online stores for a million merchants")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: APIs, pages and the event pipeline.
    Serve(ServeArgs),
    /// Create or upgrade the databases' schemas, then report their versions.
    Migrate,
    /// Merchant administration.
    Merchant {
        #[command(subcommand)]
        command: MerchantCommand,
    },
    /// Print the OpenAPI description.
    Openapi,
    /// The event pipeline: status, dead letters.
    Events {
        #[command(subcommand)]
        command: events_cli::EventsCommand,
    },
    /// Bulk-load realistic stores (for benchmarks and staging); restartable.
    Seed(seed::SeedArgs),
    /// Drive a running kirana with a realistic shopper and merchant workload; report latency.
    Bench(Box<kirana_loadgen::BenchArgs>),
    /// Nodes, shards, replicas and monthly cost for a load, from a bench report.
    Capacity(kirana_loadgen::CapacityArgs),
    /// Check the databases: shards, replicas, moves and the event backlog. Exits non-zero when
    /// something needs an operator.
    Doctor {
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// A running node's address (e.g. http://127.0.0.1:8080): its service level objectives,
        /// error budgets and firing alerts are checked too. Repeat for several nodes.
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
    /// Shards and the stores on them: list, move, pin (PostgreSQL).
    Shard {
        #[command(subcommand)]
        command: shard_cli::ShardCommand,
    },
    /// Product search: rebuild a store's documents in this node's index from the database.
    Search {
        #[command(subcommand)]
        command: SearchCommand,
    },
    /// A test payment gateway for development and tests: the provider's API, a page where the
    /// shopper pays or declines, and signed webhooks; `POST /control` makes it slow, failing
    /// or drop webhooks. Its key and secret come from `KIRANA_PAYMENT_KEY` and
    /// `KIRANA_PAYMENT_WEBHOOK_SECRET` (both `dev` when unset), as `kirana serve` reads them.
    Gateway {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Where webhooks go, e.g. http://127.0.0.1:8080/api/v1/payments/webhooks/testgw.
        #[arg(long)]
        webhook_url: Option<String>,
        /// The gateway's address as shoppers' browsers reach it (default http://<listen>).
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Online payments: the payout run, by hand.
    Payments {
        #[command(subcommand)]
        command: PaymentsCommand,
    },
    /// Measure the storage engine's own insert rates next to the data (a benchmark baseline).
    Baseline {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
enum SearchCommand {
    /// Rebuild one store's documents from the database (a new index, or one that missed
    /// events). Run it while `kirana serve` is stopped: the index takes one writer at a time.
    Reindex {
        /// The store's slug.
        #[arg(long)]
        store: String,
    },
}

#[derive(Debug, Subcommand)]
enum PaymentsCommand {
    /// Put a store on one of the operator's fee plans (`[payments.plans]`); `--plan default`
    /// returns it to the default plan.
    Plan {
        /// The store's slug.
        #[arg(long)]
        store: String,
        #[arg(long)]
        plan: String,
    },
    /// Pay out now what every store is owed for its ended orders (the scheduled runs do this
    /// on their own). Safe to repeat: a store gets one payout per run time.
    Payout,
}

#[derive(Debug, Subcommand)]
enum MerchantCommand {
    /// Mint a bearer token for a merchant (created if new). Prints the token.
    Token {
        #[arg(long)]
        phone: String,
        /// A name for the token, shown in the merchant's key list.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Connections the kernel may queue before the server accepts them. tokio's `bind` asks for
/// 1024: a flash sale's crowd (thousands of shoppers connecting in the same second) overflowed it,
/// and each dropped SYN cost its shopper the kernel's one-second retransmit (BENCHMARKS.md, "Flash
/// sale under browsing"). The kernel caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // A restarted node takes its port back while the old one's connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let serve_args = match &cli.command {
        Command::Serve(a) => Some(a),
        _ => None,
    };
    let config = Config::resolve(&cli.global, serve_args)?;
    let exporter = init_logs(config.json_logs, config.otlp_traces_url.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => serve(config).await,
            Command::Migrate => migrate(&config).await,
            Command::Doctor { json, nodes } => doctor::run(&config, json, &nodes).await,
            Command::Shard { command } => shard_cli::run(&config, command).await,
            Command::Openapi => {
                println!("{}", kirana_server::openapi_json());
                Ok(())
            }
            Command::Merchant { command: MerchantCommand::Token { phone, name } } => {
                mint_token(&config, &phone, &name).await
            }
            Command::Seed(args) => seed::run(&config, &args).await,
            Command::Events { command } => events_cli::run(&config, command).await,
            Command::Baseline { seconds } => baseline(&config, seconds),
            Command::Gateway { listen, webhook_url, public_url } => gateway(listen, webhook_url, public_url).await,
            Command::Payments { command } => payments_cli(&config, command).await,
            Command::Search { command: SearchCommand::Reindex { store } } => reindex(&config, &store).await,
            Command::Bench(mut args) => {
                // The manifest lives in the data directory unless named.
                if args.manifest == std::path::Path::new("kirana-data/seed-manifest.json") {
                    args.manifest = config.data_dir.join("seed-manifest.json");
                }
                let report = kirana_loadgen::bench(*args).await?;
                if report.flash_sale.as_ref().is_some_and(|f| f.oversold) {
                    anyhow::bail!("the flash sale sold more units than it had: an oversell");
                }
                // A sale the server does not confirm (orders ≠ units, stock left, unreadable) fails
                // the command, as an oversell does: scripts and CI read the exit code.
                if let Some(sale) = report.flash_during_browse.as_ref().map(|f| &f.flash)
                    && sale.verdict != "PASS"
                {
                    anyhow::bail!("the flash sale's verdict is {}: {}", sale.verdict, sale.reasons.join("; "));
                }
                if report.totals.errors > 0 {
                    eprintln!("bench: {} requests failed; see the report", report.totals.errors);
                }
                Ok(())
            }
            Command::Capacity(args) => {
                println!("{}", kirana_loadgen::capacity(args)?);
                Ok(())
            }
        }
    });
    // Sends the spans still batched; outside the runtime, as the blocking HTTP client needs.
    if let Some(provider) = exporter
        && let Err(e) = provider.shutdown()
    {
        eprintln!("could not flush the last spans: {e}");
    }
    outcome
}

/// Logs to stderr, as text or JSON, and spans to an OTLP collector when one is configured.
/// JSON lines carry the fields of every span they were logged in (`spans`), so a line logged
/// while serving a request has its `trace_id`, `request_id` and `store_id`.
fn init_logs(
    json: bool,
    otlp_traces_url: Option<&str>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,tokio_postgres=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().with_current_span(false).with_span_list(true).boxed() } else { fmt.boxed() };
    let provider = match otlp_traces_url {
        None => None,
        Some(url) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
                .with_context(|| format!("cannot set up span export to {url}"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("kirana").build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("kirana")));
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
    Ok(provider)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen.context("serve needs a listen address")?;
    // The data directory still holds the secret key, the dev outbox and local media.
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let backend = backend::open(&config).await?;
    // Replica probers (PostgreSQL only) run until the HTTP drain ends; `true` stops them.
    let (stop_probers, probers_stop) = tokio::sync::watch::channel(false);
    let probers = match &backend {
        Backend::Postgres(cluster) => cluster.start_probers(probers_stop),
        Backend::Sqlite(_) => Vec::new(),
    };
    let storage = backend.storage().clone();
    let shard_count = storage.shard_count();
    let otp_key = match &config.secret_key {
        Some(hex) => parse_key(hex).context("the secret key must be 64 hex digits")?,
        None => {
            load_or_create_key(&config.data_dir.join("secret.key")).context("cannot read or create the secret key")?
        }
    };
    let server_config = ServerConfig {
        otp_key,
        trust_proxy: config.trust_proxy,
        store_rps: config.store_rps,
        store_burst: config.store_rps.saturating_mul(2),
        objectives: config.objectives.clone(),
        ..ServerConfig::default()
    };
    // One sender for sign-in codes (the server) and notifications (the pipeline).
    let (notifier, messenger): (Arc<dyn kirana_server::auth::Notifier>, Arc<dyn kirana_events::notify::Messenger>) =
        match &config.sms {
            Some(sms) => {
                let sms = Arc::new(kirana_events::sms::HttpSms::new(sms.clone()).map_err(anyhow::Error::msg)?);
                (sms.clone(), sms)
            }
            None => {
                let outbox = Arc::new(DevOutbox::new(config.data_dir.join("dev-outbox.jsonl")));
                (outbox.clone(), outbox)
            }
        };
    let media = match &config.media_url {
        // object_store's own option names, from the environment S3 tools already use.
        Some(url) => kirana_server::media::MediaStore::from_url(
            url,
            std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.to_ascii_lowercase(), v)),
        ),
        None => kirana_server::media::MediaStore::local(&config.data_dir.join("media")),
    }
    .map_err(|e| anyhow::anyhow!("cannot open the media store: {e}"))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Product search: the node's index beside the data, an indexer per shard beside the
    // pipeline (which must not trim events the indexer has not read). A node whose index cannot
    // open still serves search from the database.
    let index = match kirana_search::SearchIndex::open(&config.data_dir.join("search")) {
        Ok(index) => Some(Arc::new(index)),
        Err(e) => {
            tracing::error!(error = %e, "the search index cannot open; search answers from the database");
            None
        }
    };
    let indexer = kirana_search::IndexerConfig { consumer: config.search_consumer.clone(), ..Default::default() };
    let (indexing, indexer_consumer) = (index.is_some(), indexer.consumer.clone());
    // The cache in front of public reads; this node's cache consumer tells it at once when it
    // bumped a store's version.
    let read_cache = kirana_server::read_cache::ReadCache::new(kirana_server::read_cache::ReadCacheConfig {
        cache: kirana_cache::Config {
            redis_url: config.cache_url.clone(),
            max_bytes: config.cache_bytes,
            ..Default::default()
        },
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot set up the page cache: {e}"))?;
    let (stop_indexers, indexers_stop) = tokio::sync::watch::channel(false);
    let (search, indexers) = match index {
        Some(index) => {
            let ready = kirana_search::Readiness::new(shard_count);
            let tasks = kirana_search::start(
                index.clone(),
                storage.clone(),
                indexer,
                clock.clone(),
                ready.clone(),
                indexers_stop,
            );
            (kirana_search::ProductSearch::new(storage.clone(), index, ready), tasks)
        }
        None => (kirana_search::ProductSearch::database_only(storage.clone()), Vec::new()),
    };
    let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{listen}"));
    let provider: Option<Arc<dyn kirana_payments::PaymentProvider>> = match &config.payment_gateway {
        Some(g) => Some(Arc::new(
            kirana_payments::HttpGateway::new(g.clone()).map_err(|e| anyhow::anyhow!("the payment gateway: {e}"))?,
        )),
        None => None,
    };
    let payments = kirana_server::payments::Payments::new(
        provider,
        kirana_server::payments::PaymentSettings { public_url: public_url.clone(), ..config.payments.clone() },
    );
    let forget = read_cache.clone();
    let state = AppState::new(storage.clone(), clock.clone(), notifier, server_config)
        .with_media(media)
        .with_search(search)
        .with_read_cache(read_cache)
        .with_payments(payments);
    // The event pipeline, and the payment reconciler and payout schedule: background work the
    // nodes sharing these databases split between them by lease (decision 0025).
    let payment_jobs = {
        let (a, b) = (state.clone(), state.clone());
        vec![
            kirana_events::assign::Job::new("payments.reconciler", move |stop| {
                kirana_server::payments::run_reconciler(a.clone(), stop)
            }),
            kirana_events::assign::Job::new("payments.payouts", move |stop| {
                kirana_server::payments::run_payouts(b.clone(), stop)
            }),
        ]
    };
    let pipeline = kirana_events::Pipeline::start_with(
        storage.clone(),
        kirana_events::consumers::all_consumers_notifying(Arc::new(move |store| forget.forget_version(store))),
        messenger,
        clock.clone(),
        kirana_events::PipelineConfig {
            backend: match &config.nats_url {
                None => kirana_events::pipeline::Backend::Embedded,
                Some(url) => kirana_events::pipeline::Backend::JetStream(Box::new(
                    kirana_events::jetstream::JetStreamConfig::namespaced(url, &config.events_namespace),
                )),
            },
            webhooks: kirana_events::webhooks::WebhookConfig {
                allow_private_targets: config.webhooks_allow_private,
                ..Default::default()
            },
            also_trim_behind: indexing.then(|| indexer_consumer.clone()).into_iter().collect(),
            assign: kirana_events::assign::AssignConfig {
                ttl: config.lease_ttl,
                ..kirana_events::assign::AssignConfig::new(config.node.clone())
            },
            ..Default::default()
        },
        payment_jobs,
    );
    let web = kirana_web::Web::new(&public_url, &otp_key);
    let app = kirana_web::app(state.clone(), web);
    let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        backend = if config.postgres.is_some() { "postgres" } else { "sqlite" },
        shards = shard_count,
        "kirana is serving"
    );
    println!("kirana listening on http://{addr}");
    let drain = Duration::from_secs(config.drain_secs);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal(state, drain))
        .await
        .context("the server failed")?;
    // Requests have finished; the pipeline (and the payment workers) finish their current
    // step and give their leases back. Whatever was not read stays in the outbox (or the
    // stream) for whichever node takes the work.
    pipeline.stop().await;
    // The indexers commit what they have read and record their positions.
    let _ = stop_indexers.send(true);
    for t in indexers {
        let _ = t.await;
    }
    // Nothing reads replicas any more: stop probing them.
    let _ = stop_probers.send(true);
    for p in probers {
        let _ = p.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C: readiness turns 503 at once, the listener closes after the
/// drain period, and in-flight requests finish before the process exits.
async fn shutdown_signal(state: AppState, drain: Duration) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!(drain_secs = drain.as_secs(), "shutting down: not ready, draining");
    state.set_draining();
    tokio::time::sleep(drain).await;
}

async fn gateway(listen: SocketAddr, webhook_url: Option<String>, public_url: Option<String>) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "dev".into());
    let config = kirana_payments::gateway::GatewayConfig {
        key: env("KIRANA_PAYMENT_KEY"),
        webhook_secret: env("KIRANA_PAYMENT_WEBHOOK_SECRET"),
        webhook_url,
        public_url,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    println!("kirana gateway listening on http://{}", listener.local_addr()?);
    kirana_payments::gateway::serve(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("the gateway failed")
}

async fn payments_cli(config: &Config, command: PaymentsCommand) -> anyhow::Result<()> {
    let storage = backend::open_storage(config).await?;
    let now = SystemClock.now();
    match command {
        PaymentsCommand::Plan { store, plan } => {
            let (scope, _) =
                storage.scope_for_slug(&store).await.with_context(|| format!("no store has the slug {store}"))?;
            let plan = (plan != "default").then_some(plan);
            if let Some(p) = &plan
                && !config.payments.fees.plans.contains_key(p)
            {
                anyhow::bail!(
                    "no plan {p:?}; the plans are {:?}",
                    config.payments.fees.plans.keys().collect::<Vec<_>>()
                );
            }
            storage.shard(&scope).payments().set_plan(&scope, plan.as_deref(), now).await?;
            println!("{store}: on plan {}", plan.as_deref().unwrap_or(&config.payments.fees.default));
        }
        PaymentsCommand::Payout => {
            let payments = kirana_server::payments::Payments::new(None, config.payments.clone());
            let n = payments.pay_out_once(&storage, now, now).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{n} store(s) paid out");
        }
    }
    Ok(())
}

async fn reindex(config: &Config, slug: &str) -> anyhow::Result<()> {
    let storage = backend::open_storage(config).await?;
    let (scope, _) = storage.scope_for_slug(slug).await.with_context(|| format!("no store has the slug {slug}"))?;
    let index = kirana_search::SearchIndex::open(&config.data_dir.join("search"))
        .context("cannot open the search index (is `kirana serve` running on this data directory?)")?;
    let n = kirana_search::reindex_store(&index, &storage, &scope).await?;
    println!("{slug}: {n} products indexed");
    Ok(())
}

fn baseline(config: &Config, seconds: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let rates = kirana_storage::sqlite::baseline::insert_rates(
        &config.data_dir,
        config.sqlite.synchronous,
        Duration::from_secs(seconds.max(1)),
    )?;
    println!("{}", serde_json::to_string_pretty(&rates)?);
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let Some(pg) = &config.postgres else {
        drop(backend::open_storage(config).await?);
        for (file, version) in kirana_storage::sqlite::describe(&config.data_dir, config.shards)? {
            println!("{file}: schema version {version}");
        }
        return Ok(());
    };
    // Opening the cluster migrates too, but passes over a shard that is down (a serving node
    // must start anyway); `migrate` must not, so each database is migrated here explicitly.
    let cluster = backend::open_postgres(pg).await?;
    let mut c = cluster.directory.pool().get().await.context("cannot reach the control database")?;
    let v = schema::migrate(&mut c, schema::DIRECTORY).await.context("cannot migrate the control database")?;
    println!("control {}: schema version {v}", redact(&pg.directory));
    let mut failed = 0;
    for (i, shard) in cluster.shards.iter().enumerate() {
        let url = redact(&pg.shards[i].primary);
        let migrated = async {
            let mut c = shard.primary().get().await?;
            schema::migrate(&mut c, schema::SHARD).await
        }
        .await;
        match migrated {
            Ok(v) => println!("shard {i} {url}: schema version {v}"),
            Err(e) => {
                failed += 1;
                eprintln!("shard {i} {url}: NOT migrated: {e}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} shard(s) could not be migrated; run `kirana migrate` again once they are reachable");
    }
    Ok(())
}

async fn mint_token(config: &Config, phone: &str, name: &str) -> anyhow::Result<()> {
    let phone = Phone::parse(phone).map_err(|m| anyhow::anyhow!("--phone {m}"))?;
    let name = kirana_domain::text::line(name, 1, 120).map_err(|m| anyhow::anyhow!("--name {m}"))?;
    let storage = backend::open_storage(config).await?;
    let now = SystemClock.now();
    let (merchant, created) = storage.directory().merchant_for_phone(&phone, now).await?;
    let token = new_token("kir");
    storage.directory().insert_token(merchant.id, TokenKind::ApiKey, &name, hash_token(&token), now, None).await?;
    eprintln!(
        "{} merchant {} ({}); token named '{name}':",
        if created { "created" } else { "found" },
        merchant.id,
        phone.as_str()
    );
    println!("{token}");
    Ok(())
}
