//! Prometheus metrics, all prefixed `nixcache_`, labels bounded (route templates, methods,
//! statuses, results, upstream hosts; never paths or hashes).

use prometheus::core::Collector;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub narinfo_lookups: IntCounterVec,
    pub nar_requests: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_up: IntGaugeVec,
    pub upstream_circuit: IntCounterVec,
    pub nar_downloads: IntCounterVec,
    pub uploads: IntCounterVec,
    pub downloads_in_flight: IntGauge,
    pub downloads_queued: IntGauge,
    pub backend_errors: IntCounterVec,
    pub refused: IntCounterVec,
    pub token_reviews: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub lock_acquisitions: IntCounterVec,
    pub lock_wait: HistogramVec,
    pub lock_fallbacks: IntCounter,
    pub lock_extensions: IntCounterVec,
    pub lock_degraded: IntGauge,
    pub gc_runs: IntCounter,
    pub gc_evicted_narinfos: IntCounter,
    pub gc_evicted_nars: IntCounter,
    pub gc_evicted_bytes: IntCounter,
    pub gc_last_duration: Gauge,
    pub stored_nars: IntGauge,
    pub stored_bytes: IntGauge,
    pub tasks: IntCounterVec,
    pub tasks_running: IntGauge,
    pub local_cache_requests: IntCounterVec,
    pub local_cache_fills: IntCounterVec,
    pub local_cache_evictions: IntCounter,
    pub local_cache_bytes: IntGauge,
    pub local_cache_served_bytes: IntCounter,
}

/// Registers a collector; the names and labels here are fixed, so failure is a programming error.
fn reg<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric registration: {e}"));
    c
}

