//! Prefetching: store paths (and, with `closure`, everything they reference) fetched through the
//! normal miss flow — the same locks, verification and single download across replicas — so that
//! a fleet finds them cached.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::nar::NarBody;
use super::Cache;
use crate::nix::{NarFile, NarInfo, StorePath};
use crate::storage::nar_key;

/// A prefetch as asked for (the admin API's body, and a task's stored request).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    pub paths: Vec<String>,
    #[serde(default)]
    pub closure: bool,
}

/// How far a prefetch has got, readable while it runs.
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    /// Paths known so far (the named ones and the references found).
    known: AtomicU64,
    /// Paths dealt with, whatever the outcome.
    done: AtomicU64,
    fetched: AtomicU64,
    missing: AtomicU64,
}

/// A prefetch's progress as a task shows it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefetchCounts {
    /// Paths known so far (the named ones and the references found).
    pub paths_known: u64,
    /// Paths dealt with, whatever the outcome.
    pub paths_done: u64,
    pub fetched: u64,
    pub not_found_or_failed: u64,
}

impl PrefetchProgress {
    pub fn snapshot(&self) -> PrefetchCounts {
        PrefetchCounts {
            paths_known: self.known.load(Ordering::Relaxed),
            paths_done: self.done.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            not_found_or_failed: self.missing.load(Ordering::Relaxed),
        }
    }
}

/// What a prefetch did, path by path.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Narinfo and NAR were here already.
    pub cached: Vec<String>,
    /// Fetched from an upstream now.
    pub fetched: Vec<String>,
    /// No upstream has the path.
    pub not_found: Vec<String>,
    pub failed: Vec<PrefetchFailure>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrefetchFailure {
    pub path: String,
    pub reason: String,
}

impl Cache {
    /// Fetches `paths` (with `closure`, their references too, recursively) and reports each.
    /// `progress` follows it as it goes.
    pub async fn prefetch(
        self: &Arc<Self>,
        paths: Vec<StorePath>,
        closure: bool,
        progress: &PrefetchProgress,
    ) -> PrefetchReport {
        let mut report = PrefetchReport::default();
        let mut seen = HashSet::new();
        let mut queue = VecDeque::new();
        let mut enqueue = |queue: &mut VecDeque<StorePath>, path: StorePath| {
            if seen.insert(path.hash()) {
                progress.known.fetch_add(1, Ordering::Relaxed);
                queue.push_back(path);
            }
        };
        for path in paths {
            enqueue(&mut queue, path);
        }
        while let Some(path) = queue.pop_front() {
            let name = path.to_string();
            match self.prefetch_one(&path).await {
                Ok((outcome, references)) => {
                    match outcome {
                        Outcome::Cached => report.cached.push(name),
                        Outcome::Fetched => {
                            progress.fetched.fetch_add(1, Ordering::Relaxed);
                            report.fetched.push(name)
                        }
                    }
                    if closure {
                        for r in references {
                            enqueue(&mut queue, r);
                        }
                    }
                }
                Err(miss) => {
                    progress.missing.fetch_add(1, Ordering::Relaxed);
                    match miss {
                        Miss::NotFound => report.not_found.push(name),
                        Miss::Failed(reason) => {
                            report.failed.push(PrefetchFailure { path: name, reason })
                        }
                    }
                }
            }
            progress.done.fetch_add(1, Ordering::Relaxed);
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
        let file = NarFile::name_in_url(&info.url)
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
