//! A real upstream binary cache made by Nix, built once per test binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// The signed cache (`nix copy --to file://`).
    pub cache: PathBuf,
    /// The same paths signed only by an untrusted key.
    pub cache_untrusted: PathBuf,
    /// The upstream's public key (`name:base64`).
    pub key: String,
    pub untrusted_key: String,
    /// The closure's store paths, the top one first.
    pub paths: Vec<String>,
}

impl Fixture {
    pub fn top(&self) -> &str {
        &self.paths[0]
    }

    /// Hash part of a store path.
    pub fn hash_of(path: &str) -> &str {
        &path["/nix/store/".len().."/nix/store/".len() + 32]
    }

    /// The upstream narinfo of a path, as text.
    pub fn narinfo(&self, path: &str) -> String {
        std::fs::read_to_string(self.cache.join(format!("{}.narinfo", Self::hash_of(path))))
            .expect("narinfo")
    }

    /// The NAR URL a narinfo names.
    pub fn nar_url(narinfo: &str) -> String {
        narinfo
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("URL line")
            .to_string()
    }

    /// The path with the largest NAR (the random "big" file) and its NAR's relative URL.
    pub fn big(&self) -> (String, String) {
        let mut best: Option<(u64, String, String)> = None;
        for p in &self.paths {
            let info = self.narinfo(p);
            let url = Self::nar_url(&info);
            let size = std::fs::metadata(self.cache.join(&url)).expect("nar").len();
            if best.as_ref().is_none_or(|(s, _, _)| size > *s) {
                best = Some((size, p.clone(), url));
            }
        }
        let (_, p, u) = best.expect("paths");
        (p, u)
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-upstream-cache.sh")
}

/// The fixture of this test binary (built on first use, about a few seconds).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let out = std::process::Command::new("bash")
            .arg(script())
            .arg(&root)
            .arg("upstream-test-1")
            .arg("4")
            .output()
            .expect("running make-upstream-cache.sh");
        assert!(
            out.status.success(),
            "make-upstream-cache.sh failed (needs nix-bin and root):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |f: &str| {
            std::fs::read_to_string(root.join(f))
                .expect(f)
                .trim()
                .to_string()
        };
        Fixture {
            cache: root.join("cache"),
            cache_untrusted: root.join("cache-untrusted"),
            key: read("public.key"),
            untrusted_key: read("untrusted.public"),
            paths: read("paths").lines().map(str::to_string).collect(),
            root,
            _dir: dir,
        }
    })
}
