//! Store paths (`/nix/store/<hash>-<name>`) and their hash parts, validated as Nix validates them
//! (libstore/path.cc): the hash part is 32 characters of Nix base32, the name at most 211 characters
//! of `[A-Za-z0-9+-._?=]` and not starting with a dot.

use std::fmt;

use super::base32;
use super::hash::truncate;

/// Length of a store path's hash part.
pub const HASH_LEN: usize = 32;
const NAME_MAX: usize = 211;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("invalid store path hash {0:?}")]
    Hash(String),
    #[error("invalid store path {0:?}")]
    Path(String),
}

/// The hash part of a store path: what a `<hash>.narinfo` request names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreHash([u8; HASH_LEN]);

impl StoreHash {
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        let b = s.as_bytes();
        if b.len() != HASH_LEN || !b.iter().all(|&c| base32::is_digit(c)) {
            return Err(StorePathError::Hash(truncate(s)));
        }
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(b);
        Ok(Self(out))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII base32 digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for StoreHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for StoreHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreHash({})", self.as_str())
    }
}

/// A full store path, split into store directory, hash part and name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    store_dir: String,
    hash: StoreHash,
    name: String,
}

impl StorePath {
    /// Parses an absolute store path `<store_dir>/<hash>-<name>`.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        let err = || StorePathError::Path(truncate(s));
        let (dir, base) = s.rsplit_once('/').ok_or_else(err)?;
        if !is_canonical_dir(dir) {
            return Err(err());
        }
        let (hash, name) = parse_base_name(base).ok_or_else(err)?;
        Ok(Self {
            store_dir: dir.to_string(),
            hash,
            name: name.to_string(),
        })
    }

    /// Joins a base name `<hash>-<name>` (as in References) onto a store directory.
    pub fn from_base_name(store_dir: &str, base: &str) -> Result<Self, StorePathError> {
        let (hash, name) =
            parse_base_name(base).ok_or_else(|| StorePathError::Path(truncate(base)))?;
        Ok(Self {
            store_dir: store_dir.to_string(),
            hash,
            name: name.to_string(),
        })
    }

    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    pub fn hash(&self) -> StoreHash {
        self.hash
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}-{}", self.store_dir, self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

pub use nixcache_settings::store::is_canonical_dir;

fn parse_base_name(base: &str) -> Option<(StoreHash, &str)> {
    if base.len() < HASH_LEN + 2 || base.as_bytes()[HASH_LEN] != b'-' {
        return None;
    }
    let hash = StoreHash::parse(base.get(..HASH_LEN)?).ok()?;
    let name = base.get(HASH_LEN + 1..)?;
    let valid_char = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
    if name.len() > NAME_MAX || name.starts_with('.') || !name.bytes().all(valid_char) {
        return None;
    }
    Some((hash, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_paths() {
        let p = StorePath::parse("/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin")
            .expect("valid");
        assert_eq!(p.store_dir(), "/nix/store");
        assert_eq!(p.hash().as_str(), "syd87l2rxw8cbsxmxl853h0r6pdwhwjr");
        assert_eq!(p.name(), "curl-7.82.0-bin");
        assert_eq!(
            p.to_string(),
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin"
        );
        let r = StorePath::from_base_name(
            "/nix/store",
            "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
        )
        .expect("valid");
        assert_eq!(
            r.base_name(),
            "6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115"
        );
    }

    #[test]
    fn rejects_malformed_hashes() {
        for s in [
            "",
            "syd87l2rxw8cbsxmxl853h0r6pdwhwj",   // 31
            "syd87l2rxw8cbsxmxl853h0r6pdwhwjrr", // 33
            "eyd87l2rxw8cbsxmxl853h0r6pdwhwjr",  // 'e' is not a digit
            "SYD87L2RXW8CBSXMXL853H0R6PDWHWJR",
            "../../../../../../../etc/passwd0",
            "syd87l2rxw8cbsxmxl853h0r6pdwhwé",
        ] {
            assert!(StoreHash::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_paths() {
        for s in [
            "syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl",
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr",
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-",
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-.hidden",
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-a/b",
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-sp ace",
            "/nix/store/eyd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl",
            "/nix/../syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl",
            "/nix//store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl",
            "/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl",
        ] {
            assert!(StorePath::parse(s).is_err(), "{s}");
        }
        let long = format!(
            "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-{}",
            "a".repeat(212)
        );
        assert!(StorePath::parse(&long).is_err());
    }
}
