//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz`): the parsers that see
//! untrusted input — narinfos (from upstreams and uploads), request paths, keys — must never
//! panic, and what they accept must read back as the same value. The unit tests below run every
//! seed and every input a fuzzer once found (`fuzz/seeds`, `fuzz/regressions`) through them.

use crate::nix::{NarFile, NarInfo, PublicKey, SecretKey, StoreHash, StorePath};

/// A narinfo: parses or is refused; what parses prints back to text that parses to the same, and
/// that Nix's own reading rules take to the same fields (what nixcache serves is what clients see).
pub fn narinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text) else {
        return;
    };
    let _ = info.fingerprint();
    let _ = info.compression();
    let served = info.to_text();
    let again = NarInfo::parse(&served);
    assert_eq!(again.as_ref().ok(), Some(&info), "narinfo round trip");
    let nix = nix_reads(&served).unwrap_or_else(|e| panic!("Nix would call it corrupt: {e}"));
    assert_eq!(nix, NixFields::of(&info), "Nix reads other fields");
}

/// The fields of a narinfo as Nix's parser (libstore/nar-info.cc) sets them.
#[derive(Debug, Default, PartialEq, Eq)]
struct NixFields {
    store_path: String,
    url: String,
    compression: String,
    file_hash: Option<crate::nix::hash::Sha256Hash>,
    file_size: u64,
    nar_hash: Option<crate::nix::hash::Sha256Hash>,
    nar_size: u64,
    references: std::collections::BTreeSet<String>,
    deriver: Option<String>,
    sigs: std::collections::BTreeSet<String>,
    ca: Option<String>,
}

impl NixFields {
    fn of(info: &NarInfo) -> Self {
        Self {
            store_path: info.store_path.to_string(),
            url: info.url.clone(),
            compression: info.compression().to_string(),
            file_hash: info.file_hash,
            file_size: info.file_size.unwrap_or(0),
            nar_hash: Some(info.nar_hash),
            nar_size: info.nar_size,
            references: info.references.iter().cloned().collect(),
            deriver: info.deriver.clone().filter(|d| d != "unknown-deriver"),
            sigs: info.sigs.iter().cloned().collect(),
            ca: info.ca.clone(),
        }
    }
}

/// Nix's reading of a narinfo, step for step: the name runs to the first `:`, the value from two
/// bytes after it to the next `\n` searched from there; unknown names are ignored; a field that
/// does not parse makes the whole file corrupt.
fn nix_reads(s: &str) -> Result<NixFields, String> {
    use crate::nix::hash::Sha256Hash;
    let b = s.as_bytes();
    let find = |c: u8, from: usize| {
        b.get(from..)?
            .iter()
            .position(|&x| x == c)
            .map(|i| i + from)
    };
    let mut f = NixFields::default();
    let mut pos = 0;
    let mut have_path = false;
    while pos < b.len() {
        let colon = find(b':', pos).ok_or("expecting ':'")?;
        let name = &s[pos..colon];
        let eol = find(b'\n', colon + 2).ok_or("expecting '\\n'")?;
        let value = s.get(colon + 2..eol).ok_or("value is not text")?;
        let hash = |v: &str| Sha256Hash::parse_typed(v).map_err(|e| e.to_string());
        let int = |v: &str| v.parse::<u64>().map_err(|e| format!("{name}: {e}"));
        match name {
            "StorePath" => {
                f.store_path = StorePath::parse(value)
                    .map_err(|e| e.to_string())?
                    .to_string();
                have_path = true;
            }
            "URL" => f.url = value.to_string(),
            "Compression" => f.compression = value.to_string(),
            "FileHash" => f.file_hash = Some(hash(value)?),
            "FileSize" => f.file_size = int(value)?,
            "NarHash" => f.nar_hash = Some(hash(value)?),
            "NarSize" => f.nar_size = int(value)?,
            "References" => {
                if !f.references.is_empty() {
                    return Err("extra References".into());
                }
                for r in value.split(' ').filter(|r| !r.is_empty()) {
                    StorePath::from_base_name("/nix/store", r).map_err(|e| e.to_string())?;
                    f.references.insert(r.to_string());
                }
            }
            "Deriver" if value == "unknown-deriver" => {}
            "Deriver" => {
                StorePath::from_base_name("/nix/store", value).map_err(|e| e.to_string())?;
                f.deriver = Some(value.to_string());
            }
            "Sig" => {
                f.sigs.insert(value.to_string());
            }
            "CA" => {
                if f.ca.is_some() {
                    return Err("extra CA".into());
                }
                if !value.is_empty() {
                    f.ca = Some(value.to_string());
                }
            }
            _ => {}
        }
        pos = eol + 1;
    }
    if f.compression.is_empty() {
        f.compression = "bzip2".into();
    }
    if !have_path || f.nar_hash.is_none() || f.url.is_empty() || f.nar_size == 0 {
        return Err("required field missing".into());
    }
    Ok(f)
}

