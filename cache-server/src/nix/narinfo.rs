//! `.narinfo` files (libstore/nar-info.cc): parse, serialize, fingerprint, sign and verify.
//!
//! Serialization writes fields in the order Nix writes them, so a narinfo written by Nix comes out
//! byte for byte as it went in. Fields Nix does not know are kept, in order, after the known ones.

use std::fmt::Write as _;

use super::hash::{truncate, Sha256Hash};
use super::nar_file::Compression;
use super::signing::{PublicKey, SecretKey};
use super::store_path::StorePath;

/// Upper bound on a narinfo's size; real ones are well under 100 KiB even with many references.
pub const MAX_NARINFO_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    #[error("narinfo is larger than {MAX_NARINFO_BYTES} bytes")]
    TooLarge,
    #[error("narinfo line {0} is not of the form `Key: value`")]
    Line(usize),
    #[error("narinfo field {0} appears twice")]
    Duplicate(&'static str),
    #[error("narinfo lacks required field {0}")]
    Missing(&'static str),
    #[error("narinfo field {field} is invalid: {value:?}")]
    Invalid { field: &'static str, value: String },
}

/// A parsed narinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the NAR file is, relative to the cache root; opaque (may carry a query string).
    pub url: String,
    /// As written; `None` means the field was absent, which Nix reads as bzip2.
    pub compression: Option<Compression>,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// Base names (`<hash>-<name>`) of the referenced store paths.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
    /// Fields this parser does not interpret, kept in their original order.
    pub extra: Vec<(String, String)>,
}

fn invalid(field: &'static str, value: &str) -> NarInfoError {
    NarInfoError::Invalid {
        field,
        value: truncate(value),
    }
}

fn set<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(NarInfoError::Duplicate(field));
    }
    *slot = Some(value);
    Ok(())
}

/// What Nix writes, and reads, for a path without a known deriver.
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// `[A-Za-z0-9-]+`: how every narinfo field Nix writes is named.
fn is_field_name(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

/// A store path's base name `<hash>-<name>`, as Nix's `StorePath` constructor accepts it.
fn is_base_name(s: &str) -> bool {
    // The store directory only matters for full paths; any canonical one will do here.
    StorePath::from_base_name("/nix/store", s).is_ok()
}

/// A content address as Nix 2.8 and current Nix both parse it (content-address.cc):
/// `text:sha256:<hash>`, or `fixed:[r:]<md5|sha1|sha256|sha512>:<hash>`, the hash in base16,
/// nix32 or base64 of that algorithm's length. (Git-hashed `fixed:git:` is newer than 2.8.)
fn is_content_address(s: &str) -> bool {
    let (algo, digest) = if let Some(rest) = s.strip_prefix("text:") {
        match rest.split_once(':') {
            Some(("sha256", digest)) => ("sha256", digest),
            _ => return false,
        }
    } else if let Some(rest) = s.strip_prefix("fixed:") {
        let rest = rest.strip_prefix("r:").unwrap_or(rest);
        match rest.split_once(':') {
            Some(parts) => parts,
            None => return false,
        }
    } else {
        return false;
    };
    let size = match algo {
        "md5" => 16,
        "sha1" => 20,
        "sha256" => 32,
        "sha512" => 64,
        _ => return false,
    };
    super::hash::is_digest_of_size(digest, size)
}

fn parse_u64(field: &'static str, v: &str) -> Result<u64, NarInfoError> {
    // `u64::from_str` accepts a leading '+'; Nix writes plain digits only.
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(invalid(field, v));
    }
    v.parse().map_err(|_| invalid(field, v))
}

