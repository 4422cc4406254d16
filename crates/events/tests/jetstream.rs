//! The JetStream backend against real NATS and real SQLite shards: every event reaches every
//! consumer and is applied once, in order per store, through a burst, a `kill -9` of the
//! server, an outage while orders keep coming (and a server that is down at start), and a
//! poison event that is parked while the other partitions move on.
//!
//! Tests that keep NATS up share the server on 127.0.0.1:4222 with streams and subjects of
//! their own; tests that stop NATS run a private `nats-server` on a free port.

mod nats_support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kirana_domain::event::{Event, kinds};
use kirana_domain::{Clock, EventId, StoreId, SystemClock};
use kirana_events::consumers::{CacheInvalidation, Consumer, Notifications, SalesAnalytics, Webhooks};
use kirana_events::embedded::RetryPolicy;
use kirana_events::jetstream::{self, JetStreamBus, JetStreamConfig, lag};
use kirana_events::partition::partition_of;
use kirana_storage::Effect;
use nats_support::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Wraps a consumer and watches what it is handed: the commit-to-effect latency of each event
/// (from `occurred_at` to the moment its effects are computed, just before they commit), and
/// whether any store's orders arrive out of order (an order number lower than one already
/// seen, on an event never seen before).
struct Watch {
    inner: Arc<dyn Consumer>,
    clock: Arc<dyn Clock>,
    seen: Mutex<HashSet<EventId>>,
    /// Events handed over again (redelivered after a lost ack or a reset).
    repeats: AtomicU64,
    latest: Mutex<HashMap<StoreId, i64>>,
    latencies_ms: Mutex<Vec<f64>>,
    out_of_order: AtomicU64,
    /// Only events after this (epoch ms) count for latency.
    since: AtomicU64,
}

impl Watch {
    fn new(inner: Arc<dyn Consumer>) -> Arc<Watch> {
        Arc::new(Watch {
            inner,
            clock: Arc::new(SystemClock),
            seen: Mutex::default(),
            repeats: AtomicU64::new(0),
            latest: Mutex::default(),
            latencies_ms: Mutex::default(),
            out_of_order: AtomicU64::new(0),
            since: AtomicU64::new(u64::MAX),
        })
    }

    fn measure_from(&self, millis: i64) {
        self.latencies_ms.lock().unwrap().clear();
        self.since.store(millis as u64, Ordering::SeqCst);
    }

    fn sorted_latencies(&self) -> Vec<f64> {
        let mut v = self.latencies_ms.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        v
    }
}

impl Consumer for Watch {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        if self.seen.lock().unwrap().insert(event.id) {
            let at = event.occurred_at.millis();
            if at as u64 >= self.since.load(Ordering::SeqCst) {
                self.latencies_ms.lock().unwrap().push((self.clock.now().millis() - at) as f64);
            }
            if event.kind == kinds::ORDER_PLACED {
                let number = event.payload["number"].as_i64().unwrap_or(0);
                let mut latest = self.latest.lock().unwrap();
                let last = latest.entry(event.store_id).or_insert(0);
                if number < *last {
                    self.out_of_order.fetch_add(1, Ordering::SeqCst);
                }
                *last = number.max(*last);
            }
        } else {
            self.repeats.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.effects(event)
    }
}

/// The sales consumer, failing on one store's orders while `on` is set.
struct Poisoned {
    store: StoreId,
    on: Arc<AtomicBool>,
}

impl Consumer for Poisoned {
    fn name(&self) -> &'static str {
        SalesAnalytics.name()
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        if self.on.load(Ordering::SeqCst) && event.store_id == self.store && event.kind == kinds::ORDER_PLACED {
            return Err("poisoned for the test".into());
        }
        SalesAnalytics.effects(event)
    }
}

/// The four consumers, with the sales one watched.
fn watched_consumers() -> (Vec<Arc<dyn Consumer>>, Arc<Watch>) {
    let sales = Watch::new(Arc::new(SalesAnalytics));
    let list: Vec<Arc<dyn Consumer>> =
        vec![Arc::new(CacheInvalidation), sales.clone(), Arc::new(Notifications), Arc::new(Webhooks)];
    (list, sales)
}

