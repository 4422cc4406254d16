//! `kirana events bench`: how fast the embedded pipeline moves events, and how long an event
//! takes from commit to effect, next to a baseline measured in the same run — the same
//! checkouts written with no pipeline running.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kirana_domain::cart::{CheckoutInput, Quantity};
use kirana_domain::catalog::ProductInput;
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, Phone, SystemClock, VariantId};
use kirana_storage::sqlite::SqliteOptions;
use kirana_storage::{Storage, StoreScope};
use serde::Serialize;

use crate::notify::Messenger;
use crate::{Pipeline, PipelineConfig, all_consumers};

#[derive(Debug, Clone, Serialize)]
pub struct EventsBench {
    pub orders: usize,
    /// Events the orders wrote (carts, orders, stock, customers).
    pub events: i64,
    pub consumers: usize,
    /// Checkouts per second with no pipeline running: the baseline.
    pub baseline_orders_per_sec: f64,
    /// Checkouts per second while the pipeline ran beside them.
    pub orders_per_sec: f64,
    /// Events per second through every consumer: from the first write until the last consumer
    /// had applied the last event.
    pub events_per_sec: f64,
    /// Commit to effect (the analytics consumer's rollup), milliseconds.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

struct Silent;

#[async_trait::async_trait]
impl Messenger for Silent {
    async fn send(&self, _: &Phone, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
}

async fn stores(storage: &Storage, n: usize, clock: &dyn Clock) -> anyhow::Result<Vec<(StoreScope, VariantId)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let phone = Phone::parse(&format!("+9170{i:08}")).map_err(anyhow::Error::msg)?;
        let (m, _) = storage.directory().merchant_for_phone(&phone, clock.now()).await?;
        let new = StoreInput { name: Some(format!("Bench {i}")), ..StoreInput::default() }.into_new()?;
        let store = storage.create_store(m.id, new, clock.now()).await?;
        let scope = storage.scope_for_owner(m.id, store.id).await?;
        let input: ProductInput =
            serde_json::from_value(serde_json::json!({ "title": "Tea", "price": 25_000, "stock": 100_000_000 }))?;
        let p = storage.shard(&scope).create_product(&scope, input.into_change(true)?, clock.now()).await?;
        out.push((scope, p.variants[0].id));
    }
    Ok(out)
}

