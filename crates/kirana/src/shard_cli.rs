//! `kirana shard …`: the shards as an operator handles them — which stores sit where, moving a
//! store between PostgreSQL shards while it sells, resuming a move that stopped, and pinning a
//! store to a shard of its own. It owns the operator's checks around a move (dedications, the
//! cleanup delay); the move itself is `kirana_storage::postgres::moves`. It must never move a
//! store onto a shard dedicated to another one.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use kirana_domain::{Clock, StoreId, SystemClock};
use kirana_storage::Directory;
use kirana_storage::postgres::cluster::PgConfig;
use kirana_storage::postgres::directory::PgDirectory;
use kirana_storage::postgres::moves::MoveReport;
use kirana_storage::scope::ShardId;

use crate::backend::{self, host_of, require_postgres};
use crate::config::Config;

/// Beyond the directory TTL, how long a moved store's old rows stay readable: requests that
/// resolved the store just before the flip may still be running against the old shard.
const CLEANUP_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// Every shard: stores on it, the store it is dedicated to, its primary and replicas.
    List,
    /// Move a store to another shard while it keeps selling (PostgreSQL).
    Move {
        store_id: String,
        to_shard: u32,
        /// Seconds the old shard keeps the store's rows after the flip, for nodes whose cached
        /// directory still sends reads there. Default: the directory TTL plus 5 s.
        #[arg(long)]
        cleanup_delay: Option<u64>,
    },
    /// Continue a store's move that stopped half-way (a crash, a deploy), from its journal.
    Resume {
        store_id: String,
        #[arg(long)]
        cleanup_delay: Option<u64>,
    },
    /// The journal of moves: every store's latest move and where it got to.
    Moves,
    /// Give SHARD to STORE_ID alone: refused if other stores are on it; the store is moved
    /// there if it is elsewhere, and no new store is ever placed there until `unpin`.
    Pin {
        store_id: String,
        shard: u32,
        #[arg(long)]
        cleanup_delay: Option<u64>,
    },
    /// End a shard's dedication: its store stays, and new stores may be placed there again.
    Unpin { shard: u32 },
}

pub async fn run(config: &Config, command: ShardCommand) -> anyhow::Result<()> {
    let what = match &command {
        // The one subcommand that also works on SQLite.
        ShardCommand::List => return list(config).await,
        ShardCommand::Move { .. } => "kirana shard move",
        ShardCommand::Resume { .. } => "kirana shard resume",
        ShardCommand::Moves => "kirana shard moves",
        ShardCommand::Pin { .. } => "kirana shard pin",
        ShardCommand::Unpin { .. } => "kirana shard unpin",
    };
    let pg = require_postgres(config, what)?;
    let directory = PgDirectory::connect(&pg.directory, pg.pool).await.context("cannot reach the control database")?;
    match command {
        ShardCommand::List => list(config).await,
        ShardCommand::Move { store_id, to_shard, cleanup_delay } => {
            let store = parse_store(&store_id)?;
            let to = shard_arg(pg, to_shard)?;
            let dedications = directory.dedications().await?;
            if let Some((_, owner, _)) = dedications.iter().find(|(s, o, _)| *s == to && *o != store) {
                bail!(
                    "shard {} is dedicated to store {owner}; moving another store there would share it \
                     (kirana shard unpin {} first if that is intended)",
                    to.0,
                    to.0
                );
            }
            if let Some((pinned, ..)) = dedications.iter().find(|(s, o, _)| *o == store && *s != to) {
                bail!(
                    "store {store} is pinned to shard {}; unpin it first (kirana shard unpin {})",
                    pinned.0,
                    pinned.0
                );
            }
            let mover = backend::mover(pg)?.with_cleanup_delay(cleanup(pg, cleanup_delay));
            eprintln!("moving store {store} to shard {} …", to.0);
            let report = mover.move_store(store, to).await.map_err(|e| {
                anyhow::anyhow!("{e}\n(if the move had started, `kirana shard resume {store}` continues it)")
            })?;
            print_report(&report);
            Ok(())
        }
        ShardCommand::Resume { store_id, cleanup_delay } => {
            let store = parse_store(&store_id)?;
            let mover = backend::mover(pg)?.with_cleanup_delay(cleanup(pg, cleanup_delay));
            print_report(&mover.resume(store).await?);
            Ok(())
        }
        ShardCommand::Moves => {
            let moves = backend::mover(pg)?.moves().await?;
            if moves.is_empty() {
                println!("no moves");
            }
            for m in moves {
                println!(
                    "{}  shard {} -> {}  {:<11}  started {}  updated {}  {} rows copied{}{}",
                    m.store,
                    m.from.0,
                    m.to.0,
                    m.state.as_str(),
                    m.started_at.to_rfc3339(),
                    m.updated_at.to_rfc3339(),
                    m.rows_copied,
                    m.cutover_ms.map(|ms| format!(", cutover {ms} ms")).unwrap_or_default(),
                    m.error.map(|e| format!("  last error: {e}")).unwrap_or_default(),
                );
            }
            Ok(())
        }
        ShardCommand::Pin { store_id, shard, cleanup_delay } => {
            let store = parse_store(&store_id)?;
            let shard = shard_arg(pg, shard)?;
            let entry = directory.entry(store).await?.with_context(|| format!("no store {store} in the directory"))?;
            // Dedicated before the move, so no new store lands there while the store travels;
            // the directory refuses (naming why) a shard with other stores or another owner.
            directory.dedicate(shard, store, SystemClock.now()).await?;
            println!("shard {} is dedicated to store {store}; no new store will be placed there", shard.0);
            if entry.shard == shard {
                println!("the store is already on shard {}", shard.0);
                return Ok(());
            }
            let mover = backend::mover(pg)?.with_cleanup_delay(cleanup(pg, cleanup_delay));
            eprintln!("moving store {store} from shard {} to shard {} …", entry.shard.0, shard.0);
            let report = mover.move_store(store, shard).await.map_err(|e| {
                anyhow::anyhow!(
                    "the shard is dedicated, but moving the store there failed: {e}\n(`kirana shard resume {store}` \
                     continues a move that had started; `kirana shard unpin {}` undoes the dedication)",
                    shard.0
                )
            })?;
            print_report(&report);
            Ok(())
        }
        ShardCommand::Unpin { shard } => {
            let shard = shard_arg(pg, shard)?;
            match directory.undedicate(shard).await? {
                Some(store) => println!(
                    "shard {} is no longer dedicated to store {store}; new stores may be placed there",
                    shard.0
                ),
                None => println!("shard {} was not dedicated to any store", shard.0),
            }
            Ok(())
        }
    }
}

