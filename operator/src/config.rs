//! A `NixCache` spec as the server's own configuration type ([`nixcache_settings::config::ServeArgs`]),
//! rendered into the ConfigMap, and the checks that reject a spec before any child changes.
//!
//! Secrets stay out of the rendered file: the PostgreSQL URL and the S3 credentials reach the
//! server as environment variables taken from their Secrets, the signing key as a mounted file.

use std::path::PathBuf;

use nixcache_settings::config::{HumanDuration, LogFormat, LookupOrder, ServeArgs};
use nixcache_settings::keys::PublicKey;

use crate::crd::{CredentialsKind, NixCache, NixCacheSpec, UpstreamLookup, UpstreamSpec};

/// Where the ConfigMap is mounted in the server container.
pub const CONFIG_DIR: &str = "/etc/nixcache";
pub const CONFIG_FILE: &str = "config.toml";
/// Where the signing key Secret is mounted, and the Secret's key that holds it.
pub const KEY_DIR: &str = "/etc/nixcache/signing-key";
pub const KEY_FILE: &str = "secret-key";
/// The data volume (SQLite and NARs when storage is local).
pub const DATA_DIR: &str = "/var/lib/nixcache";
/// The node-local NAR cache's volume, with S3 storage.
pub const LOCAL_CACHE_DIR: &str = "/var/cache/nixcache";
/// Its size when the spec gives none.
pub const DEFAULT_LOCAL_CACHE_SIZE: &str = "10Gi";
/// The share of its volume the local cache fills.
const LOCAL_CACHE_SHARE: f64 = 0.9;

/// The node-local NAR cache's volume size, when the cache has one (S3 storage, not disabled).
pub fn local_cache_size(spec: &NixCacheSpec) -> Option<&str> {
    spec.storage.s3.as_ref()?;
    let local = spec.storage.local_cache.as_ref();
    if local.is_some_and(|l| l.disabled) {
        return None;
    }
    Some(
        local
            .and_then(|l| l.size.as_deref())
            .unwrap_or(DEFAULT_LOCAL_CACHE_SIZE),
    )
}
/// The port the server listens on inside the pod.
pub const SERVER_PORT: u16 = 8080;

/// Why a spec was rejected; the message goes into the Degraded condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

fn invalid(message: impl Into<String>) -> InvalidSpec {
    InvalidSpec(message.into())
}

