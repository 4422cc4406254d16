//! Starting and stopping the pipeline. Its work is split into leased jobs ([`crate::assign`]),
//! so several nodes on the same databases share it and each piece runs on one node at a time:
//! - embedded backend: per shard, `events.shard-N` (a reader per consumer, and the trimmer that
//!   keeps the outbox short);
//! - JetStream: per shard, `events.relay.shard-N`; per partition, `events.partition-P` (a
//!   worker per consumer);
//! - either: per shard, `notify.shard-N` (sending queued notifications);
//! - and whatever the caller adds (the payment reconciler and payouts).
//!
//! Every node also runs, without a lease, the webhook worker (deliveries are leased row by
//! row) and the status watcher that keeps the pipeline's lag in `/metrics`. Replaying parked
//! events is here too.

use std::sync::Arc;
use std::time::Duration;

use kirana_domain::Clock;
use kirana_storage::{Applied, Storage, StorageError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::assign::{AssignConfig, Job, Share};
use crate::consumers::Consumer;
use crate::embedded::{Reader, ReaderConfig, trim_shard};
use crate::notify::{self, Messenger};
use crate::status::Heartbeats;

/// Where the events travel between the outbox and the consumers.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// The outbox is the log: readers per (consumer, shard), positions in the shard.
    #[default]
    Embedded,
    /// A relay per shard into NATS JetStream, durable consumers per (consumer, partition).
    JetStream(Box<crate::jetstream::JetStreamConfig>),
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub backend: Backend,
    pub reader: ReaderConfig,
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Other readers of the outbox, with one position per shard, that trimming must wait for
    /// (the search indexer's consumer name): the embedded trimmer's and the JetStream relay's.
    pub also_trim_behind: Vec<String>,
    /// This node's name among the nodes sharing the leases, its lease life and its patience
    /// with a stopping job.
    pub assign: AssignConfig,
    /// How often the status watcher reads the pipeline's lag for `/metrics`.
    pub watch_every: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            backend: Backend::default(),
            reader: ReaderConfig::default(),
            webhooks: Default::default(),
            also_trim_behind: vec![],
            assign: AssignConfig::new(crate::assign::default_node_name()),
            watch_every: Duration::from_secs(5),
        }
    }
}

/// The running pipeline. Dropping it does not stop it; call [`Pipeline::stop`].
pub struct Pipeline {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub heartbeats: Arc<Heartbeats>,
    /// The leases this node holds (the jobs it runs) and how many nodes share them.
    pub share: watch::Receiver<Share>,
    jetstream: Arc<std::sync::OnceLock<crate::jetstream::JetStreamBus>>,
}

impl Pipeline {
    pub fn start(
        storage: Storage,
        consumers: Vec<Arc<dyn Consumer>>,
        messenger: Arc<dyn Messenger>,
        clock: Arc<dyn Clock>,
        cfg: PipelineConfig,
    ) -> Pipeline {
        Pipeline::start_with(storage, consumers, messenger, clock, cfg, Vec::new())
    }

    /// [`Pipeline::start`], with more leased jobs to share between the nodes (`extra`).
    pub fn start_with(
        storage: Storage,
        consumers: Vec<Arc<dyn Consumer>>,
        messenger: Arc<dyn Messenger>,
        clock: Arc<dyn Clock>,
        cfg: PipelineConfig,
        extra: Vec<Job>,
    ) -> Pipeline {
        let (shutdown, rx) = watch::channel(false);
        let heartbeats = Arc::new(Heartbeats::default());
        let (share_tx, share) = watch::channel(Share::default());
        let jetstream = Arc::new(std::sync::OnceLock::new());
        let names: Vec<&'static str> = consumers.iter().map(|c| c.name()).collect();
        let partitions = cfg.reader.partitions;
        let mut jobs = extra;
        for shard in 0..storage.shard_count() {
            let (storage, messenger, clock) = (storage.clone(), messenger.clone(), clock.clone());
            jobs.push(Job::new(format!("notify.shard-{shard}"), move |rx| {
                notify::run_shard(storage.clone(), shard, messenger.clone(), clock.clone(), rx)
            }));
        }
        let mut tasks =
            vec![tokio::spawn(crate::webhooks::run(storage.clone(), clock.clone(), cfg.webhooks.clone(), rx.clone()))];
        match cfg.backend {
            Backend::Embedded => {
                jobs.extend(embedded_jobs(
                    &storage,
                    &consumers,
                    &clock,
                    &cfg.reader,
                    &cfg.also_trim_behind,
                    &heartbeats,
                ));
                tasks.push(tokio::spawn(crate::assign::run(
                    storage.leases().clone(),
                    jobs,
                    cfg.assign.clone(),
                    share_tx,
                    rx.clone(),
                )));
                tasks.push(tokio::spawn(crate::status::watch(
                    storage.clone(),
                    names,
                    partitions,
                    None,
                    cfg.watch_every,
                    clock.clone(),
                    rx.clone(),
                )));
            }
            Backend::JetStream(mut js) => {
                js.trim_behind.extend(cfg.also_trim_behind.iter().cloned());
                js.partitions = partitions;
                // Opening never waits for the server: a node whose NATS is down still starts,
                // and orders wait in the outbox until it answers.
                let (storage, consumers, clock, heartbeats, rx, retry, assign, every, opened) = (
                    storage.clone(),
                    consumers.clone(),
                    clock.clone(),
                    heartbeats.clone(),
                    rx.clone(),
                    cfg.reader.retry,
                    cfg.assign.clone(),
                    cfg.watch_every,
                    jetstream.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let bus = match crate::jetstream::JetStreamBus::open(*js).await {
                        Ok(bus) => Some(bus.with_heartbeats(heartbeats)),
                        Err(e) => {
                            tracing::error!(error = %e, "the JetStream backend cannot start; events wait in the outbox");
                            None
                        }
                    };
                    if let Some(bus) = &bus {
                        let _ = opened.set(bus.clone());
                        jobs.extend(crate::jetstream::jobs(bus.clone(), storage.clone(), consumers, clock.clone(), retry));
                    }
                    let leases = storage.leases().clone();
                    let watcher =
                        tokio::spawn(crate::status::watch(storage, names, partitions, bus, every, clock, rx.clone()));
                    crate::assign::run(leases, jobs, assign, share_tx, rx).await;
                    let _ = watcher.await;
                }));
            }
        }
        Pipeline { shutdown, tasks, heartbeats, share, jetstream }
    }

    /// The JetStream connection, once opened (`None` on the embedded backend).
    pub fn jetstream(&self) -> Option<crate::jetstream::JetStreamBus> {
        self.jetstream.get().cloned()
    }

    /// Stops this node's work as a crash would: at once, mid-step, giving nothing back (its
    /// leases run out for the other nodes to take). For tests of what the others do then.
    pub fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops every task after its current step, gives this node's leases back and waits.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "an event task ended abnormally");
            }
        }
    }
}

