//! The server's one configuration type. Every setting is a `serve` flag, an environment variable
//! `NIXCACHE_<FLAG>` and a key of the optional TOML file given by `--config` (the flag's name, e.g.
//! `data-dir = "/var/lib/nixcache"`). Flags win over the environment, which wins over the file,
//! which wins over the defaults.
//!
//! The flags and the resolved type are here; parsing of URLs and specs is in `specs`, signing
//! key files in `keys`.

pub mod defaults;
mod keys;
mod specs;

pub use keys::{load_signing_key, write_secret};
use specs::{key_name, parse_database_url, parse_redis_url, parse_storage_url, parse_upstream};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use croner::Cron;
use serde::{Deserialize, Serialize};

use url::Url;

use crate::env;
use crate::keys::PublicKey;
use crate::schedule::parse_schedule;
use crate::store::{is_canonical_dir, is_store_path};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.to_string(),
    }
}

/// A duration written the human way: `500ms`, `10s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("{s:?}: {e} (write e.g. 10s, 500ms, 5m)"))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

/// How a narinfo miss asks the upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LookupOrder {
    /// All at once; the best-priority hit is taken as soon as every better-priority upstream has
    /// said no.
    Parallel,
    /// One after another in priority order: fewer requests, each one's latency added.
    Sequential,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `nixcache serve` settings as given (flags, environment, file); unset ones take defaults.
