//! Replicas sharing PostgreSQL, S3 (SeaweedFS) and three Redis masters.

use nixcache_tests::postgres::Postgres;
use nixcache_tests::redis::Redis;
use nixcache_tests::seaweedfs::{self, SeaweedFs};

use super::Nixcache;

/// The shared services and a signing key all replicas use.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub pg: Postgres,
    pub s3: SeaweedFs,
    pub redis: Vec<Redis>,
    pub key_file: String,
}

impl Cluster {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let key_file = tmp.path().join("signing.sec");
        super::keygen("cluster-1", &key_file);
        Self {
            pg: Postgres::start(),
            s3: SeaweedFs::start(),
            redis: vec![Redis::start(), Redis::start(), Redis::start()],
            key_file: key_file.to_string_lossy().into_owned(),
            tmp,
        }
    }

    pub async fn replica(
        &self,
        n: usize,
        upstream: &str,
        upstream_key: &str,
        extra: &[&str],
    ) -> Nixcache {
        let pg = self.pg.url();
        let redis: Vec<String> = self.redis.iter().map(Redis::url).collect();
        let mut args = vec![
            "--upstream",
            upstream,
            "--upstream-key",
            upstream_key,
            "--signing-key-file",
            &self.key_file,
            "--database-url",
            &pg,
            "--storage-url",
            "s3://nixcache/replicas",
            "--s3-endpoint",
            &self.s3.endpoint,
        ];
        for r in &redis {
            args.extend(["--redis", r.as_str()]);
        }
        args.extend_from_slice(extra);
        let env = [
            ("AWS_ACCESS_KEY_ID", seaweedfs::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", seaweedfs::SECRET_KEY),
        ];
        Nixcache::start_with_env(&self.tmp.path().join(format!("replica-{n}")), &args, &env).await
    }
}
