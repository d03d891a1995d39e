//! The operator process: a standby until it holds the leader Lease, then the controller (with GC
//! scheduling) until it loses the Lease or is told to stop; `/healthz` and `/metrics` throughout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use kube::api::DynamicObject;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::crd::NixCache;
use crate::leader::{stop_deadline, Leadership, LeaseLock};
use crate::metrics::Metrics;
use crate::reconcile::{
    discover_pdb_version, error_policy, pdb_resource, reconcile, Context, MANAGER,
};
use crate::resources::{
    referenced_secrets, CACHE_LABEL, DEFAULT_CLUSTER_DOMAIN, DEFAULT_IMAGE, MANAGED_BY,
};

/// How long reconciles under way may take to finish once leadership ends (less if the Lease could
/// pass on sooner).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `nixcache-operator run` settings; each also an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kubeconfig to use; without it, the in-cluster service account or $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Address of `/healthz` and `/metrics`.
    #[arg(
        long,
        env = "NIXCACHE_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8081",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// Watch NixCaches of these namespaces only (repeat it, or separate them with commas).
    /// [default: all namespaces]
    #[arg(
        long,
        env = "NIXCACHE_OPERATOR_WATCH_NAMESPACE",
        value_delimiter = ',',
        value_name = "NS"
    )]
    pub watch_namespace: Vec<String>,
    /// Namespace of the leader Lease. [default: $POD_NAMESPACE, else the kubeconfig's namespace]
    #[arg(long, env = "NIXCACHE_OPERATOR_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "NIXCACHE_OPERATOR_LEASE_NAME",
        default_value = "nixcache-operator",
        value_name = "NAME"
    )]
    pub lease_name: String,
    /// This candidate's name in the Lease. [default: $POD_NAME, else host name and process id]
    #[arg(long, env = "NIXCACHE_OPERATOR_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease holder may go without renewing before another takes over.
    #[arg(
        long,
        env = "NIXCACHE_OPERATOR_LEASE_SECONDS",
        default_value_t = 15,
        value_name = "N"
    )]
    pub lease_seconds: u64,
    /// Server image for NixCaches that name none.
    #[arg(long, env = "NIXCACHE_OPERATOR_IMAGE", default_value = DEFAULT_IMAGE, value_name = "IMAGE")]
    pub image: String,
    /// Image pull Secrets (by name, comma-separated) for caches whose spec names none; each must
    /// exist in the cache's namespace.
    #[arg(
        long,
        env = "NIXCACHE_OPERATOR_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub image_pull_secret: Vec<String>,
    /// The cluster's DNS domain, for the in-cluster URL in status and the client ConfigMap.
    #[arg(long, env = "NIXCACHE_OPERATOR_CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN, value_name = "DOMAIN")]
    pub cluster_domain: String,
    /// Log format: json or text.
    #[arg(long, env = "NIXCACHE_OPERATOR_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // kube's client warns on every connection to a server whose certificate is not checked.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,kube_client::client::tls=error")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn client(args: &RunArgs) -> anyhow::Result<(Client, String)> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

fn identity(args: &RunArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "operator".into());
            format!("{host}-{}", std::process::id())
        })
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves `/healthz` and `/metrics` from now until the process ends.
async fn serve_http(listen: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "the metrics and health server stopped");
        }
    });
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let metrics = Arc::new(Metrics::new()?);
    serve_http(args.listen, metrics.clone()).await?;
    let (client, default_namespace) = client(&args).await?;
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or(default_namespace);
    let identity = identity(&args);
    let lease_duration = Duration::from_secs(args.lease_seconds.max(3));
    let lock = Arc::new(LeaseLock::new(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
        lease_duration,
    ));
    info!(identity = %identity, lease = %format!("{lease_namespace}/{}", args.lease_name), listen = %args.listen, "operator starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        info!("stop requested");
        let _ = stop_tx.send(true);
    });

    loop {
        if !wait_for_leadership(&lock, stop_rx.clone(), lease_duration).await {
            break;
        }
        metrics.leader.set(1);
        info!(identity = %identity, "leading: reconciling NixCaches");
        let stopped = lead(
            &args,
            &client,
            &lock,
            &metrics,
            stop_rx.clone(),
            lease_duration,
        )
        .await;
        metrics.leader.set(0);
        if stopped? {
            break;
        }
        warn!(identity = %identity, "lost the leader Lease: standing by");
    }
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not release the leader Lease; it expires by itself");
    }
    info!("operator stopped");
    Ok(())
}