#[derive(Args, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServeArgs {
    /// TOML file with any of these settings, keyed by flag name (e.g. `data-dir = "/srv/nixcache"`).
    #[arg(long, env = env::CONFIG, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "NIXCACHE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Directory for the database, stored NARs and the generated signing key.
    #[arg(long, env = "NIXCACHE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Upstream binary cache, repeatable:
    /// `URL[,priority=N][,key=NAME:KEY]...[,trust-unsigned][,cross-origin-redirects]
    /// [,bearer-token-file=PATH|basic-auth-file=PATH|netrc-file=PATH]`. Without `priority=` its
    /// nix-cache-info decides (default 50); without `key=` the --upstream-key keys apply;
    /// `trust-unsigned` accepts narinfos without a trusted signature; the credentials files are
    /// read again when they change. In the environment, separate several with spaces.
    #[arg(
        long = "upstream",
        env = "NIXCACHE_UPSTREAM",
        value_name = "SPEC",
        value_delimiter = ' '
    )]
    #[serde(rename = "upstream")]
    pub upstreams: Vec<String>,

    /// Public key (`NAME:BASE64`) trusted to sign upstream narinfos, repeatable; space-separated in
    /// the environment.
    #[arg(
        long = "upstream-key",
        env = "NIXCACHE_UPSTREAM_KEY",
        value_name = "NAME:KEY",
        value_delimiter = ' '
    )]
    #[serde(rename = "upstream-key")]
    pub upstream_keys: Vec<String>,

    /// File with this cache's secret signing key (`NAME:BASE64`, as `nix-store
    /// --generate-binary-cache-key` writes it). [default: generated on first start into
    /// DATA_DIR/signing-key.sec]
    #[arg(long, env = "NIXCACHE_SIGNING_KEY_FILE", value_name = "PATH")]
    pub signing_key_file: Option<PathBuf>,

    /// Name of the key generated when no --signing-key-file is given.
    #[arg(long, env = "NIXCACHE_SIGNING_KEY_NAME", value_name = "NAME")]
    pub signing_key_name: Option<String>,

    /// Priority announced in /nix-cache-info (lower is preferred by clients).
    #[arg(long, env = "NIXCACHE_PRIORITY", value_name = "N")]
    pub priority: Option<u32>,

    /// Database URL: `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (shared by
    /// replicas). [default: sqlite://DATA_DIR/nixcache.sqlite]
    #[arg(long, env = env::DATABASE_URL, value_name = "URL")]
    pub database_url: Option<String>,

    /// A netrc file (as Nix's `netrc-file`) whose entries give HTTP Basic credentials to the
    /// upstreams they name by host, except those with credentials of their own in their spec.
    #[arg(long, env = "NIXCACHE_UPSTREAM_NETRC_FILE", value_name = "PATH")]
    pub upstream_netrc_file: Option<PathBuf>,

    /// Time to connect to an upstream.
    #[arg(
        long,
        env = "NIXCACHE_UPSTREAM_CONNECT_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_connect_timeout: Option<HumanDuration>,

    /// Time for an upstream to answer (connect to response headers; whole narinfo).
    #[arg(long, env = "NIXCACHE_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<HumanDuration>,

    /// Longest pause in an upstream NAR download before it is abandoned.
    #[arg(long, env = "NIXCACHE_UPSTREAM_STALL_TIMEOUT", value_name = "DURATION")]
    pub upstream_stall_timeout: Option<HumanDuration>,

    /// How a narinfo miss asks the upstreams: `parallel` (all at once; the best-priority hit is
    /// taken as soon as every better-priority upstream has said no) or `sequential` (in priority
    /// order, one after another: fewer requests, each one's latency added).
    #[arg(long, env = "NIXCACHE_UPSTREAM_LOOKUP", value_name = "MODE")]
    pub upstream_lookup: Option<LookupOrder>,

    /// Failures in a row (timeouts, failed connections, 5xx and 429 answers) after which an
    /// upstream is skipped for --upstream-backoff instead of costing every request its timeout; 0
    /// never skips it.
    #[arg(long, env = "NIXCACHE_UPSTREAM_FAILURE_THRESHOLD", value_name = "N")]
    pub upstream_failure_threshold: Option<u32>,

    /// How long a failing upstream is skipped before one request tries it again; doubled each
    /// time that try fails, up to 8 times this.
    #[arg(long, env = "NIXCACHE_UPSTREAM_BACKOFF", value_name = "DURATION")]
    pub upstream_backoff: Option<HumanDuration>,

    /// How long a narinfo no upstream has is answered 404 without asking again.
    #[arg(long, env = "NIXCACHE_NEGATIVE_TTL", value_name = "DURATION")]
    pub negative_ttl: Option<HumanDuration>,

    /// NAR downloads from upstreams that run at once in this process; more wait their turn.
    ///
    #[arg(long, env = "NIXCACHE_MAX_DOWNLOADS", value_name = "N")]
    pub max_downloads: Option<usize>,

    /// How long a NAR download waits for a --max-downloads slot before it is given up and its
    /// clients get a 404.
    #[arg(long, env = "NIXCACHE_DOWNLOAD_QUEUE_TIMEOUT", value_name = "DURATION")]
    pub download_queue_timeout: Option<HumanDuration>,

    /// Free space kept in the staging directory (DATA_DIR/tmp): a download that would leave less
    /// is not started, one that reaches it is stopped.
    #[arg(long, env = "NIXCACHE_STAGING_MIN_FREE", value_name = "SIZE")]
    pub staging_min_free: Option<String>,

    /// How long a NAR whose download failed verification is answered 404 without trying again.
    ///
    #[arg(long, env = "NIXCACHE_NAR_FAILURE_TTL", value_name = "DURATION")]
    pub nar_failure_ttl: Option<HumanDuration>,

    /// Narinfos kept in memory in front of the database.
    #[arg(long, env = "NIXCACHE_NARINFO_MEMORY_ENTRIES", value_name = "N")]
    pub narinfo_memory_entries: Option<u64>,

    /// Store directory of the clients and upstreams.
    #[arg(long, env = "NIXCACHE_STORE_DIR", value_name = "DIR")]
    pub store_dir: Option<String>,

    /// Where NARs and narinfo bodies are kept: `file://DIR` or `s3://BUCKET[/PREFIX]` (shared by
    /// replicas; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). [default:
    /// file://DATA_DIR/store]
    #[arg(long, env = "NIXCACHE_STORAGE_URL", value_name = "URL")]
    pub storage_url: Option<String>,

    /// S3 endpoint of an S3-compatible server (SeaweedFS, Garage, Ceph, MinIO); path-style requests.
    #[arg(long, env = "NIXCACHE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "NIXCACHE_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Redis master for locks shared by replicas, repeatable: each an independent master (Redlock
    /// needs a majority of them); space-separated in the environment. Without any, locks are
    /// in-process (one replica).
    #[arg(
        long = "redis",
        env = "NIXCACHE_REDIS",
        value_name = "URL",
        value_delimiter = ' '
    )]
    #[serde(rename = "redis")]
    pub redis: Vec<String>,

    /// Lifetime of a distributed lock between extensions: how soon another replica takes over the
    /// work of one that died.
    #[arg(long, env = "NIXCACHE_LOCK_TTL", value_name = "DURATION")]
    pub lock_ttl: Option<HumanDuration>,

    /// With replicas: a NAR being downloaded is published to storage in parts of this many bytes,
    /// from which other replicas serve their waiting clients.
    #[arg(long, env = "NIXCACHE_INFLIGHT_PART_SIZE", value_name = "BYTES")]
    pub inflight_part_size: Option<u64>,

    /// Size limit of the stored NARs for GC, e.g. `50G` or `500MiB`. Without it (and without
    /// --max-age), nothing is evicted.
    #[arg(long, env = "NIXCACHE_MAX_SIZE", value_name = "SIZE")]
    pub max_size: Option<String>,

    /// GC evicts what has not been used for this long (e.g. `30days`), beside --max-size.
    #[arg(long, env = "NIXCACHE_MAX_AGE", value_name = "DURATION")]
    pub max_age: Option<HumanDuration>,

    /// Store path whose closure GC never evicts, repeatable (space-separated in the
    /// environment); more can be pinned through the admin API (`nixcache pin`).
    #[arg(
        long = "pin",
        env = "NIXCACHE_PIN",
        value_name = "PATH",
        value_delimiter = ' '
    )]
    #[serde(rename = "pin")]
    pub pins: Vec<String>,

    /// With S3 storage: a directory of this replica's own where NARs it serves are also kept, so
    /// warm hits are local file reads. Bounded by --local-cache-size, least recently used out;
    /// never the source of truth (losing it loses nothing); taken up again after a restart.
    #[arg(long, env = "NIXCACHE_LOCAL_CACHE_DIR", value_name = "DIR")]
    pub local_cache_dir: Option<PathBuf>,

    /// Bytes of NARs the local cache directory holds, e.g. `20G`.
    #[arg(long, env = "NIXCACHE_LOCAL_CACHE_SIZE", value_name = "SIZE")]
    pub local_cache_size: Option<String>,

    /// When GC runs, in cron syntax (`MIN HOUR DOM MON DOW`, or with seconds first), e.g.
    /// `0 * * * *`. Every replica schedules it; only the one that takes the `gc` lock runs.
    #[arg(long, env = "NIXCACHE_GC_SCHEDULE", value_name = "CRON")]
    pub gc_schedule: Option<String>,

    /// Time between GC forgetting a narinfo and deleting its NAR; replicas keep narinfos in memory
    /// for half of it.
    #[arg(long, env = "NIXCACHE_GC_GRACE", value_name = "DURATION")]
    pub gc_grace: Option<HumanDuration>,

    /// GC removes a narinfo whose NAR was never fetched (looked up only) once unused this long.
    ///
    #[arg(long, env = "NIXCACHE_GC_UNFETCHED_TTL", value_name = "DURATION")]
    pub gc_unfetched_ttl: Option<HumanDuration>,

    /// On SIGTERM, how long in-flight requests (and the downloads their clients follow) may take
    /// to finish before they are cut.
    #[arg(long, env = "NIXCACHE_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<HumanDuration>,

    /// On SIGTERM, how long `/readyz` fails before new connections are refused, so that
    /// endpoints and load balancers stop sending traffic first.
    #[arg(long, env = "NIXCACHE_SHUTDOWN_DELAY", value_name = "DURATION")]
    pub shutdown_delay: Option<HumanDuration>,

    /// While Redis is unreachable, answer misses 404 instead of locking in-process only.
    #[arg(long, env = "NIXCACHE_LOCK_STRICT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub lock_strict: Option<bool>,

    /// Name that sets this cache's lock keys in Redis apart from another cache's sharing the same
    /// Redis. [default: the storage URL, e.g. `s3://bucket/prefix`]
    #[arg(long, env = "NIXCACHE_LOCK_NAMESPACE", value_name = "NAME")]
    pub lock_namespace: Option<String>,

    /// Log format.
    #[arg(long, env = "NIXCACHE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// An OTLP/HTTP receiver (e.g. `http://otel-collector:4318`) that request spans are
    /// exported to, at `<URL>/v1/traces`. Without it no span leaves the process (the
    /// `OTEL_EXPORTER_OTLP_*` variables alone do not turn export on).
    #[arg(long, env = "NIXCACHE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Token that allows uploads (`nix copy --to http://…`): the password of HTTP Basic auth (any
    /// user name; Nix sends it from its netrc file) or a Bearer token. Without a token, uploads
    /// are refused. Prefer --upload-token-file: a flag's value is visible to other local users.
    #[arg(
        long,
        env = "NIXCACHE_UPLOAD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub upload_token: Option<String>,

    /// File whose contents (trimmed) are the upload token.
    #[arg(long, env = env::UPLOAD_TOKEN_FILE, value_name = "PATH")]
    pub upload_token_file: Option<PathBuf>,

    /// Public key (`NAME:BASE64`) one of whose signatures every uploaded narinfo must carry,
    /// repeatable; space-separated in the environment. Without any, the token is enough.
    #[arg(
        long = "upload-trusted-key",
        env = "NIXCACHE_UPLOAD_TRUSTED_KEY",
        value_name = "NAME:KEY",
        value_delimiter = ' '
    )]
    #[serde(rename = "upload-trusted-key")]
    pub upload_trusted_keys: Vec<String>,

    /// Largest upload accepted (a NAR file), e.g. `8GiB`, `500MiB` (`G`, `M` are powers of 1000).
    #[arg(long, env = "NIXCACHE_MAX_UPLOAD_SIZE", value_name = "SIZE")]
    pub max_upload_size: Option<String>,

    /// Let an upload replace a narinfo held with other contents (NarHash, NarSize, references)
    /// without a signature by a trusted upload key.
    #[arg(long, env = "NIXCACHE_UPLOAD_REPLACE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub upload_replace: Option<bool>,

    /// Largest build log, realisation or build-trace upload; these are held in memory while they
    /// arrive.
    #[arg(long, env = "NIXCACHE_MAX_LOG_UPLOAD_SIZE", value_name = "SIZE")]
    pub max_log_upload_size: Option<String>,

    /// Token every read needs (HTTP Basic password or Bearer), for a private cache: clients put
    /// it in their netrc file. `/healthz`, `/readyz` and `/pubkey` stay open; the upload token
    /// reads too.
    #[arg(
        long,
        env = "NIXCACHE_READ_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub read_token: Option<String>,

    /// File whose contents (trimmed) are the read token.
    #[arg(long, env = env::READ_TOKEN_FILE, value_name = "PATH")]
    pub read_token_file: Option<PathBuf>,

    /// Token of the admin API (`/api/v1`, as a Bearer token); the API is off without one.
    #[arg(
        long,
        env = "NIXCACHE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// File whose contents (trimmed) are the admin token.
    #[arg(long, env = env::ADMIN_TOKEN_FILE, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// How long finished admin tasks stay readable at `/api/v1/tasks/<id>`.
    #[arg(long, env = "NIXCACHE_TASK_RETENTION", value_name = "DURATION")]
    pub task_retention: Option<HumanDuration>,

    /// With a read token: serve `/metrics` without it.
    #[arg(long, env = "NIXCACHE_PUBLIC_METRICS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub public_metrics: Option<bool>,

    /// Kubernetes ServiceAccount that may read, as `NAMESPACE/NAME`, or `NAMESPACE/*` for every
    /// one of a namespace; repeatable (space-separated in the environment). A pod sends its
    /// projected token (audience --service-account-audience) as the HTTP Basic password (from
    /// Nix's netrc file) or as a Bearer token; the Kubernetes API checks it (a TokenReview, as
    /// the server's own ServiceAccount in a pod, which needs `system:auth-delegator`, else as
    /// $KUBECONFIG says). Reads then need a credential, as with --read-token.
    #[arg(
        long = "read-service-account",
        env = "NIXCACHE_READ_SERVICE_ACCOUNT",
        value_name = "NAMESPACE/NAME",
        value_delimiter = ' '
    )]
    #[serde(rename = "read-service-account")]
    pub read_service_accounts: Vec<String>,

    /// Kubernetes ServiceAccount that may push (`nix copy --to`) and read, as for
    /// --read-service-account; repeatable. Uploads are on with one, token or not.
    #[arg(
        long = "push-service-account",
        env = "NIXCACHE_PUSH_SERVICE_ACCOUNT",
        value_name = "NAMESPACE/NAME",
        value_delimiter = ' '
    )]
    #[serde(rename = "push-service-account")]
    pub push_service_accounts: Vec<String>,

    /// The audience ServiceAccount tokens must be issued for (the `audience` of the projected
    /// `serviceAccountToken`): a token for the Kubernetes API itself is refused.
    #[arg(
        long,
        env = "NIXCACHE_SERVICE_ACCOUNT_AUDIENCE",
        value_name = "AUDIENCE"
    )]
    pub service_account_audience: Option<String>,

    /// How long the answer of a TokenReview is taken again for the same token, yes or no.
    #[arg(long, env = "NIXCACHE_TOKEN_REVIEW_TTL", value_name = "DURATION")]
    pub token_review_ttl: Option<HumanDuration>,
}

