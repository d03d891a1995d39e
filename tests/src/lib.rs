//! Real services for tests, started on loopback on free ports in temporary directories and
//! stopped when dropped: PostgreSQL, Redis, SeaweedFS (S3), a Kubernetes API server. Used by the cross-process tests here and by the
//! conformance suites of the cache server's seams.

pub mod kube;
pub mod postgres;
pub mod redis;
pub mod seaweedfs;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
