//! How fast a store moves between two PostgreSQL shards, and how long its writes pause at the
//! cutover, while a shopper keeps checking out against it.
//!
//! Creates three databases of its own on the server at 127.0.0.1:5432 (a control database and
//! two shards; dropped at the end), seeds one store with `products` products of one variant
//! each and some orders, then moves it back and forth `moves` times while a background task
//! places orders (each write fenced as the shard writes are, retried on the new shard when the
//! store has moved). Prints a markdown table.
//!
//! Every figure has a baseline measured in the same run, interleaved with the moves (the
//! machine is shared and noisy):
//! - copy rate: the same store's rows copied between the same two databases by plain binary
//!   `COPY (SELECT … WHERE store_id = …) TO STDOUT` → `COPY … FROM STDIN`, table by table, one
//!   transaction each side (repeatable read on the source, as the move's), no capture, journal
//!   or catch-up — once with the shards' capture triggers off (`session_replication_role =
//!   replica` on the target: the engine alone) and once with them on, as deployed; the copied
//!   rows are then deleted again, untimed, and the target's tombstone restored;
//! - cutover pause and checkout latency: the background checkout's own latency in a quiet
//!   window (no copy, no move) before every round.
//!
//! Each round is a quiet window, then the move and the two raw copies, in alternating order.
//!
//! cargo run --release -p kirana-storage --example pg_move_bench -- [products=20000] [moves=20] [quiet_ms=1000]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kirana_domain::cart::{Checkout, CheckoutCustomer, Quantity};
use kirana_domain::catalog::{NewVariant, ProductChange};
use kirana_domain::order::{Address, PaymentMethod};
use kirana_domain::store::StoreSettings;
use kirana_domain::{Amount, MerchantId, Phone, StoreId, Timestamp, VariantId};
use kirana_storage::postgres::moves::{Mover, STORE_TABLES};
use kirana_storage::postgres::pool::{PgPool, PoolRole, PoolSettings};
use kirana_storage::postgres::schema::{DIRECTORY, SHARD, migrate};
use kirana_storage::postgres::shard::{carts, catalog, checkout, stores};
use kirana_storage::{IdempotencyKey, ShardId};
use tokio_postgres::NoTls;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let products: i64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let moves: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let quiet = Duration::from_millis(args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000));

    let (admin, conn) = tokio_postgres::connect(&format!("{SERVER}/postgres"), NoTls)
        .await
        .map_err(|e| format!("PostgreSQL is not reachable at {SERVER} ({e})"))?;
    tokio::spawn(conn);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let names: Vec<String> = ["control", "one", "two"].iter().map(|n| format!("kirana_bench_{n}_{tag}")).collect();
    for n in &names {
        admin.batch_execute(&format!("CREATE DATABASE {n}")).await?;
    }
    let result = bench(&names, products, moves, quiet).await;
    for n in &names {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)")).await?;
    }
    result
}

struct World {
    control: Arc<PgPool>,
    shards: HashMap<ShardId, Arc<PgPool>>,
}

impl World {
    async fn home(&self, store: StoreId) -> Result<ShardId, Failure> {
        let c = self.control.get().await?;
        let shard: i64 = c.query_one("SELECT shard FROM stores WHERE store_id = $1", &[&store.uuid()]).await?.get(0);
        Ok(ShardId(shard as u32))
    }
}

