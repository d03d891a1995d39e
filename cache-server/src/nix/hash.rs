//! SHA-256 hashes as Nix writes them: `sha256:<nix base32>` in narinfos. Parsing also accepts the
//! other encodings Nix accepts for a typed hash (base16, base64, and SRI `sha256-<base64>`), so an
//! upstream that writes those is still understood; output is always the nix32 form.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::base32;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Hash(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid sha256 hash {0:?}")]
pub struct HashError(String);

impl Sha256Hash {
    /// Hash of `data`.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Parses `sha256:<nix32|base16|base64>` or `sha256-<base64>`.
    pub fn parse_typed(s: &str) -> Result<Self, HashError> {
        let err = || HashError(truncate(s));
        let (algo, rest, sri) = match (s.split_once(':'), s.split_once('-')) {
            (Some((a, r)), _) => (a, r, false),
            (None, Some((a, r))) => (a, r, true),
            (None, None) => return Err(err()),
        };
        if algo != "sha256" {
            return Err(err());
        }
        if sri {
            return Self::from_base64(rest).ok_or_else(err);
        }
        Self::parse_untyped(rest).ok_or_else(err)
    }

    /// Parses a bare sha256 digest in nix32 (52 chars), base16 (64) or base64 (44).
    pub fn parse_untyped(s: &str) -> Option<Self> {
        match s.len() {
            52 => base32::decode_exact(s, 32)
                .and_then(|v| v.try_into().ok())
                .map(Self),
            64 => {
                let mut out = [0u8; 32];
                for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
                    let hex = std::str::from_utf8(chunk).ok()?;
                    out[i] = u8::from_str_radix(hex, 16).ok()?;
                }
                Some(Self(out))
            }
            44 => Self::from_base64(s),
            _ => None,
        }
    }

    fn from_base64(s: &str) -> Option<Self> {
        BASE64.decode(s).ok()?.try_into().ok().map(Self)
    }

    /// The 52-character nix32 form, without the `sha256:` prefix.
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.0)
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Cuts untrusted input short before it is put into an error message.
/// Whether `s` is a bare digest of `size` bytes in one of the encodings Nix accepts for it: base16,
/// nix32 or base64 (padded), told apart by length as Nix does.
pub fn is_digest_of_size(s: &str, size: usize) -> bool {
    let base64_len = (4 * size).div_ceil(3).next_multiple_of(4);
    if s.len() == 2 * size {
        s.bytes().all(|c| c.is_ascii_hexdigit())
    } else if s.len() == base32::encoded_len(size) {
        base32::decode_exact(s, size).is_some()
    } else if s.len() == base64_len {
        BASE64.decode(s).is_ok_and(|v| v.len() == size)
    } else {
        false
    }
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn all_encodings_agree() {
        let h = Sha256Hash::digest(b"");
        assert_eq!(h.to_string(), format!("sha256:{EMPTY_NIX32}"));
        for s in [
            format!("sha256:{EMPTY_NIX32}"),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_string(),
            "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string(),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string(),
        ] {
            assert_eq!(Sha256Hash::parse_typed(&s), Ok(h), "{s}");
        }
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        for s in [
            "md5:abc",
            "sha256:",
            "sha256:xyz",
            "sha512:00",
            "nonsense",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
        ] {
            assert!(Sha256Hash::parse_typed(s).is_err(), "{s}");
        }
    }
}