/// How one upstream is used.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub url: Url,
    /// Explicit priority; otherwise learned from the upstream's `nix-cache-info`.
    pub priority: Option<u32>,
    /// Keys whose signatures make a narinfo from this upstream acceptable.
    pub keys: Vec<PublicKey>,
    /// Accept narinfos without a valid signature from a trusted key.
    pub trust_unsigned: bool,
    /// Follow redirects to other origins (a CDN, presigned S3 URLs); never to internal addresses
    /// unless the upstream is on one itself. Off: redirects stay at the upstream's origin.
    pub cross_origin_redirects: bool,
    /// Credentials sent to this upstream (and never to another host).
    pub credentials: Option<UpstreamCredentials>,
}

/// Where an upstream's credentials are read from: files only, re-read when they change (a
/// rotated Secret), so that no credential is a flag's value or in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamCredentials {
    /// `Authorization: Bearer <the file's contents, trimmed>`.
    BearerTokenFile(PathBuf),
    /// HTTP Basic with the file's `USER:PASSWORD`, trimmed.
    BasicAuthFile(PathBuf),
    /// The entry of a netrc file for the upstream's host (else its `default` entry), sent as
    /// HTTP Basic, as Nix uses its `netrc-file`.
    NetrcFile(PathBuf),
}

/// Which Kubernetes ServiceAccounts may read and push, checked by TokenReview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountConfig {
    /// May read.
    pub read: Vec<ServiceAccountGrant>,
    /// May push, and read.
    pub push: Vec<ServiceAccountGrant>,
    /// What tokens must be issued for.
    pub audience: String,
    /// How long a review's answer is reused.
    pub review_ttl: Duration,
}

impl ServiceAccountConfig {
    /// Whether `namespace/name` may push.
    pub fn may_push(&self, namespace: &str, name: &str) -> bool {
        self.push.iter().any(|g| g.covers(namespace, name))
    }

    /// Whether `namespace/name` may read (pushing includes reading).
    pub fn may_read(&self, namespace: &str, name: &str) -> bool {
        self.may_push(namespace, name) || self.read.iter().any(|g| g.covers(namespace, name))
    }
}

/// `NAMESPACE/NAME`, or `NAMESPACE/*`: one ServiceAccount, or all of a namespace's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountGrant {
    pub namespace: String,
    /// None: every ServiceAccount of the namespace.
    pub name: Option<String>,
}

impl ServiceAccountGrant {
    pub fn covers(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && self.name.as_deref().is_none_or(|n| n == name)
    }
}

/// A DNS-1123 subdomain, as Kubernetes names Secrets, ServiceAccounts and claims.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A DNS-1123 label, as Kubernetes names namespaces: a subdomain of one part, 63 at most.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