/// A request path as the routes take it apart: store hashes, NAR file names, upload names,
/// storage keys.
pub fn request_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let name = path.trim_start_matches('/');
    if let Some(hash) = name
        .strip_suffix(".narinfo")
        .or_else(|| name.strip_suffix(".ls"))
    {
        if let Ok(h) = StoreHash::parse(hash) {
            assert_eq!(h.as_str(), hash);
            assert!(crate::storage::validate_key(&crate::storage::narinfo_key(&h)).is_ok());
        }
    }
    if let Some(file) = crate::storage::keys::nar_name(name) {
        if let Ok(f) = NarFile::parse(file) {
            assert_eq!(NarFile::parse(&f.file_name()).ok(), Some(f));
            assert!(crate::storage::validate_key(&crate::storage::nar_key(&f)).is_ok());
        }
    }
    for kind in crate::storage::keys::Extra::ALL {
        if let Some(key) = kind.key(name) {
            assert!(crate::storage::validate_key(&key).is_ok(), "{key}");
        }
    }
    if let Ok(p) = StorePath::parse(path) {
        assert_eq!(StorePath::parse(&p.to_string()).ok(), Some(p));
    }
    let _ = crate::storage::validate_key(name);
}

/// Key files and `trusted-public-keys` entries.
pub fn keys(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = PublicKey::parse(text) {
        assert_eq!(PublicKey::parse(&k.to_string()).ok(), Some(k));
    }
    if let Ok(k) = SecretKey::parse(text) {
        let again = SecretKey::parse(&k.to_file_contents()).expect("a key reads back");
        assert_eq!(again.public_key(), k.public_key());
        let sig = k.sign("fingerprint");
        assert!(k.public_key().verify("fingerprint", &sig));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file under `fuzz/<dir>/<target>/`.
    fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for dir in ["seeds", "regressions"] {
            let d = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz")
                .join(dir)
                .join(target);
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let data = std::fs::read(entry.path()).expect("read input");
                out.push((entry.path().display().to_string(), data));
            }
        }
        out
    }

    #[test]
    fn nix_reading_rules_catch_what_a_line_based_reader_misses() {
        let hello = include_str!("../testdata/cache-nixos-org-hello.narinfo");
        assert!(super::nix_reads(hello).is_ok());
        // A key with a colon inside is a NarHash line to Nix.
        let sneaky = format!("{hello}NarHash:Xsha256:abc: \n");
        assert!(super::nix_reads(&sneaky).is_err());
        let deriver = format!("{hello}Deriver: not/a-path\n");
        assert!(super::nix_reads(&deriver).is_err());
    }

    #[test]
    fn seeds_and_past_findings_pass_every_target() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 3] = [
            ("narinfo", super::narinfo),
            ("request_path", super::request_path),
            ("keys", super::keys),
        ];
        for (name, target) in targets {
            let inputs = inputs(name);
            assert!(!inputs.is_empty(), "no seeds for {name}");
            for (path, data) in inputs {
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name} panicked on {path}");
            }
        }
    }
}
