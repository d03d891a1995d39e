//! The operator's Prometheus metrics, served on `/metrics`.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub gc_jobs_created: IntCounter,
    pub leader: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "nixcache_operator_reconciles_total",
                "Reconciles of NixCache resources, by result (ok, error)",
            ),
            &["result"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "nixcache_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        let gc_jobs_created = IntCounter::new(
            "nixcache_operator_gc_jobs_created_total",
            "GC Jobs created for scheduled runs",
        )?;
        let leader = IntGauge::new(
            "nixcache_operator_leader",
            "1 while this process holds the leader Lease and reconciles",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(gc_jobs_created.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        // Both results exist from the start, so a rate over them is defined.
        reconciles.with_label_values(&["ok"]);
        reconciles.with_label_values(&["error"]);
        Ok(Self {
            registry,
            reconciles,
            reconcile_duration,
            gc_jobs_created,
            leader,
        })
    }

    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        self.reconciles
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
