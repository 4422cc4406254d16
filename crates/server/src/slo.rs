//! Service level objectives, evaluated continuously on this node: what fraction of the
//! storefront's and checkout's requests were good (answered without a server error; fast
//! enough), against a target, with the error budget left and the multi-window burn-rate alerts of
//! the SRE workbook (page: 1 h and 5 m both burning faster than 14.4×; ticket: 6 h and 30 m both
//! faster than 6×).
//!
//! Every request is recorded by `metrics::track` into per-minute buckets (6 h of them, for the
//! alert windows) and per-hour buckets (30 days, for the budget). Time is tokio's, so tests pause
//! and advance it. Each node judges what it served; across nodes, the Prometheus rules under
//! `deploy/` compute the same from `kirana_http_*`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Which requests an objective is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Journey {
    /// Shoppers reading: storefront pages and the shopper API's reads.
    Storefront,
    /// Placing orders: checkout posts, pages and API.
    Checkout,
}

impl Journey {
    /// The journey a request belongs to, if any (merchants' and operators' requests have none).
    pub fn of(method: &axum::http::Method, path: &str) -> Option<Journey> {
        let group = crate::metrics::route_group(path);
        if path.ends_with("/checkout") && method == axum::http::Method::POST {
            return Some(Journey::Checkout);
        }
        match group {
            "storefront" | "shopper_api" if method == axum::http::Method::GET => Some(Journey::Storefront),
            _ => None,
        }
    }
}

/// What "good" means for an objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Indicator {
    /// Answered without a server error (5xx, shed requests included).
    Availability,
    /// Answered within this many milliseconds.
    LatencyBelow { ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Objective {
    pub name: String,
    pub journey: Journey,
    pub indicator: Indicator,
    /// The fraction of requests that must be good, e.g. 0.9995.
    pub target: f64,
}

impl Objective {
    /// The defaults: storefront availability 99.95 %, checkout availability 99.9 %, storefront
    /// p99 under 100 ms, checkout p99 under 300 ms.
    pub fn defaults() -> Vec<Objective> {
        let o = |name: &str, journey, indicator, target| Objective { name: name.into(), journey, indicator, target };
        vec![
            o("storefront-availability", Journey::Storefront, Indicator::Availability, 0.9995),
            o("checkout-availability", Journey::Checkout, Indicator::Availability, 0.999),
            o("storefront-latency", Journey::Storefront, Indicator::LatencyBelow { ms: 100 }, 0.99),
            o("checkout-latency", Journey::Checkout, Indicator::LatencyBelow { ms: 300 }, 0.99),
        ]
    }

    fn good(&self, status: u16, latency: Duration) -> bool {
        match self.indicator {
            Indicator::Availability => status < 500,
            Indicator::LatencyBelow { ms } => latency <= Duration::from_millis(ms),
        }
    }
}

/// Good and all requests in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub good: u64,
    pub total: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.good += other.good;
        self.total += other.total;
    }

    fn bad_ratio(self) -> f64 {
        if self.total == 0 { 0.0 } else { (self.total - self.good) as f64 / self.total as f64 }
    }
}

/// Buckets of `width`, newest last, at most `keep` of them.
#[derive(Debug)]
struct Series {
    width: Duration,
    keep: usize,
    /// (bucket index since start, count)
    buckets: VecDeque<(u64, Count)>,
}

impl Series {
    fn new(width: Duration, keep: usize) -> Series {
        Series { width, keep, buckets: VecDeque::new() }
    }

    fn index(&self, since_start: Duration) -> u64 {
        (since_start.as_nanos() / self.width.as_nanos()) as u64
    }

    fn add(&mut self, since_start: Duration, c: Count) {
        let i = self.index(since_start);
        match self.buckets.back_mut() {
            Some((last, count)) if *last == i => count.add(c),
            _ => self.buckets.push_back((i, c)),
        }
        while self.buckets.front().is_some_and(|(first, _)| *first + self.keep as u64 <= i) {
            self.buckets.pop_front();
        }
    }

    /// The sum over the last `window` (whole buckets, the current one included).
    fn sum(&self, since_start: Duration, window: Duration) -> Count {
        let now = self.index(since_start);
        let span = (window.as_nanos() / self.width.as_nanos()).max(1) as u64;
        let mut total = Count::default();
        for (i, c) in self.buckets.iter().rev() {
            if *i + span <= now {
                break;
            }
            total.add(*c);
        }
        total
    }
}

