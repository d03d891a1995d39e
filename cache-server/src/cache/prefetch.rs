//! Prefetching: store paths (and, with `closure`, everything they reference) fetched through the
//! normal miss flow — the same locks, verification and single download across replicas — so that
//! a fleet finds them cached.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use super::nar::NarBody;
use super::Cache;
use crate::nix::{NarFile, NarInfo, StorePath};
use crate::storage::nar_key;

/// What a prefetch did, path by path.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Narinfo and NAR were here already.
    pub cached: Vec<String>,
    /// Fetched from an upstream now.
    pub fetched: Vec<String>,
    /// No upstream has the path.
    pub not_found: Vec<String>,
    pub failed: Vec<PrefetchFailure>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PrefetchFailure {
    pub path: String,
    pub reason: String,
}

impl Cache {
    /// Fetches `paths` (with `closure`, their references too, recursively) and reports each.
    pub async fn prefetch(
        self: &Arc<Self>,
        paths: Vec<StorePath>,
        closure: bool,
    ) -> PrefetchReport {
        let mut report = PrefetchReport::default();
        let mut queue: VecDeque<StorePath> = paths.into();
        let mut seen = HashSet::new();
        while let Some(path) = queue.pop_front() {
            if !seen.insert(path.hash()) {
                continue;
            }
            let name = path.to_string();
            match self.prefetch_one(&path).await {
                Ok((outcome, references)) => {
                    match outcome {
                        Outcome::Cached => report.cached.push(name),
                        Outcome::Fetched => report.fetched.push(name),
                    }
                    if closure {
                        queue.extend(references);
                    }
                }
                Err(Miss::NotFound) => report.not_found.push(name),
                Err(Miss::Failed(reason)) => {
                    report.failed.push(PrefetchFailure { path: name, reason })
                }
            }
        }
        report
    }

    async fn prefetch_one(
        self: &Arc<Self>,
        path: &StorePath,
    ) -> Result<(Outcome, Vec<StorePath>), Miss> {
        let hash = path.hash();
        let had_narinfo = matches!(self.db.get_narinfo(hash.as_str()).await, Ok(Some(_)));
        let body = self.narinfo(hash).await.ok_or(Miss::NotFound)?;
        let text = std::str::from_utf8(&body).map_err(|e| Miss::Failed(e.to_string()))?;
        let info = NarInfo::parse(text).map_err(|e| Miss::Failed(e.to_string()))?;
        let references = info
            .references
            .iter()
            .filter_map(|r| StorePath::from_base_name(path.store_dir(), r).ok())
            .collect();
        let file = info
            .url
            .strip_prefix("nar/")
            .and_then(|n| NarFile::parse(n).ok())
            .ok_or_else(|| Miss::Failed(format!("unexpected NAR URL {}", info.url)))?;
        let key = nar_key(&file);
        let stored = |c: &Arc<Cache>| {
            let c = c.clone();
            let key = key.clone();
            async move { matches!(c.storage.size(&key).await, Ok(Some(_))) }
        };
        if stored(self).await {
            let outcome = if had_narinfo {
                Outcome::Cached
            } else {
                Outcome::Fetched
            };
            return Ok((outcome, references));
        }
        let body = match self.nar(file, None).await {
            Ok(Some(NarBody::Stored(object))) => object.body,
            Ok(Some(NarBody::Live { body, .. })) => body,
            Ok(None) => return Err(Miss::Failed("no upstream could provide the NAR".into())),
            Err(e) => return Err(Miss::Failed(e.to_string())),
        };
        // Following the download to its end: it is committed only once verified.
        let mut body = body;
        while let Some(chunk) = body.next().await {
            chunk.map_err(|e| Miss::Failed(format!("NAR download: {e}")))?;
        }
        if stored(self).await {
            Ok((Outcome::Fetched, references))
        } else {
            Err(Miss::Failed("the NAR was not stored".into()))
        }
    }
}

enum Outcome {
    Cached,
    Fetched,
}

enum Miss {
    NotFound,
    Failed(String),
}
