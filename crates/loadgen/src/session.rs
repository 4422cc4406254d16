//! One visit to the platform, spoken over HTTP the way a shopper's or merchant's client would:
//! requests in a session depend on the answers before them (a product page needs an id from a
//! list, a checkout needs the cart's token). Each request is timed and recorded under its type;
//! a refusal the workload expects (stock ran out) is `rejected`, anything else that is not 2xx,
//! a transport error or a timeout is an error and ends the session, as it would for a person.
//! A session issues no request once its phase has ended. This module decides nothing about
//! rates or mixes: the plan comes from `workload`, the start time from `driver`.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::catalog::{Catalog, ProductCard};
use crate::driver::Deadline;
use crate::manifest::Manifest;
use crate::stats::{Outcome, Recorder, RequestKind, Timeline};
use crate::workload::{Session, ShopperPlan};

/// Products asked for per list page: a phone's first screen.
const PAGE: u32 = 20;
const CART_TOKEN: &str = "x-cart-token";
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const INSUFFICIENT_STOCK: &str = "/insufficient-stock";

/// What every session of a run shares.
pub(crate) struct Shared {
    /// One pooled client for the whole run: connections are reused, as browsers behind a few
    /// CDN edges would, and the generator does not spend its CPU on handshakes.
    pub client: reqwest::Client,
    /// The deployment's base URL, without a trailing slash.
    pub target: String,
    pub manifest: Manifest,
    /// The manifest's search terms, URL-encoded once.
    pub search_queries: Vec<String>,
    pub catalog: Catalog,
    /// Random per run and part of every idempotency key: a run repeated with the same `--seed`
    /// draws the same sessions, but must not replay the earlier run's checkouts.
    pub run_nonce: u64,
}

impl Shared {
    pub fn new(client: reqwest::Client, target: &str, manifest: Manifest) -> Shared {
        let search_queries =
            manifest.search_terms.iter().map(|t| form_urlencoded::byte_serialize(t.as_bytes()).collect()).collect();
        Shared {
            client,
            target: target.trim_end_matches('/').to_string(),
            manifest,
            search_queries,
            catalog: Catalog::new(),
            run_nonce: rand::random(),
        }
    }

    pub(crate) fn storefront(&self, store: u64) -> String {
        format!("{}/api/v1/storefront/{}", self.target, self.manifest.slug(store))
    }

    /// The flash-sale variant: regular shoppers leave it alone so its phase starts with the
    /// manifest's stock.
    fn flash_variant(&self) -> Option<&str> {
        self.manifest.flash_sale.as_ref().map(|f| f.variant_id.as_str())
    }
}

/// A phase of the run: where its samples go, and when its sessions must stop sending.
pub(crate) struct Phase {
    pub recorder: Arc<Recorder>,
    /// More recorders that get every sample too, each keeping its own window (the quiet and
    /// contended windows of `--flash-during-browse`); empty otherwise.
    pub windows: Vec<Arc<Recorder>>,
    /// The reads second by second, when the run wants to see when its tail was made.
    pub timeline: Option<Arc<Timeline>>,
    pub end: Deadline,
}

impl Phase {
    pub fn new(recorder: Arc<Recorder>, end: Deadline) -> Phase {
        Phase { recorder, windows: Vec::new(), timeline: None, end }
    }

    fn record(&self, kind: RequestKind, at: Instant, latency: Duration, outcome: Outcome) {
        if let Some(t) = &self.timeline {
            t.record(kind, at, latency);
        }
        for w in &self.windows {
            w.record(kind, at, latency, outcome.clone());
        }
        self.recorder.record(kind, at, latency, outcome);
    }
}

/// The session ended early: an error was recorded, or the phase is over.
#[derive(Debug)]
struct Stop;

enum Answer<T> {
    Ok(T),
    /// Stock ran out: expected under load, and the session goes on without it.
    Rejected,
}

