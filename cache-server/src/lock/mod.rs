//! Mutual exclusion for shared work (one download per NAR, one upstream lookup per narinfo).
//! `LocalLock` serves one process; a distributed implementation serves many replicas.

mod fallback;
mod keeper;
mod local;
mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use fallback::FallbackLock;
pub use keeper::Keeper;
pub use local::LocalLock;
pub use redis::RedisLock;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock backend unavailable: {0}")]
    Unavailable(String),
    #[error("lock {0} was lost (expired and possibly taken by another holder)")]
    Lost(String),
}

/// Clock drift allowance of the Redlock algorithm: 1% of the TTL plus 2 ms. A lock is valid for
/// its TTL less this from the moment its acquisition or extension was sent.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// A held lock. Dropping it releases the lock.
#[async_trait]
pub trait Held: Send + Sync {
    /// Keeps the lock for `ttl` more from now (for long downloads).
    async fn extend(&self, ttl: Duration) -> Result<(), LockError>;
}

pub type Guard = Box<dyn Held>;

/// The locks the cache takes, each named in one place: the download of a NAR and GC's sweep of
/// its published parts, for one, must agree on the name.
#[derive(Clone, Copy, Debug)]
pub enum LockName<'a> {
    /// One GC pass at a time, cluster-wide.
    Gc,
    /// The download of one NAR, and the parts it publishes.
    Nar(&'a crate::nix::NarFile),
    /// The upstream lookup of one narinfo.
    Narinfo(&'a crate::nix::StoreHash),
    /// The run of one admin task, by its id.
    Task(&'a str),
}

impl std::fmt::Display for LockName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gc => f.write_str("gc"),
            Self::Nar(file) => write!(f, "nar:{}", file.file_name()),
            Self::Narinfo(hash) => write!(f, "narinfo:{hash}"),
            Self::Task(id) => write!(f, "task:{id}"),
        }
    }
}

#[async_trait]
pub trait Lock: Send + Sync + 'static {
    /// Takes `key` for `ttl`, waiting up to `wait` for a current holder to release it.
    /// `Ok(None)` when it is still held by someone else after `wait`.
    async fn acquire(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Guard>, LockError>;
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    //! Behaviour every `Lock` must have.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    pub async fn run(lock: Arc<dyn Lock>) {
        let ttl = Duration::from_secs(30);
        let g = lock
            .acquire("a", ttl, Duration::ZERO)
            .await
            .expect("acquire")
            .expect("free");
        assert!(lock
            .acquire("a", ttl, Duration::from_millis(50))
            .await
            .expect("acquire")
            .is_none());
        assert!(
            lock.acquire("b", ttl, Duration::ZERO)
                .await
                .expect("acquire")
                .is_some(),
            "keys are independent"
        );
        g.extend(ttl).await.expect("extend");
        drop(g);
        let g = lock
            .acquire("a", ttl, Duration::from_secs(5))
            .await
            .expect("acquire");
        assert!(g.is_some(), "released on drop");
        drop(g);

        // Many contenders: never two holders at once, and all get their turn.
        let inside = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (lock, inside, done) = (lock.clone(), inside.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let g = lock
                    .acquire("c", ttl, Duration::from_secs(30))
                    .await
                    .expect("acquire")
                    .expect("turn");
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                drop(g);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(done.load(Ordering::SeqCst), 20);
    }
}
