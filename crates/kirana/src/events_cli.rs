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
            // the relay keeps up); consumers' lag is read from the stream.
            let bus = match &config.nats_url {
                None => None,
                Some(url) => Some(
                    kirana_events::jetstream::connect(kirana_events::jetstream::JetStreamConfig::namespaced(
                        url,
                        &config.events_namespace,
                    ))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot reach NATS at {url}: {e}"))?,
                ),
            };
            let s = kirana_events::status::status_of(&storage, &names, DEFAULT_PARTITIONS, bus.as_ref(), clock.now())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            if !s.alerts.is_empty() {
                bail!("{} alert(s)", s.alerts.len());
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

/// The status as lines: shards' outboxes, consumers' lag (per shard on the embedded backend, per
/// partition in the stream on JetStream), who holds which lease, then the alerts.
fn print_status(s: &kirana_events::status::EventsStatus) {
    let print_consumer = |c: &kirana_events::status::ConsumerStatus, indent: &str| {
        let worst =
            c.partitions.iter().filter(|p| p.lag_events > 0).max_by(|a, b| a.lag_seconds.total_cmp(&b.lag_seconds));
        println!(
            "{indent}{:<14} lag {:>6} events, worst partition {} (oldest waiting {:.1} s){}",
            c.consumer,
            c.lag_events,
            worst.map(|w| w.partition.to_string()).unwrap_or_else(|| "—".into()),
            worst.map(|w| w.lag_seconds).unwrap_or(0.0),
            c.heartbeat_age_seconds.map(|a| format!(", heartbeat {a:.0} s ago")).unwrap_or_default()
        );
    };
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
            print_consumer(c, "  ");
        }
    }
    if let Some(js) = &s.jetstream {
        println!(
            "JetStream stream {}: {} events held{}",
            js.stream,
            js.messages.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
            js.error.as_ref().map(|e| format!(" — unreadable: {e}")).unwrap_or_default()
        );
        for c in &js.consumers {
            print_consumer(c, "  ");
        }
    }
    if s.leases.is_empty() {
        println!("leases: none recorded");
    } else {
        let mut by_holder: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for l in &s.leases {
            let holder = if l.expires_in_seconds > 0.0 { l.holder.as_str() } else { "(nobody: expired)" };
            by_holder.entry(holder).or_default().push(&l.name);
        }
        println!("leases:");
        for (holder, names) in by_holder {
            println!("  {holder:<24} {} job(s): {}", names.len(), names.join(" "));
        }
    }
    if s.alerts.is_empty() {
        println!("no alerts");
    }
    for a in &s.alerts {
        println!("ALERT {}: {}", a.name, a.detail);
    }
}
