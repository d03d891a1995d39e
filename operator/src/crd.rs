//! `NixCache` (`nixcache.io/v1alpha1`): one cache — its replicas, upstreams, storage, database,
//! Redis, signing key, GC and service — and what the operator reports back in its status.

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nixcache.io",
    version = "v1alpha1",
    kind = "NixCache",
    plural = "nixcaches",
    shortname = "nc",
    namespaced,
    status = "NixCacheStatus",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"The Ready condition's reason","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Public Key","type":"string","priority":1,"jsonPath":".status.publicKey"}"#,
    printcolumn = r#"{"name":"Last GC","type":"date","priority":1,"jsonPath":".status.gc.lastSuccessTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NixCacheSpec {
    /// Replicas of the cache server. More than one needs PostgreSQL, S3 and Redis.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image with the `nixcache` binary; the operator's own version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Upstream caches; cache.nixos.org with its key when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamSpec>,
    /// How the upstreams are asked on a miss, and when a failing one is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_policy: Option<UpstreamPolicySpec>,
    /// Where NARs are kept: a volume of its own, or an S3 bucket.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Metadata: SQLite on the storage volume when unset, else PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,
    /// Redis masters for locks shared by replicas (`redis://HOST:PORT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis: Vec<String>,
    /// The signing key; generated once into a Secret when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SigningKeySpec>,
    /// LRU cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcSpec>,
    /// An OTLP/HTTP receiver (e.g. `http://otel-collector.monitoring:4318`) that request spans
    /// are exported to; none are without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Store paths (`/nix/store/<hash>-<name>`) whose closures GC never evicts; more can be
    /// pinned through the admin API (`nixcache pin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<String>,
    /// Resources of each server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    #[serde(default)]
    pub service: ServiceSpec,
    /// Priority announced in nix-cache-info (lower is preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,
    /// Uploads (`nix copy --to`), allowed with a token kept in a Secret; off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<UploadsSpec>,
    /// Kubernetes ServiceAccounts that read or push with their projected tokens, which the
    /// server checks with TokenReviews (the operator binds its ServiceAccount to
    /// `system:auth-delegator`). Any reader makes the cache private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_access: Option<ServiceAccountAccessSpec>,
    /// A private cache: every read needs the token in this Secret (clients put it in netrc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token_secret: Option<SecretKeyRef>,
    /// The admin API (`/api/v1`: prefetch, GC on demand), with the token in this Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret: Option<SecretKeyRef>,
    /// Where and how the server (and GC) pods run.
    #[serde(default, skip_serializing_if = "PodOptions::is_empty")]
    pub pod: PodOptions,
}

/// Scheduling, registries and metadata of the cache's pods, Service and ServiceAccount.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Secrets for pulling the image; the operator's own (its `--image-pull-secret`) when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// Spread constraints; with more than one replica and none given, replicas are spread over
    /// nodes and zones where the scheduler can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints:
        Option<Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// The pods' security context instead of the default (uid and gid 65532, non-root,
    /// RuntimeDefault seccomp); `{}` lets the platform choose, as OpenShift's restricted SCC
    /// wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<k8s_openapi::api::core::v1::PodSecurityContext>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    /// E.g. `eks.amazonaws.com/role-arn` (IRSA) or `iam.gke.io/gcp-service-account` (Workload
    /// Identity) for S3 access without static credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_account_annotations: BTreeMap<String, String>,
}

impl PodOptions {
    pub fn is_empty(&self) -> bool {
        self == &PodOptions::default()
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadsSpec {
    /// The key of a Secret holding the upload token (at least 16 characters); without it only
    /// the ServiceAccounts of `serviceAccountAccess.push` upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// Keys (`name:base64`) one of which must have signed every uploaded narinfo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Largest NAR accepted, e.g. `8G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
}

/// Who reads and pushes as a Kubernetes ServiceAccount. A pod mounts a projected
/// `serviceAccountToken` with the audience and sends it as its netrc password.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountAccessSpec {
    /// The audience tokens must be issued for; `nixcache` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// ServiceAccounts that may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<ServiceAccountRef>,
    /// ServiceAccounts that may push (`nix copy --to`), and read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<ServiceAccountRef>,
}

impl ServiceAccountAccessSpec {
    pub fn grants_any(&self) -> bool {
        !self.read.is_empty() || !self.push.is_empty()
    }
}

/// One ServiceAccount, or every one of a namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    pub namespace: String,
    /// The ServiceAccount; every one of the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ServiceAccountRef {
    /// As the server's flags write it: `NAMESPACE/NAME` or `NAMESPACE/*`.
    pub fn flag(&self) -> String {
        format!("{}/{}", self.namespace, self.name.as_deref().unwrap_or("*"))
    }
}

