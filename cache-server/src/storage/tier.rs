//! The node-local NAR tier: a bounded directory of NARs in front of shared storage (S3), so that
//! a warm hit on a replica is a local file read, served by the same code as [`LocalStorage`].
//!
//! - It holds only verified, content-named files: a committed download (verified on its way in)
//!   or a complete read from shared storage whose bytes hash to the name's file hash. A NAR whose
//!   bytes do not match is served as shared storage has it and never kept.
//! - It is never the source of truth: shared storage and the database are. Losing the directory
//!   loses nothing; a directory that survives a restart is taken up again.
//! - LRU by bytes within `max_bytes` (`--local-cache-size`); an evicted or dropped NAR's file is
//!   removed.
//! - GC: a held NAR is "fresh" for `revalidate` after the database last said a narinfo names it;
//!   after that the next hit asks again, and a NAR no narinfo names is dropped. `revalidate` is the
//!   narinfo memory TTL, which GC's grace period exceeds: every tier has dropped a NAR GC deleted
//!   before GC deletes it from shared storage. (The database check is the caller's.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use moka::notification::RemovalCause;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{validate_key, ByteRange, LocalStorage, Object, Storage, StorageError};
use crate::metrics::Metrics;

pub struct LocalTier {
    dir: PathBuf,
    files: LocalStorage,
    /// Held NARs by storage key, weighed by size (KiB), least recently used first out.
    index: moka::sync::Cache<String, u64>,
    /// Keys the database named in a narinfo within `revalidate`.
    fresh: moka::sync::Cache<String, ()>,
    max_bytes: u64,
    metrics: Metrics,
}

/// Where a NAR put into the tier came from (a metrics label).
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Download,
    Storage,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Download => "download",
            Source::Storage => "storage",
        }
    }
}

fn weight(size: u64) -> u32 {
    u32::try_from(size / 1024 + 1).unwrap_or(u32::MAX)
}

