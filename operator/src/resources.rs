//! The children of a `NixCache`, as pure functions of the resource (and of the few facts the
//! reconciler learns from the API server: the key fingerprint, the PDB API version, a GC time).
//! Nothing here talks to a server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use nixcache_settings::env;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{
    render_toml, CONFIG_DIR, CONFIG_FILE, DATA_DIR, KEY_DIR, KEY_FILE, SERVER_PORT,
};
use crate::crd::NixCache;

/// The image when neither the spec nor the operator's `--image` names one.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/nixcache/nixcache:", env!("CARGO_PKG_VERSION"));
/// The pod template annotation that changes whenever configuration or key change.
pub const CONFIG_HASH_ANNOTATION: &str = "nixcache.io/config-hash";
/// Labels a GC Job with its cache and scheduled time.
pub const CACHE_LABEL: &str = "nixcache.io/cache";
pub const SCHEDULED_ANNOTATION: &str = "nixcache.io/scheduled-at";
pub const MANAGED_BY: &str = "nixcache-operator";
/// On a NixCache whose generated signing key Secret is gone: the key it names (its public key,
/// or the name before the `:`) may be replaced by a new one. Without it the operator never makes
/// a second key, since every client trusts the first.
pub const REGENERATE_KEY_ANNOTATION: &str = "nixcache.io/regenerate-signing-key";
/// The `public-key` entry of a signing key Secret.
pub const PUBLIC_KEY_ENTRY: &str = "public-key";

/// What the operator gives every cache's pods unless its spec says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defaults {
    /// The server image when the spec names none.
    pub image: String,
    /// Image pull Secrets (names, in the cache's namespace) when the spec names none: the
    /// operator's own.
    pub image_pull_secrets: Vec<String>,
}

impl Defaults {
    pub fn with_image(image: &str) -> Defaults {
        Defaults {
            image: image.to_string(),
            image_pull_secrets: Vec::new(),
        }
    }
}

/// Resource requests of a server container whose spec sets no resources: enough for the
/// scheduler to place it honestly.
const DEFAULT_REQUESTS: (&str, &str) = ("100m", "128Mi");

#[derive(Debug, thiserror::Error)]
#[error("building {kind}: {source}")]
pub struct BuildError {
    kind: &'static str,
    source: serde_json::Error,
}

fn typed<T: serde::de::DeserializeOwned>(kind: &'static str, v: Value) -> Result<T, BuildError> {
    serde_json::from_value(v).map_err(|source| BuildError { kind, source })
}

/// Names of the children.
pub fn config_map_name(nc: &NixCache) -> String {
    format!("{}-config", nc.name_any())
}
pub fn signing_key_secret_name(nc: &NixCache) -> String {
    match &nc.spec.signing_key {
        Some(k) => k.secret_name.clone(),
        None => format!("{}-signing-key", nc.name_any()),
    }
}
pub fn pvc_name(nc: &NixCache) -> String {
    format!("{}-data", nc.name_any())
}
/// A GC Job's name: one per cache and scheduled time, so a second attempt at the same tick
/// (another operator, a retried reconcile) finds it exists instead of starting a second run.
///
/// Job names end up in pod labels (63 characters): a cache name of at most
/// [`crate::config::MAX_NAME`] leaves room for `-gc-` and ten digits, so names are never
/// shortened and two caches' Jobs never share a name.
pub fn gc_job_name(nc: &NixCache, scheduled_unix: i64) -> String {
    format!("{}-gc-{}", nc.name_any(), scheduled_unix)
}

/// The cluster's DNS domain when the operator is told none.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// What clients in the cluster put in `substituters`.
pub fn url(nc: &NixCache, cluster_domain: &str) -> String {
    format!(
        "http://{}.{}.svc.{}:{}",
        nc.name_any(),
        nc.namespace().unwrap_or_else(|| "default".into()),
        cluster_domain.trim_matches('.'),
        nc.spec.service.port
    )
}

/// The ConfigMap of client settings.
pub fn client_config_map_name(nc: &NixCache) -> String {
    format!("{}-nix-config", nc.name_any())
}
/// Its key: `nix.conf` lines, for a mounted `nix.conf` include or for `NIX_CONFIG`.
pub const CLIENT_CONFIG_KEY: &str = "nix.conf";

/// The settings a Nix client needs to substitute from this cache, on top of its own:
/// `extra-substituters` and `extra-trusted-public-keys`.
pub fn client_config_map(nc: &NixCache, url: &str, public_key: &str) -> ConfigMap {
    let conf = format!("extra-substituters = {url}\nextra-trusted-public-keys = {public_key}\n");
    ConfigMap {
        metadata: meta(nc, client_config_map_name(nc), "client-config"),
        data: Some(BTreeMap::from([
            (CLIENT_CONFIG_KEY.into(), conf),
            ("substituter".into(), url.into()),
            ("public-key".into(), public_key.into()),
        ])),
        ..ConfigMap::default()
    }
}

pub fn labels(nc: &NixCache, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "nixcache".into()),
        ("app.kubernetes.io/instance".into(), nc.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (CACHE_LABEL.into(), nc.name_any()),
    ])
}

fn selector(nc: &NixCache) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".into(), nc.name_any()),
        ("app.kubernetes.io/component".into(), "server".into()),
        (CACHE_LABEL.into(), nc.name_any()),
    ])
}

