//! Parsing of the URL-like settings: upstream specs, storage, database and Redis URLs.

use std::path::{Path, PathBuf};

use url::Url;

use super::{
    invalid, ConfigError, DatabaseBackend, S3Config, SensitiveUrl, StorageBackend, UpstreamConfig,
    UpstreamCredentials,
};
use crate::keys::PublicKey;
use crate::redact::{redact, redact_url};

/// The name part of a key, for error messages that must not echo key material.
pub(super) fn key_name(k: &str) -> String {
    k.split_once(':')
        .map_or("key", |(n, _)| n)
        .chars()
        .take(64)
        .collect()
}

/// Sets an upstream's credentials, refusing a second kind.
fn set_once(
    slot: &mut Option<UpstreamCredentials>,
    credentials: UpstreamCredentials,
) -> Result<(), ConfigError> {
    if slot.replace(credentials).is_some() {
        return Err(invalid(
            "upstream",
            "give one of bearer-token-file=, basic-auth-file= and netrc-file=",
        ));
    }
    Ok(())
}

pub(super) fn parse_upstream(
    spec: &str,
    default_keys: &[PublicKey],
) -> Result<UpstreamConfig, ConfigError> {
    let mut parts = spec.trim().split(',');
    let raw = parts.next().unwrap_or_default();
    let url = Url::parse(raw).map_err(|e| invalid("upstream", format!("{raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "upstream",
            format!("{} is not an http(s) URL", redact(&url)),
        ));
    }
    let mut config = UpstreamConfig {
        url,
        priority: None,
        keys: Vec::new(),
        trust_unsigned: false,
        cross_origin_redirects: false,
        credentials: None,
    };
    let mut credentials = None;
    for opt in parts {
        match opt.split_once('=') {
            Some(("priority", n)) => {
                config.priority =
                    Some(n.parse().map_err(|_| {
                        invalid("upstream", format!("priority {n:?} is not a number"))
                    })?)
            }
            Some(("key", k)) => config.keys.push(
                PublicKey::parse(k)
                    .map_err(|e| invalid("upstream", format!("key {}: {e}", key_name(k))))?,
            ),
            Some(("bearer-token-file", p)) if !p.is_empty() => set_once(
                &mut credentials,
                UpstreamCredentials::BearerTokenFile(PathBuf::from(p)),
            )?,
            Some(("basic-auth-file", p)) if !p.is_empty() => set_once(
                &mut credentials,
                UpstreamCredentials::BasicAuthFile(PathBuf::from(p)),
            )?,
            Some(("netrc-file", p)) if !p.is_empty() => set_once(
                &mut credentials,
                UpstreamCredentials::NetrcFile(PathBuf::from(p)),
            )?,
            None if opt == "trust-unsigned" => config.trust_unsigned = true,
            None if opt == "cross-origin-redirects" => config.cross_origin_redirects = true,
            _ => {
                return Err(invalid(
                    "upstream",
                    format!(
                        "unknown option {opt:?} (priority=N, key=NAME:KEY, trust-unsigned, \
                         cross-origin-redirects, bearer-token-file=PATH, basic-auth-file=PATH, \
                         netrc-file=PATH)"
                    ),
                ))
            }
        }
    }
    config.credentials = credentials;
    if config.keys.is_empty() {
        config.keys = default_keys.to_vec();
    }
    Ok(config)
}

pub(super) fn parse_storage_url(
    url: Option<&str>,
    data_dir: &Path,
    endpoint: Option<String>,
    region: String,
) -> Result<StorageBackend, ConfigError> {
    let Some(url) = url else {
        return Ok(StorageBackend::Local(data_dir.join("store")));
    };
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(invalid("storage-url", "file:// URL without a path"));
        }
        return Ok(StorageBackend::Local(PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("storage-url", "s3:// URL without a bucket"));
        }
        if let Some(e) = &endpoint {
            let u = Url::parse(e).map_err(|err| invalid("s3-endpoint", format!("{e:?}: {err}")))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(invalid(
                    "s3-endpoint",
                    format!("{e:?} is not an http(s) URL"),
                ));
            }
        }
        return Ok(StorageBackend::S3(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            region,
        }));
    }
    Err(invalid(
        "storage-url",
        format!(
            "{:?}: use file://DIR or s3://BUCKET[/PREFIX]",
            url.chars().take(80).collect::<String>()
        ),
    ))
}

pub(super) fn parse_redis_url(url: &str) -> Result<SensitiveUrl, ConfigError> {
    let parsed =
        Url::parse(url).map_err(|e| invalid("redis", format!("{}: {e}", redact_url(url))))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
        return Err(invalid(
            "redis",
            format!("{} is not a redis:// URL", redact_url(url)),
        ));
    }
    Ok(SensitiveUrl(url.to_string()))
}

pub(super) fn parse_database_url(url: &str) -> Result<DatabaseBackend, ConfigError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(invalid("database-url", "sqlite URL without a path"));
        }
        return Ok(DatabaseBackend::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let parsed = Url::parse(url)
            .map_err(|e| invalid("database-url", format!("{}: {e}", redact_url(url))))?;
        if parsed.host_str().is_none() {
            return Err(invalid("database-url", "postgres URL without a host"));
        }
        return Ok(DatabaseBackend::Postgres(SensitiveUrl(url.to_string())));
    }
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    Err(invalid(
        "database-url",
        format!(
            "unsupported scheme {:?}: use sqlite://PATH",
            scheme.chars().take(20).collect::<String>()
        ),
    ))
}
