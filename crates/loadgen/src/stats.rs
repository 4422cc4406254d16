//! Live measurement: the request types the bench tells apart, and the recorder every session
//! writes into (an HDR histogram, outcome counts and a few error messages per type). It owns the
//! measured window: a sample whose start lies outside it is dropped here, so warm-up traffic and
//! anything after the deadline can never leak into the numbers. It never talks HTTP.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// What one request was, for the report. The names are part of the JSON schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Home,
    Category,
    Product,
    Search,
    CartCreate,
    CartAdd,
    Checkout,
    OrderStatus,
    DashboardOrders,
    DashboardProducts,
    FlashCart,
    FlashAdd,
    FlashCheckout,
}

impl RequestKind {
    pub const ALL: [RequestKind; 13] = [
        RequestKind::Home,
        RequestKind::Category,
        RequestKind::Product,
        RequestKind::Search,
        RequestKind::CartCreate,
        RequestKind::CartAdd,
        RequestKind::Checkout,
        RequestKind::OrderStatus,
        RequestKind::DashboardOrders,
        RequestKind::DashboardProducts,
        RequestKind::FlashCart,
        RequestKind::FlashAdd,
        RequestKind::FlashCheckout,
    ];

    /// The types of the main run (everything but the flash-sale phase).
    pub const MAIN: [RequestKind; 10] = [
        RequestKind::Home,
        RequestKind::Category,
        RequestKind::Product,
        RequestKind::Search,
        RequestKind::CartCreate,
        RequestKind::CartAdd,
        RequestKind::Checkout,
        RequestKind::OrderStatus,
        RequestKind::DashboardOrders,
        RequestKind::DashboardProducts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Home => "home",
            RequestKind::Category => "category",
            RequestKind::Product => "product",
            RequestKind::Search => "search",
            RequestKind::CartCreate => "cart_create",
            RequestKind::CartAdd => "cart_add",
            RequestKind::Checkout => "checkout",
            RequestKind::OrderStatus => "order_status",
            RequestKind::DashboardOrders => "dashboard_orders",
            RequestKind::DashboardProducts => "dashboard_products",
            RequestKind::FlashCart => "flash_cart",
            RequestKind::FlashAdd => "flash_add",
            RequestKind::FlashCheckout => "flash_checkout",
        }
    }

    /// GETs: what a cache or a read replica could serve. Everything else writes to the store's shard.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            RequestKind::Home
                | RequestKind::Category
                | RequestKind::Product
                | RequestKind::Search
                | RequestKind::OrderStatus
                | RequestKind::DashboardOrders
                | RequestKind::DashboardProducts
        )
    }

    pub fn is_checkout(self) -> bool {
        matches!(self, RequestKind::Checkout | RequestKind::FlashCheckout)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused for a reason the workload expects (stock ran out): not an error.
    Rejected,
    Error(String),
    /// An error answer from the server, by HTTP status: 429s (rate limited) and 503s (shed) are
    /// counted apart as well, since they are the platform's protections at work.
    Refused(u16, String),
}

/// Distinct error messages kept per run; beyond this only the counts grow.
const MAX_ERROR_SAMPLES: usize = 20;
/// Longest latency the histograms hold (one hour, in µs); longer samples are clamped, not lost.
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds are valid")
}

#[derive(Debug, Clone)]
pub(crate) struct KindStats {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub rejected: u64,
    pub errors: u64,
    /// Of the errors, answers 429 (a rate limit) and 503 (shed or unavailable).
    pub limited: u64,
    pub shed: u64,
}

impl KindStats {
    pub fn new() -> Self {
        KindStats { hist: new_histogram(), ok: 0, rejected: 0, errors: 0, limited: 0, shed: 0 }
    }

    /// Adds `other`'s samples and counts (for figures over several types).
    pub fn merge(&mut self, other: &KindStats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.errors += other.errors;
        self.limited += other.limited;
        self.shed += other.shed;
    }

