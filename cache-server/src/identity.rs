//! Kubernetes ServiceAccounts as callers. A pod sends its projected ServiceAccount token (as the
//! HTTP Basic password Nix takes from its netrc file, or as a Bearer token); the Kubernetes API
//! says whose it is with a TokenReview for this cache's audience, the answer is kept briefly
//! (yes or no, keyed by the token's SHA-256, never the token), and the grants of
//! [`ServiceAccountConfig`] say what that ServiceAccount may do.
//!
//! The server asks as its own identity: in a pod its ServiceAccount (whose token file the client
//! re-reads as the kubelet rotates it), which needs the `system:auth-delegator` ClusterRole;
//! elsewhere whatever `$KUBECONFIG` says.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::config::ServiceAccountConfig;
use crate::metrics::Metrics;

/// Whose a token is, as the Kubernetes API answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reviewed {
    ServiceAccount {
        namespace: String,
        name: String,
    },
    /// A valid token of something else (a user); no grant names those.
    Other(String),
    /// Not a token the Kubernetes API accepts for this audience (forged, expired, of a deleted
    /// ServiceAccount or pod, or issued for another audience).
    Invalid,
}

/// The Kubernetes API gave no answer; nothing about the token is known.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API did not review the token: {0}")]
pub struct ReviewFailed(String);

/// Longest token sent for review: projected tokens are about a kilobyte.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Distinct tokens whose answers are kept; past it the least used are forgotten.
const MAX_ANSWERS: u64 = 10_000;

/// How long one TokenReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// While the Kubernetes API cannot be asked, a ServiceAccount's token it vouched for this
/// recently still stands for that ServiceAccount (a control-plane upgrade does not lock pods
/// out); a token it never saw is refused with 503.
pub const STANDS_WHILE_UNREVIEWABLE: Duration = Duration::from_secs(300);

pub struct ServiceAccounts {
    config: ServiceAccountConfig,
    client: kube::Client,
    answers: moka::future::Cache<[u8; 32], Reviewed>,
    /// ServiceAccounts' answers for [`STANDS_WHILE_UNREVIEWABLE`], taken only when no review
    /// can be had.
    vouched: moka::future::Cache<[u8; 32], Reviewed>,
    metrics: Metrics,
}

impl ServiceAccounts {
    /// Connects to the Kubernetes API as this process's own identity (in a pod its
    /// ServiceAccount, else `$KUBECONFIG` or `~/.kube/config`).
    pub async fn connect(config: ServiceAccountConfig, metrics: Metrics) -> anyhow::Result<Self> {
        let mut kube_config = kube::Config::infer().await.context(
            "ServiceAccount grants need the Kubernetes API to review tokens with: in a pod, \
             its ServiceAccount token (automountServiceAccountToken); elsewhere $KUBECONFIG",
        )?;
        kube_config.connect_timeout = Some(REVIEW_TIMEOUT);
        kube_config.read_timeout = Some(REVIEW_TIMEOUT);
        kube_config.write_timeout = Some(REVIEW_TIMEOUT);
        let api = kube_config.cluster_url.to_string();
        let client = kube::Client::try_from(kube_config)
            .context("building the Kubernetes API client for TokenReviews")?;
        tracing::info!(
            kubernetes_api = %api,
            audience = %config.audience,
            read = config.read.len(),
            push = config.push.len(),
            "ServiceAccount tokens are reviewed by the Kubernetes API"
        );
        Ok(Self::new(config, client, metrics))
    }

    pub fn new(config: ServiceAccountConfig, client: kube::Client, metrics: Metrics) -> Self {
        let answers = moka::future::Cache::builder()
            .max_capacity(MAX_ANSWERS)
            .time_to_live(config.review_ttl)
            .build();
        let vouched = moka::future::Cache::builder()
            .max_capacity(MAX_ANSWERS)
            .time_to_live(STANDS_WHILE_UNREVIEWABLE.max(config.review_ttl))
            .build();
        Self {
            config,
            client,
            answers,
            vouched,
            metrics,
        }
    }