fn names(consumers: &[Arc<dyn Consumer>]) -> Vec<&'static str> {
    consumers.iter().map(|c| c.name()).collect()
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(bus: &JetStreamBus, world: &World, consumers: Vec<Arc<dyn Consumer>>, retry: RetryPolicy) -> Running {
        let (stop, rx) = watch::channel(false);
        let tasks = jetstream::start(bus.clone(), world.storage.clone(), consumers, world.clock.clone(), retry, rx);
        Running { stop, tasks }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("every task stops promptly on shutdown")
                .expect("no task panicked");
        }
    }
}

/// A merchant's webhook endpoint on 127.0.0.1 that records the event ids it is sent.
struct Receiver {
    url: String,
    ids: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let ids: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = ids.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    if let Some(id) = headers.get("kirana-event-id").and_then(|v| v.to_str().ok()) {
                        seen.lock().unwrap().push(id.to_string());
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, ids }
    }

    fn distinct(&self) -> usize {
        self.ids.lock().unwrap().iter().collect::<HashSet<_>>().len()
    }

    fn requests(&self) -> usize {
        self.ids.lock().unwrap().len()
    }
}

/// Every consumer has finished every partition (acks are asynchronous, so this is polled).
async fn caught_up(bus: &JetStreamBus, consumers: &[&str]) {
    eventually(Duration::from_secs(20), "no lag left", || async {
        let lag = lag(bus, consumers, bus.config().partitions).await.map_err(|e| e.to_string())?;
        let behind: Vec<_> = lag.iter().filter(|(_, _, n)| *n > 0).collect();
        if behind.is_empty() { Ok(()) } else { Err(format!("{behind:?}")) }
    })
    .await;
}

async fn drained(world: &World) {
    eventually(Duration::from_secs(30), "the outbox drains", || async {
        match world.outbox_rows().await {
            0 => Ok(()),
            n => Err(format!("{n} rows left")),
        }
    })
    .await;
}