/// `kirana shard list`, on either backend.
async fn list(config: &Config) -> anyhow::Result<()> {
    let Some(pg) = &config.postgres else {
        let storage = backend::open_storage(config).await?;
        let counts = storage.directory().shard_counts().await?;
        println!("{:<6} {:>7}  file", "shard", "stores");
        for i in 0..storage.shard_count() {
            let n = counts.iter().find(|(s, _)| s.0 as usize == i).map_or(0, |(_, n)| *n);
            let file = config.data_dir.join("shards").join(format!("shard-{i:04}.db"));
            println!("{i:<6} {n:>7}  {}", file.display());
        }
        return Ok(());
    };
    let directory = PgDirectory::connect(&pg.directory, pg.pool).await.context("cannot reach the control database")?;
    let counts = directory.shard_counts().await?;
    let dedications = directory.dedications().await?;
    println!("{:<6} {:>7}  {:<36}  {:<30}  replicas", "shard", "stores", "dedicated-to", "primary");
    for (i, urls) in pg.shards.iter().enumerate() {
        let n = counts.iter().find(|(s, _)| s.0 as usize == i).map_or(0, |(_, n)| *n);
        let dedicated =
            dedications.iter().find(|(s, ..)| s.0 as usize == i).map_or("—".to_string(), |(_, st, _)| st.to_string());
        let replicas = if urls.replicas.is_empty() {
            "(none)".to_string()
        } else {
            urls.replicas.iter().map(|r| host_of(r)).collect::<Vec<_>>().join(", ")
        };
        println!("{i:<6} {n:>7}  {dedicated:<36}  {:<30}  {replicas}", host_of(&urls.primary));
    }
    // The directory may name shards this configuration lacks: a node would answer 500 for them.
    for (s, n) in counts.iter().filter(|(s, _)| s.0 as usize >= pg.shards.len()) {
        println!("{:<6} {n:>7}  NOT CONFIGURED: the directory places stores on it, but no --pg-shard names it", s.0);
    }
    Ok(())
}

fn parse_store(raw: &str) -> anyhow::Result<StoreId> {
    StoreId::parse(raw.trim()).with_context(|| format!("{raw:?} is not a store id (a UUID, as the API shows it)"))
}

fn shard_arg(pg: &PgConfig, shard: u32) -> anyhow::Result<ShardId> {
    if shard as usize >= pg.shards.len() {
        bail!(
            "there is no shard {shard}: {} shard{} configured (0 to {})",
            pg.shards.len(),
            if pg.shards.len() == 1 { " is" } else { "s are" },
            pg.shards.len() - 1
        );
    }
    Ok(ShardId(shard))
}

fn cleanup(pg: &PgConfig, secs: Option<u64>) -> Duration {
    secs.map(Duration::from_secs).unwrap_or(pg.directory_ttl + CLEANUP_MARGIN)
}

fn print_report(r: &MoveReport) {
    let secs = r.copy.as_secs_f64();
    let rate = if secs > 0.0 { format!("{:.0} rows/s", r.rows_copied as f64 / secs) } else { "—".into() };
    println!("moved store {} from shard {} to shard {}", r.store, r.from.0, r.to.0);
    if r.resumed_from.as_str() != "copying" {
        println!("  resumed from:   `{}`", r.resumed_from);
    }
    println!("  rows copied:    {} in {:.2} s ({rate})", r.rows_copied, secs);
    println!("  catch-up:       {} rounds, {} changes replayed", r.catch_up_rounds, r.changes_applied);
    println!(
        "  cutover pause:  {} ms (the store's writes waited or were refused meanwhile)",
        r.cutover_pause.as_millis()
    );
    println!("  total:          {:.2} s (including the cleanup delay)", r.total.as_secs_f64());
}
