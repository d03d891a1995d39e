//! An upstream's circuit breaker. After `failures` failed requests in a row the upstream is
//! skipped (the circuit is open) for a backoff; then one request tries it (half-open): an answer
//! closes the circuit, a failure opens it again for twice as long, up to 8 times the backoff.
//! Every change is logged and counted (`nixcache_upstream_circuit_changes_total`), and
//! `nixcache_upstream_up` shows whether the upstream is asked.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge};
use tracing::{info, warn};

use crate::config::BreakerConfig;

/// The longest backoff, as a multiple of the configured one.
const MAX_BACKOFF_FACTOR: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    /// Asked; `failures` in a row so far.
    Closed { failures: u32 },
    /// Skipped until `until`.
    Open { until: Instant, backoff: Duration },
    /// One request is trying it; the others skip it meanwhile.
    HalfOpen { backoff: Duration },
}

pub struct Breaker {
    config: BreakerConfig,
    label: String,
    circuit: Mutex<Circuit>,
    up: IntGauge,
    changes: IntCounterVec,
}

/// The upstream is skipped now.
#[derive(Debug)]
pub struct Skipped;

/// Leave to send one request; its outcome is reported with [`Permit::answered`] or
/// [`Permit::failed`]. A trial dropped without an outcome (its request was cancelled) lets the
/// next request try instead.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig, label: &str, metrics: &crate::metrics::Metrics) -> Self {
        let up = metrics.upstream_up.with_label_values(&[label]);
        up.set(1);
        Self {
            config,
            label: label.to_string(),
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
            up,
            changes: metrics.upstream_circuit.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, circuit: &mut Circuit, next: Circuit) {
        *circuit = next;
        let state = match next {
            Circuit::Closed { .. } => {
                self.up.set(1);
                info!(upstream = %self.label, "upstream answers again; asking it");
                "closed"
            }
            Circuit::Open { backoff, .. } => {
                self.up.set(0);
                warn!(
                    upstream = %self.label,
                    ?backoff,
                    "upstream failing; skipping it for the backoff"
                );
                "open"
            }
            Circuit::HalfOpen { .. } => {
                info!(upstream = %self.label, "upstream's backoff is over; trying it once");
                "half_open"
            }
        };
        self.changes
            .with_label_values(&[self.label.as_str(), state])
            .inc();
    }

    /// Whether a request may go to the upstream now.
    pub fn admit(&self) -> Result<Permit<'_>, Skipped> {
        let permit = |trial| Permit {
            breaker: self,
            trial,
            reported: false,
        };
        if self.config.failures == 0 {
            return Ok(permit(false));
        }
        let mut circuit = self.lock();
        match *circuit {
            Circuit::Closed { .. } => Ok(permit(false)),
            Circuit::Open { until, backoff } if Instant::now() >= until => {
                self.enter(&mut circuit, Circuit::HalfOpen { backoff });
                Ok(permit(true))
            }
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => Err(Skipped),
        }
    }

    fn report(&self, trial: bool, answered: bool) {
        if self.config.failures == 0 {
            return;
        }
        let mut circuit = self.lock();
        match (*circuit, answered) {
            (Circuit::Closed { failures }, true) if failures > 0 => {
                *circuit = Circuit::Closed { failures: 0 };
            }
            (Circuit::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= self.config.failures {
                    let backoff = self.config.backoff;
                    let until = Instant::now() + backoff;
                    self.enter(&mut circuit, Circuit::Open { until, backoff });
                } else {
                    *circuit = Circuit::Closed { failures };
                }
            }
            (Circuit::HalfOpen { .. }, true) if trial => {
                self.enter(&mut circuit, Circuit::Closed { failures: 0 });
            }
            (Circuit::HalfOpen { backoff }, false) if trial => {
                let backoff = (backoff * 2).min(self.config.backoff * MAX_BACKOFF_FACTOR);
                let until = Instant::now() + backoff;
                self.enter(&mut circuit, Circuit::Open { until, backoff });
            }
            // An answer to a request sent before the circuit opened changes nothing.
            _ => {}
        }
    }
}

impl Permit<'_> {
    /// The upstream answered (any status it gives for being up, a 404 too).
    pub fn answered(mut self) {
        self.reported = true;
        self.breaker.report(self.trial, true);
    }

    /// The request failed: no connection, no answer in time, or a 5xx or 429.
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.report(self.trial, false);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial && !self.reported {
            let mut circuit = self.breaker.lock();
            if let Circuit::HalfOpen { backoff } = *circuit {
                *circuit = Circuit::Open {
                    until: Instant::now(),
                    backoff,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, backoff_ms: u64) -> (Breaker, crate::metrics::Metrics) {
        let metrics = crate::metrics::Metrics::new();
        let config = BreakerConfig {
            failures,
            backoff: Duration::from_millis(backoff_ms),
        };
        (Breaker::new(config, "up.test", &metrics), metrics)
    }

    fn changes(m: &crate::metrics::Metrics, state: &str) -> u64 {
        m.upstream_circuit
            .with_label_values(&["up.test", state])
            .get()
    }

    #[test]
    fn opens_after_failures_in_a_row_and_closes_after_a_good_retry() {
        let (b, m) = breaker(3, 50);
        b.admit().expect("closed").failed();
        b.admit().expect("closed").failed();
        b.admit().expect("closed").answered();
        // The answer reset the count: two more failures keep it closed.
        b.admit().expect("closed").failed();
        b.admit().expect("closed").failed();
        assert!(b.admit().is_ok());
        b.admit().expect("closed").failed();
        assert_eq!(changes(&m, "open"), 1);
        assert!(b.admit().is_err(), "skipped while open");
        assert_eq!(m.upstream_up.with_label_values(&["up.test"]).get(), 0);

        std::thread::sleep(Duration::from_millis(70));
        let trial = b.admit().expect("the backoff is over");
        assert!(b.admit().is_err(), "one trial at a time");
        trial.answered();
        assert_eq!(changes(&m, "closed"), 1);
        assert_eq!(m.upstream_up.with_label_values(&["up.test"]).get(), 1);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_failed_retry_doubles_the_backoff_and_a_cancelled_one_lets_another_try() {
        let (b, m) = breaker(1, 40);
        b.admit().expect("closed").failed();
        std::thread::sleep(Duration::from_millis(50));
        b.admit().expect("trial").failed();
        // Open for 80 ms now.
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit().is_err(), "still open after the first backoff");
        std::thread::sleep(Duration::from_millis(40));
        drop(b.admit().expect("trial after the doubled backoff"));
        // Cancelled: the next request is the trial.
        b.admit().expect("the next trial").answered();
        assert_eq!(changes(&m, "open"), 2);
        assert_eq!(changes(&m, "half_open"), 3);
        assert_eq!(changes(&m, "closed"), 1);
    }

    #[test]
    fn a_threshold_of_zero_never_skips() {
        let (b, m) = breaker(0, 10);
        for _ in 0..10 {
            b.admit().expect("asked").failed();
        }
        assert!(b.admit().is_ok());
        assert_eq!(changes(&m, "open"), 0);
    }
}
