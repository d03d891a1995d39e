//! Uploads (`nix copy --to http://…`): NARs first, checked against the hash their URL names before
//! they become visible; then narinfos, accepted only when their NAR is stored and matches them
//! (file hash and size, NAR hash and size by decompressing it), optionally only with a trusted
//! signature; nixcache's own signature is added. Build logs, listings and realisations are kept
//! as they come.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::info;

use super::download::Staged;
use super::verify::{verifiable, Verifier};
use super::Cache;
use crate::nix::{NarFile, NarInfo, PublicKey, Sha256Hash, StoreHash};
use crate::storage::{nar_key, validate_key};
use crate::util::{unique_name, unix_now};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The upload contradicts itself or what is stored: a 400 with this message.
    #[error("{0}")]
    Invalid(String),
    /// A narinfo without a signature from a key trusted for uploads: a 403.
    #[error("no signature from a key trusted for uploads")]
    Untrusted,
    /// A narinfo for a path already held with other signed contents: a 409.
    #[error("{0} is already held with another NarHash, NarSize or references; replacing it needs a signature by a trusted upload key or --upload-replace")]
    Replaces(String),
    /// More than the upload size limit: a 413.
    #[error("upload larger than {0} bytes")]
    TooLarge(u64),
    /// The client's body broke off.
    #[error("upload body: {0}")]
    Body(String),
    /// Storage or database failed: a 503 (the client retries).
    #[error("storing the upload: {0}")]
    Backend(String),
}

fn invalid(message: impl Into<String>) -> UploadError {
    UploadError::Invalid(message.into())
}

fn backend(e: impl ToString) -> UploadError {
    UploadError::Backend(e.to_string())
}

impl Cache {
    /// Stores an uploaded NAR file if its bytes hash to the file hash its name carries.
    pub async fn upload_nar<S, E>(
        &self,
        file: &NarFile,
        mut body: S,
        max_size: u64,
    ) -> Result<(), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.settings.staging_dir.join(unique_name());
        let mut staged = Staged(Some(path.clone()));
        let mut out = tokio::fs::File::create(&path).await.map_err(backend)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            // A client that stops sending is dropped like a stalled upstream.
            let next = tokio::time::timeout(self.settings.upstreams.stall, body.next())
                .await
                .map_err(|_| UploadError::Body("the upload stalled".into()))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > max_size {
                return Err(UploadError::TooLarge(max_size));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(backend)?;
        }
        out.flush().await.map_err(backend)?;
        drop(out);
        let got = Sha256Hash(hasher.finalize().into());
        if got != file.hash {
            return Err(invalid(format!(
                "the NAR's bytes hash to {} but its name says {}",
                got.to_nix32(),
                file.hash.to_nix32()
            )));
        }
        let key = nar_key(file);
        let new = self.storage.size(&key).await.map_err(backend)? != Some(size);
        if new {
            self.storage.put_file(&key, &path).await.map_err(backend)?;
            // Committed: the file is storage's now.
            staged.0 = None;
        }
        // Otherwise the same bytes are stored already, and `staged` removes this copy.
        self.db
            .put_nar(&file.file_name(), size, unix_now())
            .await
            .map_err(backend)?;
        if new {
            self.count_stored(1, size);
        }
        self.metrics.uploads.with_label_values(&["nar"]).inc();
        info!(file = %file, size, "NAR uploaded");
        Ok(())
    }

    /// Accepts an uploaded narinfo for `hash` once its NAR is stored and matches it.
    pub async fn upload_narinfo(
        &self,
        hash: StoreHash,
        body: &[u8],
        trusted_keys: &[PublicKey],
        allow_replace: bool,
    ) -> Result<(), UploadError> {
        let text = std::str::from_utf8(body).map_err(|_| invalid("the narinfo is not UTF-8"))?;
        let info = NarInfo::parse(text).map_err(|e| invalid(e.to_string()))?;
        if info.store_path.hash() != hash {
            return Err(invalid(format!(
                "the narinfo describes {}, not {hash}",
                info.store_path
            )));
        }
        if info.store_path.store_dir() != self.settings.store_dir {
            return Err(invalid(format!(
                "the narinfo's store is {}, this cache's is {}",
                info.store_path.store_dir(),
                self.settings.store_dir
            )));
        }
        verifiable(&info).map_err(|e| invalid(e.to_string()))?;
        if !trusted_keys.is_empty() && !info.verify(trusted_keys) {
            return Err(UploadError::Untrusted);
        }
        // What is held already — perhaps verified against an upstream's signature and re-signed
        // for everyone — is replaced by other contents only when a trusted upload key vouches for
        // them (checked above) or replacing is allowed; the same contents again are fine.
        if trusted_keys.is_empty() && !allow_replace {
            if let Some(held) = self.db.get_narinfo(hash.as_str()).await.map_err(backend)? {
                let same = NarInfo::parse(&held.narinfo)
                    .is_ok_and(|h| h.fingerprint() == info.fingerprint());
                if !same {
                    return Err(UploadError::Replaces(held.store_path));
                }
            }
        }
        let name = NarFile::name_in_url(&info.url)
            .ok_or_else(|| invalid("the narinfo's URL is not nar/<file>"))?;
        let file = NarFile::parse(name).map_err(|e| invalid(e.to_string()))?;
        if info.file_hash.is_some_and(|h| h != file.hash) {
            return Err(invalid("the narinfo's FileHash differs from its URL"));
        }
        // The stored NAR, read whole against what the narinfo promises.
        let object = self
            .storage
            .get(&nar_key(&file), None)
            .await
            .map_err(backend)?
            .ok_or_else(|| invalid(format!("{} was not uploaded first", info.url)))?;
        let mut checked = info.clone();
        // The stored file is the one the URL names, so its hash is known even without FileHash.
        checked.file_hash = Some(file.hash);
        if info.file_hash.is_none() {
            checked.file_size = None;
        }
        let mut verifier = Verifier::new(&checked).map_err(|e| invalid(e.to_string()))?;
        let mut stream = object.body;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(backend)?;
            verifier
                .update(&chunk)
                .await
                .map_err(|e| invalid(format!("the stored NAR does not match: {e}")))?;
        }
        let file_size = verifier
            .finish()
            .await
            .map_err(|e| invalid(format!("the stored NAR does not match: {e}")))?;

        if let Some(other) = self
            .conflicting_claim(hash, &checked, &file)
            .await
            .map_err(backend)?
        {
            return Err(invalid(format!(
                "{} is already the NAR of {other}, with another NarHash or NarSize",
                info.url
            )));
        }
        let mut served = checked;
        served.file_size = Some(file_size);
        let store_path = served.store_path.to_string();
        // Uploaded: there is no upstream to fetch the NAR from again.
        self.keep_narinfo(hash, served, &file, String::new())
            .await
            .map_err(backend)?;
        self.metrics.uploads.with_label_values(&["narinfo"]).inc();
        info!(store_path = %store_path, "narinfo uploaded");
        Ok(())
    }

    /// Keeps a listing, build log or realisation as uploaded, under a storage key of its kind.
    pub async fn upload_extra(&self, key: &str, body: Bytes) -> Result<(), UploadError> {
        validate_key(key).map_err(|_| invalid("not a valid name"))?;
        self.storage.put_bytes(key, body).await.map_err(backend)?;
        self.metrics.uploads.with_label_values(&["other"]).inc();
        Ok(())
    }

    /// An uploaded listing, build log or realisation.
    pub async fn extra(&self, key: &str) -> Option<Bytes> {
        validate_key(key).ok()?;
        crate::storage::read_small(self.storage.as_ref(), key).await
    }
}
