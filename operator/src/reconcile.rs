//! Reconciling one `NixCache`: check the spec and what it refers to, make sure a signing key
//! exists, apply the children with server-side apply, run GC when due, and write status.
//!
//! Each step is a function of the resource and a [`Context`]; the builders are pure (see
//! `resources`), so what is left here is the talking.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, PropagationPolicy,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use nixcache_settings::keys::SecretKey;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use crate::config::{gc_bound, gc_runs_as_jobs, validate, KEY_FILE};
use crate::crd::{NixCache, NixCacheStatus};
use crate::gc::{last_failure, parse_schedule, plan, GcJob};
use crate::metrics::Metrics;
use crate::resources::{self, CACHE_LABEL};
use crate::status::{conditions, find, pod_problem, Observed, Outcome, Rollout, DEGRADED, READY};
use crate::time::{now_unix, parse_rfc3339, rfc3339};

/// The one field manager of everything the operator applies.
pub const MANAGER: &str = "nixcache-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] resources::BuildError),
    #[error("generating a signing key: {0}")]
    Key(String),
    #[error("the resource has no namespace")]
    NoNamespace,
    /// The API server refused a child; written to status as `ApplyFailed`.
    #[error("applying {kind} {name:?}: {message}")]
    Apply {
        kind: String,
        name: String,
        message: String,
    },
    /// A failure already written to status (conditions and a Warning event).
    #[error("{reason}: {message}")]
    Reported { reason: String, message: String },
}

/// What the reconciler shares between calls.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The image and pull Secrets when a spec names none.
    pub defaults: resources::Defaults,
    /// `policy/v1` or `policy/v1beta1`: the PodDisruptionBudget version the API server serves.
    pub pdb_api_version: String,
    /// The cluster's DNS domain, for the in-cluster URL (`cluster.local` unless told).
    pub cluster_domain: String,
}