    pub fn config(&self) -> &ServiceAccountConfig {
        &self.config
    }

    /// Whose `token` is. One review is asked for any number of requests with the same token at
    /// once, and its answer reused for the review TTL; a failure to ask is not kept. When no
    /// review can be had, a ServiceAccount's token vouched for within
    /// [`STANDS_WHILE_UNREVIEWABLE`] stands.
    pub async fn review(&self, token: &str) -> Result<Reviewed, Arc<ReviewFailed>> {
        if !looks_like_jwt(token) {
            return Ok(Reviewed::Invalid);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.answers.try_get_with(key, self.ask(key, token)).await {
            Ok(answer) => Ok(answer),
            Err(failed) => match self.vouched.get(&key).await {
                Some(answer) => {
                    self.metrics
                        .token_reviews
                        .with_label_values(&["vouched_before"])
                        .inc();
                    Ok(answer)
                }
                None => Err(failed),
            },
        }
    }

    async fn ask(&self, key: [u8; 32], token: &str) -> Result<Reviewed, ReviewFailed> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.config.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answered = api.create(&PostParams::default(), &review).await;
        let reviewed = answered
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 403 => ReviewFailed(format!(
                    "{} (the server's identity needs the system:auth-delegator ClusterRole)",
                    s.message
                )),
                e => ReviewFailed(e.to_string()),
            })
            .map(|answer| self.judge(answer));
        let label = match &reviewed {
            Ok(answer @ Reviewed::ServiceAccount { .. }) => {
                self.vouched.insert(key, answer.clone()).await;
                "service_account"
            }
            Ok(Reviewed::Other(_)) => "other",
            Ok(Reviewed::Invalid) => "invalid",
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot review a ServiceAccount token: one vouched for in the last {} s \
                     stands, any other is refused with 503",
                    STANDS_WHILE_UNREVIEWABLE.as_secs()
                );
                "failed"
            }
        };
        self.metrics.token_reviews.with_label_values(&[label]).inc();
        reviewed
    }

    /// What an answered review says.
    fn judge(&self, answer: TokenReview) -> Reviewed {
        let Some(status) = answer.status else {
            return Reviewed::Invalid;
        };
        if status.authenticated != Some(true) {
            return Reviewed::Invalid;
        }
        // The API server checks the audience it was asked for; an answer naming others is not
        // for this cache.
        if let Some(audiences) = &status.audiences {
            if !audiences.iter().any(|a| a == &self.config.audience) {
                return Reviewed::Invalid;
            }
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account(&username).unwrap_or(Reviewed::Other(username))
    }
}

/// `system:serviceaccount:NAMESPACE:NAME` as a ServiceAccount.
fn service_account(username: &str) -> Option<Reviewed> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| {
        Reviewed::ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    })
}

/// Whether `token` has a JWT's shape (three base64url parts): only those are worth a review.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    token.len() <= MAX_TOKEN_LEN
        && parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_service_accounts() {
        assert_eq!(
            service_account("system:serviceaccount:ci:builder"),
            Some(Reviewed::ServiceAccount {
                namespace: "ci".into(),
                name: "builder".into()
            })
        );
        for other in [
            "admin",
            "system:serviceaccount:ci",
            "system:serviceaccount::builder",
            "system:serviceaccount:ci:",
            "system:serviceaccount:ci:a:b",
            "system:node:n1",
        ] {
            assert_eq!(service_account(other), None, "{other}");
        }
    }

    #[test]
    fn only_jwt_shapes_are_reviewed() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJpc3Mi.c2lnbmF0dXJl"));
        assert!(looks_like_jwt("a-_b.c.d"));
        for not in [
            "",
            "0123456789abcdef0123",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b.c=",
            "a.b c.d",
        ] {
            assert!(!looks_like_jwt(not), "{not:?}");
        }
        assert!(!looks_like_jwt(&format!(
            "a.{}.c",
            "b".repeat(MAX_TOKEN_LEN)
        )));
    }
}
