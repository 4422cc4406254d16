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
///                        min_browse, max_browse, max_cart_items, flash_sale, flash_shoppers, seed
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
/// ```
/// Latency counts every attempt in the window, errors included (a timeout weighs its full
/// wait). In an open loop a session's first request is timed from its scheduled start.
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
            let s = KindStats { hist, ok: 990, rejected: 7, errors: 3 };
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
        }
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
        assert!(v["server"]["requests_per_core_second"].is_f64());
        assert!(v["server"]["checkouts_per_core_second"].is_f64());
    }

    #[test]
    fn an_empty_type_reports_zeros_not_garbage() {
        let s = request_stats(&KindStats { hist: new_histogram(), ok: 0, rejected: 0, errors: 0 }, Duration::ZERO);
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
