//! Splitting background work across the nodes that run it: each piece of work that must run on
//! one node at a time (a shard's relay, the consumers of one event partition, a shard's
//! notification sender, the payment reconciler) is a [`Job`] under a lease of its name, and
//! every node runs an [`Assigner`] that takes its fair share of the leases and runs their jobs.
//!
//! Each tick (a fifth of the lease's life) the assigner renews its membership and its leases,
//! reads who holds what, and then:
//! - stops the jobs whose lease it lost (another node took it after this one stalled);
//! - gives back, job stopped first, the least preferred of its leases above its fair share
//!   (`ceil(jobs / nodes alive)`), so a node that joins gets work within a tick or two;
//! - takes free leases (never held, released, or expired because their node died) up to its
//!   share, the ones it prefers first (a hash of node and job, so two nodes do not chase the
//!   same ones), and starts their jobs.
//!
//! When the lease store cannot be reached the jobs run on until the leases could have run out,
//! then stop: another node may have taken them. A job that ends by itself (a bug, a panic) is
//! started again on the next tick. On shutdown every job stops and every lease is given back,
//! so the others take over at once instead of after the lease's life.
//!
//! Leases make the split efficient (no two nodes fighting over one durable consumer), not
//! correct: every job is also safe when, briefly, two nodes run it (see `kirana_storage::lease`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kirana_storage::Leases;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A piece of work that runs on one node at a time.
pub struct Job {
    /// The lease's name, the same on every node (`events.partition-3`).
    pub name: String,
    /// Runs the work until the receiver turns true, then returns.
    pub run: Arc<dyn Fn(watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send + Sync>,
}

impl Job {
    pub fn new<F, Fut>(name: impl Into<String>, run: F) -> Job
    where
        F: Fn(watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Job { name: name.into(), run: Arc::new(move |rx| Box::pin(run(rx))) }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("name", &self.name).finish()
    }
}

/// How an assigner holds its leases.
#[derive(Debug, Clone)]
pub struct AssignConfig {
    /// This node's name among those sharing the leases: unique per running process (a node
    /// restarted under the same name picks its leases up again at once).
    pub node: String,
    /// A lease's life: how long a dead node's work waits before another node takes it.
    pub ttl: Duration,
    /// How long a stopping job may take to finish its current step before it is aborted.
    pub stop_wait: Duration,
}

impl AssignConfig {
    pub fn new(node: impl Into<String>) -> AssignConfig {
        AssignConfig { node: node.into(), ttl: Duration::from_secs(10), stop_wait: Duration::from_secs(5) }
    }