impl NarInfo {
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_BYTES {
            return Err(NarInfoError::TooLarge);
        }
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut ca = None;
        let mut sigs = Vec::new();
        let mut extra = Vec::new();

        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            // `lines()` takes a CRLF ending off; a control character left inside a line (a
            // stray CR, NUL, escape) is no narinfo's, and would not survive printing and
            // reading back unchanged.
            if line.chars().any(char::is_control) {
                return Err(NarInfoError::Line(i + 1));
            }
            // Nix (nar-info.cc) splits at the first `:` and takes the value from two bytes
            // after it, whatever the byte between. Reading the same way, and requiring that
            // byte to be a space, means no line can mean one field here and another to Nix.
            let (key, rest) = line.split_once(':').ok_or(NarInfoError::Line(i + 1))?;
            let value = rest.strip_prefix(' ').ok_or(NarInfoError::Line(i + 1))?;
            match key {
                "StorePath" => {
                    let p = StorePath::parse(value).map_err(|_| invalid("StorePath", value))?;
                    set(&mut store_path, "StorePath", p)?
                }
                "URL" => {
                    if value.is_empty() {
                        return Err(invalid("URL", value));
                    }
                    set(&mut url, "URL", value.to_string())?
                }
                "Compression" => {
                    let c = value.parse().map_err(|_| invalid("Compression", value))?;
                    set(&mut compression, "Compression", c)?
                }
                "FileHash" => {
                    let h =
                        Sha256Hash::parse_typed(value).map_err(|_| invalid("FileHash", value))?;
                    set(&mut file_hash, "FileHash", h)?
                }
                "FileSize" => set(&mut file_size, "FileSize", parse_u64("FileSize", value)?)?,
                "NarHash" => {
                    let h =
                        Sha256Hash::parse_typed(value).map_err(|_| invalid("NarHash", value))?;
                    set(&mut nar_hash, "NarHash", h)?
                }
                "NarSize" => set(&mut nar_size, "NarSize", parse_u64("NarSize", value)?)?,
                "References" => {
                    let refs: Vec<String> = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .collect();
                    set(&mut references, "References", refs)?
                }
                "Deriver" => {
                    // Nix reads a Deriver as a store path's base name, `unknown-deriver` as none.
                    if value != UNKNOWN_DERIVER && !is_base_name(value) {
                        return Err(invalid("Deriver", value));
                    }
                    set(&mut deriver, "Deriver", value.to_string())?
                }
                "Sig" => sigs.push(value.to_string()),
                "CA" => {
                    if !is_content_address(value) {
                        return Err(invalid("CA", value));
                    }
                    set(&mut ca, "CA", value.to_string())?
                }
                // Nix ignores fields it does not know; those named like its own are kept, others
                // (spaces, punctuation) are nobody's and are dropped.
                _ if is_field_name(key) => extra.push((key.to_string(), value.to_string())),
                _ => {}
            }
        }

        let store_path: StorePath = store_path.ok_or(NarInfoError::Missing("StorePath"))?;
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(invalid("NarSize", "0"));
        }
        let references = references.unwrap_or_default();
        for r in &references {
            StorePath::from_base_name(store_path.store_dir(), r)
                .map_err(|_| invalid("References", r))?;
        }
        Ok(Self {
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            store_path,
            compression,
            file_hash,
            file_size,
            nar_size,
            references,
            deriver,
            sigs,
            ca,
            extra,
        })
    }

    /// The compression of the NAR file, with Nix's default (bzip2) when the field is absent.
    pub fn compression(&self) -> Compression {
        self.compression.unwrap_or(Compression::Bzip2)
    }

    /// What signatures sign: `1;<store path>;<NarHash>;<NarSize>;<sorted full reference paths>`.
    pub fn fingerprint(&self) -> String {
        let dir = self.store_path.store_dir();
        let mut refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{dir}/{r}"))
            .collect();
        refs.sort();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }

    /// Whether any `Sig` verifies against any of `keys`.
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        let fp = self.fingerprint();
        self.sigs
            .iter()
            .any(|sig| keys.iter().any(|k| k.verify(&fp, sig)))
    }

    /// Adds this key's signature, replacing an earlier signature by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|s| !s.starts_with(&prefix));
        self.sigs.push(key.sign(&self.fingerprint()));
    }

    /// The narinfo text, every line ending in `\n`, fields in Nix's order.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(512);
        // Writing into a String cannot fail.
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        if let Some(c) = self.compression {
            let _ = writeln!(s, "Compression: {c}");
        }
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let _ = writeln!(s, "References: {}", self.references.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {d}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        for (k, v) in &self.extra {
            let _ = writeln!(s, "{k}: {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::signing::CACHE_NIXOS_ORG_KEY;

    const TOP: &str = include_str!("../../testdata/top.narinfo");
    const DEP: &str = include_str!("../../testdata/dep.narinfo");
    const CURL: &str = include_str!("../../testdata/cache-nixos-org-curl.narinfo");
    const HELLO: &str = include_str!("../../testdata/cache-nixos-org-hello.narinfo");
    const NIX_PUBLIC: &str = include_str!("../../testdata/nix-generated.public");
    const SECOND_SECRET: &str = include_str!("../../testdata/second.secret");
    const TOP_SECOND_SIG: &str = include_str!("../../testdata/top.second-sig");

    #[test]
    fn signs_exactly_as_nix_store_sign_does() {
        // ed25519 is deterministic: the same key over the same fingerprint gives Nix's signature.
        let sk = crate::nix::SecretKey::parse(SECOND_SECRET).expect("key");
        let info = NarInfo::parse(TOP).expect("narinfo");
        let fp = info.fingerprint();
        assert_eq!(sk.sign(&fp), TOP_SECOND_SIG.trim());
        assert!(sk.public_key().verify(&fp, TOP_SECOND_SIG.trim()));
    }

    #[test]
    fn round_trips_byte_for_byte() {
        for text in [TOP, DEP, CURL, HELLO] {
            let info = NarInfo::parse(text).expect("parses");
            assert_eq!(info.to_text(), text);
        }
    }

    #[test]
    fn crlf_endings_are_read_and_control_characters_refused() {
        let crlf = TOP.replace('\n', "\r\n");
        assert_eq!(
            NarInfo::parse(&crlf).expect("CRLF"),
            NarInfo::parse(TOP).expect("LF")
        );
        // Found by fuzzing: a value ending in CR lost it when printed and read back.
        for bad in [
            "Sig: k:abc\r\r\n",
            "URL: nar/x\u{0}.nar\n",
            "Deriver: a\u{1b}b\n",
        ] {
            let text = format!("{TOP}{bad}");
            assert!(NarInfo::parse(&text).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_fields() {
        let info = NarInfo::parse(TOP).expect("parses");
        assert_eq!(info.compression(), Compression::Xz);
        assert_eq!(info.file_size, Some(224));
        assert_eq!(info.nar_size, 248);
        assert_eq!(info.references.len(), 2);
        let dep = NarInfo::parse(DEP).expect("parses");
        assert!(dep.references.is_empty());
        assert!(dep.to_text().contains("\nReferences: \n"));
    }

    #[test]
    fn fingerprint_matches_nix() {
        let info = NarInfo::parse(CURL).expect("parses");
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
        );
    }

    #[test]
    fn verifies_real_signatures() {
        let nixos = PublicKey::parse(CACHE_NIXOS_ORG_KEY).expect("key");
        let ours = PublicKey::parse(NIX_PUBLIC).expect("key");
        for text in [CURL, HELLO] {
            let info = NarInfo::parse(text).expect("parses");
            assert!(
                info.verify(std::slice::from_ref(&nixos)),
                "{}",
                info.store_path
            );
            assert!(!info.verify(std::slice::from_ref(&ours)));
        }
        for text in [TOP, DEP] {
            let info = NarInfo::parse(text).expect("parses");
            assert!(info.verify(std::slice::from_ref(&ours)));
            assert!(!info.verify(std::slice::from_ref(&nixos)));
        }
        // Changing a signed field breaks the signature; unsigned fields may be rewritten.
        let mut info = NarInfo::parse(CURL).expect("parses");
        info.url = "nar/elsewhere.nar.xz".into();
        info.file_size = Some(1);
        assert!(info.verify(std::slice::from_ref(&nixos)));
        info.nar_size += 1;
        assert!(!info.verify(std::slice::from_ref(&nixos)));
    }

    #[test]
    fn sign_keeps_other_signatures_and_replaces_own() {
        let key = SecretKey::generate("nixcache-1").expect("key");
        let mut info = NarInfo::parse(HELLO).expect("parses");
        info.sign(&key);
        info.sign(&key);
        assert_eq!(info.sigs.len(), 2);
        assert!(info.sigs[0].starts_with("cache.nixos.org-1:"));
        assert!(info.verify(&[key.public_key()]));
        let again = NarInfo::parse(&info.to_text()).expect("parses");
        assert_eq!(again, info);
    }

    #[test]
    fn keeps_unknown_fields() {
        let text = format!("{HELLO}IpfsCid: Qmf8\n");
        let info = NarInfo::parse(&text).expect("parses");
        assert_eq!(
            info.extra,
            vec![("IpfsCid".to_string(), "Qmf8".to_string())]
        );
        assert_eq!(info.to_text(), text);
    }

    #[test]
    fn keys_split_at_the_first_colon_as_nix_does() {
        // Nix reads `NarHash:X…` as a NarHash line whose value starts two bytes after the colon:
        // such a line must not pass here as an unknown field and be served for Nix to misread.
        let sneaky = format!(
            "{HELLO}NarHash:Xsha256:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8: \n"
        );
        assert_eq!(NarInfo::parse(&sneaky), Err(NarInfoError::Line(11)));
        for line in ["Sig:x\n", "Deriver:\n", "References:\n"] {
            let text = format!("{HELLO}{line}");
            assert_eq!(
                NarInfo::parse(&text),
                Err(NarInfoError::Line(11)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_not_named_like_nix_fields_are_dropped() {
        let text = format!("{HELLO}Odd Key: 1\nX_Y: 2\nSystem: x86_64-linux\n");
        let info = NarInfo::parse(&text).expect("parses");
        assert_eq!(
            info.extra,
            vec![("System".to_string(), "x86_64-linux".to_string())]
        );
        assert_eq!(info.to_text(), format!("{HELLO}System: x86_64-linux\n"));
    }

    #[test]
    fn deriver_is_a_base_name_or_unknown() {
        let with = |d: &str| {
            HELLO.replace(
                "Deriver: 5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv",
                &format!("Deriver: {d}"),
            )
        };
        assert!(HELLO.contains("\nDeriver: "));
        for good in [
            "unknown-deriver",
            "5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv",
        ] {
            assert!(NarInfo::parse(&with(good)).is_ok(), "{good}");
        }
        for bad in [
            "not/a-path",
            "short",
            "",
            "5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-",
            "/nix/store/5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello.drv",
        ] {
            assert_eq!(
                NarInfo::parse(&with(bad)),
                Err(invalid("Deriver", bad)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_addresses_in_the_forms_nix_reads() {
        let sha256 = "1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8";
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let b64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        for good in [
            format!("text:sha256:{sha256}"),
            format!("fixed:r:sha256:{sha256}"),
            format!("fixed:sha256:{hex}"),
            format!("fixed:r:sha256:{b64}"),
            "fixed:sha1:0000000000000000000000000000000000000000".to_string(),
            "fixed:md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        ] {
            let text = format!("{HELLO}CA: {good}\n");
            let info = NarInfo::parse(&text).expect(&good);
            assert_eq!(info.ca.as_deref(), Some(good.as_str()));
        }
        for bad in [
            "".to_string(),
            "sha256:x".to_string(),
            format!("text:sha1:{sha256}"),
            format!("text:r:sha256:{sha256}"),
            format!("fixed:git:sha1:{sha256}"),
            format!("fixed:r:sha256:{}", &sha256[1..]),
            format!("fixed:sha512:{sha256}"),
            format!("source:sha256:{sha256}"),
        ] {
            let text = format!("{HELLO}CA: {bad}\n");
            assert_eq!(NarInfo::parse(&text), Err(invalid("CA", &bad)), "{bad:?}");
        }
    }

    #[test]
    fn missing_compression_means_bzip2() {
        let text = HELLO.replace("Compression: xz\n", "");
        let info = NarInfo::parse(&text).expect("parses");
        assert_eq!(info.compression(), Compression::Bzip2);
        assert_eq!(info.to_text(), text);
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("", NarInfoError::Missing("StorePath")),
            (&HELLO.replace("URL: ", "URL:"), NarInfoError::Line(2)),
            (
                &HELLO.replace("NarSize: 197528", "NarSize: -1"),
                invalid("NarSize", "-1"),
            ),
            (
                &HELLO.replace("NarSize: 197528", "NarSize: 0"),
                invalid("NarSize", "0"),
            ),
            (
                &HELLO.replace("Compression: xz", "Compression: rar"),
                invalid("Compression", "rar"),
            ),
            (
                &HELLO.replace("sha256:1ddv", "md5:1ddv"),
                invalid(
                    "NarHash",
                    "md5:1ddv0iqq47j0awyw7a8dmm8bz71c6ifrliq53kmmsfzjxf3rwvb8",
                ),
            ),
            (
                &format!("{HELLO}NarSize: 1\n"),
                NarInfoError::Duplicate("NarSize"),
            ),
            (
                &HELLO.replace("glibc-2.27 ", "../etc "),
                invalid("References", "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-../etc"),
            ),
            (
                &HELLO.replace("StorePath: /nix/store/gdh", "StorePath: /nix/store/../gdh"),
                invalid(
                    "StorePath",
                    "/nix/store/../gdh8165b7rg4y53v64chjys7mbbw89f9-hello-2.10",
                ),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(NarInfo::parse(text), Err(want), "{text}");
        }
        assert_eq!(
            NarInfo::parse(&"x".repeat(MAX_NARINFO_BYTES + 1)),
            Err(NarInfoError::TooLarge)
        );
    }
}
