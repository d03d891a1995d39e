//! Keeping a held lock through the blips of its service. A long download or a GC pass holds its
//! lock far longer than one TTL, so it is extended every `ttl / 3`. One failed extension says
//! little — a Redis master paused or restarting, a slow network — and the lock is still valid
//! until `ttl` minus the clock-drift allowance has passed since the last extension that
//! succeeded. So the keeper keeps trying (more often once an attempt failed), and only declares
//! the lock lost when that time is over; the work then stops before it commits anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{drift, Guard, LockError, LockName};

/// Extends a lock in the background while its work runs; stops when dropped.
pub struct Keeper {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    guard: Arc<Guard>,
    name: String,
    ttl: Duration,
    /// When the last successful extension (or the acquisition) was sent.
    valid_from: Mutex<Instant>,
    lost: watch::Sender<bool>,
    extensions: IntCounterVec,
}

impl Shared {
    fn deadline(&self) -> Instant {
        *self.valid_from.lock().unwrap_or_else(|e| e.into_inner()) + self.ttl - drift(self.ttl)
    }

    /// One extension attempt; `Ok(false)` when it failed but the lock is still valid.
    async fn attempt(&self) -> Result<bool, LockError> {
        let sent = Instant::now();
        match self.guard.extend(self.ttl).await {
            Ok(()) => {
                *self.valid_from.lock().unwrap_or_else(|e| e.into_inner()) = sent;
                self.extensions.with_label_values(&["ok"]).inc();
                Ok(true)
            }
            Err(e) => {
                self.extensions.with_label_values(&["failed"]).inc();
                if Instant::now() >= self.deadline() {
                    self.extensions.with_label_values(&["lost"]).inc();
                    self.lost.send_replace(true);
                    warn!(lock = %self.name, error = %e, "lock lost: not extended within its TTL");
                    return Err(LockError::Lost(self.name.clone()));
                }
                Ok(false)
            }
        }
    }
}

impl Keeper {
    /// Starts keeping `guard`, acquired just now for `ttl`. `extensions` counts attempts by
    /// result (`ok`, `failed`, `lost`).
    pub fn spawn(
        guard: Arc<Guard>,
        name: LockName<'_>,
        ttl: Duration,
        extensions: IntCounterVec,
    ) -> Self {
        let shared = Arc::new(Shared {
            guard,
            name: name.to_string(),
            ttl,
            valid_from: Mutex::new(Instant::now()),
            lost: watch::Sender::new(false),
            extensions,
        });
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut failing = false;
                loop {
                    // After a failure, try twice as often: the lock's remaining time is shorter.
                    let pause = if failing { ttl / 6 } else { ttl / 3 };
                    let until_deadline =
                        shared.deadline().saturating_duration_since(Instant::now());
                    tokio::time::sleep(pause.min(until_deadline)).await;
                    match shared.attempt().await {
                        Ok(true) => {
                            if failing {
                                info!(lock = %shared.name, "lock extended again");
                            }
                            failing = false;
                        }
                        Ok(false) => {
                            if !failing {
                                warn!(lock = %shared.name, "could not extend a lock; retrying within its TTL");
                            }
                            failing = true;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        Self { shared, task }
    }

    /// `Err(Lost)` once the lock could not be kept.
    pub fn check(&self) -> Result<(), LockError> {
        if *self.shared.lost.borrow() {
            Err(LockError::Lost(self.shared.name.clone()))
        } else {
            Ok(())
        }
    }

    /// Extends the lock now, retrying while it is still valid: what a holder does right before
    /// it commits, so that the commit happens with at least a TTL of validity ahead.
    pub async fn confirm(&self) -> Result<(), LockError> {
        loop {
            self.check()?;
            if self.shared.attempt().await? {
                return Ok(());
            }
            let left = self
                .shared
                .deadline()
                .saturating_duration_since(Instant::now());
            tokio::time::sleep(Duration::from_millis(100).min(left)).await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::super::Held;
    use super::*;

    /// A lock whose service can be switched off.
    struct Flaky(Arc<AtomicBool>);

    #[async_trait]
    impl Held for Flaky {
        async fn extend(&self, _ttl: Duration) -> Result<(), LockError> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(LockError::Unavailable("down".into()))
            }
        }
    }

    fn counters() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("x", "x"), &["result"]).expect("counter")
    }

    #[tokio::test(start_paused = true)]
    async fn a_blip_shorter_than_the_ttl_keeps_the_lock() {
        let up = Arc::new(AtomicBool::new(true));
        let guard: Arc<Guard> = Arc::new(Box::new(Flaky(up.clone())));
        let ttl = Duration::from_secs(3);
        let c = counters();
        let keeper = Keeper::spawn(guard, LockName::Task("x"), ttl, c.clone());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        up.store(false, Ordering::SeqCst);
        // Down across two extension times, up again before the TTL since the last success.
        tokio::time::sleep(Duration::from_millis(1700)).await;
        assert!(keeper.check().is_ok());
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(keeper.check().is_ok());
        assert!(c.with_label_values(&["failed"]).get() >= 1);
        assert_eq!(c.with_label_values(&["lost"]).get(), 0);
        keeper.confirm().await.expect("confirmed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_past_the_ttl_loses_it() {
        let up = Arc::new(AtomicBool::new(true));
        let guard: Arc<Guard> = Arc::new(Box::new(Flaky(up.clone())));
        let ttl = Duration::from_secs(3);
        let c = counters();
        let keeper = Keeper::spawn(guard, LockName::Task("x"), ttl, c.clone());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert!(matches!(keeper.check(), Err(LockError::Lost(_))));
        assert_eq!(c.with_label_values(&["lost"]).get(), 1);
        // Coming back does not revive it: another holder may have it by now.
        up.store(true, Ordering::SeqCst);
        assert!(keeper.confirm().await.is_err());
    }
}
