//! Delivering events to merchants' webhook endpoints: signed, retried, logged.
//!
//! The `webhooks` consumer queues one delivery per (endpoint, event) in the store's shard; this
//! worker sends them. It must never let one merchant's endpoint hurt another's, so:
//! - every request has a connect timeout and a total timeout, and redirects are not followed;
//! - each endpoint has a few request slots of its own ([`WebhookConfig::per_endpoint`]) and all
//!   of them share a global bound ([`WebhookConfig::concurrency`]): an endpoint that hangs fills
//!   only its own slots, and the due query leaves busy endpoints out, so their backlog cannot
//!   crowd out anyone else's deliveries;
//! - a delivery is leased while in flight (its `next_attempt_at` pushed past the timeout), so
//!   neither the next poll nor another node sends it twice; if this process dies mid-request,
//!   the lease runs out and it is sent again (delivery is at least once: receivers deduplicate
//!   by `Kirana-Event-Id`);
//! - a failed attempt (no answer, or anything but 2xx) is retried with exponential backoff and
//!   full jitter (10 s doubling to at most an hour, by default) until 24 h after the delivery
//!   was queued, with a last try at the 24 h mark; then it is `failed`;
//! - an endpoint that has failed every attempt for 24 h (no 2xx since its first failure in that
//!   run) is disabled with a reason, its queued deliveries fail at once, nothing more is queued
//!   for it, and its merchant is told through the notifications queue. One day matches the
//!   retry window: by then the oldest delivery has used up all of its tries, so disabling loses
//!   nothing the retries would have saved. A count of failures would punish busy stores for the
//!   same outage that a quiet store survives.
//! - each host (`host:port`) has a circuit breaker: after a few transport failures in a row
//!   (connection refused, reset, no answer in time) its endpoints are left alone for a cool-off,
//!   then one delivery probes it. A host that is down costs one failed attempt per cool-off, not
//!   one per queued delivery, and its deliveries wait without using up their tries. An HTTP
//!   answer, even a 500, is the endpoint's own failure and never opens its host's breaker: many
//!   merchants may share a host, and one failing app must not hold back the others.
//! - requests go only to public addresses, checked after DNS resolution and for literal IPs,
//!   unless [`WebhookConfig::allow_private_targets`] says otherwise (development, tests).
//!
//! Each request is `POST` with the event as its JSON body and these headers:
//! `Kirana-Event-Id`, `Kirana-Event-Type`, `Kirana-Timestamp` (Unix seconds) and
//! `Kirana-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`, keyed with the whole
//! `whsec_…` secret shown when the endpoint was created. [`verify`] is what a receiver runs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hmac::{Hmac, Mac};
use kirana_domain::{Clock, Timestamp};
use kirana_resilience::{Breaker, BreakerState, Breakers, Failure};
use kirana_storage::webhooks::{host_ip, is_public};
use kirana_storage::{AttemptRecord, DeliveryKey, DueDelivery, EndpointId, Outcome, Recorded, Storage};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

pub const EVENT_ID_HEADER: &str = "Kirana-Event-Id";
pub const EVENT_TYPE_HEADER: &str = "Kirana-Event-Type";
pub const TIMESTAMP_HEADER: &str = "Kirana-Timestamp";
pub const SIGNATURE_HEADER: &str = "Kirana-Signature";