fn one() -> i32 {
    1
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    pub url: String,
    /// This upstream's priority among the upstreams (lower is asked first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,
    /// Keys (`name:base64`) trusted to sign this upstream's narinfos.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// Follow this upstream's redirects to other hosts (a CDN, presigned S3 URLs); never to
    /// loopback, link-local or metadata addresses. Off: redirects stay at the upstream's origin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_origin_redirects: bool,
    /// Credentials of a private upstream, from a Secret: mounted as a file (never in the
    /// ConfigMap), read again when the Secret changes, and sent to this upstream's host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<UpstreamCredentialsSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamCredentialsSpec {
    /// The Secret and the key that holds the credentials.
    pub secret: SecretKeyRef,
    /// What the key holds: `bearer` (a token, sent as `Authorization: Bearer`), `basic`
    /// (`USER:PASSWORD`, sent as HTTP Basic) or `netrc` (a netrc file; its entry for the
    /// upstream's host is sent as HTTP Basic).
    #[serde(rename = "type")]
    pub kind: CredentialsKind,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsKind {
    Bearer,
    Basic,
    Netrc,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// A PersistentVolumeClaim of this size (e.g. `50Gi`) for one replica. Without `spec.gc`,
    /// the server keeps the cache under 80% of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<String>,
    /// The StorageClass of the claim made for `volumeSize` (the cluster's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// An existing PersistentVolumeClaim to use instead of making one; set `volumeSize` to its
    /// size (or `spec.gc`) so that GC keeps it from filling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_claim: Option<String>,
    /// Keep the claim made for `volumeSize` when the NixCache is deleted; a NixCache re-created
    /// under the same name uses it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_on_delete: bool,
    /// The size limit of the `emptyDir` used when neither a claim nor S3 is set (default
    /// `10Gi`). Without `spec.gc`, the server keeps the cache under 80% of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// With S3: each replica's node-local NAR cache, so warm hits are local file reads. On by
    /// default (a 10Gi emptyDir) for S3 storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_cache: Option<LocalCacheSpec>,
}

/// The node-local NAR cache of each replica (never the source of truth: losing it loses nothing).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalCacheSpec {
    /// Turn it off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The volume's size (the emptyDir's limit); the cache keeps to 90% of it. Default `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// A volume claim made for each pod instead of an emptyDir (a generic ephemeral volume, e.g.
    /// on local SSDs); it should request at least `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<k8s_openapi::api::core::v1::EphemeralVolumeSource>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The key of a Secret holding a `postgres://` URL.
    pub postgres_url_secret: SecretKeyRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySpec {
    /// An existing Secret whose `secret-key` holds the key in Nix's format
    /// (`NAME:BASE64`, as `nix-store --generate-binary-cache-key` writes it); used as is.
    pub secret_name: String,
}

/// How the upstreams are asked, and when a failing one is skipped (`--upstream-lookup`,
/// `--upstream-failure-threshold`, `--upstream-backoff`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamPolicySpec {
    /// `parallel` (all at once; the best-priority hit is taken as soon as every better-priority
    /// upstream has said no; the default) or `sequential` (one after another).
    #[serde(default)]
    pub lookup: UpstreamLookup,
    /// Failures in a row (timeouts, failed connections, 5xx) after which an upstream is skipped
    /// for the backoff; 0 never skips it. 3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failure_threshold: Option<i32>,
    /// How long a failing upstream is skipped before one request tries it again, e.g. `30s`;
    /// doubled while that try fails. 30s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamLookup {
    #[default]
    Parallel,
    Sequential,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcSpec {
    /// Size limit of the stored NARs, e.g. `50G` or `500MiB`.
    pub max_size: String,
    /// Cron schedule (`MIN HOUR DOM MON DOW`, or with seconds first), e.g. `0 * * * *`.
    pub schedule: String,
    /// Also evict what has not been used for this long, e.g. `30days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Finished GC Jobs that succeeded kept for inspection.
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,
    /// Finished GC Jobs that failed kept for inspection.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
}

fn three() -> i32 {
    3
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
}

/// How the Service is exposed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            port: default_port(),
            type_: ServiceType::default(),
        }
    }
}

