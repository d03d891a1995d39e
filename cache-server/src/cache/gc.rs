//! LRU eviction. One pass, under the cluster-wide `gc` lock: narinfos are removed least recently
//! used first until the stored NARs fit in the size limit, and those unused for longer than the
//! age limit whatever the size; the closures of pinned paths are never removed (see
//! [`super::pins`]). The NARs no narinfo refers to any more
//! are deleted only after a grace period, longer than any replica keeps a narinfo in memory and
//! than a client takes from a narinfo to its NAR — so nobody is ever handed a narinfo whose NAR is
//! already gone. A NAR still downloading has no row yet and is never a candidate.
//!
//! Garbage is collected whatever the size: NARs no narinfo names (an upload without its narinfo,
//! a replaced narinfo, or a pass interrupted between forgetting narinfos and deleting their NARs,
//! which the next pass thus finishes) once unused for the grace period, and narinfos whose NAR was
//! never fetched (looked up only, as `nix copy --to` and channel scans do) once unused for
//! `unfetched_ttl`. Every step is a database row, so a pass killed anywhere loses nothing and
//! leaves nothing that the next pass does not find.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Cache;
use crate::lock::LockName;
use crate::storage::nar_key;

const BATCH: i64 = 500;
/// An upload to storage not completed after this long was left by a process that died: no commit
/// of a NAR takes a day.
const STALE_UPLOAD_AGE: Duration = Duration::from_secs(24 * 3600);
/// Orphaned NARs taken per pass (the next pass takes more).
const ORPHAN_LIMIT: i64 = 10_000;

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Whether this process ran the pass (false: another one holds the `gc` lock).
    pub ran: bool,
    pub size_before: u64,
    pub size_after: u64,
    pub narinfos_evicted: u64,
    pub nars_evicted: u64,
    pub bytes_evicted: u64,
    /// Of `nars_evicted`, those no narinfo named when the pass began.
    #[serde(default)]
    pub orphans_collected: u64,
    /// Narinfos removed because their NAR was never fetched.
    #[serde(default)]
    pub unfetched_collected: u64,
    /// Incomplete storage uploads (S3 multipart) of dead processes, aborted.
    #[serde(default)]
    pub stale_uploads_aborted: u64,
    /// Of `narinfos_evicted`, those evicted for `--max-age` alone (the size was within limits).
    #[serde(default)]
    pub aged_out: u64,
    /// Paths in the pinned closures when the pass began.
    #[serde(default)]
    pub pinned_paths: u64,
    /// Narinfos the pass would have evicted but kept because they are pinned.
    #[serde(default)]
    pub pinned_kept: u64,
    pub seconds: f64,
    /// Where `seconds` went.
    #[serde(default)]
    pub phases: GcPhases,
}

/// Seconds each step of a pass took, so a slow pass shows which step grew.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GcPhases {
    /// Removing the parts of dead downloads, aborting stale storage uploads, writing this
    /// replica's access times and summing the stored size.
    pub sweep: f64,
    /// Choosing orphaned NARs and forgetting narinfos whose NAR never came.
    pub select: f64,
    /// Forgetting least recently used narinfos until what they free covers the excess.
    pub evict: f64,
    /// Waiting out the grace period.
    pub grace: f64,
    /// Deleting the NARs no narinfo names: storage objects, then rows.
    pub delete: f64,
}

impl std::fmt::Display for GcPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sweep {:.2} s, select {:.2} s, evict {:.2} s, grace {:.2} s, delete {:.2} s",
            self.sweep, self.select, self.evict, self.grace, self.delete
        )
    }
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

fn report_swept(n: u64) {
    if n > 0 {
        info!(
            parts = n,
            "removed in-flight parts of downloads that are not running"
        );
    }
}

/// Storage deletions in flight at once while a pass forgets or evicts a batch.
const DELETE_CONCURRENCY: usize = 16;

