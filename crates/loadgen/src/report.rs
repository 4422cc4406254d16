//! The result of a bench run: per request type an HDR histogram (µs, 3 significant digits) with
//! its percentiles, outcome counts and rate; totals; the flash sale; server and generator CPU;
//! error samples. Printed as a table for people and written as JSON for tools (`kirana
//! capacity` reads it back). The JSON schema is documented on [`Report`] and is a contract:
//! add fields, never rename or remove them without bumping [`REPORT_SCHEMA`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::stats::{KindStats, RequestKind};

pub const REPORT_SCHEMA: u32 = 1;

/// A bench report. As JSON (`kirana bench --json FILE`), schema 1:
///
/// ```text
/// schema                 1
/// config                 the run's settings (RunConfig): target, manifest, mode ("open"|"closed"),
///                        rate (sessions/s, open loop) | concurrency (closed loop), duration_secs,
///                        warmup_secs, timeout_secs, zipf_s, stores, merchants, the ratios
///                        (merchant_ratio, search_ratio, cart_ratio, checkout_ratio, landing_ratio),
///                        min_browse, max_browse, max_cart_items, flash_sale, flash_shoppers, seed,
///                        flash_during_browse (bool), flash_give_up_secs, flash_arrival and
///                        flash_ramp_secs (null unless it)
/// started_at             RFC 3339 UTC, when the run (warm-up included) began
/// measured_secs          length of the measured window (warm-up excluded)
/// totals                 main run only: requests, ok, rejected, errors, rps, reads (GETs), writes,
///                        checkouts, warmup_errors (not in the other counts), sessions (started in
///                        the window), sessions_per_sec (achieved), target_sessions_per_sec (open
///                        loop), sessions_late (started > 5 ms behind schedule), max_start_lag_ms
/// requests.<type>        per type: count (= ok + rejected + errors), ok, rejected, errors, rps,
///                        latency_us {p50, p95, p99, p999, max, mean}, histogram (HDR V2 + deflate,
///                        base64: merge runs or recompute any percentile). Types: home, category,
///                        product, search, cart_create, cart_add, checkout, order_status,
///                        dashboard_orders, dashboard_products (always present), flash_cart,
///                        flash_add, flash_checkout (when the flash phase ran; rps over its length)
/// flash_sale             null, or shoppers, stock, orders, sold_out, errors, oversold (orders >
///                        stock: a bug), checkout_secs (first checkout sent → last answered),
///                        orders_per_sec, server_cpu_seconds
/// server                 null without --server-pid, or pid, cpu_seconds and cores_busy over the
///                        measured window, requests_per_core_second, reads_per_core_second,
///                        checkouts_per_core_second (null if no CPU time was seen), rss_bytes (at
///                        the end), data_bytes (--server-data-dir, at the end)
/// generator              this process: cpu_seconds, cores_busy (over the window), host_cores
/// errors                 up to 20 distinct {request, message, count}
/// flash_during_browse    null, or (--flash-during-browse) the other stores measured in two windows
///                        of one run and the sale checked on the server (FlashDuringBrowse):
///   quiet, contended     each a BrowseWindow: starts_at_secs (after the warm-up), secs, requests,
///                        errors, limited (429s), shed (503s), rps, reads (every read type as one
///                        RequestStats), by_type (RequestStats per main type), server_cpu_seconds
///   p99_ratio            contended reads p99 / quiet reads p99 (null if either has no reads)
///   p99_ratio_goal       2.0; p99_goal_met: the ratio is at most the goal
///   flash                FlashVerdict: shoppers, stock_at_start (on the server as the sale
///                        opened), manifest_stock, orders, sold_out, errors (gave_up included),
///                        gave_up, answers_429, answers_503, retries, checkout_retries,
///                        server_orders, server_units, server_stock_left (null if unreadable),
///                        oversold, secs (first buyer out → last buyer done), verdict ("PASS" |
///                        "FAIL"), reasons (why not PASS)
///   timeline             the other stores' reads second by second from the start of measuring:
///                        {second, reads, p50_us, p99_us, max_us} (2 significant digits; a read
///                        counts in the second it was due); the sale opens at quiet.secs
/// ```
/// Latency counts every attempt in the window, errors included (a timeout weighs its full
/// wait). In an open loop a session's first request is timed from its scheduled start. With
/// --flash-during-browse, `measured_secs`, `totals` and the main types of `requests` cover both
/// windows (the quiet one is --duration long, the contended one lasts from the first flash buyer
/// to the last), the flash types the flash buyers (one sample per request, from its first send to
/// its final answer, Retry-After waits included), and `flash_sale` the same sale in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub config: RunConfig,
    pub started_at: String,
    pub measured_secs: f64,
    pub totals: Totals,
    pub requests: BTreeMap<String, RequestStats>,
    pub flash_sale: Option<FlashReport>,
    pub server: Option<ServerUsage>,
    pub generator: GeneratorUsage,
    pub errors: Vec<ErrorSample>,
    /// Added after schema 1's first reports: absent in older files, which still parse.
    #[serde(default)]
    pub flash_during_browse: Option<FlashDuringBrowse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub target: String,
    pub manifest: String,
    /// "open" or "closed".
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<u32>,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub timeout_secs: f64,
    pub zipf_s: f64,
    pub stores: u64,
    pub merchants: u64,
    pub merchant_ratio: f64,
    pub search_ratio: f64,
    pub cart_ratio: f64,
    pub checkout_ratio: f64,
    pub landing_ratio: f64,
    pub min_browse: u32,
    pub max_browse: u32,
    pub max_cart_items: u32,
    pub flash_sale: bool,
    pub flash_shoppers: u32,
    pub seed: u64,
    #[serde(default)]
    pub flash_during_browse: bool,
    #[serde(default)]
    pub flash_give_up_secs: Option<f64>,
    /// `waiting` or `cold` with --flash-during-browse (null otherwise, and in older reports).
    #[serde(default)]
    pub flash_arrival: Option<String>,
    /// The first clicks' spread after the opening, with --flash-during-browse.
    #[serde(default)]
    pub flash_ramp_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub rps: f64,
    pub reads: u64,
    pub writes: u64,
    pub checkouts: u64,
    pub warmup_errors: u64,
    pub sessions: u64,
    pub sessions_per_sec: f64,
    pub target_sessions_per_sec: Option<f64>,
    pub sessions_late: u64,
    pub max_start_lag_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestStats {
    pub count: u64,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency_us: Latency,
    pub histogram: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashReport {
    pub shoppers: u64,
    pub stock: i64,
    pub orders: u64,
    pub sold_out: u64,
    pub errors: u64,
    pub oversold: bool,
    pub checkout_secs: f64,
    pub orders_per_sec: f64,
    pub server_cpu_seconds: Option<f64>,
}

/// The flash sale run while the other stores are browsed (`--flash-during-browse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashDuringBrowse {
    pub quiet: BrowseWindow,
    pub contended: BrowseWindow,
    pub p99_ratio: Option<f64>,
    pub p99_ratio_goal: f64,
    pub p99_goal_met: bool,
    pub flash: FlashVerdict,
    #[serde(default)]
    pub timeline: Vec<TimelineSecond>,
}

