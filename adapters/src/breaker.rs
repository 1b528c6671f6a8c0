//! A small per-adapter circuit breaker: closed → open after N consecutive failures → half-open.
//!
//! Closed: every call goes through; each failure (provider unavailable or timed out) counts, any
//! other outcome resets the count. After `failure_threshold` consecutive failures the circuit
//! opens: calls fail fast for `open_for`. Then it is half-open: exactly one probe call goes
//! through (others still fail fast); success closes the circuit, failure opens it again.
//! Time is `tokio::time`, so tests can pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit fails fast before letting one probe through.
    pub open_for: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// The breaker; cheap to consult (one uncontended mutex held for a few instructions).
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitConfig,
    state: Mutex<State>,
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// How long until a probe may go through (zero while a probe is already in flight).
    pub retry_in: Duration,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// Ask to make a call. The permit must be resolved with [`Permit::success`] or
    /// [`Permit::failure`]; dropping it unresolved (a cancelled call) records nothing.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Open> {
        let mut st = self.lock();
        let probe = match st.open_until {
            None => false,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    return Err(Open {
                        retry_in: until - now,
                    });
                }
                if st.probe_in_flight {
                    return Err(Open {
                        retry_in: Duration::ZERO,
                    });
                }
                st.probe_in_flight = true;
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            resolved: false,
        })
    }

    /// True while calls fail fast (open, or half-open with a probe in flight).
    pub fn is_open(&self) -> bool {
        let st = self.lock();
        match st.open_until {
            None => false,
            Some(until) => Instant::now() < until || st.probe_in_flight,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Permission to make one call; report how it went.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    resolved: bool,
}

impl Permit<'_> {
    /// The provider answered (any answer that shows it is up, including 4xx).
    pub fn success(mut self) {
        self.resolved = true;
        let mut st = self.breaker.lock();
        *st = State::default();
    }

    /// The provider was unreachable, answered 5xx, or timed out.
    pub fn failure(mut self) {
        self.resolved = true;
        let cfg = self.breaker.config;
        let mut st = self.breaker.lock();
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        if self.probe {
            st.probe_in_flight = false;
            st.open_until = Some(Instant::now() + cfg.open_for);
        } else if st.open_until.is_none() && st.consecutive_failures >= cfg.failure_threshold {
            st.open_until = Some(Instant::now() + cfg.open_for);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.resolved && self.probe {
            // The probe was cancelled: let the next caller probe instead.
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(CircuitConfig::default())
    }

    fn fail(b: &CircuitBreaker, n: u32) {
        for _ in 0..n {
            b.try_acquire().expect("closed").failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker();
        fail(&b, 4);
        assert!(!b.is_open());
        fail(&b, 1);
        assert!(b.is_open());
        let open = b.try_acquire().unwrap_err();
        assert_eq!(open.retry_in, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_count() {
        let b = breaker();
        fail(&b, 4);
        b.try_acquire().unwrap().success();
        fail(&b, 4);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_and_closes_on_success() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = b.try_acquire().expect("probe allowed after open_for");
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        probe.success();
        assert!(!b.is_open());
        fail(&b, 4);
        assert!(!b.is_open(), "count restarted after closing");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_another_period() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        b.try_acquire().unwrap().failure();
        let open = b.try_acquire().unwrap_err();
        assert_eq!(open.retry_in, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_frees_the_slot() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_ok());
    }
}
