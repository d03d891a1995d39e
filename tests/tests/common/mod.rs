//! Shared pieces of the cross-process tests: the `nixcache` binary on a free port, a real upstream
//! cache made by Nix, static and deliberately faulty upstream servers, and the Nix client.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset

pub mod cluster;
pub mod faulty;
pub mod fixture;
pub mod image;
pub mod nixes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use cluster::Cluster;
pub use faulty::{FaultyUpstream, Mode};
pub use fixture::{fixture, Fixture};

/// The `nixcache` binary of this workspace (built by `cargo build --workspace` before the tests),
/// or `NIXCACHE_BIN`.
pub fn nixcache_bin() -> PathBuf {
    workspace_bin("nixcache", "NIXCACHE_BIN")
}

/// A binary of this workspace, next to the test binaries' directory, or the one `env` names.
pub fn workspace_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Nix settings of every client run: no default substituters (nor the wait for cache.nixos.org),
/// the new CLI, and no build users (a fresh Debian has no `nixbld` group).
pub const NIX_CONFIG: &str =
    "substituters =\nexperimental-features = nix-command\nbuild-users-group =";

pub use nixcache_tests::free_port;

/// Runs `nixcache keygen --name NAME --secret-key-file PATH`; returns the public key it prints.
pub fn keygen(name: &str, secret: &Path) -> String {
    let out = Command::new(nixcache_bin())
        .args(["keygen", "--name", name, "--secret-key-file"])
        .arg(secret)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Kills the child process when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `url` answers 200, or panics with `what` after `timeout`.
pub async fn wait_ready(url: &str, timeout: Duration, what: &str) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{what} did not become ready at {url} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `nixcache serve`.
pub struct Nixcache {
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    process: KillOnDrop,
}

impl Nixcache {
    /// Starts `nixcache serve` on a free port with `data_dir` and extra arguments; waits for /healthz.
    pub async fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(data_dir, args, &[]).await
    }

    pub async fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        // The port is picked free and then bound by the server: another process may take it in
        // between, so a start that fails to listen is tried again on another port.
        for _ in 0..3 {
            if let Some(server) = Self::try_start(data_dir, args, env).await {
                return server;
            }
        }
        panic!("nixcache could not listen on a free port three times");
    }

    async fn try_start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Option<Self> {
        let port = free_port();
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = data_dir.with_extension(format!("{port}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(nixcache_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("NIXCACHE_LOG")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = KillOnDrop(cmd.spawn().expect("spawn nixcache"));
        let url = format!("http://127.0.0.1:{port}");
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        let start = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{url}/healthz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = process.0.try_wait() {
                let text = logs();
                if text.contains("listening on") && text.contains("in use") {
                    return None;
                }
                panic!("nixcache exited with {status}:\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nixcache did not start:\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Self {
            url,
            port,
            data_dir: data_dir.to_path_buf(),
            log,
            process,
        })
    }

    /// Starts nixcache in front of the given upstream URL, trusting the fixture's upstream key.
    pub async fn in_front_of(data_dir: &Path, upstream: &str, key: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--upstream", upstream, "--upstream-key", key];
        args.extend_from_slice(extra);
        Self::start(data_dir, &args).await
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn public_key(&self) -> String {
        let r = reqwest::get(format!("{}/pubkey", self.url))
            .await
            .expect("pubkey");
        assert_eq!(r.status(), 200);
        r.text().await.expect("pubkey body").trim().to_string()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `timeout` for the process to exit;
    /// returns whether it exited successfully in time.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        let pid = self.process.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.process.0.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for the process to exit on its own; whether it exited successfully.
    pub fn wait_exit(mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Stops the server with SIGKILL.
    pub fn kill(self) {
        drop(self)
    }
}

/// A static file server (`python3 -m http.server`) for a directory.
pub struct StaticServer {
    pub url: String,
    _process: KillOnDrop,
}

impl StaticServer {
    pub async fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server (python3 is required)");
        let url = format!("http://127.0.0.1:{port}");
        let server = Self {
            url: url.clone(),
            _process: KillOnDrop(child),
        };
        wait_ready(
            &format!("{url}/nix-cache-info"),
            Duration::from_secs(20),
            "static server",
        )
        .await;
        server
    }
}

/// The Nix client, isolated: its own narinfo cache dir, no default substituters.
pub struct NixClient {
    xdg: tempfile::TempDir,
}

pub struct NixOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl NixClient {
    pub fn new() -> Self {
        Self {
            xdg: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `nix copy --from <cache> --to <store> <path>`, trusting only `trusted_key`, signatures required.
    pub async fn copy_closure(
        &self,
        cache: &str,
        store: &Path,
        path: &str,
        trusted_key: &str,
    ) -> NixOutput {
        self.copy_closure_with_netrc(cache, store, path, trusted_key, None)
            .await
    }

    /// `copy_closure`, with the credentials of a netrc file.
    pub async fn copy_closure_with_netrc(
        &self,
        cache: &str,
        store: &Path,
        path: &str,
        trusted_key: &str,
        netrc: Option<&Path>,
    ) -> NixOutput {
        let mut cmd = tokio::process::Command::new("nix");
        cmd.args(["copy", "--from", cache, "--to"])
            .arg(store)
            .arg(path)
            .args([
                "--option",
                "trusted-public-keys",
                trusted_key,
                "--option",
                "require-sigs",
                "true",
            ]);
        self.run(cmd, netrc).await
    }

    /// `nix copy --to <cache> <path>` from the local store, with the credentials of a netrc file.
    pub async fn push(&self, cache: &str, path: &str, netrc: Option<&Path>) -> NixOutput {
        let mut cmd = tokio::process::Command::new("nix");
        cmd.args(["copy", "--to", cache, path]);
        self.run(cmd, netrc).await
    }

    async fn run(&self, mut cmd: tokio::process::Command, netrc: Option<&Path>) -> NixOutput {
        if let Some(netrc) = netrc {
            cmd.arg("--option").arg("netrc-file").arg(netrc);
        }
        let out = cmd
            .env("XDG_CACHE_HOME", self.xdg.path())
            .env("NIX_CONFIG", NIX_CONFIG)
            .output()
            .await
            .expect("running nix (nix-bin is required)");
        NixOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Store paths present in a chroot store made by `nix copy --to DIR`.
pub fn store_contents(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("nix/store"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| !n.starts_with('.'));
    v.sort();
    v
}

/// `/metrics` of `url`.
pub async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body")
}

/// The value of the sample `name` carrying every one of `labels` (`key="value"`) in a metrics text.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .find(|l| {
            let (series, _) = l.split_once(' ').unwrap_or_default();
            series.split('{').next() == Some(name) && labels.iter().all(|x| series.contains(x))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// GET `url`: its status and body text.
pub async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// GETs a path's narinfo (which must be there) and then its NAR through the cache at `base`:
/// the NAR's status and, when it arrived whole, its body.
pub async fn fetch_nar(base: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, text) = get_text(&format!("{base}/{}.narinfo", Fixture::hash_of(path))).await;
    assert_eq!(status, 200, "narinfo of {path}");
    let r = reqwest::get(format!("{base}/{}", Fixture::nar_url(&text)))
        .await
        .expect("nar");
    let status = r.status().as_u16();
    let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, body)
}