/// One second of the other stores' reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineSecond {
    pub second: u64,
    pub reads: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The other stores' requests in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrowseWindow {
    pub starts_at_secs: f64,
    pub secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub limited: u64,
    pub shed: u64,
    pub rps: f64,
    pub reads: RequestStats,
    pub by_type: BTreeMap<String, RequestStats>,
    pub server_cpu_seconds: Option<f64>,
    /// The server's own view of the storefront reads it answered in the window (its
    /// `kirana_http_request_duration_seconds{journey="storefront"}` histogram, scraped at the
    /// window's edges): the p99's bucket bound, in ms. It leaves out the time a request spent
    /// in the generator before it was sent, which on a shared machine the generator's own burst
    /// inflates. Null when `/metrics` could not be read.
    #[serde(default)]
    pub server_reads_p99_ms_at_most: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashVerdict {
    pub shoppers: u64,
    pub stock_at_start: i64,
    pub manifest_stock: i64,
    pub orders: u64,
    pub sold_out: u64,
    pub errors: u64,
    pub gave_up: u64,
    pub answers_429: u64,
    pub answers_503: u64,
    pub retries: u64,
    pub checkout_retries: u64,
    pub server_orders: Option<u64>,
    pub server_units: Option<u64>,
    pub server_stock_left: Option<i64>,
    pub oversold: bool,
    pub secs: f64,
    pub verdict: String,
    pub reasons: Vec<String>,
}

