//! Upstream binary caches, asked in priority order.

pub mod http;
pub mod origin;

pub use http::{HttpUpstream, UpstreamConfig, UpstreamError};

use std::sync::Arc;

/// All configured upstreams.
#[derive(Clone)]
pub struct Upstreams {
    all: Arc<Vec<Arc<HttpUpstream>>>,
}

impl Upstreams {
    pub fn new(all: Vec<Arc<HttpUpstream>>) -> Self {
        Self { all: Arc::new(all) }
    }

    /// The upstreams, lowest priority number first; ties keep configuration order.
    pub fn in_order(&self) -> Vec<Arc<HttpUpstream>> {
        let mut v: Vec<_> = self.all.iter().cloned().collect();
        v.sort_by_key(|u| u.priority());
        v
    }

    pub fn all(&self) -> &[Arc<HttpUpstream>] {
        &self.all
    }
}

/// A bounded label for an upstream error, for metrics.
pub fn upstream_error_kind(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Timeout { .. } => "timeout",
        UpstreamError::Http { .. } => "connection",
        UpstreamError::Status { .. } => "status",
        UpstreamError::Invalid { .. } => "invalid",
        UpstreamError::Untrusted { .. } => "untrusted",
        UpstreamError::Elsewhere { .. } => "nar_url",
    }
}