/// Finds the PodDisruptionBudget version the API server serves (`policy/v1` since 1.21).
pub async fn discover_pdb_version(client: &Client) -> Result<String, kube::Error> {
    for version in ["policy/v1", "policy/v1beta1"] {
        match client.list_api_group_resources(version).await {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.kind == "PodDisruptionBudget") =>
            {
                return Ok(version.to_string())
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok("policy/v1".to_string())
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Applies a child. A refusal by the API server (an invalid object, a forbidden field, an
/// admission webhook's no) is [`Error::Apply`], for status; anything else is retried.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|e| refused(K::kind(&()).into_owned(), &name, e))
}

/// Whether an API error is a refusal to report rather than a hiccup to retry.
fn refused(kind: String, name: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if (400..500).contains(&s.code) && ![409, 429].contains(&s.code) => {
            Error::Apply {
                kind,
                name: name.to_string(),
                message: s.message,
            }
        }
        e => Error::Kube(e),
    }
}

async fn publish(ctx: &Context, nc: &NixCache, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &nc.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish an event");
    }
}

/// Why a reconcile stopped before the children were applied, for conditions and events.
struct Failure {
    reason: &'static str,
    message: String,
}

/// The controller's entry point.
pub async fn reconcile(nc: Arc<NixCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&nc, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    result
}

/// The controller's error policy: log, count, retry soon.
pub fn error_policy(nc: Arc<NixCache>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(
        namespace = nc.namespace().unwrap_or_default(),
        name = nc.name_any(),
        %error,
        "reconcile failed"
    );
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile_inner(nc: &NixCache, ctx: &Context) -> Result<Action, Error> {
    if nc.metadata.deletion_timestamp.is_some() {
        // The API server's garbage collector removes the children through their owner
        // references; the cluster-scoped binding, which can have none, goes here.
        if has_finalizer(nc) {
            drop_token_review_binding(nc, ctx).await?;
        }
        return Ok(Action::await_change());
    }
    let ns = nc.namespace().ok_or(Error::NoNamespace)?;
    let client = ctx.client.clone();
    let mut nc = std::borrow::Cow::Borrowed(nc);
    if current_conditions(&nc).is_empty() {
        // First sight: say so before anything that may take a while or fail.
        let status = NixCacheStatus {
            conditions: conditions(
                &Outcome::Reconciling,
                &[],
                nc.metadata.generation,
                &rfc3339(now_unix()),
            ),
            observed_generation: nc.metadata.generation,
            ..nc.status.clone().unwrap_or_default()
        };
        write_status(&nc, ctx, &ns, status.clone()).await?;
        nc.to_mut().status = Some(status);
    }
    let nc: &NixCache = &nc;

    let secret_versions = match check(nc, &client, &ns).await? {
        Ok(versions) => versions,
        Err(failure) => return fail(nc, ctx, failure).await,
    };
    let public_key = match signing_key(nc, ctx, &ns).await? {
        Ok(key) => key,
        Err(failure) => return fail(nc, ctx, failure).await,
    };
    if let Some(failure) = ownership(nc, ctx, &ns).await? {
        return fail(nc, ctx, failure).await;
    }
    let url = resources::url(nc, &ctx.cluster_domain);
    let applied = match apply_children(nc, ctx, &ns, &url, &public_key, &secret_versions).await {
        Ok(applied) => applied,
        Err(e @ Error::Apply { .. }) => {
            let message = e.to_string();
            fail(
                nc,
                ctx,
                Failure {
                    reason: "ApplyFailed",
                    message: message.clone(),
                },
            )
            .await?;
            return Err(Error::Reported {
                reason: "ApplyFailed".into(),
                message,
            });
        }
        Err(e) => return Err(e),
    };

    let (gc_status, gc_requeue, gc_failed) = if gc_runs_as_jobs(&nc.spec) {
        let (mut status, requeue, failed) = gc(nc, ctx, &ns).await?;
        status.mode = Some("Job".into());
        (Some(status), requeue, failed)
    } else if gc_bound(&nc.spec).is_some() {
        let status = crate::crd::GcStatus {
            mode: Some("Server".into()),
            ..Default::default()
        };
        (Some(status), None, None)
    } else {
        (None, None, None)
    };

    let observed = Observed {
        rollout: Rollout::of(&applied.deployment),
        pod_problem: pod_problem(&server_pods(nc, ctx, &ns).await?),
        claim_pending: applied.claim_pending,
        gc_failed,
    };
    let settled = observed.rollout.observed
        && observed.rollout.ready >= observed.rollout.desired
        && observed.pod_problem.is_none();
    let status = NixCacheStatus {
        conditions: conditions(
            &Outcome::Applied(observed.clone()),
            &current_conditions(nc),
            nc.metadata.generation,
            &rfc3339(now_unix()),
        ),
        observed_generation: nc.metadata.generation,
        ready_replicas: Some(observed.rollout.ready),
        replicas: applied
            .deployment
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .or(Some(0)),
        selector: Some(resources::selector_string(nc)),
        public_key: Some(public_key),
        url: Some(url),
        external_url: external_url(ctx, &applied.service).await,
        client_config_map: Some(resources::client_config_map_name(nc)),
        gc: gc_status,
    };
    write_status(nc, ctx, &ns, status).await?;

    // Pods and claims are watched; a look every so often catches what no watch tells of
    // (a claim Pending for long, a LoadBalancer address).
    let every = Duration::from_secs(if settled { 300 } else { 30 });
    Ok(Action::requeue(gc_requeue.map_or(every, |r| r.min(every))))
}

/// What applying the children gave back.
struct Applied {
    deployment: Deployment,
    service: Service,
    /// The claim is Pending: why, and whether for long.
    claim_pending: Option<(String, bool)>,
}

/// How long a claim may stay Pending before it is worth a Warning.
const CLAIM_PENDING_GRACE: i64 = 60;

async fn apply_children(
    nc: &NixCache,
    ctx: &Context,
    ns: &str,
    url: &str,
    public_key: &str,
    secret_versions: &str,
) -> Result<Applied, Error> {
    let client = ctx.client.clone();
    token_review_binding(nc, ctx, ns).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    apply(&config_maps, &resources::config_map(nc)).await?;
    apply(
        &config_maps,
        &resources::client_config_map(nc, url, public_key),
    )
    .await?;
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &resources::service_account(nc),
    )
    .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = match resources::persistent_volume_claim(nc) {
        Some(pvc) => Some(apply(&claims, &pvc?).await?),
        None => match &nc.spec.storage.existing_claim {
            Some(name) => match claims.get_opt(name).await? {
                Some(claim) => Some(claim),
                None => {
                    return Err(Error::Apply {
                        kind: "PersistentVolumeClaim".into(),
                        name: name.clone(),
                        message: format!(
                            "spec.storage.existingClaim {name:?} does not exist in namespace {ns:?}"
                        ),
                    })
                }
            },
            None => None,
        },
    };
    let service = apply(
        &Api::<Service>::namespaced(client.clone(), ns),
        &resources::service(nc)?,
    )
    .await?;
    let deployment = apply(
        &Api::<Deployment>::namespaced(client.clone(), ns),
        &resources::deployment(nc, &ctx.defaults, public_key, secret_versions)?,
    )
    .await?;
    pod_disruption_budget(nc, ctx, ns).await?;
    let claim_pending = claim.and_then(|c| {
        let phase = c.status.as_ref().and_then(|s| s.phase.clone());
        (phase.as_deref() == Some("Pending")).then(|| {
            let age = c
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| now_unix() - t.0.as_second());
            (
                format!(
                    "PersistentVolumeClaim {:?} is Pending (for {age} s): no volume is bound \
                     to it yet; see its events",
                    c.name_any()
                ),
                age > CLAIM_PENDING_GRACE,
            )
        })
    });
    Ok(Applied {
        deployment,
        service,
        claim_pending,
    })
}

