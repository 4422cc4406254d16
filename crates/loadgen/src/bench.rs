//! `kirana bench`: its flags, and one run from start to report. Reads the manifest, checks the
//! target answers for it, runs the main phase (open or closed loop) with a warm-up, then the
//! flash sale if asked (after the main phase, so its burst of contended checkouts neither
//! distorts the main run's latencies nor is diluted by them) — or, with `--flash-during-browse`,
//! the sale *inside* the main phase, which then spares the flash store and is measured in a
//! quiet and a contended window (`flash_browse`). Measures server and generator CPU over the
//! measured window, prints the table and writes the JSON. The parts it composes (workload,
//! driver, session, flash_browse, report) know nothing of flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::driver::{self, Deadline, Started, Window};
use crate::flash_browse::{self, SaleRun, SaleTarget};
use crate::manifest::Manifest;
use crate::probe;
use crate::report::{
    self, ErrorSample, FlashReport, GeneratorUsage, REPORT_SCHEMA, Report, RunConfig, ServerUsage, Totals,
};
use crate::session::{self, FlashOutcome, Phase, Shared};
use crate::stats::{Recorder, RequestKind, Timeline};
use crate::workload::{Mix, Workload};

/// Workers when neither `--rate` nor `--concurrency` is given.
const DEFAULT_CONCURRENCY: u32 = 16;

/// Drive a running kirana over HTTP with a realistic shopper and merchant workload.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the deployment (a node or its balancer); plain HTTP.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The seed manifest written by `kirana seed` (`<data-dir>/seed-manifest.json`).
    #[arg(long, default_value = "kirana-data/seed-manifest.json")]
    pub manifest: PathBuf,
    /// Open loop: start this many sessions per second on a fixed schedule; latency is measured
    /// from each session's scheduled start (no coordinated omission).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: this many workers run sessions back to back (the default, with 16).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Measured time, after the warm-up ("30s", "2m", "500ms" or seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring starts; its samples are not recorded.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Longest wait for one request (connect, send, whole response); longer is an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Zipf exponent of store popularity (0 = uniform; 1 = rank r drawn ∝ 1/r).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Fraction of sessions that are merchants opening their dashboard.
    #[arg(long, default_value_t = 0.05)]
    pub merchant_ratio: f64,
    /// Fraction of shopper sessions that search once.
    #[arg(long, default_value_t = 0.2)]
    pub search_ratio: f64,
    /// Fraction of shopper sessions that open a cart and add 1..=--max-cart-items variants.
    #[arg(long, default_value_t = 0.2)]
    pub cart_ratio: f64,
    /// Fraction of carts that check out (then view their order's status).
    #[arg(long, default_value_t = 0.5)]
    pub checkout_ratio: f64,
    /// Fraction of shopper sessions that land on a product page first (a shared link), once
    /// an earlier session has discovered that store's products.
    #[arg(long, default_value_t = 0.0)]
    pub landing_ratio: f64,
    /// Fewest category-list → product-page rounds per shopper session.
    #[arg(long, default_value_t = 1)]
    pub min_browse: u32,
    /// Most category-list → product-page rounds per shopper session.
    #[arg(long, default_value_t = 3)]
    pub max_browse: u32,
    /// Most variants a cart receives (at least one).
    #[arg(long, default_value_t = 2)]
    pub max_cart_items: u32,
    /// After the main run, a flash sale: shoppers race for the manifest's flash product.
    #[arg(long)]
    pub flash_sale: bool,
    /// Shoppers who open a cart, add the flash item and check out at the same moment (with
    /// --flash-during-browse: buyers who arrive at once).
    #[arg(long, default_value_t = 200)]
    pub flash_shoppers: u32,
    /// The flash sale during browsing, as one run in two windows (issue 8's proof). The main
    /// workload (open loop, --rate, recommended) visits every store but the flash store, and its
    /// merchants but that store's. After the warm-up it runs --duration alone: the *quiet*
    /// window. Then the sale opens: --flash-shoppers buyers arrive at once for the manifest's
    /// flash product (cart, add, checkout), and the *contended* window lasts until the last of
    /// them is done, when the browsing stops. Buyers behave as clients should under the
    /// platform's protections: a 429 (the store's rate limit) or 503 (shed) is waited out —
    /// Retry-After plus up to 0.5 s of jitter — and the request sent again, a checkout with the
    /// same Idempotency-Key, until --flash-give-up; a 409 for stock means sold out. Reported:
    /// the other stores' p50/p99/p99.9 per window (reads together and per type), the ratio of
    /// the contended to the quiet p99 (goal ≤ 2), and the sale — orders, sold out, errors, 429s,
    /// 503s — checked on the server through the flash store's merchant key (its orders for the
    /// product since the run began, the stock left): PASS only with one order per unit the sale
    /// opened with, none left and nothing oversold. The manifest's stock must be on the server
    /// when the run starts (re-run `kirana seed --flash-stock N` between runs).
    #[arg(long, conflicts_with = "flash_sale")]
    pub flash_during_browse: bool,
    /// With --flash-during-browse, how the buyers come: `waiting` (the default) — each opened
    /// the product page during the warm-up, as people do before a sale's countdown ends, and
    /// clicks on the connection that page left open; `cold` — every buyer opens a new
    /// connection in the same instant the sale opens (a harsher crowd than browsers make).
    #[arg(long, value_enum, default_value = "waiting")]
    pub flash_arrival: FlashArrival,
    /// With --flash-during-browse: the buyers' first clicks spread evenly over this long after
    /// the sale opens (people do not all click in the same millisecond); 0 (the default): all
    /// in the same instant.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub flash_ramp: Duration,
    /// With --flash-during-browse: a buyer still refused this long after the sale opened gives
    /// up (an error), and sends nothing more.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub flash_give_up: Duration,
    /// The server's process id (same machine): report its CPU time per request and its memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's data directory (same machine): report its size, for `kirana capacity`.
    #[arg(long)]
    pub server_data_dir: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the workload's random choices (random if absent; the report records it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// How flash buyers arrive (`--flash-arrival`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlashArrival {
    Waiting,
    Cold,
}