/// The server pods' selector as a label query (`k=v,k=v`), for the scale subresource.
pub fn selector_string(nc: &NixCache) -> String {
    selector(nc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(nc: &NixCache) -> Vec<OwnerReference> {
    nc.controller_owner_ref(&()).into_iter().collect()
}

fn meta(nc: &NixCache, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: nc.namespace(),
        labels: Some(labels(nc, component)),
        owner_references: Some(owner(nc)),
        ..ObjectMeta::default()
    }
}

/// Whether the server reviews ServiceAccount tokens: some ServiceAccount is granted access.
pub fn reviews_tokens(nc: &NixCache) -> bool {
    nc.spec
        .service_account_access
        .as_ref()
        .is_some_and(|a| a.grants_any())
}

/// The ClusterRole that lets the server create TokenReviews.
pub const TOKEN_REVIEW_ROLE: &str = "system:auth-delegator";

/// Labels of the cluster-scoped ClusterRoleBinding, naming its cache (it cannot have a
/// namespaced owner: the operator deletes it, through a finalizer on the cache).
pub const BINDING_NAMESPACE_LABEL: &str = "nixcache.io/namespace";

/// The ClusterRoleBinding's name: `nixcache:<namespace>:<name>:token-review`.
pub fn token_review_binding_name(nc: &NixCache) -> String {
    format!(
        "nixcache:{}:{}:token-review",
        nc.namespace().unwrap_or_default(),
        nc.name_any()
    )
}

/// Binds the cache's ServiceAccount to `system:auth-delegator`, so that the server may create
/// TokenReviews (and SubjectAccessReviews, which it does not).
pub fn token_review_binding(nc: &NixCache) -> ClusterRoleBinding {
    let ns = nc.namespace().unwrap_or_default();
    let mut labels = labels(nc, "server");
    labels.insert(BINDING_NAMESPACE_LABEL.into(), ns.clone());
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(token_review_binding_name(nc)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: TOKEN_REVIEW_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: nc.name_any(),
            namespace: Some(ns),
            api_group: None,
        }]),
    }
}

pub fn config_map(nc: &NixCache) -> ConfigMap {
    ConfigMap {
        metadata: meta(nc, config_map_name(nc), "server"),
        data: Some(BTreeMap::from([(CONFIG_FILE.into(), render_toml(nc))])),
        ..ConfigMap::default()
    }
}

fn with_annotations(
    mut metadata: ObjectMeta,
    annotations: &BTreeMap<String, String>,
) -> ObjectMeta {
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations.clone());
    }
    metadata
}

pub fn service_account(nc: &NixCache) -> ServiceAccount {
    ServiceAccount {
        metadata: with_annotations(
            meta(nc, nc.name_any(), "server"),
            &nc.spec.pod.service_account_annotations,
        ),
        // The server talks to the API server only to review ServiceAccount tokens, and its pods
        // then mount the token themselves (the GC Job's never do).
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

pub fn service(nc: &NixCache) -> Result<Service, BuildError> {
    typed(
        "Service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": with_annotations(
                meta(nc, nc.name_any(), "server"),
                &nc.spec.pod.service_annotations,
            ),
            "spec": {
                "type": nc.spec.service.type_.as_str(),
                "selector": selector(nc),
                "ports": [{"name": "http", "port": nc.spec.service.port,
                           "targetPort": "http", "protocol": "TCP"}],
            }
        }),
    )
}

/// The PodDisruptionBudget, in the `policy` version the API server serves (`v1` from
/// Kubernetes 1.21, `v1beta1` before); only wanted with more than one replica.
pub fn pod_disruption_budget(nc: &NixCache, api_version: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": meta(nc, nc.name_any(), "server"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(nc)},
        }
    })
}

/// The claim made for `storage.volumeSize` (none with `existingClaim`). With `retainOnDelete`
/// it has no owner, so it outlives the NixCache.
pub fn persistent_volume_claim(nc: &NixCache) -> Option<Result<PersistentVolumeClaim, BuildError>> {
    let storage = &nc.spec.storage;
    if storage.existing_claim.is_some() {
        return None;
    }
    let size = storage.volume_size.as_ref()?;
    let mut metadata = meta(nc, pvc_name(nc), "server");
    if storage.retain_on_delete {
        metadata.owner_references = None;
    }
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(class) = &storage.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    Some(typed(
        "PersistentVolumeClaim",
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata,
            "spec": spec,
        }),
    ))
}

/// The claim the server mounts, if its data is on one.
pub fn claim_name(nc: &NixCache) -> Option<String> {
    let storage = &nc.spec.storage;
    match (&storage.existing_claim, &storage.volume_size) {
        (Some(claim), _) => Some(claim.clone()),
        (None, Some(_)) => Some(pvc_name(nc)),
        (None, None) => None,
    }
}

/// The Secret holding a newly generated signing key; created once, never applied over.
/// The generated signing key's Secret. It has no owner: it outlives its NixCache, so that one
/// re-created under the same name (as GitOps tools do) signs with the key clients already trust.
pub fn signing_key_secret(nc: &NixCache, secret_key: &str, public_key: &str) -> Secret {
    let mut metadata = meta(nc, signing_key_secret_name(nc), "server");
    metadata.owner_references = None;
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (KEY_FILE.into(), secret_key.into()),
            (PUBLIC_KEY_ENTRY.into(), public_key.into()),
        ])),
        ..Secret::default()
    }
}