/// The two alert kinds of the workbook's multi-window, multi-burn-rate alerting.
const PAGE: (Duration, Duration, f64) = (Duration::from_secs(3600), Duration::from_secs(300), 14.4);
const TICKET: (Duration, Duration, f64) = (Duration::from_secs(6 * 3600), Duration::from_secs(1800), 6.0);
const BUDGET_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// One objective's state, as `GET /api/v1/ops/slo` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub objective: Objective,
    /// Requests over the budget window (30 days, or since this node started).
    pub window: Count,
    /// The fraction of the window's error budget not yet spent (negative: overspent).
    pub budget_remaining: f64,
    /// How fast the budget burns over each alert window (1 = exactly on budget).
    pub burn_rate: BurnRates,
    /// `page` when the 1 h and 5 m windows both burn faster than 14.4×, `ticket` when the 6 h
    /// and 30 m both burn faster than 6×; empty when healthy.
    pub alerts: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BurnRates {
    #[serde(rename = "5m")]
    pub m5: f64,
    #[serde(rename = "30m")]
    pub m30: f64,
    #[serde(rename = "1h")]
    pub h1: f64,
    #[serde(rename = "6h")]
    pub h6: f64,
}

struct Tracked {
    objective: Objective,
    minutes: Series,
    hours: Series,
}

/// The objectives of this node and their recent history.
pub struct Slos {
    started: Instant,
    tracked: Mutex<Vec<Tracked>>,
}

impl Slos {
    pub fn new(objectives: Vec<Objective>) -> Slos {
        let tracked = objectives
            .into_iter()
            .map(|objective| Tracked {
                objective,
                minutes: Series::new(Duration::from_secs(60), 6 * 60 + 1),
                hours: Series::new(Duration::from_secs(3600), 30 * 24 + 1),
            })
            .collect();
        Slos { started: Instant::now(), tracked: Mutex::new(tracked) }
    }

    /// Records one answered request of `journey`.
    pub fn record(&self, journey: Journey, status: u16, latency: Duration) {
        let at = self.started.elapsed();
        let mut tracked = self.tracked.lock().expect("slo lock");
        for t in tracked.iter_mut().filter(|t| t.objective.journey == journey) {
            let c = Count { good: u64::from(t.objective.good(status, latency)), total: 1 };
            t.minutes.add(at, c);
            t.hours.add(at, c);
        }
    }

