//! The narinfos nixcache serves, in the four places they live: this process's memory of served
//! bodies, its memory of hashes no upstream had, the database row (what makes a hash a hit) and the
//! copy in storage (what serves hits while the database is down). They are read, kept and
//! forgotten only through [`NarinfoIndex`], which keeps them in step.
//!
//! Memory holds a body for half of GC's grace period at most: GC waits the whole grace between
//! forgetting a narinfo and deleting its NAR, so no replica serves a narinfo whose NAR is gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::db::{Database, DbError, NarInfoRecord};
use crate::nix::StoreHash;
use crate::storage::{narinfo_key, read_small, Storage, StorageError};

/// How long memory keeps a narinfo, for GC's grace period: half of it, at least 500 ms. The
/// node-local NAR tier rechecks what it holds as often.
pub fn memory_ttl(gc_grace: Duration) -> Duration {
    (gc_grace / 2).max(Duration::from_millis(500))
}

/// Where [`NarinfoIndex::get`] found a narinfo.
pub(super) enum Found {
    Memory(Bytes),
    Database(Bytes),
    /// Nowhere this process can see; `missing` when an upstream lookup recently found none.
    Nowhere {
        missing: bool,
    },
}

pub(super) struct NarinfoIndex {
    db: Arc<dyn Database>,
    storage: Arc<dyn Storage>,
    /// Served bodies by store hash: a warm hit is one memory lookup.
    bodies: moka::sync::Cache<StoreHash, Bytes>,
    /// Store hashes no upstream had, for the negative TTL.
    missing: moka::sync::Cache<StoreHash, ()>,
}

impl NarinfoIndex {
    pub fn new(
        db: Arc<dyn Database>,
        storage: Arc<dyn Storage>,
        memory_entries: u64,
        gc_grace: Duration,
        negative_ttl: Duration,
    ) -> Self {
        Self {
            db,
            storage,
            bodies: moka::sync::Cache::builder()
                .max_capacity(memory_entries)
                .time_to_live(memory_ttl(gc_grace))
                .build(),
            missing: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(negative_ttl)
                .build(),
        }
    }

    /// Memory, then the database row (remembered from then on). An error means the database could
    /// not be asked; [`stored`](Self::stored) may still have it.
    pub async fn get(&self, hash: StoreHash) -> Result<Found, DbError> {
        if let Some(body) = self.bodies.get(&hash) {
            return Ok(Found::Memory(body));
        }
        if let Some(body) = self.row(hash).await? {
            return Ok(Found::Database(body));
        }
        Ok(Found::Nowhere {
            missing: self.missing.contains_key(&hash),
        })
    }

    /// The database row alone (remembered when there is one): what another replica may have
    /// recorded while this one waited.
    pub async fn row(&self, hash: StoreHash) -> Result<Option<Bytes>, DbError> {
        let Some(record) = self.db.get_narinfo(hash.as_str()).await? else {
            return Ok(None);
        };
        let body = Bytes::from(record.narinfo);
        self.bodies.insert(hash, body.clone());
        Ok(Some(body))
    }

    /// The copy in storage (remembered when there is one), for when the database is down.
    pub async fn stored(&self, hash: StoreHash) -> Option<Bytes> {
        let body = read_small(self.storage.as_ref(), &narinfo_key(&hash)).await?;
        self.bodies.insert(hash, body.clone());
        Some(body)
    }

    /// Whether an upstream lookup recently found no narinfo for `hash`.
    pub fn is_missing(&self, hash: StoreHash) -> bool {
        self.missing.contains_key(&hash)
    }

    /// Remembers that no upstream has `hash`, for the negative TTL.
    pub fn mark_missing(&self, hash: StoreHash) {
        self.missing.insert(hash, ());
    }

    /// Keeps a narinfo: in storage first (its copy there serves hits while the database is down),
    /// then the database row (what makes it a hit), then memory; it is no longer missing.
    pub async fn keep(
        &self,
        hash: StoreHash,
        record: &NarInfoRecord,
        body: Bytes,
    ) -> Result<(), String> {
        self.storage
            .put_bytes(&narinfo_key(&hash), body.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.db
            .put_narinfo(record, crate::util::unix_now())
            .await
            .map_err(|e| e.to_string())?;
        self.bodies.insert(hash, body);
        self.missing.invalidate(&hash);
        Ok(())
    }

    /// Forgets narinfos: their rows (one statement), then their copies in storage (`concurrency`
    /// deletions at once), then this process's memory of them.
    pub async fn forget<E>(&self, hashes: &[String], concurrency: usize) -> Result<(), E>
    where
        E: From<DbError> + From<StorageError>,
    {
        use futures_util::StreamExt;
        self.db.delete_narinfos(hashes).await?;
        let parsed: Vec<StoreHash> = hashes
            .iter()
            .filter_map(|h| StoreHash::parse(h).ok())
            .collect();
        // Collected first: a stream over a borrowing closure would not be `Send` for every
        // lifetime, and GC runs in spawned tasks.
        let deletes: Vec<_> = parsed
            .into_iter()
            .map(|h| async move {
                self.storage.delete(&narinfo_key(&h)).await?;
                self.bodies.invalidate(&h);
                Ok::<(), E>(())
            })
            .collect();
        let mut deletes = futures_util::stream::iter(deletes).buffer_unordered(concurrency);
        while let Some(r) = deletes.next().await {
            r?;
        }
        Ok(())
    }
}
