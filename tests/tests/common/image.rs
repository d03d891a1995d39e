//! The project's container image (`Containerfile`), built with podman from this workspace's
//! binaries on a local Debian base (`scripts/build-base-image.sh`; no registry is reachable).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub const BASE: &str = "localhost/nixcache-base:bookworm";

pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", repo().join("tests/containers.conf"))
        .output()
        .unwrap_or_else(|e| {
            panic!("podman: {e} (apt-get install podman runc; scripts/provision.sh does)")
        })
}

pub fn ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image, built from this workspace's binaries; removed when dropped.
pub struct Image {
    pub tag: String,
}

impl Image {
    pub fn build() -> Image {
        let base = Command::new("bash")
            .arg(repo().join("scripts/build-base-image.sh"))
            .arg(BASE)
            .env("CONTAINERS_CONF", repo().join("tests/containers.conf"))
            .output()
            .expect("build-base-image.sh");
        assert!(
            base.status.success(),
            "the base image: {}",
            String::from_utf8_lossy(&base.stderr)
        );
        let context = tempfile::tempdir().expect("tempdir");
        for (bin, env) in [
            ("nixcache", "NIXCACHE_BIN"),
            ("nixcache-operator", "NIXCACHE_OPERATOR_BIN"),
        ] {
            // Without debug info: a test build is ~300 MB a binary with it, ~10x less without,
            // and the image is saved and imported into the test cluster's containerd.
            let from = super::workspace_bin(bin, env);
            let to = context.path().join(bin);
            let out = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&from)
                .arg(&to)
                .output()
                .expect("objcopy (binutils)");
            assert!(
                out.status.success(),
                "objcopy --strip-debug {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tag = format!("localhost/nixcache-test:{}", std::process::id());
        let containerfile = repo().join("Containerfile");
        ok(&[
            "build",
            "-q",
            "--pull=never",
            "-f",
            containerfile.to_str().expect("utf-8"),
            "--build-arg",
            &format!("BASE={BASE}"),
            "-t",
            &tag,
            context.path().to_str().expect("utf-8"),
        ]);
        Image { tag }
    }

    /// Writes the image as a docker-archive tar (what containerd imports).
    pub fn save(&self, to: &Path) {
        save(&self.tag, to);
    }
}

/// Writes a podman image as a docker-archive tar.
pub fn save(tag: &str, to: &Path) {
    let _ = std::fs::remove_file(to);
    ok(&[
        "save",
        "-q",
        "--format",
        "docker-archive",
        "-o",
        to.to_str().expect("utf-8"),
        tag,
    ]);
}

/// The image with the real Nix client (nix-bin) that the test cluster's client pods run, built
/// once by scripts/provision.sh (which names its packages).
pub const NIX_CLIENT: &str = "localhost/nixcache-nix:bookworm";

pub fn nix_client_image() -> &'static str {
    assert!(
        podman(&["image", "exists", NIX_CLIENT]).status.success(),
        "the image {NIX_CLIENT} is missing: run scripts/provision.sh"
    );
    NIX_CLIENT
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "-f", &self.tag]);
    }
}