/// How far a receiver should let `Kirana-Timestamp` stray from its own clock (replay window).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// How the worker delivers.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How long an idle worker waits before looking for due deliveries again.
    pub poll: Duration,
    /// Due deliveries read per shard per look.
    pub batch: u32,
    /// The whole request, from connecting to the last byte of the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests in flight to one endpoint at most.
    pub per_endpoint: usize,
    /// Requests in flight in all at most.
    pub concurrency: usize,
    /// The first retry waits up to this long; each later one up to twice the previous bound…
    pub backoff_base: Duration,
    /// …but never more than this.
    pub backoff_max: Duration,
    /// A delivery is tried until this long after it was queued.
    pub retry_for: Duration,
    /// An endpoint failing every attempt for this long is disabled.
    pub disable_after: Duration,
    /// Transport failures in a row that open a host's breaker…
    pub host_breaker_threshold: u32,
    /// …and how long it then leaves the host alone before one delivery probes it.
    pub host_breaker_cool_off: Duration,
    /// Send to loopback and private addresses too. Off in production: a merchant must not be
    /// able to aim kirana at its own network (cloud metadata, admin ports). On for development
    /// and tests, whose receivers listen on 127.0.0.1.
    pub allow_private_targets: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            poll: Duration::from_millis(500),
            batch: 200,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            per_endpoint: 2,
            concurrency: 64,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
            retry_for: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(24 * 3600),
            host_breaker_threshold: 5,
            host_breaker_cool_off: Duration::from_secs(30),
            allow_private_targets: false,
        }
    }
}

impl WebhookConfig {
    /// The wait before retry number `attempt` (1 for the first retry): full jitter, a random
    /// wait up to `base · 2^(attempt-1)` capped at `backoff_max`, so the retries of many
    /// deliveries that failed together (one endpoint's outage) spread out instead of
    /// stampeding it when it comes back.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let bound = self.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.backoff_max);
        Duration::from_millis(rand::rng().random_range(0..=bound.as_millis() as u64))
    }

    /// What follows a failed attempt made at `now`: a retry within the window (the last one at
    /// its very end), or giving up once the window is over.
    pub fn after_failure(&self, attempts_before: u32, created_at: Timestamp, now: Timestamp) -> Outcome {
        let deadline = created_at.plus_millis(self.retry_for.as_millis() as i64);
        if now >= deadline {
            return Outcome::GiveUp;
        }
        let wait = self.backoff(attempts_before + 1).as_millis() as i64;
        Outcome::RetryAt(now.plus_millis(wait).min(deadline))
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `Kirana-Signature` value for a body sent at `timestamp` (Unix seconds):
/// `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` keyed with the whole secret.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    kirana_domain::hex::push(&mut out, &tag);
    out
}

/// Why a received webhook was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the Kirana-Timestamp header is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now; refusing a possible replay")]
    Stale(i64),
    #[error("the Kirana-Signature header has no v1 signature")]
    NoSignature,
    #[error("no signature matches the body")]
    Mismatch,
}

/// Checks a received webhook, as a receiver should: the signature over exactly the bytes
/// received (before any JSON parsing), in constant time, and the timestamp within `tolerance`
/// seconds of `now` (Unix seconds) so a captured request cannot be replayed later. The header
/// may carry several `v1=` signatures separated by commas; one match is enough.
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > tolerance {
        return Err(VerifyError::Stale(now - ts));
    }
    let mut any = false;
    for candidate in signature.split(',').filter_map(|s| s.trim().strip_prefix("v1=")) {
        any = true;
        if let Some(tag) = unhex(candidate)
            && mac(secret, ts, body).verify_slice(&tag).is_ok()
        {
            return Ok(());
        }
    }
    Err(if any { VerifyError::Mismatch } else { VerifyError::NoSignature })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Resolves names as usual, then keeps only public addresses: an endpoint's host must not
/// lead into kirana's own network, whatever its DNS says.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} does not resolve to a public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The worker's state: its HTTP client and the slots in use. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    clock: Arc<dyn Clock>,
    cfg: WebhookConfig,
    client: reqwest::Client,
    /// Requests in flight, all endpoints together: bounds sockets and memory.
    permits: Arc<Semaphore>,
    /// Requests in flight per endpoint: what keeps a slow endpoint in its own lane.
    busy: Mutex<HashMap<EndpointId, usize>>,
    /// Signalled whenever a request is done (recorded), so a freed slot is refilled at once.
    finished: Notify,
    /// One breaker per host.
    hosts: Breakers,
    /// Endpoints seen behind an open host breaker: the due query leaves them out until it ends.
    held: Mutex<HashMap<EndpointId, Arc<Breaker>>>,
}