/// On a cache whose server reviews ServiceAccount tokens: the ClusterRoleBinding it needs is
/// deleted before the cache is.
pub const FINALIZER: &str = "nixcache.io/token-review-binding";

fn has_finalizer(nc: &NixCache) -> bool {
    nc.finalizers().iter().any(|f| f == FINALIZER)
}

/// Sets the cache's finalizers to `finalizers`, if no one changed the cache since it was read
/// (the resource version makes a concurrent change a conflict, retried).
async fn set_finalizers(
    nc: &NixCache,
    ctx: &Context,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let ns = nc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<NixCache> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": nc.resource_version(),
    }});
    api.patch(
        &nc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| refused("NixCache".into(), &nc.name_any(), e))?;
    Ok(())
}

/// While ServiceAccounts are granted access, the cache's ServiceAccount is bound to
/// `system:auth-delegator` (the finalizer first, so that the binding never outlives the
/// cache); once none is, the binding goes, then the finalizer.
async fn token_review_binding(nc: &NixCache, ctx: &Context, ns: &str) -> Result<(), Error> {
    if resources::reviews_tokens(nc) {
        if !has_finalizer(nc) {
            info!(namespace = %ns, name = %nc.name_any(), role = resources::TOKEN_REVIEW_ROLE,
                "binding the cache's ServiceAccount, whose server reviews tokens");
            let mut finalizers = nc.finalizers().to_vec();
            finalizers.push(FINALIZER.into());
            set_finalizers(nc, ctx, finalizers).await?;
        }
        let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
        apply(&bindings, &resources::token_review_binding(nc)).await?;
    } else if has_finalizer(nc) {
        drop_token_review_binding(nc, ctx).await?;
    }
    Ok(())
}

/// Deletes the cache's ClusterRoleBinding (if it is there), then the finalizer.
async fn drop_token_review_binding(nc: &NixCache, ctx: &Context) -> Result<(), Error> {
    let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let name = resources::token_review_binding_name(nc);
    match bindings.delete(&name, &DeleteParams::default()).await {
        Ok(_) => info!(binding = %name, "deleted the cache's ClusterRoleBinding"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(refused("ClusterRoleBinding".into(), &name, e)),
    }
    let finalizers = nc
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(nc, ctx, finalizers).await
}

/// The cache's server pods, to tell why they do not run. Without the right to list pods (an
/// older install's RBAC), none: status then says less, but says it.
async fn server_pods(nc: &NixCache, ctx: &Context, ns: &str) -> Result<Vec<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = resources::selector_string(nc);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            warn!(namespace = %ns, "cannot list pods: pod problems are not reported");
            Ok(Vec::new())
        }
        Err(e) => Err(e.into()),
    }
}

