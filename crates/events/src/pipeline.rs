//! Starting and stopping the pipeline: a reader per (consumer, shard), the trimmer that keeps
//! the outbox short, the webhook and notification workers; and replaying parked events.

use std::sync::Arc;
use std::time::Duration;

use kirana_domain::Clock;
use kirana_storage::{Applied, Storage, StorageError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consumers::Consumer;
use crate::embedded::{Reader, ReaderConfig, trim_behind};
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

#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub backend: Backend,
    pub reader: ReaderConfig,
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Other readers of the outbox, with one position per shard, that trimming must wait for
    /// (the search indexer's consumer name): the embedded trimmer's and the JetStream relay's.
    pub also_trim_behind: Vec<String>,
}

/// The running pipeline. Dropping it does not stop it; call [`Pipeline::stop`].
pub struct Pipeline {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub heartbeats: Arc<Heartbeats>,
}

impl Pipeline {
    pub fn start(
        storage: Storage,
        consumers: Vec<Arc<dyn Consumer>>,
        messenger: Arc<dyn Messenger>,
        clock: Arc<dyn Clock>,
        cfg: PipelineConfig,
    ) -> Pipeline {
        let (shutdown, rx) = watch::channel(false);
        let heartbeats = Arc::new(Heartbeats::default());
        let mut tasks = Vec::new();
        match cfg.backend {
            Backend::Embedded => {
                for consumer in &consumers {
                    for shard in 0..storage.shard_count() {
                        let reader = Reader::new(consumer.clone(), storage.clone(), shard, cfg.reader, clock.clone());
                        tasks.push(tokio::spawn(reader.run(rx.clone(), heartbeats.clone())));
                    }
                }
                let names: Vec<&'static str> = consumers.iter().map(|c| c.name()).collect();
                let (trim_storage, mut trim_rx, partitions) = (storage.clone(), rx.clone(), cfg.reader.partitions);
                let also = cfg.also_trim_behind.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = trim_rx.changed() => {}
                        }
                        if *trim_rx.borrow() {
                            return;
                        }
                        if let Err(e) = trim_behind(&trim_storage, &names, partitions, &also).await {
                            tracing::warn!(error = %e, "could not trim the outbox");
                        }
                    }
                }));
            }
            Backend::JetStream(mut js) => {
                js.trim_behind.extend(cfg.also_trim_behind.iter().cloned());
                // The relay trims the outbox in this backend: the stream is the consumers' log.
                // Opening never waits for the server: a node whose NATS is down still starts,
                // and orders wait in the outbox until it answers.
                let (storage, consumers, clock, heartbeats, rx, retry) = (
                    storage.clone(),
                    consumers.clone(),
                    clock.clone(),
                    heartbeats.clone(),
                    rx.clone(),
                    cfg.reader.retry,
                );
                tasks.push(tokio::spawn(async move {
                    let bus = match crate::jetstream::JetStreamBus::open(*js).await {
                        Ok(bus) => bus.with_heartbeats(heartbeats),
                        Err(e) => {
                            tracing::error!(error = %e, "the JetStream backend cannot start; events wait in the outbox");
                            return;
                        }
                    };
                    for t in crate::jetstream::start(bus, storage, consumers, clock, retry, rx) {
                        if let Err(e) = t.await {
                            tracing::error!(error = %e, "a JetStream task ended abnormally");
                        }
                    }
                }));
            }
        }
        tasks.push(tokio::spawn(crate::webhooks::run(storage.clone(), clock.clone(), cfg.webhooks, rx.clone())));
        tasks.push(tokio::spawn(notify::run(storage, messenger, clock, rx)));
        Pipeline { shutdown, tasks, heartbeats }
    }

    /// Stops every task after its current step and waits for them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "an event task ended abnormally");
            }
        }
    }
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