/// One request slot: a global permit and a place in its endpoint's lane, given back on drop.
struct Slot {
    inner: Arc<Inner>,
    endpoint: EndpointId,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut busy = self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = busy.get_mut(&self.endpoint) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(&self.endpoint);
                }
            }
        }
        self.inner.finished.notify_waiters();
    }
}

/// How many times one look at a shard re-reads its due deliveries after the page was full.
const ROUNDS_PER_SHARD: usize = 8;

/// How much longer than the request timeout a lease lasts (time to record the outcome).
const LEASE_SLACK: Duration = Duration::from_secs(30);

/// The start of an answer kept for the log, to show the merchant what their endpoint said.
const SNIPPET_BYTES: usize = 512;

impl Deliverer {
    pub fn new(storage: Storage, clock: Arc<dyn Clock>, cfg: WebhookConfig) -> Result<Deliverer, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            // A redirect could lead anywhere, including past the address check; a moved
            // endpoint is the merchant's to update.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kirana-webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(cfg.per_endpoint.max(1));
        if !cfg.allow_private_targets {
            builder = builder.dns_resolver(PublicOnly);
        }
        let client = builder.build().map_err(|e| format!("could not build the webhook HTTP client: {e}"))?;
        let hosts = Breakers::new("webhook", cfg.host_breaker_threshold, cfg.host_breaker_cool_off);
        Ok(Deliverer {
            inner: Arc::new(Inner {
                storage,
                clock,
                permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
                cfg,
                client,
                busy: Mutex::new(HashMap::new()),
                finished: Notify::new(),
                hosts,
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner).values().sum()
    }

    /// Starts sending what is due on every shard, as far as free slots allow, and returns how
    /// many requests it started; they finish (and are recorded) in the background. A shard that
    /// cannot be read is logged and skipped: the others still deliver.
    pub async fn dispatch_due(&self) -> usize {
        let mut started = 0;
        for (index, shard) in self.inner.storage.all_shards().enumerate() {
            match self.dispatch_shard(index, shard.webhooks()).await {
                Ok(n) => started += n,
                Err(e) => tracing::error!(shard = index, error = %e, "could not read due webhook deliveries"),
            }
        }
        // Once per look, not per round: it walks every host's breaker to set the gauge.
        self.inner.hosts.open();
        started
    }

    async fn dispatch_shard(
        &self,
        index: usize,
        hooks: &dyn kirana_storage::Webhooks,
    ) -> kirana_storage::Result<usize> {
        let inner = &self.inner;
        let mut started = 0;
        for _ in 0..ROUNDS_PER_SHARD {
            if inner.permits.available_permits() == 0 {
                break;
            }
            let now = inner.clock.now();
            let mut skip = self.saturated();
            skip.extend(self.held_back());
            let due = hooks.due_webhook_deliveries(now, inner.cfg.batch, &skip).await?;
            let full_page = due.len() >= inner.cfg.batch as usize;
            let mut picked = Vec::new();
            for d in due {
                let breaker = inner.hosts.get(&host_key(&d.url));
                if !breaker.allow() {
                    inner.held.lock().unwrap_or_else(PoisonError::into_inner).insert(d.key.endpoint_id, breaker);
                    continue;
                }
                if let Some(slot) = self.slot(d.key.endpoint_id) {
                    picked.push((d, slot, breaker));
                } else if inner.permits.available_permits() == 0 {
                    break;
                }
            }
            if !picked.is_empty() {
                let keys = picked.iter().map(|(d, _, _)| d.key).collect();
                let until = now.plus_millis((inner.cfg.timeout + LEASE_SLACK).as_millis() as i64);
                let taken: HashSet<DeliveryKey> =
                    hooks.claim_webhook_deliveries(keys, now, until).await?.into_iter().collect();
                for (d, slot, breaker) in picked {
                    // One not taken was sent or finished elsewhere meanwhile; its slot frees here.
                    if taken.contains(&d.key) {
                        started += 1;
                        let inner = inner.clone();
                        tokio::spawn(async move {
                            deliver(&inner, index, d, &breaker).await;
                            drop(slot);
                        });
                    }
                }
            }
            // A short page held everything due; a full one may hide more behind the endpoints
            // that just filled up, which the next read leaves out.
            if !full_page {
                break;
            }
        }
        Ok(started)
    }

    /// Endpoints whose host's breaker is open (not merely probing); forgets those whose host
    /// has recovered.
    fn held_back(&self) -> Vec<EndpointId> {
        let mut held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|_, b| b.state() != BreakerState::Closed);
        held.iter().filter(|(_, b)| b.open_for().is_some()).map(|(e, _)| *e).collect()
    }

    /// Hosts whose breaker is open or probing now.
    pub fn hosts_open(&self) -> Vec<String> {
        self.inner.hosts.open()
    }

    /// Endpoints with every slot in use.
    fn saturated(&self) -> Vec<EndpointId> {
        let busy = self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner);
        busy.iter().filter(|(_, n)| **n >= self.inner.cfg.per_endpoint.max(1)).map(|(e, _)| *e).collect()
    }

