//! `GET|HEAD /nar/<file>`: from storage (through the node-local tier, when there is one), or by
//! following the one download of a missing NAR (`download.rs`), so the first byte never waits for
//! the last, and no client's departure affects the download.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use tracing::warn;

use super::download::{follow, Phase};
use super::{Backend, Cache};
use crate::nix::{NarFile, NarInfo};
use crate::storage::{nar_key, ByteRange, LocalTier, Object, StorageError};

/// A NAR response body.
pub enum NarBody {
    /// From storage; ranges honoured.
    Stored(Object),
    /// Following a download in progress; the whole file, `length` when known.
    Live {
        length: Option<u64>,
        body: BoxStream<'static, io::Result<Bytes>>,
    },
}

/// What a HEAD request learns.
pub struct NarHead {
    pub length: Option<u64>,
}

impl Cache {
    /// The NAR `file`, from storage or by following its download. `Ok(None)` is a 404.
    pub async fn nar(
        self: &Arc<Self>,
        file: NarFile,
        range: Option<ByteRange>,
    ) -> Result<Option<NarBody>, StorageError> {
        if let Some(object) = self.stored(&file, range).await? {
            self.metrics
                .nar_requests
                .with_label_values(&["storage"])
                .inc();
            return Ok(Some(NarBody::Stored(object)));
        }
        if self.failed_nars.contains_key(&file.file_name()) {
            self.metrics
                .nar_requests
                .with_label_values(&["failed_recently"])
                .inc();
            return Ok(None);
        }
        let Some(download) = self.download(&file).await else {
            self.metrics.nar_requests.with_label_values(&["miss"]).inc();
            return Ok(None);
        };
        let mut rx = download.phase.subscribe();
        // Wait until the download has begun, bounded by the time an upstream has to answer.
        // (The watch's read guard must not outlive this statement: it would block the sender.)
        let phase = match tokio::time::timeout(
            self.settings.upstreams.first_byte * 2,
            rx.wait_for(|p| *p != Phase::Starting),
        )
        .await
        {
            Ok(Ok(p)) => *p,
            _ => Phase::Failed,
        };
        match phase {
            Phase::Starting | Phase::Failed => {
                self.metrics.nar_requests.with_label_values(&["miss"]).inc();
                Ok(None)
            }
            Phase::Stored => {
                self.metrics
                    .nar_requests
                    .with_label_values(&["storage"])
                    .inc();
                Ok(self.stored(&file, range).await?.map(NarBody::Stored))
            }
            Phase::Elsewhere => {
                self.metrics
                    .nar_requests
                    .with_label_values(&["remote"])
                    .inc();
                Ok(Some(NarBody::Live {
                    length: download.length_hint,
                    body: super::inflight::follow_remote(
                        self.storage.clone(),
                        nar_key(&file),
                        file.file_name(),
                        self.settings.upstreams.stall,
                    ),
                }))
            }
            Phase::Streaming { length, .. } => {
                self.metrics.nar_requests.with_label_values(&["live"]).inc();
                Ok(Some(NarBody::Live {
                    length,
                    body: follow(download, rx),
                }))
            }
            Phase::Complete { size } => {
                // Committed already; the staging file (still open) holds it all.
                self.metrics.nar_requests.with_label_values(&["live"]).inc();
                Ok(Some(NarBody::Live {
                    length: Some(size),
                    body: follow(download, rx),
                }))
            }
        }
    }

    /// HEAD: whether nixcache has, or can get, the NAR, without downloading it.
    pub async fn nar_head(&self, file: &NarFile) -> Option<NarHead> {
        let name = file.file_name();
        match self.storage.size(&nar_key(file)).await {
            Ok(Some(size)) => return Some(NarHead { length: Some(size) }),
            Ok(None) => {}
            Err(e) => {
                self.backend_failed(Backend::Storage, &name, &e, "storage unavailable");
                return None;
            }
        }
        let record = self.db.narinfo_for_nar(&name).await.ok()??;
        let info = NarInfo::parse(&record.narinfo).ok()?;
        Some(NarHead {
            length: info.file_hash.and(info.file_size),
        })
    }

    async fn stored(
        &self,
        file: &NarFile,
        range: Option<ByteRange>,
    ) -> Result<Option<Object>, StorageError> {
        let key = nar_key(file);
        if let Some(tier) = &self.tier {
            if let Some(object) = self.read_tier(tier, file, &key, range).await? {
                self.access.nar(&file.file_name());
                return Ok(Some(object));
            }
        }
        match self.storage.get(&key, range).await {
            Ok(Some(o)) => {
                self.access.nar(&file.file_name());
                match &self.tier {
                    // A whole read of a NAR a narinfo names fills the tier on its way out.
                    Some(tier) if range.is_none() && self.referenced(file).await => {
                        tier.mark_fresh(&key);
                        Ok(Some(tier.fill_from(&key, file.hash.0, o)))
                    }
                    _ => Ok(Some(o)),
                }
            }
            Ok(None) => Ok(None),
            Err(e @ StorageError::RangeNotSatisfiable { .. }) => Err(e),
            Err(e) => {
                self.backend_failed(
                    Backend::Storage,
                    &file,
                    &e,
                    "storage unavailable; answering 404",
                );
                Ok(None)
            }
        }
    }

    /// Whether a narinfo names this NAR, as the database says (no on an error: nothing is put
    /// in the tier on a guess).
    async fn referenced(&self, file: &NarFile) -> bool {
        matches!(
            self.db.narinfo_for_nar(&file.file_name()).await,
            Ok(Some(_))
        )
    }

    /// A read from the node-local tier: a held NAR, served if a narinfo named it within the
    /// revalidation period or names it now; one that no narinfo names any more (GC forgot it) is
    /// dropped. With the database down the tier serves what it holds: GC cannot run either.
    async fn read_tier(
        &self,
        tier: &LocalTier,
        file: &NarFile,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<Object>, StorageError> {
        let count = |result: &str| {
            self.metrics
                .local_cache_requests
                .with_label_values(&[result])
                .inc();
        };
        if !tier.holds(key) {
            count("miss");
            return Ok(None);
        }
        if !tier.is_fresh(key) {
            match self.db.narinfo_for_nar(&file.file_name()).await {
                Ok(Some(_)) => tier.mark_fresh(key),
                Ok(None) => {
                    tier.drop_key(key);
                    count("dropped");
                    return Ok(None);
                }
                Err(_) => {}
            }
        }
        match tier.get(key, range).await {
            Ok(Some(object)) => {
                count("hit");
                Ok(Some(object))
            }
            Ok(None) => {
                count("miss");
                Ok(None)
            }
            Err(e @ StorageError::RangeNotSatisfiable { .. }) => Err(e),
            Err(e) => {
                warn!(file = %file, error = %e, "local NAR tier unreadable; using storage");
                count("miss");
                Ok(None)
            }
        }
    }
}
