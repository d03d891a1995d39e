//! How an upstream's requests reach it: a GET of a URL, answered with a status, a length and a
//! body stream. [`HttpTransport`] is HTTP(S) with the upstream's redirect and address rules
//! ([`super::origin`]); [`MemoryTransport`] (in tests) answers from a map, so the flows run
//! in-process against a fake upstream. What the answers mean (what is found, what is trusted,
//! where a NAR may come from) is decided above this, in [`super::Upstream`], the same for both.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::Url;

use super::credentials::Credentials;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("timed out")]
    Timeout,
    /// The connection failed or broke off; the message has no URL (the caller adds it, redacted).
    #[error("{0}")]
    Failed(String),
}

/// An answer whose headers have arrived.
pub struct Answer {
    pub status: u16,
    /// `Content-Length`, when sent.
    pub length: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, TransportError>>,
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// GET `url`, until its headers arrive (time limits are the caller's).
    async fn get(&self, url: &Url) -> Result<Answer, TransportError>;
}

/// HTTP(S) through one reqwest client, with the upstream's credentials on requests to its own
/// origin.
pub struct HttpTransport {
    client: reqwest::Client,
    /// The upstream's URL, whose origin alone is sent the credentials.
    base: Url,
    credentials: Option<Credentials>,
}

impl HttpTransport {
    pub fn new(client: reqwest::Client, base: Url, credentials: Option<Credentials>) -> Self {
        Self {
            client,
            base,
            credentials,
        }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn get(&self, url: &Url) -> Result<Answer, TransportError> {
        let mut request = self.client.get(url.clone());
        if let Some(credentials) = &self.credentials {
            if url.origin() == self.base.origin() {
                if let Some(header) = credentials.header().map_err(TransportError::Failed)? {
                    request = request.header(reqwest::header::AUTHORIZATION, header);
                }
            }
        }
        let resp = request.send().await.map_err(failed)?;
        Ok(Answer {
            status: resp.status().as_u16(),
            length: resp.content_length(),
            body: resp.bytes_stream().map(|r| r.map_err(failed)).boxed(),
        })
    }
}

fn failed(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else {
        TransportError::Failed(without_url(&e))
    }
}

/// reqwest's error text, without the URL it repeats (the caller's error carries it already),
/// with its causes.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// A fake upstream's transport: answers GETs by URL path from a map (404 for the rest), counts
/// what was asked, and can be slow, down, or cut bodies short.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryTransport {
    objects: std::sync::Mutex<std::collections::HashMap<String, Bytes>>,
    asked: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
    /// Before every answer.
    pub delay: std::sync::Mutex<std::time::Duration>,
    /// While set, every request fails as a refused connection would.
    pub down: std::sync::atomic::AtomicBool,
    /// While set, bodies break off after their first half.
    pub truncate: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl MemoryTransport {
    /// Serves `body` at `path` (`/` and all: `/nix-cache-info`, `/<hash>.narinfo`, ...).
    pub fn put(&self, path: &str, body: impl Into<Bytes>) {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects.insert(path.to_string(), body.into());
    }

    /// The paths asked for, in order.
    pub fn asked(&self) -> Vec<String> {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.iter().map(|(p, _)| p.clone()).collect()
    }

    /// When `path` was first asked for (its request arrived, before the delay).
    pub fn first_asked(&self, path: &str) -> Option<std::time::Instant> {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.iter().find(|(p, _)| p == path).map(|(_, t)| *t)
    }
}

#[cfg(test)]
#[async_trait]
impl Transport for MemoryTransport {
    async fn get(&self, url: &Url) -> Result<Answer, TransportError> {
        use std::sync::atomic::Ordering;
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((url.path().to_string(), std::time::Instant::now()));
        let delay = *self.delay.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::sleep(delay).await;
        if self.down.load(Ordering::Relaxed) {
            return Err(TransportError::Failed("connection refused".into()));
        }
        let found = {
            let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
            objects.get(url.path()).cloned()
        };
        let Some(body) = found else {
            return Ok(Answer {
                status: 404,
                length: None,
                body: futures_util::stream::empty().boxed(),
            });
        };
        let length = Some(body.len() as u64);
        let body = if self.truncate.load(Ordering::Relaxed) {
            let half = body.slice(..body.len() / 2);
            futures_util::stream::iter([
                Ok(half),
                Err(TransportError::Failed("connection reset".into())),
            ])
            .boxed()
        } else {
            futures_util::stream::iter([Ok(body)]).boxed()
        };
        Ok(Answer {
            status: 200,
            length,
            body,
        })
    }
}
