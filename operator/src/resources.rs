//! The children of a `NixCache`, as pure functions of the resource (and of the few facts the
//! reconciler learns from the API server: the key fingerprint, the PDB API version, a GC time).
//! Nothing here talks to a server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
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
pub fn gc_job_name(nc: &NixCache, scheduled_unix: i64) -> String {
    let mut name = nc.name_any();
    // Job names end up in pod labels (63 characters): keep room for the suffix.
    name.truncate(40);
    format!("{}-gc-{}", name.trim_end_matches('-'), scheduled_unix)
}

/// What clients put in `substituters`.
pub fn url(nc: &NixCache) -> String {
    format!(
        "http://{}.{}.svc.cluster.local:{}",
        nc.name_any(),
        nc.namespace().unwrap_or_else(|| "default".into()),
        nc.spec.service.port
    )
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

pub fn config_map(nc: &NixCache) -> ConfigMap {
    ConfigMap {
        metadata: meta(nc, config_map_name(nc), "server"),
        data: Some(BTreeMap::from([(CONFIG_FILE.into(), render_toml(nc))])),
        ..ConfigMap::default()
    }
}

pub fn service_account(nc: &NixCache) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(nc, nc.name_any(), "server"),
        // The server never talks to the API server.
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
            "metadata": meta(nc, nc.name_any(), "server"),
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

pub fn persistent_volume_claim(nc: &NixCache) -> Option<Result<PersistentVolumeClaim, BuildError>> {
    let size = nc.spec.storage.volume_size.as_ref()?;
    Some(typed(
        "PersistentVolumeClaim",
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta(nc, pvc_name(nc), "server"),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}},
            }
        }),
    ))
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
/// signing key (by its public half) or where secrets come from.
pub fn config_hash(nc: &NixCache, public_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(render_toml(nc).as_bytes());
    h.update(b"\0");
    h.update(public_key.as_bytes());
    h.update(b"\0");
    h.update(env(nc).to_string().as_bytes());
    let digest = h.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn image(nc: &NixCache, default_image: &str) -> String {
    nc.spec
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_string())
}

/// Environment of the server and GC containers: secrets by reference only.
fn env(nc: &NixCache) -> Value {
    let mut env = vec![];
    if let Some(db) = &nc.spec.database {
        env.push(
            json!({"name": "NIXCACHE_DATABASE_URL", "valueFrom": {"secretKeyRef": {
            "name": db.postgres_url_secret.name, "key": db.postgres_url_secret.key}}}),
        );
    }
    let tokens = [
        (
            "NIXCACHE_UPLOAD_TOKEN",
            nc.spec.uploads.as_ref().map(|u| &u.token_secret),
        ),
        ("NIXCACHE_READ_TOKEN", nc.spec.read_token_secret.as_ref()),
        ("NIXCACHE_ADMIN_TOKEN", nc.spec.admin_token_secret.as_ref()),
    ];
    for (name, secret) in tokens {
        if let Some(r) = secret {
            env.push(json!({"name": name, "valueFrom": {"secretKeyRef": {
                "name": r.name, "key": r.key}}}));
        }
    }
    if let Some(s3) = &nc.spec.storage.s3 {
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            env.push(json!({"name": key, "valueFrom": {"secretKeyRef": {
                "name": s3.credentials_secret, "key": key}}}));
        }
    }
    Value::Array(env)
}

fn volumes(nc: &NixCache) -> Value {
    let data = match nc.spec.storage.volume_size {
        Some(_) => json!({"name": "data", "persistentVolumeClaim": {"claimName": pvc_name(nc)}}),
        None => json!({"name": "data", "emptyDir": {}}),
    };
    json!([
        {"name": "config", "configMap": {"name": config_map_name(nc)}},
        {"name": "signing-key", "secret": {"secretName": signing_key_secret_name(nc),
            "items": [{"key": KEY_FILE, "path": KEY_FILE}], "defaultMode": 0o440}},
        data,
        {"name": "tmp", "emptyDir": {}},
    ])
}

fn container(nc: &NixCache, default_image: &str, args: &[&str]) -> Value {
    let mut c = json!({
        "name": "nixcache",
        "image": image(nc, default_image),
        "command": ["/usr/local/bin/nixcache"],
        "args": args,
        "env": env(nc),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": "signing-key", "mountPath": KEY_DIR, "readOnly": true},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(resources) = &nc.spec.resources {
        c["resources"] = json!(resources);
    }
    c
}

fn pod_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn config_arg() -> String {
    format!("{CONFIG_DIR}/{CONFIG_FILE}")
}

pub fn deployment(
    nc: &NixCache,
    default_image: &str,
    public_key: &str,
) -> Result<Deployment, BuildError> {
    let config = config_arg();
    let mut server = container(nc, default_image, &["serve", "--config", &config]);
    server["ports"] = json!([{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}]);
    server["readinessProbe"] = json!({
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2,
    });
    server["livenessProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6,
    });
    // A volume claimed ReadWriteOnce cannot be held by the old and the new pod at once.
    let strategy = if nc.spec.storage.volume_size.is_some() {
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
                        "labels": labels(nc, "server"),
                        "annotations": {CONFIG_HASH_ANNOTATION: config_hash(nc, public_key)},
                    },
                    "spec": {
                        "serviceAccountName": nc.name_any(),
                        "automountServiceAccountToken": false,
                        // The server's shutdown: 5 s of failing readiness, then up to 25 s for
                        // in-flight requests.
                        "terminationGracePeriodSeconds": 35,
                        "securityContext": pod_security_context(),
                        "containers": [server],
                        "volumes": volumes(nc),
                    }
                }
            }
        }),
    )
}