/// The server's settings for this cache. `gc-schedule` is left out when the operator runs GC as
/// Jobs (see [`gc_runs_as_jobs`]); the server then only knows the size limit, for `nixcache gc`.
pub fn render(nc: &NixCache) -> ServeArgs {
    let spec = &nc.spec;
    let mut args = ServeArgs {
        listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], SERVER_PORT))),
        data_dir: Some(PathBuf::from(DATA_DIR)),
        upstreams: spec
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| upstream_spec(i, u))
            .collect(),
        signing_key_file: Some(PathBuf::from(format!("{KEY_DIR}/{KEY_FILE}"))),
        priority: spec.priority.and_then(|p| u32::try_from(p).ok()),
        log_format: Some(LogFormat::Json),
        redis: spec.redis.clone(),
        max_size: gc_bound(spec).map(|(size, _)| size),
        shutdown_timeout: Some(HumanDuration(std::time::Duration::from_secs(25))),
        // Endpoints drop a terminating pod within a few seconds; new connections are refused
        // only then.
        shutdown_delay: Some(HumanDuration(std::time::Duration::from_secs(5))),
        ..ServeArgs::default()
    };
    args.pins = spec.pins.clone();
    args.otlp_endpoint = spec.otlp_endpoint.clone();
    args.max_age = spec
        .gc
        .as_ref()
        .and_then(|gc| gc.max_age.as_deref())
        .and_then(|a| a.parse().ok());
    if let Some(policy) = &spec.upstream_policy {
        args.upstream_lookup = Some(match policy.lookup {
            UpstreamLookup::Parallel => LookupOrder::Parallel,
            UpstreamLookup::Sequential => LookupOrder::Sequential,
        });
        args.upstream_failure_threshold =
            policy.failure_threshold.and_then(|n| u32::try_from(n).ok());
        args.upstream_backoff = policy.backoff.as_deref().and_then(|b| b.parse().ok());
    }
    if let Some(uploads) = &spec.uploads {
        args.upload_trusted_keys = uploads.trusted_keys.clone();
        args.max_upload_size = uploads.max_size.clone();
    }
    if let Some(access) = spec
        .service_account_access
        .as_ref()
        .filter(|a| a.grants_any())
    {
        args.read_service_accounts = access.read.iter().map(|r| r.flag()).collect();
        args.push_service_accounts = access.push.iter().map(|r| r.flag()).collect();
        args.service_account_audience = access.audience.clone();
    }
    if let Some(s3) = &spec.storage.s3 {
        args.storage_url = Some(match s3.prefix.as_deref().map(|p| p.trim_matches('/')) {
            Some(prefix) if !prefix.is_empty() => format!("s3://{}/{prefix}", s3.bucket),
            _ => format!("s3://{}", s3.bucket),
        });
        args.s3_endpoint = s3.endpoint.clone();
        args.s3_region = s3.region.clone();
    }
    if let Some(bytes) = local_cache_size(spec).and_then(quantity_bytes) {
        args.local_cache_dir = Some(PathBuf::from(LOCAL_CACHE_DIR));
        args.local_cache_size = Some(((bytes as f64 * LOCAL_CACHE_SHARE) as u64).to_string());
    }
    if !gc_runs_as_jobs(spec) {
        args.gc_schedule = gc_bound(spec).map(|(_, schedule)| schedule);
    }
    args
}

/// The rendered configuration file.
pub fn render_toml(nc: &NixCache) -> String {
    // ServeArgs is plain strings, numbers and lists: serializing it cannot fail.
    toml::to_string(&render(nc)).unwrap_or_default()
}

/// The data volume is a PersistentVolumeClaim (made for `volumeSize`, or an existing one).
pub fn has_claim(spec: &NixCacheSpec) -> bool {
    spec.storage.volume_size.is_some() || spec.storage.existing_claim.is_some()
}

/// GC runs as operator-created Jobs when a Job's pod can reach the cache's data from any node:
/// shared storage and database (S3 + PostgreSQL). On a local volume — an `emptyDir`, or a
/// ReadWriteOnce claim that a second pod on another node could not attach — the server runs GC
/// itself on the schedule.
pub fn gc_runs_as_jobs(spec: &NixCacheSpec) -> bool {
    spec.gc.is_some() && spec.storage.s3.is_some() && spec.database.is_some()
}

/// Where upstream `i`'s credentials Secret is mounted: `UPSTREAM_CREDENTIALS_DIR/<i>/<key>`.
pub const UPSTREAM_CREDENTIALS_DIR: &str = "/etc/nixcache/upstreams";

/// The volume of upstream `i`'s credentials.
pub fn upstream_credentials_volume(i: usize) -> String {
    format!("upstream-{i}-credentials")
}

fn upstream_spec(i: usize, u: &UpstreamSpec) -> String {
    let mut s = u.url.trim().to_string();
    if let Some(p) = u.priority {
        s.push_str(&format!(",priority={p}"));
    }
    for k in &u.public_keys {
        s.push_str(&format!(",key={}", k.trim()));
    }
    if u.cross_origin_redirects {
        s.push_str(",cross-origin-redirects");
    }
    if let Some(c) = &u.credentials {
        let option = match c.kind {
            CredentialsKind::Bearer => "bearer-token-file",
            CredentialsKind::Basic => "basic-auth-file",
            CredentialsKind::Netrc => "netrc-file",
        };
        s.push_str(&format!(
            ",{option}={UPSTREAM_CREDENTIALS_DIR}/{i}/{}",
            c.secret.key
        ));
    }
    s
}

