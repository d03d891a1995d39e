//! Upstream binary caches, asked in priority order, all at once or one after another
//! ([`Upstreams::narinfo_answers`]): [`Upstream`] decides what their answers mean, through a
//! [`Transport`] (HTTP(S) in the server, memory in tests), and skips one that keeps failing
//! ([`breaker`]).

pub mod breaker;
pub mod cache;
pub mod credentials;
pub mod origin;
pub mod transport;

pub use cache::{Lookup, Upstream, UpstreamConfig, UpstreamError};
pub use transport::{HttpTransport, Transport, TransportError};

use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt};

pub use crate::config::LookupOrder;
use crate::nix::StoreHash;

/// All configured upstreams.
#[derive(Clone)]
pub struct Upstreams {
    all: Arc<Vec<Arc<Upstream>>>,
    lookup: LookupOrder,
}

impl Upstreams {
    pub fn new(all: Vec<Arc<Upstream>>, lookup: LookupOrder) -> Self {
        Self {
            all: Arc::new(all),
            lookup,
        }
    }

    /// Each upstream's answer for `hash`'s narinfo, in priority order. In parallel, every
    /// upstream is asked at once and an answer is given as soon as it and every better-priority
    /// one have come; in sequence, the next is asked only when the one before has answered. The
    /// caller stops reading at the answer it takes; dropping the stream cancels the requests
    /// still under way.
    pub fn narinfo_answers(
        &self,
        hash: StoreHash,
    ) -> BoxStream<'static, (Arc<Upstream>, Result<Lookup, UpstreamError>)> {
        let order = self.in_order();
        let at_once = match self.lookup {
            LookupOrder::Parallel => order.len().max(1),
            LookupOrder::Sequential => 1,
        };
        stream::iter(order)
            .map(move |u| async move {
                let answer = u.narinfo(&hash).await;
                (u, answer)
            })
            .buffered(at_once)
            .boxed()
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

    /// How a miss asks them.
    pub fn lookup(&self) -> LookupOrder {
        self.lookup
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
        UpstreamError::Skipped { .. } => "skipped",
    }
}