/// Places `orders` checkouts over the stores from `concurrency` tasks; returns orders/s.
async fn checkouts(
    storage: &Storage,
    shops: &[(StoreScope, VariantId)],
    orders: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let storage = storage.clone();
        let shops = shops.to_vec();
        tasks.spawn(async move {
            let clock = SystemClock;
            let mut i = t;
            while i < orders {
                let (scope, variant) = &shops[i % shops.len()];
                let shard = storage.shard(scope);
                let token = [i as u8; 32];
                let cart = shard.create_cart(scope, token, clock.now()).await?;
                shard
                    .set_cart_item(
                        scope,
                        cart.id,
                        token,
                        *variant,
                        Quantity::parse(1).map_err(anyhow::Error::msg)?,
                        clock.now(),
                    )
                    .await?;
                let input: CheckoutInput = serde_json::from_value(serde_json::json!({
                    "customer": { "name": "Bench Shopper", "phone": "+919812345678" },
                    "address": { "line1": "1 Road", "city": "Pune", "postal_code": "411001" },
                    "payment_method": "cod"
                }))?;
                shard.checkout(scope, cart.id, token, input.parse()?, None, clock.now()).await?;
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(orders as f64 / started.elapsed().as_secs_f64())
}

fn open(dir: &Path, shards: u32) -> anyhow::Result<Storage> {
    Ok(kirana_storage::sqlite::open(dir, shards, &SqliteOptions::default())?)
}

/// `nats`: `None` for the embedded backend, or a NATS URL to run the pipeline on JetStream (a
/// stream of its own, deleted afterwards).
pub async fn run(
    work: &Path,
    orders: usize,
    store_count: usize,
    shards: u32,
    nats: Option<&str>,
) -> anyhow::Result<EventsBench> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let concurrency = 32;

    // Baseline: the same checkouts, nobody reading the outbox.
    let base_dir = work.join("baseline");
    let base = open(&base_dir, shards)?;
    let shops = stores(&base, store_count, &*clock).await?;
    let baseline_orders_per_sec = checkouts(&base, &shops, orders, concurrency).await?;
    drop(base);

    let dir = work.join("pipeline");
    let storage = open(&dir, shards)?;
    let shops = stores(&storage, store_count, &*clock).await?;
    let consumers = all_consumers();
    let names: Vec<&'static str> = consumers.iter().map(|c| c.name()).collect();
    let js = nats.map(|url| {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let mut cfg = crate::jetstream::JetStreamConfig::new(url);
        cfg.stream = format!("KIRANA_BENCH_{tag}");
        cfg.dlq_stream = format!("KIRANA_BENCH_DLQ_{tag}");
        cfg.subject_prefix = format!("bench{tag}.ev");
        cfg.dlq_prefix = format!("bench{tag}.dlq");
        cfg
    });
    let bus = match &js {
        Some(cfg) => Some(crate::jetstream::connect(cfg.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let backend = match &js {
        Some(cfg) => crate::pipeline::Backend::JetStream(Box::new(cfg.clone())),
        None => crate::pipeline::Backend::Embedded,
    };
    // Let the pipeline take the setup's events first, so only the checkouts are timed.
    let cfg = PipelineConfig { backend, ..PipelineConfig::default() };
    let pipeline = Pipeline::start(storage.clone(), consumers.clone(), Arc::new(Silent), clock.clone(), cfg);
    let caught_up = async |storage: &Storage| -> anyhow::Result<()> {
        match &bus {
            None => caught_up(storage, &names).await,
            Some(bus) => drained(storage, bus, &names).await,
        }
    };
    caught_up(&storage).await?;
    let first: i64 = last_seqs(&storage).await?.iter().sum();
    let started = Instant::now();
    let orders_per_sec = checkouts(&storage, &shops, orders, concurrency).await?;
    caught_up(&storage).await?;
    let elapsed = started.elapsed();
    let events = last_seqs(&storage).await?.iter().sum::<i64>() - first;
    pipeline.stop().await;
    if let (Some(bus), Some(cfg)) = (&bus, &js) {
        let _ = bus.jetstream().delete_stream(&cfg.stream).await;
        let _ = bus.jetstream().delete_stream(&cfg.dlq_stream).await;
    }

    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    for log in storage.logs() {
        for (id, at) in log.applied_times("analytics", u32::MAX).await? {
            let written =
                id.uuid().get_timestamp().map(|t| t.to_unix()).map(|(s, n)| s as i64 * 1000 + i64::from(n) / 1_000_000);
            if let Some(w) = written {
                hist.record((at.millis() - w).max(0) as u64 * 1000)?;
            }
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(EventsBench {
        orders,
        events,
        consumers: names.len(),
        baseline_orders_per_sec,
        orders_per_sec,
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        latency_p50_ms: ms(0.5),
        latency_p99_ms: ms(0.99),
        latency_max_ms: hist.max() as f64 / 1000.0,
    })
}

async fn last_seqs(storage: &Storage) -> anyhow::Result<Vec<i64>> {
    let mut v = Vec::new();
    for log in storage.logs() {
        v.push(log.outbox_stats().await?.last_seq);
    }
    Ok(v)
}

/// JetStream: the relay has emptied every outbox and no consumer has anything pending.
async fn drained(storage: &Storage, bus: &crate::jetstream::JetStreamBus, consumers: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut rows = 0;
        for log in storage.logs() {
            rows += log.outbox_stats().await?.rows;
        }
        let pending: u64 = if rows == 0 {
            crate::jetstream::lag(bus, consumers, bus.config().partitions)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .iter()
                .map(|(.., n)| n)
                .sum()
        } else {
            1
        };
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the pipeline did not catch up within 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every consumer's every partition is at the shard's last position.
async fn caught_up(storage: &Storage, consumers: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut done = true;
        for log in storage.logs() {
            let last = log.outbox_stats().await?.last_seq;
            for name in consumers {
                let pos = log.positions(name).await?;
                if last > 0
                    && (pos.len() < crate::partition::DEFAULT_PARTITIONS as usize || pos.iter().any(|(_, s)| *s < last))
                {
                    done = false;
                }
            }
        }
        if done {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the pipeline did not catch up within 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
