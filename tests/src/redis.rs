//! A Redis server of its own (Debian's `redis-server`), nothing kept on disk.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    host: String,
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// A server on loopback.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// A server listening on `host` as well as loopback (pods of the test cluster reach the
    /// host's `KubeCluster::HOST_IP`).
    pub fn start_on(host: &str) -> Self {
        let mut r = Self {
            host: host.to_string(),
            port: crate::free_port(),
            child: None,
        };
        // A picked free port may be taken before the server binds it: try another one.
        for _ in 0..3 {
            if r.try_resume() {
                return r;
            }
            r.stop();
            r.port = crate::free_port();
        }
        r.resume();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    /// Kills the server (SIGKILL); `resume` starts a fresh one on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as in a
    /// stall of the host or the network. `unpause` lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn unpause(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "redis-server did not start on port {}",
            self.port
        );
    }

    fn try_resume(&mut self) -> bool {
        let mut bind = vec!["127.0.0.1"];
        if self.host != "127.0.0.1" {
            // No password, and reachable from pods: protected mode would refuse them.
            bind.extend([self.host.as_str(), "--protected-mode", "no"]);
        }
        let child = Command::new("redis-server")
            .arg("--bind")
            .args(bind)
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server: {e} (apt-get install redis-server; scripts/provision.sh does)"
                )
            });
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
