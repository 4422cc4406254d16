//! Admission by priority when the node is saturated: an adaptive concurrency limit (AIMD on
//! latency, as Netflix's concurrency-limits does) shared by every request, with a share of it per
//! priority, so that as requests pile up browsing is shed before checkout, and merchants' work
//! before browsing. A shed request gets 503 with `Retry-After` at once, without touching
//! anything, which is what keeps the admitted ones fast.
//!
//! Why adaptive: a fixed limit is either too low for a quick node (sheds for nothing) or too high
//! for a slow database (admits a queue). The limit grows by one per limit's worth of quick
//! answers and shrinks by a tenth on a slow or failed one (at most once per `target`: answers
//! slow together are one congestion event); a request counts as slow past `target` (by default
//! the storefront's p99 objective, 100 ms, times two). It starts high (512 in flight): a burst of
//! checkouts that the database's group commit absorbs is not a reason to shed.
//!
//! Health probes and `/metrics` are never shed; edge-cache hits never get here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::AppState;

/// Who goes first when the node is full; lower is more important.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Placing an order (and the cart writes right before it), and the payment provider's
    /// callbacks that confirm one: revenue.
    Checkout,
    /// Shoppers reading the storefront and the shopper API.
    Browse,
    /// The dashboard and the merchant API.
    Merchant,
    /// Never shed: health probes, metrics, the OpenAPI document.
    Ops,
}

impl Priority {
    pub fn of(method: &Method, path: &str) -> Priority {
        match crate::metrics::route_group(path) {
            "ops" => Priority::Ops,
            "dashboard" | "merchant_api" => Priority::Merchant,
            _ if method != Method::GET && method != Method::HEAD => Priority::Checkout,
            _ => Priority::Browse,
        }
    }

    /// The part of the limit this priority may fill: checkout all of it, browsing most, merchants'
    /// work less, so each lower class meets the limit first.
    fn share(self) -> f64 {
        match self {
            Priority::Checkout | Priority::Ops => 1.0,
            Priority::Browse => 0.85,
            Priority::Merchant => 0.6,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Priority::Checkout => "checkout",
            Priority::Browse => "browse",
            Priority::Merchant => "merchant",
            Priority::Ops => "ops",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Where the limit starts, and its bounds.
    pub initial: f64,
    pub min: f64,
    pub max: f64,
    /// An answer slower than this (or a 5xx) shrinks the limit.
    pub target: Duration,
    /// How much a slow answer takes off the limit (0.9: a tenth).
    pub backoff: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self { initial: 512.0, min: 16.0, max: 4096.0, target: Duration::from_millis(200), backoff: 0.9 }
    }
}

/// The limiter. Cheap to share: one mutex held for a few arithmetic operations.
pub struct Admission {
    cfg: AdmissionConfig,
    state: Mutex<Limits>,
}

#[derive(Debug)]
struct Limits {
    limit: f64,
    inflight: usize,
    /// When the limit was last cut: answers that were slow together are one congestion event,
    /// and cut it once (per `target`), not once each.
    last_cut: Option<Instant>,
}

/// A request let in. It leaves when the ticket is dropped, counted as a failure unless
/// [`Ticket::succeeded`] said otherwise: a request whose future is dropped (a timeout, a client
/// gone) must not hold its place for ever.
pub struct Ticket {
    admission: Arc<Admission>,
    started: Instant,
    failed: bool,
}

impl Ticket {
    /// Records the answer's outcome (the limit moves when the ticket drops).
    pub fn outcome(mut self, failed: bool) {
        self.failed = failed;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.finish(self.started, self.failed);
    }
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Admission {
        Admission {
            cfg,
            state: Mutex::new(Limits { limit: cfg.initial.clamp(cfg.min, cfg.max), inflight: 0, last_cut: None }),
        }
    }

    /// Lets a request in if its priority's share of the limit has room.
    pub fn try_admit(self: &Arc<Self>, priority: Priority) -> Option<Ticket> {
        let mut s = self.state.lock().expect("admission lock");
        if priority != Priority::Ops && s.inflight as f64 >= (s.limit * priority.share()).max(1.0) {
            return None;
        }
        s.inflight += 1;
        Some(Ticket { admission: self.clone(), started: Instant::now(), failed: true })
    }

    /// A request left: moves the limit by how it went.
    fn finish(&self, started: Instant, failed: bool) {
        let slow = started.elapsed() > self.cfg.target;
        let mut s = self.state.lock().expect("admission lock");
        s.inflight = s.inflight.saturating_sub(1);
        if slow || failed {
            let now = Instant::now();
            if s.last_cut.is_none_or(|at| now >= at + self.cfg.target) {
                s.limit = (s.limit * self.cfg.backoff).max(self.cfg.min);
                s.last_cut = Some(now);
            }
        } else {
            s.limit = (s.limit + 1.0 / s.limit).min(self.cfg.max);
        }
    }

