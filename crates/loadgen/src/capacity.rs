//! `kirana capacity`: from a bench report's measured per-core rates and an operator's load
//! (stores, peak requests/s, orders/min), how many app nodes, shards and replicas the load
//! needs, and what that costs per month on each offer of a price sheet. Arithmetic only: it
//! reads two files and returns text, with every assumption and every number's source printed,
//! because a plan nobody can check is worse than none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use crate::report::Report;

/// Disk per store when neither the flag nor the report says (a small shop's catalog, a year of
/// orders and their history, with indexes).
const DEFAULT_DISK_PER_STORE_MB: f64 = 5.0;
/// Fewest flash-sale orders whose rate is trusted as a shard's order rate.
const MIN_FLASH_ORDERS: u64 = 20;
/// Slack under `ceil` so an exact multiple is not rounded up by float noise.
const EPS: f64 = 1e-9;

/// Size a deployment for a load from a bench report's measured rates and a price sheet.
#[derive(Debug, Clone, clap::Args)]
pub struct CapacityArgs {
    /// A `kirana bench --json` report (best with --server-pid, so per-core rates are measured).
    #[arg(long)]
    pub report: PathBuf,
    /// Stores on the platform.
    #[arg(long)]
    pub stores: u64,
    /// Peak requests per second, at the bench's mix of request types.
    #[arg(long)]
    pub peak_rps: f64,
    /// Peak orders per minute.
    #[arg(long)]
    pub orders_per_min: f64,
    /// TOML price sheet: `[offers.NAME]` with app_node_cores, app_node_monthly,
    /// db_node_monthly, replica_monthly, currency (and optionally db_node_cores).
    #[arg(long)]
    pub prices: PathBuf,
    /// Share of each node's measured capacity to plan for (headroom for spikes and failover).
    #[arg(long, default_value_t = 0.6)]
    pub target_utilization: f64,
    /// Share of reads answered by a cache in front of the databases.
    #[arg(long, default_value_t = 0.9)]
    pub cache_hit_ratio: f64,
    /// Disk per store in MB (default: the report's data size / its stores, else 5 MB).
    #[arg(long)]
    pub disk_per_store_mb: Option<f64>,
    /// Largest database one shard should hold, in GB.
    #[arg(long, default_value_t = 500.0)]
    pub max_shard_gb: f64,
    /// Orders per second one shard sustains (default: the report's flash-sale rate, else its
    /// checkouts per server core-second).
    #[arg(long)]
    pub orders_per_shard: Option<f64>,
    /// Fewest app nodes, for redundancy.
    #[arg(long, default_value_t = 2)]
    pub min_app_nodes: u32,
}

/// One offer of the price sheet; money per month in `currency`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Offer {
    pub app_node_cores: u32,
    pub app_node_monthly: f64,
    /// Cores of a database node (primary or replica); the app node's when absent.
    #[serde(default)]
    pub db_node_cores: Option<u32>,
    pub db_node_monthly: f64,
    pub replica_monthly: f64,
    pub currency: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceSheet {
    offers: BTreeMap<String, Offer>,
}

fn parse_prices(text: &str) -> anyhow::Result<BTreeMap<String, Offer>> {
    let sheet: PriceSheet = toml::from_str(text)?;
    anyhow::ensure!(!sheet.offers.is_empty(), "the price sheet has no [offers.NAME] table");
    for (name, o) in &sheet.offers {
        anyhow::ensure!(o.app_node_cores >= 1, "offers.{name}.app_node_cores must be at least 1");
        anyhow::ensure!(o.db_node_cores != Some(0), "offers.{name}.db_node_cores must be at least 1");
        for (field, v) in [
            ("app_node_monthly", o.app_node_monthly),
            ("db_node_monthly", o.db_node_monthly),
            ("replica_monthly", o.replica_monthly),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "offers.{name}.{field} must be a price ≥ 0");
        }
    }
    Ok(sheet.offers)
}

/// The operator's load and planning choices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Load {
    pub stores: u64,
    pub peak_rps: f64,
    pub orders_per_sec: f64,
    pub utilization: f64,
    pub cache_hit_ratio: f64,
    pub max_shard_gb: f64,
    pub min_app_nodes: u32,
}

