//! `--flash-during-browse`: a flash sale in one store while every other store is browsed, as one
//! run in two windows. The main workload (which spares the flash store) runs its warm-up, then
//! the *quiet* window (`--duration`, browsing alone); at its end the sale opens: every buyer
//! arrives at once and the *contended* window lasts until the last buyer is done, when this module
//! ends the browsing too. The other stores' latency is compared across the windows, and the sale
//! is checked where it matters, on the server: its orders for the flash product and the stock
//! left, read through the flash store's merchant key from the manifest. This module owns the sale's
//! phase, the windows' figures and that check; it never decides what browsing sessions do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::driver::Deadline;
use crate::probe;
use crate::report::{self, BrowseWindow, FlashDuringBrowse, FlashVerdict, TimelineSecond};
use crate::session::{self, FlashOutcome, Phase, Shared};
use crate::stats::{KindStats, Recorder, RequestKind, Timeline};

/// The contended p99 of the other stores' reads may be at most this many times the quiet one
/// (issue 8's goal).
pub(crate) const P99_RATIO_GOAL: f64 = 2.0;
/// Orders read back from the flash store at most (pages of 100), so a store with an enormous
/// history cannot keep the check going for ever; reaching it is reported, not hidden.
const MAX_ORDER_PAGES: usize = 2_000;
/// How long the check on the server may be refused (429/503) before it reports "unreadable".
const CHECK_PATIENCE: Duration = Duration::from_secs(30);

/// `--flash-arrival waiting`: every buyer is a browser of its own (a client with its own
/// connection pool) that loads the flash product once, the loads spread evenly over the first
/// four fifths of the warm-up (unmeasured), and keeps that connection alive to click on when the
/// sale opens. A load that fails only means that buyer connects afresh at the opening.
async fn open_the_page(shared: &Arc<Shared>, shoppers: u32, from: Instant, until: Instant) -> Vec<reqwest::Client> {
    let Some(flash) = shared.manifest.flash_sale.as_ref() else { return Vec::new() };
    let url = format!("{}/products/{}", shared.storefront(flash.store_index), flash.product_id);
    let spread = (until - from).mul_f64(0.8);
    let mut loads = JoinSet::new();
    for i in 0..shoppers {
        let Ok(client) = reqwest::Client::builder()
            .pool_idle_timeout(None)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .user_agent(concat!("kirana-bench/", env!("CARGO_PKG_VERSION")))
            .build()
        else {
            continue;
        };
        let url = url.clone();
        let at = from + spread.mul_f64(f64::from(i) / f64::from(shoppers.max(1)));
        loads.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Ok(res) = client.get(url).send().await {
                // Read to the end, so the connection goes back to this browser's pool.
                let _ = res.bytes().await;
            }
            client
        });
    }
    let mut browsers = Vec::with_capacity(shoppers as usize);
    while let Some(done) = loads.join_next().await {
        browsers.extend(done.ok());
    }
    browsers
}

/// Far enough to never come: the buyers' own phase has no end but their give-up deadline.
fn never(from: Instant) -> Instant {
    from + Duration::from_secs(10 * 365 * 86_400)
}

/// The flash store's merchant credentials and ids, found in the manifest by [`SaleTarget::of`].
#[derive(Debug, Clone)]
pub(crate) struct SaleTarget {
    /// `{target}/api/v1/stores/{store_id}`.
    merchant_base: String,
    auth: String,
    product_id: String,
    variant_id: String,
    pub manifest_stock: i64,
}

impl SaleTarget {
    /// Fails when the manifest lacks the flash product or its store's merchant key (without
    /// which the sale cannot be checked on the server).
    pub fn of(shared: &Shared) -> anyhow::Result<SaleTarget> {
        let m = &shared.manifest;
        let flash =
            m.flash_sale.as_ref().context("the manifest has no `flash_sale` entry (`kirana seed` writes one)")?;
        let key = m.merchants.iter().find(|k| k.store_index == flash.store_index).with_context(|| {
            format!(
                "the manifest has no merchant key for the flash store (index {}), so the sale cannot be checked \
                 on the server: seed with --merchant-tokens 1 or more",
                flash.store_index
            )
        })?;
        Ok(SaleTarget {
            merchant_base: format!("{}/api/v1/stores/{}", shared.target, key.store_id),
            auth: format!("Bearer {}", key.token),
            product_id: flash.product_id.clone(),
            variant_id: flash.variant_id.clone(),
            manifest_stock: flash.stock,
        })
    }
}

