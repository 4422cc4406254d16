//! One visit to the platform, spoken over HTTP the way a shopper's or merchant's client would:
//! requests in a session depend on the answers before them (a product page needs an id from a
//! list, a checkout needs the cart's token). Each request is timed and recorded under its type;
//! a refusal the workload expects (stock ran out) is `rejected`, anything else that is not 2xx,
//! a transport error or a timeout is an error and ends the session, as it would for a person.
//! A session issues no request once its phase has ended. This module decides nothing about
//! rates or mixes: the plan comes from `workload`, the start time from `driver`.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::catalog::{Catalog, ProductCard};
use crate::manifest::Manifest;
use crate::stats::{Outcome, Recorder, RequestKind};
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

    fn storefront(&self, store: u64) -> String {
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
    pub end: Instant,
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
            None if now >= self.phase.end => return Err(Stop),
            None => (now, now),
        };
        let sent = async {
            let res = req.send().await?;
            let status = res.status();
            Ok::<_, reqwest::Error>((status, res.bytes().await?))
        }
        .await;
        let latency = Instant::now() - start;
        let (outcome, answer) = match sent {
            Err(e) => (Outcome::Error(describe_transport(e)), None),
            Ok((status, body)) if status.is_success() => match parse(&body) {
                Ok(v) => (Outcome::Ok, Some(Answer::Ok(v))),
                Err(e) => (Outcome::Error(format!("HTTP {}: unexpected body: {e}", status.as_u16())), None),
            },
            Ok((status, body)) if is_insufficient_stock(status, &body) => (Outcome::Rejected, Some(Answer::Rejected)),
            Ok((status, body)) => (Outcome::Error(describe_refusal(status, &body)), None),
        };
        self.phase.recorder.record(kind, at, latency, outcome);
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
        let req = shared.client.get(format!("{base}/orders/{}?token={token}", order.id));
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
    let mut visit = Visit { shared, phase, due, rng: SmallRng::seed_from_u64(seed) };
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
    let mut visit = Visit { shared, phase, due: None, rng: SmallRng::seed_from_u64(seed) };
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

#[cfg(test)]
mod tests {
    use super::*;

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