impl Cache {
    /// Deletes NARs no narinfo refers to any more (those referred to again meanwhile are kept):
    /// storage objects first, then their rows, so that a pass killed between the two leaves rows
    /// the next pass finds. Returns (NARs, bytes) deleted.
    async fn delete_unreferenced(&self, files: &[String]) -> Result<(u64, u64), GcError> {
        use futures_util::StreamExt;
        let mut gone = Vec::new();
        let mut objects = Vec::new();
        for (name, bytes) in self.db.unreferenced_nars(files).await? {
            match crate::nix::NarFile::parse(&name) {
                Ok(file) => objects.push((name, nar_key(&file), bytes)),
                Err(_) => {
                    warn!(file = %name, "unexpected NAR file name in the database; left alone")
                }
            }
        }
        let deletes: Vec<_> = objects
            .into_iter()
            .map(|(name, key, bytes)| async move {
                if let Some(tier) = &self.tier {
                    // Other replicas' tiers drop it when they next check, within the grace waited.
                    tier.drop_key(&key);
                }
                self.storage.delete(&key).await?;
                Ok::<_, GcError>((name, bytes))
            })
            .collect();
        let mut deletes = futures_util::stream::iter(deletes).buffer_unordered(DELETE_CONCURRENCY);
        while let Some(r) = deletes.next().await {
            gone.push(r?);
        }
        let names: Vec<String> = gone.iter().map(|(n, _)| n.clone()).collect();
        self.db.delete_nars(&names).await?;
        let bytes: u64 = gone.iter().map(|(_, b)| b).sum();
        self.count_stored(-(gone.len() as i64), bytes);
        Ok((gone.len() as u64, bytes))
    }

    /// Removes published parts (`inflight/<file>/<n>`) of downloads nobody is running any more
    /// (their holder died): a part is only left alone while its NAR's lock is held.
    async fn sweep_inflight(&self) -> Result<u64, GcError> {
        let parts = self.storage.list(crate::storage::keys::INFLIGHT).await?;
        let mut by_file: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (key, _) in parts {
            if let Some(file) = crate::storage::keys::inflight_file(&key) {
                by_file
                    .entry(file.to_string())
                    .or_default()
                    .push(key.clone());
            }
        }
        let mut removed = 0;
        for (file, keys) in by_file {
            // Held by its download while one runs. A name that is no NAR file's was never a
            // download's: nobody holds it.
            let guard = match crate::nix::NarFile::parse(&file) {
                Ok(file) => {
                    let lock = LockName::Nar(&file);
                    let held = self.acquire(lock, self.settings.lock_ttl, Duration::ZERO);
                    match held.await? {
                        Some(guard) => Some(guard),
                        None => continue,
                    }
                }
                Err(_) => None,
            };
            for key in keys {
                self.storage.delete(&key).await?;
                removed += 1;
            }
            drop(guard);
        }
        Ok(removed)
    }

