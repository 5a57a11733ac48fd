//! Riding out a target that fails for a while: exponential backoff with jitter, within a
//! time budget per run, and cut short by a shutdown.
//!
//! Providers have outages that last hours. A run keeps retrying transient failures
//! (connection refused or reset, timeouts, 5xx, SlowDown) until it has spent its budget
//! waiting; then it fails cleanly, and the next run resumes from what the catalog holds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The first wait, doubled after each failure up to `MAX_DELAY`.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Shared by every request of one run.
#[derive(Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

struct Inner {
    budget: Duration,
    /// Milliseconds spent waiting so far.
    spent_ms: AtomicU64,
    retries: AtomicU64,
    stop: Option<Arc<AtomicBool>>,
    last_error: Mutex<Option<String>>,
}

/// Why a retry loop gave up.
#[derive(Debug, thiserror::Error)]
pub enum GiveUp {
    #[error("the target kept failing for the retry budget of {budget:?}; last error: {last}")]
    Budget { budget: Duration, last: String },
    #[error("stopped by shutdown while the target was failing ({last})")]
    Stopped { last: String },
    /// A call made without retries ([`Retry::none`]) failed transiently: its caller retries.
    #[error("{last}")]
    NotRetried { last: String },
}

/// The retry budget of calls made outside a backup run (status, prune, init, restore):
/// long enough for a hiccup, short enough that a monitoring check answers.
const BRIEF_BUDGET: Duration = Duration::from_secs(30);

impl Retry {
    pub fn brief() -> Retry {
        Retry::new(BRIEF_BUDGET, None)
    }

    /// No retry at all: the first transient failure gives up (the calls a store kind
    /// makes, which [`crate::store`] retries around the kind).
    pub fn none() -> Retry {
        Retry::new(Duration::ZERO, None)
    }

    /// `stop`: when set, waiting ends at once (a daemon shutting down).
    pub fn new(budget: Duration, stop: Option<Arc<AtomicBool>>) -> Retry {
        Retry {
            inner: Arc::new(Inner {
                budget,
                spent_ms: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                stop,
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Waits before retry number `attempt` (1 for the first retry) after `error`, or
    /// gives up when the budget is spent or a stop was asked.
    pub async fn wait(&self, attempt: u32, error: &str) -> Result<(), GiveUp> {
        let i = &self.inner;
        *i.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        let ceiling = FIRST_DELAY.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_DELAY);
        // "Equal jitter": at least half the ceiling, so retries do not collapse to zero.
        let delay = ceiling / 2 + ceiling.mul_f64(random_unit() / 2.0);
        if i.budget.is_zero() {
            return Err(GiveUp::NotRetried { last: error.to_string() });
        }
        let spent = Duration::from_millis(i.spent_ms.load(Ordering::Relaxed));
        if spent + delay > i.budget {
            return Err(GiveUp::Budget { budget: i.budget, last: error.to_string() });
        }
        i.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, "target failed, retrying: {error}");
        // Sleep in slices so a shutdown is noticed quickly.
        let mut left = delay;
        while !left.is_zero() {
            if self.stopped() {
                return Err(GiveUp::Stopped { last: error.to_string() });
            }
            let slice = left.min(Duration::from_millis(100));
            tokio::time::sleep(slice).await;
            left -= slice;
            i.spent_ms.fetch_add(slice.as_millis() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn stopped(&self) -> bool {
        self.inner.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
    }

    pub fn budget(&self) -> Duration {
        self.inner.budget
    }

    /// How many retries this run made.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// The last transient error seen, if any.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Uniform in [0, 1) from the OS random source.
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_when_the_budget_is_spent() {
        let r = Retry::new(Duration::from_millis(900), None);
        let mut attempt = 0;
        let e = loop {
            attempt += 1;
            if let Err(e) = r.wait(attempt, "connection refused").await {
                break e;
            }
        };
        assert!(matches!(e, GiveUp::Budget { .. }), "{e}");
        assert!(e.to_string().contains("connection refused"));
        // 125-250 ms, then 250-500 ms, then 500-1000 ms would exceed 900 ms in all.
        assert!((1..=3).contains(&r.retries()), "{}", r.retries());
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let stop = Arc::new(AtomicBool::new(false));
        let r = Retry::new(Duration::from_secs(3600), Some(stop.clone()));
        stop.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        assert!(matches!(r.wait(10, "timeout").await, Err(GiveUp::Stopped { .. })));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
