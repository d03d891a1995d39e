//! Every storage key nixcache writes, built and read back here and nowhere else. Keys are
//! relative paths of `[a-z0-9._-]` segments (see [`super::validate_key`]):
//!
//! - `nar/<file>`: a NAR file, complete and verified (`<nix32>.nar[.ext]`, named by its hash);
//! - `narinfo/<hash>.narinfo`: a narinfo as served, re-signed;
//! - `ls/<hash>.ls`: a listing uploaded beside its NAR;
//! - `log/…`, `realisations/…`, `build-trace-v2/…`: uploaded build logs, realisations and build
//!   traces, each under a hash of its name ([`Extra`]);
//! - `inflight/<file>/attempt` and `inflight/<file>/<attempt>/<n>`: the manifest of a download in
//!   progress and the parts it publishes for other replicas to serve from.

use crate::nix::{NarFile, Sha256Hash, StoreHash};

/// Where NAR files are.
pub const NAR: &str = "nar";
/// Where every download publishes its parts.
pub const INFLIGHT: &str = "inflight";

/// Storage key of a NAR file.
pub fn nar_key(file: &NarFile) -> String {
    format!("{NAR}/{}", file.file_name())
}

/// The file name in a key under [`NAR`] (what listing `nar` gives back).
pub fn nar_name(key: &str) -> Option<&str> {
    key.strip_prefix(NAR)?.strip_prefix('/')
}

/// Storage key of a narinfo body.
pub fn narinfo_key(hash: &StoreHash) -> String {
    format!("narinfo/{hash}.narinfo")
}

/// Storage key of an uploaded listing (`/<hash>.ls`).
pub fn listing_key(hash: &StoreHash) -> String {
    format!("ls/{hash}.ls")
}

/// The uploads served back as they came, by the URL path they are under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    /// `/log/<drv>`: a build log (`nix store copy-log`).
    Log,
    /// `/realisations/<id>.doi`.
    Realisations,
    /// `/build-trace-v2/<drv>/<out>.doi`.
    BuildTrace,
}

impl Extra {
    pub const ALL: [Self; 3] = [Self::Log, Self::Realisations, Self::BuildTrace];

    /// The first segment of their URL paths, and of their keys.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Realisations => "realisations",
            Self::BuildTrace => "build-trace-v2",
        }
    }

    /// The storage key of the upload named `name` (the rest of its URL path): a hash of the name,
    /// since names carry characters keys do not allow. `None` for a name no client sends.
    pub fn key(self, name: &str) -> Option<String> {
        let ok = !name.is_empty()
            && name.len() <= 400
            && !name.contains("..")
            && name
                .bytes()
                .all(|c| c.is_ascii_graphic() && c != b'\\' && c != b'%');
        ok.then(|| {
            let digest = Sha256Hash::digest(name.as_bytes()).to_nix32();
            format!("{}/{digest}", self.dir())
        })
    }
}

/// The manifest of a download: the id of the attempt now publishing (or that committed) the file.
pub fn inflight_manifest_key(file_name: &str) -> String {
    format!("{INFLIGHT}/{file_name}/attempt")
}

/// Part `index` published by `attempt` of a download.
pub fn inflight_part_key(file_name: &str, attempt: &str, index: u64) -> String {
    format!("{INFLIGHT}/{file_name}/{attempt}/{index}")
}

/// The NAR file name a key under [`INFLIGHT`] belongs to (its manifest or one of its parts).
pub fn inflight_file(key: &str) -> Option<&str> {
    key.strip_prefix(INFLIGHT)?
        .strip_prefix('/')?
        .split('/')
        .next()
        .filter(|f| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::validate_key;

    #[test]
    fn keys_are_valid_and_read_back() {
        let file = NarFile::parse(&format!("{}.nar.xz", "1".repeat(52))).expect("file");
        let nar = nar_key(&file);
        assert!(validate_key(&nar).is_ok());
        assert_eq!(nar_name(&nar), Some(file.file_name().as_str()));
        assert_eq!(nar_name("narinfo/x.narinfo"), None);
        let hash = StoreHash::parse("p404n8pan3pvrll7pci95yg83idrvkdx").expect("hash");
        assert!(validate_key(&narinfo_key(&hash)).is_ok());
        assert!(validate_key(&listing_key(&hash)).is_ok());

        let name = file.file_name();
        assert_eq!(
            inflight_file(&inflight_manifest_key(&name)),
            Some(name.as_str())
        );
        assert_eq!(
            inflight_file(&inflight_part_key(&name, "a1", 7)),
            Some(name.as_str())
        );
        assert!(validate_key(&inflight_part_key(&name, "a1", 7)).is_ok());
        for other in [
            nar.as_str(),
            "inflight/",
            "inflight",
            "inflightx/y/0",
            "inflight//0",
        ] {
            assert_eq!(inflight_file(other), None, "{other}");
        }
    }

    #[test]
    fn extras_are_keyed_by_a_hash_of_their_names() {
        let k = Extra::Log.key("abc-hello-2.12.drv").expect("valid");
        assert!(k.starts_with("log/") && validate_key(&k).is_ok());
        assert_eq!(
            Extra::Realisations
                .key("sha256:0abc!out.doi")
                .map(|k| k.len()),
            Some("realisations/".len() + 52)
        );
        for bad in ["", "../x", "a\\b", "a%2f", "a%2e%2e", "a b"] {
            assert_eq!(Extra::Log.key(bad), None, "{bad:?}");
        }
        assert_ne!(Extra::Log.key("x"), Extra::BuildTrace.key("x"));
    }
}