/// Why an existing object of a child's name is not this cache's, if it is not: it must name the
/// cache (by uid) as its controller. With `retained`, an object with no owner that carries the
/// operator's labels for this cache (a claim kept by `retainOnDelete`) is this cache's too.
pub fn foreign(meta: &ObjectMeta, nc: &NixCache, retained: bool) -> Option<String> {
    let uid = nc.metadata.uid.as_deref().unwrap_or_default();
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let controller = owners.iter().find(|o| o.controller == Some(true));
    match controller {
        Some(o) if o.uid == uid => None,
        Some(o) if o.kind == "NixCache" && o.name == nc.name_any() => Some(format!(
            "belongs to an earlier NixCache {:?} (uid {}), still being deleted",
            o.name, o.uid
        )),
        Some(o) => Some(format!("is controlled by {} {:?}", o.kind, o.name)),
        None => {
            let labels = meta.labels.clone().unwrap_or_default();
            let labelled = labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some(MANAGED_BY)
                && labels.get(CACHE_LABEL) == Some(&nc.name_any());
            if retained && labelled && owners.is_empty() {
                None
            } else {
                Some("is not owned by this NixCache".into())
            }
        }
    }
}

/// Whether a Secret is one the operator generated (by its labels).
pub fn is_generated_key_secret(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|m| m == MANAGED_BY)
}

/// The key name for the key that replaces `previous` (`NAME:base64`): `web.team-1` → `web.team-2`.
pub fn next_key_name(nc: &NixCache, previous: &str) -> String {
    let name = previous.split(':').next().unwrap_or_default();
    let next = name
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .map_or(2, |n| n.saturating_add(1));
    format!(
        "{}.{}-{next}",
        nc.name_any(),
        nc.namespace().unwrap_or_else(|| "default".into())
    )
}

/// Changes whenever the server must restart to see a change: the rendered configuration, the
/// signing key (by its public half), where secrets come from, and the versions of the Secrets
/// it reads (`secret_versions`: their names, uids and resource versions, never their values).
pub fn config_hash(nc: &NixCache, public_key: &str, secret_versions: &str) -> String {
    let mut h = Sha256::new();
    h.update(render_toml(nc).as_bytes());
    h.update(b"\0");
    h.update(public_key.as_bytes());
    h.update(b"\0");
    h.update(env(nc).to_string().as_bytes());
    h.update(b"\0");
    h.update(secret_versions.as_bytes());
    let digest = h.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn image(nc: &NixCache, defaults: &Defaults) -> String {
    nc.spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.image.clone())
}

/// Where the token Secrets are mounted: `TOKENS_DIR/<what>/<key>`.
pub const TOKENS_DIR: &str = "/etc/nixcache/tokens";

/// The tokens the server reads from files: the variable naming the file, the volume, the Secret.
fn tokens(nc: &NixCache) -> Vec<(&'static str, &'static str, &crate::crd::SecretKeyRef)> {
    [
        (
            env::UPLOAD_TOKEN_FILE,
            "upload-token",
            nc.spec
                .uploads
                .as_ref()
                .and_then(|u| u.token_secret.as_ref()),
        ),
        (
            env::READ_TOKEN_FILE,
            "read-token",
            nc.spec.read_token_secret.as_ref(),
        ),
        (
            env::ADMIN_TOKEN_FILE,
            "admin-token",
            nc.spec.admin_token_secret.as_ref(),
        ),
    ]
    .into_iter()
    .filter_map(|(var, volume, r)| Some((var, volume, r?)))
    .collect()
}

/// The upstreams' credentials Secrets: each upstream's volume, mount directory and Secret.
fn upstream_credentials(nc: &NixCache) -> Vec<(String, String, &crate::crd::SecretKeyRef)> {
    nc.spec
        .upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let c = u.credentials.as_ref()?;
            Some((
                crate::config::upstream_credentials_volume(i),
                format!("{}/{i}", crate::config::UPSTREAM_CREDENTIALS_DIR),
                &c.secret,
            ))
        })
        .collect()
}

/// Environment of the server and GC containers: secrets by reference only. Tokens come as
/// mounted files; the database URL and S3 credentials as variables from their Secrets.
fn env(nc: &NixCache) -> Value {
    let mut env = vec![];
    if let Some(db) = &nc.spec.database {
        env.push(
            json!({"name": env::DATABASE_URL, "valueFrom": {"secretKeyRef": {
            "name": db.postgres_url_secret.name, "key": db.postgres_url_secret.key}}}),
        );
    }
    for (var, volume, r) in tokens(nc) {
        env.push(json!({"name": var, "value": format!("{TOKENS_DIR}/{volume}/{}", r.key)}));
    }
    if let Some(s3) = &nc.spec.storage.s3 {
        for key in [env::AWS_ACCESS_KEY_ID, env::AWS_SECRET_ACCESS_KEY] {
            env.push(json!({"name": key, "valueFrom": {"secretKeyRef": {
                "name": s3.credentials_secret, "key": key}}}));
        }
    }
    Value::Array(env)
}

/// The Secrets the server reads, by name (the signing key's aside: it is hashed by its public
/// half), for [`config_hash`].
pub fn referenced_secrets(nc: &NixCache) -> Vec<String> {
    let mut names: Vec<String> = tokens(nc).iter().map(|(_, _, r)| r.name.clone()).collect();
    names.extend(
        upstream_credentials(nc)
            .iter()
            .map(|(_, _, r)| r.name.clone()),
    );
    if let Some(db) = &nc.spec.database {
        names.push(db.postgres_url_secret.name.clone());
    }
    if let Some(s3) = &nc.spec.storage.s3 {
        names.push(s3.credentials_secret.clone());
    }
    names.sort();
    names.dedup();
    names
}

