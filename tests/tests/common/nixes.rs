//! The two Nix clients the end-to-end tests run: Debian bookworm's (2.8, on this machine) and
//! Debian sid's (2.34, in a debootstrap chroot that `scripts/provision.sh` makes under /opt). The
//! chroot has its own `/nix` and shares loopback, so both talk to nixcache on 127.0.0.1; files a
//! client reads (netrc files, stores) are made under its root.
//!
//! Builds run without a sandbox and without build users, as root: nothing here is untrusted.

use std::path::{Path, PathBuf};

use super::NIX_CONFIG;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nix {
    /// `nix-bin` of Debian bookworm, on the host.
    Bookworm,
    /// `nix-bin` of Debian sid, in its chroot.
    Sid,
}

pub struct NixOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The chroot of sid's Nix (`NIX_SID_ROOT`, else where provisioning puts it).
pub fn sid_root() -> PathBuf {
    std::env::var_os("NIX_SID_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nix-sid"))
}

/// The chroot, which must hold sid's Nix.
fn chroot_root() -> PathBuf {
    let root = sid_root();
    assert!(
        root.join("usr/bin/nix").exists(),
        "no Nix chroot at {} (scripts/provision.sh makes it)",
        root.display()
    );
    root
}

/// Runs a program in the chroot, in a mount namespace of its own with `/proc`, `/dev` and
/// `/dev/pts` bound in: the mounts end with it, so nothing of the host stays mounted under /opt.
const IN_CHROOT: &str = r#"root=$0
for d in proc dev dev/pts; do mount --bind "/$d" "$root/$d" || exit 97; done
exec chroot "$root" "$@""#;

impl Nix {
    pub const ALL: [Nix; 2] = [Nix::Bookworm, Nix::Sid];

    /// The root this client sees as `/`.
    fn root(self) -> PathBuf {
        match self {
            Nix::Bookworm => PathBuf::from("/"),
            Nix::Sid => chroot_root(),
        }
    }

    /// A scratch directory the client can read and write: the host path, and the path the
    /// client names it by.
    pub fn tempdir(self) -> Scratch {
        let base = self.root().join("tmp");
        std::fs::create_dir_all(&base).expect("tmp");
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let inside =
            PathBuf::from("/").join(dir.path().strip_prefix(self.root()).expect("under root"));
        Scratch { dir, inside }
    }

    /// Runs `nix ARGS` (or another Nix command, `program`), isolated: no default substituters, no
    /// build users, no sandbox, its own cache directory.
    pub async fn run(self, program: &str, args: &[&str]) -> NixOutput {
        let config = format!("{NIX_CONFIG}\nsandbox = false");
        // Its own narinfo cache: what another run looked up is not remembered.
        let xdg = self.tempdir();
        let mut cmd = match self {
            Nix::Bookworm => tokio::process::Command::new(program),
            Nix::Sid => {
                let mut c = tokio::process::Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--fork",
                    "--",
                    "sh",
                    "-c",
                ])
                .arg(IN_CHROOT)
                .arg(self.root())
                .arg(program);
                c
            }
        };
        cmd.args(args)
            .env("NIX_CONFIG", config)
            .env("XDG_CACHE_HOME", xdg.inside("cache"))
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin");
        let out = cmd.output().await.expect("running nix");
        NixOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `nix --version`'s version.
    pub async fn version(self) -> String {
        let out = self.run("nix", &["--version"]).await;
        assert!(out.success, "nix --version: {}", out.stderr);
        out.stdout
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string()
    }
}

/// A directory both this process and a Nix client reach.
pub struct Scratch {
    dir: tempfile::TempDir,
    inside: PathBuf,
}

impl Scratch {
    /// Where this process finds `name`.
    pub fn host(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// How the client names `name`.
    pub fn inside(&self, name: &str) -> String {
        self.inside.join(name).display().to_string()
    }
}