/// What one unit of hardware does, taken from the report (or flags), with where each came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rates {
    pub requests_per_core: f64,
    pub reads_per_core: f64,
    pub orders_per_shard: f64,
    pub read_fraction: f64,
    pub disk_per_store_mb: f64,
    /// Where each rate came from, for the printed plan.
    pub sources: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

pub(crate) struct Overrides {
    pub orders_per_shard: Option<f64>,
    pub disk_per_store_mb: Option<f64>,
}

pub(crate) fn rates(report: &Report, o: &Overrides) -> anyhow::Result<Rates> {
    let t = &report.totals;
    anyhow::ensure!(t.requests > 0, "the report holds no requests: run the bench for longer");
    anyhow::ensure!(report.measured_secs > 0.0, "the report's measured window is empty");
    let mut sources = Vec::new();
    let mut warnings = Vec::new();
    let measured = report.server.as_ref().and_then(|s| {
        Some((s.cpu_seconds, s.requests_per_core_second?, s.reads_per_core_second?, s.checkouts_per_core_second))
    });
    let (requests_per_core, reads_per_core, checkouts_per_core) = match measured {
        Some((cpu, req, reads, checkouts)) => {
            sources.push((
                "per-core rates".into(),
                format!("server CPU measured: {cpu:.2} CPU-s over {:.1}s", report.measured_secs),
            ));
            (req, reads, checkouts)
        }
        None => {
            let cores = f64::from(report.generator.host_cores.max(1));
            let secs = report.measured_secs;
            warnings.push(format!(
                "the report has no server CPU measurement (run `kirana bench --server-pid PID`): assuming the server \
                 kept all {cores} cores of the bench host busy, i.e. per-core rate = achieved rate / {cores}. If it was \
                 not saturated, this understates what a core does and the plan is larger than needed."
            ));
            sources.push(("per-core rates".into(), format!("achieved rate / {cores} host cores (no CPU measured)")));
            (t.rps / cores, t.reads as f64 / secs / cores, Some(t.checkouts as f64 / secs / cores).filter(|c| *c > 0.0))
        }
    };
    anyhow::ensure!(requests_per_core > 0.0 && reads_per_core > 0.0, "the report's per-core rates are zero");

    // A shard's order rate is its write ceiling, which the main run rarely reaches: its few
    // checkouts share the CPU with many reads. The flash sale is the one place the bench drives
    // a shard's checkouts flat out, so its rate is preferred.
    let flash =
        report.flash_sale.as_ref().filter(|f| f.orders >= MIN_FLASH_ORDERS && f.orders_per_sec > 0.0 && !f.oversold);
    let orders_per_shard = match (o.orders_per_shard, flash, checkouts_per_core) {
        (Some(v), _, _) => {
            sources.push(("orders per shard".into(), "--orders-per-shard".into()));
            v
        }
        (None, Some(f), _) => {
            sources.push((
                "orders per shard".into(),
                format!(
                    "the flash sale: {} orders from {} simultaneous checkouts on one shard in {:.3}s (a short \
                     burst on a node that also ran the app: a floor on what a shard sustains)",
                    f.orders, f.shoppers, f.checkout_secs
                ),
            ));
            f.orders_per_sec
        }
        (None, None, Some(c)) => {
            warnings.push(
                "no flash sale with enough orders in the report (bench --flash-sale): a shard's order rate is taken \
                 as checkouts per server core-second at the bench's mix, which charges each checkout with the CPU of \
                 every read around it. That is far below a shard's write ceiling and will ask for too many shards: \
                 re-run the bench with --flash-sale or pass --orders-per-shard."
                    .into(),
            );
            sources.push(("orders per shard".into(), "checkouts per server core-second at the bench's mix".into()));
            c
        }
        (None, None, None) => anyhow::bail!(
            "the report measured no checkouts, so a shard's order rate is unknown: re-run the bench with \
             --flash-sale or pass --orders-per-shard"
        ),
    };
    anyhow::ensure!(orders_per_shard > 0.0, "orders per shard must be positive");

    let from_report = report.server.as_ref().and_then(|s| s.data_bytes).filter(|b| *b > 0 && report.config.stores > 0);
    let disk_per_store_mb = match (o.disk_per_store_mb, from_report) {
        (Some(v), _) => {
            sources.push(("disk per store".into(), "--disk-per-store-mb".into()));
            v
        }
        (None, Some(bytes)) => {
            sources.push((
                "disk per store".into(),
                format!("the bench server's data directory ({bytes} bytes) / its {} stores", report.config.stores),
            ));
            bytes as f64 / 1e6 / report.config.stores as f64
        }
        (None, None) => {
            warnings.push(format!(
                "no disk size measured (bench --server-data-dir) nor given (--disk-per-store-mb): assuming {DEFAULT_DISK_PER_STORE_MB} MB per store"
            ));
            sources.push(("disk per store".into(), "assumed".into()));
            DEFAULT_DISK_PER_STORE_MB
        }
    };
    Ok(Rates {
        requests_per_core,
        reads_per_core,
        orders_per_shard,
        read_fraction: t.reads as f64 / t.requests as f64,
        disk_per_store_mb,
        sources,
        warnings,
    })
}

