//! A distributed lock that degrades to in-process locking while its backend is unreachable:
//! each replica then may fetch a missing path once, instead of every miss failing. With `strict`,
//! it does not degrade: misses fail (404) until the backend is back. Every acquisition tries the
//! backend first, so normal locking resumes by itself.

use std::time::Duration;

use async_trait::async_trait;
use prometheus::{IntCounter, IntGauge};

use super::{Guard, LocalLock, Lock, LockError};

pub struct FallbackLock<L> {
    primary: L,
    local: LocalLock,
    strict: bool,
    fallbacks: IntCounter,
    degraded: IntGauge,
}

impl<L: Lock> FallbackLock<L> {
    /// `fallbacks` counts acquisitions made without the primary; `degraded` is 1 while it is down.
    pub fn new(primary: L, strict: bool, fallbacks: IntCounter, degraded: IntGauge) -> Self {
        Self {
            primary,
            local: LocalLock::new(),
            strict,
            fallbacks,
            degraded,
        }
    }
}

#[async_trait]
impl<L: Lock> Lock for FallbackLock<L> {
    async fn acquire(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Guard>, LockError> {
        match self.primary.acquire(key, ttl, wait).await {
            Err(LockError::Unavailable(why)) => {
                self.fallbacks.inc();
                self.degraded.set(1);
                if self.strict {
                    return Err(LockError::Unavailable(why));
                }
                tracing::warn!(lock = key, reason = %why, "distributed lock unavailable; locking in this process only");
                self.local.acquire(key, ttl, wait).await
            }
            other => {
                self.degraded.set(0);
                other
            }
        }
    }
}