    /// One eviction pass down to `max_size` bytes of NARs and of what has not been used for
    /// `max_age` (none: no such limit), keeping the pinned closures; `grace` between forgetting
    /// narinfos and deleting their NARs. Waits up to `lock_wait` for the `gc` lock, and holds it
    /// at least `min_hold`, so replicas woken by the same schedule tick run one pass between them.
    pub async fn gc(
        &self,
        max_size: Option<u64>,
        max_age: Option<Duration>,
        grace: Duration,
        lock_wait: Duration,
        min_hold: Duration,
    ) -> Result<GcReport, GcError> {
        let started = Instant::now();
        let ttl = self.settings.lock_ttl;
        let Some(guard) = self.acquire(LockName::Gc, ttl, lock_wait).await? else {
            return Ok(GcReport::default());
        };
        // Kept through lock-service blips; the pass stops between steps once it is lost.
        let keeper = crate::lock::Keeper::spawn(
            std::sync::Arc::new(guard),
            LockName::Gc,
            ttl,
            self.metrics.lock_extensions.clone(),
        );
        let mut phase = Instant::now();
        let mut lap = move || {
            let seconds = phase.elapsed().as_secs_f64();
            phase = Instant::now();
            seconds
        };
        report_swept(self.sweep_inflight().await?);
        // Uploads of processes killed mid-commit keep their parts until aborted.
        let stale_uploads = match self.storage.abort_stale_uploads(STALE_UPLOAD_AGE).await {
            Ok(n) => {
                if n > 0 {
                    info!(
                        uploads = n,
                        "aborted incomplete storage uploads older than a day"
                    );
                }
                n
            }
            Err(e) => {
                warn!(error = %e, "could not list incomplete storage uploads; left for the next pass");
                0
            }
        };
        // This replica's recent accesses count before anything is judged unused.
        self.flush_access_log().await;
        let size_before = self.db.total_nar_size().await?;
        let mut report = GcReport {
            ran: true,
            size_before,
            size_after: size_before,
            stale_uploads_aborted: stale_uploads,
            ..Default::default()
        };
        report.phases.sweep = lap();
        let mut size = size_before;
        let mut unreferenced: BTreeSet<String> = BTreeSet::new();
        let now = crate::util::unix_now();
        // Orphans first: they count against the size limit, and removing them spares live
        // entries. Deleted after the grace wait below, like the NARs this pass unreferences.
        let unused_since = now - i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        for (file, bytes) in self.db.orphan_nars(unused_since, ORPHAN_LIMIT).await? {
            if unreferenced.insert(file) {
                size = size.saturating_sub(bytes);
                report.orphans_collected += 1;
            }
        }
        keeper.check()?;
        // What the pins keep, as it stands when the pass begins.
        let pinned = self.pinned_closure().await?;
        report.pinned_paths = pinned.len() as u64;
        // Narinfos whose NAR never came: nothing to wait for, no NAR to delete. Pinned ones stay
        // (a batch of pinned ones alone ends the step: the next pass goes on).
        let unfetched_secs = self.settings.gc.unfetched_ttl.as_secs();
        let unfetched_before = now - i64::try_from(unfetched_secs).unwrap_or(i64::MAX);
        loop {
            let batch = self.db.unfetched_narinfos(unfetched_before, BATCH).await?;
            let full = batch.len() == BATCH as usize;
            let batch: Vec<String> = batch.into_iter().filter(|h| !pinned.contains(h)).collect();
            if batch.is_empty() {
                break;
            }
            self.index
                .forget::<GcError>(&batch, DELETE_CONCURRENCY)
                .await?;
            report.unfetched_collected += batch.len() as u64;
            keeper.check()?;
            if !full {
                break;
            }
        }
        report.phases.select = lap();
        // A batch at a time, each in a few statements whatever its length: the least recently
        // used narinfos whose NARs' sizes cover what is over the limit (a NAR another narinfo
        // still names frees nothing, and the next batch goes on), and those unused for longer
        // than `max_age`. Pinned ones are passed over: the cursor moves on past them.
        let max_size = max_size.unwrap_or(u64::MAX);
        let used_before = max_age.map(|a| now - i64::try_from(a.as_secs()).unwrap_or(i64::MAX));
        let mut cursor = None;
        'evict: while size > max_size || used_before.is_some() {
            let batch = self.db.lru_narinfos(cursor.as_ref(), BATCH).await?;
            let Some(last) = batch.last().cloned() else {
                break;
            };
            cursor = Some(last);
            let mut over = size.saturating_sub(max_size);
            let mut hashes = Vec::new();
            let mut files = BTreeSet::new();
            let mut done = false;
            for entry in batch {
                let too_old = used_before.is_some_and(|before| entry.last_accessed_at < before);
                if over == 0 && !too_old {
                    // In LRU order: nothing later is too old either.
                    done = true;
                    break;
                }
                if pinned.contains(&entry.hash) {
                    report.pinned_kept += 1;
                    continue;
                }
                if over == 0 {
                    report.aged_out += 1;
                }
                hashes.push(entry.hash);
                if files.insert(entry.nar_file) {
                    over = over.saturating_sub(entry.size);
                }
            }
            // The narinfos first: from now on nobody new is told about these NARs.
            self.index
                .forget::<GcError>(&hashes, DELETE_CONCURRENCY)
                .await?;
            report.narinfos_evicted += hashes.len() as u64;
            let files: Vec<String> = files.into_iter().collect();
            for (file, bytes) in self.db.unreferenced_nars(&files).await? {
                if unreferenced.insert(file) {
                    size = size.saturating_sub(bytes);
                }
            }
            keeper.check()?;
            if done {
                break 'evict;
            }
        }
        report.phases.evict = lap();
        if !unreferenced.is_empty() {
            // Every replica's memory forgets the narinfos within the grace period, and clients
            // holding one fetch its NAR well within it.
            let until = Instant::now() + grace;
            while Instant::now() < until {
                tokio::time::sleep((until - Instant::now()).min(ttl / 3)).await;
                keeper.check()?;
            }
        }
        report.phases.grace = lap();
        let unreferenced: Vec<String> = unreferenced.into_iter().collect();
        for chunk in unreferenced.chunks(BATCH as usize) {
            keeper.check()?;
            // Those referred to again meanwhile (the path was asked for anew) are kept.
            let (nars, bytes) = self.delete_unreferenced(chunk).await?;
            report.nars_evicted += nars;
            report.bytes_evicted += bytes;
        }
        report.size_after = self.db.total_nar_size().await?;
        report.phases.delete = lap();
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
            orphans = report.orphans_collected,
            unfetched = report.unfetched_collected,
            aged_out = report.aged_out,
            pinned = report.pinned_paths,
            pinned_kept = report.pinned_kept,
            bytes = report.bytes_evicted,
            size_after = report.size_after,
            seconds = report.seconds,
            phases = %report.phases,
            "GC pass done"
        );
        if let Some(rest) = min_hold.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        drop(keeper);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn sweeps_the_parts_of_dead_downloads_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::for_tests(dir.path(), &[]).await;
        let (storage, lock) = (cache.storage.clone(), cache.lock.clone());
        let nar = |data: &[u8]| crate::nix::NarFile {
            hash: crate::nix::Sha256Hash::digest(data),
            compression: crate::nix::Compression::Xz,
        };
        let (a, b) = (nar(b"a"), nar(b"b"));
        let (a_name, b_name) = (a.file_name(), b.file_name());
        let parts = [
            format!("inflight/{a_name}/0"),
            format!("inflight/{a_name}/1"),
            format!("inflight/{b_name}/0"),
        ];
        for key in &parts {
            storage
                .put_bytes(key, Bytes::from_static(b"part"))
                .await
                .expect("put");
        }
        // b's download is running (its lock is held); a's holder is gone.
        let running = lock
            .acquire(
                &LockName::Nar(&b).to_string(),
                Duration::from_secs(10),
                Duration::ZERO,
            )
            .await
            .expect("lock")
            .expect("free");
        let report = cache
            .gc(
                Some(u64::MAX),
                None,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
            )
            .await
            .expect("gc");
        assert!(report.ran);
        let left: Vec<String> = storage
            .list("inflight")
            .await
            .expect("list")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![parts[2].clone()]);
        drop(running);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_pinned_closure_survives_a_pass_that_evicts_everything_else() {
        use crate::cache::testing::FakeUpstream;
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let dep = up.publish("dep", &[1u8; 1000], &[]);
        let top = up.publish("top", &[2u8; 1000], &[&dep.path.base_name()]);
        let other = up.publish("other", &[3u8; 1000], &[]);
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        for p in [&dep, &top, &other] {
            cache.fetch_stored(p).await;
        }
        assert_eq!(
            cache
                .pin(std::slice::from_ref(&top.path))
                .await
                .expect("pin"),
            1
        );
        let held = |hash: crate::nix::StoreHash| {
            let db = cache.db.clone();
            async move { db.get_narinfo(hash.as_str()).await.expect("get").is_some() }
        };
        let z = Duration::ZERO;
        let report = cache.gc(Some(0), None, z, z, z).await.expect("gc");
        assert_eq!(report.pinned_paths, 2, "the pin and what it refers to");
        assert_eq!(report.pinned_kept, 2);
        assert_eq!((report.narinfos_evicted, report.nars_evicted), (1, 1));
        assert!(held(top.path.hash()).await && held(dep.path.hash()).await);
        assert!(!held(other.path.hash()).await);

        assert_eq!(
            cache
                .unpin(std::slice::from_ref(&top.path))
                .await
                .expect("unpin"),
            1
        );
        let report = cache.gc(Some(0), None, z, z, z).await.expect("gc");
        assert_eq!(report.pinned_paths, 0);
        assert_eq!(report.narinfos_evicted, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn max_age_evicts_what_was_not_used_for_that_long_whatever_the_size() {
        use crate::cache::testing::FakeUpstream;
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let (old, used) = (
            up.publish("old", &[1u8; 100], &[]),
            up.publish("used", &[2u8; 100], &[]),
        );
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        for p in [&old, &used] {
            cache.fetch_stored(p).await;
        }
        cache.flush_access_log().await;
        // Seconds are what is recorded: three of them apart.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert!(cache.narinfo(used.path.hash()).await.is_some());
        let z = Duration::ZERO;
        let report = cache
            .gc(None, Some(Duration::from_secs(2)), z, z, z)
            .await
            .expect("gc");
        assert_eq!(report.narinfos_evicted, 1, "{report:?}");
        assert_eq!(report.aged_out, 1);
        assert!(cache.narinfo(used.path.hash()).await.is_some());
        // Neither limit: nothing is evicted.
        let report = cache.gc(None, None, z, z, z).await.expect("gc");
        assert_eq!(report.narinfos_evicted, 0);
    }
}