/// One merchant-API read, waiting out 429s and 503s (the check comes right after the crowd, and
/// the flash store's rate limit may still be refilling).
async fn merchant_get<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    sale: &SaleTarget,
    path_and_query: &str,
) -> anyhow::Result<T> {
    let url = format!("{}{path_and_query}", sale.merchant_base);
    let give_up = Instant::now() + CHECK_PATIENCE;
    loop {
        let res = shared.client.get(&url).header(AUTHORIZATION, &sale.auth).send().await?;
        let status = res.status();
        if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
            && Instant::now() < give_up
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}: {}", res.text().await.unwrap_or_default());
        return Ok(res.json().await?);
    }
}

#[derive(Deserialize)]
struct MerchantProduct {
    variants: Vec<MerchantVariant>,
}

#[derive(Deserialize)]
struct MerchantVariant {
    id: String,
    stock: Option<i64>,
}

/// The flash variant's units on hand, as the merchant sees them.
pub(crate) async fn stock_on_server(shared: &Shared, sale: &SaleTarget) -> anyhow::Result<i64> {
    let p: MerchantProduct = merchant_get(shared, sale, &format!("/products/{}", sale.product_id)).await?;
    let v = p.variants.iter().find(|v| v.id == sale.variant_id).context("the flash variant is not in its product")?;
    v.stock.context("the flash variant's stock is not tracked: it cannot sell out")
}

