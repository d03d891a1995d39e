//! An upstream binary cache: what its answers mean. A narinfo is found only when it is for the
//! path asked for, in this store directory, and signed by a trusted key; a NAR only at a URL
//! under the upstream's base. The requests go through its [`Transport`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::Url;

use super::breaker::Breaker;
use super::credentials::Credentials;
use super::origin;
use super::transport::{Answer, HttpTransport, Transport, TransportError};
use crate::nix::narinfo::MAX_NARINFO_BYTES;
use crate::nix::{CacheInfo, NarInfo, StoreHash};

/// Priority of an upstream that neither configuration nor its `nix-cache-info` sets (Nix's default).
pub const DEFAULT_PRIORITY: u32 = 50;
const UNKNOWN_PRIORITY: u32 = u32::MAX;

pub use nixcache_settings::config::{BreakerConfig, UpstreamConfig};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: unexpected status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: invalid narinfo: {message}")]
    Invalid { url: String, message: String },
    #[error("{url}: no signature by a trusted key")]
    Untrusted { url: String },
    #[error("{url}: NAR URL {nar_url} is not under this upstream")]
    Elsewhere { url: String, nar_url: String },
    #[error("{url}: skipped while it fails (until its backoff is over)")]
    Skipped { url: String },
}

/// A NAR response whose headers have arrived.
pub struct NarDownload {
    /// `Content-Length`, when the upstream sent one.
    pub length: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

pub struct Upstream {
    metrics: crate::metrics::Metrics,
    config: UpstreamConfig,
    /// `host[:port]`, for logs and metrics.
    label: String,
    breaker: Breaker,
    transport: Arc<dyn Transport>,
    first_byte_timeout: Duration,
    store_dir: String,
    learned_priority: AtomicU32,
}

/// What a narinfo lookup found.
pub enum Lookup {
    Found(Box<NarInfo>),
    /// The upstream answered that it does not have it.
    Missing,
}

impl Upstream {
    /// An upstream over HTTP(S) with its own client, built from `client` (user agent, timeouts)
    /// with this upstream's redirect rules ([`super::origin`]).
    pub fn http(
        config: UpstreamConfig,
        client: reqwest::ClientBuilder,
        first_byte_timeout: Duration,
        store_dir: &str,
        breaker: BreakerConfig,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, reqwest::Error> {
        let refused = metrics.refused.with_label_values(&["upstream", "redirect"]);
        let mut client = client.redirect(origin::redirect_policy(
            &config.url,
            config.cross_origin_redirects,
            refused,
        ));
        if origin::needs_guarded_resolver(&config.url, config.cross_origin_redirects) {
            client = client.dns_resolver(origin::GuardedResolver::new(&config.url));
        }
        let credentials = config
            .credentials
            .clone()
            .map(|c| Credentials::new(c, &config.url));
        let transport = Arc::new(HttpTransport::new(
            client.build()?,
            config.url.clone(),
            credentials,
        ));
        Ok(Self::new(
            config,
            transport,
            first_byte_timeout,
            store_dir,
            breaker,
            metrics,
        ))
    }

    /// An upstream whose requests go through `transport`.
    pub fn new(
        config: UpstreamConfig,
        transport: Arc<dyn Transport>,
        first_byte_timeout: Duration,
        store_dir: &str,
        breaker: BreakerConfig,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        let learned = config.priority.unwrap_or(UNKNOWN_PRIORITY);
        let host = config.url.host_str().unwrap_or("upstream");
        let label = match config.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Self {
            breaker: Breaker::new(breaker, &label, &metrics),
            label,
            metrics,
            config,
            transport,
            first_byte_timeout,
            store_dir: store_dir.to_string(),
            learned_priority: AtomicU32::new(learned),
        }
    }

    pub fn url(&self) -> &Url {
        &self.config.url
    }

    /// A short, bounded label for logs and metrics: the host, and the port when the URL names
    /// one.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Current priority: configured, learned, or (until learned) Nix's default.
    pub fn priority(&self) -> u32 {
        match self.learned_priority.load(Ordering::Relaxed) {
            UNKNOWN_PRIORITY => DEFAULT_PRIORITY,
            p => p,
        }
    }

    /// Whether the priority still has to be learned from `nix-cache-info`.
    pub fn needs_cache_info(&self) -> bool {
        self.learned_priority.load(Ordering::Relaxed) == UNKNOWN_PRIORITY
    }

    fn join(&self, path: &str) -> Result<Url, UpstreamError> {
        let mut base = self.config.url.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        base.join(path).map_err(|e| UpstreamError::Http {
            url: redact(&self.config.url),
            message: e.to_string(),
        })
    }

    /// GETs `url` unless the upstream is skipped while it fails; the outcome feeds its circuit
    /// breaker.
    async fn get(&self, url: &Url, kind: &'static str) -> Result<Answer, UpstreamError> {
        let permit = self
            .breaker
            .admit()
            .map_err(|_| UpstreamError::Skipped { url: redact(url) })?;
        let result = self.send(url, kind).await;
        match &result {
            Ok(a) if a.status >= 500 || a.status == 429 => permit.failed(),
            Ok(_) => permit.answered(),
            Err(_) => permit.failed(),
        }
        result
    }

    async fn send(&self, url: &Url, kind: &'static str) -> Result<Answer, UpstreamError> {
        self.metrics
            .upstream_requests
            .with_label_values(&[self.label(), kind])
            .inc();
        let started = std::time::Instant::now();
        let send = self.transport.get(url);
        match tokio::time::timeout(self.first_byte_timeout, send).await {
            Err(_) | Ok(Err(TransportError::Timeout)) => {
                Err(UpstreamError::Timeout { url: redact(url) })
            }
            Ok(Err(TransportError::Failed(message))) => Err(UpstreamError::Http {
                url: redact(url),
                message,
            }),
            Ok(Ok(r)) => {
                self.metrics
                    .upstream_duration
                    .with_label_values(&[self.label(), kind])
                    .observe(started.elapsed().as_secs_f64());
                Ok(r)
            }
        }
    }

    /// Reads a small body whole, within the first-byte timeout and a size bound.
    async fn small_body(&self, url: &Url, resp: Answer) -> Result<String, UpstreamError> {
        let read = async {
            let mut body = Vec::new();
            let mut stream = resp.body;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| broken(url, e))?;
                if body.len() + chunk.len() > MAX_NARINFO_BYTES {
                    return Err(UpstreamError::Invalid {
                        url: redact(url),
                        message: "too large".into(),
                    });
                }
                body.extend_from_slice(&chunk);
                self.metrics
                    .upstream_bytes
                    .with_label_values(&[self.label()])
                    .inc_by(chunk.len() as u64);
            }
            String::from_utf8(body).map_err(|_| UpstreamError::Invalid {
                url: redact(url),
                message: "not UTF-8".into(),
            })
        };
        tokio::time::timeout(self.first_byte_timeout, read)
            .await
            .map_err(|_| UpstreamError::Timeout { url: redact(url) })?
    }

