//! Prometheus metrics, all prefixed `nixcache_`, labels bounded (routes, results, upstream hosts).

use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub narinfo_lookups: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub nar_downloads: IntCounterVec,
    pub nar_requests: IntCounterVec,
    pub backend_errors: IntCounterVec,
    pub lock_fallbacks: prometheus::IntCounter,
    pub gc_runs: prometheus::IntCounter,
    pub gc_evicted_nars: prometheus::IntCounter,
    pub gc_evicted_bytes: prometheus::IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn plain(registry: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c =
        prometheus::IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            http_requests: counter(
                &registry,
                "nixcache_http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            ),
            narinfo_lookups: counter(
                &registry,
                "nixcache_narinfo_lookups_total",
                "narinfo requests by where they were answered from",
                &["result"],
            ),
            upstream_errors: counter(
                &registry,
                "nixcache_upstream_errors_total",
                "Failed upstream requests (timeouts, bad status, invalid or untrusted narinfos)",
                &["upstream", "kind"],
            ),
            nar_downloads: counter(
                &registry,
                "nixcache_nar_downloads_total",
                "NAR downloads from upstreams by outcome",
                &["result"],
            ),
            nar_requests: counter(
                &registry,
                "nixcache_nar_requests_total",
                "NAR requests by how they were served",
                &["result"],
            ),
            backend_errors: counter(
                &registry,
                "nixcache_backend_errors_total",
                "Errors from storage, database or locks",
                &["backend"],
            ),
            lock_fallbacks: plain(
                &registry,
                "nixcache_lock_fallbacks_total",
                "Lock acquisitions made while the distributed lock was unavailable (in-process, or refused with --lock-strict)",
            ),
            gc_runs: plain(&registry, "nixcache_gc_runs_total", "GC passes run by this process"),
            gc_evicted_nars: plain(&registry, "nixcache_gc_evicted_nars_total", "NARs deleted by GC"),
            gc_evicted_bytes: plain(&registry, "nixcache_gc_evicted_bytes_total", "Bytes of NARs deleted by GC"),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
