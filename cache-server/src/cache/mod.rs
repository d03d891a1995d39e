//! The request flows, written once against the seams (`Storage`, `Database`, `Lock`, upstreams):
//! narinfo lookups in [`narinfo`], NAR downloads and serving in [`nar`], uploads in [`upload`].

mod access;
mod download;
pub mod fsck;
pub mod gc;
mod inflight;
mod nar;
mod narinfo;
mod narinfo_index;
pub mod pins;
pub mod prefetch;
pub mod tasks;
#[cfg(test)]
pub(crate) mod testing;
pub mod upload;
pub mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{DownloadConfig, GcConfig, UpstreamTimeouts};
use crate::db::Database;
use crate::lock::Lock;
use crate::metrics::Metrics;
use crate::nix::SecretKey;
use crate::storage::{LocalTier, Storage};
use crate::upstream::Upstreams;

pub use access::AccessLog;
pub use nar::{NarBody, NarHead};
pub use narinfo_index::memory_ttl;

/// The backends whose failures the flows degrade from, as `nixcache_backend_errors_total` labels
/// them.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Storage,
    Database,
    Lock,
}

impl Backend {
    fn as_str(self) -> &'static str {
        match self {
            Self::Storage => "storage",
            Self::Database => "database",
            Self::Lock => "lock",
        }
    }
}

/// Tunables of the flows: the configuration's sections they use, whole, and what the server
/// derives for them.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub upstreams: UpstreamTimeouts,
    pub downloads: DownloadConfig,
    pub gc: GcConfig,
    /// Lifetime of a distributed lock between extensions.
    pub lock_ttl: Duration,
    /// Narinfos kept in memory in front of the database (for half of GC's grace:
    /// [`memory_ttl`]).
    pub memory_entries: u64,
    /// The store directory narinfos must name (uploads are checked against it).
    pub store_dir: String,
    /// Local directory where downloads are written before they are committed to storage.
    pub staging_dir: PathBuf,
    /// With replicas (a shared lock): downloads are published in parts of
    /// `downloads.part_size` from which other replicas serve their waiting clients.
    pub publish_parts: bool,
}

impl CacheSettings {
    /// The size of the parts a download is published in, when it is.
    pub fn inflight_part_size(&self) -> Option<u64> {
        self.publish_parts.then_some(self.downloads.part_size)
    }
}

pub struct Cache {
    settings: CacheSettings,
    storage: Arc<dyn Storage>,
    /// The node-local NAR tier in front of shared storage, if configured.
    tier: Option<Arc<LocalTier>>,
    db: Arc<dyn Database>,
    lock: Arc<dyn Lock>,
    upstreams: Upstreams,
    key: SecretKey,
    /// The narinfos served: memory, negative cache, rows and stored copies.
    index: narinfo_index::NarinfoIndex,
    /// NAR downloads in progress in this process, by NAR file name.
    downloads: Mutex<HashMap<String, Arc<download::Download>>>,
    /// Permits to run a download (`downloads.max`).
    download_slots: Arc<tokio::sync::Semaphore>,
    /// NAR file names whose download failed verification, for `downloads.failure_ttl`.
    failed_nars: moka::sync::Cache<String, ()>,
    access: AccessLog,
    metrics: Metrics,
    /// Set on SIGTERM: `/readyz` then answers 503 so that traffic moves elsewhere.
    shutting_down: std::sync::atomic::AtomicBool,
    /// What the last backend check found (see [`Cache::check_backends`]); up until then.
    database_up: std::sync::atomic::AtomicBool,
    storage_up: std::sync::atomic::AtomicBool,
}