    /// Every objective's state now.
    pub fn status(&self) -> Vec<Status> {
        let at = self.started.elapsed();
        let tracked = self.tracked.lock().expect("slo lock");
        tracked
            .iter()
            .map(|t| {
                let budget = (1.0 - t.objective.target).max(f64::EPSILON);
                let burn = |w: Duration| t.minutes.sum(at, w).bad_ratio() / budget;
                let burn_rate = BurnRates {
                    m5: burn(Duration::from_secs(300)),
                    m30: burn(Duration::from_secs(1800)),
                    h1: burn(Duration::from_secs(3600)),
                    h6: burn(Duration::from_secs(6 * 3600)),
                };
                let mut alerts = Vec::new();
                let firing = |(long, short, rate): (Duration, Duration, f64)| burn(long) > rate && burn(short) > rate;
                if firing(PAGE) {
                    alerts.push("page");
                }
                if firing(TICKET) {
                    alerts.push("ticket");
                }
                let window = t.hours.sum(at, BUDGET_WINDOW);
                Status {
                    objective: t.objective.clone(),
                    window,
                    budget_remaining: 1.0 - window.bad_ratio() / budget,
                    burn_rate,
                    alerts,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    const OK: u16 = 200;

    #[test]
    fn requests_belong_to_the_journeys_shoppers_take() {
        assert_eq!(Journey::of(&Method::GET, "/chai/product/1"), Some(Journey::Storefront));
        assert_eq!(Journey::of(&Method::GET, "/api/v1/storefront/chai/products"), Some(Journey::Storefront));
        assert_eq!(Journey::of(&Method::POST, "/chai/checkout"), Some(Journey::Checkout));
        assert_eq!(Journey::of(&Method::POST, "/api/v1/storefront/chai/carts/1/checkout"), Some(Journey::Checkout));
        assert_eq!(Journey::of(&Method::GET, "/dashboard"), None);
        assert_eq!(Journey::of(&Method::POST, "/api/v1/stores/1/products"), None);
        assert_eq!(Journey::of(&Method::GET, "/metrics"), None);
    }

    fn find<'a>(s: &'a [Status], name: &str) -> &'a Status {
        s.iter().find(|s| s.objective.name == name).expect("a default objective")
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_node_burns_nothing_and_keeps_its_budget() {
        let slos = Slos::new(Objective::defaults());
        for _ in 0..1000 {
            slos.record(Journey::Storefront, OK, Duration::from_millis(20));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let s = slos.status();
        let a = find(&s, "storefront-availability");
        assert_eq!(a.window, Count { good: 1000, total: 1000 });
        assert_eq!(a.budget_remaining, 1.0);
        assert!(a.alerts.is_empty());
        assert_eq!(find(&s, "checkout-availability").window.total, 0, "no checkout yet");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_pages_at_once_and_a_slow_leak_only_opens_a_ticket() {
        let slos = Slos::new(Objective::defaults());
        // An hour of healthy traffic, one request a second.
        for _ in 0..3600 {
            slos.record(Journey::Checkout, OK, Duration::from_millis(50));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // Five minutes of 503s: 300 of the last hour's 3,900 requests bad is 7.7 %, 77× a
        // 0.1 % budget over 1 h, and 100 % over the last 5 m.
        for _ in 0..300 {
            slos.record(Journey::Checkout, 503, Duration::from_millis(5));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let s = slos.status();
        let a = find(&s, "checkout-availability");
        assert!(a.burn_rate.m5 > 14.4 && a.burn_rate.h1 > 14.4, "{:?}", a.burn_rate);
        assert_eq!(a.alerts, vec!["page", "ticket"]);
        assert!(a.budget_remaining < 0.0, "300 bad of 3,900 is far over a 0.1 % budget");
        assert!(find(&s, "checkout-latency").alerts.is_empty(), "fast failures are not slow");

        // Recovery: the 5 m window clears first, so the page stops while the hour still burns.
        for _ in 0..600 {
            slos.record(Journey::Checkout, OK, Duration::from_millis(50));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let a = find(&slos.status(), "checkout-availability").clone();
        assert!(a.burn_rate.h1 > 14.4 && a.burn_rate.m5 == 0.0);
        assert!(!a.alerts.contains(&"page"));

        // A slow leak: 0.5 % of storefront reads failing for 6 h is 10× a 0.05 % budget: a
        // ticket, not a page.
        let slos = Slos::new(Objective::defaults());
        for i in 0..6 * 3600 {
            let status = if i % 200 == 0 { 500 } else { OK };
            slos.record(Journey::Storefront, status, Duration::from_millis(20));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let a = find(&slos.status(), "storefront-availability").clone();
        assert!(a.burn_rate.h6 > 6.0 && a.burn_rate.h6 < 14.4, "{:?}", a.burn_rate);
        assert_eq!(a.alerts, vec!["ticket"]);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_objectives_count_slow_answers_not_errors() {
        let slos = Slos::new(Objective::defaults());
        for i in 0..100 {
            let latency = if i < 5 { Duration::from_millis(150) } else { Duration::from_millis(30) };
            slos.record(Journey::Storefront, OK, latency);
        }
        let s = slos.status();
        assert_eq!(find(&s, "storefront-latency").window, Count { good: 95, total: 100 });
        assert_eq!(find(&s, "storefront-availability").window, Count { good: 100, total: 100 });
        // 5 % slow against a 1 % budget: five times the budget spent.
        assert!((find(&s, "storefront-latency").budget_remaining - -4.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn old_minutes_leave_the_alert_windows_and_old_hours_the_budget() {
        let slos = Slos::new(Objective::defaults());
        slos.record(Journey::Checkout, 503, Duration::ZERO);
        tokio::time::advance(Duration::from_secs(7 * 3600)).await;
        slos.record(Journey::Checkout, OK, Duration::ZERO);
        let a = find(&slos.status(), "checkout-availability").clone();
        assert_eq!(a.burn_rate.h6, 0.0, "the failure is older than every alert window");
        assert_eq!(a.window, Count { good: 1, total: 2 }, "but still in the budget's 30 days");
        tokio::time::advance(BUDGET_WINDOW).await;
        slos.record(Journey::Checkout, OK, Duration::ZERO);
        let window = find(&slos.status(), "checkout-availability").window;
        assert_eq!(window, Count { good: 1, total: 1 }, "both earlier requests left the 30 days");
    }
}
