//! LRU eviction. One pass, under the cluster-wide `gc` lock: narinfos are removed least recently
//! used first until the stored NARs fit in the size limit; the NARs no narinfo refers to any more
//! are deleted only after a grace period, longer than any replica keeps a narinfo in memory and
//! than a client takes from a narinfo to its NAR — so nobody is ever handed a narinfo whose NAR is
//! already gone. A NAR still downloading has no row yet and is never a candidate.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Cache;
use crate::storage::{nar_key, narinfo_key};

const BATCH: i64 = 500;

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReport {
    /// Whether this process ran the pass (false: another one holds the `gc` lock).
    pub ran: bool,
    pub size_before: u64,
    pub size_after: u64,
    pub narinfos_evicted: u64,
    pub nars_evicted: u64,
    pub bytes_evicted: u64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl Cache {
    /// One eviction pass down to `max_size` bytes of NARs; `grace` between forgetting narinfos and
    /// deleting their NARs. Waits up to `lock_wait` for the `gc` lock, and holds it at least
    /// `min_hold`, so replicas woken by the same schedule tick run one pass between them.
    pub async fn gc(
        &self,
        max_size: u64,
        grace: Duration,
        lock_wait: Duration,
        min_hold: Duration,
    ) -> Result<GcReport, GcError> {
        let started = Instant::now();
        let ttl = self.settings.lock_ttl;
        let Some(guard) = self.acquire("gc", ttl, lock_wait).await? else {
            return Ok(GcReport::default());
        };
        let size_before = self.db.total_nar_size().await?;
        let mut report = GcReport {
            ran: true,
            size_before,
            size_after: size_before,
            ..Default::default()
        };
        let mut size = size_before;
        let mut unreferenced: BTreeSet<String> = BTreeSet::new();
        'evict: while size > max_size {
            let batch = self.db.lru_narinfos(BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for (hash, nar_file) in batch {
                if size <= max_size {
                    break 'evict;
                }
                // The narinfo first (row, then its copy in storage): from now on nobody new is
                // told about this NAR.
                self.db.delete_narinfo(&hash).await?;
                if let Ok(h) = crate::nix::StoreHash::parse(&hash) {
                    self.storage.delete(&narinfo_key(&h)).await?;
                    self.narinfos.invalidate(&h);
                }
                report.narinfos_evicted += 1;
                if self.db.nar_references(&nar_file).await? == 0
                    && unreferenced.insert(nar_file.clone())
                {
                    size = size.saturating_sub(self.db.nar_size(&nar_file).await?.unwrap_or(0));
                }
            }
            guard.extend(ttl).await?;
        }
        if !unreferenced.is_empty() {
            // Every replica's memory forgets the narinfos within the grace period, and clients
            // holding one fetch its NAR well within it.
            let until = Instant::now() + grace;
            while Instant::now() < until {
                tokio::time::sleep((until - Instant::now()).min(ttl / 3)).await;
                guard.extend(ttl).await?;
            }
        }
        for nar_file in unreferenced {
            // Referred to again meanwhile (the path was asked for anew): keep it.
            if self.db.nar_references(&nar_file).await? > 0 {
                continue;
            }
            let bytes = self.db.nar_size(&nar_file).await?.unwrap_or(0);
            let Ok(file) = crate::nix::NarFile::parse(&nar_file) else {
                warn!(file = %nar_file, "unexpected NAR file name in the database; left alone");
                continue;
            };
            self.storage.delete(&nar_key(&file)).await?;
            self.db.delete_nar(&nar_file).await?;
            report.nars_evicted += 1;
            report.bytes_evicted += bytes;
        }
        report.size_after = self.db.total_nar_size().await?;
        report.seconds = started.elapsed().as_secs_f64();
        self.metrics.gc_runs.inc();
        self.metrics.gc_last_duration.set(report.seconds);
        self.metrics.gc_evicted_bytes.inc_by(report.bytes_evicted);
        self.metrics.gc_evicted_nars.inc_by(report.nars_evicted);
        self.metrics
            .gc_evicted_narinfos
            .inc_by(report.narinfos_evicted);
        info!(
            narinfos = report.narinfos_evicted,
            nars = report.nars_evicted,
            bytes = report.bytes_evicted,
            size_after = report.size_after,
            seconds = report.seconds,
            "GC pass done"
        );
        if let Some(rest) = min_hold.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        drop(guard);
        Ok(report)
    }
}