/// The URL from outside the cluster: a LoadBalancer's ingress address, or a node's address
/// and the node port. None for a ClusterIP, or while no address is known.
async fn external_url(ctx: &Context, service: &Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    let port = spec.ports.as_ref()?.first()?;
    match spec.type_.as_deref() {
        Some("LoadBalancer") => {
            let ingress = service
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?;
            let host = ingress.hostname.clone().or_else(|| ingress.ip.clone())?;
            Some(format!("http://{}:{}", bracket(&host), port.port))
        }
        Some("NodePort") => {
            let node_port = port.node_port?;
            let nodes: Api<Node> = Api::all(ctx.client.clone());
            let list = match nodes.list(&ListParams::default().limit(20)).await {
                Ok(list) => list,
                Err(e) => {
                    warn!(error = %e, "cannot list nodes for the NodePort URL");
                    return None;
                }
            };
            let address = node_address(&list.items)?;
            Some(format!("http://{}:{node_port}", bracket(&address)))
        }
        _ => None,
    }
}

/// A node's external address, else its internal one.
fn node_address(nodes: &[Node]) -> Option<String> {
    let addresses: Vec<_> = nodes
        .iter()
        .flat_map(|n| n.status.iter().flat_map(|s| s.addresses.iter().flatten()))
        .collect();
    ["ExternalIP", "InternalIP"].into_iter().find_map(|t| {
        addresses
            .iter()
            .find(|a| a.type_ == t)
            .map(|a| a.address.clone())
    })
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Any same-named object the operator would apply over that is not this cache's: applying it
/// would take it over, and deleting the cache would delete it. A conflict stops the reconcile.
async fn ownership(nc: &NixCache, ctx: &Context, ns: &str) -> Result<Option<Failure>, Error> {
    let client = ctx.client.clone();
    let name = nc.name_any();
    let mut wanted: Vec<(&str, String, Option<kube::api::ObjectMeta>)> = Vec::new();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for cm in [
        resources::config_map_name(nc),
        resources::client_config_map_name(nc),
    ] {
        let found = cms.get_metadata_opt(&cm).await?.map(|o| o.metadata);
        wanted.push(("ConfigMap", cm, found));
    }
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    wanted.push((
        "ServiceAccount",
        name.clone(),
        sas.get_metadata_opt(&name).await?.map(|o| o.metadata),
    ));
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    wanted.push((
        "Service",
        name.clone(),
        svcs.get_metadata_opt(&name).await?.map(|o| o.metadata),
    ));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wanted.push((
        "Deployment",
        name.clone(),
        deployments
            .get_metadata_opt(&name)
            .await?
            .map(|o| o.metadata),
    ));
    if nc.spec.replicas > 1 {
        let found = pdb_api(ctx, ns)
            .get_metadata_opt(&name)
            .await?
            .map(|o| o.metadata);
        wanted.push(("PodDisruptionBudget", name.clone(), found));
    }
    let mut claim = None;
    if resources::persistent_volume_claim(nc).is_some() {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let pvc = resources::pvc_name(nc);
        claim = claims
            .get_metadata_opt(&pvc)
            .await?
            .map(|o| o.metadata)
            .map(|m| (pvc, m));
    }
    for (kind, child, found) in wanted {
        if let Some(reason) = found.and_then(|m| resources::foreign(&m, nc, false)) {
            return Ok(Some(conflict(kind, &child, &reason)));
        }
    }
    if let Some((pvc, m)) = claim {
        // A claim kept by retainOnDelete carries the cache's labels and no owner: it is this
        // cache's to use again.
        if let Some(reason) = resources::foreign(&m, nc, true) {
            return Ok(Some(conflict("PersistentVolumeClaim", &pvc, &reason)));
        }
    }
    Ok(None)
}

fn conflict(kind: &str, name: &str, why: &str) -> Failure {
    Failure {
        reason: "OwnershipConflict",
        message: format!(
            "{kind} {name:?} already exists and {why}: the operator does not take over objects \
             it did not create. Delete or rename it, or give the NixCache another name"
        ),
    }
}

fn current_conditions(nc: &NixCache) -> Vec<crate::crd::Condition> {
    nc.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// Writes status if it changed (a write is itself a change the controller hears about), and
/// tells of condition changes as Events.
async fn write_status(
    nc: &NixCache,
    ctx: &Context,
    ns: &str,
    status: NixCacheStatus,
) -> Result<(), Error> {
    let old = nc.status.clone().unwrap_or_default();
    if old == status {
        return Ok(());
    }
    let was = |t: &str| find(&old.conditions, t).map(|c| c.status.clone());
    let was_reason = |t: &str| find(&old.conditions, t).map(|c| c.reason.clone());
    let is = |t: &str| find(&status.conditions, t).cloned();
    if let Some(ready) = is(READY) {
        if was(READY).as_deref() != Some(ready.status.as_str()) && ready.status == "True" {
            publish(ctx, nc, EventType::Normal, "Ready", ready.message).await;
        }
    }
    if let Some(degraded) = is(DEGRADED) {
        let changed = was(DEGRADED).as_deref() != Some(degraded.status.as_str())
            || was_reason(DEGRADED).as_deref() != Some(degraded.reason.as_str());
        if changed && degraded.status == "True" {
            publish(
                ctx,
                nc,
                EventType::Warning,
                &degraded.reason,
                degraded.message,
            )
            .await;
        }
    }
    let api: Api<NixCache> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": "nixcache.io/v1alpha1",
        "kind": "NixCache",
        "status": status,
    });
    api.patch_status(&nc.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// A reconcile that stopped: Degraded and not Reconciled with the reason, children as they were,
/// looked at again later (a missing Secret may appear; a spec change triggers a reconcile anyway).
async fn fail(nc: &NixCache, ctx: &Context, failure: Failure) -> Result<Action, Error> {
    let ns = nc.namespace().ok_or(Error::NoNamespace)?;
    info!(
        namespace = %ns,
        name = nc.name_any(),
        reason = failure.reason,
        message = %failure.message,
        "reconcile stopped"
    );
    let old = nc.status.clone().unwrap_or_default();
    let status = NixCacheStatus {
        conditions: conditions(
            &Outcome::Failed {
                reason: failure.reason.into(),
                message: failure.message,
            },
            &old.conditions,
            nc.metadata.generation,
            &rfc3339(now_unix()),
        ),
        observed_generation: nc.metadata.generation,
        // What was true before stays: the children still run as they were.
        url: Some(resources::url(nc, &ctx.cluster_domain)),
        ready_replicas: old.ready_replicas.or(Some(0)),
        ..old
    };
    write_status(nc, ctx, &ns, status).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// The spec's own checks, then the Secrets it names. Gives the Secrets' versions (name, uid and
/// resource version of each, never a value) for the pod template: a rotated Secret rolls the
/// pods.
async fn check(nc: &NixCache, client: &Client, ns: &str) -> Result<Result<String, Failure>, Error> {
    if let Err(e) = validate(nc) {
        return Ok(Err(Failure {
            reason: "InvalidSpec",
            message: e.0,
        }));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut wanted: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(s3) = &nc.spec.storage.s3 {
        wanted.push((
            s3.credentials_secret.clone(),
            vec!["AWS_ACCESS_KEY_ID".into(), "AWS_SECRET_ACCESS_KEY".into()],
        ));
    }
    let refs = [
        nc.spec.database.as_ref().map(|db| &db.postgres_url_secret),
        nc.spec
            .uploads
            .as_ref()
            .and_then(|u| u.token_secret.as_ref()),
        nc.spec.read_token_secret.as_ref(),
        nc.spec.admin_token_secret.as_ref(),
    ];
    for r in refs.into_iter().flatten() {
        wanted.push((r.name.clone(), vec![r.key.clone()]));
    }
    let mut versions = Vec::new();
    for (name, keys) in wanted {
        let Some(secret) = secrets.get_opt(&name).await? else {
            return Ok(Err(Failure {
                reason: "SecretMissing",
                message: format!("Secret {name:?} does not exist in namespace {ns:?}"),
            }));
        };
        versions.push(format!(
            "{name}/{}/{}",
            secret.metadata.uid.as_deref().unwrap_or_default(),
            secret
                .metadata
                .resource_version
                .as_deref()
                .unwrap_or_default()
        ));
        let data = secret.data.unwrap_or_default();
        if let Some(missing) = keys.iter().find(|k| !data.contains_key(k.as_str())) {
            return Ok(Err(Failure {
                reason: "SecretMissing",
                message: format!("Secret {name:?} has no key {missing:?}"),
            }));
        }
    }
    versions.sort();
    versions.dedup();
    Ok(Ok(versions.join(",")))
}

/// The signing key's public half, from the Secret the spec names or from the generated one.
///
/// The generated key is made once and outlives its NixCache (its Secret has no owner), so a
/// NixCache deleted and re-created under the same name signs with the same key. Once
/// `status.publicKey` names a key, a missing Secret is never quietly replaced: every client
/// trusts that key. The cache reports `SigningKeyLost` until the Secret is restored, or until the
/// annotation `nixcache.io/regenerate-signing-key` names the lost key; then a new key is made
/// under the next name (`NAME.NAMESPACE-2`, …).
async fn signing_key(
    nc: &NixCache,
    ctx: &Context,
    ns: &str,
) -> Result<Result<String, Failure>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = resources::signing_key_secret_name(nc);
    let existing = match secrets.get_opt(&name).await? {
        Some(secret) => secret,
        None if nc.spec.signing_key.is_some() => {
            return Ok(Err(Failure {
                reason: "SigningKeyMissing",
                message: format!(
                "Secret {name:?} (spec.signingKey.secretName) does not exist in namespace {ns:?}"
            ),
            }))
        }
        None => {
            let previous = nc.status.as_ref().and_then(|s| s.public_key.clone());
            let key_name = match &previous {
                None => format!("{}.{}-1", nc.name_any(), ns),
                Some(lost) if regeneration_allowed(nc, lost) => resources::next_key_name(nc, lost),
                Some(lost) => {
                    let message = format!(
                        "Secret {name:?} with the signing key {lost} is gone, and clients trust \
                         that key: restore the Secret, or annotate the NixCache \
                         {}={:?} to generate a new key",
                        resources::REGENERATE_KEY_ANNOTATION,
                        lost.split(':').next().unwrap_or_default()
                    );
                    publish(
                        ctx,
                        nc,
                        EventType::Warning,
                        "SigningKeyLost",
                        message.clone(),
                    )
                    .await;
                    return Ok(Err(Failure {
                        reason: "SigningKeyLost",
                        message,
                    }));
                }
            };
            let key = SecretKey::generate(&key_name).map_err(|e| Error::Key(e.to_string()))?;
            let public = key.public_key().to_string();
            let secret = resources::signing_key_secret(nc, &key.to_file_contents(), &public);
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    info!(namespace = %ns, name = nc.name_any(), public_key = %public, "signing key generated");
                    let (kind, reason, message) = match &previous {
                        None => (
                            EventType::Normal,
                            "SigningKeyGenerated",
                            format!("Generated the signing key {public} into Secret {name}"),
                        ),
                        Some(lost) => (
                            EventType::Warning,
                            "SigningKeyRegenerated",
                            format!(
                                "Generated the signing key {public} into Secret {name}, replacing \
                                 the lost {lost}: clients must trust the new key"
                            ),
                        ),
                    };
                    publish(ctx, nc, kind, reason, message).await;
                    return Ok(Ok(public));
                }
                // Made meanwhile (another reconcile, another operator): that one is the key.
                Err(kube::Error::Api(s)) if s.code == 409 => secrets.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let text = existing
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
    let Some(text) = text else {
        return Ok(Err(Failure {
            reason: "BadSigningKey",
            message: format!("Secret {name:?} has no {KEY_FILE:?} entry"),
        }));
    };
    let public = match SecretKey::parse(&text) {
        Ok(key) => key.public_key().to_string(),
        // The message names the Secret and what is wrong, never the key's bytes.
        Err(e) => {
            return Ok(Err(Failure {
                reason: "BadSigningKey",
                message: format!("Secret {name:?} entry {KEY_FILE:?} is not a Nix secret key: {e}"),
            }))
        }
    };
    if nc.spec.signing_key.is_none() && resources::is_generated_key_secret(&existing) {
        keep_key_secret(&secrets, &existing, &public).await?;
    }
    Ok(Ok(public))
}

/// Whether the annotation allows replacing the lost key `lost` (by its public key or its name).
fn regeneration_allowed(nc: &NixCache, lost: &str) -> bool {
    let Some(named) = nc.annotations().get(resources::REGENERATE_KEY_ANNOTATION) else {
        return false;
    };
    let named = named.trim();
    !named.is_empty() && (named == lost || Some(named) == lost.split(':').next())
}

/// A generated key's Secret: owned by nothing (Secrets made by earlier versions had the
/// NixCache as owner, and went with it), and with its `public-key` entry current.
async fn keep_key_secret(
    secrets: &Api<Secret>,
    secret: &Secret,
    public: &str,
) -> Result<(), Error> {
    let owners = secret.owner_references();
    let listed = secret
        .data
        .as_ref()
        .and_then(|d| d.get(resources::PUBLIC_KEY_ENTRY))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
    let mut patch = serde_json::Map::new();
    if owners.iter().any(|o| o.kind == "NixCache") {
        let rest: Vec<_> = owners.iter().filter(|o| o.kind != "NixCache").collect();
        patch.insert("metadata".into(), json!({"ownerReferences": rest}));
    }
    if listed.as_deref() != Some(public) {
        patch.insert(
            "stringData".into(),
            json!({resources::PUBLIC_KEY_ENTRY: public}),
        );
    }
    if !patch.is_empty() {
        secrets
            .patch(
                &secret.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::Value::Object(patch)),
            )
            .await?;
    }
    Ok(())
}

/// The PodDisruptionBudget resource in `api_version` (`policy/v1` or `policy/v1beta1`).
pub fn pdb_resource(api_version: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("policy", "v1"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        group,
        version,
        "PodDisruptionBudget",
    ))
}

/// PodDisruptionBudgets in the `policy` version the API server serves.
fn pdb_api(ctx: &Context, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), ns, &pdb_resource(&ctx.pdb_api_version))
}