fn volumes(nc: &NixCache) -> Value {
    let data = match claim_name(nc) {
        Some(claim) => json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}}),
        None => json!({"name": "data", "emptyDir": {"sizeLimit": nc.spec.storage.size_limit
            .as_deref().unwrap_or(crate::config::DEFAULT_EMPTY_DIR_SIZE)}}),
    };
    let mut volumes = json!([
        {"name": "config", "configMap": {"name": config_map_name(nc)}},
        {"name": "signing-key", "secret": {"secretName": signing_key_secret_name(nc),
            "items": [{"key": KEY_FILE, "path": KEY_FILE}], "defaultMode": 0o440}},
        data,
        {"name": "tmp", "emptyDir": {}},
    ]);
    if crate::config::local_cache_size(&nc.spec).is_some() {
        let local = nc.spec.storage.local_cache.as_ref();
        let volume = match local.and_then(|l| l.ephemeral.as_ref()) {
            Some(ephemeral) => json!({"name": "local-cache", "ephemeral": ephemeral}),
            None => json!({"name": "local-cache", "emptyDir": {"sizeLimit":
                crate::config::local_cache_size(&nc.spec)}}),
        };
        if let Some(list) = volumes.as_array_mut() {
            list.push(volume);
        }
    }
    for (_, volume, r) in tokens(nc) {
        if let Some(list) = volumes.as_array_mut() {
            list.push(json!({"name": volume, "secret": {"secretName": r.name,
                "items": [{"key": r.key, "path": r.key}], "defaultMode": 0o440}}));
        }
    }
    for (volume, _, r) in upstream_credentials(nc) {
        if let Some(list) = volumes.as_array_mut() {
            list.push(json!({"name": volume, "secret": {"secretName": r.name,
                "items": [{"key": r.key, "path": r.key}], "defaultMode": 0o440}}));
        }
    }
    volumes
}

