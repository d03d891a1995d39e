//! `GET|HEAD /<hash>.narinfo`: memory, database, then the upstreams: their answers taken in
//! priority order, asked all at once or one after another (`--upstream-lookup`).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, info, instrument, warn};

use super::narinfo_index::Found;
use super::verify::verifiable;
use super::{Backend, Cache};
use crate::db::NarInfoRecord;
use crate::nix::{NarFile, NarInfo, StoreHash};
use crate::upstream::Lookup;
use crate::upstream::{upstream_error_kind, Upstream, UpstreamError};

impl Cache {
    /// The narinfo for `hash` as nixcache serves it, or `None` (a 404) when nobody has it or it
    /// cannot be had right now. Never an error: a 5xx would fail the client's build.
    pub async fn narinfo(self: &Arc<Self>, hash: StoreHash) -> Option<Bytes> {
        let hit = |body: Bytes, from: &str| {
            self.access.narinfo(hash.as_str());
            self.metrics
                .narinfo_lookups
                .with_label_values(&[from])
                .inc();
            Some(body)
        };
        match self.index.get(hash).await {
            Ok(Found::Memory(body)) => return hit(body, "memory"),
            Ok(Found::Database(body)) => return hit(body, "database"),
            Ok(Found::Nowhere { missing: true }) => {
                self.metrics
                    .narinfo_lookups
                    .with_label_values(&["negative"])
                    .inc();
                return None;
            }
            Ok(Found::Nowhere { missing: false }) => {}
            Err(e) => {
                // The database is down: hits can still be served from the copy in storage, but a
                // miss cannot be recorded, so it is answered 404.
                self.backend_failed(
                    Backend::Database,
                    &hash,
                    &e,
                    "database unavailable; answering from storage",
                );
                return self.index.stored(hash).await;
            }
        }
        // The lookup runs in its own task: a client that goes away does not cancel it halfway
        // through storing what it found.
        let this = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            this.narinfo_from_upstreams(hash).await
        }))
        .await
        .unwrap_or(None)
    }

    #[instrument(skip_all, fields(hash = %hash))]
    async fn narinfo_from_upstreams(self: Arc<Self>, hash: StoreHash) -> Option<Bytes> {
        // Long enough for the lookup that holds the lock: one upstream timeout when they are
        // asked at once, one each in sequence (and one more for storing what it found).
        let rounds = match self.upstreams.lookup() {
            crate::upstream::LookupOrder::Parallel => 1,
            crate::upstream::LookupOrder::Sequential => self.upstreams.all().len() as u32,
        };
        let wait = self.settings.upstreams.first_byte * (rounds + 1);
        let _guard = match self
            .acquire(
                crate::lock::LockName::Narinfo(&hash),
                self.settings.lock_ttl,
                wait,
            )
            .await
        {
            Ok(g) => g,
            Err(e) => {
                // Only a strict lock fails here (others degrade to in-process locking): the
                // miss is not looked up, and answered 404.
                self.backend_failed(Backend::Lock, &hash, &e, "lock unavailable; answering 404");
                return None;
            }
        };
        // Someone else may have fetched it while we waited for the lock.
        if let Ok(Some(body)) = self.index.row(hash).await {
            return Some(body);
        }
        if self.index.is_missing(hash) {
            return None;
        }
        let mut answers = self.upstreams.narinfo_answers(hash);
        while let Some((upstream, answer)) = answers.next().await {
            match answer {
                Ok(Lookup::Found(info)) => match self.accept(&upstream, hash, *info).await {
                    Ok(body) => {
                        self.metrics
                            .narinfo_lookups
                            .with_label_values(&["upstream"])
                            .inc();
                        return Some(body);
                    }
                    Err(AcceptError::Refused(reason, e)) => {
                        self.metrics
                            .refused
                            .with_label_values(&["upstream", reason])
                            .inc();
                        warn!(upstream = upstream.label(), reason, error = %e, "narinfo refused");
                    }
                    Err(AcceptError::Backend(e)) => {
                        self.backend_failed(
                            Backend::Database,
                            &hash,
                            &e,
                            "could not store narinfo; answering 404",
                        );
                        return None;
                    }
                },
                Ok(Lookup::Missing) => debug!(upstream = upstream.label(), "not there"),
                Err(e @ UpstreamError::Skipped { .. }) => {
                    self.metrics
                        .upstream_errors
                        .with_label_values(&[upstream.label(), upstream_error_kind(&e)])
                        .inc();
                    debug!(upstream = upstream.label(), "skipped while it fails");
                }
                Err(e) => {
                    self.metrics
                        .upstream_errors
                        .with_label_values(&[upstream.label(), upstream_error_kind(&e)])
                        .inc();
                    warn!(upstream = upstream.label(), error = %e, "upstream lookup failed");
                }
            }
        }
        self.metrics
            .narinfo_lookups
            .with_label_values(&["miss"])
            .inc();
        self.index.mark_missing(hash);
        None
    }

    /// Stores an upstream's verified narinfo, pointing at nixcache's own NAR URL and signed with
    /// nixcache's key (the upstream's signatures are kept).
    async fn accept(
        &self,
        upstream: &Upstream,
        hash: StoreHash,
        info: NarInfo,
    ) -> Result<Bytes, AcceptError> {
        verifiable(&info).map_err(|e| AcceptError::Refused("unverifiable", e.to_string()))?;
        let nar_url = upstream
            .nar_url(&info.url)
            .map_err(|e: UpstreamError| AcceptError::Refused("nar_url", e.to_string()))?;
        // NARs are named by their file hash; without one, by the NAR hash (any file that
        // decompresses to it is right, so FileSize of the upstream's file no longer applies).
        let file = NarFile {
            hash: info.file_hash.unwrap_or(info.nar_hash),
            compression: info.compression(),
        };
        if let Some(other) = self
            .conflicting_claim(hash, &info, &file)
            .await
            .map_err(AcceptError::Backend)?
        {
            return Err(AcceptError::Refused(
                "conflicting_file_hash",
                format!(
                    "its NAR file {} is claimed by {other} with another NarHash or NarSize",
                    file.file_name()
                ),
            ));
        }
        let mut served = info;
        if served.file_hash.is_none() {
            served.file_size = None;
        }
        let store_path = served.store_path.to_string();
        let body = self
            .keep_narinfo(hash, served, &file, nar_url.to_string())
            .await
            .map_err(AcceptError::Backend)?;
        info!(store_path = %store_path, upstream = upstream.label(), "narinfo cached");
        Ok(body)
    }

    /// Another path whose narinfo names the same NAR file but a different NAR (NarHash, NarSize),
    /// if any. The file name comes from the unsigned FileHash, so without this check one narinfo
    /// could take over the download (and verification) of another path's NAR; the first claim
    /// stands.
    pub(super) async fn conflicting_claim(
        &self,
        hash: StoreHash,
        info: &NarInfo,
        file: &NarFile,
    ) -> Result<Option<String>, String> {
        let Some(record) = self
            .db
            .narinfo_for_nar(&file.file_name())
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        if record.hash == hash.as_str() {
            return Ok(None);
        }
        let agrees = NarInfo::parse(&record.narinfo)
            .is_ok_and(|o| o.nar_hash == info.nar_hash && o.nar_size == info.nar_size);
        Ok((!agrees).then_some(record.store_path))
    }

    /// Points `served` at nixcache's NAR URL for `file`, signs it with nixcache's key and keeps
    /// it in the index (storage, row, memory). Returns the body served from now on.
    /// `upstream_nar_url` is where the NAR can be fetched again (empty for uploads).
    pub(super) async fn keep_narinfo(
        &self,
        hash: StoreHash,
        mut served: NarInfo,
        file: &NarFile,
        upstream_nar_url: String,
    ) -> Result<Bytes, String> {
        served.url = file.url();
        served.sign(&self.key);
        let text = served.to_text();
        let body = Bytes::from(text.clone());
        let record = NarInfoRecord {
            hash: hash.to_string(),
            store_path: served.store_path.to_string(),
            nar_file: file.file_name(),
            upstream_nar_url,
            narinfo: text,
            nar_size: served.nar_size,
            file_size: served.file_size,
        };
        self.index.keep(hash, &record, body.clone()).await?;
        Ok(body)
    }
}

enum AcceptError {
    /// Not kept, for this reason (a metric label).
    Refused(&'static str, String),
    Backend(String),
}