impl Cache {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: CacheSettings,
        storage: Arc<dyn Storage>,
        tier: Option<Arc<LocalTier>>,
        db: Arc<dyn Database>,
        lock: Arc<dyn Lock>,
        upstreams: Upstreams,
        key: SecretKey,
        metrics: Metrics,
    ) -> Arc<Self> {
        let index = narinfo_index::NarinfoIndex::new(
            db.clone(),
            storage.clone(),
            settings.memory_entries,
            settings.gc.grace,
            settings.upstreams.negative_ttl,
        );
        let failed_nars = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(settings.downloads.failure_ttl)
            .build();
        let download_slots = Arc::new(tokio::sync::Semaphore::new(settings.downloads.max.max(1)));
        Arc::new(Self {
            settings,
            storage,
            tier,
            db,
            lock,
            upstreams,
            key,
            index,
            downloads: Mutex::new(HashMap::new()),
            download_slots,
            failed_nars,
            access: AccessLog::default(),
            metrics,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            database_up: std::sync::atomic::AtomicBool::new(true),
            storage_up: std::sync::atomic::AtomicBool::new(true),
        })
    }

    pub fn public_key(&self) -> String {
        self.key.public_key().to_string()
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The database, for what records its own state there (tasks).
    pub(super) fn database(&self) -> Arc<dyn Database> {
        self.db.clone()
    }

    /// Writes batched access times to the database.
    pub async fn flush_access_log(&self) {
        if let Err(e) = self
            .access
            .flush(self.db.as_ref(), crate::util::unix_now())
            .await
        {
            self.backend_failed(
                Backend::Database,
                &"",
                &e,
                "could not record access times; will retry",
            );
        }
    }

    /// A backend failed and the caller degrades (a hit from another copy, a 404, a retry later):
    /// counted under the backend's name, and logged with `subject` (the narinfo or NAR concerned,
    /// if any) and what the failure means for the request.
    fn backend_failed(
        &self,
        backend: Backend,
        subject: &dyn std::fmt::Display,
        error: &dyn std::fmt::Display,
        consequence: &str,
    ) {
        let name = backend.as_str();
        self.metrics.backend_errors.with_label_values(&[name]).inc();
        tracing::warn!(backend = name, subject = %subject, error = %error, "{consequence}");
    }

    /// Counts a change to the stored NARs in the gauges at once (a commit, an eviction); the
    /// periodic [`Cache::reconcile_storage_gauges`] corrects them for what other replicas did.
    fn count_stored(&self, nars: i64, bytes: u64) {
        self.metrics.stored_nars.add(nars);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.metrics
            .stored_bytes
            .add(if nars < 0 { -bytes } else { bytes });
    }

    /// Sets the stored-NARs gauges from the database (kept as they were if it does not answer).
    /// Run on a timer, never per scrape: `/metrics` must not cost a table scan.
    pub async fn reconcile_storage_gauges(&self) {
        let query = async {
            Ok::<_, crate::db::DbError>((
                self.db.nar_count().await?,
                self.db.total_nar_size().await?,
            ))
        };
        if let Ok(Ok((count, bytes))) = tokio::time::timeout(Duration::from_secs(2), query).await {
            self.metrics
                .stored_nars
                .set(i64::try_from(count).unwrap_or(i64::MAX));
            self.metrics
                .stored_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Checks that the database and storage answer: sets the `nixcache_backend_up` gauges and
    /// logs each change. Neither decides readiness — a replica serves hits from storage without
    /// the database, and answers 404 (so Nix tries its next substituter) without storage, both
    /// better than a Service with no replica in it — but both show in `/readyz?verbose`.
    pub async fn check_backends(&self) {
        use std::sync::atomic::Ordering;
        let timeout = Duration::from_secs(3);
        let database = matches!(
            tokio::time::timeout(timeout, self.db.ping()).await,
            Ok(Ok(()))
        );
        let storage = matches!(
            tokio::time::timeout(timeout, self.storage.size("nix-cache-info")).await,
            Ok(Ok(_))
        );
        for (name, up, flag) in [
            ("database", database, &self.database_up),
            ("storage", storage, &self.storage_up),
        ] {
            self.metrics
                .backend_up
                .with_label_values(&[name])
                .set(i64::from(up));
            if flag.swap(up, Ordering::SeqCst) != up {
                if up {
                    tracing::info!(backend = name, "backend answers again");
                } else {
                    tracing::warn!(
                        backend = name,
                        "backend unavailable; serving what can be served"
                    );
                }
            }
        }
    }

    /// The last backend check's findings: (database, storage).
    pub fn backends_up(&self) -> (bool, bool) {
        use std::sync::atomic::Ordering;
        (
            self.database_up.load(Ordering::SeqCst),
            self.storage_up.load(Ordering::SeqCst),
        )
    }

    /// Takes a lock, counting the outcome and timing the wait.
    async fn acquire(
        &self,
        name: crate::lock::LockName<'_>,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<crate::lock::Guard>, crate::lock::LockError> {
        let started = std::time::Instant::now();
        let result = self.lock.acquire(&name.to_string(), ttl, wait).await;
        let outcome = match &result {
            Ok(Some(_)) => "acquired",
            Ok(None) => "busy",
            Err(_) => "error",
        };
        self.metrics
            .lock_acquisitions
            .with_label_values(&[outcome])
            .inc();
        self.metrics
            .lock_wait
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Forgets downloads that are no longer running (used by the download task itself).
    fn finish_download(&self, file: &str, dl: &Arc<download::Download>) {
        let mut downloads = self.downloads.lock().unwrap_or_else(|e| e.into_inner());
        if downloads.get(file).is_some_and(|d| Arc::ptr_eq(d, dl)) {
            downloads.remove(file);
        }
    }
}