#[derive(Deserialize)]
struct OrderPage {
    items: Vec<OrderRow>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct OrderRow {
    created_at: String,
    items: Vec<OrderLine>,
}

#[derive(Deserialize)]
struct OrderLine {
    variant_id: String,
    quantity: u64,
}

/// Orders of the flash store placed at or after `since` that hold the flash variant, and the
/// units they hold. Every page is read (the list is ordered by id, which need not follow time for
/// seeded history), so nothing placed in the run can be missed.
async fn orders_on_server(
    shared: &Shared,
    sale: &SaleTarget,
    since: time::OffsetDateTime,
) -> anyhow::Result<(u64, u64)> {
    let (mut orders, mut units) = (0u64, 0u64);
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_ORDER_PAGES {
        let query = match &cursor {
            Some(c) => format!(
                "/orders?limit=100&cursor={}",
                form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            ),
            None => "/orders?limit=100".to_string(),
        };
        let page: OrderPage = merchant_get(shared, sale, &query).await?;
        for o in &page.items {
            let at = time::OffsetDateTime::parse(&o.created_at, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("an order's created_at `{}` is not RFC 3339", o.created_at))?;
            let held: u64 = o.items.iter().filter(|l| l.variant_id == sale.variant_id).map(|l| l.quantity).sum();
            if at >= since && held > 0 {
                orders += 1;
                units += held;
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok((orders, units)),
        }
    }
    anyhow::bail!("the flash store has more than {} orders; not all were read", MAX_ORDER_PAGES * 100)
}

/// What the sale's phase left for the report.
pub(crate) struct SaleRun {
    pub verdict: FlashVerdict,
    pub recorder: Arc<Recorder>,
    /// When the sale opened (the quiet window's end) and when its last buyer was done.
    pub opened: Instant,
    pub done: Instant,
    /// First checkout sent → last answered, for the brief `flash_sale` entry.
    pub checkout_secs: f64,
    /// Server CPU seconds in the quiet and the contended window (with --server-pid).
    pub cpu_quiet: Option<f64>,
    pub cpu_contended: Option<f64>,
    /// The server's own storefront-read p99 bound per window (ms), from its histogram.
    pub server_p99_quiet: Option<f64>,
    pub server_p99_contended: Option<f64>,
}

/// The sale: waits for the quiet window to end, lets `shoppers` buyers loose at once, waits for
/// every one of them, then ends the browsing (`browse_end`). The server check comes later
/// ([`check_on_server`]), once the browsing has stopped too.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_sale(
    shared: Arc<Shared>,
    shoppers: u32,
    give_up: Duration,
    seed: u64,
    waiting_from: Option<Instant>,
    ramp: Duration,
    measure_from: Instant,
    opens: Instant,
    browse_end: Deadline,
    server_pid: Option<u32>,
    stock_at_start: i64,
    manifest_stock: i64,
) -> SaleRun {
    let cpu = || server_pid.and_then(|p| probe::cpu_seconds(p).ok());
    let browsers = match waiting_from {
        Some(from) => open_the_page(&shared, shoppers, from, measure_from).await,
        None => Vec::new(),
    };
    tokio::time::sleep_until(measure_from).await;
    let cpu0 = cpu();
    let hist0 = storefront_histogram(&shared).await;
    tokio::time::sleep_until(opens).await;
    let cpu1 = cpu();
    let hist1 = storefront_histogram(&shared).await;
    // The windows meet at `opens`, as scheduled (the timer may wake a millisecond later).
    let opened = opens;
    let recorder = Arc::new(Recorder::new(opens, never(opens)));
    let phase = Arc::new(Phase::new(recorder.clone(), Deadline::new(never(opens))));
    let give_up_at = opened + give_up;
    let mut buyers = JoinSet::new();
    for i in 0..shoppers {
        let (shared, phase) = (shared.clone(), phase.clone());
        let client = browsers.get(i as usize).unwrap_or(&shared.client).clone();
        let buyer_seed = seed.rotate_left(29) ^ u64::from(i);
        let clicks = opened + ramp.mul_f64(f64::from(i) / f64::from(shoppers.max(1)));
        buyers.spawn(async move {
            tokio::time::sleep_until(clicks).await;
            session::flash_buyer(&shared, &client, &phase, buyer_seed, give_up_at).await
        });
    }
    let mut v = FlashVerdict {
        shoppers: u64::from(shoppers),
        stock_at_start,
        manifest_stock,
        orders: 0,
        sold_out: 0,
        errors: 0,
        gave_up: 0,
        answers_429: 0,
        answers_503: 0,
        retries: 0,
        checkout_retries: 0,
        server_orders: None,
        server_units: None,
        server_stock_left: None,
        oversold: false,
        secs: 0.0,
        verdict: String::new(),
        reasons: Vec::new(),
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    while let Some(done) = buyers.join_next().await {
        let Ok(b) = done else {
            v.errors += 1;
            continue;
        };
        match b.outcome {
            FlashOutcome::Ordered => v.orders += 1,
            FlashOutcome::SoldOut => v.sold_out += 1,
            FlashOutcome::Failed => v.errors += 1,
        }
        v.gave_up += u64::from(b.gave_up);
        v.answers_429 += u64::from(b.limited);
        v.answers_503 += u64::from(b.shed);
        v.retries += u64::from(b.retries);
        v.checkout_retries += u64::from(b.checkout_retries);
        if let Some((sent, answered)) = b.checkout {
            first = Some(first.map_or(sent, |f| f.min(sent)));
            last = Some(last.map_or(answered, |l| l.max(answered)));
        }
    }
    let done = Instant::now();
    browse_end.stop_now();
    let cpu2 = cpu();
    let hist2 = storefront_histogram(&shared).await;
    v.secs = (done - opened).as_secs_f64();
    v.oversold = v.orders as i64 > stock_at_start;
    SaleRun {
        verdict: v,
        recorder,
        opened,
        done,
        checkout_secs: first.zip(last).map_or(0.0, |(f, l)| (l - f).as_secs_f64()),
        cpu_quiet: cpu0.zip(cpu1).map(|(a, b)| (b - a).max(0.0)),
        cpu_contended: cpu1.zip(cpu2).map(|(a, b)| (b - a).max(0.0)),
        server_p99_quiet: hist0.as_ref().zip(hist1.as_ref()).and_then(|(a, b)| p99_bound_ms(a, b)),
        server_p99_contended: hist1.as_ref().zip(hist2.as_ref()).and_then(|(a, b)| p99_bound_ms(a, b)),
    }
}

/// The server's cumulative storefront-read latency buckets now (`le` in seconds → count), from
/// its `/metrics`, all groups and classes together; `None` if it cannot be read.
async fn storefront_histogram(shared: &Shared) -> Option<BTreeMap<u64, f64>> {
    let res = shared.client.get(format!("{}/metrics", shared.target)).send().await.ok()?;
    let text = res.error_for_status().ok()?.text().await.ok()?;
    let mut buckets = BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with("kirana_http_request_duration_seconds_bucket{") || !line.contains("journey=\"storefront\"")
        {
            continue;
        }
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let Ok(le) = le.parse::<f64>() else { continue }; // "+Inf"
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        // Keyed in microseconds, so the map orders the bounds.
        *buckets.entry((le * 1e6).round() as u64).or_insert(0.0) += count;
    }
    Some(buckets)
}

/// The bucket bound (ms) under which 99 % of the requests between two scrapes fell.
fn p99_bound_ms(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>) -> Option<f64> {
    let delta: Vec<(u64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.get(le).copied().unwrap_or(0.0))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n >= 0.99 * total).map(|(le, _)| *le as f64 / 1000.0)
}