    /// The current limit and the requests in flight.
    pub fn snapshot(&self) -> (f64, usize) {
        let s = self.state.lock().expect("admission lock");
        (s.limit, s.inflight)
    }
}

/// The middleware.
pub async fn admit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let priority = Priority::of(req.method(), req.uri().path());
    let Some(ticket) = state.admission.try_admit(priority) else {
        metrics::counter!("kirana_shed_total", "priority" => priority.label()).increment(1);
        let mut res =
            crate::error::ApiError::Unavailable("the node is at capacity; retry shortly".into()).into_response();
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    let res = next.run(req).await;
    ticket.outcome(res.status() == StatusCode::SERVICE_UNAVAILABLE || res.status().is_server_error());
    let (limit, inflight) = state.admission.snapshot();
    metrics::gauge!("kirana_admission_limit").set(limit);
    metrics::gauge!("kirana_admission_inflight").set(inflight as f64);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(initial: f64) -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionConfig { initial, min: 2.0, max: 100.0, ..AdmissionConfig::default() }))
    }

    #[test]
    fn requests_are_classed_by_what_they_are_for() {
        assert_eq!(Priority::of(&Method::POST, "/api/v1/storefront/chai/checkout"), Priority::Checkout);
        assert_eq!(Priority::of(&Method::POST, "/chai/checkout"), Priority::Checkout);
        assert_eq!(Priority::of(&Method::GET, "/chai/product/1"), Priority::Browse);
        assert_eq!(Priority::of(&Method::GET, "/api/v1/storefront/chai/products"), Priority::Browse);
        assert_eq!(Priority::of(&Method::POST, "/api/v1/stores/1/products"), Priority::Merchant);
        assert_eq!(Priority::of(&Method::POST, "/api/v1/payments/webhooks/testgw"), Priority::Checkout);
        assert_eq!(Priority::of(&Method::GET, "/dashboard"), Priority::Merchant);
        assert_eq!(Priority::of(&Method::GET, "/readyz"), Priority::Ops);
    }

    #[test]
    fn when_full_merchants_are_shed_first_then_browsing_and_checkout_last() {
        let a = admission(10.0);
        let mut held: Vec<Ticket> = Vec::new();
        // Six in flight: merchants' share (6 of 10) is full, the others have room.
        for _ in 0..6 {
            held.push(a.try_admit(Priority::Checkout).unwrap());
        }
        assert!(a.try_admit(Priority::Merchant).is_none());
        held.push(a.try_admit(Priority::Browse).unwrap());
        held.push(a.try_admit(Priority::Browse).unwrap());
        // Eight and a half is browsing's share.
        held.push(a.try_admit(Priority::Browse).unwrap());
        assert!(a.try_admit(Priority::Browse).is_none());
        held.push(a.try_admit(Priority::Checkout).unwrap());
        assert!(a.try_admit(Priority::Checkout).is_none(), "the limit itself");
        held.push(a.try_admit(Priority::Ops).expect("probes always get in"));
        assert_eq!(a.snapshot().1, 11);
        for t in held {
            t.outcome(false);
        }
        assert_eq!(a.snapshot().1, 0);
        assert!(a.try_admit(Priority::Merchant).is_some(), "room again");
    }

    #[tokio::test(start_paused = true)]
    async fn quick_answers_raise_the_limit_and_slow_or_failed_ones_cut_it() {
        let a = admission(10.0);
        for _ in 0..100 {
            a.try_admit(Priority::Browse).unwrap().outcome(false);
        }
        let grown = a.snapshot().0;
        // +1/L per quick answer is +1 per limit's worth of answers: L² grows by ~2 per answer.
        assert!((grown - 300f64.sqrt()).abs() < 0.1, "additive increase: {grown}");

        let t = a.try_admit(Priority::Browse).unwrap();
        tokio::time::advance(Duration::from_millis(250)).await;
        t.outcome(false);
        assert!((a.snapshot().0 - grown * 0.9).abs() < 1e-9, "a slow answer takes a tenth off");
        a.try_admit(Priority::Browse).unwrap().outcome(true);
        assert!((a.snapshot().0 - grown * 0.9).abs() < 1e-9, "a failure at the same moment is the same event");
        tokio::time::advance(Duration::from_millis(200)).await;
        a.try_admit(Priority::Browse).unwrap().outcome(true);
        assert!((a.snapshot().0 - grown * 0.81).abs() < 1e-9, "a later failure cuts again");
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(200)).await;
            a.try_admit(Priority::Checkout).unwrap().outcome(true);
        }
        assert_eq!(a.snapshot().0, 2.0, "never below the floor");
        // A request whose future was dropped leaves too, as a failure.
        let dropped = a.try_admit(Priority::Browse).unwrap();
        assert_eq!(a.snapshot().1, 1);
        drop(dropped);
        assert_eq!(a.snapshot(), (2.0, 0));
    }
}
