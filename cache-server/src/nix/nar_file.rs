//! NAR file names as nixcache serves them: `nar/<nix32 sha256>.nar[.<ext>]`, the extension naming
//! the compression. Upstream URLs are opaque and never parsed here; only the names nixcache itself
//! hands out (and therefore accepts on `/nar/...`) have this strict shape.

use std::fmt;
use std::str::FromStr;

use super::base32;
use super::hash::{truncate, Sha256Hash};

/// Compression of a NAR file, as named in a narinfo's `Compression` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Brotli,
    Gzip,
    Lz4,
    Lzip,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarFileError {
    #[error("unknown compression {0:?}")]
    Compression(String),
    #[error("invalid NAR file name {0:?}")]
    Name(String),
}

impl Compression {
    const ALL: [Compression; 8] = [
        Self::None,
        Self::Xz,
        Self::Zstd,
        Self::Bzip2,
        Self::Brotli,
        Self::Gzip,
        Self::Lz4,
        Self::Lzip,
    ];

    /// The value of the narinfo `Compression` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Brotli => "br",
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::Lzip => "lzip",
        }
    }

    /// The file extension after `.nar`, with its dot; empty for no compression.
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Zstd => ".zst",
            Self::Bzip2 => ".bz2",
            Self::Brotli => ".br",
            Self::Gzip => ".gz",
            Self::Lz4 => ".lz4",
            Self::Lzip => ".lzip",
        }
    }
}

impl FromStr for Compression {
    type Err = NarFileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| NarFileError::Compression(truncate(s)))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NAR file in nixcache's storage: named by a sha256 and a compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NarFile {
    pub hash: Sha256Hash,
    pub compression: Compression,
}

impl NarFile {
    /// Parses a file name `<nix32>.nar[.<ext>]` (the part after `nar/`).
    pub fn parse(name: &str) -> Result<Self, NarFileError> {
        let err = || NarFileError::Name(truncate(name));
        let hash_len = base32::encoded_len(32);
        let (hash, rest) = (
            name.get(..hash_len).ok_or_else(err)?,
            name.get(hash_len..).ok_or_else(err)?,
        );
        let ext = rest.strip_prefix(".nar").ok_or_else(err)?;
        let compression = Compression::ALL
            .into_iter()
            .find(|c| c.extension() == ext)
            .ok_or_else(err)?;
        let bytes = base32::decode_exact(hash, 32).ok_or_else(err)?;
        let hash = Sha256Hash(bytes.try_into().map_err(|_| err())?);
        Ok(Self { hash, compression })
    }

    /// `<nix32>.nar[.<ext>]`, the storage key and the last part of the URL.
    pub fn file_name(&self) -> String {
        format!(
            "{}.nar{}",
            self.hash.to_nix32(),
            self.compression.extension()
        )
    }

    /// The URL relative to the cache root, as written in narinfos: `nar/<file name>`.
    pub fn url(&self) -> String {
        format!("{}{}", Self::URL_DIR, self.file_name())
    }

    /// Where [`url`](Self::url) puts NAR files.
    pub const URL_DIR: &'static str = "nar/";

    /// The file name in a narinfo's `URL`, when it is one of [`url`](Self::url)'s.
    pub fn name_in_url(url: &str) -> Option<&str> {
        url.strip_prefix(Self::URL_DIR)
    }
}

impl fmt::Display for NarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "1pnl92y7rrkm7kn2ra0d98fc4c2kz383gk396jwinbx04ldmkdzb";

    #[test]
    fn round_trips_every_compression() {
        for c in Compression::ALL {
            let name = format!("{H}.nar{}", c.extension());
            let f = NarFile::parse(&name).expect("valid");
            assert_eq!(f.compression, c);
            assert_eq!(f.file_name(), name);
            assert_eq!(f.url(), format!("nar/{name}"));
            assert_eq!(c.as_str().parse::<Compression>(), Ok(c));
        }
    }

    #[test]
    fn rejects_hostile_and_unknown_names() {
        for s in [
            "",
            "x.nar",
            &format!("{H}.nar.exe"),
            &format!("{H}.nar.xz.xz"),
            &format!("{H}.narinfo"),
            H,
            &format!("../{H}.nar"),
            &format!("{H}.nar/../../etc/passwd"),
            &format!("{}e.nar", &H[..51]),
            "2000000000000000000000000000000000000000000000000000.nar",
            "é00000000000000000000000000000000000000000000000000.nar",
        ] {
            assert!(NarFile::parse(s).is_err(), "{s}");
        }
        assert!("rar".parse::<Compression>().is_err());
    }
}
