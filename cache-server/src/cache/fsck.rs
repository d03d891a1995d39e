//! Consistency check of database and storage (`nixcache fsck`).
//!
//! Finds recorded NARs whose object is missing or has the wrong size (or, with `deep`, the wrong
//! contents; with a sample size, of an even spread of that many recorded NARs only), stored NARs no narinfo refers to (recorded or not; recorded ones once unused for the
//! GC grace period, as GC judges them), stored NARs a narinfo refers to but no row records, and
//! narinfos whose NAR was never fetched, unused for the GC's unfetched TTL. Repairs what is safe: a
//! bad or missing NAR is forgotten (object and row), so the next request fetches it again from the
//! upstream its narinfo names; an orphan is deleted; a good but unrecorded NAR is recorded; a
//! stale unfetched narinfo is forgotten (looked up again on demand).

use std::collections::BTreeMap;

use futures_util::StreamExt;

use super::verify::Verifier;
use super::Cache;
use crate::nix::{NarFile, NarInfo};
use crate::storage::{keys, nar_key};
use crate::util::unix_now;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The database records a NAR that storage does not have.
    MissingNar { file: String },
    /// Stored size differs from the recorded one (a truncated or overwritten object).
    SizeMismatch {
        file: String,
        recorded: u64,
        stored: u64,
    },
    /// Contents do not match the narinfo's hashes (`--deep`).
    HashMismatch { file: String, why: String },
    /// Stored NAR no narinfo refers to.
    Orphan { file: String },
    /// Stored NAR a narinfo refers to, not recorded in the database.
    Unrecorded { file: String, size: u64 },
    /// Narinfo whose NAR was never fetched, unused for longer than the unfetched TTL.
    Unfetched { hash: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingNar { file } => {
                write!(f, "missing NAR: {file} is recorded but not stored")
            }
            Self::SizeMismatch {
                file,
                recorded,
                stored,
            } => {
                write!(
                    f,
                    "size mismatch: {file} is recorded as {recorded} bytes, stored as {stored}"
                )
            }
            Self::HashMismatch { file, why } => write!(f, "hash mismatch: {file}: {why}"),
            Self::Orphan { file } => write!(
                f,
                "orphaned NAR: {file} is stored but no narinfo refers to it"
            ),
            Self::Unrecorded { file, size } => write!(
                f,
                "unrecorded NAR: {file} ({size} bytes) is stored but not recorded"
            ),
            Self::Unfetched { hash } => write!(
                f,
                "unfetched narinfo: {hash} was looked up but its NAR never fetched, and is unused"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl Cache {
    /// Checks (and with `repair`, fixes) database and storage; returns what it found. With `deep`,
    /// reads recorded NARs against their narinfos' hashes: all of them, or with `sample`, that
    /// many spread evenly over the recorded ones (names are content hashes, so every n-th is as
    /// good as a random pick); the rest are checked for presence and size.
    pub async fn fsck(
        &self,
        deep: bool,
        sample: Option<usize>,
        repair: bool,
        grace: std::time::Duration,
    ) -> Result<Vec<Problem>, FsckError> {
        let recorded: BTreeMap<String, u64> = self.db.list_nars().await?.into_iter().collect();
        let stride = match sample {
            Some(n) => recorded.len().div_ceil(n.max(1)).max(1),
            None => 1,
        };
        let stored: BTreeMap<String, u64> = self
            .storage
            .list(keys::NAR)
            .await?
            .into_iter()
            .map(|(key, size)| (keys::nar_name(&key).unwrap_or(&key).to_string(), size))
            .collect();
        let mut problems = Vec::new();
        for (i, (file, &size)) in recorded.iter().enumerate() {
            match stored.get(file) {
                None => problems.push(Problem::MissingNar { file: file.clone() }),
                Some(&s) if s != size => problems.push(Problem::SizeMismatch {
                    file: file.clone(),
                    recorded: size,
                    stored: s,
                }),
                Some(_) if deep && i % stride == 0 => {
                    if let Some(why) = self.verify_stored(file).await? {
                        problems.push(Problem::HashMismatch {
                            file: file.clone(),
                            why,
                        });
                    }
                }
                Some(_) => {}
            }
        }
        for (file, &size) in &stored {
            if recorded.contains_key(file) {
                continue;
            }
            if self.db.nar_references(file).await? == 0 {
                problems.push(Problem::Orphan { file: file.clone() });
            } else if deep && self.verify_stored(file).await?.is_some() {
                problems.push(Problem::HashMismatch {
                    file: file.clone(),
                    why: "unrecorded and wrong".into(),
                });
            } else {
                problems.push(Problem::Unrecorded {
                    file: file.clone(),
                    size,
                });
            }
        }
        // Recorded and stored, but named by no narinfo: what GC collects as orphans.
        let now = unix_now();
        let unused_since = now - i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        for (file, _) in self.db.orphan_nars(unused_since, i64::MAX).await? {
            if stored.contains_key(&file) {
                problems.push(Problem::Orphan { file });
            }
        }
        let ttl = i64::try_from(self.settings.gc.unfetched_ttl.as_secs()).unwrap_or(i64::MAX);
        for hash in self.db.unfetched_narinfos(now - ttl, i64::MAX).await? {
            problems.push(Problem::Unfetched { hash });
        }
        if repair {
            for p in &problems {
                self.repair(p).await?;
            }
        }
        Ok(problems)
    }

    async fn repair(&self, problem: &Problem) -> Result<(), FsckError> {
        match problem {
            Problem::MissingNar { file } => self.db.delete_nar(file).await?,
            Problem::SizeMismatch { file, .. }
            | Problem::HashMismatch { file, .. }
            | Problem::Orphan { file } => {
                if let Ok(nar) = NarFile::parse(file) {
                    self.storage.delete(&nar_key(&nar)).await?;
                }
                self.db.delete_nar(file).await?;
            }
            Problem::Unrecorded { file, size } => self.db.put_nar(file, *size, unix_now()).await?,
            Problem::Unfetched { hash } => {
                self.index
                    .forget::<FsckError>(std::slice::from_ref(hash), 1)
                    .await?
            }
        }
        Ok(())
    }

    /// Reads a stored NAR through the verifier of a narinfo that names it; the reason it fails.
    async fn verify_stored(&self, file: &str) -> Result<Option<String>, FsckError> {
        let Some(record) = self.db.narinfo_for_nar(file).await? else {
            return Ok(None);
        };
        let Ok(info) = NarInfo::parse(&record.narinfo) else {
            return Ok(Some("its narinfo does not parse".into()));
        };
        let Ok(nar) = NarFile::parse(file) else {
            return Ok(Some("not a NAR file name".into()));
        };
        let Ok(mut verifier) = Verifier::new(&info) else {
            return Ok(None);
        };
        let Some(object) = self.storage.get(&nar_key(&nar), None).await? else {
            return Ok(Some("gone".into()));
        };
        let mut body = object.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(crate::storage::StorageError::Io)?;
            if let Err(e) = verifier.update(&chunk).await {
                return Ok(Some(e.to_string()));
            }
        }
        Ok(verifier.finish().await.err().map(|e| e.to_string()))
    }
}
