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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lock::RedisLock;
    use nixcache_tests::redis::Redis;

    fn counter() -> IntCounter {
        IntCounter::new("fallbacks", "test").expect("counter")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn falls_back_while_redis_is_down_and_recovers() {
        let mut redis = Redis::start();
        let primary =
            RedisLock::new(&[redis.url()], Duration::from_millis(300), "s3://test").expect("lock");
        let fallbacks = counter();
        let lock = Arc::new(FallbackLock::new(
            primary,
            false,
            fallbacks.clone(),
            IntGauge::new("d", "test").expect("gauge"),
        ));
        super::super::conformance::run(lock.clone()).await;
        assert_eq!(fallbacks.get(), 0);

        redis.stop();
        let ttl = Duration::from_secs(10);
        let g = lock
            .acquire("x", ttl, Duration::ZERO)
            .await
            .expect("falls back")
            .expect("free locally");
        assert!(fallbacks.get() >= 1);
        assert!(
            lock.acquire("x", ttl, Duration::from_millis(50))
                .await
                .expect("falls back")
                .is_none(),
            "still exclusive in-process"
        );
        drop(g);

        redis.resume();
        let before = fallbacks.get();
        let start = std::time::Instant::now();
        while lock
            .acquire("y", ttl, Duration::ZERO)
            .await
            .expect("acquire")
            .is_none()
            || fallbacks.get() > before
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "Redis locking did not resume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn strict_mode_refuses_instead() {
        let mut redis = Redis::start();
        let primary =
            RedisLock::new(&[redis.url()], Duration::from_millis(300), "s3://test").expect("lock");
        let lock = FallbackLock::new(
            primary,
            true,
            counter(),
            IntGauge::new("d", "test").expect("gauge"),
        );
        redis.stop();
        let r = lock
            .acquire("x", Duration::from_secs(10), Duration::ZERO)
            .await
            .map(|_| ());
        assert!(matches!(r, Err(LockError::Unavailable(_))));
    }
}