    /// A slot for a request to `endpoint`, if its lane and the global bound have room.
    fn slot(&self, endpoint: EndpointId) -> Option<Slot> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let n = busy.entry(endpoint).or_insert(0);
        if *n >= self.inner.cfg.per_endpoint.max(1) {
            return None;
        }
        let permit = match self.inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if *n == 0 {
                    busy.remove(&endpoint);
                }
                return None;
            }
        };
        *n += 1;
        Some(Slot { inner: self.inner.clone(), endpoint, _permit: permit })
    }

    /// Waits until no request is in flight.
    pub async fn idle(&self) {
        loop {
            let done = self.inner.finished.notified();
            if self.in_flight() == 0 {
                return;
            }
            done.await;
        }
    }

    /// Sends everything due now, as many at a time as the slots allow, and waits until every
    /// outcome is recorded and nothing due is left: the worker's work at one instant, for tests
    /// and tools that drive the clock themselves. Returns how many requests were sent.
    pub async fn deliver_due_once(&self) -> usize {
        let mut sent = 0;
        loop {
            let n = self.dispatch_due().await;
            if n == 0 && self.in_flight() == 0 {
                return sent;
            }
            sent += n;
            self.idle().await;
        }
    }
}

/// The breaker's key for an endpoint URL: its host and port.
fn host_key(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}:{}", u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        Err(_) => String::new(),
    }
}

/// Sends one delivery, tells its host's breaker how the host did, and records how it went.
async fn deliver(inner: &Inner, shard: usize, d: DueDelivery, breaker: &Breaker) {
    let started = std::time::Instant::now();
    let answer = send(inner, &d).await;
    match &answer {
        Ok(_) => breaker.success(),
        Err(e) if e.host_fault => {
            if breaker.failure(Failure::Error) {
                tracing::warn!(host = %host_key(&d.url), error = %e.message, "webhook host unreachable; its deliveries wait");
            }
        }
        // Refused before sending (a private address, an unusable URL): says nothing of the host.
        Err(_) => {}
    }
    let answer = answer.map_err(|e| e.message);
    let duration_ms = started.elapsed().as_millis() as i64;
    let at = inner.clock.now();
    let (status_code, error) = match &answer {
        Ok((code, _)) if (200..300).contains(code) => (Some(*code), None),
        Ok((code, snippet)) => {
            let why = if (300..400).contains(code) { " (redirects are not followed)" } else { "" };
            let said = if snippet.is_empty() { String::new() } else { format!(": {snippet}") };
            (Some(*code), Some(format!("HTTP {code}{why}{said}")))
        }
        Err(e) => (None, Some(e.clone())),
    };
    let outcome = match error {
        None => Outcome::Delivered,
        Some(_) => inner.cfg.after_failure(d.attempts, d.created_at, at),
    };
    let record = AttemptRecord {
        key: d.key,
        at,
        duration_ms,
        status_code,
        error: error.clone(),
        outcome,
        disable_after_ms: inner.cfg.disable_after.as_millis() as i64,
    };
    let (store_id, endpoint_id, event_id) = (d.key.store_id, d.key.endpoint_id, d.key.event_id);
    match record_where_it_lives(inner, shard, record).await {
        Ok(Recorded::Delivered) => {
            tracing::debug!(%store_id, %endpoint_id, %event_id, attempt = d.attempts + 1, "webhook delivered")
        }
        Ok(Recorded::WillRetry) => tracing::info!(%store_id, %endpoint_id, %event_id, attempt = d.attempts + 1,
            error = error.as_deref().unwrap_or(""), "webhook failed; will retry"),
        Ok(Recorded::GaveUp) => tracing::warn!(%store_id, %endpoint_id, %event_id, attempts = d.attempts + 1,
            error = error.as_deref().unwrap_or(""), "webhook failed for good"),
        Ok(Recorded::Disabled(reason)) => {
            tracing::warn!(%store_id, %endpoint_id, %reason, "webhook endpoint disabled")
        }
        Ok(Recorded::Gone) => tracing::debug!(%store_id, %endpoint_id, %event_id, "webhook delivery gone meanwhile"),
        // The lease runs out and the delivery is sent again: at least once, never lost.
        Err(e) => tracing::error!(%store_id, %endpoint_id, %event_id, error = %e,
            "could not record a webhook attempt; it will be sent again"),
    }
}