impl FlashVerdict {
    /// PASS only when the server holds exactly one order per unit the sale opened with, no unit
    /// is left, nothing was oversold, and the buyers saw no order the server does not have.
    pub fn judge(&mut self) {
        let mut reasons = Vec::new();
        match self.server_orders {
            None => reasons.push("the server's orders could not be read".to_string()),
            Some(n) if n as i64 != self.stock_at_start => {
                reasons.push(format!("the server has {n} orders for {} units", self.stock_at_start))
            }
            Some(_) => {}
        }
        match self.server_stock_left {
            None => reasons.push("the server's stock could not be read".to_string()),
            Some(0) => {}
            Some(left) => reasons.push(format!("{left} units left on the server")),
        }
        if self.server_units.is_some_and(|u| u as i64 > self.stock_at_start) {
            reasons.push(format!("{} units sold on the server", self.server_units.unwrap_or(0)));
        }
        if self.oversold {
            reasons.push("OVERSOLD".to_string());
        }
        if self.server_orders.is_some_and(|n| self.orders > n) {
            reasons.push(format!("buyers were told of {} orders, the server has fewer", self.orders));
        }
        self.verdict = if reasons.is_empty() { "PASS" } else { "FAIL" }.to_string();
        self.reasons = reasons;
    }

    pub fn passed(&self) -> bool {
        self.verdict == "PASS"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub cores_busy: f64,
    pub requests_per_core_second: Option<f64>,
    pub reads_per_core_second: Option<f64>,
    pub checkouts_per_core_second: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub data_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorUsage {
    pub cpu_seconds: Option<f64>,
    pub cores_busy: Option<f64>,
    pub host_cores: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorSample {
    pub request: String,
    pub message: String,
    pub count: u64,
}

/// Encodes a histogram as the report stores it (HDR V2 with deflate, base64).
pub(crate) fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => STANDARD.encode(bytes),
        // Serializing into memory cannot fail for a valid histogram; an empty field says so.
        Err(_) => String::new(),
    }
}

/// Decodes a report's `histogram` field.
pub fn decode_histogram(encoded: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = STANDARD.decode(encoded)?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))
}

pub(crate) fn request_stats(s: &KindStats, over: Duration) -> RequestStats {
    let h = &s.hist;
    let empty = h.is_empty();
    let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
    RequestStats {
        count: s.count(),
        ok: s.ok,
        rejected: s.rejected,
        errors: s.errors,
        rps: per_sec(s.count(), over),
        latency_us: Latency {
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: if empty { 0 } else { h.max() },
            mean: if empty { 0.0 } else { h.mean() },
        },
        histogram: encode_histogram(h),
    }
}