/// A run of `nixcache gc` for the tick at `scheduled_unix` (seconds).
pub fn gc_job(nc: &NixCache, default_image: &str, scheduled_unix: i64) -> Result<Job, BuildError> {
    let config = config_arg();
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
                    "metadata": {"labels": labels(nc, "gc")},
                    "spec": {
                        "restartPolicy": "Never",
                        "serviceAccountName": nc.name_any(),
                        "automountServiceAccountToken": false,
                        "securityContext": pod_security_context(),
                        "containers": [container(nc, default_image, &["gc", "--config", &config])],
                        "volumes": volumes(nc),
                    }
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
            service_account(&nc)
                .metadata
                .owner_references
                .unwrap_or_default(),
            service(&nc)
                .expect("svc")
                .metadata
                .owner_references
                .unwrap_or_default(),
            deployment(&nc, DEFAULT_IMAGE, key)
                .expect("deploy")
                .metadata
                .owner_references
                .unwrap_or_default(),
            gc_job(&nc, DEFAULT_IMAGE, 1_700_000_000)
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
    fn the_deployment_runs_the_server_with_its_config_secrets_and_probes() {
        let nc = ha();
        let d = deployment(&nc, "img:1", "web-1:AAAA").expect("deploy");
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
        assert_eq!(url(&nc), "http://web.team.svc.cluster.local:8080");
    }

    #[test]
    fn the_pod_template_changes_with_config_and_key_only() {
        let nc = ha();
        let hash = |nc: &NixCache, key: &str| {
            deployment(nc, DEFAULT_IMAGE, key)
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
        }];
        assert_ne!(base, hash(&other, "web-1:AAAA"), "config change rolls");
    }

    #[test]
    fn local_storage_gets_a_claim_and_recreate() {
        let nc = cache(json!({"storage": {"volumeSize": "20Gi"}}));
        let pvc = persistent_volume_claim(&nc).expect("wanted").expect("pvc");
        assert_eq!(pvc.metadata.name.as_deref(), Some("web-data"));
        let d = deployment(&nc, DEFAULT_IMAGE, "k:A").expect("deploy");
        assert_eq!(
            d.spec
                .and_then(|s| s.strategy)
                .and_then(|s| s.type_)
                .as_deref(),
            Some("Recreate")
        );
        assert!(persistent_volume_claim(&ha()).is_none());
    }

    #[test]
    fn gc_jobs_are_named_by_tick_and_run_nixcache_gc() {
        let nc = ha();
        let job = gc_job(&nc, "img:1", 1_700_000_040).expect("job");
        assert_eq!(job.metadata.name.as_deref(), Some("web-gc-1700000040"));
        assert_ne!(gc_job_name(&nc, 1_700_000_043), "web-gc-1700000040");
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.containers[0].args.clone().unwrap_or_default(),
            ["gc", "--config", "/etc/nixcache/config.toml"]
        );
        let long = cache(json!({})).tap_name(&"x".repeat(63));
        assert!(
            gc_job_name(&long, 1_700_000_000).len() <= 63,
            "fits the job-name label"
        );
    }

    #[test]
    fn tokens_reach_the_server_by_secret_reference_only() {
        let nc = cache(json!({
            "uploads": {"tokenSecret": {"name": "push", "key": "token"}},
            "readTokenSecret": {"name": "pull", "key": "t"},
            "adminTokenSecret": {"name": "admin", "key": "token"}
        }));
        let d = deployment(&nc, DEFAULT_IMAGE, "k:A").expect("deploy");
        let env = serde_json::to_value(
            &d.spec
                .and_then(|s| s.template.spec)
                .expect("pod")
                .containers[0]
                .env,
        )
        .expect("env");
        let by_name = |n: &str| {
            env.as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == n))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(
            by_name("NIXCACHE_UPLOAD_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
            "push"
        );
        assert_eq!(
            by_name("NIXCACHE_READ_TOKEN")["valueFrom"]["secretKeyRef"]["key"],
            "t"
        );
        assert!(by_name("NIXCACHE_READ_TOKEN").get("value").is_none());
        assert_eq!(
            by_name("NIXCACHE_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
            "admin"
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