/// "250ms", "30s", "2m", "1h" or a plain number of seconds ("1.5").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.parse().map_err(|_| format!("`{s}` is not a duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Open(f64),
    Closed(u32),
}

impl BenchArgs {
    fn mix(&self) -> Mix {
        Mix {
            merchant: self.merchant_ratio,
            search: self.search_ratio,
            cart: self.cart_ratio,
            checkout: self.checkout_ratio,
            landing: self.landing_ratio,
            min_browse: self.min_browse,
            max_browse: self.max_browse,
            max_cart_items: self.max_cart_items,
        }
    }

    fn mode(&self) -> anyhow::Result<Mode> {
        match (self.rate, self.concurrency) {
            (Some(_), Some(_)) => {
                anyhow::bail!("--rate (open loop) and --concurrency (closed loop) exclude each other")
            }
            (Some(r), None) => {
                anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be a positive number of sessions per second");
                Ok(Mode::Open(r))
            }
            (None, Some(c)) => {
                anyhow::ensure!((1..=100_000).contains(&c), "--concurrency must be between 1 and 100000");
                Ok(Mode::Closed(c))
            }
            (None, None) => Ok(Mode::Closed(DEFAULT_CONCURRENCY)),
        }
    }

    fn check(&self, manifest: &Manifest) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.target.starts_with("http://"),
            "--target must be a plain http:// URL (this bench speaks no TLS): got `{}`",
            self.target
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be longer than zero");
        anyhow::ensure!(!self.timeout.is_zero(), "--timeout must be longer than zero");
        anyhow::ensure!(self.zipf_s.is_finite() && self.zipf_s >= 0.0, "--zipf-s must be a number ≥ 0");
        if self.flash_sale || self.flash_during_browse {
            anyhow::ensure!(
                manifest.flash_sale.is_some(),
                "--flash-sale and --flash-during-browse need a `flash_sale` entry in the manifest (`kirana seed` writes one)"
            );
            anyhow::ensure!(
                (1..=100_000).contains(&self.flash_shoppers),
                "--flash-shoppers must be between 1 and 100000"
            );
        }
        if self.flash_during_browse {
            anyhow::ensure!(!self.flash_give_up.is_zero(), "--flash-give-up must be longer than zero");
            anyhow::ensure!(
                manifest.stores >= 2,
                "--flash-during-browse needs stores besides the flash store to browse"
            );
        }
        Ok(())
    }

    /// The flash store and its merchant (an index into the manifest's merchants), which the
    /// main workload spares during `--flash-during-browse`.
    fn spared(&self, manifest: &Manifest) -> Option<(u64, Option<usize>)> {
        let flash = manifest.flash_sale.as_ref().filter(|_| self.flash_during_browse)?;
        Some((flash.store_index, manifest.merchants.iter().position(|k| k.store_index == flash.store_index)))
    }
}