async fn bench(names: &[String], products: i64, moves: usize, quiet: Duration) -> Result<(), Failure> {
    let settings =
        PoolSettings { max_size: 8, acquire_timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(5) };
    let mut pools = vec![];
    for (i, n) in names.iter().enumerate() {
        let url = format!("{SERVER}/{n}");
        let (mut c, conn) = tokio_postgres::connect(&url, NoTls).await?;
        tokio::spawn(conn);
        migrate(&mut c, if i == 0 { DIRECTORY } else { SHARD }).await?;
        let role = if i == 0 { PoolRole::Directory } else { PoolRole::Primary(ShardId(i as u32)) };
        pools.push(Arc::new(PgPool::new(&url, role, settings)?));
    }
    let world = Arc::new(World {
        control: pools[0].clone(),
        shards: HashMap::from([(ShardId(1), pools[1].clone()), (ShardId(2), pools[2].clone())]),
    });
    let mover = Mover::new(world.control.clone(), world.shards.clone()).with_cleanup_delay(Duration::ZERO);

    // The store, on shard 1.
    let t0 = Instant::now();
    let store = StoreId::generate();
    let owner = MerchantId::generate();
    let now = Timestamp::from_millis(1_750_000_000_000);
    {
        let mut c = pools[1].get().await?;
        let t = c.transaction().await?;
        stores::insert(&t, store, owner, "Bench", &StoreSettings::default(), now).await?;
        t.commit().await?;
        world
            .control
            .get()
            .await?
            .execute(
                "INSERT INTO stores (store_id, shard, owner_id, created_at) VALUES ($1, 1, $2, $3)",
                &[&store.uuid(), &owner.uuid(), &now.millis()],
            )
            .await?;
        // The catalog in bulk: the move copies rows, however they were written.
        c.execute(
            "WITH p AS (
                 INSERT INTO products (store_id, product_id, title, description, status, category_id, images, options, created_at, updated_at)
                 SELECT $1, gen_random_uuid(), 'Product ' || i, repeat('words ', 20), 'active', NULL,
                        '[\"https://img.example/p.jpg\"]', '[]', $3, $3
                 FROM generate_series(1::bigint, $2::bigint) i
                 RETURNING product_id)
             INSERT INTO variants (store_id, variant_id, product_id, position, options, sku, price, compare_at_price, stock)
             SELECT $1, gen_random_uuid(), product_id, 0, '[]', NULL, 10000, NULL, 100 FROM p",
            &[&store.uuid(), &products, &now.millis()],
        )
        .await?;
        let t = c.transaction().await?;
        let hot = catalog::create_product(
            &t,
            store,
            ProductChange {
                title: Some("Hot".into()),
                images: Some(vec![]),
                options: Some(vec![]),
                variants: Some(vec![NewVariant {
                    id: None,
                    options: vec![],
                    sku: Some("HOT".into()),
                    price: Amount::from_stored(5_000),
                    compare_at_price: None,
                    stock: Some(10_000_000),
                }]),
                ..Default::default()
            },
            now,
        )
        .await?;
        t.commit().await?;
        drop(c);
        let variant = hot.variants[0].id;
        for i in 0..200 {
            let _ = place(&world, store, variant, i, now).await?;
        }
        let seeded = t0.elapsed();
        let c = pools[1].get().await?;
        let rows: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM products WHERE store_id = $1) + (SELECT count(*) FROM variants WHERE store_id = $1)
                      + (SELECT count(*) FROM orders WHERE store_id = $1)",
                &[&store.uuid()],
            )
            .await?
            .get(0);
        eprintln!("seeded {rows} product, variant and order rows in {seeded:?}");

        // A shopper checking out all along; every checkout's start, duration and refused writes
        // are kept, and classified afterwards by the phases the main loop records.
        let stop = Arc::new(AtomicBool::new(false));
        let shopper = {
            let (world, stop) = (world.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(100_000);
                let mut i = 1_000;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (refused, blocked) = place(&world, store, variant, i, now).await?;
                    samples.push(Sample { start: t, took: t.elapsed(), refused, blocked });
                    i += 1;
                }
                Ok::<_, Failure>(samples)
            })
        };

        // The baseline's own connections (outside the pools, so a `SET` stays here).
        let mut raw = vec![];
        for n in &names[1..] {
            let (c, conn) = tokio_postgres::connect(&format!("{SERVER}/{n}"), NoTls).await?;
            tokio::spawn(conn);
            raw.push(c);
        }
        let tables = copy_statements(&raw[0], store).await?;
        // The cutover watcher's own connections: control, shard 1, shard 2.
        let mut watch = vec![];
        for n in names {
            let (c, conn) = tokio_postgres::connect(&format!("{SERVER}/{n}"), NoTls).await?;
            tokio::spawn(conn);
            watch.push(Arc::new(c));
        }
        let mut phases: Vec<[Duration; 4]> = vec![];

        // Rounds of: a quiet window (checkouts only), then the move and the two raw copies, the
        // order alternating between rounds so drift and leftovers (dead rows of the previous
        // move's cleanup) fall on both. Every copy goes from the store's current shard to the other.
        tokio::time::sleep(Duration::from_millis(500)).await; // warm-up, not counted
        let load_before = loadavg();
        let (mut quiet_windows, mut move_windows, mut raw_windows) = (vec![], vec![], vec![]);
        let mut reports = vec![];
        let (mut raw_on, mut raw_off) = (vec![], vec![]); // (rows, duration) per round
        for m in 0..moves {
            let q0 = Instant::now();
            tokio::time::sleep(quiet).await;
            quiet_windows.push((q0, Instant::now()));
            let steps = if m % 2 == 0 {
                [Step::RawOff, Step::RawOn, Step::Move]
            } else {
                [Step::Move, Step::RawOn, Step::RawOff]
            };
            for step in steps {
                let from = world.home(store).await?;
                let to = if from == ShardId(1) { ShardId(2) } else { ShardId(1) };
                let w0 = Instant::now();
                match step {
                    Step::Move => {
                        let watcher =
                            tokio::spawn(watch_cutover(watch[0].clone(), watch[from.0 as usize].clone(), store, to));
                        let r = mover.move_store(store, to).await;
                        watcher.abort();
                        let w = watcher.await;
                        let r = r?;
                        move_windows.push((w0, Instant::now()));
                        if let Ok(Ok(w)) = w {
                            eprintln!(
                                "round {:>2} cutover seen from outside: freeze lock {:?}, older transactions {:?} (oldest xid held in {}), drain {:?}, flip {:?}",
                                m + 1,
                                w.phases[0],
                                w.phases[1],
                                w.oldest,
                                w.phases[2],
                                w.phases[3]
                            );
                            phases.push(w.phases);
                        }
                        eprintln!(
                            "round {:>2} move -> shard {}: {} rows, copy {:?} ({:.0} rows/s), {} rounds / {} changes, pause {:?}, total {:?}",
                            m + 1,
                            to.0,
                            r.rows_copied,
                            r.copy,
                            r.rows_copied as f64 / r.copy.as_secs_f64(),
                            r.catch_up_rounds,
                            r.changes_applied,
                            r.cutover_pause,
                            r.total
                        );
                        reports.push(r);
                    }
                    Step::RawOn | Step::RawOff => {
                        let triggers = step == Step::RawOn;
                        let (s, d) = if from == ShardId(1) { (&raw[0], &raw[1]) } else { (&raw[1], &raw[0]) };
                        let (rows, took) = raw_copy(s, d, &tables, store, from, triggers).await?;
                        raw_windows.push((w0, Instant::now()));
                        eprintln!(
                            "round {:>2} raw COPY -> shard {} (triggers {}): {rows} rows in {took:?} ({:.0} rows/s)",
                            m + 1,
                            to.0,
                            if triggers { "on" } else { "off" },
                            rows as f64 / took.as_secs_f64()
                        );
                        if triggers { raw_on.push((rows, took)) } else { raw_off.push((rows, took)) }
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let load_after = loadavg();
        let samples = shopper.await??;

        // Copy rates, and each round's move rate over the same round's raw rates (paired).
        let rate = |rows: u64, d: Duration| rows as f64 / d.as_secs_f64();
        let move_rates: Vec<f64> = reports.iter().map(|r| rate(r.rows_copied, r.copy)).collect();
        let off_rates: Vec<f64> = raw_off.iter().map(|&(n, d)| rate(n, d)).collect();
        let on_rates: Vec<f64> = raw_on.iter().map(|&(n, d)| rate(n, d)).collect();
        let vs_off: Vec<f64> = move_rates.iter().zip(&off_rates).map(|(a, b)| a / b).collect();
        let vs_on: Vec<f64> = move_rates.iter().zip(&on_rates).map(|(a, b)| a / b).collect();
        let on_vs_off: Vec<f64> = on_rates.iter().zip(&off_rates).map(|(a, b)| a / b).collect();

        // Checkouts: wholly inside a quiet window; overlapping a move; overlapping a raw copy.
        let within =
            |s: &Sample, w: &[(Instant, Instant)]| w.iter().any(|&(a, b)| s.start >= a && s.start + s.took <= b);
        let overlaps =
            |s: &Sample, w: &[(Instant, Instant)]| w.iter().any(|&(a, b)| s.start < b && s.start + s.took > a);
        let pick = |f: &dyn Fn(&Sample) -> bool| {
            let mut v: Vec<Duration> = samples.iter().filter(|s| f(s)).map(|s| s.took).collect();
            v.sort();
            v
        };
        let quiet_ck = pick(&|s| within(s, &quiet_windows));
        let move_ck = pick(&|s| overlaps(s, &move_windows));
        let raw_ck = pick(&|s| overlaps(s, &raw_windows));
        let refused: u64 = samples.iter().filter(|s| overlaps(s, &move_windows)).map(|s| s.refused).sum();
        let delayed = samples.iter().filter(|s| s.refused > 0).count();
        let mut blocked: Vec<Duration> = samples.iter().filter_map(|s| s.blocked).collect();
        blocked.sort();
        let refused_elsewhere: u64 = samples.iter().filter(|s| !overlaps(s, &move_windows)).map(|s| s.refused).sum();

        let mut pauses: Vec<Duration> = reports.iter().map(|r| r.cutover_pause).collect();
        let mut totals: Vec<Duration> = reports.iter().map(|r| r.total).collect();
        pauses.sort();
        totals.sort();
        let rows = reports.iter().map(|r| r.rows_copied).max().unwrap_or(0);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let q50 = pct(&quiet_ck, 0.5);
        let x = |d: Duration| d.as_secs_f64() / q50.as_secs_f64();
        let rates = |v: &[f64]| format!("{:.0} rows/s ({:.0}–{:.0})", median(v), min(v), max(v));
        let ratios = |v: &[f64]| format!("**{:.2}** ({:.2}–{:.2})", median(v), min(v), max(v));

        println!(
            "`cargo run --release -p kirana-storage --example pg_move_bench -- {products} {moves} {}`\n",
            quiet.as_millis()
        );
        println!(
            "{moves} moves of one store ({rows} rows at the last move) between two shard databases, each round \
             preceded by a {} ms quiet window; medians, (min–max) over the rounds; ratios paired per round. \
             Load average (1 min) before / after: {load_before} / {load_after}.\n",
            quiet.as_millis()
        );
        println!("| what | store moves | baseline (same run) | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| copy rate | {} | raw binary `COPY … TO STDOUT` → `COPY … FROM STDIN`, capture triggers off: {} | {} |",
            rates(&move_rates),
            rates(&off_rates),
            ratios(&vs_off)
        );
        println!(
            "| copy rate | (same) | the same raw `COPY`, capture triggers on (as deployed): {} | {} (triggers on / off: {:.2}) |",
            rates(&on_rates),
            ratios(&vs_on),
            median(&on_vs_off)
        );
        println!(
            "| cutover pause p50 | {} | a quiet checkout's p50: {} | **{:.1}×** a checkout |",
            ms(pct(&pauses, 0.5)),
            ms(q50),
            x(pct(&pauses, 0.5))
        );
        println!(
            "| cutover pause max | {} | a quiet checkout's p50: {} | **{:.1}×** |",
            ms(pauses[pauses.len() - 1]),
            ms(q50),
            x(pauses[pauses.len() - 1])
        );
        println!(
            "| checkout p50 / p99 while moving ({} checkouts) | {} / {} | quiet ({} checkouts): {} / {} | {:.2} / **{:.2}** |",
            move_ck.len(),
            ms(pct(&move_ck, 0.5)),
            ms(pct(&move_ck, 0.99)),
            quiet_ck.len(),
            ms(q50),
            ms(pct(&quiet_ck, 0.99)),
            pct(&move_ck, 0.5).as_secs_f64() / q50.as_secs_f64(),
            pct(&move_ck, 0.99).as_secs_f64() / pct(&quiet_ck, 0.99).as_secs_f64()
        );
        println!(
            "| slowest checkout while moving | {} | quiet: {}; during a raw copy: {} (p99 {}) | {:.1} |",
            ms(move_ck[move_ck.len() - 1]),
            ms(quiet_ck[quiet_ck.len() - 1]),
            ms(raw_ck[raw_ck.len() - 1]),
            ms(pct(&raw_ck, 0.99)),
            move_ck[move_ck.len() - 1].as_secs_f64() / quiet_ck[quiet_ck.len() - 1].as_secs_f64()
        );
        println!(
            "| writes refused during cutovers (fence, retried on the new shard) | {refused} in {delayed} checkouts; none lost | \
             refused outside moves: {refused_elsewhere} | — |"
        );
        if !phases.is_empty() {
            let col = |i: usize| median_d(&phases.iter().map(|p| p[i]).collect::<Vec<_>>());
            let colmax = |i: usize| phases.iter().map(|p| p[i]).max().unwrap_or_default();
            println!(
                "| cutover pause, by part, p50 (max), as an outside watcher polling every ~1 ms saw it ({} cutovers) | \
                 freeze lock {} ({}); older transactions {} ({}); final drain {} ({}); directory flip {} ({}) | — | — |",
                phases.len(),
                ms(col(0)),
                ms(colmax(0)),
                ms(col(1)),
                ms(colmax(1)),
                ms(col(2)),
                ms(colmax(2)),
                ms(col(3)),
                ms(colmax(3))
            );
        }
        if !blocked.is_empty() {
            println!(
                "| a checkout's writes refused, first refusal → accepted on the new shard (p50 / max over {} cutovers it met) | {} / {} | cutover pause: {} / {} | — |",
                blocked.len(),
                ms(pct(&blocked, 0.5)),
                ms(blocked[blocked.len() - 1]),
                ms(pct(&pauses, 0.5)),
                ms(pauses[pauses.len() - 1])
            );
        }
        println!(
            "| move total (capture → cleanup) p50 | {} (max {}) | raw copy, triggers off: {} | {:.1} |",
            ms(pct(&totals, 0.5)),
            ms(totals[totals.len() - 1]),
            ms(median_d(&raw_off.iter().map(|r| r.1).collect::<Vec<_>>())),
            pct(&totals, 0.5).as_secs_f64() / median_d(&raw_off.iter().map(|r| r.1).collect::<Vec<_>>()).as_secs_f64()
        );
    }
    for p in &pools {
        p.close();
    }
    Ok(())
}

/// One checkout of the shopper: when it started, how long it took, how many writes were refused.
struct Sample {
    start: Instant,
    took: Duration,
    refused: u64,
    /// From its first refused write to the write that then succeeded on the new shard.
    blocked: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Move,
    /// The raw copy with the capture triggers on (as deployed).
    RawOn,
    /// The raw copy with them off: the engine alone.
    RawOff,
}

/// Per store table: its name, the `COPY … TO STDOUT` of the store's rows and the
/// `COPY … FROM STDIN` taking them; the same columns the move copies (all but the outbox's
/// `seq`, which the target assigns, hence the outbox read in `seq` order as the move reads it).
async fn copy_statements(c: &tokio_postgres::Client, store: StoreId) -> Result<Vec<(String, String, String)>, Failure> {
    let mut out = vec![];
    for &name in STORE_TABLES {
        let cols: Vec<String> = c
            .query(
                "SELECT attname::text FROM pg_attribute
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|c| !(name == "outbox" && c == "seq"))
            .map(|c| format!("\"{c}\""))
            .collect();
        let cols = cols.join(", ");
        let order = if name == "outbox" { " ORDER BY seq" } else { "" };
        out.push((
            name.to_string(),
            format!(
                "COPY (SELECT {cols} FROM \"{name}\" WHERE store_id = '{}'{order}) TO STDOUT (FORMAT binary)",
                store.uuid()
            ),
            format!("COPY \"{name}\" ({cols}) FROM STDIN (FORMAT binary)"),
        ));
    }
    Ok(out)
}

/// The baseline: the store's rows from `src` to `dst` by plain binary COPY, one transaction
/// each side; timed from the source's `BEGIN` to both commits, as the move's copy is timed.
/// The target first loses the store's rows (the tombstone a move leaves), as in the move's copy.
/// Afterwards, untimed, the copied rows are deleted and the tombstone put back as it was.
async fn raw_copy(
    src: &tokio_postgres::Client,
    dst: &tokio_postgres::Client,
    tables: &[(String, String, String)],
    store: StoreId,
    home: ShardId,
    triggers: bool,
) -> Result<(u64, Duration), Failure> {
    let id = store.uuid();
    let tombstone = dst.query_opt("SELECT 1 FROM stores WHERE store_id = $1", &[&id]).await?.is_some();
    if !triggers {
        dst.batch_execute("SET session_replication_role = replica").await?;
    }
    let t = Instant::now();
    src.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    dst.batch_execute("BEGIN").await?;
    for (name, _, _) in tables {
        dst.execute(&format!("DELETE FROM \"{name}\" WHERE store_id = $1"), &[&id]).await?;
    }
    let mut rows = 0;
    for (_, out, inn) in tables {
        let stream = src.copy_out(out.as_str()).await?;
        let sink = dst.copy_in(inn.as_str()).await?;
        let mut stream = std::pin::pin!(stream);
        let mut sink = std::pin::pin!(sink);
        while let Some(chunk) = stream.next().await {
            sink.feed(chunk?).await?;
        }
        rows += sink.as_mut().finish().await?;
    }
    dst.batch_execute("COMMIT").await?;
    src.batch_execute("COMMIT").await?;
    let took = t.elapsed();
    if !triggers {
        dst.batch_execute("RESET session_replication_role").await?;
    }
    dst.batch_execute("BEGIN").await?;
    for (name, _, _) in tables.iter().filter(|t| t.0 != "stores") {
        dst.execute(&format!("DELETE FROM \"{name}\" WHERE store_id = $1"), &[&id]).await?;
    }
    if tombstone {
        dst.execute("UPDATE stores SET moved_to = $2 WHERE store_id = $1", &[&id, &i64::from(home.0)]).await?;
    } else {
        dst.execute("DELETE FROM stores WHERE store_id = $1", &[&id]).await?;
    }
    dst.batch_execute("COMMIT").await?;
    Ok((rows, took))
}

struct Cutover {
    /// Freeze's row lock, the wait for older transactions, the final drain, the flip.
    phases: [Duration; 4],
    /// The database of the oldest transaction holding an xid when the freeze committed.
    oldest: String,
}

/// Watches one move from outside: polls the journal until it says `frozen`, then every
/// millisecond the source (fence set? oldest running xid? captured keys left?) and the
/// directory, and splits the cutover at what it saw. Granularity: a poll (~1–2 ms).
async fn watch_cutover(
    ctl: Arc<tokio_postgres::Client>,
    src: Arc<tokio_postgres::Client>,
    store: StoreId,
    to: ShardId,
) -> Result<Cutover, Failure> {
    let id = store.uuid();
    loop {
        let st: Option<String> =
            ctl.query_opt("SELECT state FROM store_moves WHERE store_id = $1", &[&id]).await?.map(|r| r.get(0));
        if st.as_deref() == Some("frozen") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let frozen = Instant::now();
    let (mut fenced, mut horizon, mut waited, mut drained) = (None, 0i64, None, None);
    let mut oldest = String::new();
    loop {
        let r = src
            .query_one(
                "SELECT moved_to IS NOT NULL, pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                        pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                        (SELECT count(*) FROM move_changes WHERE store_id = $1)
                 FROM stores WHERE store_id = $1",
                &[&id],
            )
            .await?;
        let (set, xmin, xmax, left): (bool, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let t = Instant::now();
        if set && fenced.is_none() {
            fenced = Some(t);
            horizon = xmax;
            oldest = src
                .query_opt(
                    "SELECT coalesce(datname, '?') || ' (' || coalesce(application_name, '') || ')' FROM pg_stat_activity
                     WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY age(backend_xid) DESC LIMIT 1",
                    &[],
                )
                .await?
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_else(|| "none".into());
        }
        if fenced.is_some() && waited.is_none() && xmin >= horizon {
            waited = Some(t);
        }
        if waited.is_some() && drained.is_none() && left == 0 {
            drained = Some(t);
        }
        if drained.is_some() {
            let shard: i64 = ctl.query_one("SELECT shard FROM stores WHERE store_id = $1", &[&id]).await?.get(0);
            if shard == i64::from(to.0) {
                let (f, w, d) = (fenced.unwrap_or(t), waited.unwrap_or(t), drained.unwrap_or(t));
                return Ok(Cutover { phases: [f - frozen, w - f, d - w, Instant::now() - d], oldest });
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// Nearest-rank percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    pct(&v, 0.5)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// One order of the hot product, each write fenced as a shard write is; returns how many
/// times a write was refused because the store had moved, and for how long.
async fn place(
    world: &World,
    store: StoreId,
    variant: VariantId,
    i: u64,
    now: Timestamp,
) -> Result<(u64, Option<Duration>), Failure> {
    let mut token = [0u8; 32];
    token[..8].copy_from_slice(&i.to_le_bytes());
    let req = Checkout {
        customer: CheckoutCustomer {
            name: "Bench".into(),
            phone: Phone::parse(&format!("+9198{:08}", i % 100_000_000)).map_err(|e| format!("{e:?}"))?,
            email: None,
        },
        address: Address {
            line1: "1 Main Road".into(),
            line2: None,
            landmark: None,
            city: "Pune".into(),
            state: None,
            postal_code: "411001".into(),
            country: "IN".into(),
        },
        payment_method: PaymentMethod::Cod,
        coupon_code: None,
        note: None,
    };
    let idem = IdempotencyKey { key: format!("bench-{i}"), fingerprint: [1; 32] };
    let mut refused = 0;
    let mut first_refusal = None;
    let mut blocked = None;
    let mut cart = None;
    for step in 0..3 {
        loop {
            let pool = &world.shards[&world.home(store).await?];
            let mut c = pool.get().await?;
            let t = c.transaction().await?;
            let fence =
                t.query_opt("SELECT moved_to FROM stores WHERE store_id = $1 FOR KEY SHARE", &[&store.uuid()]).await?;
            if !matches!(fence.map(|r| r.get::<_, Option<i64>>(0)), Some(None)) {
                t.rollback().await?;
                refused += 1;
                first_refusal.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            match step {
                0 => cart = Some(carts::create(&t, store, token, now).await?.id),
                1 => {
                    let q = Quantity::parse(1).map_err(|e| format!("{e:?}"))?;
                    carts::set_item(&t, store, cart.ok_or("no cart")?, token, variant, q, now).await?;
                }
                _ => {
                    checkout::checkout(&t, store, cart.ok_or("no cart")?, token, &req, Some(&idem), now).await?;
                }
            }
            t.commit().await?;
            if let Some(f) = first_refusal.take() {
                blocked = Some(blocked.unwrap_or(Duration::ZERO) + f.elapsed());
            }
            break;
        }
    }
    Ok((refused, blocked))
}