/// The embedded backend's jobs: per shard, a reader for each consumer and the trimmer.
fn embedded_jobs(
    storage: &Storage,
    consumers: &[Arc<dyn Consumer>],
    clock: &Arc<dyn Clock>,
    reader: &ReaderConfig,
    also_trim_behind: &[String],
    heartbeats: &Arc<Heartbeats>,
) -> Vec<Job> {
    let names: Vec<&'static str> = consumers.iter().map(|c| c.name()).collect();
    (0..storage.shard_count())
        .map(|shard| {
            let (storage, consumers, clock, reader, also, heartbeats, names) = (
                storage.clone(),
                consumers.to_vec(),
                clock.clone(),
                *reader,
                also_trim_behind.to_vec(),
                heartbeats.clone(),
                names.clone(),
            );
            Job::new(format!("events.shard-{shard}"), move |rx| {
                let mut tasks: Vec<JoinHandle<()>> = consumers
                    .iter()
                    .map(|c| {
                        let r = Reader::new(c.clone(), storage.clone(), shard, reader, clock.clone());
                        tokio::spawn(r.run(rx.clone(), heartbeats.clone()))
                    })
                    .collect();
                let (trim_storage, mut trim_rx, names, also) =
                    (storage.clone(), rx.clone(), names.clone(), also.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        // A dropped sender (the node's work torn down) is a stop too.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            r = trim_rx.changed() => if r.is_err() { return },
                        }
                        if *trim_rx.borrow() {
                            return;
                        }
                        if let Err(e) = trim_shard(&trim_storage, shard, &names, reader.partitions, &also).await {
                            tracing::warn!(shard, error = %e, "could not trim the outbox");
                        }
                    }
                }));
                async move {
                    for t in tasks {
                        if let Err(e) = t.await {
                            tracing::error!(shard, error = %e, "an event reader ended abnormally");
                        }
                    }
                }
            })
        })
        .collect()
}

/// Applies a parked event again (after its cause was fixed) and marks it replayed. Applying is
/// idempotent, so replaying twice changes nothing the second time.
pub async fn replay(
    storage: &Storage,
    consumers: &[Arc<dyn Consumer>],
    shard: usize,
    id: i64,
    clock: &dyn Clock,
) -> Result<u32, String> {
    let log = storage.logs().nth(shard).ok_or_else(|| format!("there is no shard {shard}"))?;
    let dead = log.dead_letter(id).await.map_err(|e| match e {
        StorageError::NotFound => format!("shard {shard} has no dead letter {id}"),
        e => e.to_string(),
    })?;
    let consumer = consumers
        .iter()
        .find(|c| c.name() == dead.consumer)
        .ok_or_else(|| format!("no consumer named {} runs here", dead.consumer))?;
    let event = kirana_domain::event::Event {
        id: dead.event_id,
        store_id: dead.store_id,
        kind: dead.kind.clone(),
        version: dead.event.get("version").and_then(serde_json::Value::as_u64).unwrap_or(1) as u32,
        occurred_at: dead
            .event
            .get("occurred_at")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| kirana_domain::Timestamp::parse_rfc3339(s).ok())
            .unwrap_or(dead.parked_at),
        payload: dead.event.get("payload").cloned().unwrap_or(serde_json::Value::Null),
    };
    let effects = consumer.effects(&event).map_err(|e| format!("it still fails: {e}"))?;
    let applied = log
        .apply(consumer.name(), vec![Applied { event, effects }], vec![], clock.now())
        .await
        .map_err(|e| e.to_string())?;
    log.mark_replayed(id, clock.now()).await.map_err(|e| e.to_string())?;
    Ok(applied)
}