/// Tries for the Lease until it is held (true) or a stop is requested (false).
async fn wait_for_leadership(
    lock: &LeaseLock,
    mut stop: watch::Receiver<bool>,
    lease_duration: Duration,
) -> bool {
    let retry = (lease_duration / 5).max(Duration::from_secs(1));
    let mut last_holder = String::new();
    loop {
        if *stop.borrow() {
            return false;
        }
        match lock.try_acquire_or_renew().await {
            Ok(Leadership::Leader) => return true,
            Ok(Leadership::Follower { holder }) => {
                if holder != last_holder {
                    info!(holder = %holder, "standing by: another operator leads");
                    last_holder = holder;
                }
            }
            Err(e) => warn!(error = %e, "cannot reach the leader Lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Runs the controller while renewing the Lease. Returns whether a stop was requested (as
/// opposed to the Lease being lost).
async fn lead(
    args: &RunArgs,
    client: &Client,
    lock: &Arc<LeaseLock>,
    metrics: &Arc<Metrics>,
    stop: watch::Receiver<bool>,
    lease_duration: Duration,
) -> anyhow::Result<bool> {
    // Whatever ends leadership — a stop or a lost Lease — ends the controller: no new reconciles
    // start, and those under way are given until the deadline sent, which never passes the
    // moment another candidate could take the Lease over.
    let (end_tx, end_rx) = watch::channel(None::<Instant>);
    let renewer = {
        let lock = lock.clone();
        let mut stop = stop.clone();
        let end_tx = end_tx.clone();
        tokio::spawn(async move {
            let mut last_renewed = Instant::now();
            let period = lease_duration / 3;
            let end = |last_renewed: Instant| {
                Some(stop_deadline(
                    Instant::now(),
                    last_renewed,
                    lease_duration,
                    SHUTDOWN_GRACE,
                ))
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => { let _ = end_tx.send(end(last_renewed)); return; }
                }
                if *stop.borrow() {
                    let _ = end_tx.send(end(last_renewed));
                    return;
                }
                match lock.try_acquire_or_renew().await {
                    Ok(Leadership::Leader) => last_renewed = Instant::now(),
                    Ok(Leadership::Follower { holder }) => {
                        warn!(holder = %holder, "the leader Lease was taken over");
                        let _ = end_tx.send(Some(Instant::now()));
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot renew the leader Lease");
                        // Step down before the Lease can expire under us.
                        if last_renewed.elapsed() > lease_duration * 2 / 3 {
                            let _ = end_tx.send(end(last_renewed));
                            return;
                        }
                    }
                }
            }
        })
    };

    let pdb_api_version = discover_pdb_version(client)
        .await
        .context("discovering the policy API version")?;
    info!(pdb_api_version = %pdb_api_version, "discovered the API server");
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(lock.identity().to_string()),
            },
        ),
        metrics: metrics.clone(),
        defaults: crate::resources::Defaults {
            image: args.image.clone(),
            image_pull_secrets: args
                .image_pull_secret
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        },
        pdb_api_version,
        cluster_domain: args.cluster_domain.clone(),
    });
    let namespaces: Vec<Option<String>> = {
        let listed: Vec<String> = args
            .watch_namespace
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if listed.is_empty() {
            vec![None]
        } else {
            listed.into_iter().map(Some).collect()
        }
    };
    // One controller per watched namespace (or one for all): each watches only its namespace,
    // which is all a namespaced Role lets it see.
    let controllers = futures_util::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| controller(client.clone(), ns, context.clone(), end_rx.clone())),
    );
    // A graceful stop lets reconciles under way finish, until the deadline: then the controller
    // is dropped, and with it every reconcile still running. (The controller can also wait for
    // its caches forever, with an API server that never lists NixCaches.)
    let mut end = end_rx.clone();
    let deadline = async move {
        let _ = end.wait_for(|deadline| deadline.is_some()).await;
        let at = (*end.borrow()).unwrap_or_else(Instant::now);
        tokio::time::sleep_until(at.into()).await;
    };
    tokio::select! {
        _ = controllers => {}
        _ = deadline => warn!("reconciles did not finish before the leader Lease could pass on; stopped them"),
    }
    renewer.abort();
    Ok(*stop.borrow())
}