#[derive(Deserialize)]
struct Home {
    categories: Vec<IdOnly>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct ProductList {
    items: Vec<ProductCard>,
}

#[derive(Deserialize)]
struct NewCart {
    cart_id: String,
    token: String,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    detail: String,
}

/// The header a write answers with: its position, which a later read sends back to see the
/// write wherever it lands (read-your-writes across nodes and replicas).
const WRITE_TOKEN: &str = "x-kirana-write-token";

/// Sends one request and reads its whole answer: status, `Retry-After` and body. A write token
/// in the answer is kept in `token`.
async fn send(
    req: reqwest::RequestBuilder,
    token: &mut Option<HeaderValue>,
) -> Result<(StatusCode, Option<HeaderValue>, impl AsRef<[u8]>), reqwest::Error> {
    let res = req.send().await?;
    let (status, retry_after) = (res.status(), res.headers().get(RETRY_AFTER).cloned());
    if let Some(t) = res.headers().get(WRITE_TOKEN) {
        *token = Some(t.clone());
    }
    Ok((status, retry_after, res.bytes().await?))
}

/// What an answer means for the session: 2xx with the expected body is fine, a 409 for stock is
/// the expected refusal, anything else is an error.
fn judge<T, B: AsRef<[u8]>>(
    sent: Result<(StatusCode, B), reqwest::Error>,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> (Outcome, Option<Answer<T>>) {
    match sent {
        Err(e) => (Outcome::Error(describe_transport(e)), None),
        Ok((status, body)) if status.is_success() => match parse(body.as_ref()) {
            Ok(v) => (Outcome::Ok, Some(Answer::Ok(v))),
            Err(e) => (Outcome::Error(format!("HTTP {}: unexpected body: {e}", status.as_u16())), None),
        },
        Ok((status, body)) if is_insufficient_stock(status, body.as_ref()) => {
            (Outcome::Rejected, Some(Answer::Rejected))
        }
        Ok((status, body)) => (Outcome::Refused(status.as_u16(), describe_refusal(status, body.as_ref())), None),
    }
}

/// A wait told with `Retry-After` (whole seconds; 1 s when absent or a date) is honoured up to
/// this; a longer one is shortened, so a buyer still gets its tries before giving up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Added to every wait, uniform in `[0, RETRY_JITTER)`: thousands of buyers told "one second" at
/// once must not all come back in the same millisecond, which would only earn them another 429.
const RETRY_JITTER: Duration = Duration::from_millis(500);

/// How long to wait before sending again after a 429 or 503 with this `Retry-After`.
fn retry_wait<R: Rng + ?Sized>(retry_after: Option<&HeaderValue>, rng: &mut R) -> Duration {
    let told = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
        .min(MAX_RETRY_AFTER);
    told + RETRY_JITTER.mul_f64(rng.random::<f64>())
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn ignore(_: &[u8]) -> Result<(), String> {
    Ok(())
}

fn is_insufficient_stock(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::CONFLICT
        && serde_json::from_slice::<Problem>(body).is_ok_and(|p| p.kind.ends_with(INSUFFICIENT_STOCK))
}

/// A short, stable description of a refusal: similar failures must group under one sample.
fn describe_refusal(status: StatusCode, body: &[u8]) -> String {
    let what = match serde_json::from_slice::<Problem>(body) {
        Ok(p) if !p.kind.is_empty() => {
            format!("{}: {}", p.kind.rsplit('/').next().unwrap_or(&p.kind), p.detail)
        }
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    let mut message = format!("HTTP {}: {what}", status.as_u16());
    truncate(&mut message, 240);
    message
}

fn describe_transport(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    };
    // Without the URL: it carries ids, and every failure would become its own sample.
    let mut message = format!("{kind}: {}", e.without_url());
    truncate(&mut message, 240);
    message
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

struct Visit<'a> {
    shared: &'a Shared,
    phase: &'a Phase,
    /// The open-loop due time, taken by the first request: its latency runs from when it
    /// should have been sent if that is earlier than when it was (a late generator or a
    /// stalled server is charged, not hidden), else from the send (woken early by the timer
    /// slack, it is not charged for waiting for its own schedule).
    due: Option<Instant>,
    rng: SmallRng,
    /// The last write token the server gave this shopper: sent with the order-status read, so a
    /// read landing on another node (or a replica) still finds the order just placed.
    write_token: Option<HeaderValue>,
}

impl Visit<'_> {
    async fn call<T>(
        &mut self,
        kind: RequestKind,
        req: reqwest::RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Answer<T>, Stop> {
        let now = Instant::now();
        // `at` places the sample in or out of the measured window; `start` starts its clock.
        let (at, start) = match self.due.take() {
            Some(due) => (due, due.min(now)),
            None if self.phase.end.passed(now) => return Err(Stop),
            None => (now, now),
        };
        let sent = send(req, &mut self.write_token).await;
        let latency = Instant::now() - start;
        let (outcome, answer) = judge(sent.map(|(status, _, body)| (status, body)), parse);
        self.phase.record(kind, at, latency, outcome);
        answer.ok_or(Stop)
    }

    /// Like [`Visit::call`], but as a client that respects the platform's protections: a 429 or
    /// 503 is waited out (its `Retry-After` plus jitter) and the same request sent again, byte
    /// for byte (a checkout keeps its `Idempotency-Key`), until `give_up_at`. One sample is
    /// recorded per request, timed from its first send to its final answer, waits included: what
    /// the buyer lived through. Giving up is an error; the 429s and 503s seen are counted in
    /// `buyer` (they are the protections working, not errors).
    async fn persist<T>(
        &mut self,
        kind: RequestKind,
        req: reqwest::RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
        give_up_at: Instant,
        buyer: &mut FlashBuyer,
    ) -> Result<Answer<T>, Stop> {
        let start = Instant::now();
        if start >= give_up_at {
            // A buyer past the deadline sends nothing more, so the sale's end stays bounded.
            buyer.gave_up = true;
            self.phase.record(
                kind,
                start,
                Duration::ZERO,
                Outcome::Error("gave up: the --flash-give-up deadline passed".into()),
            );
            return Err(Stop);
        }
        let sent = loop {
            // Every flash request has an in-memory body, so it can always be copied.
            let attempt = req.try_clone().expect("flash requests have in-memory bodies");
            let sent = send(attempt, &mut self.write_token).await;
            let refused = matches!(&sent, Ok((status, _, _))
                if *status == StatusCode::TOO_MANY_REQUESTS || *status == StatusCode::SERVICE_UNAVAILABLE);
            if !refused {
                break sent;
            }
            let (status, retry_after, body) = sent.as_ref().expect("a refusal is an answer");
            let status = *status;
            if status == StatusCode::TOO_MANY_REQUESTS {
                buyer.limited += 1;
            } else {
                buyer.shed += 1;
            }
            let wait = retry_wait(retry_after.as_ref(), &mut self.rng);
            if Instant::now() + wait > give_up_at {
                buyer.gave_up = true;
                let message = format!(
                    "gave up at the --flash-give-up deadline after {}",
                    describe_refusal(status, body.as_ref())
                );
                self.phase.record(kind, start, Instant::now() - start, Outcome::Refused(status.as_u16(), message));
                return Err(Stop);
            }
            buyer.retries += 1;
            if kind == RequestKind::FlashCheckout {
                buyer.checkout_retries += 1;
            }
            tokio::time::sleep(wait).await;
        };
        let (outcome, answer) = judge(sent.map(|(status, _, body)| (status, body)), parse);
        self.phase.record(kind, start, Instant::now() - start, outcome);
        answer.ok_or(Stop)
    }

    async fn product_page(&mut self, store: u64, base: &str, product: &str) -> Result<Option<ProductCard>, Stop> {
        let req = self.shared.client.get(format!("{base}/products/{product}"));
        Ok(match self.call(RequestKind::Product, req, json::<ProductCard>).await? {
            Answer::Ok(p) => {
                self.shared.catalog.remember(store, std::slice::from_ref(&p));
                Some(p)
            }
            Answer::Rejected => None,
        })
    }

    async fn shop(&mut self, plan: ShopperPlan) -> Result<(), Stop> {
        let shared = self.shared;
        let store = plan.store;
        let base = shared.storefront(store);
        let flash = shared.flash_variant();
        // Variants this shopper saw in stock: what they would put in a cart.
        let mut wanted: Vec<String> = Vec::new();
        let saw = |p: &ProductCard, wanted: &mut Vec<String>| {
            for v in &p.variants {
                if v.available && Some(v.id.as_str()) != flash && !wanted.contains(&v.id) {
                    wanted.push(v.id.clone());
                }
            }
        };

        if plan.landing
            && let Some(product) = shared.catalog.random_product(store, &mut self.rng)
            && let Some(p) = self.product_page(store, &base, &product).await?
        {
            saw(&p, &mut wanted);
        }

        let categories = match self.call(RequestKind::Home, shared.client.get(&base), json::<Home>).await? {
            Answer::Ok(home) => home.categories,
            Answer::Rejected => Vec::new(),
        };
        for _ in 0..plan.browses {
            // A store without categories is browsed through its whole list.
            let url = match categories.choose(&mut self.rng) {
                Some(c) => format!("{base}/products?category={}&limit={PAGE}", c.id),
                None => format!("{base}/products?limit={PAGE}"),
            };
            let list = match self.call(RequestKind::Category, shared.client.get(url), json::<ProductList>).await? {
                Answer::Ok(l) => l.items,
                Answer::Rejected => Vec::new(),
            };
            shared.catalog.remember(store, &list);
            let Some(pick) = list.choose(&mut self.rng) else { continue };
            if let Some(p) = self.product_page(store, &base, &pick.id).await? {
                saw(&p, &mut wanted);
            }
        }

        if let Some(term) = plan.search
            && let Some(q) = shared.search_queries.get(term)
        {
            let req = shared.client.get(format!("{base}/products?q={q}&limit={PAGE}"));
            if let Answer::Ok(l) = self.call(RequestKind::Search, req, json::<ProductList>).await? {
                shared.catalog.remember(store, &l.items);
            }
        }

        let Some(cart) = plan.cart else { return Ok(()) };
        if wanted.len() < cart.items as usize {
            // Fall back on what earlier sessions found in this store.
            for v in shared.catalog.available_variants(store, flash) {
                if !wanted.contains(&v) {
                    wanted.push(v);
                }
            }
        }
        if wanted.is_empty() {
            // Nothing in stock that this client knows of: a real shopper would leave too.
            return Ok(());
        }
        wanted.shuffle(&mut self.rng);
        wanted.truncate(cart.items as usize);

        let req = shared.client.post(format!("{base}/carts")).header(CONTENT_TYPE, "application/json").body("{}");
        let Answer::Ok(new) = self.call(RequestKind::CartCreate, req, json::<NewCart>).await? else { return Ok(()) };
        let cart_url = format!("{base}/carts/{}", new.cart_id);
        let mut added = 0;
        for variant in &wanted {
            let req = shared
                .client
                .put(format!("{cart_url}/items"))
                .header(CART_TOKEN, &new.token)
                .header(CONTENT_TYPE, "application/json")
                .body(format!(r#"{{"variant_id":"{variant}","quantity":1}}"#));
            if let Answer::Ok(()) = self.call(RequestKind::CartAdd, req, ignore).await? {
                added += 1;
            }
        }
        if added == 0 || !cart.checkout {
            return Ok(());
        }
        let key = format!("bench-{:016x}-{:016x}", shared.run_nonce, self.rng.random::<u64>());
        let req = shared
            .client
            .post(format!("{cart_url}/checkout"))
            .header(CART_TOKEN, &new.token)
            .header(IDEMPOTENCY_KEY, key)
            .header(CONTENT_TYPE, "application/json")
            .body(checkout_body(&mut self.rng));
        let Answer::Ok(order) = self.call(RequestKind::Checkout, req, json::<IdOnly>).await? else { return Ok(()) };
        let token: String = form_urlencoded::byte_serialize(new.token.as_bytes()).collect();
        let mut req = shared.client.get(format!("{base}/orders/{}?token={token}", order.id));
        if let Some(t) = &self.write_token {
            req = req.header(WRITE_TOKEN, t.clone());
        }
        self.call(RequestKind::OrderStatus, req, ignore).await?;
        Ok(())
    }

    async fn dashboard(&mut self, merchant: usize) -> Result<(), Stop> {
        let shared = self.shared;
        let Some(key) = shared.manifest.merchants.get(merchant) else { return Ok(()) };
        let base = format!("{}/api/v1/stores/{}", shared.target, key.store_id);
        let auth = format!("Bearer {}", key.token);
        let req = shared.client.get(format!("{base}/orders?limit={PAGE}")).header(AUTHORIZATION, &auth);
        self.call(RequestKind::DashboardOrders, req, ignore).await?;
        let req = shared.client.get(format!("{base}/products?limit={PAGE}")).header(AUTHORIZATION, &auth);
        self.call(RequestKind::DashboardProducts, req, ignore).await?;
        Ok(())
    }
}

/// The fixed checkout body with a random Indian mobile number, so customers are many.
fn checkout_body<R: Rng + ?Sized>(rng: &mut R) -> String {
    format!(
        r#"{{"customer":{{"name":"Bench Shopper","phone":"+9198{:08}"}},"address":{{"line1":"1 Bench Road","city":"Pune","postal_code":"411001"}},"payment_method":"cod"}}"#,
        rng.random_range(0..100_000_000u32)
    )
}

/// Runs one planned session. `due` is its open-loop start time (None in a closed loop).
pub(crate) async fn run(shared: &Shared, phase: &Phase, plan: Session, seed: u64, due: Option<Instant>) {
    let mut visit = Visit { shared, phase, due, rng: SmallRng::seed_from_u64(seed), write_token: None };
    let _ended_early: Result<(), Stop> = match plan {
        Session::Shopper(p) => visit.shop(p).await,
        Session::Merchant(m) => visit.dashboard(m).await,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlashOutcome {
    Ordered,
    SoldOut,
    Failed,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FlashShopper {
    pub outcome: FlashOutcome,
    /// When this shopper's checkout was sent and answered.
    pub checkout: Option<(Instant, Instant)>,
}

/// A flash-sale shopper: opens a cart and adds the flash item, waits at `barrier` until every
/// shopper is ready, then checks out, so all checkouts race for the same stock at once. Every
/// shopper reaches the barrier exactly once, whatever happened before it.
pub(crate) async fn flash_shopper(shared: &Shared, phase: &Phase, barrier: &Barrier, seed: u64) -> FlashShopper {
    let mut visit = Visit { shared, phase, due: None, rng: SmallRng::seed_from_u64(seed), write_token: None };
    let Some(flash) = shared.manifest.flash_sale.as_ref() else {
        barrier.wait().await;
        return FlashShopper { outcome: FlashOutcome::Failed, checkout: None };
    };
    let base = shared.storefront(flash.store_index);
    let ready = async {
        let req = shared.client.post(format!("{base}/carts")).header(CONTENT_TYPE, "application/json").body("{}");
        let Answer::Ok(new) = visit.call(RequestKind::FlashCart, req, json::<NewCart>).await? else { return Err(Stop) };
        let cart_url = format!("{base}/carts/{}", new.cart_id);
        let req = shared
            .client
            .put(format!("{cart_url}/items"))
            .header(CART_TOKEN, &new.token)
            .header(CONTENT_TYPE, "application/json")
            .body(format!(r#"{{"variant_id":"{}","quantity":1}}"#, flash.variant_id));
        Ok(match visit.call(RequestKind::FlashAdd, req, ignore).await? {
            Answer::Ok(()) => Some((cart_url, new.token)),
            Answer::Rejected => None,
        })
    }
    .await;
    barrier.wait().await;
    let (cart_url, token) = match ready {
        Ok(Some(cart)) => cart,
        Ok(None) => return FlashShopper { outcome: FlashOutcome::SoldOut, checkout: None },
        Err(Stop) => return FlashShopper { outcome: FlashOutcome::Failed, checkout: None },
    };
    let key = format!("flash-{:016x}-{:016x}", shared.run_nonce, visit.rng.random::<u64>());
    let req = shared
        .client
        .post(format!("{cart_url}/checkout"))
        .header(CART_TOKEN, token)
        .header(IDEMPOTENCY_KEY, key)
        .header(CONTENT_TYPE, "application/json")
        .body(checkout_body(&mut visit.rng));
    let sent = Instant::now();
    let outcome = match visit.call(RequestKind::FlashCheckout, req, ignore).await {
        Ok(Answer::Ok(())) => FlashOutcome::Ordered,
        Ok(Answer::Rejected) => FlashOutcome::SoldOut,
        Err(Stop) => FlashOutcome::Failed,
    };
    FlashShopper { outcome, checkout: Some((sent, Instant::now())) }
}

/// What one buyer of `--flash-during-browse` went through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlashBuyer {
    pub outcome: FlashOutcome,
    /// 429 and 503 answers received (each one waited out, or the last one given up on).
    pub limited: u32,
    pub shed: u32,
    /// Requests sent again after a 429 or 503, and of those, checkouts (same Idempotency-Key).
    pub retries: u32,
    pub checkout_retries: u32,
    /// Still refused at the give-up deadline (counted as an error too).
    pub gave_up: bool,
    /// When this buyer's checkout was first sent and finally answered.
    pub checkout: Option<(Instant, Instant)>,
}

/// A buyer in a flash sale that opens while other stores are browsed: arrives with the crowd,
/// opens a cart, adds the flash item and checks out, each step as a real client would under the
/// platform's protections (see [`Visit::persist`]): 429 and 503 are waited out and retried, the
/// checkout with the same `Idempotency-Key` every time, until `give_up_at`. A 409 for stock at
/// any step means sold out. There is no barrier: buyers meet the store's rate limit as they come.
/// `client` is the buyer's browser: the run's buyers' client, or one of its own that already
/// holds a connection (`--flash-arrival waiting`).
pub(crate) async fn flash_buyer(
    shared: &Shared,
    client: &reqwest::Client,
    phase: &Phase,
    seed: u64,
    give_up_at: Instant,
) -> FlashBuyer {
    let mut visit = Visit { shared, phase, due: None, rng: SmallRng::seed_from_u64(seed), write_token: None };
    let mut buyer = FlashBuyer {
        outcome: FlashOutcome::Failed,
        limited: 0,
        shed: 0,
        retries: 0,
        checkout_retries: 0,
        gave_up: false,
        checkout: None,
    };
    buyer.outcome = match buy(&mut visit, client, &mut buyer, give_up_at).await {
        Ok(outcome) => outcome,
        Err(Stop) => FlashOutcome::Failed,
    };
    buyer
}

async fn buy(
    visit: &mut Visit<'_>,
    client: &reqwest::Client,
    buyer: &mut FlashBuyer,
    give_up_at: Instant,
) -> Result<FlashOutcome, Stop> {
    let shared = visit.shared;
    let flash = shared.manifest.flash_sale.as_ref().ok_or(Stop)?;
    let base = shared.storefront(flash.store_index);
    let req = client.post(format!("{base}/carts")).header(CONTENT_TYPE, "application/json").body("{}");
    let Answer::Ok(new) = visit.persist(RequestKind::FlashCart, req, json::<NewCart>, give_up_at, buyer).await? else {
        return Ok(FlashOutcome::SoldOut);
    };
    let cart_url = format!("{base}/carts/{}", new.cart_id);
    let req = client
        .put(format!("{cart_url}/items"))
        .header(CART_TOKEN, &new.token)
        .header(CONTENT_TYPE, "application/json")
        .body(format!(r#"{{"variant_id":"{}","quantity":1}}"#, flash.variant_id));
    if let Answer::Rejected = visit.persist(RequestKind::FlashAdd, req, ignore, give_up_at, buyer).await? {
        return Ok(FlashOutcome::SoldOut);
    }
    // One key for every attempt of this checkout: a retry must never become a second order.
    let key = format!("flash-{:016x}-{:016x}", shared.run_nonce, visit.rng.random::<u64>());
    let req = client
        .post(format!("{cart_url}/checkout"))
        .header(CART_TOKEN, &new.token)
        .header(IDEMPOTENCY_KEY, key)
        .header(CONTENT_TYPE, "application/json")
        .body(checkout_body(&mut visit.rng));
    let sent = Instant::now();
    let answer = visit.persist(RequestKind::FlashCheckout, req, ignore, give_up_at, buyer).await;
    buyer.checkout = Some((sent, Instant::now()));
    Ok(match answer? {
        Answer::Ok(()) => FlashOutcome::Ordered,
        Answer::Rejected => FlashOutcome::SoldOut,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_waits_what_retry_after_says_plus_bounded_jitter() {
        let mut rng = SmallRng::seed_from_u64(5);
        let with = |v: &str| Some(HeaderValue::from_str(v).unwrap());
        let between = |h: Option<HeaderValue>, lo: Duration, rng: &mut SmallRng| {
            for _ in 0..200 {
                let w = retry_wait(h.as_ref(), rng);
                assert!(w >= lo && w < lo + RETRY_JITTER, "{w:?} not in [{lo:?}, +{RETRY_JITTER:?})");
            }
        };
        between(with("1"), Duration::from_secs(1), &mut rng);
        between(with(" 3 "), Duration::from_secs(3), &mut rng);
        between(with("0"), Duration::ZERO, &mut rng);
        between(with("86400"), MAX_RETRY_AFTER, &mut rng);
        between(with("Wed, 21 Oct 2015 07:28:00 GMT"), DEFAULT_RETRY_AFTER, &mut rng);
        between(None, DEFAULT_RETRY_AFTER, &mut rng);
        // The jitter spreads a crowd: 200 waits for "1" are not all the same.
        let one = with("1");
        let waits: std::collections::HashSet<_> = (0..200).map(|_| retry_wait(one.as_ref(), &mut rng)).collect();
        assert!(waits.len() > 150, "{} distinct waits", waits.len());
    }

    #[test]
    fn only_a_409_naming_insufficient_stock_is_an_expected_refusal() {
        let stock = br#"{"type":"https://kirana.dev/problems/insufficient-stock","detail":"x"}"#;
        assert!(is_insufficient_stock(StatusCode::CONFLICT, stock));
        assert!(!is_insufficient_stock(StatusCode::UNPROCESSABLE_ENTITY, stock));
        let closed = br#"{"type":"https://kirana.dev/problems/cart-closed","detail":"x"}"#;
        assert!(!is_insufficient_stock(StatusCode::CONFLICT, closed));
        assert!(!is_insufficient_stock(StatusCode::CONFLICT, b"not json"));
    }

    #[test]
    fn refusals_are_described_by_problem_type_and_detail_in_bounded_length() {
        let body = br#"{"type":"https://kirana.dev/problems/not-found","detail":"no such resource"}"#;
        assert_eq!(describe_refusal(StatusCode::NOT_FOUND, body), "HTTP 404: not-found: no such resource");
        let long = "é".repeat(500);
        let m = describe_refusal(StatusCode::BAD_GATEWAY, long.as_bytes());
        assert!(m.starts_with("HTTP 502: ") && m.len() <= 240);
    }

    #[test]
    fn the_checkout_body_is_valid_json_with_an_indian_mobile_number() {
        let mut rng = SmallRng::seed_from_u64(1);
        let v: serde_json::Value = serde_json::from_str(&checkout_body(&mut rng)).unwrap();
        let phone = v["customer"]["phone"].as_str().unwrap();
        assert!(phone.starts_with("+9198") && phone.len() == 13, "{phone}");
        assert_eq!(v["payment_method"], "cod");
        assert_eq!(v["address"]["postal_code"], "411001");
    }
}