/// Checks a spec as far as it can be checked without the API server: the replica rules, the
/// shapes of sizes and names, and the rendered configuration through the server's own parser.
pub fn validate(nc: &NixCache) -> Result<(), InvalidSpec> {
    let name = nc.metadata.name.as_deref().unwrap_or_default();
    if !is_cache_name(name) {
        return Err(invalid(format!(
            "the name {name:?} cannot name this cache's children: it must be a DNS-1035 label \
             (lower-case letters, digits and '-', starting with a letter, ending with a letter or \
             digit) of at most {MAX_NAME} characters, since it names the Service and is a label \
             value, with room for the pods' and GC Jobs' suffixes"
        )));
    }
    let spec = &nc.spec;
    if spec.replicas > 1 {
        let mut missing = Vec::new();
        if spec.database.is_none() {
            missing.push("PostgreSQL (spec.database)");
        }
        if spec.storage.s3.is_none() {
            missing.push("S3 storage (spec.storage.s3)");
        }
        if spec.redis.is_empty() {
            missing.push("Redis (spec.redis)");
        }
        if !missing.is_empty() {
            return Err(invalid(format!(
                "{} replicas share their work only through {}: set them or use 1 replica",
                spec.replicas,
                missing.join(", ")
            )));
        }
    }
    if spec.storage.s3.is_some() && spec.storage.volume_size.is_some() {
        return Err(invalid(
            "spec.storage: set either volumeSize or s3, not both",
        ));
    }
    if let Some(size) = &spec.storage.volume_size {
        if !is_quantity(size) {
            return Err(invalid(format!(
                "spec.storage.volumeSize {size:?} is not a size (write e.g. 50Gi)"
            )));
        }
    }
    if spec.replicas > 1 && has_claim(spec) {
        return Err(invalid(
            "a PersistentVolumeClaim (spec.storage.volumeSize, existingClaim) serves one replica \
             only; use S3 for more",
        ));
    }
    let storage = &spec.storage;
    if let Some(limit) = &storage.size_limit {
        if has_claim(spec) || storage.s3.is_some() {
            return Err(invalid(
                "spec.storage.sizeLimit is the emptyDir's: it goes with neither a claim nor s3",
            ));
        }
        if !is_quantity(limit) {
            return Err(invalid(format!(
                "spec.storage.sizeLimit {limit:?} is not a size (write e.g. 10Gi)"
            )));
        }
    }
    if let Some(local) = &storage.local_cache {
        if storage.s3.is_none() {
            return Err(invalid(
                "spec.storage.localCache is a cache in front of S3: it needs spec.storage.s3",
            ));
        }
        if let Some(size) = &local.size {
            if !is_quantity(size) {
                return Err(invalid(format!(
                    "spec.storage.localCache.size {size:?} is not a size (write e.g. 20Gi)"
                )));
            }
        }
    }
    if let Some(claim) = &storage.existing_claim {
        if !is_name(claim) || storage.s3.is_some() {
            return Err(invalid(format!(
                "spec.storage.existingClaim {claim:?} must name a claim, and goes without s3"
            )));
        }
    }
    if let Some(class) = &storage.storage_class_name {
        if !is_name(class) || storage.volume_size.is_none() || storage.existing_claim.is_some() {
            return Err(invalid(format!(
                "spec.storage.storageClassName {class:?} is for the claim made for volumeSize"
            )));
        }
    }
    if storage.retain_on_delete
        && (storage.volume_size.is_none() || storage.existing_claim.is_some())
    {
        return Err(invalid(
            "spec.storage.retainOnDelete is for the claim made for volumeSize",
        ));
    }
    if let Some(s3) = &spec.storage.s3 {
        if s3.bucket.trim().is_empty() || s3.bucket.contains('/') {
            return Err(invalid(format!(
                "spec.storage.s3.bucket {:?} is not a bucket name",
                s3.bucket
            )));
        }
        if !is_name(&s3.credentials_secret) {
            return Err(invalid(format!(
                "spec.storage.s3.credentialsSecret {:?} is not a Secret name",
                s3.credentials_secret
            )));
        }
        if let Some(endpoint) = &s3.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(format!(
                    "spec.storage.s3.endpoint {endpoint:?} is not an http(s) URL"
                )));
            }
        }
    }
    if let Some(db) = &spec.database {
        let r = &db.postgres_url_secret;
        if !is_name(&r.name) || r.key.trim().is_empty() {
            return Err(invalid(
                "spec.database.postgresUrlSecret needs a Secret name and key",
            ));
        }
    }
    if let Some(key) = &spec.signing_key {
        if !is_name(&key.secret_name) {
            return Err(invalid(format!(
                "spec.signingKey.secretName {:?} is not a Secret name",
                key.secret_name
            )));
        }
    }
    if let Some(image) = &spec.image {
        if image.trim().is_empty() || image.contains(char::is_whitespace) {
            return Err(invalid(format!("spec.image {image:?} is not an image")));
        }
    }
    for (i, u) in spec.upstreams.iter().enumerate() {
        if u.url.contains(',') {
            return Err(invalid(format!(
                "spec.upstreams[{i}].url {:?} must not contain ','",
                u.url
            )));
        }
        for k in &u.public_keys {
            PublicKey::parse(k.trim()).map_err(|e| {
                invalid(format!(
                    "spec.upstreams[{i}].publicKeys: {:?}: {e}",
                    k.split(':').next().unwrap_or_default()
                ))
            })?;
        }
        if let Some(c) = &u.credentials {
            let key = &c.secret.key;
            // A Secret's key names the mounted file, and the file a spec option.
            let key_ok = !key.is_empty()
                && key != "."
                && key != ".."
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !is_name(&c.secret.name) || !key_ok {
                return Err(invalid(format!(
                    "spec.upstreams[{i}].credentials.secret needs a Secret name and key"
                )));
            }
        }
    }
    if let Some(age) = spec.gc.as_ref().and_then(|gc| gc.max_age.as_deref()) {
        age.parse::<HumanDuration>()
            .map_err(|e| invalid(format!("spec.gc.maxAge: {e}")))?;
    }
    if let Some(backoff) = spec
        .upstream_policy
        .as_ref()
        .and_then(|p| p.backoff.as_deref())
    {
        backoff
            .parse::<HumanDuration>()
            .map_err(|e| invalid(format!("spec.upstreamPolicy.backoff: {e}")))?;
    }
    // The server's own parser decides the rest (URLs, sizes, the cron schedule), with its
    // messages. The schedule is checked even when the operator, not the server, runs it.
    let mut args = render(nc);
    if let Some(gc) = &spec.gc {
        args.gc_schedule = Some(gc.schedule.clone());
    }
    // The database URL and the tokens are Secrets' values; placeholders of the right shape
    // stand in for them.
    if spec.database.is_some() {
        args.database_url = Some("postgres://nixcache@postgres/nixcache".into());
    }
    if let Some(uploads) = &spec.uploads {
        let pushers = spec
            .service_account_access
            .as_ref()
            .is_some_and(|a| !a.push.is_empty());
        if uploads.token_secret.is_none() && !pushers {
            return Err(invalid(
                "spec.uploads needs a tokenSecret, or ServiceAccounts in \
                 spec.serviceAccountAccess.push",
            ));
        }
        if uploads.token_secret.is_some() {
            args.upload_token = Some("placeholder-token-0123456789".into());
        }
    }
    for (what, r) in [
        (
            "spec.uploads.tokenSecret",
            spec.uploads.as_ref().and_then(|u| u.token_secret.as_ref()),
        ),
        ("spec.readTokenSecret", spec.read_token_secret.as_ref()),
        ("spec.adminTokenSecret", spec.admin_token_secret.as_ref()),
    ] {
        if let Some(r) = r {
            if !is_name(&r.name) || r.key.trim().is_empty() {
                return Err(invalid(format!("{what} needs a Secret name and key")));
            }
        }
    }
    args.resolve()
        .map(|_| ())
        .map_err(|e| invalid(format!("spec: {e}")))
}

