//! Real Kubernetes v1.20 for the tests, and real helm:
//! - [`KubeApiServer`]: an API server with etcd alone (no controllers, no kubelet), started by
//!   `scripts/start-kube-apiserver.sh` on free loopback ports, for the operator's API tests;
//! - [`KubeCluster`]: a whole single-node cluster (`scripts/cluster-up.sh`) whose kubelet runs
//!   pods, for the end-to-end tests.
//!
//! The binaries come from `scripts/build-kubernetes.sh` and `scripts/get-helm.sh` (run by
//! `scripts/provision.sh`); `KUBE_APISERVER`, `KUBE_NODE_DIR`, `KUBECTL` and `HELM` name other
//! copies.

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
        "build-kubernetes.sh",
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

    /// Kills the API server (etcd stays): its clients' requests fail from now on.
    pub fn kill_api_server(&self) {
        let run = self.kubeconfig.parent().expect("run dir");
        let pid = std::fs::read_to_string(run.join("apiserver.pid")).expect("apiserver.pid");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill the API server");
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

/// The directory of the test cluster's node binaries and `pause`.
pub fn kube_node_dir() -> PathBuf {
    tool("KUBE_NODE_DIR", "/opt/kube-node", "build-kubernetes.sh")
}

/// The kubectl binary (Debian's, or the one `scripts/get-helm.sh` puts beside helm).
pub fn kubectl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return PathBuf::from(p);
    }
    ["/usr/bin/kubectl", "/opt/helm/kubectl"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("kubectl is missing: run scripts/get-helm.sh (scripts/provision.sh does)")
        })
}

/// A real single-node cluster (`scripts/cluster-up.sh`): control plane, controllers, scheduler,
/// a kubelet running pods in containerd, kube-proxy. Taken down (`scripts/cluster-down.sh`) when
/// dropped. One runs at a time on a machine.
pub struct KubeCluster {
    pub kubeconfig: PathBuf,
    /// How long `cluster-up.sh` took, until the node was Ready.
    pub started_in: std::time::Duration,
    run: PathBuf,
    _dir: tempfile::TempDir,
}

impl KubeCluster {
    /// The host's address on the link to the node: pods reach host processes listening on it.
    pub const HOST_IP: &'static str = "10.200.0.1";

    /// Starts the cluster with these docker-archive image tars in its containerd.
    pub fn start(images: &[&Path]) -> Self {
        let apiserver = kube_apiserver_bin();
        let node = kube_node_dir();
        let kubectl = kubectl_bin();
        let dir = tempfile::Builder::new()
            .prefix("nixcache-k8s")
            .tempdir()
            .expect("tempdir");
        let mut last = String::new();
        for attempt in 0..3 {
            let run = dir.path().join(format!("run{attempt}"));
            let ports = [crate::free_port(), crate::free_port(), crate::free_port()];
            let t0 = std::time::Instant::now();
            let out = Command::new("bash")
                .arg(scripts_dir().join("cluster-up.sh"))
                .arg(&run)
                .args(ports.map(|p| p.to_string()))
                .args(images)
                .env("KUBE_APISERVER", &apiserver)
                .env("KUBE_NODE_DIR", &node)
                .env("KUBECTL", &kubectl)
                .env("K8S_OWNER", std::process::id().to_string())
                .output()
                .expect("run cluster-up.sh");
            if out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr).trim_end());
                return Self {
                    kubeconfig: run.join("admin.kubeconfig"),
                    started_in: t0.elapsed(),
                    run,
                    _dir: dir,
                };
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail_logs(&run)
            );
            down(&run);
        }
        panic!("the test cluster did not start: {last}");
    }

    /// `kubectl` against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(kubectl_bin())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl")
    }

    /// `kubectl`, which must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of these manifests.
    pub fn apply(&self, yaml: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(kubectl_bin())
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write manifests");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply: {}{}\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What a failed assertion should show: every object of the namespace, the events, and the
    /// tails of the node's and control plane's logs.
    pub fn diagnose(&self) -> String {
        let mut s = String::new();
        for args in [
            &[
                "get",
                "all,nixcache,cm,secret,sa,pvc,lease",
                "-A",
                "-o",
                "wide",
            ][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
            &["describe", "pods", "-A"][..],
        ] {
            let out = self.kubectl(args);
            s.push_str(&format!(
                "$ kubectl {}\n{}{}\n",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        s + &tail_logs(&self.run)
    }

    /// The cluster's run directory (logs under `logs/`).
    pub fn run_dir(&self) -> &Path {
        &self.run
    }
}

fn tail_logs(run: &Path) -> String {
    let mut s = String::new();
    for name in [
        "kubelet",
        "containerd",
        "kube-controller-manager",
        "apiserver",
    ] {
        let text = std::fs::read_to_string(run.join("logs").join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        s.push_str(&format!(
            "--- {name}.log (tail)\n{}\n",
            lines[from..].join("\n")
        ));
    }
    s
}

fn down(run: &Path) {
    let _ = Command::new("bash")
        .arg(scripts_dir().join("cluster-down.sh"))
        .arg(run)
        .output();
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // A run that is failing keeps its logs for a look: NIXCACHE_KEEP_CLUSTER_LOGS=1.
        if std::thread::panicking() && std::env::var_os("NIXCACHE_KEEP_CLUSTER_LOGS").is_some() {
            let _ = Command::new("bash")
                .arg(scripts_dir().join("cluster-down.sh"))
                .arg(&self.run)
                .arg("--keep")
                .output();
            let _ = std::fs::rename(&self.run, std::env::temp_dir().join("nixcache-k8s-failed"));
            return;
        }
        down(&self.run);
    }
}
