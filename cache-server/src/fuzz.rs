//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz`): the parsers that see
//! untrusted input — narinfos (from upstreams and uploads), request paths, keys — must never
//! panic, and what they accept must read back as the same value. The unit tests below run every
//! seed and every input a fuzzer once found (`fuzz/seeds`, `fuzz/regressions`) through them.

use crate::nix::{NarFile, NarInfo, PublicKey, SecretKey, StoreHash, StorePath};

/// A narinfo: parses or is refused; what parses prints back to text that parses to the same.
pub fn narinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text) else {
        return;
    };
    let _ = info.fingerprint();
    let _ = info.compression();
    let again = NarInfo::parse(&info.to_text());
    assert_eq!(again.as_ref().ok(), Some(&info), "narinfo round trip");
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
            assert!(crate::storage::validate_key(&format!("narinfo/{h}.narinfo")).is_ok());
        }
    }
    if let Some(file) = name.strip_prefix("nar/") {
        if let Ok(f) = NarFile::parse(file) {
            assert_eq!(NarFile::parse(&f.file_name()).ok(), Some(f));
            assert!(crate::storage::validate_key(&crate::storage::nar_key(&f)).is_ok());
        }
    }
    for kind in ["log", "realisations", "build-trace-v2"] {
        if let Some(key) = crate::http::upload::extra_key(kind, name) {
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
