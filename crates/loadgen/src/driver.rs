//! When sessions start. Open loop: session `i` is due at `start + i / rate`, fixed from the start
//! of the run and never from when an earlier session finished, and it is handed its due time so
//! its first request is timed from there; a stalled server therefore shows up as latency, not as
//! fewer samples (no coordinated omission). Closed loop: `C` workers run sessions back to back,
//! which measures throughput at a concurrency, not latency at a load. Either stops at its
//! [`Deadline`]: the window's end, or sooner when the caller brings it forward (the browsing of
//! `--flash-during-browse` lasts until the last flash shopper is done, which nobody knows in
//! advance). This module only schedules and counts; what a session does is the caller's
//! closure. Everything runs on tokio time, so tests drive it with the paused clock.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A start this far behind its due time counts as late: a generator that cannot keep up.
pub(crate) const LATE_AFTER: Duration = Duration::from_millis(5);
/// Tokio's timer fires on the millisecond tick after a deadline, so sleeping until a session's
/// due time would start it up to a millisecond late and charge that to the server. Sessions are
/// woken this much early instead; the session times its first request from the earlier of its
/// due time and its real send (see `session`), so neither an early nor a late start distorts it.
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(1);

/// The phases of a run: warm-up `[start, measure_from)`, measured `[measure_from, end)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Window {
        Window { start, measure_from: start + warmup, end: start + warmup + duration }
    }

    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

/// When a phase's load ends: at `latest`, or earlier if [`Deadline::stop_now`] is called first.
/// Clones share the same end. Sessions ask [`Deadline::passed`] before each request; drivers
/// sleep with [`Deadline::sleep_until`], which wakes as soon as the end is brought forward.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    latest: Instant,
    /// `Some(t)` once stopped early at `t`. A watch channel, so that sleepers wake on the change
    /// rather than poll for it.
    early: Arc<watch::Sender<Option<Instant>>>,
}

impl Deadline {
    pub fn new(latest: Instant) -> Deadline {
        Deadline { latest, early: Arc::new(watch::channel(None).0) }
    }

    /// The end as known now.
    pub fn at(&self) -> Instant {
        (*self.early.borrow()).map_or(self.latest, |early| early.min(self.latest))
    }

    pub fn passed(&self, now: Instant) -> bool {
        now >= self.at()
    }

    /// Ends the phase now (the first call wins; later ones change nothing).
    pub fn stop_now(&self) {
        let now = Instant::now();
        self.early.send_if_modified(|early| {
            if early.is_some() {
                return false;
            }
            *early = Some(now);
            true
        });
    }

    /// Sleeps until `t`. False, without waiting any longer, once the end is at or before `t`.
    pub async fn sleep_until(&self, t: Instant) -> bool {
        // Subscribed before the check: a stop between the check and the wait still wakes it.
        let mut changed = self.early.subscribe();
        loop {
            if t >= self.at() {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(t) => return true,
                // The sender lives in `self`, so this never fails while we wait.
                _ = changed.changed() => {}
            }
        }
    }

    /// Resolves once the end has passed.
    pub async fn wait(&self) {
        let mut changed = self.early.subscribe();
        loop {
            let end = self.at();
            if Instant::now() >= end {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(end) => {}
                _ = changed.changed() => {}
            }
        }
    }
}

/// Fixed-interval arrivals. Each due time is computed from the start, so rounding never
/// accumulates into drift.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    pub fn new(start: Instant, rate: f64) -> Schedule {
        Schedule { start, rate }
    }

    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Started {
    /// Sessions started in the measured window.
    pub sessions: u64,
    /// Of those, started more than [`LATE_AFTER`] behind their due time (open loop only).
    pub late: u64,
    /// The worst start lag seen (open loop only).
    pub max_lag: Duration,
}