fn counters(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(
        r,
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(
        r,
        IntGauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

fn histograms(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    reg(
        r,
        HistogramVec::new(HistogramOpts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            http_requests: counters(&r, "nixcache_http_requests_total", "HTTP requests by route template, method and status", &["route", "method", "status"]),
            http_duration: histograms(&r, "nixcache_http_request_duration_seconds", "Time to the response head, by route template and method", &["route", "method"]),
            narinfo_lookups: counters(&r, "nixcache_narinfo_lookups_total", "narinfo requests by where they were answered from (memory, database, upstream) or why not (negative, miss)", &["result"]),
            nar_requests: counters(&r, "nixcache_nar_requests_total", "NAR requests by how they were served (storage, live, remote, miss, failed_recently)", &["result"]),
            upstream_requests: counters(&r, "nixcache_upstream_requests_total", "Requests to upstreams by upstream and kind (narinfo, nar, cache_info)", &["upstream", "kind"]),
            upstream_bytes: counters(&r, "nixcache_upstream_bytes_total", "Bytes received from upstreams (narinfo and NAR bodies)", &["upstream"]),
            upstream_errors: counters(&r, "nixcache_upstream_errors_total", "Failed upstream requests (timeouts, bad status, invalid or untrusted narinfos)", &["upstream", "kind"]),
            upstream_duration: histograms(&r, "nixcache_upstream_request_duration_seconds", "Time to an upstream's response head, by upstream and kind", &["upstream", "kind"]),
            upstream_up: reg(&r, IntGaugeVec::new(Opts::new("nixcache_upstream_up", "1 while an upstream is asked, 0 while it is skipped after failing (its circuit is open; half-open: one retry is under way)"), &["upstream"]).unwrap_or_else(|e| panic!("{e}"))),
            upstream_circuit: counters(&r, "nixcache_upstream_circuit_changes_total", "Changes of an upstream's circuit, by the state entered (open: skipped; half_open: one retry; closed: asked again)", &["upstream", "state"]),
            nar_downloads: counters(&r, "nixcache_nar_downloads_total", "NAR downloads from upstreams by outcome (ok, already_stored, failed, verify_failed, queue_timeout, no_space)", &["result"]),
            uploads: counters(&r, "nixcache_uploads_total", "Accepted uploads by kind (nar, narinfo, other)", &["kind"]),
            downloads_queued: gauge(&r, "nixcache_downloads_queued", "NAR downloads waiting for one of the --max-downloads slots"),
            downloads_in_flight: gauge(&r, "nixcache_downloads_in_flight", "NAR downloads running in this process"),
            backend_errors: counters(&r, "nixcache_backend_errors_total", "Errors from storage, database or locks", &["backend"]),
            backend_up: reg(&r, IntGaugeVec::new(Opts::new("nixcache_backend_up", "1 while a backend (database, storage) answers this process's checks, 0 while it does not"), &["backend"]).unwrap_or_else(|e| panic!("{e}"))),
            refused: counters(&r, "nixcache_refused_total", "Input refused by source (upstream, upload, client) and reason", &["source", "reason"]),
            token_reviews: counters(&r, "nixcache_token_reviews_total", "TokenReviews asked of the Kubernetes API (answers reused are not counted) by answer (service_account, other, invalid, failed), and vouched_before: requests let through on an earlier answer while none could be had", &["answer"]),
            lock_acquisitions: counters(&r, "nixcache_lock_acquisitions_total", "Lock acquisitions by result (acquired, busy, error)", &["result"]),
            lock_wait: histograms(&r, "nixcache_lock_wait_seconds", "Time spent acquiring locks, by result", &["result"]),
            lock_extensions: counters(&r, "nixcache_lock_extensions_total", "Extensions of held locks (long downloads, GC) by result (ok, failed, lost)", &["result"]),
            lock_fallbacks: counter(&r, "nixcache_lock_fallbacks_total", "Lock acquisitions made while the distributed lock was unavailable (in-process, or refused with --lock-strict)"),
            lock_degraded: gauge(&r, "nixcache_lock_degraded", "1 while the distributed lock is unavailable and locking is in-process only (or refused)"),
            gc_runs: counter(&r, "nixcache_gc_runs_total", "GC passes run by this process"),
            gc_evicted_narinfos: counter(&r, "nixcache_gc_evicted_narinfos_total", "narinfos removed by GC"),
            gc_evicted_nars: counter(&r, "nixcache_gc_evicted_nars_total", "NARs deleted by GC"),
            gc_evicted_bytes: counter(&r, "nixcache_gc_evicted_bytes_total", "Bytes of NARs deleted by GC"),
            gc_last_duration: reg(&r, Gauge::new("nixcache_gc_last_duration_seconds", "Duration of this process's last GC pass").unwrap_or_else(|e| panic!("{e}"))),
            stored_nars: gauge(&r, "nixcache_stored_nars", "NARs in storage (as the database records them: counted on commit and eviction, set from the database every minute)"),
            stored_bytes: gauge(&r, "nixcache_stored_bytes", "Bytes of NARs in storage, each NAR counted once (counted on commit and eviction, set from the database every minute)"),
            tasks: counters(&r, "nixcache_tasks_total", "Admin tasks by kind and event in this process (claimed, succeeded, failed, handed_back, taken_over)", &["kind", "event"]),
            tasks_running: gauge(&r, "nixcache_tasks_running", "Admin tasks this process runs now"),
            local_cache_requests: counters(&r, "nixcache_local_cache_requests_total", "NAR reads from the node-local tier, by result: hit, miss (not held), dropped (held, but no narinfo names it any more)", &["result"]),
            local_cache_fills: counters(&r, "nixcache_local_cache_fills_total", "NARs put into the node-local tier, by source (download, storage) and result (stored, rejected: the bytes did not match the name's hash)", &["source", "result"]),
            local_cache_evictions: counter(&r, "nixcache_local_cache_evictions_total", "NARs the node-local tier dropped to stay within --local-cache-size"),
            local_cache_bytes: gauge(&r, "nixcache_local_cache_bytes", "Bytes of NARs held in the node-local tier"),
            local_cache_served_bytes: counter(&r, "nixcache_local_cache_served_bytes_total", "Bytes of NARs served from the node-local tier"),
            registry: r,
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
