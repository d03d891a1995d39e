//! Pins: store paths whose closures GC never evicts. Those of the configuration (`--pin`,
//! `spec.pins`) and those recorded through the admin API count alike; a pass computes the closure
//! of all of them from the stored narinfos' references, once, before it evicts anything.

use std::collections::{BTreeSet, HashSet};

use super::Cache;
use crate::db::DbError;
use crate::nix::{NarInfo, StorePath};

/// A pin, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    pub path: String,
    /// `config` (set where the server is configured) or `api` (recorded, removable).
    pub source: String,
    /// Unix seconds it was recorded (API pins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

impl Cache {
    /// Records pins of these store paths; how many were new.
    pub async fn pin(&self, paths: &[StorePath]) -> Result<u64, DbError> {
        let paths: Vec<String> = paths.iter().map(ToString::to_string).collect();
        self.db.add_pins(&paths, crate::util::unix_now()).await
    }

    /// Removes recorded pins of these store paths; how many there were. Pins of the
    /// configuration stay.
    pub async fn unpin(&self, paths: &[StorePath]) -> Result<u64, DbError> {
        let paths: Vec<String> = paths.iter().map(ToString::to_string).collect();
        self.db.remove_pins(&paths).await
    }

    /// Every pin, those of the configuration first.
    pub async fn pins(&self) -> Result<Vec<Pin>, DbError> {
        let mut pins: Vec<Pin> = self
            .settings
            .gc
            .pins
            .iter()
            .map(|p| Pin {
                path: p.clone(),
                source: "config".into(),
                since: None,
            })
            .collect();
        for (path, since) in self.db.list_pins().await? {
            pins.push(Pin {
                path,
                source: "api".into(),
                since: Some(since),
            });
        }
        Ok(pins)
    }

    /// The hashes of every pinned path and of everything they refer to, as far as narinfos are
    /// held (a path that is not held yet keeps nothing, and nothing beyond it).
    pub(crate) async fn pinned_closure(&self) -> Result<HashSet<String>, DbError> {
        let mut todo: BTreeSet<String> = BTreeSet::new();
        for pin in self.pins().await? {
            if let Ok(path) = StorePath::parse(&pin.path) {
                todo.insert(path.hash().to_string());
            }
        }
        let mut closure = HashSet::new();
        while let Some(hash) = todo.pop_first() {
            if !closure.insert(hash.clone()) {
                continue;
            }
            let Some(record) = self.db.get_narinfo(&hash).await? else {
                continue;
            };
            let Ok(info) = NarInfo::parse(&record.narinfo) else {
                continue;
            };
            for reference in &info.references {
                if let Some(h) = reference.get(..32) {
                    if !closure.contains(h) {
                        todo.insert(h.to_string());
                    }
                }
            }
        }
        Ok(closure)
    }
}
