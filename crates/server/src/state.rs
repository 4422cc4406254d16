//! What every handler can reach: storage, the clock, the code notifier, limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kirana_domain::Clock;
use kirana_storage::{OtpPolicy, Storage};

use crate::auth::Notifier;

/// Settings of the HTTP layer, filled from the operator's configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Key for hashing sign-in codes.
    pub otp_key: [u8; 32],
    pub otp: OtpPolicy,
    pub session_ttl_secs: i64,
    /// Believe `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_proxy: bool,
    /// Sign-in codes one IP may request per 10 minutes.
    pub otp_per_ip: u32,
    /// Longest a request may take before it is answered with 503.
    pub request_timeout: Duration,
    /// Requests per second one store may have on this node (resolved requests; cached pages
    /// answered from memory do not count), and its burst.
    pub store_rps: u32,
    pub store_burst: u32,
    /// The adaptive concurrency limit that sheds by priority when the node is saturated.
    pub admission: crate::admission::AdmissionConfig,
    /// The objectives evaluated at `GET /api/v1/ops/slo`.
    pub objectives: Vec<crate::slo::Objective>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otp_key: [0; 32],
            otp: OtpPolicy::default(),
            session_ttl_secs: 30 * 24 * 3600,
            trust_proxy: false,
            otp_per_ip: 20,
            request_timeout: Duration::from_secs(30),
            store_rps: 500,
            store_burst: 1000,
            admission: crate::admission::AdmissionConfig::default(),
            objectives: crate::slo::Objective::defaults(),
        }
    }
}

/// What handlers share, behind one `Arc`: middleware and extractors clone the state for every
/// request, and a cached page's whole budget is a few microseconds.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Clone)]
pub struct Shared {
    pub storage: Storage,
    pub clock: Arc<dyn Clock>,
    pub notifier: Arc<dyn Notifier>,
    /// Where uploaded images are kept.
    pub media: crate::media::MediaStore,
    pub config: Arc<ServerConfig>,
    /// Per-IP limits on sign-in traffic, in memory: each node limits what it sees. The per-phone
    /// limit, which matters more, is enforced in the directory and holds across nodes.
    pub otp_limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    pub verify_limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Per-store request limits (see `limits`).
    pub store_limits: Arc<crate::limits::StoreLimits>,
    /// Admission by priority (see `admission`).
    pub admission: Arc<crate::admission::Admission>,
    /// The node's service level objectives and their recent history (see `slo`).
    pub slos: Arc<crate::slo::Slos>,
    /// Product search through this node's index, when it has one; `None` keeps the plain
    /// database title query (newest first) behind `q`.
    pub search: Option<kirana_search::ProductSearch>,
    /// The cache in front of public storefront reads (pages and the shopper API); `None` reads
    /// the database every time (tests that are not about caching).
    pub read_cache: Option<crate::read_cache::ReadCache>,
    /// Online payments: the provider, fees, holds and the payout schedule.
    pub payments: crate::payments::Payments,
    /// False once shutdown began: `/readyz` turns 503 so balancers stop sending traffic.
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(storage: Storage, clock: Arc<dyn Clock>, notifier: Arc<dyn Notifier>, config: ServerConfig) -> Self {
        let per_ten_minutes = |n: u32| {
            let n = std::num::NonZeroU32::new(n.max(1)).expect("max(1) is non-zero");
            Quota::with_period(Duration::from_secs(600) / n.get()).expect("period is non-zero").allow_burst(n)
        };
        AppState(Arc::new(Shared {
            storage,
            clock,
            notifier,
            media: crate::media::MediaStore::memory(),
            otp_limiter: Arc::new(RateLimiter::keyed(per_ten_minutes(config.otp_per_ip))),
            verify_limiter: Arc::new(RateLimiter::keyed(per_ten_minutes(config.otp_per_ip.saturating_mul(3)))),
            store_limits: Arc::new(crate::limits::StoreLimits::new(config.store_rps, config.store_burst)),
            admission: Arc::new(crate::admission::Admission::new(config.admission)),
            slos: Arc::new(crate::slo::Slos::new(config.objectives.clone())),
            config: Arc::new(config),
            ready: Arc::new(AtomicBool::new(true)),
            search: None,
            read_cache: None,
            payments: crate::payments::Payments::default(),
        }))
    }

    /// Keeps images in `media` instead of memory (the embedded default uses local files).
    pub fn with_media(mut self, media: crate::media::MediaStore) -> Self {
        Arc::make_mut(&mut self.0).media = media;
        self
    }

    /// Answers `q` on product lists through `search` (relevance order, offset cursors).
    pub fn with_search(mut self, search: kirana_search::ProductSearch) -> Self {
        Arc::make_mut(&mut self.0).search = Some(search);
        self
    }

    /// Serves public storefront reads through `cache`.
    pub fn with_read_cache(mut self, cache: crate::read_cache::ReadCache) -> Self {
        Arc::make_mut(&mut self.0).read_cache = Some(cache);
        self
    }

    /// Takes online payments through `payments`' provider.
    pub fn with_payments(mut self, payments: crate::payments::Payments) -> Self {
        Arc::make_mut(&mut self.0).payments = payments;
        self
    }

    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}