/// The longest NixCache name: the Service takes the name itself (a DNS-1035 label, 63), and the
/// pods' names add the ReplicaSet's and their own suffixes (`-<10>-<5>`) within 63.
pub const MAX_NAME: usize = 47;

/// A name every child can be derived from: a DNS-1035 label of at most [`MAX_NAME`] characters.
fn is_cache_name(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS-1123 subdomain, as Secret names are.
fn is_name(s: &str) -> bool {
    nixcache_settings::config::is_dns_subdomain(s)
}

/// A Kubernetes quantity as storage sizes are written: digits, an optional fraction, a suffix.
fn is_quantity(s: &str) -> bool {
    quantity_bytes(s).is_some()
}

/// A Kubernetes quantity of bytes (`50Gi`, `500M`, `1.5Ti`, `1073741824`), as a whole number.
pub fn quantity_bytes(s: &str) -> Option<u64> {
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty()
        || number.matches('.').count() > 1
        || number.starts_with('.')
        || number.ends_with('.')
    {
        return None;
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let bytes = number.parse::<f64>().ok()? * factor;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The emptyDir's size limit when the spec sets none.
pub const DEFAULT_EMPTY_DIR_SIZE: &str = "10Gi";
/// A local volume with no `spec.gc` is still kept under this share of its size, by the server.
const DEFAULT_GC_SHARE: f64 = 0.8;
/// How often the server looks at a local volume with no `spec.gc`.
pub const DEFAULT_GC_SCHEDULE: &str = "*/10 * * * *";

/// The size of the cache's local volume (the claim's size or the emptyDir's limit); `None` on S3.
pub fn local_volume_size(spec: &NixCacheSpec) -> Option<&str> {
    if spec.storage.s3.is_some() {
        return None;
    }
    Some(
        spec.storage
            .volume_size
            .as_deref()
            .or(spec.storage.size_limit.as_deref())
            .unwrap_or(DEFAULT_EMPTY_DIR_SIZE),
    )
}

/// The GC bound and schedule of a cache: `spec.gc`, else, on a local volume, 80% of the volume
/// every ten minutes, so that no volume fills; on S3 without `spec.gc`, none.
pub fn gc_bound(spec: &NixCacheSpec) -> Option<(String, String)> {
    if let Some(gc) = &spec.gc {
        return Some((gc.max_size.clone(), gc.schedule.clone()));
    }
    let bytes = quantity_bytes(local_volume_size(spec)?)?;
    let bound = (bytes as f64 * DEFAULT_GC_SHARE) as u64;
    Some((bound.to_string(), DEFAULT_GC_SCHEDULE.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::NixCache;

    fn cache(spec: serde_json::Value) -> NixCache {
        let mut nc = NixCache::new("c", serde_json::from_value(spec).expect("spec"));
        nc.metadata.namespace = Some("ns".into());
        nc
    }

    fn ha() -> serde_json::Value {
        serde_json::json!({
            "replicas": 3,
            "upstreams": [{"url": "https://cache.nixos.org", "priority": 40,
                "publicKeys": ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]},
                {"url": "https://private.example", "crossOriginRedirects": true}],
            "storage": {"s3": {"bucket": "nix", "prefix": "/cache/", "endpoint": "http://s3:8333",
                "region": "eu-1", "credentialsSecret": "s3"}},
            "database": {"postgresUrlSecret": {"name": "pg", "key": "url"}},
            "redis": ["redis://r1:6379", "redis://r2:6379", "redis://r3:6379"],
            "gc": {"maxSize": "50G", "schedule": "0 * * * *"}
        })
    }

    #[test]
    fn the_rendered_file_is_read_back_by_the_server_as_the_same_settings() {
        let nc = cache(ha());
        let text = render_toml(&nc);
        let back: ServeArgs = toml::from_str(&text).expect("the server reads it");
        assert_eq!(
            toml::to_string(&back).expect("ser"),
            text,
            "round trip through the server's type"
        );
        assert_eq!(back.storage_url.as_deref(), Some("s3://nix/cache"));
        assert_eq!(back.s3_endpoint.as_deref(), Some("http://s3:8333"));
        assert_eq!(back.upstreams, vec!["https://cache.nixos.org,priority=40,key=cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", "https://private.example,cross-origin-redirects"]);
        assert_eq!(back.redis.len(), 3);
        assert_eq!(back.max_size.as_deref(), Some("50G"));
        assert_eq!(back.gc_schedule, None, "the operator runs GC as Jobs here");
        assert_eq!(
            back.database_url, None,
            "the URL is a Secret's, not the file's"
        );
        assert!(!text.contains("postgres"), "{text}");
        validate(&nc).expect("valid");
    }

    #[test]
    fn the_upstream_policy_becomes_the_servers_lookup_and_breaker_settings() {
        let nc = cache(serde_json::json!({"upstreamPolicy":
            {"lookup": "sequential", "failureThreshold": 5, "backoff": "2m"}}));
        let back: ServeArgs = toml::from_str(&render_toml(&nc)).expect("the server reads it");
        let config = back.resolve().expect("valid");
        assert_eq!(config.upstreams.lookup, LookupOrder::Sequential);
        assert_eq!(config.upstreams.breaker.failures, 5);
        assert_eq!(
            config.upstreams.breaker.backoff,
            std::time::Duration::from_secs(120)
        );
        validate(&nc).expect("valid");
        // Unset: the server's defaults.
        let plain = render(&cache(serde_json::json!({})))
            .resolve()
            .expect("valid");
        assert_eq!(plain.upstreams.lookup, LookupOrder::Parallel);
        let bad = cache(serde_json::json!({"upstreamPolicy": {"backoff": "soon"}}));
        let e = validate(&bad).expect_err("an unreadable backoff");
        assert!(e.to_string().contains("spec.upstreamPolicy.backoff"), "{e}");
    }

    #[test]
    fn pins_and_the_max_age_reach_the_server() {
        let pinned = "/nix/store/p404n8pan3pvrll7pci95yg83idrvkdx-hello";
        let nc = cache(serde_json::json!({"pins": [pinned],
            "gc": {"maxSize": "1G", "schedule": "0 * * * *", "maxAge": "30days"}}));
        validate(&nc).expect("valid");
        let back: ServeArgs = toml::from_str(&render_toml(&nc)).expect("the server reads it");
        let config = back.resolve().expect("valid");
        assert_eq!(config.gc.pins, vec![pinned.to_string()]);
        assert_eq!(
            config.gc.max_age,
            Some(std::time::Duration::from_secs(30 * 86400))
        );
        let bad = cache(serde_json::json!({"pins": ["/nix/store/nope"]}));
        let e = validate(&bad).expect_err("not a store path");
        assert!(e.to_string().contains("pin"), "{e}");
        let bad = cache(
            serde_json::json!({"gc": {"maxSize": "1G", "schedule": "0 * * * *",
            "maxAge": "a while"}}),
        );
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn span_export_is_off_unless_the_spec_names_a_receiver() {
        let plain = render(&cache(serde_json::json!({})))
            .resolve()
            .expect("valid");
        assert_eq!(plain.otlp_traces, None);
        let nc = cache(serde_json::json!({"otlpEndpoint": "http://otel.monitoring:4318"}));
        validate(&nc).expect("valid");
        let config = render(&nc).resolve().expect("valid");
        assert_eq!(
            config.otlp_traces.map(|u| u.to_string()).as_deref(),
            Some("http://otel.monitoring:4318/v1/traces")
        );
        let bad = cache(serde_json::json!({"otlpEndpoint": "otel:4318"}));
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn an_ephemeral_single_cache_runs_gc_in_its_server() {
        let nc = cache(serde_json::json!({"gc": {"maxSize": "1G", "schedule": "*/5 * * * *"}}));
        assert!(!gc_runs_as_jobs(&nc.spec));
        assert_eq!(render(&nc).gc_schedule.as_deref(), Some("*/5 * * * *"));
        let pvc = cache(
            serde_json::json!({"storage": {"volumeSize": "10Gi"}, "gc": {"maxSize": "1G", "schedule": "*/5 * * * *"}}),
        );
        assert!(
            !gc_runs_as_jobs(&pvc.spec),
            "a ReadWriteOnce claim is the server's alone"
        );
        assert_eq!(render(&pvc).gc_schedule.as_deref(), Some("*/5 * * * *"));
        assert_eq!(render(&pvc).max_size.as_deref(), Some("1G"));
    }

    #[test]
    fn replicas_on_s3_get_a_local_nar_cache_unless_told_not_to() {
        let s3 = |local: serde_json::Value| {
            cache(
                serde_json::json!({"storage": {"s3": {"bucket": "b", "credentialsSecret": "s"},
                "localCache": local}}),
            )
        };
        let on = render(&s3(serde_json::json!({})));
        assert_eq!(
            on.local_cache_dir.as_deref(),
            Some(std::path::Path::new(LOCAL_CACHE_DIR))
        );
        // 90% of the default 10Gi.
        assert_eq!(on.local_cache_size.as_deref(), Some("9663676416"));
        let sized = render(&s3(serde_json::json!({"size": "100G"})));
        assert_eq!(sized.local_cache_size.as_deref(), Some("90000000000"));
        let off = render(&s3(serde_json::json!({"disabled": true})));
        assert_eq!(off.local_cache_dir, None);
        validate(&s3(serde_json::json!({"size": "100G"}))).expect("valid");
        let local = cache(serde_json::json!({"storage": {"localCache": {}}}));
        assert!(validate(&local).is_err(), "no S3, no cache in front of it");
        assert_eq!(render(&cache(serde_json::json!({}))).local_cache_dir, None);
    }

    #[test]
    fn a_local_volume_without_gc_is_kept_under_its_size() {
        let plain = cache(serde_json::json!({}));
        let args = render(&plain);
        assert_eq!(args.gc_schedule.as_deref(), Some(DEFAULT_GC_SCHEDULE));
        // 80% of the default 10Gi emptyDir.
        assert_eq!(args.max_size.as_deref(), Some("8589934592"));
        validate(&plain).expect("valid");
        let claim = cache(serde_json::json!({"storage": {"volumeSize": "100G"}}));
        assert_eq!(render(&claim).max_size.as_deref(), Some("80000000000"));
        let s3 = cache(
            serde_json::json!({"storage": {"s3": {"bucket": "b", "credentialsSecret": "s"}}}),
        );
        assert_eq!(
            render(&s3).max_size,
            None,
            "a bucket has no size to keep under"
        );
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("12Q"), None);
        assert_eq!(quantity_bytes(".5G"), None);
    }

    #[test]
    fn defaults_are_valid() {
        let nc = cache(serde_json::json!({}));
        validate(&nc).expect("valid");
        let args = render(&nc);
        assert!(args.upstreams.is_empty(), "the server's default upstream");
        assert_eq!(args.storage_url, None);
    }

    #[test]
    fn invalid_specs_say_why() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"replicas": 2}),
                "PostgreSQL (spec.database), S3 storage (spec.storage.s3), Redis (spec.redis)",
            ),
            (
                {
                    let mut v = ha();
                    v["redis"] = serde_json::json!([]);
                    v
                },
                "Redis (spec.redis)",
            ),
            (
                serde_json::json!({"upstreams": [{"url": "ftp://x"}]}),
                "upstream",
            ),
            (
                serde_json::json!({"upstreams": [{"url": "https://x", "publicKeys": ["k:AAAA"]}]}),
                "publicKeys",
            ),
            (serde_json::json!({"redis": ["http://r:6379"]}), "redis"),
            (
                serde_json::json!({"gc": {"maxSize": "lots", "schedule": "0 * * * *"}}),
                "max-size",
            ),
            (
                serde_json::json!({"gc": {"maxSize": "1G", "schedule": "every day"}}),
                "gc-schedule",
            ),
            (
                serde_json::json!({"storage": {"volumeSize": "big"}}),
                "volumeSize",
            ),
            (
                serde_json::json!({"signingKey": {"secretName": "Not_A_Name"}}),
                "secretName",
            ),
            (
                serde_json::json!({"storage": {"s3": {"bucket": "b", "endpoint": "s3.local", "credentialsSecret": "s"}}}),
                "endpoint",
            ),
        ];
        for (spec, needle) in cases {
            let err = validate(&cache(spec.clone())).expect_err(&spec.to_string());
            assert!(err.0.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn the_name_must_fit_every_derived_name() {
        let named = |name: &str| {
            let mut nc = cache(serde_json::json!({}));
            nc.metadata.name = Some(name.into());
            validate(&nc)
        };
        for good in ["c", "nixcache", "team-cache-2", &"a".repeat(MAX_NAME)] {
            named(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        // Not a DNS-1035 label (a Service refuses a leading digit and dots), or too long.
        for bad in [
            "2cache",
            "my.cache",
            "Cache",
            "cache-",
            "-cache",
            "",
            &"a".repeat(MAX_NAME + 1),
        ] {
            let err = named(bad).expect_err(bad);
            assert!(err.0.contains("DNS-1035"), "{bad}: {err}");
        }
    }

    #[test]
    fn uploads_and_private_reads_render_without_their_tokens() {
        let nc = cache(serde_json::json!({
            "uploads": {"tokenSecret": {"name": "push", "key": "token"},
                        "trustedKeys": ["ci-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="],
                        "maxSize": "2G"},
            "readTokenSecret": {"name": "pull", "key": "token"}
        }));
        validate(&nc).expect("valid");
        let args = render(&nc);
        assert_eq!(args.upload_trusted_keys.len(), 1);
        assert_eq!(args.max_upload_size.as_deref(), Some("2G"));
        assert_eq!((args.upload_token, args.read_token), (None, None));
        let bad = cache(serde_json::json!({
            "uploads": {"tokenSecret": {"name": "push", "key": "token"}, "maxSize": "huge"}
        }));
        assert!(validate(&bad)
            .expect_err("bad size")
            .0
            .contains("max-upload-size"));
        let bad = cache(serde_json::json!({"readTokenSecret": {"name": "Pull", "key": "t"}}));
        assert!(validate(&bad)
            .expect_err("bad name")
            .0
            .contains("readTokenSecret"));
    }

    #[test]
    fn service_account_grants_render_as_the_servers_flags_and_push_without_a_token() {
        let nc = cache(serde_json::json!({
            "uploads": {},
            "serviceAccountAccess": {
                "audience": "cache.team",
                "read": [{"namespace": "dev"}],
                "push": [{"namespace": "ci", "name": "pusher"}]
            }
        }));
        validate(&nc).expect("valid");
        let args = render(&nc);
        assert_eq!(args.read_service_accounts, vec!["dev/*"]);
        assert_eq!(args.push_service_accounts, vec!["ci/pusher"]);
        assert_eq!(args.service_account_audience.as_deref(), Some("cache.team"));
        let no_token_no_pushers = cache(serde_json::json!({
            "uploads": {},
            "serviceAccountAccess": {"read": [{"namespace": "dev"}]}
        }));
        assert!(validate(&no_token_no_pushers)
            .expect_err("uploads without a way in")
            .0
            .contains("tokenSecret"));
        let bad = cache(serde_json::json!({
            "serviceAccountAccess": {"read": [{"namespace": "Dev"}]}
        }));
        assert!(validate(&bad)
            .expect_err("bad namespace")
            .0
            .contains("read-service-account"));
    }

    #[test]
    fn names_and_quantities() {
        assert!(is_name("s3-creds.v1"));
        assert!(!is_name("-x") && !is_name("A") && !is_name("") && !is_name("a..b"));
        assert!(is_quantity("50Gi") && is_quantity("1.5T") && is_quantity("100"));
        assert!(!is_quantity("Gi") && !is_quantity("5 Gi") && !is_quantity("1.2.3G"));
    }
}