fn default_port() -> i32 {
    80
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NixCacheStatus {
    /// `Ready`, `Progressing`, `Degraded` and `Reconciled`, one of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Server pods (the Deployment's), for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The server pods' label selector, for the scale subresource (and an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// What clients put in `trusted-public-keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The in-cluster substituter URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The substituter URL from outside the cluster, when the Service is a LoadBalancer (its
    /// ingress address) or a NodePort (a node's address).
    #[serde(
        default,
        rename = "externalURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_url: Option<String>,
    /// The ConfigMap with `nix.conf` lines for clients (`extra-substituters`,
    /// `extra-trusted-public-keys`), to mount or to use as `NIX_CONFIG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcStatus>,
}

/// A status condition (Ready, Progressing, Degraded), as Kubernetes conditions are written.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcStatus {
    /// Where GC runs: `Job` (operator-made Jobs on the schedule) or `Server` (the server runs it
    /// on the schedule itself: a cache on an emptyDir or a ReadWriteOnce claim, whose data only
    /// its own pod can reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    /// `Succeeded`, `Failed`, `Running` or `Skipped`, with the Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// The GC Job that has not finished yet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_job: Option<String>,
}

/// The CRD as JSON (valid YAML too), as committed in `crds/`.
pub fn crd_json() -> String {
    let mut s = serde_json::to_string_pretty(&NixCache::crd()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_names_and_columns() {
        let crd = NixCache::crd();
        assert_eq!(crd.spec.group, "nixcache.io");
        assert_eq!(crd.spec.names.kind, "NixCache");
        assert_eq!(crd.spec.names.short_names, Some(vec!["nc".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Replicas",
                "Ready",
                "Status",
                "URL",
                "Age",
                "Public Key",
                "Last GC"
            ]
        );
        let wide: Vec<&str> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority == Some(1))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(wide, ["Public Key", "Last GC"], "shown with -o wide only");
    }

    #[test]
    fn the_schema_follows_the_api_conventions() {
        let text = crd_json();
        assert!(
            !text.contains("\"format\": \"uint"),
            "unsigned integers have no place in a Kubernetes schema"
        );
        let crd: serde_json::Value = serde_json::from_str(&text).expect("json");
        let version = &crd["spec"]["versions"][0];
        let conditions = &version["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(
            version["subresources"]["scale"]["specReplicasPath"], ".spec.replicas",
            "kubectl scale nc and an HPA"
        );
    }

    #[test]
    fn committed_crd_is_current() {
        let committed = include_str!("../../crds/nixcaches.nixcache.io.json");
        assert!(committed == crd_json(), "crds/ drifted from the Rust types: run `cargo run -p nixcache-operator -- crd > crds/nixcaches.nixcache.io.json`");
        let chart = include_str!("../../charts/nixcache-operator/files/nixcaches.nixcache.io.json");
        assert!(chart == committed, "the chart's CRD drifted: copy crds/nixcaches.nixcache.io.json to charts/nixcache-operator/files/nixcaches.nixcache.io.json");
    }

    #[test]
    fn a_minimal_spec_takes_defaults_and_an_ha_spec_reads_back() {
        let minimal: NixCacheSpec = serde_json::from_str("{}").expect("minimal");
        assert_eq!(minimal.replicas, 1);
        assert_eq!(
            minimal.service,
            ServiceSpec {
                port: 80,
                type_: ServiceType::ClusterIP
            }
        );
        let ha = r#"{"replicas":3,"upstreams":[{"url":"https://cache.nixos.org","priority":40}],
            "storage":{"s3":{"bucket":"nix","endpoint":"http://seaweedfs:8333","credentialsSecret":"s3"}},
            "database":{"postgresUrlSecret":{"name":"pg","key":"url"}},
            "redis":["redis://r1:6379","redis://r2:6379","redis://r3:6379"],
            "gc":{"maxSize":"50G","schedule":"0 * * * *"}}"#;
        let spec: NixCacheSpec = serde_json::from_str(ha).expect("ha");
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.redis.len(), 3);
        let again: NixCacheSpec =
            serde_json::from_str(&serde_json::to_string(&spec).expect("ser")).expect("de");
        assert_eq!(again, spec);
    }
}
