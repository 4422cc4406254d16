//! The retry budget: retries made while a caller waits may add at most a fraction of the calls
//! made (plus a small floor per second), so when a dependency fails broadly, retries cannot
//! multiply the load on whatever is still answering — the retry storm the SRE book warns of.
//! Finagle's design, as `tower` implements it ([`TpsBudget`]); this adds the counting.
//!
//! Background retries that are scheduled minutes apart (webhooks, notifications, the relay's
//! outage backoff) are paced by their backoff instead and do not draw on a budget.

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

pub struct RetryBudget {
    dependency: &'static str,
    inner: TpsBudget,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget").field("dependency", &self.dependency).finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// Over a sliding `window` (1–60 s), retries may be `ratio` of first attempts, and at least
    /// `floor_per_sec` a second however few the attempts.
    pub fn new(dependency: &'static str, window: Duration, floor_per_sec: u32, ratio: f32) -> Self {
        let window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
        Self { dependency, inner: TpsBudget::new(window, floor_per_sec, ratio.clamp(0.0, 1000.0)) }
    }

    /// The defaults: 20 % of the last 10 s of attempts, at least 10 a second.
    pub fn standard(dependency: &'static str) -> Self {
        Self::new(dependency, Duration::from_secs(10), 10, 0.2)
    }

    /// Every first attempt earns a fraction of a retry.
    pub fn attempt(&self) {
        self.inner.deposit();
    }

    /// Whether a retry may go now; counted in `kirana_retries_total{dependency,outcome}` as
    /// `allowed` or `budget_exhausted`.
    pub fn retry(&self) -> bool {
        let ok = self.inner.withdraw();
        let outcome = if ok { "allowed" } else { "budget_exhausted" };
        metrics::counter!("kirana_retries_total", "dependency" => self.dependency, "outcome" => outcome).increment(1);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fraction_of_attempts_above_a_floor() {
        let budget = RetryBudget::new("test", Duration::from_secs(10), 1, 0.2);
        // The floor: one a second over the ten-second window.
        let floor = (0..100).take_while(|_| budget.retry()).count();
        assert_eq!(floor, 10);
        assert!(!budget.retry(), "exhausted without attempts");
        for _ in 0..100 {
            budget.attempt();
        }
        let earned = (0..100).take_while(|_| budget.retry()).count();
        assert_eq!(earned, 20, "a hundred attempts earn twenty retries");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_slides() {
        let budget = RetryBudget::new("test", Duration::from_secs(1), 5, 0.0);
        while budget.retry() {}
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(budget.retry(), "a second later the floor is there again");
    }
}