impl LocalTier {
    /// Opens the tier in `dir`, taking up the NARs an earlier run left there (oldest first, so
    /// they are the first out), within `max_bytes`.
    pub async fn open(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        revalidate: Duration,
        metrics: Metrics,
    ) -> std::io::Result<Arc<Self>> {
        let dir = dir.into();
        let files = LocalStorage::open(&dir, true).await?;
        let evictions = metrics.local_cache_evictions.clone();
        let bytes = metrics.local_cache_bytes.clone();
        let root = dir.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity((max_bytes / 1024).max(1))
            .weigher(|_key: &String, size: &u64| weight(*size))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |key: Arc<String>, size: u64, cause| {
                // A replaced entry's file is the new one.
                if cause == RemovalCause::Replaced {
                    return;
                }
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
                bytes.sub(i64::try_from(size).unwrap_or(i64::MAX));
                if let Err(e) = std::fs::remove_file(root.join(key.as_str())) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(key = %key, error = %e, "could not remove a local NAR");
                    }
                }
            })
            .build();
        let fresh = moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(revalidate)
            .build();
        let tier = Arc::new(Self {
            dir,
            files,
            index,
            fresh,
            max_bytes,
            metrics,
        });
        tier.take_up().await?;
        Ok(tier)
    }

    /// Indexes what is in the directory (a restart's), oldest first.
    async fn take_up(&self) -> std::io::Result<()> {
        let root = self.dir.join(super::keys::NAR);
        let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<_>> {
            let mut found = Vec::new();
            let entries = match std::fs::read_dir(&root) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let meta = entry.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                // Only content-named NARs: anything else was not put here by the tier.
                if crate::nix::NarFile::parse(&name).is_err() {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                let used = meta.accessed().or_else(|_| meta.modified()).ok();
                found.push((used, format!("{}/{name}", super::keys::NAR), meta.len()));
            }
            found.sort();
            Ok(found)
        })
        .await
        .map_err(std::io::Error::other)??;
        let count = found.len();
        // In order, oldest first, and applied once at the end: no reads come in between.
        for (_, key, size) in found {
            self.record(key, size);
        }
        self.index.run_pending_tasks();
        debug!(dir = %self.dir.display(), count, "local NAR tier opened");
        Ok(())
    }

    fn admit(&self, key: String, size: u64) {
        self.record(key, size);
        // Inserts are rare (one per NAR put in); applying each at once keeps the LRU order
        // exact for the reads that follow.
        self.index.run_pending_tasks();
    }

    /// Indexes a held file; the index applies it at its next maintenance.
    fn record(&self, key: String, size: u64) {
        if self.index.contains_key(&key) {
            return;
        }
        self.metrics
            .local_cache_bytes
            .add(i64::try_from(size).unwrap_or(i64::MAX));
        self.index.insert(key, size);
    }

    /// Whether the tier holds `key`.
    pub fn holds(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Whether a narinfo named `key`'s NAR within the revalidation period.
    pub fn is_fresh(&self, key: &str) -> bool {
        self.fresh.contains_key(key)
    }

    /// The database says a narinfo names `key`'s NAR.
    pub fn mark_fresh(&self, key: &str) {
        self.fresh.insert(key.to_string(), ());
    }

    /// Drops `key` (its file is removed): no narinfo names it any more.
    pub fn drop_key(&self, key: &str) {
        self.fresh.invalidate(key);
        self.index.invalidate(key);
        self.index.run_pending_tasks();
    }

    /// Bytes held (as the index counts them).
    pub fn held_bytes(&self) -> u64 {
        self.index.run_pending_tasks();
        u64::try_from(self.metrics.local_cache_bytes.get()).unwrap_or(0)
    }

    /// Reads a held NAR, as local storage serves a file. A file gone underneath (removed by
    /// hand) is forgotten.
    pub async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<Object>, StorageError> {
        if self.index.get(key).is_none() {
            return Ok(None);
        }
        match self.files.get(key, range).await? {
            Some(object) => {
                self.metrics
                    .local_cache_served_bytes
                    .inc_by(object.range.1 - object.range.0);
                Ok(Some(object))
            }
            None => {
                self.index.invalidate(key);
                Ok(None)
            }
        }
    }

    /// Stages a verified download's file for the tier, leaving `file` in place (a hard link
    /// where the file systems allow, else a copy); [`LocalTier::commit_staged`] puts it in once
    /// storage has committed it. Dropped uncommitted, the staged file is removed.
    pub async fn stage(&self, file: &Path) -> Option<StagedNar> {
        let staged = self.dir.join(".staging").join(crate::util::unique_name());
        let from = file.to_path_buf();
        let to = staged.clone();
        let linked = tokio::task::spawn_blocking(move || {
            std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match linked {
            Ok(()) => Some(StagedNar(Some(staged))),
            Err(e) => {
                let _ = tokio::fs::remove_file(&staged).await;
                warn!(error = %e, "could not copy a download for the local NAR tier");
                None
            }
        }
    }

    /// Puts a staged download into the tier under `key`.
    pub async fn commit_staged(&self, key: &str, mut staged: StagedNar) {
        let Some(path) = staged.0.take() else { return };
        if validate_key(key).is_err() || self.holds(key) {
            let _ = tokio::fs::remove_file(&path).await;
            return;
        }
        self.commit(key, &path, Source::Download).await;
    }

    async fn commit(&self, key: &str, staged: &Path, source: Source) {
        let size = match tokio::fs::metadata(staged).await {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        if size > self.max_bytes {
            let _ = tokio::fs::remove_file(staged).await;
            return;
        }
        match self.files.put_file(key, staged).await {
            Ok(()) => {
                self.admit(key.to_string(), size);
                self.metrics
                    .local_cache_fills
                    .with_label_values(&[source.label(), "stored"])
                    .inc();
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(staged).await;
                warn!(key, error = %e, "could not commit a NAR to the local tier");
            }
        }
    }

    /// Serves `object` (a complete read of `key` from shared storage) while writing its bytes
    /// to the tier; they are kept only if the whole object arrives and its SHA-256 is
    /// `file_hash`, the hash its content-named key carries. A client that leaves early leaves
    /// nothing behind.
    pub fn fill_from(self: &Arc<Self>, key: &str, file_hash: [u8; 32], object: Object) -> Object {
        if object.range != (0, object.total)
            || object.total > self.max_bytes
            || self.holds(key)
            || validate_key(key).is_err()
        {
            return object;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Bytes>>();
        let tier = self.clone();
        let key_owned = key.to_string();
        let total = object.total;
        tokio::spawn(async move {
            let staged = tier.dir.join(".staging").join(crate::util::unique_name());
            let path = staged.clone();
            // Hash and write on the blocking pool, chunk by chunk as the client takes them.
            let written =
                tokio::task::spawn_blocking(move || -> std::io::Result<Option<[u8; 32]>> {
                    use std::io::Write;
                    let mut out = std::fs::File::create(&path)?;
                    let mut hasher = Sha256::new();
                    let mut len = 0u64;
                    while let Some(chunk) = rx.blocking_recv() {
                        let Some(chunk) = chunk else {
                            // The end of the object: complete if every byte came.
                            if len != total {
                                return Ok(None);
                            }
                            out.sync_all()?;
                            return Ok(Some(hasher.finalize().into()));
                        };
                        hasher.update(&chunk);
                        out.write_all(&chunk)?;
                        len += chunk.len() as u64;
                    }
                    // The reader went away before the end.
                    Ok(None)
                })
                .await;
            match written {
                Ok(Ok(Some(hash))) if hash == file_hash => {
                    tier.commit(&key_owned, &staged, Source::Storage).await;
                }
                Ok(Ok(Some(_))) => {
                    tier.metrics
                        .local_cache_fills
                        .with_label_values(&[Source::Storage.label(), "rejected"])
                        .inc();
                    warn!(key = %key_owned, "a NAR from storage does not match its name's hash: not kept locally");
                    let _ = tokio::fs::remove_file(&staged).await;
                }
                _ => {
                    let _ = tokio::fs::remove_file(&staged).await;
                }
            }
        });
        let body = Tee {
            inner: object.body,
            tx: Some(tx),
        }
        .boxed();
        Object { body, ..object }
    }
}

/// A download's file staged for the tier; removed if dropped before it is committed.
pub struct StagedNar(Option<PathBuf>);

impl Drop for StagedNar {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A body that hands each chunk to the tier's writer as it passes, and tells it where the body
/// ended: `None` at the end, nothing (the channel closed) on an error or an early drop.
struct Tee {
    inner: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Option<Bytes>>>,
}

impl futures_util::Stream for Tee {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            std::task::Poll::Ready(Some(Ok(chunk))) => {
                if let Some(tx) = &self.tx {
                    let _ = tx.send(Some(chunk.clone()));
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => self.tx = None,
            std::task::Poll::Ready(None) => {
                if let Some(tx) = self.tx.take() {
                    let _ = tx.send(None);
                }
            }
            std::task::Poll::Pending => {}
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::{Compression, NarFile, Sha256Hash};

    /// A content-named NAR: its key and its hash.
    fn named(bytes: &[u8]) -> (String, [u8; 32]) {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let file = NarFile {
            hash: Sha256Hash(hash),
            compression: Compression::Xz,
        };
        (crate::storage::nar_key(&file), hash)
    }

    fn object(bytes: &[u8], chunks: usize) -> Object {
        let data = Bytes::copy_from_slice(bytes);
        let step = data.len().div_ceil(chunks.max(1)).max(1);
        let parts: Vec<std::io::Result<Bytes>> = (0..data.len())
            .step_by(step)
            .map(|i| Ok(data.slice(i..(i + step).min(data.len()))))
            .collect();
        Object {
            total: data.len() as u64,
            range: (0, data.len() as u64),
            body: futures_util::stream::iter(parts).boxed(),
        }
    }

    async fn drain(o: Object) -> Vec<u8> {
        let mut out = Vec::new();
        let mut body = o.body;
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    /// Until `f` holds (the tier's writer runs beside the reader), for at most two seconds.
    async fn eventually(f: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    async fn tier(dir: &Path, max: u64) -> Arc<LocalTier> {
        LocalTier::open(dir, max, Duration::from_secs(60), Metrics::new())
            .await
            .expect("open")
    }

    #[tokio::test]
    async fn only_whole_reads_that_match_their_name_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = tier(dir.path(), 1 << 20).await;
        let good = vec![7u8; 50_000];
        let (key, hash) = named(&good);
        let served = drain(t.fill_from(&key, hash, object(&good, 7))).await;
        assert_eq!(served, good, "the client gets every byte");
        assert!(eventually(|| t.holds(&key)).await, "kept");
        let read = drain(t.get(&key, None).await.expect("get").expect("held")).await;
        assert_eq!(read, good);

        // Bytes that do not hash to the name: served as they came, never kept.
        let (other_key, other_hash) = named(b"what the name promises");
        let served = drain(t.fill_from(&other_key, other_hash, object(b"something else", 2))).await;
        assert_eq!(served, b"something else");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!t.holds(&other_key), "a mismatch is not kept");
        assert_eq!(
            t.metrics
                .local_cache_fills
                .with_label_values(&["storage", "rejected"])
                .get(),
            1
        );

        // A reader that leaves early leaves nothing.
        let partial = vec![9u8; 40_000];
        let (partial_key, partial_hash) = named(&partial);
        let mut body = t
            .fill_from(&partial_key, partial_hash, object(&partial, 8))
            .body;
        body.next().await.expect("a first chunk").expect("ok");
        drop(body);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!t.holds(&partial_key));
        let staging: Vec<_> = std::fs::read_dir(dir.path().join(".staging"))
            .expect("staging")
            .collect();
        assert!(staging.is_empty(), "no staged leftovers: {staging:?}");
    }

    #[tokio::test]
    async fn it_stays_within_its_bytes_least_recently_used_out_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for two NARs of 1.5 KiB (each weighs 2 KiB), not three.
        let t = tier(dir.path(), 4 * 1024).await;
        let nars: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1536]).collect();
        let keys: Vec<String> = nars.iter().map(|n| named(n).0).collect();
        for (i, nar) in nars.iter().enumerate() {
            let src = dir.path().join(format!("download-{i}"));
            std::fs::write(&src, nar).expect("write");
            let staged = t.stage(&src).await.expect("staged");
            t.commit_staged(&keys[i], staged).await;
            assert!(src.exists(), "the download's own file is left for storage");
            if i == 1 {
                // The first is used again: the second is now the least recently used.
                assert!(t.get(&keys[0], None).await.expect("get").is_some());
            }
        }
        t.index.run_pending_tasks();
        let held: Vec<bool> = keys.iter().map(|k| t.holds(k)).collect();
        assert!(
            t.holds(&keys[0]) && t.holds(&keys[2]),
            "the recently used stay: {held:?}"
        );
        assert!(!t.holds(&keys[1]), "the least recently used went");
        assert!(!dir.path().join(&keys[1]).exists(), "with its file");
        assert!(t.held_bytes() <= 4 * 1024, "{}", t.held_bytes());
        assert_eq!(t.metrics.local_cache_evictions.get(), 1);

        // Dropped (GC): gone with its file.
        t.drop_key(&keys[2]);
        assert!(!t.holds(&keys[2]) && !dir.path().join(&keys[2]).exists());

        // A new process takes up what is left; stray files are not NARs of the tier.
        std::fs::write(dir.path().join("nar/not-a-nar"), b"x").expect("write");
        drop(t);
        let again = tier(dir.path(), 4 * 1024).await;
        assert!(again.holds(&keys[0]));
        assert_eq!(again.held_bytes(), 1536);
        assert!(!dir.path().join("nar/not-a-nar").exists());
        let read = drain(again.get(&keys[0], None).await.expect("get").expect("held")).await;
        assert_eq!(read, nars[0]);
    }

    #[tokio::test]
    async fn a_staged_download_that_storage_refused_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = tier(dir.path(), 1 << 20).await;
        let src = dir.path().join("download");
        std::fs::write(&src, b"nar bytes").expect("write");
        let staged = t.stage(&src).await.expect("staged");
        drop(staged);
        let staging: Vec<_> = std::fs::read_dir(dir.path().join(".staging"))
            .expect("staging")
            .collect();
        assert!(staging.is_empty(), "{staging:?}");
    }
}