/// Whole units needed for `x` (never negative); an exact multiple is not rounded up.
fn units(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 { (x - EPS).ceil().max(0.0) as u64 } else { 0 }
}

/// Shards are the same for every offer: a shard's write rate is bounded by its one writer
/// thread, and its size by `max_shard_gb`, whatever the machine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shards {
    pub for_writes: u64,
    pub for_data: u64,
    pub total: u64,
    pub data_gb: f64,
}

pub(crate) fn shards(load: &Load, r: &Rates) -> Shards {
    let for_writes = units(load.orders_per_sec / (r.orders_per_shard * load.utilization));
    let data_gb = load.stores as f64 * r.disk_per_store_mb / 1000.0;
    let for_data = units(data_gb / load.max_shard_gb);
    Shards { for_writes, for_data, total: for_writes.max(for_data).max(1), data_gb }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OfferPlan {
    pub app_nodes: u64,
    pub shards: u64,
    pub replicas_per_shard: u64,
    pub replicas: u64,
    pub uncached_reads_per_sec: f64,
    pub app_monthly: f64,
    pub db_monthly: f64,
    pub replica_monthly: f64,
    pub total_monthly: f64,
}

pub(crate) fn plan(load: &Load, r: &Rates, shards: &Shards, offer: &Offer) -> OfferPlan {
    let app_capacity = r.requests_per_core * f64::from(offer.app_node_cores) * load.utilization;
    let app_nodes = units(load.peak_rps / app_capacity).max(u64::from(load.min_app_nodes));
    let uncached = load.peak_rps * r.read_fraction * (1.0 - load.cache_hit_ratio);
    let db_cores = f64::from(offer.db_node_cores.unwrap_or(offer.app_node_cores));
    let replica_capacity = r.reads_per_core * db_cores * load.utilization;
    let replicas_per_shard = units(uncached / shards.total as f64 / replica_capacity).max(1);
    let replicas = replicas_per_shard * shards.total;
    let app_monthly = app_nodes as f64 * offer.app_node_monthly;
    let db_monthly = shards.total as f64 * offer.db_node_monthly;
    let replica_monthly = replicas as f64 * offer.replica_monthly;
    OfferPlan {
        app_nodes,
        shards: shards.total,
        replicas_per_shard,
        replicas,
        uncached_reads_per_sec: uncached,
        app_monthly,
        db_monthly,
        replica_monthly,
        total_monthly: app_monthly + db_monthly + replica_monthly,
    }
}

fn check_load(load: &Load) -> anyhow::Result<()> {
    anyhow::ensure!(load.stores >= 1, "--stores must be at least 1");
    anyhow::ensure!(load.peak_rps.is_finite() && load.peak_rps > 0.0, "--peak-rps must be positive");
    anyhow::ensure!(load.orders_per_sec.is_finite() && load.orders_per_sec >= 0.0, "--orders-per-min must be ≥ 0");
    anyhow::ensure!(
        load.utilization > 0.0 && load.utilization <= 1.0,
        "--target-utilization must be in (0, 1], not {}",
        load.utilization
    );
    anyhow::ensure!((0.0..=1.0).contains(&load.cache_hit_ratio), "--cache-hit-ratio must be in [0, 1]");
    anyhow::ensure!(load.max_shard_gb > 0.0, "--max-shard-gb must be positive");
    Ok(())
}

/// Reads the report and the price sheet and returns the plan as text (the caller prints it).
pub fn capacity(args: CapacityArgs) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.report)
        .with_context(|| format!("cannot read the bench report {}", args.report.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a `kirana bench --json` report", args.report.display()))?;
    anyhow::ensure!(
        report.schema == crate::report::REPORT_SCHEMA,
        "report schema {} is not supported (expected {})",
        report.schema,
        crate::report::REPORT_SCHEMA
    );
    let prices = std::fs::read_to_string(&args.prices)
        .with_context(|| format!("cannot read the price sheet {}", args.prices.display()))?;
    let offers = parse_prices(&prices).with_context(|| format!("bad price sheet {}", args.prices.display()))?;
    if let Some(v) = args.orders_per_shard {
        anyhow::ensure!(v.is_finite() && v > 0.0, "--orders-per-shard must be positive");
    }
    if let Some(v) = args.disk_per_store_mb {
        anyhow::ensure!(v.is_finite() && v >= 0.0, "--disk-per-store-mb must be ≥ 0");
    }
    let load = Load {
        stores: args.stores,
        peak_rps: args.peak_rps,
        orders_per_sec: args.orders_per_min / 60.0,
        utilization: args.target_utilization,
        cache_hit_ratio: args.cache_hit_ratio,
        max_shard_gb: args.max_shard_gb,
        min_app_nodes: args.min_app_nodes,
    };
    check_load(&load)?;
    let overrides = Overrides { orders_per_shard: args.orders_per_shard, disk_per_store_mb: args.disk_per_store_mb };
    let r = rates(&report, &overrides)?;
    Ok(render(&args, &report, &load, &r, &offers))
}

fn render(args: &CapacityArgs, report: &Report, load: &Load, r: &Rates, offers: &BTreeMap<String, Offer>) -> String {
    let sh = shards(load, r);
    let mut out = String::new();
    let o = &mut out;
    let _ = writeln!(o, "kirana capacity plan");
    let _ = writeln!(
        o,
        "load: {} stores, peak {:.0} requests/s, {:.0} orders/min ({:.1} orders/s)",
        load.stores,
        load.peak_rps,
        load.orders_per_sec * 60.0,
        load.orders_per_sec
    );
    let c = &report.config;
    let _ = writeln!(
        o,
        "measured by: {} ({}, {} loop, {:.0}s measured, target {}, {:.1} requests/s achieved, {} errors)",
        args.report.display(),
        report.started_at,
        c.mode,
        report.measured_secs,
        c.target,
        report.totals.rps,
        report.totals.errors
    );
    if report.totals.errors > 0 {
        let _ =
            writeln!(o, "WARNING: the bench run had {} errors; its rates may not be trustworthy", report.totals.errors);
    }
    for w in &r.warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
    let _ = writeln!(o, "\nrates used:");
    let _ = writeln!(o, "  requests per core-second  {:>12.1}", r.requests_per_core);
    let _ = writeln!(o, "  reads per core-second     {:>12.1}", r.reads_per_core);
    let _ = writeln!(o, "  orders per shard-second   {:>12.1}", r.orders_per_shard);
    let _ = writeln!(o, "  reads among requests      {:>11.1}%", r.read_fraction * 100.0);
    let _ = writeln!(o, "  disk per store            {:>10.2} MB", r.disk_per_store_mb);
    for (what, from) in &r.sources {
        let _ = writeln!(o, "  {what}: {from}");
    }
    let _ = writeln!(o, "\nassumptions:");
    for a in [
        format!(
            "nodes are planned at {:.0}% of measured capacity (--target-utilization)",
            load.utilization * 100.0
        ),
        "peak traffic has the bench's mix of request types; per-core rates scale linearly with cores".into(),
        "per-core rates were measured with app and database in one process, so app-only nodes and \
         database-only nodes do at least as well (conservative)"
            .into(),
        format!("app nodes = max({}, ceil(peak_rps / (requests per core-second × cores × utilization)))", load.min_app_nodes),
        "one shard = one database node (its primary); a shard's order rate does not grow with the node's cores \
         (one writer thread per shard)"
            .into(),
        "shards = max(write shards, data shards, 1); write shards = ceil(orders/s / (orders per shard-second × utilization)); \
         data shards = ceil(stores × disk per store / max shard size)"
            .into(),
        format!("max shard size {} GB (--max-shard-gb); data in decimal units (1 GB = 1000 MB)", load.max_shard_gb),
        format!(
            "{:.0}% of reads are served by a cache (--cache-hit-ratio); the rest reach read replicas, spread evenly \
             over shards (stores are placed by id, though one very hot store still lands on one shard)",
            load.cache_hit_ratio * 100.0
        ),
        "replicas per shard = max(1, ceil(uncached reads/s per shard / (reads per core-second × db cores × utilization))); \
         the primary takes the writes"
            .into(),
        "monthly cost = app nodes × app_node_monthly + shards × db_node_monthly + replicas × replica_monthly; \
         no bandwidth, storage, backups or staff"
            .into(),
    ] {
        let _ = writeln!(o, "  - {a}");
    }
    let _ = writeln!(
        o,
        "\nshards: {} (writes: {:.1} orders/s / ({:.1} × {:.2}) → {}; data: {:.1} GB / {} GB → {})",
        sh.total,
        load.orders_per_sec,
        r.orders_per_shard,
        load.utilization,
        sh.for_writes,
        sh.data_gb,
        load.max_shard_gb,
        sh.for_data
    );
    let _ = writeln!(
        o,
        "\n{:<16} {:>9} {:>7} {:>9} {:>14} {:>14} {:>14} {:>16}",
        "offer", "app nodes", "shards", "replicas", "app/month", "db/month", "replicas/month", "total/month"
    );
    let mut plans = Vec::new();
    for (name, offer) in offers {
        let p = plan(load, r, &sh, offer);
        let _ = writeln!(
            o,
            "{:<16} {:>9} {:>7} {:>9} {:>14.2} {:>14.2} {:>14.2} {:>12.2} {}",
            name,
            p.app_nodes,
            p.shards,
            p.replicas,
            p.app_monthly,
            p.db_monthly,
            p.replica_monthly,
            p.total_monthly,
            offer.currency
        );
        plans.push((name, offer, p));
    }
    for (name, offer, p) in &plans {
        let db_cores = offer.db_node_cores.unwrap_or(offer.app_node_cores);
        let _ = writeln!(
            o,
            "  {name}: app nodes {:.0} / ({:.1} × {} cores × {:.2}) → {}; {:.0} uncached reads/s over {} shards / \
             ({:.1} × {db_cores} cores × {:.2}) → {} replica(s) per shard{}",
            load.peak_rps,
            r.requests_per_core,
            offer.app_node_cores,
            load.utilization,
            p.app_nodes,
            p.uncached_reads_per_sec,
            p.shards,
            r.reads_per_core,
            load.utilization,
            p.replicas_per_shard,
            offer.description.as_deref().map(|d| format!("\n    ({d})")).unwrap_or_default()
        );
    }
    let currencies: std::collections::BTreeSet<&str> = plans.iter().map(|(_, o, _)| o.currency.as_str()).collect();
    if currencies.len() == 1 {
        if let Some((name, offer, p)) = plans.iter().min_by(|a, b| a.2.total_monthly.total_cmp(&b.2.total_monthly)) {
            let _ = writeln!(o, "\ncheapest: {name} at {:.2} {} per month", p.total_monthly, offer.currency);
        }
    } else {
        let _ = writeln!(o, "\noffers are priced in different currencies: not compared");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    fn load() -> Load {
        Load {
            stores: 1_000_000,
            peak_rps: 60_000.0,
            orders_per_sec: 700.0,
            utilization: 0.6,
            cache_hit_ratio: 0.9,
            max_shard_gb: 500.0,
            min_app_nodes: 2,
        }
    }

    fn rates_of(requests: f64, reads: f64, orders: f64, read_fraction: f64, disk_mb: f64) -> Rates {
        Rates {
            requests_per_core: requests,
            reads_per_core: reads,
            orders_per_shard: orders,
            read_fraction,
            disk_per_store_mb: disk_mb,
            sources: vec![],
            warnings: vec![],
        }
    }

    fn offer(cores: u32) -> Offer {
        Offer {
            app_node_cores: cores,
            app_node_monthly: 100.0,
            db_node_cores: None,
            db_node_monthly: 400.0,
            replica_monthly: 300.0,
            currency: "USD".into(),
            description: None,
        }
    }

    #[test]
    fn app_nodes_are_the_peak_over_planned_node_capacity_rounded_up() {
        let r = rates_of(1000.0, 1000.0, 100.0, 0.9, 1.0);
        let sh = shards(&load(), &r);
        // 60 000 / (1000 × 4 × 0.6 = 2400) = 25 exactly: not rounded up to 26.
        assert_eq!(plan(&load(), &r, &sh, &offer(4)).app_nodes, 25);
        // 60 000 / (1000 × 7 × 0.6 = 4200) = 14.29 → 15.
        assert_eq!(plan(&load(), &r, &sh, &offer(7)).app_nodes, 15);
    }

    #[test]
    fn a_small_load_still_gets_two_app_nodes_one_shard_and_a_replica() {
        let small = Load { stores: 10, peak_rps: 1.0, orders_per_sec: 0.01, ..load() };
        let r = rates_of(1000.0, 1000.0, 100.0, 0.9, 1.0);
        let sh = shards(&small, &r);
        assert_eq!(sh, Shards { for_writes: 1, for_data: 1, total: 1, data_gb: 0.01 });
        let p = plan(&small, &r, &sh, &offer(4));
        assert_eq!((p.app_nodes, p.shards, p.replicas_per_shard, p.replicas), (2, 1, 1, 1));
        let none = Load { orders_per_sec: 0.0, ..small };
        assert_eq!(shards(&none, &r).total, 1, "no orders still needs a shard");
    }

    #[test]
    fn shards_follow_the_larger_of_write_load_and_data_size() {
        // Writes: 700 / (50 × 0.6 = 30) = 23.3 → 24. Data: 1e6 stores × 5 MB = 5000 GB / 500 = 10.
        let r = rates_of(1000.0, 1000.0, 50.0, 0.9, 5.0);
        let sh = shards(&load(), &r);
        assert_eq!((sh.for_writes, sh.for_data, sh.total), (24, 10, 24));
        // Bigger stores: 1e6 × 20 MB = 20 000 GB / 500 = 40 data shards.
        let r = rates_of(1000.0, 1000.0, 50.0, 0.9, 20.0);
        assert_eq!(shards(&load(), &r).total, 40);
    }

    #[test]
    fn replicas_serve_the_uncached_reads_with_at_least_one_per_shard() {
        // Uncached: 60 000 × 0.9 × 0.1 = 5400 reads/s over 24 shards = 225 per shard; a
        // 4-core replica plans 100 × 4 × 0.6 = 240 → 1 each.
        let r = rates_of(1000.0, 100.0, 50.0, 0.9, 5.0);
        let sh = shards(&load(), &r);
        let p = plan(&load(), &r, &sh, &offer(4));
        assert!((p.uncached_reads_per_sec - 5400.0).abs() < 1e-6);
        assert_eq!((p.replicas_per_shard, p.replicas), (1, 24));
        // Without a cache: 54 000 / 24 = 2250 per shard / 240 = 9.4 → 10 each.
        let uncached = Load { cache_hit_ratio: 0.0, ..load() };
        let p = plan(&uncached, &r, &sh, &offer(4));
        assert_eq!((p.replicas_per_shard, p.replicas), (10, 240));
        // Bigger database nodes need fewer replicas.
        let big_db = Offer { db_node_cores: Some(16), ..offer(4) };
        assert_eq!(plan(&uncached, &r, &sh, &big_db).replicas_per_shard, 3);
    }

    #[test]
    fn the_monthly_cost_adds_up_per_offer() {
        let r = rates_of(1000.0, 100.0, 50.0, 0.9, 5.0);
        let sh = shards(&load(), &r);
        let p = plan(&load(), &r, &sh, &offer(4));
        assert_eq!(p.app_monthly, 25.0 * 100.0);
        assert_eq!(p.db_monthly, 24.0 * 400.0);
        assert_eq!(p.replica_monthly, 24.0 * 300.0);
        assert_eq!(p.total_monthly, 2500.0 + 9600.0 + 7200.0);
    }

    #[test]
    fn measured_server_rates_are_used_when_the_report_has_them() {
        let report = sample_report();
        let r = rates(&report, &Overrides { orders_per_shard: None, disk_per_store_mb: None }).unwrap();
        // The flash sale's 100 orders/s, not the mix's 20 checkouts per core-second.
        assert_eq!((r.requests_per_core, r.reads_per_core, r.orders_per_shard), (2000.0, 1800.0, 100.0));
        assert_eq!(r.read_fraction, 0.9);
        // 1 GiB over 1000 stores.
        assert!((r.disk_per_store_mb - (1u64 << 30) as f64 / 1e6 / 1000.0).abs() < 1e-9);
        assert!(r.warnings.is_empty());
        let r = rates(&report, &Overrides { orders_per_shard: Some(300.0), disk_per_store_mb: Some(2.0) }).unwrap();
        assert_eq!((r.orders_per_shard, r.disk_per_store_mb), (300.0, 2.0));
    }

    #[test]
    fn without_server_cpu_the_achieved_rate_over_host_cores_is_used_with_a_warning() {
        let mut report = sample_report();
        report.server = None;
        report.flash_sale = None;
        let r = rates(&report, &Overrides { orders_per_shard: None, disk_per_store_mb: None }).unwrap();
        // 1000 rps achieved on a 2-core host; 9000 reads and 100 checkouts in 10 s.
        assert_eq!(r.requests_per_core, 500.0);
        assert_eq!(r.reads_per_core, 450.0);
        assert_eq!(r.orders_per_shard, 5.0);
        assert_eq!(r.disk_per_store_mb, DEFAULT_DISK_PER_STORE_MB);
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("--server-pid"));
        assert!(r.warnings[1].contains("--flash-sale"));
    }

    #[test]
    fn a_flash_sale_too_small_or_oversold_is_not_trusted_for_the_shard_rate() {
        let none = Overrides { orders_per_shard: None, disk_per_store_mb: None };
        let mut report = sample_report();
        report.flash_sale.as_mut().unwrap().orders = MIN_FLASH_ORDERS - 1;
        assert_eq!(rates(&report, &none).unwrap().orders_per_shard, 20.0);
        let mut report = sample_report();
        report.flash_sale.as_mut().unwrap().oversold = true;
        assert_eq!(rates(&report, &none).unwrap().orders_per_shard, 20.0);
    }

    #[test]
    fn a_report_without_checkouts_needs_the_shard_rate_given() {
        let mut report = sample_report();
        report.server = None;
        report.flash_sale = None;
        report.totals.checkouts = 0;
        let none = Overrides { orders_per_shard: None, disk_per_store_mb: None };
        assert!(rates(&report, &none).unwrap_err().to_string().contains("--orders-per-shard"));
        assert!(rates(&report, &Overrides { orders_per_shard: Some(10.0), disk_per_store_mb: None }).is_ok());
    }

    #[test]
    fn rounding_up_ignores_float_noise_but_not_real_excess() {
        assert_eq!(units(3.0), 3);
        assert_eq!(units(0.1 * 3.0 / 0.1), 3, "3.0000000000000004 is three");
        assert_eq!(units(3.001), 4);
        assert_eq!(units(0.0), 0);
        assert_eq!(units(f64::NAN), 0);
    }

    #[test]
    fn the_example_price_sheet_parses_and_a_bad_one_is_refused() {
        let sheet = include_str!("../../../docs/prices.example.toml");
        let offers = parse_prices(sheet).unwrap();
        assert!(offers.contains_key("cloud") && offers.contains_key("bare_metal"), "{offers:?}");
        assert!(parse_prices("[offers]").is_err());
        assert!(parse_prices("[offers.x]\napp_node_cores = 0\napp_node_monthly = 1.0\ndb_node_monthly = 1.0\nreplica_monthly = 1.0\ncurrency = \"USD\"").is_err());
        assert!(parse_prices("[offers.x]\napp_node_cores = 4\napp_node_montly = 1.0").is_err(), "typos are caught");
    }

    #[test]
    fn the_printed_plan_states_its_inputs_assumptions_and_every_offer() {
        let dir = tempfile::tempdir().unwrap();
        let report_path = dir.path().join("bench.json");
        std::fs::write(&report_path, serde_json::to_string(&sample_report()).unwrap()).unwrap();
        let prices = dir.path().join("prices.toml");
        std::fs::write(&prices, include_str!("../../../docs/prices.example.toml")).unwrap();
        let args = CapacityArgs {
            report: report_path,
            stores: 100_000,
            peak_rps: 20_000.0,
            orders_per_min: 6_000.0,
            prices,
            target_utilization: 0.6,
            cache_hit_ratio: 0.9,
            disk_per_store_mb: None,
            max_shard_gb: 500.0,
            orders_per_shard: None,
            min_app_nodes: 2,
        };
        let text = capacity(args.clone()).unwrap();
        for needle in
            ["assumptions:", "target-utilization", "cloud", "bare_metal", "shards:", "server CPU measured", "errors"]
        {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let bad = CapacityArgs { target_utilization: 1.5, ..args };
        assert!(capacity(bad).is_err());
    }
}
