//! Breakers for a population of instances named at run time — one per webhook host — created on
//! first use and reported as a count of open ones (a label per host would be unbounded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::breaker::{Breaker, BreakerState};

/// Hosts remembered at most; past it, breakers that are closed are forgotten first (a closed
/// breaker with a few failures losing its count costs nothing but a later opening).
const MAX_INSTANCES: usize = 10_000;

pub struct Breakers {
    dependency: &'static str,
    threshold: u32,
    cool_off: Duration,
    map: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    pub fn new(dependency: &'static str, threshold: u32, cool_off: Duration) -> Self {
        Self { dependency, threshold, cool_off, map: Mutex::new(HashMap::new()) }
    }

    /// The breaker of `instance`, created closed on first use.
    pub fn get(&self, instance: &str) -> Arc<Breaker> {
        let mut map = self.map.lock().expect("breakers lock");
        if let Some(b) = map.get(instance) {
            return b.clone();
        }
        if map.len() >= MAX_INSTANCES {
            map.retain(|_, b| b.state() != BreakerState::Closed);
        }
        let b = Arc::new(Breaker::new(self.threshold, self.cool_off));
        map.insert(instance.to_string(), b.clone());
        b
    }

    /// Instances whose breaker is open or probing; also sets `kirana_breakers_open{dependency}`.
    pub fn open(&self) -> Vec<String> {
        let map = self.map.lock().expect("breakers lock");
        let open: Vec<String> =
            map.iter().filter(|(_, b)| b.state() != BreakerState::Closed).map(|(k, _)| k.clone()).collect();
        metrics::gauge!("kirana_breakers_open", "dependency" => self.dependency).set(open.len() as f64);
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Failure;

    #[tokio::test(start_paused = true)]
    async fn each_instance_has_its_own_breaker() {
        let all = Breakers::new("webhook", 1, Duration::from_secs(30));
        all.get("a.example").failure(Failure::Timeout);
        assert!(!all.get("a.example").allow());
        assert!(all.get("b.example").allow());
        assert_eq!(all.open(), vec!["a.example".to_string()]);
    }
}
