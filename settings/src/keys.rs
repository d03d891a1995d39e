//! ed25519 keys and signatures in Nix's formats (libutil/signature/local-keys.cc):
//! keys are `<name>:<base64>`, the secret key being the 64-byte seed ‖ public key and the public key
//! 32 bytes; a signature is `<name>:<base64 of the 64-byte detached signature>` over a narinfo's
//! fingerprint.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is not of the form <name>:<base64>")]
    Format,
    #[error("key name must be non-empty")]
    Name,
    #[error("key is not valid base64")]
    Base64,
    #[error("key has {0} bytes, expected {1}")]
    Length(usize, usize),
    #[error("secret key's public half does not match its seed")]
    Mismatch,
    #[error("not a valid ed25519 public key")]
    Invalid,
    #[error("no system randomness: {0}")]
    Random(String),
}

fn split_key(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = s.trim().split_once(':').ok_or(KeyError::Format)?;
    if name.is_empty() {
        return Err(KeyError::Name);
    }
    let bytes = BASE64.decode(b64).map_err(|_| KeyError::Base64)?;
    Ok((name, bytes))
}

/// A secret signing key. Its `Debug` output never shows key material.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Generates a new key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        if name.is_empty() || name.contains(':') {
            return Err(KeyError::Name);
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses the contents of a secret key file as written by `nix-store --generate-binary-cache-key`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(s)?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::Length(b.len(), 64))?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError::Mismatch)?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint; returns the `Sig:` value `<name>:<base64>`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }

    /// The secret key file contents, `<name>:<base64(seed ‖ public)>`, as Nix writes them.
    pub fn to_file_contents(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A public key trusted to sign narinfos.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(s)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::Length(b.len(), 32))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Invalid)?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` (a `Sig:` value `<name>:<base64>`) is this key's valid signature of
    /// `fingerprint`. A signature by a key of another name is simply not ours: false.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(b64) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The public key of cache.nixos.org, trusted for upstream narinfos by default.
pub const CACHE_NIXOS_ORG_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

#[cfg(test)]
mod tests {
    use super::*;

    const NIX_SECRET: &str = include_str!("../../cache-server/testdata/second.secret");
    const NIX_PUBLIC: &str = include_str!("../../cache-server/testdata/second.public");

    #[test]
    fn parses_nix_generated_keys() {
        let sk = SecretKey::parse(NIX_SECRET).expect("nix secret key");
        assert_eq!(sk.name(), "second-1");
        assert_eq!(sk.public_key().to_string(), NIX_PUBLIC.trim());
        assert_eq!(sk.to_file_contents(), NIX_SECRET.trim());
        let pk = PublicKey::parse(NIX_PUBLIC).expect("nix public key");
        assert_eq!(pk, sk.public_key());
    }

    #[test]
    fn generated_keys_round_trip_and_verify() {
        let sk = SecretKey::generate("nixcache-test-1").expect("generate");
        let again = SecretKey::parse(&sk.to_file_contents()).expect("parse");
        assert_eq!(again.public_key(), sk.public_key());
        let sig = sk.sign("1;/nix/store/x;sha256:y;1;");
        assert!(sk.public_key().verify("1;/nix/store/x;sha256:y;1;", &sig));
        assert!(!sk.public_key().verify("1;/nix/store/x;sha256:y;2;", &sig));
        let other = SecretKey::generate("nixcache-test-1").expect("generate");
        assert!(!other
            .public_key()
            .verify("1;/nix/store/x;sha256:y;1;", &sig));
        assert!(!format!("{sk:?}").contains(&sk.to_file_contents()[16..]));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(PublicKey::parse("nocolon"), Err(KeyError::Format));
        assert_eq!(PublicKey::parse(":AAAA"), Err(KeyError::Name));
        assert_eq!(PublicKey::parse("k:!!!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::parse("k:AAAA"), Err(KeyError::Length(3, 32)));
        assert!(SecretKey::parse(NIX_PUBLIC).is_err());
        // A secret key whose public half was tampered with.
        let sk = SecretKey::parse(NIX_SECRET).expect("key");
        let mut bytes = sk.key.to_keypair_bytes();
        bytes[63] ^= 1;
        let bad = format!("second-1:{}", BASE64.encode(bytes));
        assert_eq!(SecretKey::parse(&bad).map(|_| ()), Err(KeyError::Mismatch));
        assert!(PublicKey::parse(CACHE_NIXOS_ORG_KEY).is_ok());
    }
}
