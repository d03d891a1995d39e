//! In-process locks: one tokio mutex per key, dropped from the table when nobody holds or waits.
//! The TTL does not apply: a holder's death is the process's death.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use super::{Guard, Held, Lock, LockError};

type Table = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Default)]
pub struct LocalLock {
    table: Table,
}

impl LocalLock {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.entry(key.to_string()).or_default().clone()
    }

    /// Removes the key's mutex when only the table refers to it.
    fn forget_if_idle(table: &Table, key: &str) {
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            table.remove(key);
        }
    }
}

struct LocalGuard {
    guard: Option<OwnedMutexGuard<()>>,
    table: Table,
    key: String,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        LocalLock::forget_if_idle(&self.table, &self.key);
    }
}

#[async_trait]
impl Held for LocalGuard {
    async fn extend(&self, _ttl: Duration) -> Result<(), LockError> {
        Ok(())
    }
}

#[async_trait]
impl Lock for LocalLock {
    async fn acquire(
        &self,
        key: &str,
        _ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Guard>, LockError> {
        let mutex = self.entry(key);
        let taken = match mutex.clone().try_lock_owned() {
            Ok(g) => Some(g),
            Err(_) if wait.is_zero() => None,
            Err(_) => tokio::time::timeout(wait, mutex.lock_owned()).await.ok(),
        };
        match taken {
            Some(g) => Ok(Some(Box::new(LocalGuard {
                guard: Some(g),
                table: self.table.clone(),
                key: key.to_string(),
            }))),
            None => {
                Self::forget_if_idle(&self.table, key);
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let lock = Arc::new(LocalLock::new());
        super::super::conformance::run(lock.clone()).await;
        assert!(
            lock.table.lock().expect("table").is_empty(),
            "idle keys are forgotten"
        );
    }
}