    fn tick(&self) -> Duration {
        self.ttl / 5
    }
}

/// A name for this process among the nodes, when the operator gave none: the host and the
/// process id, which no two running processes share.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

struct Running {
    stop: watch::Sender<bool>,
    /// `None` once the job returned by itself (nothing to do here, e.g. no payout schedule):
    /// its lease is kept, so no other node starts it either.
    task: Option<JoinHandle<()>>,
}

impl Drop for Running {
    /// A job outlives its assigner only by accident (the assigner's task aborted, a panic):
    /// as a crashed process's would, its work stops with it.
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// What one node's assigner is doing, for `/metrics` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Share {
    /// The leases it holds (and runs the jobs of), by name.
    pub held: BTreeSet<String>,
    /// Nodes alive at its last look, itself included.
    pub nodes: usize,
}

/// Runs `jobs` on this node as its leases allow, until `shutdown` turns true; then stops them
/// and gives their leases back. `share` always says what it holds.
pub async fn run(
    leases: Arc<dyn Leases>,
    jobs: Vec<Job>,
    cfg: AssignConfig,
    share: watch::Sender<Share>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut a = Assigner {
        leases,
        jobs: jobs.into_iter().map(|j| (j.name.clone(), j)).collect(),
        cfg,
        running: HashMap::new(),
        valid_until: Instant::now(),
        nodes: 1,
    };
    let mut tick = tokio::time::interval(a.cfg.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
        if *shutdown.borrow() {
            break;
        }
        a.step().await;
        let held: BTreeSet<String> = a.running.keys().cloned().collect();
        metrics::gauge!("kirana_leases_held").set(held.len() as f64);
        share.send_replace(Share { held, nodes: a.nodes });
    }
    a.stop_all().await;
    share.send_replace(Share::default());
}

struct Assigner {
    leases: Arc<dyn Leases>,
    jobs: HashMap<String, Job>,
    cfg: AssignConfig,
    running: HashMap<String, Running>,
    /// Until when the leases this node holds are surely still its own (its last successful
    /// renewal plus the lease's life, less a tick for the time the renewal took).
    valid_until: Instant,
    nodes: usize,
}

impl Assigner {
    /// How much this node wants job `name`: a stable hash of both, so each node has its own
    /// order and free leases spread between nodes instead of being chased by all of them.
    fn preference(&self, name: &str) -> u64 {
        // FNV-1a: stable across runs and processes, unlike std's randomly keyed hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.cfg.node.bytes().chain([0]).chain(name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    async fn step(&mut self) {
        let started = Instant::now();
        let node = self.cfg.node.clone();
        let ttl = self.cfg.ttl;

        // A job that panicked is started again (its lease is still ours); one that returned
        // has nothing to do and stays done.
        let ended: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.as_ref().is_some_and(JoinHandle::is_finished))
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            let Some(r) = self.running.get_mut(&name) else { continue };
            let Some(task) = r.task.take() else { continue };
            if let Err(e) = task.await {
                tracing::error!(job = %name, error = %e, "a leased job ended abnormally; starting it again");
                self.running.remove(&name);
                self.start(&name);
            }
        }

        match self.leases.heartbeat(&node, ttl).await {
            Ok(alive) => self.nodes = alive.len().max(1),
            Err(e) => tracing::warn!(node = %node, error = %e, "could not renew this node's membership"),
        }