/// With more than one replica, a PodDisruptionBudget in the served `policy` version; with one,
/// none (a budget of one replica would block node drains).
async fn pod_disruption_budget(nc: &NixCache, ctx: &Context, ns: &str) -> Result<(), Error> {
    let api = pdb_api(ctx, ns);
    let name = nc.name_any();
    if nc.spec.replicas > 1 {
        let pdb = resources::pod_disruption_budget(nc, &ctx.pdb_api_version);
        api.patch(&name, &apply_params(), &Patch::Apply(&pdb))
            .await
            .map_err(|e| refused("PodDisruptionBudget".into(), &name, e))?;
    } else if let Some(existing) = api.get_opt(&name).await? {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == nc.metadata.uid.as_ref());
        if ours {
            api.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

/// One GC step: start the due Job, prune history, and return the GC status and when to look again.
async fn gc(
    nc: &NixCache,
    ctx: &Context,
    ns: &str,
) -> Result<(crate::crd::GcStatus, Option<Duration>, Option<String>), Error> {
    let Some(spec) = &nc.spec.gc else {
        return Ok((Default::default(), None, None));
    };
    // validate() has parsed the schedule already.
    let schedule = match parse_schedule(&spec.schedule) {
        Ok(s) => s,
        Err(_) => return Ok((Default::default(), None, None)),
    };
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!(
        "{CACHE_LABEL}={},app.kubernetes.io/component=gc",
        nc.name_any()
    );
    let jobs = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let uid = nc.metadata.uid.clone();
    let jobs: Vec<GcJob> = jobs
        .items
        .iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .filter_map(GcJob::from_job)
        .collect();
    let last_handled = nc
        .status
        .as_ref()
        .and_then(|s| s.gc.as_ref())
        .and_then(|g| g.last_schedule_time.as_deref())
        .and_then(parse_rfc3339);
    let created = nc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or_else(now_unix);
    let failed = last_failure(&jobs);
    let mut plan = plan(spec, &schedule, last_handled, created, now_unix(), &jobs);

    if let Some(tick) = plan.start {
        let job = resources::gc_job(nc, &ctx.defaults, tick)?;
        let job_name = job.metadata.name.clone().unwrap_or_default();
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(_) => {
                ctx.metrics.gc_jobs_created.inc();
                info!(namespace = %ns, name = nc.name_any(), job = %job_name, "gc job created");
                publish(
                    ctx,
                    nc,
                    EventType::Normal,
                    "GcJobCreated",
                    format!(
                        "Created Job {job_name} for the GC run due at {}",
                        rfc3339(tick)
                    ),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        plan.status.active_job = Some(job_name.clone());
        plan.status.last_result = Some(format!("Running {job_name}"));
    }
    if let Some(tick) = plan.skipped {
        publish(
            ctx,
            nc,
            EventType::Warning,
            "GcSkipped",
            format!(
                "Skipped the GC run due at {}: the previous one is still running",
                rfc3339(tick)
            ),
        )
        .await;
    }
    for name in &plan.delete {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match jobs_api.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((
        plan.status,
        plan.requeue_after
            .map(|s| Duration::from_secs(s.max(1) as u64)),
        failed,
    ))
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