    pub fn count(&self) -> u64 {
        self.ok + self.rejected + self.errors
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorSample {
    pub kind: RequestKind,
    pub message: String,
    pub count: u64,
}

/// Shared by every session of one phase. One small mutex per type: a lock is held for a
/// histogram increment, far cheaper than the request it records, so it never paces the load.
pub(crate) struct Recorder {
    from: Instant,
    to: Instant,
    kinds: Vec<Mutex<KindStats>>,
    errors: Mutex<ErrorLog>,
    /// Errors of requests that started in the warm-up: not in the numbers, but not hidden either.
    warmup_errors: AtomicU64,
    /// Every recorded request and error, for the progress line.
    pub live_requests: AtomicU64,
    pub live_errors: AtomicU64,
}

#[derive(Default)]
struct ErrorLog {
    samples: Vec<ErrorSample>,
    index: HashMap<(RequestKind, String), usize>,
}

impl Recorder {
    /// Records samples whose measured start lies in `[from, to)`.
    pub fn new(from: Instant, to: Instant) -> Self {
        Recorder {
            from,
            to,
            kinds: RequestKind::ALL.iter().map(|_| Mutex::new(KindStats::new())).collect(),
            errors: Mutex::new(ErrorLog::default()),
            warmup_errors: AtomicU64::new(0),
            live_requests: AtomicU64::new(0),
            live_errors: AtomicU64::new(0),
        }
    }

    /// `at` is when the request was due (the scheduled start for the first request of an
    /// open-loop session, the moment of sending otherwise): it decides whether the sample is in
    /// the window. `latency` runs to the end of the response.
    pub fn record(&self, kind: RequestKind, at: Instant, latency: Duration, outcome: Outcome) {
        if at < self.from {
            if matches!(outcome, Outcome::Error(_) | Outcome::Refused(..)) {
                self.warmup_errors.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if at >= self.to {
            return;
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_LATENCY_US);
        let message = {
            let mut s = self.kinds[kind.index()].lock().expect("stats lock");
            s.hist.saturating_record(us);
            match outcome {
                Outcome::Ok => {
                    s.ok += 1;
                    None
                }
                Outcome::Rejected => {
                    s.rejected += 1;
                    None
                }
                Outcome::Error(m) => {
                    s.errors += 1;
                    Some(m)
                }
                Outcome::Refused(status, m) => {
                    s.errors += 1;
                    s.limited += u64::from(status == 429);
                    s.shed += u64::from(status == 503);
                    Some(m)
                }
            }
        };
        self.live_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(message) = message {
            self.live_errors.fetch_add(1, Ordering::Relaxed);
            let mut log = self.errors.lock().expect("error log lock");
            let key = (kind, message);
            if let Some(&i) = log.index.get(&key) {
                log.samples[i].count += 1;
            } else if log.samples.len() < MAX_ERROR_SAMPLES {
                let i = log.samples.len();
                log.samples.push(ErrorSample { kind, message: key.1.clone(), count: 1 });
                log.index.insert(key, i);
            }
        }
    }

    pub fn snapshot(&self, kind: RequestKind) -> KindStats {
        self.kinds[kind.index()].lock().expect("stats lock").clone()
    }

    pub fn error_samples(&self) -> Vec<ErrorSample> {
        self.errors.lock().expect("error log lock").samples.clone()
    }

    pub fn warmup_errors(&self) -> u64 {
        self.warmup_errors.load(Ordering::Relaxed)
    }
}

/// The reads' latency second by second over a run, coarser than the recorders' histograms (two
/// significant digits, a minute at most): enough to see *when* in a window a tail was made, e.g.
/// in the second a crowd arrives. A sample lands in the second it was due.
pub(crate) struct Timeline {
    from: Instant,
    seconds: Vec<Mutex<Histogram<u64>>>,
}

/// Longest latency a timeline second holds; longer ones are clamped.
const TIMELINE_MAX_US: u64 = 60_000_000;

impl Timeline {
    /// Seconds from `from` up to `to` (at least one).
    pub fn new(from: Instant, to: Instant) -> Timeline {
        let n = (to.saturating_duration_since(from).as_secs() + 1) as usize;
        let hist = || Mutex::new(Histogram::new_with_bounds(1, TIMELINE_MAX_US, 2).expect("static bounds are valid"));
        Timeline { from, seconds: (0..n).map(|_| hist()).collect() }
    }

    pub fn record(&self, kind: RequestKind, at: Instant, latency: Duration) {
        if !kind.is_read() || at < self.from {
            return;
        }
        let Some(second) = self.seconds.get((at - self.from).as_secs() as usize) else { return };
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, TIMELINE_MAX_US);
        second.lock().expect("timeline lock").saturating_record(us);
    }

    /// Per second from `from`, for the first `secs` seconds: (reads, p50, p99, max) in µs.
    pub fn seconds(&self, secs: usize) -> Vec<(u64, u64, u64, u64)> {
        self.seconds
            .iter()
            .take(secs)
            .map(|h| {
                let h = h.lock().expect("timeline lock");
                if h.is_empty() {
                    (0, 0, 0, 0)
                } else {
                    (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn samples_outside_the_window_are_dropped_but_warmup_errors_are_counted() {
        let t0 = Instant::now();
        let r = Recorder::new(t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let ms = Duration::from_millis(3);
        r.record(RequestKind::Home, t0, ms, Outcome::Error("boom".into()));
        r.record(RequestKind::Home, t0 + Duration::from_millis(1500), ms, Outcome::Ok);
        r.record(RequestKind::Home, t0 + Duration::from_secs(2), ms, Outcome::Ok);
        let s = r.snapshot(RequestKind::Home);
        assert_eq!((s.ok, s.errors, s.count()), (1, 0, 1));
        assert_eq!(r.warmup_errors(), 1);
        assert!(r.error_samples().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn identical_errors_are_counted_under_one_sample_and_distinct_ones_are_capped() {
        let t0 = Instant::now();
        let r = Recorder::new(t0, t0 + Duration::from_secs(10));
        for _ in 0..3 {
            r.record(RequestKind::Checkout, t0, Duration::from_millis(1), Outcome::Error("HTTP 500".into()));
        }
        for i in 0..50 {
            r.record(RequestKind::Home, t0, Duration::from_millis(1), Outcome::Error(format!("e{i}")));
        }
        let samples = r.error_samples();
        assert_eq!(samples.len(), MAX_ERROR_SAMPLES);
        assert_eq!(samples[0], ErrorSample { kind: RequestKind::Checkout, message: "HTTP 500".into(), count: 3 });
        assert_eq!(r.snapshot(RequestKind::Home).errors, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_errors_and_429s_and_503s_are_counted_apart_and_merged() {
        let t0 = Instant::now();
        let r = Recorder::new(t0, t0 + Duration::from_secs(10));
        let ms = Duration::from_millis(2);
        r.record(RequestKind::Home, t0, ms, Outcome::Refused(429, "HTTP 429: slow down".into()));
        r.record(RequestKind::Home, t0, ms, Outcome::Refused(503, "HTTP 503: busy".into()));
        r.record(RequestKind::Home, t0, ms, Outcome::Refused(500, "HTTP 500: oops".into()));
        r.record(RequestKind::Product, t0, ms, Outcome::Ok);
        let mut all = r.snapshot(RequestKind::Home);
        assert_eq!((all.errors, all.limited, all.shed, all.count()), (3, 1, 1, 3));
        all.merge(&r.snapshot(RequestKind::Product));
        assert_eq!((all.ok, all.errors, all.count(), all.hist.len()), (1, 3, 4, 4));
        assert_eq!(r.error_samples().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeline_puts_each_read_in_the_second_it_was_due_and_ignores_writes() {
        let t0 = Instant::now();
        let t = Timeline::new(t0, t0 + Duration::from_secs(3));
        let ms = Duration::from_millis;
        t.record(RequestKind::Home, t0 + ms(10), ms(2));
        t.record(RequestKind::Product, t0 + ms(999), ms(4));
        t.record(RequestKind::Checkout, t0 + ms(500), ms(900));
        t.record(RequestKind::Search, t0 + ms(2500), ms(700));
        t.record(RequestKind::Home, t0 + Duration::from_secs(60), ms(1));
        let s = t.seconds(4);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].0, s[1].0, s[2].0, s[3].0), (2, 0, 1, 0));
        assert!((3_900..=4_100).contains(&s[0].3), "{:?}", s[0]);
        assert!((690_000..=710_000).contains(&s[2].2), "{:?}", s[2]);
    }

    #[test]
    fn request_kind_names_are_unique_and_main_excludes_the_flash_phase() {
        let names: std::collections::HashSet<_> = RequestKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), RequestKind::ALL.len());
        assert!(RequestKind::MAIN.iter().all(|k| !k.name().starts_with("flash")));
        for (i, k) in RequestKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "ALL is in declaration order");
        }
    }
}