pub(crate) fn per_sec(n: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Latency for people: µs below a millisecond, ms below a second, s above.
fn human_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

impl Report {
    /// Per-type stats in the order a session makes the requests (the map is alphabetical).
    pub fn in_session_order(&self) -> impl Iterator<Item = (&'static str, &RequestStats)> {
        RequestKind::ALL.iter().filter_map(|k| self.requests.get(k.name()).map(|s| (k.name(), s)))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let t = &self.totals;
        let load = match (c.rate, c.concurrency) {
            (Some(r), _) => format!("open loop, {r} sessions/s offered, {:.1} achieved", t.sessions_per_sec),
            (None, Some(n)) => format!("closed loop, {n} workers, {:.1} sessions/s", t.sessions_per_sec),
            (None, None) => "no load".to_string(),
        };
        writeln!(
            f,
            "kirana bench → {}: {load}; {:.1}s measured after {:.1}s warm-up; {} stores, zipf s={}",
            c.target, self.measured_secs, c.warmup_secs, c.stores, c.zipf_s
        )?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "type", "count", "rps", "p50", "p95", "p99", "p99.9", "max", "rejected", "errors"
        );
        for (name, s) in self.in_session_order() {
            let l = &s.latency_us;
            let _ = writeln!(
                out,
                "{:<20} {:>9} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
                name,
                s.count,
                s.rps,
                human_us(l.p50),
                human_us(l.p95),
                human_us(l.p99),
                human_us(l.p999),
                human_us(l.max),
                s.rejected,
                s.errors
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9.1} {:>59} {:>7}",
            "total (main run)", t.requests, t.rps, t.rejected, t.errors
        );
        f.write_str(&out)?;
        if c.rate.is_some() {
            writeln!(
                f,
                "sessions: {} started in the window, {} late (>5 ms behind schedule), worst start lag {:.1} ms; warm-up errors {}",
                t.sessions, t.sessions_late, t.max_start_lag_ms, t.warmup_errors
            )?;
        } else {
            writeln!(f, "sessions: {} started in the window; warm-up errors {}", t.sessions, t.warmup_errors)?;
        }
        if let Some(fl) = &self.flash_sale {
            writeln!(
                f,
                "flash sale: {} shoppers, stock {}, {} orders, {} sold out, {} errors; {:.1} orders/s over {:.3}s of checkouts",
                fl.shoppers, fl.stock, fl.orders, fl.sold_out, fl.errors, fl.orders_per_sec, fl.checkout_secs
            )?;
            if fl.oversold {
                writeln!(f, "!!! OVERSELL: {} orders for {} units of stock !!!", fl.orders, fl.stock)?;
            }
        }
        if let Some(fb) = &self.flash_during_browse {
            fb.fmt(f)?;
        }
        if let Some(s) = &self.server {
            let rate = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
            writeln!(
                f,
                "server pid {}: {:.2} CPU-s ({:.2} cores busy); per core-second: {} requests, {} reads, {} checkouts; RSS {}",
                s.pid,
                s.cpu_seconds,
                s.cores_busy,
                rate(s.requests_per_core_second),
                rate(s.reads_per_core_second),
                rate(s.checkouts_per_core_second),
                s.rss_bytes.map_or("n/a".to_string(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            )?;
        }
        if let Some(cores) = self.generator.cores_busy {
            writeln!(f, "generator: {cores:.2} of {} cores busy", self.generator.host_cores)?;
        }
        for e in &self.errors {
            writeln!(f, "error ×{} {}: {}", e.count, e.request, e.message)?;
        }
        Ok(())
    }
}

impl fmt::Display for FlashDuringBrowse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (q, c, v) = (&self.quiet, &self.contended, &self.flash);
        writeln!(
            f,
            "flash sale during browsing: the other stores, quiet {:.1}s then contended {:.1}s (first flash buyer → last)",
            q.secs, c.secs
        )?;
        writeln!(
            f,
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}",
            "other stores' reads", "count", "rps", "p50", "p99", "p99.9", "max", "errors", "429", "503"
        )?;
        for (name, w) in [("quiet", q), ("contended", c)] {
            let l = &w.reads.latency_us;
            writeln!(
                f,
                "{:<20} {:>9} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}",
                name,
                w.reads.count,
                w.reads.rps,
                human_us(l.p50),
                human_us(l.p99),
                human_us(l.p999),
                human_us(l.max),
                w.errors,
                w.limited,
                w.shed
            )?;
        }
        let per_type: Vec<String> = RequestKind::MAIN
            .iter()
            .filter_map(|k| Some((k.name(), q.by_type.get(k.name())?, c.by_type.get(k.name())?)))
            .filter(|(_, a, b)| a.count > 0 || b.count > 0)
            .map(|(n, a, b)| format!("{n} {} → {}", human_us(a.latency_us.p99), human_us(b.latency_us.p99)))
            .collect();
        writeln!(f, "p99 by type, quiet → contended: {}", per_type.join(", "))?;
        let bound =
            |w: &BrowseWindow| w.server_reads_p99_ms_at_most.map_or("n/a".to_string(), |ms| format!("≤ {ms} ms"));
        writeln!(
            f,
            "server-side storefront reads p99 (its histogram), quiet → contended: {} → {}",
            bound(q),
            bound(c)
        )?;
        match self.p99_ratio {
            Some(r) => writeln!(
                f,
                "contended / quiet p99: {r:.2} (goal ≤ {}: {})",
                self.p99_ratio_goal,
                if self.p99_goal_met { "met" } else { "NOT met" }
            )?,
            None => writeln!(f, "contended / quiet p99: n/a (a window without reads)")?,
        }
        // The last seconds before the sale and every second of it: when the tail was made.
        let opens = q.secs.round() as u64;
        let seconds: Vec<String> = self
            .timeline
            .iter()
            .filter(|t| t.second + 5 >= opens)
            .map(|t| format!("{}{}", if t.second == opens { "| " } else { "" }, human_us(t.p99_us)))
            .collect();
        if !seconds.is_empty() {
            writeln!(f, "reads p99 second by second, from 5 s before the sale (| opens it): {}", seconds.join(" "))?;
        }
        let server = |v: Option<i64>| v.map_or("unreadable".to_string(), |v| v.to_string());
        writeln!(
            f,
            "flash: {} buyers for {} units: {} orders, {} sold out, {} errors ({} gave up); 429 ×{}, 503 ×{}, {} retries ({} of checkouts) over {:.1}s",
            v.shoppers,
            v.stock_at_start,
            v.orders,
            v.sold_out,
            v.errors,
            v.gave_up,
            v.answers_429,
            v.answers_503,
            v.retries,
            v.checkout_retries,
            v.secs
        )?;
        writeln!(
            f,
            "server: {} orders ({} units) for the flash product, {} left in stock; oversold: {} → {}{}",
            server(v.server_orders.map(|n| n as i64)),
            server(v.server_units.map(|n| n as i64)),
            server(v.server_stock_left),
            if v.oversold { "YES" } else { "no" },
            v.verdict,
            if v.reasons.is_empty() { String::new() } else { format!(" ({})", v.reasons.join("; ")) }
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::new_histogram;

    pub(crate) fn sample_report() -> Report {
        let mut requests = BTreeMap::new();
        for (i, k) in RequestKind::MAIN.iter().enumerate() {
            let mut hist = new_histogram();
            for v in 1..=1000u64 {
                hist.record(v * (i as u64 + 1)).unwrap();
            }
            let s = KindStats { hist, ok: 990, rejected: 7, errors: 3, limited: 1, shed: 1 };
            requests.insert(k.name().to_string(), request_stats(&s, Duration::from_secs(10)));
        }
        Report {
            schema: REPORT_SCHEMA,
            config: RunConfig {
                target: "http://127.0.0.1:8080".into(),
                manifest: "m.json".into(),
                mode: "open".into(),
                rate: Some(50.0),
                concurrency: None,
                duration_secs: 10.0,
                warmup_secs: 1.5,
                timeout_secs: 10.0,
                zipf_s: 1.0,
                stores: 1000,
                merchants: 100,
                merchant_ratio: 0.05,
                search_ratio: 0.2,
                cart_ratio: 0.2,
                checkout_ratio: 0.5,
                landing_ratio: 0.0,
                min_browse: 1,
                max_browse: 3,
                max_cart_items: 2,
                flash_sale: true,
                flash_shoppers: 200,
                seed: 42,
                flash_during_browse: true,
                flash_give_up_secs: Some(60.0),
                flash_arrival: Some("waiting".into()),
                flash_ramp_secs: Some(0.0),
            },
            started_at: "2026-01-01T00:00:00Z".into(),
            measured_secs: 10.0,
            totals: Totals {
                requests: 10_000,
                ok: 9_900,
                rejected: 70,
                errors: 30,
                rps: 1000.0,
                reads: 9_000,
                writes: 1_000,
                checkouts: 100,
                warmup_errors: 0,
                sessions: 500,
                sessions_per_sec: 50.0,
                target_sessions_per_sec: Some(50.0),
                sessions_late: 0,
                max_start_lag_ms: 1.25,
            },
            requests,
            flash_sale: Some(FlashReport {
                shoppers: 200,
                stock: 50,
                orders: 50,
                sold_out: 150,
                errors: 0,
                oversold: false,
                checkout_secs: 0.5,
                orders_per_sec: 100.0,
                server_cpu_seconds: None,
            }),
            server: Some(ServerUsage {
                pid: 1,
                cpu_seconds: 5.0,
                cores_busy: 0.5,
                requests_per_core_second: Some(2000.0),
                reads_per_core_second: Some(1800.0),
                checkouts_per_core_second: Some(20.0),
                rss_bytes: Some(50 << 20),
                data_bytes: Some(1 << 30),
            }),
            generator: GeneratorUsage { cpu_seconds: Some(1.0), cores_busy: Some(0.1), host_cores: 2 },
            errors: vec![ErrorSample { request: "checkout".into(), message: "HTTP 500: internal".into(), count: 3 }],
            flash_during_browse: Some(sample_flash_during_browse(&requests_for_windows())),
        }
    }

    fn requests_for_windows() -> BTreeMap<String, RequestStats> {
        let mut by_type = BTreeMap::new();
        for k in RequestKind::MAIN {
            let mut hist = new_histogram();
            hist.record(1000).unwrap();
            let s = KindStats { hist, ok: 1, rejected: 0, errors: 0, limited: 0, shed: 0 };
            by_type.insert(k.name().to_string(), request_stats(&s, Duration::from_secs(1)));
        }
        by_type
    }

    fn window(by_type: &BTreeMap<String, RequestStats>, p99: u64) -> BrowseWindow {
        let mut hist = new_histogram();
        for _ in 0..99 {
            hist.record(500).unwrap();
        }
        hist.record(p99).unwrap();
        let reads = KindStats { hist, ok: 100, rejected: 0, errors: 0, limited: 0, shed: 0 };
        BrowseWindow {
            starts_at_secs: 0.0,
            secs: 10.0,
            requests: 120,
            errors: 0,
            limited: 0,
            shed: 0,
            rps: 12.0,
            reads: request_stats(&reads, Duration::from_secs(10)),
            by_type: by_type.clone(),
            server_cpu_seconds: Some(1.5),
            server_reads_p99_ms_at_most: Some(2.5),
        }
    }

    fn sample_flash_during_browse(by_type: &BTreeMap<String, RequestStats>) -> FlashDuringBrowse {
        let mut flash = FlashVerdict {
            shoppers: 3000,
            stock_at_start: 1000,
            manifest_stock: 1000,
            orders: 1000,
            sold_out: 2000,
            errors: 0,
            gave_up: 0,
            answers_429: 4000,
            answers_503: 2,
            retries: 4002,
            checkout_retries: 900,
            server_orders: Some(1000),
            server_units: Some(1000),
            server_stock_left: Some(0),
            oversold: false,
            secs: 12.5,
            verdict: String::new(),
            reasons: Vec::new(),
        };
        flash.judge();
        FlashDuringBrowse {
            quiet: window(by_type, 2000),
            contended: window(by_type, 3000),
            p99_ratio: Some(1.5),
            p99_ratio_goal: 2.0,
            p99_goal_met: true,
            flash,
            timeline: (0..20)
                .map(|second| TimelineSecond {
                    second,
                    reads: 10,
                    p50_us: 500,
                    p99_us: if second == 10 { 250_000 } else { 2_000 },
                    max_us: 300_000,
                })
                .collect(),
        }
    }

    #[test]
    fn a_flash_sale_passes_only_with_one_server_order_per_unit_and_nothing_left_or_oversold() {
        let base = sample_flash_during_browse(&BTreeMap::new()).flash;
        assert!(base.passed(), "{:?}", base.reasons);
        let fails = |change: &dyn Fn(&mut FlashVerdict)| {
            let mut v = base.clone();
            change(&mut v);
            v.judge();
            assert!(!v.passed(), "{v:?}");
            assert_eq!(v.verdict, "FAIL");
            assert!(!v.reasons.is_empty());
        };
        fails(&|v| v.server_orders = Some(999));
        fails(&|v| v.server_orders = Some(1001));
        fails(&|v| v.server_orders = None);
        fails(&|v| v.server_stock_left = Some(1));
        fails(&|v| v.server_stock_left = None);
        fails(&|v| v.server_units = Some(1001));
        fails(&|v| v.oversold = true);
        fails(&|v| v.orders = 1001);
        // Buyers who timed out on an order the server placed: the sale is still right.
        let mut v = base.clone();
        v.orders = 990;
        v.errors = 10;
        v.judge();
        assert!(v.passed(), "{:?}", v.reasons);
    }

    #[test]
    fn a_report_written_before_flash_during_browse_existed_still_parses() {
        let mut v = serde_json::to_value(sample_report()).unwrap();
        v.as_object_mut().unwrap().remove("flash_during_browse");
        let config = v["config"].as_object_mut().unwrap();
        config.remove("flash_during_browse");
        config.remove("flash_give_up_secs");
        config.remove("flash_arrival");
        config.remove("flash_ramp_secs");
        let back: Report = serde_json::from_value(v).unwrap();
        assert!(back.flash_during_browse.is_none() && !back.config.flash_during_browse);
    }

    #[test]
    fn the_table_shows_both_windows_their_ratio_and_the_verdict() {
        let r = sample_report();
        let table = r.to_string();
        for want in [
            "quiet",
            "contended",
            "contended / quiet p99: 1.50 (goal ≤ 2: met)",
            "→ PASS",
            "429 ×4000",
            "(| opens it): 2.0ms 2.0ms 2.0ms 2.0ms 2.0ms | 250.0ms 2.0ms",
        ] {
            assert!(table.contains(want), "no `{want}` in\n{table}");
        }
        let mut r = r;
        let fb = r.flash_during_browse.as_mut().unwrap();
        fb.flash.server_stock_left = Some(3);
        fb.flash.judge();
        assert!(r.to_string().contains("→ FAIL (3 units left on the server)"), "{r}");
    }

    #[test]
    fn the_json_report_round_trips_and_its_histograms_decode_to_the_same_percentiles() {
        let report = sample_report();
        let text = serde_json::to_string_pretty(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        let home = &back.requests["home"];
        let h = decode_histogram(&home.histogram).unwrap();
        assert_eq!(h.len(), 1000);
        assert_eq!(h.value_at_quantile(0.99), home.latency_us.p99);
        assert_eq!(home.latency_us.p50, h.value_at_quantile(0.5));
        assert!((495..=505).contains(&home.latency_us.p50), "{}", home.latency_us.p50);
        assert_eq!(home.latency_us.max, 1000);
    }

    #[test]
    fn the_json_field_names_are_the_documented_ones() {
        let v = serde_json::to_value(sample_report()).unwrap();
        for key in [
            "schema",
            "config",
            "started_at",
            "measured_secs",
            "totals",
            "requests",
            "flash_sale",
            "server",
            "generator",
            "errors",
            "flash_during_browse",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let home = &v["requests"]["home"];
        for key in ["count", "ok", "rejected", "errors", "rps", "latency_us", "histogram"] {
            assert!(home.get(key).is_some(), "missing requests.home.{key}");
        }
        for key in ["p50", "p95", "p99", "p999", "max", "mean"] {
            assert!(home["latency_us"].get(key).is_some(), "missing latency_us.{key}");
        }
        let fb = &v["flash_during_browse"];
        for key in ["quiet", "contended", "p99_ratio", "p99_ratio_goal", "p99_goal_met", "flash", "timeline"] {
            assert!(fb.get(key).is_some(), "missing flash_during_browse.{key}");
        }
        for key in ["starts_at_secs", "secs", "requests", "errors", "limited", "shed", "rps", "reads", "by_type"] {
            assert!(fb["quiet"].get(key).is_some(), "missing flash_during_browse.quiet.{key}");
        }
        assert!(fb["contended"]["reads"]["latency_us"]["p99"].is_u64());
        for key in [
            "shoppers",
            "stock_at_start",
            "orders",
            "sold_out",
            "errors",
            "answers_429",
            "answers_503",
            "server_orders",
            "server_stock_left",
            "oversold",
            "verdict",
        ] {
            assert!(fb["flash"].get(key).is_some(), "missing flash_during_browse.flash.{key}");
        }
        assert!(v["server"]["requests_per_core_second"].is_f64());
        assert!(v["server"]["checkouts_per_core_second"].is_f64());
    }

    #[test]
    fn an_empty_type_reports_zeros_not_garbage() {
        let s = request_stats(&KindStats::new(), Duration::ZERO);
        assert_eq!((s.count, s.rps, s.latency_us.max, s.latency_us.p99), (0, 0.0, 0, 0));
        assert!(decode_histogram(&s.histogram).unwrap().is_empty());
    }

    #[test]
    fn the_table_lists_every_type_in_session_order_and_shouts_about_an_oversell() {
        let mut r = sample_report();
        let table = r.to_string();
        let home = table.find("\nhome ").unwrap();
        let checkout = table.find("\ncheckout ").unwrap();
        assert!(home < checkout, "{table}");
        assert!(table.contains("dashboard_products"));
        assert!(!table.contains("OVERSELL"));
        r.flash_sale.as_mut().unwrap().oversold = true;
        assert!(r.to_string().contains("OVERSELL"));
    }

    #[test]
    fn latencies_read_naturally() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(12_340), "12.3ms");
        assert_eq!(human_us(2_500_000), "2.50s");
    }
}
