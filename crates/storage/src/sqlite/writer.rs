//! The single writer of one SQLite file, with group commit.
//!
//! SQLite allows one writer at a time; instead of many connections fighting over the lock, one
//! thread owns the write connection and runs jobs sent to it. Jobs that arrive while a commit is
//! in flight are taken together: one `BEGIN IMMEDIATE`, each job in its own savepoint (a job that
//! fails rolls back only itself), one `COMMIT` — one fsync for the whole batch. Every caller is
//! answered only after the commit that holds its writes, so a reply always means durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
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
        let outcome = catch_unwind(AssertUnwindSafe(|| work(conn)))
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

/// The handle callers use; cloneable senders to one thread.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    _thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer thread over `conn`. Batches hold at most `max_batch` jobs.
    pub(crate) fn spawn(conn: Connection, name: String, max_batch: usize, queue: usize) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(queue);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(conn, rx, max_batch.max(1)))?;
        Ok(Writer { jobs: tx, _thread: thread })
    }

    /// Runs `work` in a write transaction and returns its result once committed.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let task = Task {
            work: Some(work),
            outcome: None,
            reply,
        };
        self.jobs
            .send(Box::new(task))
            .await
            .map_err(|_| StorageError::Unavailable("the database writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StorageError::Unavailable("the database writer stopped before answering".into()))?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>, max_batch: usize) {
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