/// Runs the bench described by `args` on the caller's tokio runtime, prints the table to stdout
/// and writes `--json` if given. Fails before sending load if the manifest, the flags or the
/// target are wrong; a run with errors still returns its report (the errors are in it).
pub async fn bench(args: BenchArgs) -> anyhow::Result<Report> {
    let manifest = Manifest::load(&args.manifest)?;
    args.check(&manifest)?;
    let mode = args.mode()?;
    let workload = Arc::new(Workload::sparing(
        args.mix(),
        manifest.stores,
        manifest.merchants.len(),
        manifest.search_terms.len(),
        args.zipf_s,
        args.spared(&manifest),
    )?);
    if let Some(pid) = args.server_pid {
        probe::cpu_seconds(pid).with_context(|| format!("cannot read the CPU time of --server-pid {pid} in /proc"))?;
    }
    let shared = Arc::new(Shared::new(http_client(&args)?, &args.target, manifest.clone()));
    preflight(&shared, args.flash_sale || args.flash_during_browse).await?;
    let sale = if args.flash_during_browse {
        let sale = SaleTarget::of(&shared)?;
        let stock =
            flash_browse::stock_on_server(&shared, &sale).await.context("cannot read the flash product's stock")?;
        anyhow::ensure!(
            stock == sale.manifest_stock,
            "the flash product has {stock} units on the server, the manifest says {}: re-run `kirana seed --flash-stock {}` to reset it",
            sale.manifest_stock,
            sale.manifest_stock
        );
        Some((sale, stock))
    } else {
        None
    };

    let seed = args.seed.unwrap_or_else(rand::random);
    let now_utc = time::OffsetDateTime::now_utc();
    let started_at = now_utc.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let window = Window::new(Instant::now(), args.warmup, args.duration);
    // With the sale during browsing, `window.end` is when the sale opens and the browsing lasts
    // until its last buyer is done: at the latest, the give-up deadline plus one request.
    let latest = if sale.is_some() {
        window.end + args.flash_give_up + args.timeout + Duration::from_secs(1)
    } else {
        window.end
    };
    let deadline = Deadline::new(latest);
    let recorder = Arc::new(Recorder::new(window.measure_from, latest));
    let windows = match sale {
        Some(_) => {
            vec![Arc::new(Recorder::new(window.measure_from, window.end)), Arc::new(Recorder::new(window.end, latest))]
        }
        None => Vec::new(),
    };
    let timeline = sale.as_ref().map(|_| Arc::new(Timeline::new(window.measure_from, latest)));
    let phase = Arc::new(Phase {
        recorder: recorder.clone(),
        windows: windows.clone(),
        timeline: timeline.clone(),
        end: deadline.clone(),
    });
    let usage = tokio::spawn(usage_over(args.server_pid, window.measure_from, deadline.clone()));
    let progress = (!args.quiet).then(|| tokio::spawn(progress(recorder.clone(), window, deadline.clone())));
    // The buyers are other people than the browsers: their own client, so they neither take the
    // browsers' pooled connections nor leave theirs for the browsers to find.
    let buyers = match sale {
        Some(_) => Some(Arc::new(Shared::new(http_client(&args)?, &args.target, manifest))),
        None => None,
    };
    let sale_run = sale.as_ref().zip(buyers).map(|((target, stock), buyers)| {
        on_own_runtime(flash_browse::run_sale(
            buyers,
            args.flash_shoppers,
            args.flash_give_up,
            seed,
            (args.flash_arrival == FlashArrival::Waiting).then_some(window.start),
            args.flash_ramp,
            window.measure_from,
            window.end,
            deadline.clone(),
            args.server_pid,
            *stock,
            target.manifest_stock,
        ))
    });

    let started = match mode {
        Mode::Open(rate) => {
            let (shared, phase, workload) = (shared.clone(), phase.clone(), workload.clone());
            driver::open_loop(rate, window, deadline.clone(), move |i, due| {
                let (shared, phase) = (shared.clone(), phase.clone());
                let (plan, session_seed) = plan(&workload, seed, i);
                async move { session::run(&shared, &phase, plan, session_seed, Some(due)).await }
            })
            .await
        }
        Mode::Closed(workers) => {
            let (shared, phase, workload) = (shared.clone(), phase.clone(), workload.clone());
            driver::closed_loop(workers, window, deadline.clone(), move |i| {
                let (shared, phase) = (shared.clone(), phase.clone());
                let (plan, session_seed) = plan(&workload, seed, i);
                async move { session::run(&shared, &phase, plan, session_seed, None).await }
            })
            .await
        }
    };
    let usage = usage.await.context("the CPU probe failed")?;
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    // The measured window ends where the load did (with the sale, when its last buyer was done).
    let window = Window { end: deadline.at(), ..window };

    let flash = if args.flash_sale { Some(flash_sale(&shared, &args, seed).await) } else { None };
    let during = match (sale_run, sale) {
        (Some(run), Some((target, _))) => {
            let mut run = run.await.context("the flash sale's task failed")?;
            flash_browse::check_on_server(&shared, &target, now_utc, &mut run.verdict).await;
            Some(run)
        }
        _ => None,
    };
    let mut report = build_report(
        &args,
        &shared.manifest,
        MainRun { mode, seed, started_at, window, recorder, started, usage },
        flash,
    );
    if let (Some(run), Some(timeline)) = (during, timeline) {
        add_flash_during_browse(&mut report, &windows, &timeline, window.measure_from, run);
    }
    println!("{report}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    Ok(report)
}

/// Runs the flash crowd on a runtime of its own, on its own two threads: the buyers are other
/// people than the browsers, and 3,000 of them arriving at once must not queue the browsers'
/// requests behind theirs inside one runtime (which a real crowd on other devices could never
/// do). They still share the machine's cores, as the operating system schedules them.
fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-flash-crowd".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-flash-buyer")
                .enable_all()
                .build()
                .expect("the flash crowd's runtime");
            let _ = tx.send(runtime.block_on(work));
        })
        .expect("the flash crowd's thread");
    rx
}