/// Records an attempt on the shard that holds the store now: the one the delivery was read
/// from, or, if the store moved meanwhile, its new one (once the move has flipped), where the
/// move took the delivery and its claim. Tries for half a minute; past that the claim runs out
/// and the delivery is sent again (receivers deduplicate by event id).
async fn record_where_it_lives(inner: &Inner, shard: usize, record: AttemptRecord) -> kirana_storage::Result<Recorded> {
    let mut on = shard;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let Some(hooks) = inner.storage.all_shards().nth(on).map(|s| s.webhooks()) else {
            return Err(kirana_storage::StorageError::Internal(format!("there is no shard {on}")));
        };
        match hooks.record_webhook_attempt(record.clone()).await {
            Err(kirana_storage::StorageError::Moved { .. }) if tokio::time::Instant::now() < deadline => {
                if let Ok(home) = inner.storage.home_of(record.key.store_id).await {
                    on = home.0 as usize;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Why a delivery got no answer; `host_fault` when the host did not answer (not when kirana
/// refused to send).
struct SendError {
    message: String,
    host_fault: bool,
}

impl SendError {
    fn refused(message: String) -> Self {
        SendError { message, host_fault: false }
    }
}

/// POSTs the event; the answer's status and the start of its body, or why there was none.
async fn send(inner: &Inner, d: &DueDelivery) -> Result<(u16, String), SendError> {
    let url =
        reqwest::Url::parse(&d.url).map_err(|e| SendError::refused(format!("the endpoint URL is not usable: {e}")))?;
    // Literal addresses skip DNS, so they are checked here; names are checked by the resolver.
    if !inner.cfg.allow_private_targets
        && let Some(ip) = url.host_str().and_then(host_ip)
        && !is_public(ip)
    {
        return Err(SendError::refused(format!("refused: {ip} is not a public address")));
    }
    let timestamp = inner.clock.now().millis().div_euclid(1000);
    let body = d.payload.clone().into_bytes();
    let signature = sign(&d.secret, timestamp, &body);
    let request = inner
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, d.key.event_id.to_string())
        .header(EVENT_TYPE_HEADER, &d.event_type)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body);
    let mut response = request.send().await.map_err(|e| {
        let message = describe(&e, &inner.cfg);
        // A name resolving only to private addresses is refused by our resolver, not the host.
        let host_fault = !message.contains("public address");
        SendError { message, host_fault }
    })?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok((status, String::new()));
    }
    let mut head = Vec::new();
    while head.len() < SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            _ => break,
        }
    }
    head.truncate(SNIPPET_BYTES);
    let snippet = String::from_utf8_lossy(&head).split_whitespace().collect::<Vec<_>>().join(" ");
    Ok((status, snippet.chars().take(200).collect()))
}