/// The controller of the NixCaches of one namespace (or of all), with the watches of their
/// children, until `end` names a deadline.
async fn controller(
    client: Client,
    ns: Option<String>,
    context: Arc<Context>,
    end_rx: watch::Receiver<Option<Instant>>,
) {
    let caches: Api<NixCache> = match &ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Children are found by their label, so the watches see only the operator's own objects.
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    fn children<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    if let Err(kube::Error::Api(e)) = caches
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        if e.code == 404 {
            error!("the NixCache CRD is not installed: kubectl apply -f crds/nixcaches.nixcache.io.json (the Helm chart installs it)");
        }
    }
    let ns = &ns;
    let client = &client;
    // PodDisruptionBudgets in whichever policy version this API server serves.
    let pdb_resource = pdb_resource(&context.pdb_api_version);
    let pdbs: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &pdb_resource),
        None => Api::all_with(client.clone(), &pdb_resource),
    };
    let mut end = end_rx.clone();
    let controller = Controller::new(caches, watcher::Config::default());
    let store = controller.store();
    // Secrets by metadata only (their values never reach the operator's memory through the
    // watch): the generated signing key's, which has no owner, maps to its cache by label; any
    // other maps to the caches that read it, so that a rotated token or password rolls their
    // pods.
    let secret_caches = move |secret: PartialObjectMeta<Secret>| {
        let namespace = secret.namespace().unwrap_or_default();
        let name = secret.name_any();
        let generated_for = (secret.labels().get("app.kubernetes.io/managed-by")
            == Some(&MANAGED_BY.to_string()))
        .then(|| secret.labels().get(CACHE_LABEL).cloned())
        .flatten();
        store
            .state()
            .into_iter()
            .filter(|nc| nc.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|nc| {
                generated_for.as_deref() == Some(nc.name_any().as_str())
                    || referenced_secrets(nc).contains(&name)
            })
            .map(|nc| ObjectRef::from_obj(&*nc))
            .collect::<Vec<_>>()
    };
    controller
        .owns_with(pdbs, pdb_resource, owned.clone())
        .owns(children::<ConfigMap>(client, ns), owned.clone())
        .owns(children::<Deployment>(client, ns), owned.clone())
        .owns(children::<Service>(client, ns), owned.clone())
        .owns(children::<ServiceAccount>(client, ns), owned.clone())
        .watches(
            children::<PartialObjectMeta<Secret>>(client, ns),
            watcher::Config::default(),
            secret_caches,
        )
        // Server pods by metadata: any change (a pull failing, a crash) is a reason to look.
        .watches(
            children::<PartialObjectMeta<Pod>>(client, ns),
            owned.clone(),
            |pod: PartialObjectMeta<Pod>| {
                let cache = pod.labels().get(CACHE_LABEL)?.clone();
                Some(ObjectRef::<NixCache>::new(&cache).within(&pod.namespace()?))
            },
        )
        .owns(children::<PersistentVolumeClaim>(client, ns), owned.clone())
        .owns(children::<Job>(client, ns), owned)
        .graceful_shutdown_on(async move {
            let _ = end.wait_for(|deadline| deadline.is_some()).await;
        })
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    other => error!(error = %other, "controller"),
                }
            }
        })
        .await;
}