    /// Fetches `nix-cache-info` and adopts its priority unless one is configured. Checks the
    /// upstream's store directory is ours.
    pub async fn refresh_cache_info(&self) -> Result<CacheInfo, UpstreamError> {
        let url = self.join("nix-cache-info")?;
        let resp = self.get(&url, "cache_info").await?;
        if resp.status != OK {
            return Err(UpstreamError::Status {
                url: redact(&url),
                status: resp.status,
            });
        }
        let text = self.small_body(&url, resp).await?;
        let info = CacheInfo::parse(&text).map_err(|e| UpstreamError::Invalid {
            url: redact(&url),
            message: e.to_string(),
        })?;
        if info.store_dir != self.store_dir {
            return Err(UpstreamError::Invalid {
                url: redact(&url),
                message: format!("StoreDir {} is not {}", info.store_dir, self.store_dir),
            });
        }
        if self.config.priority.is_none() {
            self.learned_priority
                .store(info.priority.unwrap_or(DEFAULT_PRIORITY), Ordering::Relaxed);
        }
        Ok(info)
    }

    /// Asks for `<hash>.narinfo`. A narinfo is only `Found` when it is for the path asked for, in our
    /// store directory, and signed by one of this upstream's trusted keys (or the upstream is
    /// trusted without signatures).
    pub async fn narinfo(&self, hash: &StoreHash) -> Result<Lookup, UpstreamError> {
        let url = self.join(&format!("{hash}.narinfo"))?;
        let resp = self.get(&url, "narinfo").await?;
        match resp.status {
            OK => {}
            s if is_absent(s) => return Ok(Lookup::Missing),
            status => {
                return Err(UpstreamError::Status {
                    url: redact(&url),
                    status,
                })
            }
        }
        let text = self.small_body(&url, resp).await?;
        let invalid = |message: String| UpstreamError::Invalid {
            url: redact(&url),
            message,
        };
        let info = NarInfo::parse(&text).map_err(|e| invalid(e.to_string()))?;
        if info.store_path.hash() != *hash {
            return Err(invalid(format!("it describes {}", info.store_path)));
        }
        if info.store_path.store_dir() != self.store_dir {
            return Err(invalid(format!(
                "store directory of {} is not {}",
                info.store_path, self.store_dir
            )));
        }
        if !self.config.trust_unsigned && !info.verify(&self.config.keys) {
            return Err(UpstreamError::Untrusted { url: redact(&url) });
        }
        Ok(Lookup::Found(Box::new(info)))
    }

