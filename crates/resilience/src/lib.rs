//! Guards for kirana's outbound calls, shared by every crate that makes them: a circuit breaker
//! per dependency instance (Redis, NATS, the SMS provider, each webhook host; replicas have
//! their rotation, which is the same idea with lag in it) and a retry budget for retries made
//! while someone waits.
//!
//! Neither ever calls anything or sleeps: they answer "may I?" and are told how it went, on
//! tokio time, so tests pause and advance the clock.

mod breaker;
mod budget;
mod keyed;

pub use breaker::{Breaker, BreakerState, Failure};
pub use budget::RetryBudget;
pub use keyed::Breakers;