fn patient() -> RetryPolicy {
    RetryPolicy { attempts: 5, base: Duration::from_millis(20), max: Duration::from_millis(200) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_orders_reaches_every_consumer_once_and_in_order() {
    logs();
    let url = shared_nats();
    let world = World::new(2, 20).await;
    let bus = jetstream::connect(test_config(&url, 4)).await.expect("the shared NATS answers");
    let (consumers, sales) = watched_consumers();
    let list = names(&consumers);

    // A backlog first: how fast does the pipeline drain what piled up?
    world.burst(300, 8, Duration::ZERO).await;
    let backlog = world.events_written().await;
    let t0 = Instant::now();
    let running = Running::start(&bus, &world, consumers, patient());
    eventually(Duration::from_secs(60), "the backlog is applied", || world.all_settled()).await;
    let drain = t0.elapsed();

    // Then a live burst while it runs: how long from commit to effect?
    sales.measure_from(world.clock.now().millis());
    let t1 = Instant::now();
    world.burst(300, 8, Duration::from_millis(20)).await;
    eventually(Duration::from_secs(60), "the live burst is applied", || world.all_settled()).await;
    let live = t1.elapsed();

    drained(&world).await;
    caught_up(&bus, &list).await;
    // The stream holds every event exactly once: nothing lost, no republished duplicate.
    let written = world.events_written().await;
    assert_eq!(stream_messages(&bus, &bus.config().stream).await, written as u64);
    assert_eq!(world.orders_taken(), 600);
    assert_eq!(sales.out_of_order.load(Ordering::SeqCst), 0, "a store's orders arrived out of order");

    let lat = sales.sorted_latencies();
    println!(
        "BENCH jetstream events_per_s={:.0} p50_ms={:.1} p99_ms={:.1} (backlog of {backlog} events drained in {:.2} s \
         through 4 consumers x 4 partitions, 2 shards; live burst of {} events over {:.2} s; latency from occurred_at \
         to the sales consumer's effects, n={})",
        backlog as f64 / drain.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        drain.as_secs_f64(),
        written - backlog,
        live.as_secs_f64(),
        lat.len(),
    );
    running.stop().await;
    drop_streams(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_trims_no_further_than_the_outboxs_own_readers_have_read() {
    logs();
    let url = shared_nats();
    let world = World::new(1, 4).await;
    let mut config = test_config(&url, 4);
    config.trim_behind = vec!["search".into()];
    let bus = jetstream::connect(config).await.expect("the shared NATS answers");
    let (consumers, _) = watched_consumers();
    let list = names(&consumers);
    let running = Running::start(&bus, &world, consumers, patient());

    world.burst(20, 4, Duration::ZERO).await;
    eventually(Duration::from_secs(30), "applied", || world.all_settled()).await;
    caught_up(&bus, &list).await;
    let written = world.events_written().await;
    assert_eq!(world.outbox_rows().await, written, "the search indexer has read nothing: nothing is trimmed");

    // The indexer reads ten rows; the relay's next batch trims those and no more.
    let log = world.storage.logs().next().expect("a shard");
    let tenth = log.outbox_after(0, 10).await.unwrap().last().expect("ten rows").seq;
    log.apply("search", vec![], vec![(0, tenth)], world.clock.now()).await.unwrap();
    world.burst(1, 1, Duration::ZERO).await;
    let written = world.events_written().await;
    eventually(Duration::from_secs(30), "the relay trims behind the indexer", || async {
        match world.outbox_rows().await {
            n if n == written - 10 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    running.stop().await;
    drop_streams(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_killed_mid_burst_loses_nothing_and_applies_nothing_twice() {
    logs();
    let mut nats = OwnNats::start();
    let world = World::new(2, 12).await;
    let bus = jetstream::connect(test_config(&nats.url(), 4)).await.unwrap();
    let (consumers, sales) = watched_consumers();
    let list = names(&consumers);
    // Every shop's merchant listens for every event on a webhook.
    let receiver = Receiver::start().await;
    for shop in &world.shops {
        let new = kirana_storage::NewEndpoint::parse(&receiver.url, &["*".to_string()]).unwrap();
        world.storage.shard(&shop.scope).webhooks().create_webhook(&shop.scope, new, world.clock.now()).await.unwrap();
    }
    let (stop_hooks, hooks_rx) = watch::channel(false);
    let hooks = tokio::spawn(kirana_events::webhooks::run(
        world.storage.clone(),
        world.clock.clone(),
        kirana_events::webhooks::WebhookConfig {
            poll: Duration::from_millis(10),
            backoff_base: Duration::from_millis(10),
            allow_private_targets: true,
            ..Default::default()
        },
        hooks_rx,
    ));
    let running = Running::start(&bus, &world, consumers, patient());

    let w = world.clone();
    let shoppers = tokio::spawn(async move { w.burst(600, 6, Duration::from_millis(10)).await });
    // In the middle of it: some orders applied, more being relayed and consumed.
    eventually(Duration::from_secs(30), "some orders applied", || async {
        let mut applied = 0;
        for i in 0..world.shops.len() {
            applied += world.sales(i).await.orders;
        }
        if applied >= 60 { Ok(()) } else { Err(format!("{applied} applied")) }
    })
    .await;
    assert!(!shoppers.is_finished(), "the burst should still be running when NATS dies");
    nats.kill9();
    // Orders keep coming while it is down.
    let at_kill = world.orders_taken();
    eventually(Duration::from_secs(30), "orders taken while NATS is down", || async {
        let n = world.orders_taken() - at_kill;
        if n >= 60 { Ok(()) } else { Err(format!("{n} orders since the kill")) }
    })
    .await;
    nats.run();
    shoppers.await.unwrap();

    eventually(Duration::from_secs(60), "every order applied once after the restart", || world.all_settled()).await;
    drained(&world).await;
    caught_up(&bus, &list).await;
    assert_eq!(sales.out_of_order.load(Ordering::SeqCst), 0, "a store's orders arrived out of order");
    // Each receiver, deduplicating by the Kirana-Event-Id header, sees each event exactly once:
    // two per order (the order and its customer), none missing, none extra.
    let expected: i64 = (0..world.shops.len()).map(|i| 2 * world.taken(i).orders).sum();
    eventually(Duration::from_secs(60), "every webhook delivered", || async {
        let got = receiver.distinct() as i64;
        if got == expected { Ok(()) } else { Err(format!("{got} distinct event ids of {expected}")) }
    })
    .await;
    let _ = stop_hooks.send(true);
    hooks.await.unwrap();
    assert_eq!(receiver.distinct() as i64, expected, "no event delivered that should not have been");
    println!(
        "kill -9: {} webhook requests for {expected} events (duplicates absorbed by the id header)",
        receiver.requests()
    );
    println!(
        "kill -9: {} events written, {} messages in the stream, {} handed to the sales consumer again (absorbed)",
        world.events_written().await,
        stream_messages(&bus, &bus.config().stream).await,
        sales.repeats.load(Ordering::SeqCst),
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_nats_reset_mid_burst_lose_nothing_and_apply_nothing_twice() {
    // The shared server behind a proxy of this test's own: the resets cut this test's
    // connections (the relay's publishes, the consumers' fetches and acks) and no one else's.
    logs();
    let shared = shared_nats();
    let proxy = kirana_faultproxy::FaultProxy::start(shared.trim_start_matches("nats://").parse().unwrap())
        .expect("a proxy in front of NATS");
    let world = World::new(2, 12).await;
    let bus =
        jetstream::connect(test_config(&format!("nats://{}", proxy.addr()), 4)).await.expect("NATS via the proxy");
    let (consumers, sales) = watched_consumers();
    let list = names(&consumers);
    let running = Running::start(&bus, &world, consumers, patient());

    let w = world.clone();
    let shoppers = tokio::spawn(async move { w.burst(400, 6, Duration::from_millis(10)).await });
    // Three resets while orders are placed (and their events relayed and consumed): after a
    // quarter, a half and three quarters of the burst.
    let mut resets_mid_burst = 0;
    for round in 1..=3 {
        eventually(Duration::from_secs(60), "more orders taken", || async {
            let taken = world.orders_taken();
            if taken >= round * 100 { Ok(()) } else { Err(format!("{taken} taken")) }
        })
        .await;
        resets_mid_burst += usize::from(!shoppers.is_finished());
        proxy.reset_all();
    }
    shoppers.await.unwrap();
    assert_eq!(resets_mid_burst, 3, "every reset came while orders were still being placed");

    eventually(Duration::from_secs(60), "every order applied once after the resets", || world.all_settled()).await;
    drained(&world).await;
    caught_up(&bus, &list).await;
    assert_eq!(sales.out_of_order.load(Ordering::SeqCst), 0, "a store's orders arrived out of order");
    println!(
        "resets: {resets_mid_burst} of 3 during the burst; {} events written, {} messages in the stream, {} handed to the \
         sales consumer again (absorbed)",
        world.events_written().await,
        stream_messages(&bus, &bus.config().stream).await,
        sales.repeats.load(Ordering::SeqCst),
    );
    running.stop().await;
    drop_streams(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_nats_costs_one_timeout_per_cool_off_not_one_per_worker_and_loses_nothing() {
    logs();
    let shared = shared_nats();
    let proxy = kirana_faultproxy::FaultProxy::start(shared.trim_start_matches("nats://").parse().unwrap())
        .expect("a proxy in front of NATS");
    let world = World::new(2, 10).await;
    let cool_off = Duration::from_millis(500);
    let cfg = JetStreamConfig {
        timeout: Duration::from_millis(500),
        breaker_cool_off: cool_off,
        ..test_config(&format!("nats://{}", proxy.addr()), 4)
    };
    let bus = jetstream::connect(cfg).await.expect("NATS via the proxy");
    let (consumers, _sales) = watched_consumers();
    let list = names(&consumers);
    let workers = list.len() * 4 + 2;
    let running = Running::start(&bus, &world, consumers, patient());
    world.burst(40, 4, Duration::ZERO).await;
    eventually(Duration::from_secs(30), "applied before the fault", || world.all_settled()).await;

    // NATS accepts bytes and never answers. Whatever was in flight times out; then the breaker
    // lets one probe through per cool-off, and every other relay and consumer waits.
    proxy.set_blackhole(true);
    world.burst(40, 4, Duration::ZERO).await;
    eventually(Duration::from_secs(10), "the breaker opened", || async {
        if bus.breaker_state() == kirana_resilience::BreakerState::Closed { Err("closed".to_string()) } else { Ok(()) }
    })
    .await;
    // The first wave: calls sent before it opened run out their own deadline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (first_wave, start) = (bus.timeouts(), tokio::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = bus.timeouts() - first_wave;
    let window = start.elapsed();
    // A probe at most every cool-off (in fact every cool-off plus its timeout), one to spare.
    // Without the breaker each worker times out on its own, every second or two.
    let bound = (window.as_millis() / cool_off.as_millis()) as u64 + 1;
    println!("{workers} workers; first wave {first_wave} timeouts, then {later} in {window:?} (bound {bound})");
    assert!(later <= bound, "{later} timeouts in {window:?} with {workers} workers: not one probe per cool-off");

    proxy.heal();
    eventually(Duration::from_secs(60), "everything applied once after NATS answers", || world.all_settled()).await;
    drained(&world).await;
    caught_up(&bus, &list).await;
    assert_eq!(bus.breaker_state(), kirana_resilience::BreakerState::Closed);
    running.stop().await;
    drop_streams(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_go_on_while_nats_is_away_and_the_outbox_drains_when_it_returns() {
    // NATS is not even running when the node starts.
    logs();
    let mut nats = OwnNats::reserve();
    let world = World::new(2, 10).await;
    let bus = JetStreamBus::open(test_config(&nats.url(), 4)).await.expect("opening never waits for the server");
    let (consumers, sales) = watched_consumers();
    let list = names(&consumers);
    let running = Running::start(&bus, &world, consumers, patient());

    world.burst(50, 5, Duration::ZERO).await;
    assert_eq!(world.outbox_rows().await, world.events_written().await, "nothing could be relayed yet");
    nats.run();
    eventually(Duration::from_secs(30), "applied once NATS is up", || world.all_settled()).await;
    drained(&world).await;

    // Now it goes away while orders keep coming.
    nats.stop();
    let before = world.events_written().await;
    world.burst(100, 5, Duration::ZERO).await;
    let first = world.outbox_rows().await;
    assert_eq!(first, world.events_written().await - before, "every new event waits in the outbox");
    world.burst(50, 5, Duration::ZERO).await;
    let second = world.outbox_rows().await;
    assert!(second > first, "the outbox grows while NATS is away ({first} then {second})");

    nats.run();
    eventually(Duration::from_secs(60), "applied after NATS returns", || world.all_settled()).await;
    drained(&world).await;
    caught_up(&bus, &list).await;
    assert_eq!(world.orders_taken(), 200);
    assert_eq!(
        stream_messages(&bus, &bus.config().stream).await,
        world.events_written().await as u64,
        "every event is in the stream exactly once"
    );
    assert_eq!(sales.out_of_order.load(Ordering::SeqCst), 0, "a store's orders arrived out of order");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_while_other_partitions_move_on_and_replays_after_the_fix() {
    logs();
    let url = shared_nats();
    let world = World::new(2, 8).await;
    let cfg = test_config(&url, 4);
    let partitions = cfg.partitions;
    let bus = jetstream::connect(cfg).await.unwrap();
    let sick = world.shops[0].scope.store_id();
    let sick_partition = partition_of(sick, partitions);
    let others: Vec<usize> = (1..world.shops.len())
        .filter(|i| partition_of(world.shops[*i].scope.store_id(), partitions) != sick_partition)
        .collect();
    assert!(!others.is_empty(), "some shop should land in another partition");
    let on = Arc::new(AtomicBool::new(true));
    let consumers = || -> Vec<Arc<dyn Consumer>> {
        vec![Arc::new(CacheInvalidation), Arc::new(Poisoned { store: sick, on: on.clone() })]
    };

    // The relays alone first: until a consumer exists, its lag is everything in its partition.
    let (stop_relays, rx) = watch::channel(false);
    let relays: Vec<_> = (0..world.storage.shard_count())
        .map(|shard| {
            tokio::spawn(jetstream::run_relay(
                bus.clone(),
                world.storage.clone(),
                shard,
                rx.clone(),
                world.clock.clone(),
            ))
        })
        .collect();
    drained(&world).await;
    let _ = stop_relays.send(true);
    for r in relays {
        r.await.unwrap();
    }
    let before = lag(&bus, &["cache", "analytics"], partitions).await.unwrap();
    assert_eq!(before.len(), 2 * partitions as usize);
    let owed: u64 = before.iter().filter(|(c, ..)| c == "cache").map(|(.., n)| n).sum();
    assert_eq!(owed, world.events_written().await as u64, "{before:?}");

    // Then the sick partition retries for ever: the others must not wait for it.
    let forever = RetryPolicy { attempts: u32::MAX, base: Duration::from_millis(10), max: Duration::from_millis(40) };
    let running = Running::start(&bus, &world, consumers(), forever);
    for i in 0..world.shops.len() {
        for _ in 0..3 {
            world.order(i, 1).await;
        }
    }
    eventually(Duration::from_secs(30), "other partitions applied", || async {
        for &i in &others {
            world.settled(i).await?;
        }
        Ok(())
    })
    .await;
    assert_eq!(world.sales(0).await, Taken::default(), "the sick store's orders are not applied");
    let log = world.storage.log_for_store(sick).await.unwrap();
    assert!(log.dead_letters(true, 100).await.unwrap().is_empty(), "nothing parked while retrying");
    running.stop().await;

    // Restarted with a short retry budget: the partition reads again from its first
    // unacknowledged event, parks the sick store's orders and catches up.
    let running = Running::start(&bus, &world, consumers(), patient());
    eventually(Duration::from_secs(30), "the sick orders parked, everything else applied", || async {
        let parked = log.dead_letters(false, 100).await.map_err(|e| e.to_string())?.len();
        if parked != 3 {
            return Err(format!("{parked} parked"));
        }
        let in_dlq = stream_messages(&bus, &bus.config().dlq_stream).await;
        if in_dlq != 3 {
            return Err(format!("{in_dlq} in the dead-letter stream"));
        }
        for i in 1..world.shops.len() {
            world.settled(i).await?;
        }
        Ok(())
    })
    .await;
    assert_eq!(world.sales(0).await, Taken::default());
    assert_eq!(world.cache_version(0).await, world.page_events(0), "the cache consumer was never held up");

    let dead = log.dead_letters(false, 100).await.unwrap();
    for d in &dead {
        assert_eq!((d.consumer.as_str(), d.store_id, d.kind.as_str()), ("analytics", sick, kinds::ORDER_PLACED));
        assert_eq!(d.partition, sick_partition);
        assert!(d.error.contains("poisoned for the test"), "{}", d.error);
        assert_eq!(d.attempts, patient().attempts);
    }
    let dlq = bus.jetstream().get_stream(&bus.config().dlq_stream).await.unwrap();
    let first = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(first.subject.as_str(), bus.dlq_subject("analytics", sick_partition));
    let body: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(body["error"], "poisoned for the test");
    assert_eq!(body["event"]["store_id"], sick.to_string());

    // The fix ships; replaying applies each once.
    on.store(false, Ordering::SeqCst);
    let shard = log.shard_id().0 as usize;
    let replayers = consumers();
    for d in &dead {
        let n = kirana_events::pipeline::replay(&world.storage, &replayers, shard, d.id, &*world.clock).await.unwrap();
        assert_eq!(n, 1);
        let again =
            kirana_events::pipeline::replay(&world.storage, &replayers, shard, d.id, &*world.clock).await.unwrap();
        assert_eq!(again, 0, "a second replay changes nothing");
    }
    world.settled(0).await.unwrap();
    assert!(log.dead_letters(false, 100).await.unwrap().is_empty(), "replayed letters are marked");
    caught_up(&bus, &["cache", "analytics"]).await;
    running.stop().await;
    drop_streams(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_lost_to_another_reader_is_read_again_before_what_follows_it() {
    use async_nats::jetstream::consumer::PullConsumer;
    use futures::StreamExt;

    logs();
    let url = shared_nats();
    let world = World::new(1, 1).await;
    // One partition, one message per pull, and pulls that stay open: the test can queue a
    // pull of its own between two of the worker's and take a delivery from under it.
    let cfg = kirana_events::jetstream::JetStreamConfig {
        fetch_batch: 1,
        fetch_wait: Duration::from_secs(20),
        ..test_config(&url, 1)
    };
    let bus = jetstream::connect(cfg).await.unwrap();
    let store = world.shops[0].scope.store_id();
    let product = kirana_domain::ProductId::generate();
    let publish = |number: i64| {
        let bus = bus.clone();
        async move {
            let event = Event::new(
                store,
                kinds::ORDER_PLACED,
                SystemClock.now(),
                serde_json::json!({
                    "number": number, "totals": { "total": 1_000 },
                    "items": [{ "product_id": product, "title": "Chai", "quantity": 1, "line_total": 1_000 }]
                }),
            );
            // No shard header: the worker asks the directory where the store lives.
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(&event).unwrap().into())
                .message_id(event.id.to_string());
            bus.jetstream().send_publish(bus.subject(0, &event.kind), msg).await.unwrap().await.unwrap();
        }
    };
    let sales = Watch::new(Arc::new(SalesAnalytics));
    let (stop, rx) = watch::channel(false);
    let worker = tokio::spawn(jetstream::run_consumer(
        bus.clone(),
        world.storage.clone(),
        sales.clone(),
        0,
        rx,
        world.clock.clone(),
        patient(),
    ));
    let stream = bus.jetstream().get_stream(&bus.config().stream).await.unwrap();
    let durable = JetStreamBus::durable_name("analytics", 0);
    let waiting = |n: usize| {
        let (stream, durable) = (stream.clone(), durable.clone());
        async move {
            eventually(Duration::from_secs(10), "pulls waiting", || async {
                let info = stream.consumer_info(&durable).await.map_err(|e| e.to_string())?;
                if info.num_waiting == n { Ok(()) } else { Err(format!("{} waiting", info.num_waiting)) }
            })
            .await
        }
    };
    waiting(1).await;
    let thief: PullConsumer = stream.get_consumer(&durable).await.unwrap();
    let mut stolen = thief.batch().max_messages(1).expires(Duration::from_secs(20)).messages().await.unwrap();
    waiting(2).await;

    publish(1).await; // to the worker's pull
    eventually(Duration::from_secs(10), "order 1 applied", || async {
        if world.sales(0).await.orders == 1 { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    waiting(2).await; // the thief's, then the worker's next
    publish(2).await; // to the thief, who never acknowledges it
    let taken = tokio::time::timeout(Duration::from_secs(10), stolen.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&taken.payload).unwrap()["payload"]["number"], 2);
    publish(3).await; // to the worker, which sees a gap

    // Well before ack_wait (30 s) would bring order 2 back on its own.
    eventually(Duration::from_secs(10), "orders 2 and 3 applied", || async {
        let got = world.sales(0).await;
        if got == (Taken { orders: 3, revenue: 3_000 }) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
    assert_eq!(sales.out_of_order.load(Ordering::SeqCst), 0, "order 3 was applied before order 2");
    let _ = stop.send(true);
    worker.await.unwrap();
    drop_streams(&bus).await;
}

/// Every (span name, trace id) recorded by spans created on this thread.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> tracing_subscriber::Layer<S>
    for Spans
{
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct TraceId(Option<String>);
        impl tracing::field::Visit for TraceId {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "trace_id" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut trace = TraceId(None);
        values.record(&mut trace);
        if let (Some(t), Some(span)) = (trace.0, ctx.span(id)) {
            self.0.lock().unwrap().push((span.name().to_string(), t));
        }
    }
}

// One thread, so the test's subscriber sees the relay's and the consumers' tasks too.
#[tokio::test(flavor = "current_thread")]
async fn a_consumer_works_in_the_trace_of_the_request_that_wrote_the_event() {
    use tracing_subscriber::layer::SubscriberExt;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let url = shared_nats();
    let world = World::new(1, 1).await;
    let bus = jetstream::connect(test_config(&url, 4)).await.expect("the shared NATS answers");
    let spans = Spans::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    let request = kirana_storage::trace::TraceParent::parse(&format!("00-{TRACE}-00f067aa0ba902b7-01")).unwrap();
    kirana_storage::trace::scope(request, world.order(0, 1)).await;
    let running = Running::start(&bus, &world, vec![Arc::new(SalesAnalytics)], patient());
    eventually(Duration::from_secs(30), "the order's events are applied in its trace", || {
        let seen = spans.0.lock().unwrap().clone();
        async move {
            let joined = seen.iter().any(|(name, trace)| name == "event" && trace == TRACE);
            if joined { Ok(()) } else { Err(format!("event spans so far: {seen:?}")) }
        }
    })
    .await;
    running.stop().await;
    drop_streams(&bus).await;
}
