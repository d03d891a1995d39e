//! `/nix-cache-info` (`text/x-nix-cache-info`): `StoreDir`, `WantMassQuery`, `Priority`.

use std::fmt::Write as _;

use super::store_path::is_canonical_dir;

/// The store directory of every Nix installation that uses the default layout.
pub use nixcache_settings::store::DEFAULT_STORE_DIR;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    pub store_dir: String,
    pub want_mass_query: bool,
    /// Lower wins. `None` when the cache does not say (Nix then uses 50).
    pub priority: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheInfoError {
    #[error("nix-cache-info lacks StoreDir")]
    NoStoreDir,
    #[error("nix-cache-info has an invalid {0}")]
    Invalid(&'static str),
}

impl CacheInfo {
    pub fn parse(text: &str) -> Result<Self, CacheInfoError> {
        let mut info = Self {
            store_dir: String::new(),
            want_mass_query: false,
            priority: None,
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "StoreDir" => {
                    if !is_canonical_dir(v) {
                        return Err(CacheInfoError::Invalid("StoreDir"));
                    }
                    info.store_dir = v.to_string();
                }
                "WantMassQuery" => info.want_mass_query = v == "1",
                "Priority" => {
                    info.priority =
                        Some(v.parse().map_err(|_| CacheInfoError::Invalid("Priority"))?)
                }
                _ => {}
            }
        }
        if info.store_dir.is_empty() {
            return Err(CacheInfoError::NoStoreDir);
        }
        Ok(info)
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "StoreDir: {}\nWantMassQuery: {}\n",
            self.store_dir,
            u8::from(self.want_mass_query)
        );
        if let Some(p) = self.priority {
            let _ = writeln!(s, "Priority: {p}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let info = CacheInfo {
            store_dir: DEFAULT_STORE_DIR.into(),
            want_mass_query: true,
            priority: Some(40),
        };
        let text = info.to_text();
        assert_eq!(
            text,
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        assert_eq!(CacheInfo::parse(&text), Ok(info));
    }

    #[test]
    fn reads_what_nix_copy_writes() {
        // `nix copy --to file://` writes only StoreDir.
        let info = CacheInfo::parse("StoreDir: /nix/store\n").expect("parses");
        assert_eq!(info.priority, None);
        assert!(!info.want_mass_query);
    }

    #[test]
    fn rejects_bad() {
        assert_eq!(
            CacheInfo::parse("WantMassQuery: 1\n"),
            Err(CacheInfoError::NoStoreDir)
        );
        assert_eq!(
            CacheInfo::parse("StoreDir: /nix/store\nPriority: high\n"),
            Err(CacheInfoError::Invalid("Priority"))
        );
        assert_eq!(
            CacheInfo::parse("StoreDir: nix\n"),
            Err(CacheInfoError::Invalid("StoreDir"))
        );
    }
}