fn container(nc: &NixCache, defaults: &Defaults, args: &[&str]) -> Value {
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "signing-key", "mountPath": KEY_DIR, "readOnly": true}),
        json!({"name": "data", "mountPath": DATA_DIR}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    if crate::config::local_cache_size(&nc.spec).is_some() {
        mounts.push(json!({"name": "local-cache", "mountPath": crate::config::LOCAL_CACHE_DIR}));
    }
    for (_, volume, _) in tokens(nc) {
        mounts.push(
            json!({"name": volume, "mountPath": format!("{TOKENS_DIR}/{volume}"),
            "readOnly": true}),
        );
    }
    for (volume, dir, _) in upstream_credentials(nc) {
        mounts.push(json!({"name": volume, "mountPath": dir, "readOnly": true}));
    }
    let mut c = json!({
        "name": "nixcache",
        "image": image(nc, defaults),
        "command": ["/usr/local/bin/nixcache"],
        "args": args,
        "env": env(nc),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    c["resources"] = match &nc.spec.resources {
        Some(resources) => json!(resources),
        None => json!({"requests": {"cpu": DEFAULT_REQUESTS.0, "memory": DEFAULT_REQUESTS.1}}),
    };
    c
}

/// What the server's and the GC Job's pods share: account, security context, registries and
/// scheduling.
fn pod_spec(nc: &NixCache, defaults: &Defaults, containers: Vec<Value>) -> Value {
    let options = &nc.spec.pod;
    let mut pod = json!({
        "serviceAccountName": nc.name_any(),
        "automountServiceAccountToken": false,
        "securityContext": match &options.security_context {
            Some(sc) => json!(sc),
            None => pod_security_context(),
        },
        "containers": containers,
        "volumes": volumes(nc),
    });
    let pull: Vec<Value> = if options.image_pull_secrets.is_empty() {
        defaults
            .image_pull_secrets
            .iter()
            .map(|n| json!({"name": n}))
            .collect()
    } else {
        options
            .image_pull_secrets
            .iter()
            .map(|r| json!(r))
            .collect()
    };
    if !pull.is_empty() {
        pod["imagePullSecrets"] = json!(pull);
    }
    if !options.node_selector.is_empty() {
        pod["nodeSelector"] = json!(options.node_selector);
    }
    if !options.tolerations.is_empty() {
        pod["tolerations"] = json!(options.tolerations);
    }
    if let Some(affinity) = &options.affinity {
        pod["affinity"] = json!(affinity);
    }
    if let Some(class) = &options.priority_class_name {
        pod["priorityClassName"] = json!(class);
    }
    pod
}

/// The spread of the server's replicas: the spec's, else over nodes and zones where the
/// scheduler can (never blocking a pod). Set at any replica count, so scaling never rolls.
fn topology_spread(nc: &NixCache) -> Value {
    match &nc.spec.pod.topology_spread_constraints {
        Some(given) => json!(given),
        None => json!(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
            .iter()
            .map(|key| json!({"maxSkew": 1, "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(nc)}}))
            .collect::<Vec<_>>()),
    }
}

/// The pod template's labels: the spec's, then the operator's (which win).
fn pod_labels(nc: &NixCache, component: &str) -> BTreeMap<String, String> {
    let mut all = nc.spec.pod.labels.clone();
    all.extend(labels(nc, component));
    all
}

/// The pod template's annotations: the spec's, then the operator's.
fn pod_annotations(nc: &NixCache, ours: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut all = nc.spec.pod.annotations.clone();
    all.extend(ours.iter().map(|(k, v)| (k.to_string(), v.clone())));
    all
}

fn pod_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        // A large volume is not walked at every start to set its group.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn config_arg() -> String {
    format!("{CONFIG_DIR}/{CONFIG_FILE}")
}

pub fn deployment(
    nc: &NixCache,
    defaults: &Defaults,
    public_key: &str,
    secret_versions: &str,
) -> Result<Deployment, BuildError> {
    let config = config_arg();
    let mut server = container(nc, defaults, &["serve", "--config", &config]);
    server["ports"] = json!([{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}]);
    server["readinessProbe"] = json!({
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2,
    });
    server["livenessProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6,
    });
    let mut pod = pod_spec(nc, defaults, vec![server]);
    if reviews_tokens(nc) {
        // The server asks the API server for TokenReviews as its ServiceAccount; the kubelet
        // rotates the token file and the server re-reads it.
        pod["automountServiceAccountToken"] = json!(true);
    }
    // The server's shutdown: 5 s of failing readiness, then up to 25 s for in-flight requests.
    pod["terminationGracePeriodSeconds"] = json!(35);
    pod["topologySpreadConstraints"] = topology_spread(nc);
    // A volume claimed ReadWriteOnce cannot be held by the old and the new pod at once.
    let strategy = if claim_name(nc).is_some() {
        json!({"type": "Recreate"})
    } else {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    };
    typed(
        "Deployment",
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(nc, nc.name_any(), "server"),
            "spec": {
                "replicas": nc.spec.replicas,
                "selector": {"matchLabels": selector(nc)},
                "strategy": strategy,
                "template": {
                    "metadata": {
                        "labels": pod_labels(nc, "server"),
                        "annotations": pod_annotations(nc, &[(CONFIG_HASH_ANNOTATION,
                            config_hash(nc, public_key, secret_versions))]),
                    },
                    "spec": pod,
                }
            }
        }),
    )
}

/// A run of `nixcache gc` for the tick at `scheduled_unix` (seconds).
pub fn gc_job(nc: &NixCache, defaults: &Defaults, scheduled_unix: i64) -> Result<Job, BuildError> {
    let config = config_arg();
    let mut pod = pod_spec(
        nc,
        defaults,
        vec![container(nc, defaults, &["gc", "--config", &config])],
    );
    pod["restartPolicy"] = json!("Never");
    let mut metadata = meta(nc, gc_job_name(nc, scheduled_unix), "gc");
    metadata.annotations = Some(BTreeMap::from([(
        SCHEDULED_ANNOTATION.into(),
        crate::time::rfc3339(scheduled_unix),
    )]));
    typed(
        "Job",
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": 6 * 3600,
                "template": {
                    "metadata": {
                        "labels": pod_labels(nc, "gc"),
                        "annotations": pod_annotations(nc, &[]),
                    },
                    "spec": pod,
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(spec: Value) -> NixCache {
        let mut nc = NixCache::new("web", serde_json::from_value(spec).expect("spec"));
        nc.metadata.namespace = Some("team".into());
        nc.metadata.uid = Some("0000-1111".into());
        nc
    }

    fn ha() -> NixCache {
        cache(json!({
            "replicas": 3,
            "storage": {"s3": {"bucket": "nix", "credentialsSecret": "s3-creds"}},
            "database": {"postgresUrlSecret": {"name": "pg", "key": "url"}},
            "redis": ["redis://r1:6379", "redis://r2:6379", "redis://r3:6379"],
            "gc": {"maxSize": "50G", "schedule": "0 * * * *"},
            "service": {"port": 8080, "type": "LoadBalancer"}
        }))
    }

    #[test]
    fn every_child_but_the_signing_key_is_owned_by_its_cache() {
        let nc = ha();
        let key = "web-1:AAAA";
        // The key outlives the cache, for one re-created under its name.
        assert_eq!(
            signing_key_secret(&nc, "s", "p").metadata.owner_references,
            None
        );
        let owners: Vec<Vec<OwnerReference>> = vec![
            config_map(&nc)
                .metadata
                .owner_references
                .unwrap_or_default(),
            client_config_map(&nc, "http://x", key)
                .metadata
                .owner_references
                .unwrap_or_default(),
            service_account(&nc)
                .metadata
                .owner_references
                .unwrap_or_default(),
            service(&nc)
                .expect("svc")
                .metadata
                .owner_references
                .unwrap_or_default(),
            deployment(&nc, &Defaults::with_image(DEFAULT_IMAGE), key, "")
                .expect("deploy")
                .metadata
                .owner_references
                .unwrap_or_default(),
            gc_job(&nc, &Defaults::with_image(DEFAULT_IMAGE), 1_700_000_000)
                .expect("job")
                .metadata
                .owner_references
                .unwrap_or_default(),
            serde_json::from_value(
                pod_disruption_budget(&nc, "policy/v1")["metadata"]["ownerReferences"].clone(),
            )
            .expect("pdb"),
        ];
        for o in owners {
            assert_eq!(o.len(), 1);
            assert_eq!(o[0].kind, "NixCache");
            assert_eq!(o[0].name, "web");
            assert_eq!(o[0].uid, "0000-1111");
            assert_eq!(o[0].controller, Some(true));
        }
    }

    #[test]
    fn only_a_server_that_reviews_tokens_mounts_one_and_is_bound_to_review_them() {
        let automount = |nc: &NixCache| {
            let d = deployment(nc, &Defaults::with_image("img:1"), "web-1:AAAA", "").expect("d");
            d.spec
                .and_then(|s| s.template.spec)
                .and_then(|p| p.automount_service_account_token)
        };
        let plain = ha();
        assert!(!reviews_tokens(&plain));
        assert_eq!(automount(&plain), Some(false));
        let mut spec = serde_json::to_value(&ha().spec).expect("spec");
        spec["serviceAccountAccess"] = json!({"read": [{"namespace": "ci", "name": "builder"}]});
        let reviewing = cache(spec.clone());
        assert!(reviews_tokens(&reviewing));
        assert_eq!(automount(&reviewing), Some(true));
        // GC Jobs never talk to the API server.
        let job = gc_job(&reviewing, &Defaults::with_image("img:1"), 1_700_000_000).expect("job");
        assert_eq!(
            job.spec
                .and_then(|s| s.template.spec)
                .and_then(|p| p.automount_service_account_token),
            Some(false)
        );
        let binding = token_review_binding(&reviewing);
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("nixcache:team:web:token-review")
        );
        assert_eq!(binding.metadata.owner_references, None, "cluster-scoped");
        assert_eq!(binding.role_ref.name, "system:auth-delegator");
        let subjects = binding.subjects.expect("subjects");
        assert_eq!(
            (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            ("web", Some("team"))
        );
        // An access section granting nothing reviews nothing.
        spec["serviceAccountAccess"] = json!({"audience": "x"});
        assert!(!reviews_tokens(&cache(spec)));
    }

    #[test]
    fn the_deployment_runs_the_server_with_its_config_secrets_and_probes() {
        let nc = ha();
        let d = deployment(&nc, &Defaults::with_image("img:1"), "web-1:AAAA", "").expect("deploy");
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        assert_eq!(
            c.args.clone().unwrap_or_default(),
            ["serve", "--config", "/etc/nixcache/config.toml"]
        );
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
        let env = serde_json::to_string(&c.env).expect("env");
        assert!(
            env.contains("NIXCACHE_DATABASE_URL") && env.contains("\"pg\""),
            "{env}"
        );
        assert!(
            env.contains("AWS_SECRET_ACCESS_KEY") && env.contains("s3-creds"),
            "{env}"
        );
        assert!(
            !env.contains("value\":"),
            "secrets only by reference: {env}"
        );
        let volumes = serde_json::to_string(&pod.volumes).expect("volumes");
        assert!(volumes.contains("web-config") && volumes.contains("web-signing-key"));
        let s = service(&nc).expect("svc").spec.expect("spec");
        assert_eq!(s.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(s.ports.expect("ports")[0].port, 8080);
        assert_eq!(
            url(&nc, DEFAULT_CLUSTER_DOMAIN),
            "http://web.team.svc.cluster.local:8080"
        );
        assert_eq!(
            url(&nc, "corp.example."),
            "http://web.team.svc.corp.example:8080"
        );
    }

    #[test]
    fn the_pod_template_changes_with_config_and_key_only() {
        let nc = ha();
        let hash = |nc: &NixCache, key: &str| {
            deployment(nc, &Defaults::with_image(DEFAULT_IMAGE), key, "")
                .expect("deploy")
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
                .expect("hash")
        };
        let base = hash(&nc, "web-1:AAAA");
        assert_eq!(base, hash(&nc, "web-1:AAAA"), "stable");
        assert_ne!(base, hash(&nc, "web-2:BBBB"), "key change rolls");
        let mut more = nc.clone();
        more.spec.replicas = 5;
        assert_eq!(base, hash(&more, "web-1:AAAA"), "scaling does not roll");
        let mut other = nc.clone();
        other.spec.upstreams = vec![crate::crd::UpstreamSpec {
            url: "https://other.example".into(),
            priority: None,
            public_keys: vec![],
            cross_origin_redirects: false,
            credentials: None,
        }];
        assert_ne!(base, hash(&other, "web-1:AAAA"), "config change rolls");
    }

    #[test]
    fn local_storage_gets_a_claim_and_recreate() {
        let nc = cache(json!({"storage": {"volumeSize": "20Gi"}}));
        let pvc = persistent_volume_claim(&nc).expect("wanted").expect("pvc");
        assert_eq!(pvc.metadata.name.as_deref(), Some("web-data"));
        let d = deployment(&nc, &Defaults::with_image(DEFAULT_IMAGE), "k:A", "").expect("deploy");
        assert_eq!(
            d.spec
                .and_then(|s| s.strategy)
                .and_then(|s| s.type_)
                .as_deref(),
            Some("Recreate")
        );
        assert!(persistent_volume_claim(&ha()).is_none());

        let kept = cache(
            json!({"storage": {"volumeSize": "20Gi", "retainOnDelete": true,
            "storageClassName": "fast"}}),
        );
        let pvc = persistent_volume_claim(&kept)
            .expect("wanted")
            .expect("pvc");
        assert_eq!(pvc.metadata.owner_references, None, "outlives its cache");
        assert_eq!(
            pvc.spec.and_then(|s| s.storage_class_name).as_deref(),
            Some("fast")
        );
        let existing = cache(json!({"storage": {"existingClaim": "nix-store"}}));
        assert!(persistent_volume_claim(&existing).is_none(), "none made");
        let d =
            deployment(&existing, &Defaults::with_image(DEFAULT_IMAGE), "k:A", "").expect("deploy");
        let volumes =
            serde_json::to_string(&d.spec.and_then(|s| s.template.spec).expect("pod").volumes)
                .expect("volumes");
        assert!(volumes.contains("\"claimName\":\"nix-store\""), "{volumes}");
    }

    #[test]
    fn replicas_on_s3_mount_a_bounded_local_nar_cache() {
        let d = deployment(&ha(), &Defaults::with_image("img:1"), "k:A", "").expect("deploy");
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "local-cache")
            .expect("the local cache volume");
        assert_eq!(
            volume
                .empty_dir
                .as_ref()
                .and_then(|e| e.size_limit.clone())
                .map(|q| q.0)
                .as_deref(),
            Some("10Gi")
        );
        let mounts = serde_json::to_string(&pod.containers[0].volume_mounts).expect("mounts");
        assert!(mounts.contains("/var/cache/nixcache"), "{mounts}");
        let ssd = cache(json!({"replicas": 1, "storage": {"s3": {"bucket": "b",
            "credentialsSecret": "s"}, "localCache": {"size": "50Gi", "ephemeral":
            {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-ssd", "resources": {"requests": {"storage": "50Gi"}}}}}}}}));
        let pod = deployment(&ssd, &Defaults::with_image("img:1"), "k:A", "")
            .expect("deploy")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "local-cache")
            .expect("volume");
        assert!(volume.ephemeral.is_some() && volume.empty_dir.is_none());
    }

    #[test]
    fn the_default_empty_dir_is_bounded() {
        let d = deployment(
            &cache(json!({})),
            &Defaults::with_image(DEFAULT_IMAGE),
            "k:A",
            "",
        )
        .expect("deploy");
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        let data = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "data")
            .and_then(|v| v.empty_dir.clone())
            .expect("emptyDir");
        assert_eq!(data.size_limit.map(|q| q.0).as_deref(), Some("10Gi"));
        assert_eq!(
            pod.security_context
                .and_then(|s| s.fs_group_change_policy)
                .as_deref(),
            Some("OnRootMismatch")
        );
    }

    #[test]
    fn gc_jobs_are_named_by_tick_and_run_nixcache_gc() {
        let nc = ha();
        let job = gc_job(&nc, &Defaults::with_image("img:1"), 1_700_000_040).expect("job");
        assert_eq!(job.metadata.name.as_deref(), Some("web-gc-1700000040"));
        assert_ne!(gc_job_name(&nc, 1_700_000_043), "web-gc-1700000040");
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.containers[0].args.clone().unwrap_or_default(),
            ["gc", "--config", "/etc/nixcache/config.toml"]
        );
        let longest = cache(json!({})).tap_name(&"x".repeat(crate::config::MAX_NAME));
        assert!(
            gc_job_name(&longest, 1_700_000_000).len() <= 63,
            "fits the job-name label"
        );
        let other = cache(json!({})).tap_name(&format!("{}y", "x".repeat(46)));
        assert_ne!(
            gc_job_name(&longest, 1_700_000_000),
            gc_job_name(&other, 1_700_000_000),
            "names are never shortened into one another"
        );
    }

    #[test]
    fn upstream_credentials_are_mounted_secrets_named_in_the_config_only_by_path() {
        let nc = cache(json!({"upstreams": [
            {"url": "https://cache.nixos.org"},
            {"url": "https://private.example",
             "credentials": {"secret": {"name": "upstream-auth", "key": "token"}, "type": "bearer"}}
        ]}));
        crate::config::validate(&nc).expect("valid");
        let toml = crate::config::render_toml(&nc);
        assert!(
            toml.contains(
                "https://private.example,bearer-token-file=/etc/nixcache/upstreams/1/token"
            ),
            "{toml}"
        );
        let d = deployment(&nc, &Defaults::with_image(DEFAULT_IMAGE), "k:A", "").expect("deploy");
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        let volumes = serde_json::to_string(&pod.volumes).expect("volumes");
        assert!(
            volumes.contains(
                r#"{"name":"upstream-1-credentials","secret":{"defaultMode":288,"items":[{"key":"token","path":"token"}],"secretName":"upstream-auth"}}"#
            ),
            "{volumes}"
        );
        let mounts = serde_json::to_string(&pod.containers[0].volume_mounts).expect("mounts");
        assert!(
            mounts.contains(
                r#"{"mountPath":"/etc/nixcache/upstreams/1","name":"upstream-1-credentials","readOnly":true}"#
            ),
            "{mounts}"
        );
        assert!(referenced_secrets(&nc).contains(&"upstream-auth".to_string()));
        let bad = cache(json!({"upstreams": [{"url": "https://p.example",
            "credentials": {"secret": {"name": "s", "key": "../x"}, "type": "netrc"}}]}));
        assert!(crate::config::validate(&bad).is_err());
    }

    #[test]
    fn tokens_reach_the_server_as_mounted_files() {
        let nc = cache(json!({
            "uploads": {"tokenSecret": {"name": "push", "key": "token"}},
            "readTokenSecret": {"name": "pull", "key": "t"},
            "adminTokenSecret": {"name": "admin", "key": "token"}
        }));
        let d = deployment(&nc, &Defaults::with_image(DEFAULT_IMAGE), "k:A", "").expect("deploy");
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        let env = serde_json::to_value(&pod.containers[0].env).expect("env");
        let by_name = |n: &str| {
            env.as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == n))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            by_name("NIXCACHE_UPLOAD_TOKEN_FILE")["value"],
            "/etc/nixcache/tokens/upload-token/token"
        );
        assert_eq!(
            by_name("NIXCACHE_READ_TOKEN_FILE")["value"],
            "/etc/nixcache/tokens/read-token/t"
        );
        assert!(
            by_name("NIXCACHE_READ_TOKEN").is_null(),
            "no token in the environment"
        );
        let volumes = serde_json::to_value(&pod.volumes).expect("volumes");
        let admin = volumes
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "admin-token"))
            .expect("admin token volume");
        assert_eq!(admin["secret"]["secretName"], "admin");
        let mounts = serde_json::to_string(&pod.containers[0].volume_mounts).expect("mounts");
        assert!(
            mounts.contains("/etc/nixcache/tokens/upload-token"),
            "{mounts}"
        );
        assert_eq!(referenced_secrets(&nc), ["admin", "pull", "push"]);
    }

    #[test]
    fn a_rotated_secret_rolls_the_pods() {
        let nc = ha();
        let hash = |versions: &str| {
            deployment(&nc, &Defaults::with_image(DEFAULT_IMAGE), "k:A", versions)
                .expect("deploy")
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
                .expect("hash")
        };
        assert_ne!(hash("pg/u1/10"), hash("pg/u1/11"));
        assert_eq!(hash("pg/u1/10"), hash("pg/u1/10"));
    }

    #[test]
    fn the_client_config_has_nix_conf_lines() {
        let nc = ha();
        let cm = client_config_map(
            &nc,
            "http://web.team.svc.cluster.local:8080",
            "web.team-1:AAAA",
        );
        assert_eq!(cm.metadata.name.as_deref(), Some("web-nix-config"));
        let conf = cm.data.expect("data")[CLIENT_CONFIG_KEY].clone();
        assert_eq!(
            conf,
            "extra-substituters = http://web.team.svc.cluster.local:8080\n\
             extra-trusted-public-keys = web.team-1:AAAA\n"
        );
    }

    #[test]
    fn only_objects_this_cache_controls_are_its_own() {
        let nc = ha();
        let ours = service(&nc).expect("svc").metadata;
        assert_eq!(foreign(&ours, &nc, false), None);
        let bare = ObjectMeta {
            name: Some("web".into()),
            ..ObjectMeta::default()
        };
        assert!(foreign(&bare, &nc, false).is_some(), "a user's object");
        assert!(
            foreign(&bare, &nc, true).is_some(),
            "unlabelled: not a kept claim"
        );
        let mut earlier = ours.clone();
        if let Some(o) = earlier.owner_references.as_mut() {
            o[0].uid = "uid-of-the-deleted-one".into();
        }
        let why = foreign(&earlier, &nc, false).expect("not ours");
        assert!(why.contains("earlier NixCache"), "{why}");
        let mut kept = ours.clone();
        kept.owner_references = None;
        assert_eq!(
            foreign(&kept, &nc, true),
            None,
            "a claim kept for this cache"
        );
        assert!(foreign(&kept, &nc, false).is_some());
        let mut helm = bare.clone();
        helm.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "other".into(),
            uid: "x".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert!(foreign(&helm, &nc, true).is_some_and(|w| w.contains("ReplicaSet")));
    }

    #[test]
    fn pods_take_scheduling_registries_and_metadata_from_the_spec() {
        let nc = cache(json!({
            "replicas": 1,
            "pod": {
                "imagePullSecrets": [{"name": "regcred"}],
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "nix",
                    "effect": "NoSchedule"}],
                "priorityClassName": "high",
                "securityContext": {},
                "annotations": {"team": "nix"},
                "labels": {"cost-center": "42", "app.kubernetes.io/component": "mine"},
                "serviceAnnotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
                "serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/nix"}
            }
        }));
        let defaults = Defaults {
            image: "img:1".into(),
            image_pull_secrets: vec!["operator-pull".into()],
        };
        let d = deployment(&nc, &defaults, "k:A", "").expect("deploy");
        let template = d.spec.expect("spec").template;
        let meta = template.metadata.expect("meta");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["cost-center"], "42");
        assert_eq!(
            labels["app.kubernetes.io/component"], "server",
            "the selector's labels win"
        );
        let annotations = meta.annotations.expect("annotations");
        assert_eq!(annotations["team"], "nix");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let pod = template.spec.expect("pod");
        assert_eq!(
            pod.image_pull_secrets.expect("pull")[0].name,
            "regcred",
            "the spec's, not the operator's"
        );
        assert_eq!(pod.node_selector.expect("selector")["disk"], "ssd");
        assert_eq!(
            pod.tolerations.expect("tolerations")[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        let sc = pod.security_context.expect("security context");
        assert_eq!(sc.run_as_user, None, "the platform chooses the uid");
        let svc = service(&nc).expect("svc");
        assert!(svc
            .metadata
            .annotations
            .expect("a")
            .contains_key("service.beta.kubernetes.io/aws-load-balancer-internal"));
        let sa = service_account(&nc);
        assert_eq!(
            sa.metadata.annotations.expect("a")["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::1:role/nix"
        );
        let job = gc_job(&nc, &defaults, 1_700_000_000).expect("job");
        let job_pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(job_pod.node_selector.expect("selector")["disk"], "ssd");
    }

    #[test]
    fn defaults_spread_replicas_request_resources_and_pull_with_the_operators_secrets() {
        let nc = ha();
        let defaults = Defaults {
            image: "img:1".into(),
            image_pull_secrets: vec!["operator-pull".into()],
        };
        let pod = deployment(&nc, &defaults, "k:A", "")
            .expect("deploy")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert_eq!(
            pod.image_pull_secrets.expect("pull")[0].name,
            "operator-pull"
        );
        let spread = pod.topology_spread_constraints.expect("spread");
        let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        );
        assert!(spread
            .iter()
            .all(|c| c.when_unsatisfiable == "ScheduleAnyway"));
        let requests = pod.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .expect("requests");
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(requests["memory"].0, "128Mi");
        assert_eq!(
            pod.security_context.and_then(|s| s.run_as_user),
            Some(65532)
        );
    }

    #[test]
    fn the_pdb_speaks_the_version_it_is_given() {
        let nc = ha();
        assert_eq!(
            pod_disruption_budget(&nc, "policy/v1beta1")["apiVersion"],
            "policy/v1beta1"
        );
        assert_eq!(
            pod_disruption_budget(&nc, "policy/v1")["spec"]["maxUnavailable"],
            1
        );
    }

    trait TapName {
        fn tap_name(self, name: &str) -> Self;
    }
    impl TapName for NixCache {
        fn tap_name(mut self, name: &str) -> Self {
            self.metadata.name = Some(name.into());
            self
        }
    }
}
