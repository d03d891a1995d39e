//! A real Kubernetes API server of its own (kube-apiserver 1.20 with etcd, no controllers, no
//! kubelet), started by `scripts/start-kube-apiserver.sh` on free loopback ports, and real helm.
//! The binaries come from `scripts/build-kube-apiserver.sh` and `scripts/get-helm.sh` (run by
//! `scripts/provision.sh`); `KUBE_APISERVER` and `HELM` name other copies.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct KubeApiServer {
    pub kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

fn tool(env: &str, default: &str, script: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} is missing: run scripts/{script} (scripts/provision.sh does), or set {env}",
        path.display()
    );
    path
}

/// The kube-apiserver binary.
pub fn kube_apiserver_bin() -> PathBuf {
    tool(
        "KUBE_APISERVER",
        "/opt/kube-apiserver/kube-apiserver",
        "build-kube-apiserver.sh",
    )
}

/// The helm binary.
pub fn helm_bin() -> PathBuf {
    tool("HELM", "/opt/helm/helm", "get-helm.sh")
}

impl KubeApiServer {
    pub fn start() -> Self {
        let bin = kube_apiserver_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        // Ports picked free may be taken before etcd or the API server binds them: try others.
        let mut last = String::new();
        for attempt in 0..3 {
            let run = dir.path().join(format!("run{attempt}"));
            let ports = [crate::free_port(), crate::free_port(), crate::free_port()];
            let out = Command::new("bash")
                .arg(scripts_dir().join("start-kube-apiserver.sh"))
                .arg(&bin)
                .arg(&run)
                .args(ports.map(|p| p.to_string()))
                .output()
                .expect("run start-kube-apiserver.sh");
            if out.status.success() {
                return Self {
                    kubeconfig: run.join("kubeconfig"),
                    dir,
                };
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            kill_pids(&run);
        }
        panic!("kube-apiserver did not start: {last}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn kill_pids(run: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().extension().is_some_and(|x| x == "pid") {
            if let Ok(pid) = std::fs::read_to_string(e.path()) {
                let pid = pid.trim().to_string();
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                kill_pids(&e.path());
            }
        }
    }
}