    /// The absolute URL of a narinfo's NAR: its `URL` field resolved against this upstream, as an
    /// opaque reference, which must stay under this upstream's base URL (the field is not
    /// covered by signatures; an absolute or `//host/` URL could point anywhere).
    pub fn nar_url(&self, narinfo_url: &str) -> Result<Url, UpstreamError> {
        let url = self.join(narinfo_url)?;
        if !self.serves(&url) {
            return Err(UpstreamError::Elsewhere {
                url: redact(&self.config.url),
                nar_url: redact(&url),
            });
        }
        Ok(url)
    }

    /// Whether `url` is under this upstream's base URL.
    pub fn serves(&self, url: &Url) -> bool {
        origin::under_base(&self.config.url, url)
    }

    /// Starts downloading a NAR. Headers must arrive within the first-byte timeout; the caller
    /// bounds the time between chunks.
    pub async fn nar(&self, url: &Url) -> Result<Option<NarDownload>, UpstreamError> {
        let resp = self.get(url, "nar").await?;
        match resp.status {
            OK => {}
            s if is_absent(s) => return Ok(None),
            status => {
                return Err(UpstreamError::Status {
                    url: redact(url),
                    status,
                })
            }
        }
        let u = url.clone();
        let body = resp.body.map(move |r| r.map_err(|e| broken(&u, e))).boxed();
        Ok(Some(NarDownload {
            length: resp.length,
            body,
        }))
    }
}

pub use nixcache_settings::redact::redact;

const OK: u16 = 200;

/// The statuses that mean "not here": 404, 403 (S3 without list rights) and 410.
fn is_absent(status: u16) -> bool {
    matches!(status, 404 | 403 | 410)
}

/// A body that broke off.
fn broken(url: &Url, e: TransportError) -> UpstreamError {
    match e {
        TransportError::Timeout => UpstreamError::Timeout { url: redact(url) },
        TransportError::Failed(message) => UpstreamError::Http {
            url: redact(url),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_user_name_password_and_query() {
        let url =
            Url::parse("https://tok3n:s3cret@cache.example/sub/nar/x.nar?sig=abc").expect("url");
        let shown = redact(&url);
        for secret in ["tok3n", "s3cret", "abc"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("cache.example/sub/nar/x.nar"), "{shown}");
        let plain = Url::parse("https://cache.example/x").expect("url");
        assert_eq!(redact(&plain), "https://cache.example/x");
    }
}