/// Starts session `i` at its due time until `deadline`, then waits for the sessions in flight
/// (which stop issuing requests at the deadline themselves). `launch(i, due)` builds the session.
pub(crate) async fn open_loop<F, Fut>(rate: f64, window: Window, deadline: Deadline, mut launch: F) -> Started
where
    F: FnMut(u64, Instant) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schedule = Schedule::new(window.start, rate);
    let mut running = JoinSet::new();
    let mut started = Started::default();
    for i in 0.. {
        let due = schedule.due(i);
        // A session due at or after the end never starts, even if the end came while we slept.
        if !deadline.sleep_until(due.checked_sub(TIMER_SLACK).unwrap_or(due)).await || deadline.passed(due) {
            break;
        }
        let lag = Instant::now().saturating_duration_since(due);
        if due >= window.measure_from {
            started.sessions += 1;
            started.max_lag = started.max_lag.max(lag);
            if lag > LATE_AFTER {
                started.late += 1;
            }
        }
        running.spawn(launch(i, due));
        // Reap what has finished so the set holds only sessions in flight.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    started
}

/// `workers` loops, each running `run(seq)` back to back until `deadline`.
pub(crate) async fn closed_loop<F, Fut>(workers: u32, window: Window, deadline: Deadline, run: F) -> Started
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let run = Arc::new(run);
    let seq = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (run, seq, measured, deadline) = (run.clone(), seq.clone(), measured.clone(), deadline.clone());
        set.spawn(async move {
            loop {
                let now = Instant::now();
                if deadline.passed(now) {
                    break;
                }
                if now >= window.measure_from {
                    measured.fetch_add(1, Ordering::Relaxed);
                }
                run(seq.fetch_add(1, Ordering::Relaxed)).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    Started { sessions: measured.load(Ordering::Relaxed), ..Started::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Outcome, Recorder, RequestKind};
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn open_loop_starts_sessions_at_fixed_intervals_from_the_start_even_when_they_are_slow() {
        let t0 = Instant::now();
        let window = Window::new(t0, Duration::ZERO, Duration::from_secs(1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let started = open_loop(10.0, window, Deadline::new(window.end), move |i, due| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((i, due - t0, Instant::now() - t0));
                // Each session outlives many intervals: starts must not wait for it.
                tokio::time::sleep(Duration::from_millis(750)).await;
            }
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 10);
        for (n, (i, due, at)) in seen.iter().enumerate() {
            assert_eq!(*i, n as u64);
            assert_eq!(*due, Duration::from_millis(100 * n as u64), "due times are i × interval");
            assert!(*at <= *due && *due - *at <= TIMER_SLACK, "a free generator starts each session on time");
        }
        assert_eq!(started, Started { sessions: 10, late: 0, max_lag: Duration::ZERO });
        // The run waited for the last session (due at 0.9 s, woken 1 ms early, 0.75 s long).
        assert_eq!(Instant::now() - t0, Duration::from_millis(1649));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_server_shows_up_as_latency_from_the_scheduled_time_not_as_fewer_samples() {
        // A server that answers one request at a time, 50 ms each, offered 100 requests/s: it can
        // do 20/s, so a queue builds and each answer comes later than the last.
        let t0 = Instant::now();
        let window = Window::new(t0, Duration::ZERO, Duration::from_secs(1));
        let server = Arc::new(tokio::sync::Mutex::new(()));
        let recorder = Arc::new(Recorder::new(t0, window.end));
        let (srv, rec) = (server.clone(), recorder.clone());
        let started = open_loop(100.0, window, Deadline::new(window.end), move |_, due| {
            let (srv, rec) = (srv.clone(), rec.clone());
            async move {
                let _busy = srv.lock().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                rec.record(RequestKind::Home, due, Instant::now() - due, Outcome::Ok);
            }
        })
        .await;
        let s = recorder.snapshot(RequestKind::Home);
        assert_eq!(started.sessions, 100);
        assert_eq!(s.count(), 100, "every scheduled request is a sample, however slow the server");
        // The last of 100 queued requests is answered at 100 × 50 ms = 5 s, having been due at
        // 0.99 s: ~4 s of latency that a closed loop would never have offered.
        let max_ms = s.hist.max() / 1000;
        assert!((4000..=4020).contains(&max_ms), "max latency {max_ms} ms");
        assert!(s.hist.value_at_quantile(0.5) / 1000 > 1000, "the median waited in the queue");
        assert_eq!(started.late, 0, "the generator itself kept to the schedule");
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_due_in_the_warmup_are_started_but_not_counted() {
        let t0 = Instant::now();
        let window = Window::new(t0, Duration::from_millis(500), Duration::from_millis(500));
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let started = open_loop(20.0, window, Deadline::new(window.end), move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .await;
        assert_eq!(calls.load(Ordering::Relaxed), 20);
        assert_eq!(started.sessions, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_generator_that_fell_behind_counts_late_starts_and_catches_up_without_skipping() {
        let t0 = Instant::now();
        let window = Window::new(t0, Duration::ZERO, Duration::from_secs(1));
        // The scheduler gets going 100 ms after the run's start, as a stalled generator would.
        tokio::time::advance(Duration::from_millis(100)).await;
        let started = open_loop(100.0, window, Deadline::new(window.end), |_, _| async {}).await;
        // Sessions due at 0, 10, …, 90 ms started 100 … 10 ms late; none was dropped.
        assert_eq!(started.sessions, 100);
        assert_eq!(started.late, 10);
        assert_eq!(started.max_lag, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_stops_starting_sessions_the_moment_its_deadline_is_brought_forward() {
        let t0 = Instant::now();
        // Room for 100 s of sessions; stopped after 2.5 s by whoever owns the deadline.
        let window = Window::new(t0, Duration::ZERO, Duration::from_secs(100));
        let deadline = Deadline::new(window.end);
        let stopper = deadline.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            stopper.stop_now();
        });
        // One session every 2 s: the loop is asleep, waiting for the session due at 4 s, when
        // the stop comes, and must not wait until then to notice.
        let started = open_loop(0.5, window, deadline.clone(), |_, _| async {}).await;
        assert_eq!(started.sessions, 2, "the sessions due at 0 s and 2 s, not the one due at 4 s");
        assert_eq!(Instant::now() - t0, Duration::from_millis(2500));
        assert_eq!(deadline.at() - t0, Duration::from_millis(2500));
        deadline.stop_now();
        assert_eq!(deadline.at() - t0, Duration::from_millis(2500), "the first stop wins");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_and_its_waiters_end_at_a_deadline_brought_forward() {
        let t0 = Instant::now();
        let window = Window::new(t0, Duration::ZERO, Duration::from_secs(100));
        let deadline = Deadline::new(window.end);
        let (stopper, waiter) = (deadline.clone(), deadline.clone());
        let waited = tokio::spawn(async move {
            waiter.wait().await;
            Instant::now() - t0
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1050)).await;
            stopper.stop_now();
        });
        let started = closed_loop(2, window, deadline, |_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
        .await;
        // Sessions start at 0, 100, …, 1000 ms on each worker; the one running at 1050 ms ends.
        assert_eq!(started.sessions, 2 * 11);
        assert_eq!(Instant::now() - t0, Duration::from_millis(1100));
        assert_eq!(waited.await.unwrap(), Duration::from_millis(1050));
    }

    #[test]
    fn due_times_are_computed_from_the_start_without_drift() {
        let t0 = Instant::now();
        let schedule = Schedule::new(t0, 3.0);
        assert_eq!(schedule.due(3) - t0, Duration::from_secs(1));
        assert_eq!(schedule.due(3_000_000) - t0, Duration::from_secs(1_000_000));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_runs_sessions_back_to_back_per_worker_until_the_end() {
        let t0 = Instant::now();
        let window = Window::new(t0, Duration::from_millis(100), Duration::from_millis(900));
        let started = closed_loop(4, window, Deadline::new(window.end), |_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
        .await;
        // 4 workers × sessions starting at 0, 100, …, 900 ms; those from 100 ms on are measured.
        assert_eq!(started.sessions, 4 * 9);
        assert_eq!(Instant::now() - t0, Duration::from_millis(1000));
    }
}
