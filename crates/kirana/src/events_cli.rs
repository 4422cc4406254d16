//! `kirana events …`: the pipeline as an operator sees it — status with alerts, and the dead
//! letters (list, show, replay after a fix).

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use kirana_domain::{Clock, SystemClock};
use kirana_events::partition::DEFAULT_PARTITIONS;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Outbox backlog per shard, lag per consumer and partition, heartbeats, dead letters, alerts.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure the pipeline (embedded, or JetStream with `--events nats://…`): events/s through
    /// every consumer and commit-to-effect latency, beside the same checkouts written with no
    /// pipeline (in a scratch directory).
    Bench {
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        #[arg(long, default_value_t = 200)]
        stores: usize,
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Where the scratch databases go (deleted afterwards); default: a temp directory.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Parked events: those that failed every retry.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Parked events not yet replayed (`--all`: replayed ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One parked event in full: `SHARD:ID` as `list` prints it.
    Show { id: String },
    /// Applies parked events again, after the cause was fixed: `SHARD:ID`, or `--all`.
    Replay {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

fn parse_id(raw: &str) -> anyhow::Result<(usize, i64)> {
    let (shard, id) = raw.split_once(':').context("a dead letter is named SHARD:ID, as `dlq list` prints it")?;
    Ok((shard.parse().context("SHARD must be a number")?, id.parse().context("ID must be a number")?))
}

pub async fn run(config: &Config, command: EventsCommand) -> anyhow::Result<()> {
    if let EventsCommand::Bench { orders, stores, shards, dir } = command {
        let scratch = match dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let report =
            kirana_events::bench::run(scratch.path(), orders, stores, shards, config.nats_url.as_deref()).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let storage = crate::backend::open_storage(config).await?;
    let consumers = kirana_events::all_consumers();
    let names: Vec<&str> = consumers.iter().map(|c| c.name()).collect();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match command {
        EventsCommand::Bench { .. } => unreachable!("handled above"),
        EventsCommand::Status { json } => {
            // With JetStream the outbox only feeds the relay (its backlog and age say whether
            // the relay keeps up); consumers' lag is read from the stream below.
            let outbox_readers: &[&str] = if config.nats_url.is_some() { &[] } else { &names };
            let s = kirana_events::status::status(&storage, outbox_readers, DEFAULT_PARTITIONS, clock.now()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            for shard in &s.shards {
                println!(
                    "shard {}: outbox {} rows (oldest {}), last position {}, {} dead letters",
                    shard.shard,
                    shard.outbox_rows,
                    shard.outbox_oldest_age_seconds.map(|a| format!("{a:.1} s ago")).unwrap_or_else(|| "—".into()),
                    shard.last_seq,
                    shard.dead_letters
                );
                for c in &shard.consumers {
                    let worst = c
                        .partitions
                        .iter()
                        .filter(|p| p.lag_events > 0)
                        .max_by(|a, b| a.lag_seconds.total_cmp(&b.lag_seconds));
                    println!(
                        "  {:<14} lag {:>6} events, worst partition {} ({:.1} s), heartbeat {}",
                        c.consumer,
                        c.lag_events,
                        worst.map(|w| w.partition.to_string()).unwrap_or_else(|| "—".into()),
                        worst.map(|w| w.lag_seconds).unwrap_or(0.0),
                        c.heartbeat_age_seconds.map(|a| format!("{a:.0} s ago")).unwrap_or_else(|| "never".into())
                    );
                }
            }
            if let Some(url) = &config.nats_url {
                // In the JetStream backend the outbox only feeds the relay; consumers' lag is
                // what the stream still holds for them.
                let bus = kirana_events::jetstream::connect(kirana_events::jetstream::JetStreamConfig::new(url))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach NATS at {url}: {e}"))?;
                let lag = kirana_events::jetstream::lag(&bus, &names, DEFAULT_PARTITIONS)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot read consumer lag from NATS: {e}"))?;
                println!("JetStream at {url}:");
                for name in &names {
                    let mine: Vec<_> = lag.iter().filter(|(c, ..)| c == name).collect();
                    let total: u64 = mine.iter().map(|(.., n)| n).sum();
                    let worst = mine.iter().max_by_key(|(.., n)| *n);
                    println!(
                        "  {name:<14} pending {total:>6} events{}",
                        worst
                            .filter(|w| w.2 > 0)
                            .map(|w| format!(", most in partition {} ({})", w.1, w.2))
                            .unwrap_or_default()
                    );
                }
            }
            if s.alerts.is_empty() {
                println!("no alerts");
            }
            for a in &s.alerts {
                println!("ALERT {}: {}", a.name, a.detail);
            }
            Ok(())
        }
        EventsCommand::Dlq { command: DlqCommand::List { all } } => {
            let mut any = false;
            for log in storage.logs() {
                for d in log.dead_letters(all, 10_000).await? {
                    any = true;
                    println!(
                        "{}:{}  {}  {} p{}  {} {}  attempts {}  {}{}",
                        d.shard,
                        d.id,
                        d.parked_at.to_rfc3339(),
                        d.consumer,
                        d.partition,
                        d.kind,
                        d.event_id,
                        d.attempts,
                        d.error,
                        d.replayed_at.map(|t| format!("  (replayed {})", t.to_rfc3339())).unwrap_or_default()
                    );
                }
            }
            if !any {
                println!("no dead letters");
            }
            Ok(())
        }
        EventsCommand::Dlq { command: DlqCommand::Show { id } } => {
            let (shard, id) = parse_id(&id)?;
            let log = storage.logs().nth(shard).with_context(|| format!("there is no shard {shard}"))?;
            let d = log.dead_letter(id).await.with_context(|| format!("no dead letter {shard}:{id}"))?;
            println!("{}", serde_json::to_string_pretty(&d)?);
            Ok(())
        }
        EventsCommand::Dlq { command: DlqCommand::Replay { id, all } } => {
            let targets: Vec<(usize, i64)> = match (id, all) {
                (Some(id), false) => vec![parse_id(&id)?],
                (None, true) => {
                    let mut v = Vec::new();
                    for (i, log) in storage.logs().enumerate() {
                        v.extend(log.dead_letters(false, 10_000).await?.into_iter().map(|d| (i, d.id)));
                    }
                    v
                }
                _ => bail!("name one dead letter (SHARD:ID) or pass --all"),
            };
            let mut failed = 0;
            for (shard, id) in targets {
                match kirana_events::pipeline::replay(&storage, &consumers, shard, id, &*clock).await {
                    Ok(n) => println!("{shard}:{id} replayed ({})", if n == 1 { "applied" } else { "already applied" }),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{shard}:{id} not replayed: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} dead letters could not be replayed");
            }
            Ok(())
        }
    }
}
