//! The circuit breaker in front of one dependency instance: after enough failures the dependency
//! is skipped for a cool-off period, then one probe is let through (half-open) and its outcome
//! decides. A down or blackholed dependency therefore costs one timeout, not one per call.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the breaker currently lets through, for metrics and `kirana doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Every call goes through.
    Closed,
    /// The dependency is skipped until the cool-off ends.
    Open,
    /// One probe is out; everyone else skips the dependency until it answers.
    HalfOpen,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// How a call that was let through ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The call hit its deadline. It opens the breaker at once: every further caller would wait
    /// the same deadline, which is exactly the cost a breaker exists to avoid.
    Timeout,
    /// A quick error (connection refused, reset, a 5xx). Cheap, so it takes `threshold` of them
    /// in a row: one dropped connection during a restart should not switch the dependency off.
    Error,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_off: Duration,
    inner: Mutex<Inner>,
    /// `(dependency, instance)` labels of `kirana_breaker_state`; `None` for breakers too many to
    /// label (one per webhook host: [`crate::Breakers`] reports those as a count).
    labels: Option<(&'static str, String)>,
}

impl Breaker {
    /// `threshold` quick errors in a row (or one timeout) open it for `cool_off`.
    pub fn new(threshold: u32, cool_off: Duration) -> Self {
        Self { threshold: threshold.max(1), cool_off, inner: Mutex::new(Inner::Closed { failures: 0 }), labels: None }
    }

    /// Reports its state as `kirana_breaker_state{dependency,instance}` (0 closed, 1 half-open,
    /// 2 open) and each opening in `kirana_breaker_opened_total{dependency}`. `instance` must
    /// come from configuration (a host name), never from a request.
    pub fn named(mut self, dependency: &'static str, instance: impl Into<String>) -> Self {
        self.labels = Some((dependency, instance.into()));
        self.report(BreakerState::Closed);
        self
    }

    fn report(&self, state: BreakerState) {
        if let Some((dependency, instance)) = &self.labels {
            metrics::gauge!("kirana_breaker_state", "dependency" => *dependency, "instance" => instance.clone())
                .set(state.as_gauge());
            if state == BreakerState::Open {
                metrics::counter!("kirana_breaker_opened_total", "dependency" => *dependency).increment(1);
            }
        }
    }

    /// How long until an open breaker lets a probe through (for a `Retry-After`); `None` when
    /// a call would be let through now, or a probe is out.
    pub fn open_for(&self) -> Option<Duration> {
        match *self.inner.lock().expect("breaker lock") {
            Inner::Open { until } => Some(until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero()),
            _ => None,
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.inner.lock().expect("breaker lock") {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to the dependency now. The caller must report the outcome with
    /// [`Breaker::success`] or [`Breaker::failure`].
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("breaker lock");
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until } if now < until => false,
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen { probe_started: now };
                drop(inner);
                self.report(BreakerState::HalfOpen);
                true
            }
            // A probe whose caller was cancelled never reports; after a cool-off another may go.
            Inner::HalfOpen { probe_started } if now >= probe_started + self.cool_off => {
                *inner = Inner::HalfOpen { probe_started: now };
                true
            }
            Inner::HalfOpen { .. } => false,
        }
    }

    pub fn success(&self) {
        let was = std::mem::replace(&mut *self.inner.lock().expect("breaker lock"), Inner::Closed { failures: 0 });
        if !matches!(was, Inner::Closed { .. }) {
            self.report(BreakerState::Closed);
        }
    }

    /// Records a failure; returns whether this one opened the breaker.
    pub fn failure(&self, kind: Failure) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("breaker lock");
        let open = match *inner {
            Inner::Closed { failures } => kind == Failure::Timeout || failures + 1 >= self.threshold,
            Inner::HalfOpen { .. } => true,
            // Calls let through before it opened are still answering; they change nothing.
            Inner::Open { .. } => return false,
        };
        *inner = if open {
            Inner::Open { until: now + self.cool_off }
        } else {
            match *inner {
                Inner::Closed { failures } => Inner::Closed { failures: failures + 1 },
                _ => unreachable!("only a closed breaker stays closed on failure"),
            }
        };
        drop(inner);
        if open {
            self.report(BreakerState::Open);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_OFF: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn quick_errors_open_the_breaker_after_the_threshold() {
        let b = Breaker::new(3, COOL_OFF);
        assert!(b.allow());
        assert!(!b.failure(Failure::Error));
        assert!(!b.failure(Failure::Error));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.failure(Failure::Error));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_of_errors() {
        let b = Breaker::new(3, COOL_OFF);
        b.failure(Failure::Error);
        b.failure(Failure::Error);
        b.success();
        b.failure(Failure::Error);
        b.failure(Failure::Error);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn one_timeout_opens_the_breaker() {
        let b = Breaker::new(3, COOL_OFF);
        assert!(b.failure(Failure::Timeout));
        assert!(!b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_says_how_long_until_its_probe() {
        let b = Breaker::new(1, COOL_OFF);
        assert_eq!(b.open_for(), None);
        b.failure(Failure::Error);
        assert_eq!(b.open_for(), Some(COOL_OFF));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.open_for(), Some(COOL_OFF - Duration::from_secs(2)));
        tokio::time::advance(COOL_OFF - Duration::from_secs(2)).await;
        assert_eq!(b.open_for(), None, "the cool-off is over");
        assert!(b.allow());
        assert_eq!(b.open_for(), None, "half-open is not open");
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_off_one_probe_goes_and_its_success_closes_the_breaker() {
        let b = Breaker::new(1, COOL_OFF);
        b.failure(Failure::Error);
        tokio::time::advance(COOL_OFF - Duration::from_millis(1)).await;
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.allow(), "the probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one probe at a time");
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_breaker_for_another_cool_off() {
        let b = Breaker::new(3, COOL_OFF);
        b.failure(Failure::Timeout);
        tokio::time::advance(COOL_OFF).await;
        assert!(b.allow());
        assert!(b.failure(Failure::Error), "a failed probe reopens at once");
        assert!(!b.allow());
        tokio::time::advance(COOL_OFF).await;
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_reports_does_not_hold_the_breaker_half_open_forever() {
        let b = Breaker::new(1, COOL_OFF);
        b.failure(Failure::Timeout);
        tokio::time::advance(COOL_OFF).await;
        assert!(b.allow());
        tokio::time::advance(COOL_OFF).await;
        assert!(b.allow(), "another probe after a cool-off without an answer");
    }
}
