//! The single writer of one SQLite file, with group commit.
//!
//! SQLite allows one writer at a time; instead of many connections fighting over the lock, one
//! thread owns the write connection and runs jobs sent to it. Jobs that arrive while a commit is
//! in flight are taken together: one `BEGIN IMMEDIATE`, each job in its own savepoint (a job that
//! fails rolls back only itself), one `COMMIT` — one fsync for the whole batch. Every caller is
//! answered only after the commit that holds its writes, so a reply always means durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::Result;
use crate::error::StorageError;

/// A unit of work for the writer thread.
trait Job: Send {
    /// Runs the job inside its savepoint; `false` asks for the savepoint to be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn deliver(self: Box<Self>, commit: Result<(), String>);
}

struct Task<F, T> {
    work: Option<F>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    /// The caller's trace context: the job runs on this thread, away from the caller's task,
    /// and the outbox rows it writes must still name the request that caused them.
    trace: Option<crate::trace::TraceParent>,
}

impl<F, T> Job for Task<F, T>
where
    F: FnOnce(&Connection) -> Result<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panicking job must not take the writer (and every later write) down with it.
        let outcome = crate::trace::on_this_thread(self.trace, || catch_unwind(AssertUnwindSafe(|| work(conn))))
            .unwrap_or_else(|_| Err(StorageError::Internal("a write job panicked".into())));
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn deliver(self: Box<Self>, commit: Result<(), String>) {
        let answer = match (commit, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            // The job's own refusal stands even if the batch failed: nothing of it was kept.
            (_, Some(Err(e))) => Err(e),
            (Err(e), _) => Err(StorageError::Unavailable(format!("commit failed: {e}"))),
            (Ok(()), None) => Err(StorageError::Internal("a write job was never run".into())),
        };
        // The caller may have gone away (client disconnected); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

/// Counters of the writer's work: how well group commit is batching.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
}

/// The handle callers use; cloneable senders to one thread.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    #[allow(dead_code)]
    stats: Arc<WriterStats>,
    _thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer thread over `conn`. Batches hold at most `max_batch` jobs.
    pub(crate) fn spawn(conn: Connection, name: String, max_batch: usize, queue: usize) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(queue);
        let stats = Arc::new(WriterStats::default());
        let counters = stats.clone();
        let thread =
            std::thread::Builder::new().name(name).spawn(move || run(conn, rx, max_batch.max(1), &counters))?;
        Ok(Writer { jobs: tx, stats, _thread: thread })
    }

    // Read by tests today; exported as metrics by the observability work.
    #[allow(dead_code)]
    pub(crate) fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Runs `work` in a write transaction and returns its result once committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let task = Task { work: Some(work), outcome: None, reply, trace: crate::trace::current() };
        self.jobs
            .send(Box::new(task))
            .await
            .map_err(|_| StorageError::Unavailable("the database writer has stopped".into()))?;
        answer.await.map_err(|_| StorageError::Unavailable("the database writer stopped before answering".into()))?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>, max_batch: usize, stats: &WriterStats) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    // Ends when every sender is gone: the storage was dropped, so no caller is waiting.
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
        commit_batch(&conn, &mut batch);
    }
}

fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "could not begin a write transaction");
        for job in batch.drain(..) {
            job.deliver(Err(e.to_string()));
        }
        return;
    }
    for job in batch.iter_mut() {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            tracing::error!(error = %e, "could not open a savepoint");
            continue; // the job never runs; it is answered with an error below
        }
        let keep = job.run(conn);
        let end = if keep { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!(error = %e, "could not close a savepoint");
        }
    }
    let commit = conn.execute_batch("COMMIT").map_err(|e| {
        tracing::error!(error = %e, jobs = batch.len(), "commit failed; the batch is lost and every caller told so");
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    });
    for job in batch.drain(..) {
        job.deliver(commit.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);")
            .unwrap();
        (Writer::spawn(conn, "test-writer".into(), 64, 1024).unwrap(), dir)
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_rolls_back_only_itself() {
        let (w, dir) = writer();
        let w = Arc::new(w);
        let mut tasks = vec![];
        for k in 0..200i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])?;
                    // Every third job writes, then refuses: its row must not survive.
                    if k % 3 == 0 { Err(StorageError::NotFound) } else { Ok(k) }
                })
                .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 133);
        assert_eq!(count(&dir), 133);
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_writer() {
        let (w, dir) = writer();
        let r: Result<()> = w.write(|_| panic!("boom")).await;
        assert!(matches!(r, Err(StorageError::Internal(_))));
        w.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES (1, 'after')", [])?)).await.unwrap();
        assert_eq!(count(&dir), 1);
    }

    #[tokio::test]
    async fn a_reply_means_the_write_is_committed() {
        let (w, dir) = writer();
        w.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES (7, 'seen')", [])?)).await.unwrap();
        // A separate connection sees it at once: the reply came after COMMIT.
        assert_eq!(count(&dir), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_are_committed_together() {
        let (w, dir) = writer();
        let w = Arc::new(w);
        // Hold the writer busy inside a job, so the following jobs queue up behind it and are
        // taken together as the next batch.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let blocker = {
            let w = w.clone();
            tokio::spawn(async move {
                w.write(move |_| {
                    let _ = started.send(());
                    gate.recv().ok();
                    Ok(())
                })
                .await
            })
        };
        running.await.unwrap();
        let mut tasks = vec![];
        for k in 0..50i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])?;
                    // Inside one transaction, each job sees the rows of the jobs before it.
                    Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?)
                })
                .await
            }));
        }
        // Wait until all 50 are queued behind the blocked writer, then release it.
        while w.jobs.capacity() > 1024 - 50 {
            tokio::task::yield_now().await;
        }
        let batches_before = w.stats().batches.load(Ordering::Relaxed);
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        let mut seen = vec![];
        for t in tasks {
            seen.push(t.await.unwrap().unwrap());
        }
        assert_eq!(count(&dir), 50);
        seen.sort();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        // The 50 queued jobs were committed as one batch: one transaction, one fsync.
        assert_eq!(w.stats().batches.load(Ordering::Relaxed), batches_before + 1);
        assert_eq!(w.stats().jobs.load(Ordering::Relaxed), 51);
    }
}