impl FromStr for ServiceAccountGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let shown: String = s.chars().take(100).collect();
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{shown:?}: write NAMESPACE/NAME or NAMESPACE/*"))?;
        if !is_dns_label(namespace) {
            return Err(format!("{shown:?}: {namespace:?} is not a namespace name"));
        }
        let name = match name {
            "*" => None,
            n if is_dns_subdomain(n) => Some(n.to_string()),
            n => return Err(format!("{shown:?}: {n:?} is not a ServiceAccount name")),
        };
        Ok(Self {
            namespace: namespace.to_string(),
            name,
        })
    }
}

/// Where the bucket is and how to reach it. Credentials come from the standard environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    /// For S3-compatible servers; path-style requests are used then.
    pub endpoint: Option<String>,
    pub region: String,
}

/// A secret value: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A token given as a value or in a file: at least 16 characters, trimmed.
fn token(
    setting: &'static str,
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, ConfigError> {
    let token = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                setting,
                format!("give either --{setting} or --{setting}-file"),
            ))
        }
        (Some(t), None) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if token.len() < 16 {
        return Err(invalid(
            setting,
            "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(Some(Secret(token)))
}

/// Uploads, when a token or a ServiceAccount with push rights enables them.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// The upload token; none: only ServiceAccounts push.
    pub token: Option<Secret>,
    /// Keys one of which must have signed an uploaded narinfo; empty: any.
    pub trusted_keys: Vec<PublicKey>,
    /// NAR uploads, streamed to a staging file.
    pub max_size: u64,
    /// Build logs, realisations and build traces, held in memory.
    pub max_log_size: u64,
    /// Uploads may replace held narinfos with other contents.
    pub allow_replace: bool,
}

/// A URL that may carry a password: `Debug` shows it redacted; `expose` gives it whole.
#[derive(Clone, PartialEq, Eq)]
pub struct SensitiveUrl(String);

impl SensitiveUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SensitiveUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact::redact_url(&self.0))
    }
}

/// Where metadata lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseBackend {
    Sqlite(PathBuf),
    Postgres(SensitiveUrl),
}

/// Where NARs and narinfo bodies are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageBackend {
    Local(PathBuf),
    S3(S3Config),
}

impl StorageBackend {
    /// What names this storage among others (no credentials): replicas sharing it are one cache.
    pub fn identity(&self) -> String {
        match self {
            Self::Local(dir) => format!("file://{}", dir.display()),
            Self::S3(s3) if s3.prefix.is_empty() => format!("s3://{}", s3.bucket),
            Self::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        }
    }
}

/// Where the signing key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningKeySource {
    File(PathBuf),
    /// Kept in the data dir; generated with this name when absent.
    Generated {
        path: PathBuf,
        name: String,
    },
}

/// Validated configuration, in sections by the part of the server that uses each: `server`
/// hands each section on whole.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory for the database, stored NARs, staging and the generated signing key.
    pub data_dir: PathBuf,
    /// The store directory of the clients and upstreams.
    pub store_dir: String,
    pub log_format: LogFormat,
    /// Where request spans are exported (OTLP/HTTP traces URL); none: nowhere.
    pub otlp_traces: Option<Url>,
    pub signing_key: SigningKeySource,
    pub http: HttpConfig,
    pub upstreams: UpstreamsConfig,
    pub downloads: DownloadConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub locks: LockConfig,
    pub gc: GcConfig,
    /// Uploads, when a token or a ServiceAccount with push rights enables them.
    pub uploads: Option<UploadConfig>,
    /// Kubernetes ServiceAccounts that may read or push, when any may.
    pub service_accounts: Option<ServiceAccountConfig>,
    pub tasks: TaskConfig,
}

/// The HTTP server: where it listens, what it announces, who may read, and how it stops.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Priority announced in `/nix-cache-info`.
    pub priority: u32,
    /// The token reads need, if any.
    pub read_token: Option<Secret>,
    /// The admin API's token; the API is off without one.
    pub admin_token: Option<Secret>,
    /// `/metrics` without the read token.
    pub public_metrics: bool,
    /// On SIGTERM: how long in-flight requests may take.
    pub shutdown_timeout: Duration,
    /// On SIGTERM: how long `/readyz` fails before new connections are refused.
    pub shutdown_delay: Duration,
}

/// The upstream caches, in configuration order, the time they are given, how they are asked,
/// and when a failing one is skipped.
#[derive(Clone, Debug)]
pub struct UpstreamsConfig {
    pub caches: Vec<UpstreamConfig>,
    pub timeouts: UpstreamTimeouts,
    pub lookup: LookupOrder,
    pub breaker: BreakerConfig,
}

/// When a failing upstream is skipped (its circuit is open), and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit; 0: never.
    pub failures: u32,
    /// How long it stays open the first time; doubled while the retry fails, to 8 times this.
    pub backoff: Duration,
}

/// How long upstreams are given, and how long their "no" is believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// To connect.
    pub connect: Duration,
    /// From connecting to the response headers (and a whole narinfo); also how long a waiting
    /// client waits for a download to start.
    pub first_byte: Duration,
    /// Longest pause between two chunks of a NAR before the download is abandoned.
    pub stall: Duration,
    /// How long a narinfo no upstream has is answered 404 without asking again.
    pub negative_ttl: Duration,
}

/// NAR downloads from upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownloadConfig {
    /// How many run at once in this process; more wait in a queue.
    pub max: usize,
    /// How long one waits in that queue before it is given up (its clients get a 404).
    pub queue_timeout: Duration,
    /// Free space the staging directory keeps.
    pub staging_min_free: u64,
    /// How long a NAR whose download failed verification is answered 404 without a new one.
    pub failure_ttl: Duration,
    /// With replicas: the size of the parts a download is published in for other replicas'
    /// clients.
    pub part_size: u64,
}

/// Where NARs and narinfo bodies are kept, and the node-local tier in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// With S3: a directory of this replica's own that keeps the NARs it serves.
    pub local_cache: Option<LocalCacheConfig>,
}

/// The node-local NAR tier: its directory and how many bytes it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCacheConfig {
    pub dir: PathBuf,
    pub size: u64,
}

/// Where metadata lives, and how much of it is kept in memory in front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub backend: DatabaseBackend,
    /// Narinfos kept in memory in front of the database.
    pub memory_entries: u64,
}

/// The locks that make one replica do each piece of shared work.
#[derive(Clone, Debug)]
pub struct LockConfig {
    /// Redis master URLs; empty for in-process locks.
    pub redis: Vec<SensitiveUrl>,
    /// While Redis is unreachable, refuse (misses 404) instead of locking in-process only.
    pub strict: bool,
    /// Part of every Redis lock key: replicas of one cache share it, other caches do not.
    pub namespace: String,
    /// Lifetime of a lock between extensions.
    pub ttl: Duration,
}

/// GC: what it collects down to, when, what it keeps, and how carefully.
#[derive(Clone, Debug)]
pub struct GcConfig {
    /// Size limit of the stored NARs in bytes.
    pub max_size: Option<u64>,
    /// What has not been used for this long is evicted, whatever the size.
    pub max_age: Option<Duration>,
    /// Store paths whose closures are never evicted (besides those pinned through the admin
    /// API).
    pub pins: Vec<String>,
    pub schedule: Option<Cron>,
    /// Between forgetting a narinfo and deleting its NAR.
    pub grace: Duration,
    /// A narinfo whose NAR was never fetched is removed once unused this long.
    pub unfetched_ttl: Duration,
}

impl GcConfig {
    /// Whether GC has a limit to collect down to: a size, an age, or both.
    pub fn collects(&self) -> bool {
        self.max_size.is_some() || self.max_age.is_some()
    }
}

/// Admin tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// How long finished tasks are kept.
    pub retention: Duration,
}

/// A setting as given, or else its default, parsed as a given value would be (so a default
/// that did not parse would be an error naming its setting, not a panic).
fn given_or<T: FromStr>(
    setting: &'static str,
    given: Option<T>,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match given {
        Some(v) => Ok(v),
        None => default
            .parse()
            .map_err(|e| invalid(setting, format!("default {default:?}: {e}"))),
    }
}

/// A count that must be more than zero.
fn nonzero<T: Default + PartialEq>(setting: &'static str, n: T) -> Result<T, ConfigError> {
    if n == T::default() {
        return Err(invalid(setting, "must be more than zero"));
    }
    Ok(n)
}

/// A setting of a fixed set of values as given, or else its default, read as the flag reads it.
fn choice_or<T: clap::ValueEnum>(
    setting: &'static str,
    given: Option<T>,
    default: &str,
) -> Result<T, ConfigError> {
    match given {
        Some(v) => Ok(v),
        None => T::from_str(default, false)
            .map_err(|e| invalid(setting, format!("default {default:?}: {e}"))),
    }
}

/// A size setting (`50G`, `500MiB`; `G`, `M` are powers of 1000), or else its default.
fn size_or(flag: &'static str, v: Option<&str>, default: &str) -> Result<u64, ConfigError> {
    Ok(parse_size(flag, Some(v.unwrap_or(default)))?.unwrap_or_default())
}

/// A size setting (`50G`, `500MiB`; `G`, `M` are powers of 1000), when it is set.
fn parse_size(flag: &'static str, v: Option<&str>) -> Result<Option<u64>, ConfigError> {
    v.map(|v| {
        v.parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| invalid(flag, format!("{v:?}: {e} (write e.g. 50G, 500MiB)")))
    })
    .transpose()
}

impl ServeArgs {
    fn upload_config(&self, pushers: bool) -> Result<Option<UploadConfig>, ConfigError> {
        let token = token(
            "upload-token",
            self.upload_token.as_deref(),
            self.upload_token_file.as_deref(),
        )?;
        if token.is_none() && !pushers {
            if !self.upload_trusted_keys.is_empty()
                || self.max_upload_size.is_some()
                || self.max_log_upload_size.is_some()
                || self.upload_replace.is_some()
            {
                return Err(invalid(
                    "upload-token",
                    "upload settings without --upload-token, --upload-token-file or \
                     --push-service-account",
                ));
            }
            return Ok(None);
        }
        let trusted_keys = self
            .upload_trusted_keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| {
                PublicKey::parse(k)
                    .map_err(|e| invalid("upload-trusted-key", format!("{}: {e}", key_name(k))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(UploadConfig {
            token,
            trusted_keys,
            max_size: size_or(
                "max-upload-size",
                self.max_upload_size.as_deref(),
                defaults::MAX_UPLOAD_SIZE,
            )?,
            max_log_size: size_or(
                "max-log-upload-size",
                self.max_log_upload_size.as_deref(),
                defaults::MAX_LOG_UPLOAD_SIZE,
            )?,
            allow_replace: self.upload_replace.unwrap_or(false),
        }))
    }

    /// Settings unset here are taken from `other`.
    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(other.config),
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            upstreams: if self.upstreams.is_empty() {
                other.upstreams
            } else {
                self.upstreams
            },
            upstream_keys: if self.upstream_keys.is_empty() {
                other.upstream_keys
            } else {
                self.upstream_keys
            },
            signing_key_file: self.signing_key_file.or(other.signing_key_file),
            signing_key_name: self.signing_key_name.or(other.signing_key_name),
            priority: self.priority.or(other.priority),
            database_url: self.database_url.or(other.database_url),
            storage_url: self.storage_url.or(other.storage_url),
            s3_endpoint: self.s3_endpoint.or(other.s3_endpoint),
            s3_region: self.s3_region.or(other.s3_region),
            upstream_netrc_file: self.upstream_netrc_file.or(other.upstream_netrc_file),
            upstream_connect_timeout: self
                .upstream_connect_timeout
                .or(other.upstream_connect_timeout),
            upstream_timeout: self.upstream_timeout.or(other.upstream_timeout),
            upstream_stall_timeout: self.upstream_stall_timeout.or(other.upstream_stall_timeout),
            upstream_lookup: self.upstream_lookup.or(other.upstream_lookup),
            upstream_failure_threshold: self
                .upstream_failure_threshold
                .or(other.upstream_failure_threshold),
            upstream_backoff: self.upstream_backoff.or(other.upstream_backoff),
            negative_ttl: self.negative_ttl.or(other.negative_ttl),
            max_downloads: self.max_downloads.or(other.max_downloads),
            download_queue_timeout: self.download_queue_timeout.or(other.download_queue_timeout),
            staging_min_free: self.staging_min_free.or(other.staging_min_free),
            nar_failure_ttl: self.nar_failure_ttl.or(other.nar_failure_ttl),
            narinfo_memory_entries: self.narinfo_memory_entries.or(other.narinfo_memory_entries),
            store_dir: self.store_dir.or(other.store_dir),
            log_format: self.log_format.or(other.log_format),
            otlp_endpoint: self.otlp_endpoint.or(other.otlp_endpoint),
            redis: if self.redis.is_empty() {
                other.redis
            } else {
                self.redis
            },
            lock_strict: self.lock_strict.or(other.lock_strict),
            lock_namespace: self.lock_namespace.or(other.lock_namespace),
            lock_ttl: self.lock_ttl.or(other.lock_ttl),
            inflight_part_size: self.inflight_part_size.or(other.inflight_part_size),
            max_size: self.max_size.or(other.max_size),
            max_age: self.max_age.or(other.max_age),
            pins: if self.pins.is_empty() {
                other.pins
            } else {
                self.pins
            },
            local_cache_dir: self.local_cache_dir.or(other.local_cache_dir),
            local_cache_size: self.local_cache_size.or(other.local_cache_size),
            gc_schedule: self.gc_schedule.or(other.gc_schedule),
            gc_grace: self.gc_grace.or(other.gc_grace),
            gc_unfetched_ttl: self.gc_unfetched_ttl.or(other.gc_unfetched_ttl),
            shutdown_timeout: self.shutdown_timeout.or(other.shutdown_timeout),
            shutdown_delay: self.shutdown_delay.or(other.shutdown_delay),
            upload_token: self.upload_token.or(other.upload_token),
            upload_token_file: self.upload_token_file.or(other.upload_token_file),
            upload_trusted_keys: if self.upload_trusted_keys.is_empty() {
                other.upload_trusted_keys
            } else {
                self.upload_trusted_keys
            },
            max_upload_size: self.max_upload_size.or(other.max_upload_size),
            max_log_upload_size: self.max_log_upload_size.or(other.max_log_upload_size),
            upload_replace: self.upload_replace.or(other.upload_replace),
            read_token: self.read_token.or(other.read_token),
            read_token_file: self.read_token_file.or(other.read_token_file),
            public_metrics: self.public_metrics.or(other.public_metrics),
            read_service_accounts: if self.read_service_accounts.is_empty() {
                other.read_service_accounts
            } else {
                self.read_service_accounts
            },
            push_service_accounts: if self.push_service_accounts.is_empty() {
                other.push_service_accounts
            } else {
                self.push_service_accounts
            },
            service_account_audience: self
                .service_account_audience
                .or(other.service_account_audience),
            token_review_ttl: self.token_review_ttl.or(other.token_review_ttl),
            admin_token: self.admin_token.or(other.admin_token),
            admin_token_file: self.admin_token_file.or(other.admin_token_file),
            task_retention: self.task_retention.or(other.task_retention),
        }
    }

    /// Merges in the `--config` file (if any), applies defaults and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let args = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                let file: ServeArgs = toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                self.or(file)
            }
            None => self,
        };
        args.into_config()
    }

    /// Who may read and push as a Kubernetes ServiceAccount, when anyone may.
    fn service_account_config(&self) -> Result<Option<ServiceAccountConfig>, ConfigError> {
        let grants = |setting: &'static str, given: &[String]| {
            given
                .iter()
                .filter(|g| !g.trim().is_empty())
                .map(|g| g.parse().map_err(|e| invalid(setting, e)))
                .collect::<Result<Vec<ServiceAccountGrant>, _>>()
        };
        let read = grants("read-service-account", &self.read_service_accounts)?;
        let push = grants("push-service-account", &self.push_service_accounts)?;
        if read.is_empty() && push.is_empty() {
            if self.service_account_audience.is_some() || self.token_review_ttl.is_some() {
                return Err(invalid(
                    "service-account-audience",
                    "ServiceAccount settings without --read-service-account or \
                     --push-service-account",
                ));
            }
            return Ok(None);
        }
        let audience: String = given_or(
            "service-account-audience",
            self.service_account_audience.clone(),
            defaults::SERVICE_ACCOUNT_AUDIENCE,
        )?;
        if audience.trim().is_empty() {
            return Err(invalid("service-account-audience", "must not be empty"));
        }
        let review_ttl = given_or(
            "token-review-ttl",
            self.token_review_ttl,
            defaults::TOKEN_REVIEW_TTL,
        )?
        .0;
        Ok(Some(ServiceAccountConfig {
            read,
            push,
            audience: audience.trim().to_string(),
            review_ttl,
        }))
    }

    fn into_config(self) -> Result<Config, ConfigError> {
        let service_accounts = self.service_account_config()?;
        let uploads = self.upload_config(
            service_accounts
                .as_ref()
                .is_some_and(|s| !s.push.is_empty()),
        )?;
        let read_token = token(
            "read-token",
            self.read_token.as_deref(),
            self.read_token_file.as_deref(),
        )?;
        let admin_token = token(
            "admin-token",
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
        )?;
        let data_dir: PathBuf = given_or("data-dir", self.data_dir, defaults::DATA_DIR)?;
        let store_dir: String = given_or("store-dir", self.store_dir, defaults::STORE_DIR)?;
        if !is_canonical_dir(&store_dir) {
            return Err(invalid(
                "store-dir",
                format!("{store_dir:?} is not an absolute, normalized directory"),
            ));
        }
        let keys = if self.upstream_keys.is_empty() {
            vec![defaults::UPSTREAM_KEY.to_string()]
        } else {
            self.upstream_keys
        };
        let default_keys = keys
            .iter()
            .map(|k| {
                PublicKey::parse(k)
                    .map_err(|e| invalid("upstream-key", format!("{}: {e}", key_name(k))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let specs = if self.upstreams.is_empty() {
            vec![defaults::UPSTREAM.to_string()]
        } else {
            self.upstreams
        };
        let upstreams = specs
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_upstream(s, &default_keys))
            .map(|u| {
                u.map(|mut u| {
                    if u.credentials.is_none() {
                        u.credentials = self
                            .upstream_netrc_file
                            .clone()
                            .map(UpstreamCredentials::NetrcFile);
                    }
                    u
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let signing_key = match self.signing_key_file {
            Some(path) => SigningKeySource::File(path),
            None => {
                let name: String = given_or(
                    "signing-key-name",
                    self.signing_key_name,
                    defaults::SIGNING_KEY_NAME,
                )?;
                if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
                    return Err(invalid(
                        "signing-key-name",
                        "must be non-empty, without ':' or spaces",
                    ));
                }
                SigningKeySource::Generated {
                    path: data_dir.join("signing-key.sec"),
                    name,
                }
            }
        };
        let database = match self.database_url {
            None => DatabaseBackend::Sqlite(data_dir.join("nixcache.sqlite")),
            Some(url) => parse_database_url(&url)?,
        };
        let storage = parse_storage_url(
            self.storage_url.as_deref(),
            &data_dir,
            self.s3_endpoint,
            given_or("s3-region", self.s3_region, defaults::S3_REGION)?,
        )?;
        let pins: Vec<String> = self
            .pins
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| {
                if is_store_path(&store_dir, p) {
                    Ok(p.to_string())
                } else {
                    let shown: String = p.chars().take(200).collect();
                    Err(invalid(
                        "pin",
                        format!("{shown:?} is not a store path of {store_dir}"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        let lock_namespace = match self.lock_namespace.as_deref().map(str::trim) {
            Some("") => return Err(invalid("lock-namespace", "must not be empty")),
            Some(n) => n.to_string(),
            None => storage.identity(),
        };
        let duration = |setting: &'static str, d: Option<HumanDuration>, default: &str| {
            given_or(setting, d, default).map(|d| d.0)
        };
        let positive = |setting: &'static str, d: Option<HumanDuration>, default: &str| {
            let d = duration(setting, d, default)?;
            if d.is_zero() {
                return Err(invalid(setting, "must be more than zero"));
            }
            Ok(d)
        };

        let local_cache = match &self.local_cache_dir {
            Some(dir) => Some(LocalCacheConfig {
                dir: dir.clone(),
                size: size_or(
                    "local-cache-size",
                    self.local_cache_size.as_deref(),
                    defaults::LOCAL_CACHE_SIZE,
                )?,
            }),
            None if self.local_cache_size.is_some() => {
                return Err(invalid("local-cache-size", "needs --local-cache-dir"))
            }
            None => None,
        };
        Ok(Config {
            http: HttpConfig {
                listen: given_or("listen", self.listen, defaults::LISTEN)?,
                priority: given_or("priority", self.priority, defaults::PRIORITY)?,
                read_token,
                admin_token,
                public_metrics: self.public_metrics.unwrap_or(false),
                shutdown_timeout: positive(
                    "shutdown-timeout",
                    self.shutdown_timeout,
                    defaults::SHUTDOWN_TIMEOUT,
                )?,
                shutdown_delay: duration(
                    "shutdown-delay",
                    self.shutdown_delay,
                    defaults::SHUTDOWN_DELAY,
                )?,
            },
            upstreams: UpstreamsConfig {
                caches: upstreams,
                timeouts: UpstreamTimeouts {
                    connect: positive(
                        "upstream-connect-timeout",
                        self.upstream_connect_timeout,
                        defaults::UPSTREAM_CONNECT_TIMEOUT,
                    )?,
                    first_byte: positive(
                        "upstream-timeout",
                        self.upstream_timeout,
                        defaults::UPSTREAM_TIMEOUT,
                    )?,
                    stall: positive(
                        "upstream-stall-timeout",
                        self.upstream_stall_timeout,
                        defaults::UPSTREAM_STALL_TIMEOUT,
                    )?,
                    negative_ttl: duration(
                        "negative-ttl",
                        self.negative_ttl,
                        defaults::NEGATIVE_TTL,
                    )?,
                },
                lookup: choice_or(
                    "upstream-lookup",
                    self.upstream_lookup,
                    defaults::UPSTREAM_LOOKUP,
                )?,
                breaker: BreakerConfig {
                    failures: given_or(
                        "upstream-failure-threshold",
                        self.upstream_failure_threshold,
                        defaults::UPSTREAM_FAILURE_THRESHOLD,
                    )?,
                    backoff: positive(
                        "upstream-backoff",
                        self.upstream_backoff,
                        defaults::UPSTREAM_BACKOFF,
                    )?,
                },
            },
            downloads: DownloadConfig {
                max: nonzero(
                    "max-downloads",
                    given_or("max-downloads", self.max_downloads, defaults::MAX_DOWNLOADS)?,
                )?,
                queue_timeout: positive(
                    "download-queue-timeout",
                    self.download_queue_timeout,
                    defaults::DOWNLOAD_QUEUE_TIMEOUT,
                )?,
                staging_min_free: size_or(
                    "staging-min-free",
                    self.staging_min_free.as_deref(),
                    defaults::STAGING_MIN_FREE,
                )?,
                failure_ttl: duration(
                    "nar-failure-ttl",
                    self.nar_failure_ttl,
                    defaults::NAR_FAILURE_TTL,
                )?,
                part_size: nonzero(
                    "inflight-part-size",
                    given_or(
                        "inflight-part-size",
                        self.inflight_part_size,
                        defaults::INFLIGHT_PART_SIZE,
                    )?,
                )?,
            },
            storage: StorageConfig {
                backend: storage,
                local_cache,
            },
            database: DatabaseConfig {
                backend: database,
                memory_entries: given_or(
                    "narinfo-memory-entries",
                    self.narinfo_memory_entries,
                    defaults::NARINFO_MEMORY_ENTRIES,
                )?,
            },
            locks: LockConfig {
                redis: self
                    .redis
                    .iter()
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| parse_redis_url(u))
                    .collect::<Result<_, _>>()?,
                strict: self.lock_strict.unwrap_or(false),
                namespace: lock_namespace,
                ttl: positive("lock-ttl", self.lock_ttl, defaults::LOCK_TTL)?,
            },
            gc: GcConfig {
                max_size: parse_size("max-size", self.max_size.as_deref())?,
                max_age: self
                    .max_age
                    .map(|d| d.0)
                    .map(|d| nonzero("max-age", d))
                    .transpose()?,
                pins: pins.clone(),
                schedule: self
                    .gc_schedule
                    .as_deref()
                    .map(|v| parse_schedule(v).map_err(|e| invalid("gc-schedule", e)))
                    .transpose()?,
                grace: positive("gc-grace", self.gc_grace, defaults::GC_GRACE)?,
                unfetched_ttl: positive(
                    "gc-unfetched-ttl",
                    self.gc_unfetched_ttl,
                    defaults::GC_UNFETCHED_TTL,
                )?,
            },
            uploads,
            service_accounts,
            tasks: TaskConfig {
                retention: positive(
                    "task-retention",
                    self.task_retention,
                    defaults::TASK_RETENTION,
                )?,
            },
            signing_key,
            store_dir,
            otlp_traces: match self.otlp_endpoint.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(base) => {
                    let url = Url::parse(&format!("{}/v1/traces", base.trim_end_matches('/')))
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
                    match url {
                        Some(url) => Some(url),
                        None => {
                            let shown: String =
                                crate::redact::redact_url(base).chars().take(200).collect();
                            return Err(invalid(
                                "otlp-endpoint",
                                format!("{shown:?} is not an http(s) URL"),
                            ));
                        }
                    }
                }
            },
            log_format: choice_or("log-format", self.log_format, defaults::LOG_FORMAT)?,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::CACHE_NIXOS_ORG_KEY;

    #[test]
    fn defaults() {
        let c = ServeArgs::default().resolve().expect("valid");
        assert_eq!(c.http.listen.to_string(), defaults::LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(defaults::DATA_DIR));
        assert_eq!(c.upstreams.caches.len(), 1);
        assert_eq!(
            c.upstreams.caches[0].url.as_str(),
            "https://cache.nixos.org/"
        );
        assert_eq!(
            c.upstreams.caches[0].keys[0].to_string(),
            CACHE_NIXOS_ORG_KEY
        );
        assert_eq!(c.http.priority, 40);
        assert_eq!(
            c.database.backend,
            DatabaseBackend::Sqlite(PathBuf::from("./nixcache-data/nixcache.sqlite"))
        );
        assert!(matches!(c.signing_key, SigningKeySource::Generated { .. }));
    }

    #[test]
    fn service_accounts_read_and_push_with_uploads_on_without_a_token() {
        let grant = |s: &str| s.parse::<ServiceAccountGrant>();
        assert_eq!(
            grant("ci/builder"),
            Ok(ServiceAccountGrant {
                namespace: "ci".into(),
                name: Some("builder".into())
            })
        );
        assert_eq!(grant("ci/*").map(|g| g.name), Ok(None));
        for bad in [
            "ci", "/x", "ci/", "Ci/x", "ci/x/y", "c.i/x", "ci/-x", "ci/X",
        ] {
            assert!(grant(bad).is_err(), "{bad:?}");
        }
        assert!(
            grant("ci/a.b").is_ok(),
            "ServiceAccount names may have dots"
        );

        let config = ServeArgs {
            read_service_accounts: vec!["dev/*".into()],
            push_service_accounts: vec!["ci/pusher".into()],
            ..ServeArgs::default()
        }
        .resolve()
        .expect("valid");
        let accounts = config.service_accounts.expect("on");
        assert_eq!(accounts.audience, "nixcache");
        assert_eq!(accounts.review_ttl, Duration::from_secs(30));
        assert!(accounts.may_read("dev", "anyone") && !accounts.may_push("dev", "anyone"));
        assert!(accounts.may_read("ci", "pusher") && accounts.may_push("ci", "pusher"));
        assert!(!accounts.may_read("ci", "other") && !accounts.may_read("other", "pusher"));
        let uploads = config.uploads.expect("pushers turn uploads on");
        assert!(uploads.token.is_none());

        let readers_only = ServeArgs {
            read_service_accounts: vec!["dev/*".into()],
            service_account_audience: Some("cache.example".into()),
            token_review_ttl: Some("5s".parse().expect("duration")),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("valid");
        assert!(
            readers_only.uploads.is_none(),
            "readers do not turn uploads on"
        );
        let accounts = readers_only.service_accounts.expect("on");
        assert_eq!(
            (accounts.audience.as_str(), accounts.review_ttl),
            ("cache.example", Duration::from_secs(5))
        );

        let err = |a: ServeArgs| a.resolve().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(ServeArgs {
            read_service_accounts: vec!["nonamespace".into()],
            ..ServeArgs::default()
        })
        .contains("read-service-account"));
        assert!(err(ServeArgs {
            service_account_audience: Some("x".into()),
            ..ServeArgs::default()
        })
        .contains("without --read-service-account"));
        assert!(err(ServeArgs {
            read_service_accounts: vec!["dev/*".into()],
            max_upload_size: Some("1G".into()),
            ..ServeArgs::default()
        })
        .contains("--push-service-account"));
    }

    #[test]
    fn upload_settings() {
        let none = ServeArgs::default().resolve().expect("valid");
        assert!(none.uploads.is_none(), "uploads are off by default");
        let args = |token: Option<&str>, keys: &[&str], max: Option<&str>| ServeArgs {
            upload_token: token.map(String::from),
            upload_trusted_keys: keys.iter().map(|k| k.to_string()).collect(),
            max_upload_size: max.map(String::from),
            ..ServeArgs::default()
        };
        let on = args(Some("0123456789abcdef"), &[CACHE_NIXOS_ORG_KEY], Some("1G"))
            .resolve()
            .expect("valid")
            .uploads
            .expect("on");
        assert_eq!(
            on.token.as_ref().map(Secret::expose),
            Some("0123456789abcdef")
        );
        assert_eq!((on.trusted_keys.len(), on.max_size), (1, 1_000_000_000));
        // As documented: 8 GiB for NARs, 16 MiB for logs, realisations and build traces.
        let defaults = args(Some("0123456789abcdef"), &[], None)
            .resolve()
            .expect("valid")
            .uploads
            .expect("on");
        assert_eq!(
            (defaults.max_size, defaults.max_log_size),
            (8 << 30, 16 << 20)
        );
        assert!(
            !format!("{on:?}").contains("0123456789abcdef"),
            "Debug hides the token"
        );
        let err = |a: ServeArgs| a.resolve().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(args(Some("short"), &[], None)).contains("16 characters"));
        assert!(err(args(None, &[CACHE_NIXOS_ORG_KEY], None)).contains("without --upload-token"));
        assert!(
            err(args(Some("0123456789abcdef"), &["k:AAAA"], None)).contains("upload-trusted-key")
        );
        assert!(err(args(Some("0123456789abcdef"), &[], Some("lots"))).contains("max-upload-size"));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "fedcba9876543210fedcba\n").expect("write");
        let from_file = ServeArgs {
            upload_token_file: Some(file.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(
            from_file
                .resolve()
                .expect("valid")
                .uploads
                .and_then(|u| u.token.map(|t| t.expose().to_string())),
            Some("fedcba9876543210fedcba".to_string())
        );
        let both = ServeArgs {
            upload_token_file: Some(file),
            ..args(Some("0123456789abcdef"), &[], None)
        };
        assert!(err(both).contains("either"));
        let private = ServeArgs {
            read_token: Some("abcdefghijklmnopq".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(private.http.read_token.map(|t| t.expose().len()), Some(17));
        assert!(!private.http.public_metrics);
        assert!(err(ServeArgs {
            read_token: Some("short".into()),
            ..ServeArgs::default()
        })
        .contains("read-token"));
    }

    #[test]
    fn upstream_specs() {
        let key = PublicKey::parse(CACHE_NIXOS_ORG_KEY).expect("key");
        let u = parse_upstream(
            "http://a.example/sub,priority=7,trust-unsigned",
            std::slice::from_ref(&key),
        )
        .expect("valid");
        assert_eq!(
            (u.priority, u.trust_unsigned, u.keys.len()),
            (Some(7), true, 1)
        );
        let own = "other-1:vcUimjOS/F79QrUloWtvsY/0GeyqpkxAfjfM5nPtjRQ=";
        let u = parse_upstream(&format!("https://b.example,key={own}"), &[key]).expect("valid");
        assert_eq!(u.keys.len(), 1);
        assert_eq!(u.keys[0].name(), "other-1");
        for bad in [
            "ftp://x",
            "not a url",
            "http://x,priority=high",
            "http://x,colour=blue",
            "http://x,key=k:AAAA",
        ] {
            assert!(parse_upstream(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nixcache.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\npriority = 10\nupstream = [\"http://u.example\"]\nnegative-ttl = \"5s\"\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path.clone()),
            priority: Some(30),
            ..Default::default()
        };
        let c = args.resolve().expect("valid");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.http.priority, 30, "flags win over the file");
        assert_eq!(c.upstreams.timeouts.negative_ttl, Duration::from_secs(5));
        assert_eq!(c.upstreams.caches[0].url.as_str(), "http://u.example/");

        std::fs::write(&path, "no-such-setting = 1\n").expect("write");
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .expect_err("unknown key");
        assert!(err.to_string().contains("no-such-setting"), "{err}");
    }

    #[test]
    fn errors_never_echo_key_material() {
        let secret = "k-1:c2VjcmV0c2VjcmV0c2VjcmV0";
        let err = ServeArgs {
            upstream_keys: vec![secret.into()],
            ..Default::default()
        }
        .resolve()
        .expect_err("bad key");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn generated_key_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let source = SigningKeySource::Generated {
            path: dir.path().join("k.sec"),
            name: "test-1".into(),
        };
        let (k1, created) = load_signing_key(&source).expect("generate");
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("k.sec"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (k2, created) = load_signing_key(&source).expect("load");
        assert!(!created);
        assert_eq!(k1.public_key(), k2.public_key());
    }

    #[test]
    fn postgres_urls_are_accepted_and_never_shown_with_their_password() {
        let url = "postgres://nixcache:hunter2@db.example:5432/nixcache";
        let c = ServeArgs {
            database_url: Some(url.into()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(
            c.database.backend,
            DatabaseBackend::Postgres(SensitiveUrl(url.into()))
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = ServeArgs {
            redis: vec!["redis://:hunter2@r1:6379".into()],
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.locks.redis[0].expose(), "redis://:hunter2@r1:6379");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(ServeArgs {
            redis: vec!["http://r1".into()],
            ..Default::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn storage_urls() {
        let c = ServeArgs::default().resolve().expect("valid");
        assert_eq!(
            c.storage.backend,
            StorageBackend::Local(PathBuf::from("./nixcache-data/store"))
        );
        let args = ServeArgs {
            storage_url: Some("s3://cache/nix/".into()),
            s3_endpoint: Some("http://127.0.0.1:8333".into()),
            ..Default::default()
        };
        let StorageBackend::S3(s3) = args.resolve().expect("valid").storage.backend else {
            panic!("not S3")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str(), s3.region.as_str()),
            ("cache", "nix", "us-east-1")
        );
        for bad in ["s3://", "ftp://x", "file://"] {
            assert!(
                ServeArgs {
                    storage_url: Some(bad.into()),
                    ..Default::default()
                }
                .resolve()
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn gc_settings() {
        let args = ServeArgs {
            max_size: Some("50G".into()),
            gc_schedule: Some("*/5 * * * *".into()),
            ..Default::default()
        };
        let c = args.resolve().expect("valid");
        assert_eq!(c.gc.max_size, Some(50_000_000_000));
        assert!(c.gc.schedule.is_some());
        assert_eq!(c.gc.grace, Duration::from_secs(60));
        let c = ServeArgs {
            max_size: Some("1MiB".into()),
            ..Default::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.gc.max_size, Some(1 << 20));
        assert!(ServeArgs {
            max_size: Some("lots".into()),
            ..Default::default()
        }
        .resolve()
        .is_err());
        assert!(ServeArgs {
            gc_schedule: Some("every day".into()),
            ..Default::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn rejects_unsupported_database() {
        let err = ServeArgs {
            database_url: Some("mysql://u:pw@h/db".into()),
            ..Default::default()
        }
        .resolve()
        .expect_err("bad");
        assert!(!err.to_string().contains("pw"));
    }

    #[test]
    fn upstream_credentials_come_from_files_and_netrc_fills_in() {
        let resolved = |upstreams: &[&str], netrc: Option<&str>| {
            ServeArgs {
                upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
                upstream_netrc_file: netrc.map(PathBuf::from),
                ..ServeArgs::default()
            }
            .resolve()
        };
        let c = resolved(
            &[
                "https://a.example,bearer-token-file=/run/a",
                "https://b.example,basic-auth-file=/run/b",
                "https://c.example",
            ],
            Some("/etc/netrc"),
        )
        .expect("valid");
        let creds: Vec<_> = c
            .upstreams
            .caches
            .iter()
            .map(|u| u.credentials.clone())
            .collect();
        assert_eq!(
            creds,
            vec![
                Some(UpstreamCredentials::BearerTokenFile("/run/a".into())),
                Some(UpstreamCredentials::BasicAuthFile("/run/b".into())),
                Some(UpstreamCredentials::NetrcFile("/etc/netrc".into())),
            ]
        );
        let none = resolved(&["https://c.example"], None).expect("valid");
        assert_eq!(none.upstreams.caches[0].credentials, None);
        let two = resolved(
            &["https://a.example,bearer-token-file=/a,netrc-file=/n"],
            None,
        );
        assert!(two.is_err(), "one kind of credentials");
    }
}