/// Reads the sale's result back from the server and judges it (PASS or FAIL with reasons). An
/// unreadable figure is left null, which fails the verdict, and said on stderr.
pub(crate) async fn check_on_server(
    shared: &Shared,
    sale: &SaleTarget,
    since: time::OffsetDateTime,
    v: &mut FlashVerdict,
) {
    match orders_on_server(shared, sale, since).await {
        Ok((orders, units)) => {
            v.server_orders = Some(orders);
            v.server_units = Some(units);
        }
        Err(e) => eprintln!("bench: cannot count the flash store's orders on the server: {e:#}"),
    }
    match stock_on_server(shared, sale).await {
        Ok(left) => v.server_stock_left = Some(left),
        Err(e) => eprintln!("bench: cannot read the flash product's stock on the server: {e:#}"),
    }
    v.oversold = v.oversold
        || v.server_units.is_some_and(|u| u as i64 > v.stock_at_start)
        || v.server_stock_left.is_some_and(|left| left < 0);
    v.judge();
    if v.oversold {
        eprintln!("bench: !!! OVERSELL: the flash sale sold more than its {} units !!!", v.stock_at_start);
    }
}

/// One window's figures from its recorder: every main type, and the reads as one.
fn window(
    recorder: &Recorder,
    starts_at: Duration,
    length: Duration,
    cpu: Option<f64>,
    server_p99: Option<f64>,
) -> BrowseWindow {
    let mut by_type = BTreeMap::new();
    let mut reads = KindStats::new();
    let (mut requests, mut errors, mut limited, mut shed) = (0, 0, 0, 0);
    for kind in RequestKind::MAIN {
        let s = recorder.snapshot(kind);
        requests += s.count();
        errors += s.errors;
        limited += s.limited;
        shed += s.shed;
        if kind.is_read() {
            reads.merge(&s);
        }
        by_type.insert(kind.name().to_string(), report::request_stats(&s, length));
    }
    BrowseWindow {
        starts_at_secs: starts_at.as_secs_f64(),
        secs: length.as_secs_f64(),
        requests,
        errors,
        limited,
        shed,
        rps: report::per_sec(requests, length),
        reads: report::request_stats(&reads, length),
        by_type,
        server_cpu_seconds: cpu,
        server_reads_p99_ms_at_most: server_p99,
    }
}

/// The two windows side by side, their p99 ratio, the reads second by second and the sale's
/// verdict.
pub(crate) fn compare(
    quiet: &Recorder,
    contended: &Recorder,
    timeline: &Timeline,
    measure_from: Instant,
    sale: SaleRun,
) -> FlashDuringBrowse {
    let q = window(
        quiet,
        Duration::ZERO,
        sale.opened.saturating_duration_since(measure_from),
        sale.cpu_quiet,
        sale.server_p99_quiet,
    );
    let c = window(
        contended,
        sale.opened.saturating_duration_since(measure_from),
        sale.done.saturating_duration_since(sale.opened),
        sale.cpu_contended,
        sale.server_p99_contended,
    );
    let (qp, cp) = (q.reads.latency_us.p99, c.reads.latency_us.p99);
    let p99_ratio = (qp > 0 && cp > 0).then(|| cp as f64 / qp as f64);
    let measured = sale.done.saturating_duration_since(measure_from).as_secs_f64().ceil() as usize;
    let timeline = timeline
        .seconds(measured)
        .into_iter()
        .zip(0u64..)
        .map(|((reads, p50_us, p99_us, max_us), second)| TimelineSecond { second, reads, p50_us, p99_us, max_us })
        .collect();
    FlashDuringBrowse {
        quiet: q,
        contended: c,
        p99_ratio,
        p99_ratio_goal: P99_RATIO_GOAL,
        p99_goal_met: p99_ratio.is_some_and(|r| r <= P99_RATIO_GOAL),
        flash: sale.verdict,
        timeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_p99_is_the_bound_of_the_bucket_holding_the_99th_percent_between_scrapes() {
        let at = |pairs: &[(u64, f64)]| pairs.iter().copied().collect::<BTreeMap<u64, f64>>();
        // Before: 50 requests, all under 1 ms. Between: 1,000 more, 985 under 1 ms, 10 more under
        // 2.5 ms, 5 under 5 ms: the 990th falls in the 2.5 ms bucket.
        let before = at(&[(1000, 50.0), (2500, 50.0), (5000, 50.0)]);
        let after = at(&[(1000, 1035.0), (2500, 1045.0), (5000, 1050.0)]);
        assert_eq!(p99_bound_ms(&before, &after), Some(2.5));
        assert_eq!(p99_bound_ms(&after, &after), None, "no requests between");
    }
}
