//! Last-access bookkeeping for LRU eviction, batched: hits record into memory and a background
//! task writes them to the database now and then, so a hit never waits for a write.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::db::Database;

/// Entries remembered between flushes; beyond this, accesses are dropped (LRU is approximate).
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub struct AccessLog {
    pending: Mutex<(HashSet<String>, HashSet<String>)>,
}

impl AccessLog {
    pub fn narinfo(&self, hash: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.0.len() < MAX_PENDING && !p.0.contains(hash) {
            p.0.insert(hash.to_string());
        }
    }

    pub fn nar(&self, file: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.1.len() < MAX_PENDING && !p.1.contains(file) {
            p.1.insert(file.to_string());
        }
    }

    /// Writes what was recorded; on failure the batch is put back for the next flush.
    pub async fn flush(&self, db: &dyn Database, now: i64) -> Result<(), crate::db::DbError> {
        let (hashes, files) =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if hashes.is_empty() && files.is_empty() {
            return Ok(());
        }
        let (h, f): (Vec<String>, Vec<String>) = (
            hashes.iter().cloned().collect(),
            files.iter().cloned().collect(),
        );
        let result = db.touch(&h, &f, now).await;
        if result.is_err() {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for x in hashes {
                if p.0.len() < MAX_PENDING {
                    p.0.insert(x);
                }
            }
            for x in files {
                if p.1.len() < MAX_PENDING {
                    p.1.insert(x);
                }
            }
        }
        result
    }
}