/// A transport error in words a merchant can act on, with its causes.
fn describe(e: &reqwest::Error, cfg: &WebhookConfig) -> String {
    if e.is_timeout() {
        return format!("timed out after {} ms", cfg.timeout.as_millis());
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    let head = if e.is_connect() { "could not connect" } else { "request failed" };
    if causes.is_empty() { head.to_string() } else { format!("{head}: {}", causes.join(": ")) }
}

/// The worker: sends what is due, refills slots as requests finish, looks again every
/// `cfg.poll` when idle, until `shutdown`; then lets requests in flight finish and be recorded
/// (each is bounded by the timeout).
pub async fn run(storage: Storage, clock: Arc<dyn Clock>, cfg: WebhookConfig, mut shutdown: watch::Receiver<bool>) {
    let poll = cfg.poll;
    let drain = cfg.timeout + Duration::from_secs(5);
    let deliverer = match Deliverer::new(storage, clock, cfg) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the webhook worker cannot start");
            return;
        }
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Registered before looking, so a request finishing meanwhile still wakes the loop.
        let finished = deliverer.inner.finished.notified();
        let started = deliverer.dispatch_due().await;
        if started > 0 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = finished => {}
            changed = shutdown.changed() => if changed.is_err() { break },
        }
    }
    if tokio::time::timeout(drain, deliverer.idle()).await.is_err() {
        tracing::warn!(in_flight = deliverer.in_flight(), "webhook requests still in flight at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_tampering_does_not() {
        let secret = "whsec_test";
        let body = br#"{"id":"x"}"#;
        let sig = sign(secret, 1_700_000_000, body);
        assert!(sig.starts_with("v1=") && sig.len() == 67);
        assert_eq!(verify(secret, "1700000000", &sig, body, 1_700_000_010, 300), Ok(()));
        assert_eq!(verify(secret, "1700000000", &format!("v1=00, {sig}"), body, 1_700_000_000, 300), Ok(()));
        assert_eq!(
            verify(secret, "1700000000", &sig, br#"{"id":"y"}"#, 1_700_000_000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(verify("whsec_other", "1700000000", &sig, body, 1_700_000_000, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(secret, "1700000001", &sig, body, 1_700_000_000, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(secret, "1700000000", &sig, body, 1_700_001_000, 300), Err(VerifyError::Stale(1000)));
        assert_eq!(verify(secret, "soon", &sig, body, 1_700_000_000, 300), Err(VerifyError::BadTimestamp));
        assert_eq!(verify(secret, "1700000000", "t=1", body, 1_700_000_000, 300), Err(VerifyError::NoSignature));
    }

    #[test]
    fn backoff_doubles_with_full_jitter_up_to_the_cap() {
        let cfg = WebhookConfig::default();
        for attempt in 1..40 {
            let bound = (10u64 << (attempt - 1).min(20)).min(3600);
            for _ in 0..20 {
                assert!(cfg.backoff(attempt) <= Duration::from_secs(bound), "attempt {attempt}");
            }
        }
        let spread: HashSet<u128> = (0..50).map(|_| cfg.backoff(12).as_millis()).collect();
        assert!(spread.len() > 10, "retries are spread out, not synchronised");
    }

    #[test]
    fn retries_stop_at_the_end_of_the_window_with_a_last_try_there() {
        let cfg = WebhookConfig::default();
        let created = Timestamp::from_millis(0);
        let day = 24 * 3_600_000;
        match cfg.after_failure(3, created, Timestamp::from_millis(1000)) {
            Outcome::RetryAt(t) => assert!(t.millis() >= 1000 && t.millis() <= 1000 + 80_000),
            other => panic!("{other:?}"),
        }
        match cfg.after_failure(30, created, Timestamp::from_millis(day - 1000)) {
            Outcome::RetryAt(t) => assert!(t.millis() <= day),
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.after_failure(31, created, Timestamp::from_millis(day)), Outcome::GiveUp);
    }
}