        let held: Vec<String> = self.running.keys().cloned().collect();
        match self.leases.renew(&node, &held, ttl).await {
            Ok(kept) => {
                self.valid_until = started + ttl - self.cfg.tick();
                let kept: BTreeSet<String> = kept.into_iter().collect();
                for lost in held.iter().filter(|n| !kept.contains(*n)) {
                    tracing::warn!(job = %lost, node = %node, "lost a lease to another node; stopping its job");
                    metrics::counter!("kirana_lease_lost_total").increment(1);
                    self.stop(lost).await;
                }
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "could not renew leases");
                if Instant::now() >= self.valid_until && !self.running.is_empty() {
                    tracing::error!(node = %node, jobs = self.running.len(),
                        "leases may have run out while the lease store was unreachable; stopping their jobs");
                    let all: Vec<String> = self.running.keys().cloned().collect();
                    for name in all {
                        self.stop(&name).await;
                    }
                }
                return;
            }
        }

        let fair = self.jobs.len().div_ceil(self.nodes);
        if self.running.len() > fair {
            let mut mine: Vec<String> = self.running.keys().cloned().collect();
            mine.sort_by_key(|n| self.preference(n));
            let extra: Vec<String> = mine.into_iter().take(self.running.len() - fair).collect();
            for name in &extra {
                self.stop(name).await;
            }
            if let Err(e) = self.leases.release(&node, &extra).await {
                tracing::warn!(node = %node, error = %e, "could not give leases back; they run out by themselves");
            }
            tracing::info!(node = %node, given_back = extra.len(), fair, nodes = self.nodes, "gave work back to share it");
            return;
        }
        if self.running.len() == fair {
            return;
        }
        let rows = match self.leases.list().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "could not read the leases");
                return;
            }
        };
        let taken: BTreeSet<&str> =
            rows.iter().filter(|r| r.expires_in_seconds > 0.0 && r.holder != node).map(|r| r.name.as_str()).collect();
        let mut free: Vec<String> = self
            .jobs
            .keys()
            .filter(|n| !self.running.contains_key(*n) && !taken.contains(n.as_str()))
            .cloned()
            .collect();
        free.sort_by_key(|n| std::cmp::Reverse(self.preference(n)));
        free.truncate(fair - self.running.len());
        if free.is_empty() {
            return;
        }
        match self.leases.acquire(&node, &free, ttl).await {
            Ok(granted) => {
                for name in granted {
                    self.start(&name);
                }
            }
            Err(e) => tracing::warn!(node = %node, error = %e, "could not take leases"),
        }
    }

    fn start(&mut self, name: &str) {
        let Some(job) = self.jobs.get(name) else { return };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn((job.run)(rx));
        tracing::info!(job = %name, node = %self.cfg.node, "took a lease; running its job");
        self.running.insert(name.to_owned(), Running { stop, task: Some(task) });
    }

    /// Stops a job and waits for it to finish its step (aborting it past `stop_wait`).
    async fn stop(&mut self, name: &str) {
        let Some(mut r) = self.running.remove(name) else { return };
        let _ = r.stop.send(true);
        let Some(mut task) = r.task.take() else { return };
        if tokio::time::timeout(self.cfg.stop_wait, &mut task).await.is_err() {
            tracing::warn!(job = %name, "a job did not stop within {:?}; aborting it", self.cfg.stop_wait);
            task.abort();
        }
    }

    async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        for name in &names {
            self.stop(name).await;
        }
        let node = self.cfg.node.clone();
        if let Err(e) = self.leases.release(&node, &names).await {
            tracing::warn!(node = %node, error = %e, "could not give leases back on shutdown");
        }
        if let Err(e) = self.leases.leave(&node).await {
            tracing::warn!(node = %node, error = %e, "could not leave the lease members on shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kirana_storage::LocalLeases;
    use std::sync::Mutex;

    /// Jobs that record which node is running them, as (job, node) pairs while they run.
    fn jobs(node: &str, n: usize, running: &Arc<Mutex<Vec<(String, String)>>>) -> Vec<Job> {
        (0..n)
            .map(|i| {
                let (running, node) = (running.clone(), node.to_owned());
                let name = format!("job-{i}");
                let me = name.clone();
                Job::new(name, move |mut rx| {
                    let (running, node, me) = (running.clone(), node.clone(), me.clone());
                    async move {
                        running.lock().unwrap().push((me.clone(), node.clone()));
                        while !*rx.borrow() {
                            if rx.changed().await.is_err() {
                                break;
                            }
                        }
                        running.lock().unwrap().retain(|(j, n)| !(j == &me && n == &node));
                    }
                })
            })
            .collect()
    }

    fn start(
        leases: &Arc<LocalLeases>,
        node: &str,
        n: usize,
        running: &Arc<Mutex<Vec<(String, String)>>>,
    ) -> (watch::Sender<bool>, watch::Receiver<Share>, JoinHandle<()>) {
        let (stop, rx) = watch::channel(false);
        let (share_tx, share) = watch::channel(Share::default());
        let task = tokio::spawn(run(leases.clone(), jobs(node, n, running), AssignConfig::new(node), share_tx, rx));
        (stop, share, task)
    }

    /// Each job runs on exactly one node, and every job runs.
    fn each_once(running: &Mutex<Vec<(String, String)>>, n: usize) -> bool {
        let r = running.lock().unwrap();
        let jobs: BTreeSet<&String> = r.iter().map(|(j, _)| j).collect();
        jobs.len() == n && r.len() == n
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..600 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never happened: {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn two_nodes_split_the_work_and_the_survivor_takes_a_dead_nodes_share_after_the_lease() {
        let leases = Arc::new(LocalLeases::default());
        let running = Arc::new(Mutex::new(Vec::new()));
        let (_stop_a, share_a, _a) = start(&leases, "a", 16, &running);
        until("a alone runs all 16", || each_once(&running, 16) && share_a.borrow().held.len() == 16).await;

        let (_stop_b, share_b, b) = start(&leases, "b", 16, &running);
        until("the two share the work, each job once", || {
            each_once(&running, 16) && share_a.borrow().held.len() == 8 && share_b.borrow().held.len() == 8
        })
        .await;

        // b dies without a word: its leases run out, then a takes them.
        b.abort();
        running.lock().unwrap().retain(|(_, n)| n != "b");
        let died = Instant::now();
        until("a runs all 16 again", || each_once(&running, 16)).await;
        let took = died.elapsed();
        assert!(took >= Duration::from_secs(8), "not before b's leases ran out: {took:?}");
        assert!(took <= Duration::from_secs(14), "within the lease's life and a few ticks: {took:?}");
    }

    /// Leases whose store can be made unreachable.
    #[derive(Default)]
    struct Flaky {
        inner: LocalLeases,
        down: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> kirana_storage::Result<()> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                Err(kirana_storage::StorageError::Unavailable("the control database is down".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait::async_trait]
    impl Leases for Flaky {
        async fn heartbeat(&self, node: &str, ttl: Duration) -> kirana_storage::Result<Vec<String>> {
            self.check()?;
            self.inner.heartbeat(node, ttl).await
        }
        async fn renew(&self, node: &str, names: &[String], ttl: Duration) -> kirana_storage::Result<Vec<String>> {
            self.check()?;
            self.inner.renew(node, names, ttl).await
        }
        async fn acquire(&self, node: &str, names: &[String], ttl: Duration) -> kirana_storage::Result<Vec<String>> {
            self.check()?;
            self.inner.acquire(node, names, ttl).await
        }
        async fn release(&self, node: &str, names: &[String]) -> kirana_storage::Result<()> {
            self.check()?;
            self.inner.release(node, names).await
        }
        async fn leave(&self, node: &str) -> kirana_storage::Result<()> {
            self.check()?;
            self.inner.leave(node).await
        }
        async fn list(&self) -> kirana_storage::Result<Vec<kirana_storage::LeaseRow>> {
            self.check()?;
            self.inner.list().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_lease_store_unreachable_jobs_run_until_their_leases_could_have_run_out_then_stop_and_come_back() {
        let leases = Arc::new(Flaky::default());
        let running = Arc::new(Mutex::new(Vec::new()));
        let (_stop, rx) = watch::channel(false);
        let (share_tx, _share) = watch::channel(Share::default());
        let _a = tokio::spawn(run(leases.clone(), jobs("a", 4, &running), AssignConfig::new("a"), share_tx, rx));
        until("a runs all 4", || each_once(&running, 4)).await;
        leases.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let down = Instant::now();
        // A blip shorter than the lease's life changes nothing.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(each_once(&running, 4), "jobs run on through a short outage");
        until("jobs stop once their leases could have run out", || running.lock().unwrap().is_empty()).await;
        let stopped = down.elapsed();
        assert!(stopped <= Duration::from_secs(12), "{stopped:?}");
        leases.down.store(false, std::sync::atomic::Ordering::SeqCst);
        until("the jobs come back with the lease store", || each_once(&running, 4)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_shuts_down_hands_its_work_over_at_once() {
        let leases = Arc::new(LocalLeases::default());
        let running = Arc::new(Mutex::new(Vec::new()));
        let (_stop_a, _share_a, _a) = start(&leases, "a", 6, &running);
        let (stop_b, share_b, b) = start(&leases, "b", 6, &running);
        until("split 3/3", || each_once(&running, 6) && share_b.borrow().held.len() == 3).await;
        let asked = Instant::now();
        stop_b.send(true).unwrap();
        b.await.unwrap();
        until("a runs all 6", || each_once(&running, 6)).await;
        assert!(asked.elapsed() < Duration::from_secs(5), "no wait for the lease to run out: {:?}", asked.elapsed());
        assert!(leases.list().await.unwrap().iter().all(|r| r.holder == "a" || r.expires_in_seconds <= 0.0));
    }
}
