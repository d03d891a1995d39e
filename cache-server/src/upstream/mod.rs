//! Upstream binary caches, asked in priority order: [`Upstream`] decides what their answers mean,
//! through a [`Transport`] (HTTP(S) in the server, memory in tests).

pub mod cache;
pub mod origin;
pub mod transport;

pub use cache::{Lookup, Upstream, UpstreamConfig, UpstreamError};
pub use transport::{HttpTransport, Transport, TransportError};

use std::sync::Arc;

/// All configured upstreams.
#[derive(Clone)]
pub struct Upstreams {
    all: Arc<Vec<Arc<Upstream>>>,
}

impl Upstreams {
    pub fn new(all: Vec<Arc<Upstream>>) -> Self {
        Self { all: Arc::new(all) }
    }

    /// The upstreams, lowest priority number first; ties keep configuration order.
    pub fn in_order(&self) -> Vec<Arc<Upstream>> {
        let mut v: Vec<_> = self.all.iter().cloned().collect();
        v.sort_by_key(|u| u.priority());
        v
    }

    pub fn all(&self) -> &[Arc<Upstream>] {
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