fn http_client(args: &BenchArgs) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        // Every connection is kept for reuse: at load, reopening them would cost the generator
        // (and the server) more than the requests.
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(args.timeout)
        .connect_timeout(args.timeout.min(Duration::from_secs(5)))
        .no_proxy()
        .user_agent(concat!("kirana-bench/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")
}

/// The plan and the private RNG seed of session `i`: a pure function of the run's seed, so a
/// run can be repeated session for session whatever order sessions happen to start in.
fn plan(workload: &Workload, seed: u64, i: u64) -> (crate::workload::Session, u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let plan = workload.draw(&mut rng);
    (plan, rng.random())
}

/// Fails fast, before any load, when the target does not serve the manifest's stores.
async fn preflight(shared: &Shared, flash: bool) -> anyhow::Result<()> {
    let slug = shared.manifest.slug(0);
    let url = format!("{}/api/v1/storefront/{slug}", shared.target);
    let res = shared.client.get(&url).send().await.with_context(|| format!("cannot reach {}", shared.target))?;
    anyhow::ensure!(
        res.status().is_success(),
        "{url} answered {}: is the manifest from this deployment (run `kirana seed` against its data)?",
        res.status()
    );
    if flash && let Some(f) = &shared.manifest.flash_sale {
        let url = format!(
            "{}/api/v1/storefront/{}/products/{}",
            shared.target,
            shared.manifest.slug(f.store_index),
            f.product_id
        );
        let res = shared.client.get(&url).send().await?;
        anyhow::ensure!(res.status().is_success(), "the flash-sale product {url} answered {}", res.status());
        let product: serde_json::Value = res.json().await?;
        if product["available"] == serde_json::Value::Bool(false) {
            eprintln!(
                "bench: the flash-sale product is already sold out; every flash shopper will be refused (re-run `kirana seed` to restock it)"
            );
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Usage {
    /// Server CPU seconds over the measured window.
    server_cpu: Option<f64>,
    generator_cpu: Option<f64>,
}

/// CPU time of the server and of this process between the start of measuring and the end.
async fn usage_over(pid: Option<u32>, measure_from: Instant, end: Deadline) -> Usage {
    tokio::time::sleep_until(measure_from).await;
    let me = std::process::id();
    let server0 = pid.and_then(|p| probe::cpu_seconds(p).ok());
    let gen0 = probe::cpu_seconds(me).ok();
    end.wait().await;
    let server1 = pid.and_then(|p| probe::cpu_seconds(p).ok());
    let gen1 = probe::cpu_seconds(me).ok();
    Usage {
        server_cpu: server0.zip(server1).map(|(a, b)| (b - a).max(0.0)),
        generator_cpu: gen0.zip(gen1).map(|(a, b)| (b - a).max(0.0)),
    }
}

/// One line on stderr, rewritten each second.
async fn progress(recorder: Arc<Recorder>, window: Window, end: Deadline) {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Instant::now();
        // With a sale during browsing the end is not known until it comes: count to the quiet
        // window's end, then say what is going on.
        let total = (end.at().min(window.end) - window.start).as_secs_f64();
        let elapsed = (now - window.start).as_secs_f64().min(total);
        let what = if now < window.measure_from {
            "warming up"
        } else if now >= window.end {
            "measuring during the flash sale"
        } else {
            "measuring"
        };
        eprint!(
            "\rbench: {elapsed:.0}s/{total:.0}s {what}: {} requests, {} errors   ",
            recorder.live_requests.load(Ordering::Relaxed),
            recorder.live_errors.load(Ordering::Relaxed)
        );
    }
}

struct FlashRun {
    report: FlashReport,
    recorder: Arc<Recorder>,
    elapsed: Duration,
}

async fn flash_sale(shared: &Arc<Shared>, args: &BenchArgs, seed: u64) -> FlashRun {
    let stock = shared.manifest.flash_sale.as_ref().map_or(0, |f| f.stock);
    let start = Instant::now();
    // The phase has no deadline: every shopper finishes (each request is bounded by --timeout).
    let recorder = Arc::new(Recorder::new(start, start + Duration::from_secs(10 * 365 * 86_400)));
    let phase = Arc::new(Phase::new(recorder.clone(), Deadline::new(start + Duration::from_secs(10 * 365 * 86_400))));
    let barrier = Arc::new(Barrier::new(args.flash_shoppers as usize));
    let cpu0 = args.server_pid.and_then(|p| probe::cpu_seconds(p).ok());
    let mut shoppers = JoinSet::new();
    for i in 0..args.flash_shoppers {
        let (shared, phase, barrier) = (shared.clone(), phase.clone(), barrier.clone());
        let shopper_seed = seed.rotate_left(17) ^ u64::from(i);
        shoppers.spawn(async move { session::flash_shopper(&shared, &phase, &barrier, shopper_seed).await });
    }
    let (mut orders, mut sold_out, mut errors) = (0u64, 0u64, 0u64);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    while let Some(done) = shoppers.join_next().await {
        let Ok(s) = done else {
            errors += 1;
            continue;
        };
        match s.outcome {
            FlashOutcome::Ordered => orders += 1,
            FlashOutcome::SoldOut => sold_out += 1,
            FlashOutcome::Failed => errors += 1,
        }
        if let Some((sent, answered)) = s.checkout {
            first = Some(first.map_or(sent, |f| f.min(sent)));
            last = Some(last.map_or(answered, |l| l.max(answered)));
        }
    }
    let elapsed = start.elapsed();
    let server_cpu_seconds = cpu0.zip(args.server_pid.and_then(|p| probe::cpu_seconds(p).ok())).map(|(a, b)| b - a);
    let checkout = first.zip(last).map_or(Duration::ZERO, |(f, l)| l - f);
    let oversold = orders as i64 > stock;
    if oversold {
        eprintln!("bench: !!! OVERSELL: the flash sale placed {orders} orders for {stock} units of stock !!!");
    }
    FlashRun {
        report: FlashReport {
            shoppers: u64::from(args.flash_shoppers),
            stock,
            orders,
            sold_out,
            errors,
            oversold,
            checkout_secs: checkout.as_secs_f64(),
            orders_per_sec: report::per_sec(orders, checkout),
            server_cpu_seconds,
        },
        recorder,
        elapsed,
    }
}

/// What the main phase left behind, for the report.
struct MainRun {
    mode: Mode,
    seed: u64,
    started_at: String,
    window: Window,
    recorder: Arc<Recorder>,
    started: Started,
    usage: Usage,
}

fn build_report(args: &BenchArgs, manifest: &Manifest, run: MainRun, flash: Option<FlashRun>) -> Report {
    let MainRun { mode, seed, started_at, window, recorder, started, usage } = run;
    let measured = window.measured();
    let mut requests = std::collections::BTreeMap::new();
    let mut t = Totals {
        requests: 0,
        ok: 0,
        rejected: 0,
        errors: 0,
        rps: 0.0,
        reads: 0,
        writes: 0,
        checkouts: 0,
        warmup_errors: recorder.warmup_errors(),
        sessions: started.sessions,
        sessions_per_sec: report::per_sec(started.sessions, measured),
        target_sessions_per_sec: match mode {
            Mode::Open(r) => Some(r),
            Mode::Closed(_) => None,
        },
        sessions_late: started.late,
        max_start_lag_ms: started.max_lag.as_secs_f64() * 1e3,
    };
    for kind in RequestKind::MAIN {
        let s = recorder.snapshot(kind);
        t.requests += s.count();
        t.ok += s.ok;
        t.rejected += s.rejected;
        t.errors += s.errors;
        if kind.is_read() {
            t.reads += s.count();
        } else {
            t.writes += s.count();
        }
        if kind.is_checkout() {
            t.checkouts += s.count();
        }
        requests.insert(kind.name().to_string(), report::request_stats(&s, measured));
    }
    t.rps = report::per_sec(t.requests, measured);

    let mut errors: Vec<ErrorSample> = recorder
        .error_samples()
        .into_iter()
        .map(|e| ErrorSample { request: e.kind.name().to_string(), message: e.message, count: e.count })
        .collect();
    let flash_report = flash.map(|f| {
        for kind in [RequestKind::FlashCart, RequestKind::FlashAdd, RequestKind::FlashCheckout] {
            requests.insert(kind.name().to_string(), report::request_stats(&f.recorder.snapshot(kind), f.elapsed));
        }
        errors.extend(f.recorder.error_samples().into_iter().map(|e| ErrorSample {
            request: e.kind.name().to_string(),
            message: e.message,
            count: e.count,
        }));
        f.report
    });

    let secs = measured.as_secs_f64();
    let per_core = |n: u64, cpu: f64| (cpu > 0.0).then(|| n as f64 / cpu);
    let server = args.server_pid.map(|pid| {
        let cpu = usage.server_cpu.unwrap_or(0.0);
        ServerUsage {
            pid,
            cpu_seconds: cpu,
            cores_busy: cpu / secs,
            requests_per_core_second: per_core(t.requests, cpu),
            reads_per_core_second: per_core(t.reads, cpu),
            checkouts_per_core_second: per_core(t.checkouts, cpu),
            rss_bytes: probe::rss_bytes(pid).ok(),
            data_bytes: args.server_data_dir.as_deref().and_then(|d| probe::dir_bytes(d).ok()),
        }
    });
    let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);

    Report {
        schema: REPORT_SCHEMA,
        config: RunConfig {
            target: args.target.clone(),
            manifest: args.manifest.display().to_string(),
            mode: match mode {
                Mode::Open(_) => "open".into(),
                Mode::Closed(_) => "closed".into(),
            },
            rate: match mode {
                Mode::Open(r) => Some(r),
                Mode::Closed(_) => None,
            },
            concurrency: match mode {
                Mode::Open(_) => None,
                Mode::Closed(c) => Some(c),
            },
            duration_secs: args.duration.as_secs_f64(),
            warmup_secs: args.warmup.as_secs_f64(),
            timeout_secs: args.timeout.as_secs_f64(),
            zipf_s: args.zipf_s,
            stores: manifest.stores,
            merchants: manifest.merchants.len() as u64,
            merchant_ratio: args.merchant_ratio,
            search_ratio: args.search_ratio,
            cart_ratio: args.cart_ratio,
            checkout_ratio: args.checkout_ratio,
            landing_ratio: args.landing_ratio,
            min_browse: args.min_browse,
            max_browse: args.max_browse,
            max_cart_items: args.max_cart_items,
            flash_sale: args.flash_sale,
            flash_shoppers: args.flash_shoppers,
            seed,
            flash_during_browse: args.flash_during_browse,
            flash_give_up_secs: args.flash_during_browse.then_some(args.flash_give_up.as_secs_f64()),
            flash_ramp_secs: args.flash_during_browse.then_some(args.flash_ramp.as_secs_f64()),
            flash_arrival: args.flash_during_browse.then(|| {
                match args.flash_arrival {
                    FlashArrival::Waiting => "waiting",
                    FlashArrival::Cold => "cold",
                }
                .to_string()
            }),
        },
        started_at,
        measured_secs: secs,
        totals: t,
        requests,
        flash_sale: flash_report,
        server,
        generator: GeneratorUsage {
            cpu_seconds: usage.generator_cpu,
            cores_busy: usage.generator_cpu.map(|c| c / secs),
            host_cores,
        },
        errors,
        flash_during_browse: None,
    }
}

/// Puts a sale run during browsing into the report: its two windows and verdict, its buyers'
/// request types and errors, and the same sale in brief as `flash_sale` (what tools that know
/// only that field, and `kirana bench`'s oversell check, read).
fn add_flash_during_browse(
    report: &mut Report,
    windows: &[Arc<Recorder>],
    timeline: &Timeline,
    measure_from: Instant,
    run: SaleRun,
) {
    let [quiet, contended] = windows else { return };
    let sale_length = run.done.saturating_duration_since(run.opened);
    for kind in [RequestKind::FlashCart, RequestKind::FlashAdd, RequestKind::FlashCheckout] {
        report
            .requests
            .insert(kind.name().to_string(), report::request_stats(&run.recorder.snapshot(kind), sale_length));
    }
    report.errors.extend(run.recorder.error_samples().into_iter().map(|e| ErrorSample {
        request: e.kind.name().to_string(),
        message: e.message,
        count: e.count,
    }));
    let checkout = Duration::from_secs_f64(run.checkout_secs);
    let cpu = run.cpu_contended;
    let during = flash_browse::compare(quiet, contended, timeline, measure_from, run);
    let v = &during.flash;
    report.flash_sale = Some(FlashReport {
        shoppers: v.shoppers,
        stock: v.stock_at_start,
        orders: v.orders,
        sold_out: v.sold_out,
        errors: v.errors,
        oversold: v.oversold,
        checkout_secs: checkout.as_secs_f64(),
        orders_per_sec: report::per_sec(v.orders, checkout),
        server_cpu_seconds: cpu,
    });
    report.flash_during_browse = Some(during);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn durations_read_with_or_without_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_defaults_are_the_documented_workload_in_a_closed_loop() {
        let a = Cli::parse_from(["bench"]).bench;
        assert_eq!(a.mode().unwrap(), Mode::Closed(DEFAULT_CONCURRENCY));
        assert_eq!(
            a.mix(),
            Mix {
                merchant: 0.05,
                search: 0.2,
                cart: 0.2,
                checkout: 0.5,
                landing: 0.0,
                min_browse: 1,
                max_browse: 3,
                max_cart_items: 2
            }
        );
        assert_eq!(
            (a.duration, a.warmup, a.timeout),
            (Duration::from_secs(30), Duration::from_secs(5), Duration::from_secs(10))
        );
        assert_eq!((a.zipf_s, a.flash_sale, a.flash_shoppers), (1.0, false, 200));
    }

    #[test]
    fn open_and_closed_loop_exclude_each_other() {
        assert!(Cli::try_parse_from(["bench", "--rate", "10", "--concurrency", "2"]).is_err());
        let a = Cli::parse_from(["bench", "--rate", "12.5"]).bench;
        assert_eq!(a.mode().unwrap(), Mode::Open(12.5));
        let a = Cli::parse_from(["bench", "--rate", "0"]).bench;
        assert!(a.mode().is_err());
    }

    #[test]
    fn session_plans_are_a_pure_function_of_the_seed_and_the_sequence_number() {
        let w = Workload::new(a_mix(), 100, 5, 3, 1.0).unwrap();
        assert_eq!(plan(&w, 7, 3), plan(&w, 7, 3));
        let distinct: std::collections::HashSet<u64> = (0..1000).map(|i| plan(&w, 7, i).1).collect();
        assert_eq!(distinct.len(), 1000);
    }

    fn a_mix() -> Mix {
        Cli::parse_from(["bench"]).bench.mix()
    }
}
