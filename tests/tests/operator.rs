//! The operator against a real kube-apiserver (1.20, with etcd; no controllers, no kubelet) and
//! real helm: the chart installs and validates, a NixCache is reconciled into owned children that
//! follow its spec and come back when deleted, the signing key is made once, readiness follows
//! the Deployment's status, an invalid spec is Degraded, and GC Jobs are made once per tick by
//! the one operator process holding the leader Lease.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, CustomResourceExt, ResourceExt};
use nixcache::config::ServeArgs;
use nixcache::nix::PublicKey;
use nixcache_operator::crd::NixCache;
use nixcache_tests::kube::{helm_bin, KubeApiServer};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn operator_bin() -> PathBuf {
    common::workspace_bin("nixcache-operator", "NIXCACHE_OPERATOR_BIN")
}

async fn client(server: &KubeApiServer) -> Client {
    let kubeconfig = Kubeconfig::read_from(&server.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// Polls `f` until it returns `Some`, or fails the test after `secs` with `what`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &NixCache::crd())
        .await
        .expect("create CRD");
    wait_established(client).await;
}

async fn wait_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(30, "the CRD to be established", || async {
        let crd = crds.get_opt("nixcaches.nixcache.io").await.ok()??;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

/// A `nixcache-operator run` process; killed when dropped.
struct Operator {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(server: &KubeApiServer, identity: &str) -> Operator {
        Self::start_with(server, &server.kubeconfig, "default", identity)
    }

    /// With another kubeconfig (another user) and the Lease in `lease_namespace`.
    fn start_with(
        server: &KubeApiServer,
        kubeconfig: &Path,
        lease_namespace: &str,
        identity: &str,
    ) -> Operator {
        let port = nixcache_tests::free_port();
        let log = server.dir().join(format!("{identity}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(operator_bin())
            .args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--lease-namespace", lease_namespace, "--lease-seconds", "4"])
            .args(["--identity", identity, "--image", "localhost/nixcache:test"])
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info,nixcache_operator=debug")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn nixcache-operator");
        let op = Operator {
            child: Some(child),
            port,
            log,
        };
        let start = Instant::now();
        while blocking_get(op.port, "/healthz").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the operator did not answer /healthz:\n{}",
                op.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        op
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric's value from `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// SIGTERM; the process must release its Lease and exit 0.
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "exit {status}:\n{}", self.log());
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the operator did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blocking GET for the start-up wait, which runs outside the async runtime's tasks.
fn blocking_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (out.starts_with("HTTP/1.") && out.split(' ').nth(1) == Some("200")).then_some(out)
}

fn example(name: &str) -> NixCache {
    let text = std::fs::read_to_string(repo().join("deploy/examples").join(name)).expect("example");
    serde_saphyr::from_str(&text).expect("example parses as a NixCache")
}

async fn create_secret(client: &Client, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

/// The Secrets the HA example refers to.
async fn ha_secrets(client: &Client) {
    create_secret(
        client,
        "nixcache-s3",
        &[
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ],
    )
    .await;
    create_secret(
        client,
        "nixcache-postgres",
        &[("url", "postgres://nixcache:pw@postgres/nixcache")],
    )
    .await;
}

fn condition(nc: &NixCache, type_: &str) -> Option<(String, String, String)> {
    nc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn owned_by(meta: &kube::api::ObjectMeta, nc: &NixCache) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        o.kind == "NixCache"
            && Some(&o.uid) == nc.metadata.uid.as_ref()
            && o.controller == Some(true)
    })
}

async fn merge_patch_spec(caches: &Api<NixCache>, name: &str, spec: serde_json::Value) {
    caches
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch spec");
}

fn template_hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("nixcache.io/config-hash").cloned())
        .expect("config hash annotation")
}

fn pdb_api(client: &Client, version: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "policy",
        version,
        "PodDisruptionBudget",
    ));
    Api::namespaced_with(client.clone(), "default", &ar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_the_chart_and_every_manifest_validates() {
    let chart = repo().join("charts/nixcache-operator");
    let helm = helm_bin();
    let run = |args: &[&str]| {
        let out = Command::new(&helm).args(args).output().expect("run helm");
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chart_s = chart.to_str().expect("utf-8 path");
    run(&["lint", "--strict", chart_s]);
    // The values schema rejects what the chart cannot render.
    let bad = Command::new(&helm)
        .args(["lint", "--strict", chart_s, "--set", "logFormat=xml"])
        .output()
        .expect("run helm");
    assert!(
        !bad.status.success(),
        "values.schema.json lets logFormat=xml through"
    );

    // Every rendering validates against the Kubernetes 1.30 schemas.
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, set) in [
        vec![],
        vec!["--set", "watchNamespace=team", "--set", "replicas=2"],
        vec![
            "--set",
            "watchNamespaces={team-a,team-b}",
            "--set",
            "fullnameOverride=nco",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "rbac.aggregateToDefaultRoles=false",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = vec![
            "template",
            "op",
            chart_s,
            "--namespace",
            "ops",
            "--include-crds",
        ];
        args.extend(set);
        let file = dir.path().join(format!("render{i}.yaml"));
        std::fs::write(&file, run(&args)).expect("write");
        validate_1_30(&file);
    }
    validate_1_30(&repo().join("deploy/nixcache-operator.yaml"));
    // Listed namespaces get a Role each, and the operator is told them.
    let listed = run(&[
        "template",
        "op",
        chart_s,
        "--set",
        "watchNamespaces={team-a,team-b}",
    ]);
    for ns in ["team-a", "team-b"] {
        assert!(
            listed.contains(&format!(
                "kind: Role\nmetadata:\n  name: op-nixcache-operator\n  namespace: {ns}"
            )),
            "a Role in {ns}:\n{listed}"
        );
    }
    assert!(listed.contains("value: \"team-a,team-b\""), "{listed}");
    // Cluster-wide it may only bind caches' ServiceAccounts to system:auth-delegator, and not
    // even that when told not to.
    assert_eq!(
        listed.matches("kind: ClusterRoleBinding").count(),
        1,
        "{listed}"
    );
    assert!(
        listed.contains(
            "kind: ClusterRoleBinding\nmetadata:\n  name: op-nixcache-operator-token-review"
        ),
        "{listed}"
    );
    assert!(
        listed.contains("verbs: [\"bind\"]\n    resourceNames: [\"system:auth-delegator\"]"),
        "{listed}"
    );
    let confined = run(&[
        "template",
        "op",
        chart_s,
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "rbac.tokenReviewBindings=false",
    ]);
    assert!(!confined.contains("kind: ClusterRoleBinding"), "{confined}");
    assert!(!confined.contains("token-review"), "{confined}");

    // As a subchart: a parent chart's `global` values and its `enabled` switch pass the schema,
    // and the rendering validates.
    let parent = dir.path().join("parent");
    std::fs::create_dir_all(parent.join("charts")).expect("mkdir");
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: parent\nversion: 1.0.0\ndependencies:\n  - name: nixcache-operator\n    version: 0.1.0\n    condition: nixcache-operator.enabled\n",
    )
    .expect("Chart.yaml");
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\nnixcache-operator:\n  enabled: true\n  watchNamespaces: [apps]\n",
    )
    .expect("values.yaml");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&chart)
        .arg(parent.join("charts/nixcache-operator"))
        .status()
        .expect("cp");
    assert!(copied.success());
    let parent_s = parent.to_str().expect("utf-8 path");
    run(&["lint", "--strict", parent_s]);
    let file = dir.path().join("parent.yaml");
    std::fs::write(
        &file,
        run(&["template", "p", parent_s, "--namespace", "ops"]),
    )
    .expect("write");
    validate_1_30(&file);
    let off = run(&[
        "template",
        "p",
        parent_s,
        "--set",
        "nixcache-operator.enabled=false",
    ]);
    assert!(
        !off.contains("kind: Deployment"),
        "enabled=false renders nothing: {off}"
    );

    // deploy/ is the chart's rendering, current.
    let rendered = Command::new("bash")
        .arg(repo().join("scripts/render-deploy.sh"))
        .env("HELM", &helm)
        .output()
        .expect("render-deploy.sh");
    assert!(rendered.status.success());
    let committed =
        std::fs::read_to_string(repo().join("deploy/nixcache-operator.yaml")).expect("deploy/");
    assert!(
        String::from_utf8_lossy(&rendered.stdout) == committed,
        "deploy/nixcache-operator.yaml drifted from the chart: run scripts/render-deploy.sh > deploy/nixcache-operator.yaml"
    );

    // helm install into a real API server registers the CRD and creates the operator's objects.
    let server = KubeApiServer::start();
    let kubeconfig = server.kubeconfig.to_str().expect("utf-8 path");
    run(&[
        "install",
        "nixcache-operator",
        chart_s,
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "nixcache-system",
        "--create-namespace",
    ]);
    let client = client(&server).await;
    wait_established(&client).await;
    // The CRD is a template of the release: `helm upgrade` takes it along, without conflict.
    run(&[
        "upgrade",
        "nixcache-operator",
        chart_s,
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "nixcache-system",
        "--set",
        "logFormat=text",
    ]);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get("nixcaches.nixcache.io").await.expect("the CRD");
    assert_eq!(
        crd.annotations()
            .get("meta.helm.sh/release-name")
            .map(String::as_str),
        Some("nixcache-operator"),
        "the release owns the CRD"
    );
    assert_eq!(
        crd.annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep"),
        "helm uninstall keeps it (and every NixCache)"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "nixcache-system");
    let d = deployments
        .get("nixcache-operator")
        .await
        .expect("the operator Deployment");
    let args = d
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0]
        .args
        .clone();
    assert_eq!(args, Some(vec!["run".to_string()]));

    // The chart's RBAC is enough: the operator, acting as the chart's ServiceAccount, reconciles
    // an HA cache with GC — every child, the PDB, the key Secret, a GC Job, Events, its Lease.
    let text = std::fs::read_to_string(&server.kubeconfig).expect("kubeconfig");
    let as_operator = text.replace(
        "user: {token:",
        "user: {as: \"system:serviceaccount:nixcache-system:nixcache-operator\", token:",
    );
    assert_ne!(
        text, as_operator,
        "the kubeconfig's user line changed shape"
    );
    let sa_kubeconfig = server.dir().join("operator-sa.kubeconfig");
    std::fs::write(&sa_kubeconfig, as_operator).expect("write kubeconfig");
    let operator = Operator::start_with(&server, &sa_kubeconfig, "nixcache-system", "chart-sa");
    ha_secrets(&client).await;
    let mut ha = example("nixcache-ha.yaml");
    ha.spec.gc.as_mut().expect("gc").schedule = "* * * * * *".into();
    let caches: Api<NixCache> = Api::namespaced(client.clone(), "default");
    caches
        .create(&PostParams::default(), &ha)
        .await
        .expect("create the HA cache");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    eventually(60, "a GC Job made under the chart's RBAC", || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        (!list.items.is_empty()).then_some(())
    })
    .await;
    let nc = eventually(30, "status under the chart's RBAC", || async {
        let nc = caches.get("nixcache-ha").await.ok()?;
        nc.status.as_ref()?.public_key.as_ref()?;
        nc.status.as_ref()?.gc.as_ref()?.active_job.as_ref()?;
        Some(nc)
    })
    .await;
    assert_eq!(
        condition(&nc, "Degraded").map(|c| c.0),
        Some("False".into())
    );
    assert!(pdb_api(&client, "v1beta1")
        .get_opt("nixcache-ha")
        .await
        .expect("get")
        .is_some());
    // A cache whose ServiceAccount readers and pushers need TokenReviews: under the chart's
    // RBAC the operator binds its ServiceAccount to system:auth-delegator (the binding is
    // cluster-scoped, so a finalizer, not an owner reference, removes it with the cache).
    let private: NixCache = serde_json::from_value(json!({
        "apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
        "metadata": {"name": "private", "namespace": "default"},
        "spec": {
            "uploads": {},
            "serviceAccountAccess": {
                "read": [{"namespace": "ci"}],
                "push": [{"namespace": "ci", "name": "pusher"}],
            },
        },
    }))
    .expect("NixCache");
    caches
        .create(&PostParams::default(), &private)
        .await
        .expect("create the private cache");
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding_name = "nixcache:default:private:token-review";
    let binding = eventually(30, "the token-review ClusterRoleBinding", || async {
        bindings.get_opt(binding_name).await.ok()?
    })
    .await;
    assert_eq!(binding.role_ref.name, "system:auth-delegator");
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str()),
        ("ServiceAccount", "private")
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some("default"));
    let nc = caches.get("private").await.expect("get");
    assert!(
        nc.finalizers()
            .iter()
            .any(|f| f == "nixcache.io/token-review-binding"),
        "{:?}",
        nc.finalizers()
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment = eventually(30, "the private cache's Deployment", || async {
        deployments.get_opt("private").await.ok()?
    })
    .await;
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod spec");
    assert_eq!(
        pod.automount_service_account_token,
        Some(true),
        "the server mounts its token to ask for TokenReviews"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rendered = eventually(30, "the private cache's configuration", || async {
        let cm = cms.get_opt("private-config").await.ok()??;
        cm.data?.get("config.toml").cloned()
    })
    .await;
    let args: ServeArgs = toml::from_str(&rendered).expect("rendered configuration");
    assert_eq!(args.read_service_accounts, vec!["ci/*".to_string()]);
    assert_eq!(args.push_service_accounts, vec!["ci/pusher".to_string()]);
    let config = args
        .resolve()
        .expect("the server takes the rendered settings");
    assert!(config.uploads.is_some_and(|u| u.token.is_none()));
    // Deleting the cache deletes the binding, then lets the cache go.
    caches
        .delete("private", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(30, "the binding and the cache gone", || async {
        let binding = bindings.get_opt(binding_name).await.ok()?;
        let cache = caches.get_opt("private").await.ok()?;
        (binding.is_none() && cache.is_none()).then_some(())
    })
    .await;

    let log = operator.log();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the chart's RBAC misses a permission:\n{log}"
    );
    drop(operator);

    // The examples are accepted by the API server (server-side dry run against the CRD's schema)
    // and by the operator's own checks.
    let caches: Api<NixCache> = Api::namespaced(client.clone(), "nixcache-system");
    for name in ["nixcache.yaml", "nixcache-ha.yaml"] {
        let nc = example(name);
        caches
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &nc,
            )
            .await
            .unwrap_or_else(|e| panic!("{name} is rejected by the API server: {e}"));
        nixcache_operator::config::validate(&nc)
            .unwrap_or_else(|e| panic!("{name} is rejected by the operator: {e}"));
    }
    // The schema rejects what it can express.
    let mut bad = example("nixcache.yaml");
    bad.spec.replicas = -1;
    let err = caches
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &bad,
        )
        .await
        .expect_err("negative replicas");
    assert!(err.to_string().contains("replicas"), "{err}");
}

fn validate_1_30(file: &Path) {
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.30.0", "--strict"])
        .arg(file)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate; scripts/provision.sh does)");
    assert!(
        out.status.success(),
        "{} does not validate against Kubernetes 1.30: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nixcache_is_reconciled_into_owned_children_that_follow_its_spec() {
    let server = KubeApiServer::start();
    let client = client(&server).await;
    install_crd(&client).await;
    let mut operator = Operator::start(&server, "op-a");

    let caches: Api<NixCache> = Api::namespaced(client.clone(), "default");
    let nc = caches
        .create(&PostParams::default(), &example("nixcache.yaml"))
        .await
        .expect("create NixCache");
    let name = nc.name_any();

    // Status: a valid public key and the in-cluster URL.
    let nc = eventually(30, "status.publicKey", || async {
        let nc = caches.get(&name).await.ok()?;
        nc.status.as_ref()?.public_key.as_ref()?;
        Some(nc)
    })
    .await;
    let status = nc.status.clone().expect("status");
    let public_key = status.public_key.clone().expect("public key");
    PublicKey::parse(&public_key).expect("a Nix public key");
    assert_eq!(
        status.url.as_deref(),
        Some("http://nixcache.default.svc.cluster.local:80")
    );
    assert_eq!(status.observed_generation, nc.metadata.generation);

    // Every child exists and is owned by the cache, but for the signing key, which outlives it.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let cm = configmaps.get("nixcache-config").await.expect("ConfigMap");
    let deployment = deployments.get("nixcache").await.expect("Deployment");
    let service = services.get("nixcache").await.expect("Service");
    let account = accounts.get("nixcache").await.expect("ServiceAccount");
    let key_secret = secrets
        .get("nixcache-signing-key")
        .await
        .expect("key Secret");
    for meta in [
        &cm.metadata,
        &deployment.metadata,
        &service.metadata,
        &account.metadata,
    ] {
        assert!(owned_by(meta, &nc), "{:?} is not owned", meta.name);
    }
    assert_eq!(
        key_secret.metadata.owner_references, None,
        "the key Secret has no owner"
    );
    // The ConfigMap is the server's own configuration type, and the server accepts it.
    let toml_text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.toml"))
        .expect("config.toml");
    let args: ServeArgs = toml::from_str(toml_text).expect("ServeArgs");
    args.resolve()
        .expect("the server accepts the rendered configuration");
    // The Secret's key is the one in status.
    let secret_text = |s: &Secret| {
        String::from_utf8(s.data.as_ref().expect("data")["secret-key"].0.clone()).expect("utf-8")
    };
    let key = secret_text(&key_secret);
    let secret_key = nixcache::nix::SecretKey::parse(&key).expect("a Nix secret key");
    assert_eq!(secret_key.public_key().to_string(), public_key);

    // Changing replicas (with what more replicas need) updates the Deployment and adds a PDB in
    // the policy version this server speaks (1.20: v1beta1).
    ha_secrets(&client).await;
    let ha = example("nixcache-ha.yaml");
    let mut ha_spec = serde_json::to_value(&ha.spec).expect("spec");
    ha_spec["gc"] = serde_json::Value::Null;
    merge_patch_spec(&caches, &name, ha_spec).await;
    let deployment = eventually(30, "3 replicas", || async {
        let d = deployments.get("nixcache").await.ok()?;
        (d.spec.as_ref()?.replicas == Some(3)).then_some(d)
    })
    .await;
    let env = serde_json::to_string(
        &deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod")
            .containers[0]
            .env,
    )
    .expect("env");
    assert!(
        env.contains("nixcache-postgres") && env.contains("nixcache-s3"),
        "{env}"
    );
    let pdbs = pdb_api(&client, "v1beta1");
    let pdb = eventually(30, "the PodDisruptionBudget", || async {
        pdbs.get_opt("nixcache").await.ok()?
    })
    .await;
    assert!(owned_by(&pdb.metadata, &nc));

    // Changing an upstream rewrites the configuration and rolls the pods.
    let before = template_hash(&deployment);
    merge_patch_spec(
        &caches,
        &name,
        json!({"upstreams": [{"url": "https://nix.example.org", "priority": 30}]}),
    )
    .await;
    eventually(30, "the new upstream in the ConfigMap", || async {
        let cm = configmaps.get("nixcache-config").await.ok()?;
        cm.data?
            .get("config.toml")?
            .contains("https://nix.example.org,priority=30")
            .then_some(())
    })
    .await;
    eventually(30, "a new pod template", || async {
        let d = deployments.get("nixcache").await.ok()?;
        (template_hash(&d) != before).then_some(())
    })
    .await;

    // Deleted children come back; hand edits are undone.
    services
        .delete("nixcache", &DeleteParams::default())
        .await
        .expect("delete Service");
    configmaps
        .delete("nixcache-config", &DeleteParams::default())
        .await
        .expect("delete ConfigMap");
    eventually(30, "the Service back", || async {
        let s = services.get_opt("nixcache").await.ok()??;
        (s.metadata.uid != service.metadata.uid).then_some(())
    })
    .await;
    eventually(30, "the ConfigMap back", || async {
        configmaps.get_opt("nixcache-config").await.ok()?
    })
    .await;
    deployments
        .patch(
            "nixcache",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .expect("hand edit");
    eventually(30, "replicas restored to 3", || async {
        let d = deployments.get("nixcache").await.ok()?;
        (d.spec?.replicas == Some(3)).then_some(())
    })
    .await;

    // After all those reconciles, and after a restart of the operator, the key is the same.
    operator.terminate();
    let _operator = Operator::start(&server, "op-b");
    caches
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
        )
        .await
        .expect("touch");
    services
        .delete("nixcache", &DeleteParams::default())
        .await
        .expect("delete Service again");
    eventually(30, "the new operator to recreate the Service", || async {
        services.get_opt("nixcache").await.ok()?
    })
    .await;
    let key_after = secret_text(&secrets.get("nixcache-signing-key").await.expect("Secret"));
    assert_eq!(key_after, key, "the signing key was regenerated");
    let nc_now = caches.get(&name).await.expect("get");
    assert_eq!(
        nc_now.status.and_then(|s| s.public_key),
        Some(public_key.clone())
    );

    // An invalid spec: Degraded with the reason, children left as they were.
    let cm_before = configmaps.get("nixcache-config").await.expect("cm").data;
    merge_patch_spec(&caches, &name, json!({"redis": []})).await;
    let (status, reason, message) = eventually(30, "Degraded", || async {
        let nc = caches.get(&name).await.ok()?;
        let c = condition(&nc, "Degraded")?;
        (c.0 == "True").then_some(c)
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(message.contains("Redis"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deployments.get("nixcache").await.expect("deployment");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        configmaps.get("nixcache-config").await.expect("cm").data,
        cm_before
    );

    // A named signing key Secret with bad content is a condition too, not a crash.
    create_secret(&client, "bad-key", &[("secret-key", "not-a-key")]).await;
    merge_patch_spec(
        &caches,
        &name,
        json!({"redis": ["redis://r:6379"], "signingKey": {"secretName": "bad-key"}}),
    )
    .await;
    let (_, reason, message) = eventually(30, "BadSigningKey", || async {
        let nc = caches.get(&name).await.ok()?;
        let c = condition(&nc, "Degraded")?;
        (c.1 == "BadSigningKey").then_some(c)
    })
    .await;
    assert!(
        message.contains("bad-key") && !message.contains("not-a-key"),
        "{message}"
    );
    assert_eq!(reason, "BadSigningKey");

    // What the operator did is told as Events.
    let reasons: Vec<String> = event_reasons(&client)
        .await
        .into_iter()
        .map(|(_, reason)| reason)
        .collect();
    for wanted in ["SigningKeyGenerated", "InvalidSpec", "BadSigningKey"] {
        assert!(
            reasons.iter().any(|r| r == wanted),
            "{wanted} not in {reasons:?}"
        );
    }
}

/// An API server with the CRD, an operator, and `deploy/examples/nixcache.yaml` created.
async fn operator_with_the_example() -> (KubeApiServer, Operator, Client, Api<NixCache>) {
    let server = KubeApiServer::start();
    let client = client(&server).await;
    install_crd(&client).await;
    let operator = Operator::start(&server, "op");
    let caches: Api<NixCache> = Api::namespaced(client.clone(), "default");
    caches
        .create(&PostParams::default(), &example("nixcache.yaml"))
        .await
        .expect("create");
    (server, operator, client, caches)
}

/// Event types and reasons in the namespace.
async fn event_reasons(client: &Client) -> Vec<(String, String)> {
    let events = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event")),
    );
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .iter()
        .filter_map(|e| {
            Some((
                e.data["type"].as_str()?.to_string(),
                e.data["reason"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_signing_key_is_reported_and_replaced_only_when_asked() {
    let (_server, _operator, client, caches) = operator_with_the_example().await;
    let public_key = eventually(30, "status.publicKey", || async {
        caches.get("nixcache").await.ok()?.status?.public_key
    })
    .await;
    assert!(
        public_key.starts_with("nixcache.default-1:"),
        "{public_key}"
    );

    // The Secret goes (by hand, or with a namespace's cleanup): the cache reports it, with a
    // Warning, and no other key appears under the same name.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .delete("nixcache-signing-key", &DeleteParams::default())
        .await
        .expect("delete the key Secret");
    let (_, _, message) = eventually(30, "Degraded SigningKeyLost", || async {
        let nc = caches.get("nixcache").await.ok()?;
        let c = condition(&nc, "Degraded")?;
        (c.0 == "True" && c.1 == "SigningKeyLost").then_some(c)
    })
    .await;
    assert!(message.contains(&public_key), "{message}");
    assert!(
        message.contains("nixcache.io/regenerate-signing-key"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        secrets
            .get_opt("nixcache-signing-key")
            .await
            .expect("get")
            .is_none(),
        "a key was generated again without being asked"
    );
    let nc = caches.get("nixcache").await.expect("get");
    assert_eq!(
        nc.status.and_then(|s| s.public_key),
        Some(public_key.clone()),
        "status keeps the key clients trust"
    );
    assert!(event_reasons(&client)
        .await
        .contains(&("Warning".into(), "SigningKeyLost".into())));

    // Asked for, by the lost key's name: a new key under the next name.
    caches
        .patch(
            "nixcache",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "nixcache.io/regenerate-signing-key": "nixcache.default-1"}}})),
        )
        .await
        .expect("annotate");
    let new_key = eventually(30, "a new status.publicKey", || async {
        let key = caches.get("nixcache").await.ok()?.status?.public_key?;
        (key != public_key).then_some(key)
    })
    .await;
    assert!(new_key.starts_with("nixcache.default-2:"), "{new_key}");
    let secret = secrets.get("nixcache-signing-key").await.expect("Secret");
    let listed =
        String::from_utf8(secret.data.expect("data")["public-key"].0.clone()).expect("utf-8");
    assert_eq!(listed, new_key);
    assert!(event_reasons(&client)
        .await
        .contains(&("Warning".into(), "SigningKeyRegenerated".into())));
    eventually(30, "Degraded=False", || async {
        let nc = caches.get("nixcache").await.ok()?;
        (condition(&nc, "Degraded")?.0 == "False").then_some(())
    })
    .await;

    // Deleting the NixCache leaves the key; one re-created under the name signs with it. (This
    // API server runs no garbage collector; the real cluster's test shows the rest.)
    caches
        .delete("nixcache", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(30, "the NixCache gone", || async {
        caches
            .get_opt("nixcache")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The garbage collector's part: the children owned by the deleted cache go. (Until they do,
    // the new cache reports them as an OwnershipConflict, not as its own.)
    let dp = DeleteParams::default();
    let ns = "default";
    let _ = Api::<Deployment>::namespaced(client.clone(), ns)
        .delete("nixcache", &dp)
        .await;
    let _ = Api::<Service>::namespaced(client.clone(), ns)
        .delete("nixcache", &dp)
        .await;
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .delete("nixcache", &dp)
        .await;
    for cm in ["nixcache-config", "nixcache-nix-config"] {
        let _ = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .delete(cm, &dp)
            .await;
    }
    caches
        .create(&PostParams::default(), &example("nixcache.yaml"))
        .await
        .expect("create again");
    let again = eventually(30, "status.publicKey of the new NixCache", || async {
        caches.get("nixcache").await.ok()?.status?.public_key
    })
    .await;
    assert_eq!(
        again, new_key,
        "the re-created cache signs with the same key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_foreign_objects_and_rotated_secrets_reach_status_and_pods() {
    let (_server, _operator, client, caches) = operator_with_the_example().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let reason_of = |name: &'static str, type_: &'static str| {
        let caches = caches.clone();
        async move {
            caches
                .get(name)
                .await
                .ok()
                .and_then(|nc| condition(&nc, type_))
        }
    };

    // The client ConfigMap: nix.conf lines with the URL and the key of status.
    let nc = eventually(30, "status.publicKey", || async {
        let nc = caches.get("nixcache").await.ok()?;
        nc.status.as_ref()?.public_key.as_ref()?;
        Some(nc)
    })
    .await;
    let status = nc.status.clone().expect("status");
    assert_eq!(
        status.client_config_map.as_deref(),
        Some("nixcache-nix-config")
    );
    let cm = configmaps
        .get("nixcache-nix-config")
        .await
        .expect("client ConfigMap");
    assert!(owned_by(&cm.metadata, &nc));
    assert_eq!(
        cm.data.expect("data")["nix.conf"],
        format!(
            "extra-substituters = http://nixcache.default.svc.cluster.local:80\n\
             extra-trusted-public-keys = {}\n",
            status.public_key.clone().expect("key")
        )
    );

    // A server pod that cannot pull its image: Ready and Degraded say so. (No kubelet runs
    // here: the test writes the pod's status as a kubelet would.)
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nixcache-abc", "labels": {
            "app.kubernetes.io/instance": "nixcache", "app.kubernetes.io/component": "server",
            "app.kubernetes.io/managed-by": "nixcache-operator", "nixcache.io/cache": "nixcache"}},
        "spec": {"serviceAccountName": "nixcache", "automountServiceAccountToken": false,
            "containers": [{"name": "nixcache", "image": "nope:1"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    pods.patch_status(
        "nixcache-abc",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Pending", "containerStatuses": [{
            "name": "nixcache", "image": "nope:1", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"nope:1\""}}}]}}),
        ),
    )
    .await
    .expect("pod status");
    let (_, _, message) = eventually(30, "Ready=False ImagePullBackOff", || async {
        let c = reason_of("nixcache", "Ready").await?;
        (c.1 == "ImagePullBackOff").then_some(c)
    })
    .await;
    assert!(
        message.contains("nixcache-abc") && message.contains("nope:1"),
        "{message}"
    );
    let degraded = reason_of("nixcache", "Degraded").await.expect("Degraded");
    assert_eq!(
        (degraded.0.as_str(), degraded.1.as_str()),
        ("True", "ImagePullBackOff")
    );
    pods.delete("nixcache-abc", &DeleteParams::default())
        .await
        .expect("delete pod");

    // A spec the API server refuses (requests above limits): ApplyFailed with its message.
    merge_patch_spec(
        &caches,
        "nixcache",
        json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}),
    )
    .await;
    let (status, _, message) = eventually(30, "Reconciled=False ApplyFailed", || async {
        let c = reason_of("nixcache", "Reconciled").await?;
        (c.1 == "ApplyFailed").then_some(c)
    })
    .await;
    assert_eq!(status, "False");
    assert!(
        message.contains("less than or equal to cpu limit"),
        "{message}"
    );
    merge_patch_spec(&caches, "nixcache", json!({"resources": null})).await;
    eventually(30, "Reconciled=True again", || async {
        let c = reason_of("nixcache", "Reconciled").await?;
        (c.0 == "True").then_some(())
    })
    .await;

    // A Deployment the operator did not make is never taken over.
    let theirs: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "theirs"},
        "spec": {"selector": {"matchLabels": {"app": "theirs"}},
            "template": {"metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "app", "image": "theirs:1"}]}}}
    }))
    .expect("deployment");
    let theirs = deployments
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create Deployment");
    let mut foreign = example("nixcache.yaml");
    foreign.metadata.name = Some("theirs".into());
    caches
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create NixCache");
    let (_, _, message) = eventually(30, "OwnershipConflict", || async {
        let c = reason_of("theirs", "Degraded").await?;
        (c.1 == "OwnershipConflict").then_some(c)
    })
    .await;
    assert!(message.contains("Deployment \"theirs\""), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = deployments.get("theirs").await.expect("Deployment");
    assert_eq!(
        now.metadata.resource_version,
        theirs.metadata.resource_version
    );
    assert_eq!(now.metadata.owner_references, None);
    assert!(
        configmaps
            .get_opt("theirs-config")
            .await
            .expect("get")
            .is_none(),
        "nothing applied for a conflicting cache"
    );

    // Rotating a Secret the server reads rolls the pods; its value never reaches the template.
    create_secret(&client, "push", &[("token", "first-token-0123456789")]).await;
    merge_patch_spec(
        &caches,
        "nixcache",
        json!({"uploads": {"tokenSecret": {"name": "push", "key": "token"}}}),
    )
    .await;
    let with_token = eventually(30, "the token file in the pod template", || async {
        let d = deployments.get("nixcache").await.ok()?;
        serde_json::to_string(&d.spec.as_ref()?.template)
            .ok()?
            .contains("NIXCACHE_UPLOAD_TOKEN_FILE")
            .then_some(d)
    })
    .await;
    let before = template_hash(&with_token);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .patch(
            "push",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "second-token-9876543210"}})),
        )
        .await
        .expect("rotate");
    let rotated = eventually(30, "a new pod template after the rotation", || async {
        let d = deployments.get("nixcache").await.ok()?;
        (template_hash(&d) != before).then_some(d)
    })
    .await;
    let template = serde_json::to_string(&rotated.spec.expect("spec").template).expect("json");
    assert!(
        !template.contains("first-token") && !template.contains("second-token"),
        "{template}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_deployment_status() {
    let (_server, _operator, client, caches) = operator_with_the_example().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = eventually(30, "the Deployment", || async {
        deployments.get_opt("nixcache").await.ok()?
    })
    .await;
    let ready = |want: &'static str| {
        let caches = caches.clone();
        async move {
            eventually(30, &format!("Ready={want}"), || async {
                let nc = caches.get("nixcache").await.ok()?;
                let c = condition(&nc, "Ready")?;
                (c.0 == want).then_some(nc)
            })
            .await
        }
    };
    let nc = ready("False").await;
    assert_eq!(nc.status.and_then(|s| s.ready_replicas), Some(0));

    // No kubelet runs here: the test plays the Deployment controller.
    let write_status = |ready: i32| {
        let deployments = deployments.clone();
        let generation = d.metadata.generation;
        async move {
            deployments
                .patch_status(
                    "nixcache",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "observedGeneration": generation,
                        "replicas": 1, "updatedReplicas": 1,
                        "readyReplicas": ready, "availableReplicas": ready,
                    }})),
                )
                .await
                .expect("write Deployment status");
        }
    };
    write_status(1).await;
    let nc = ready("True").await;
    assert_eq!(nc.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    assert_eq!(
        condition(&nc, "Progressing").map(|c| c.0),
        Some("False".to_string())
    );
    write_status(0).await;
    ready("False").await;

    // The scale subresource: what `kubectl scale nc` and an HPA use.
    let scale = caches.get_scale("nixcache").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));
    let selector = scale
        .status
        .map(|s| s.selector.unwrap_or_default())
        .unwrap_or_default();
    assert!(
        selector.contains("app.kubernetes.io/component=server")
            && selector.contains("nixcache.io/cache=nixcache"),
        "{selector}"
    );
    caches
        .patch_scale(
            "nixcache",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale to zero");
    eventually(30, "the Deployment scaled to zero", || async {
        let d = deployments.get("nixcache").await.ok()?;
        (d.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    ready("False").await;

    // A LoadBalancer's address becomes status.externalURL.
    merge_patch_spec(
        &caches,
        "nixcache",
        json!({"service": {"type": "LoadBalancer"}}),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    eventually(30, "a LoadBalancer Service", || async {
        let s = services.get("nixcache").await.ok()?;
        (s.spec?.type_.as_deref() == Some("LoadBalancer")).then_some(())
    })
    .await;
    services
        .patch_status(
            "nixcache",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}),
            ),
        )
        .await
        .expect("Service status");
    eventually(60, "status.externalURL", || async {
        let nc = caches.get("nixcache").await.ok()?;
        (nc.status?.external_url.as_deref() == Some("http://203.0.113.7:80")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_jobs_are_made_once_per_tick_by_the_lease_holder_only() {
    let server = KubeApiServer::start();
    let client = client(&server).await;
    install_crd(&client).await;
    ha_secrets(&client).await;
    let mut a = Operator::start(&server, "op-a");
    let mut b = Operator::start(&server, "op-b");
    // Exactly one of them leads.
    let (leader_first, follower_first) = eventually(30, "one leader", || async {
        match (
            a.metric("nixcache_operator_leader").await,
            b.metric("nixcache_operator_leader").await,
        ) {
            (x, y) if x == 1.0 && y == 0.0 => Some((true, false)),
            (x, y) if x == 0.0 && y == 1.0 => Some((false, true)),
            _ => None,
        }
    })
    .await;
    assert_ne!(leader_first, follower_first);
    let (leader, follower) = if leader_first {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    let mut nc = example("nixcache-ha.yaml");
    nc.metadata.name = Some("gc".into());
    let gc = nc.spec.gc.as_mut().expect("gc");
    gc.schedule = "*/3 * * * * *".into(); // every 3 seconds
    gc.successful_jobs_history_limit = 1;
    let caches: Api<NixCache> = Api::namespaced(client.clone(), "default");
    let nc = caches
        .create(&PostParams::default(), &nc)
        .await
        .expect("create");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let list = || async {
        let mut v = jobs
            .list(&ListParams::default().labels("nixcache.io/cache=gc"))
            .await
            .expect("jobs")
            .items;
        v.sort_by_key(|j| j.name_any());
        v
    };
    let first = eventually(30, "the first GC Job", || async {
        list().await.into_iter().next()
    })
    .await;
    assert!(owned_by(&first.metadata, &nc));
    let pod = first
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(
        pod.containers[0].args.clone().unwrap_or_default(),
        ["gc", "--config", "/etc/nixcache/config.toml"]
    );
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("localhost/nixcache:test")
    );

    // No overlap: while it runs (no kubelet: until the test says it finished), later ticks are
    // skipped, not queued.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        list().await.len(),
        1,
        "a second run started during the first"
    );
    let gc_status = caches
        .get("gc")
        .await
        .expect("get")
        .status
        .and_then(|s| s.gc)
        .expect("gc status");
    assert_eq!(
        gc_status.active_job.as_deref(),
        Some(first.name_any().as_str())
    );
    assert!(
        gc_status
            .last_result
            .as_deref()
            .is_some_and(|r| r.starts_with("Skipped")),
        "{gc_status:?}"
    );

    let complete = |name: String| {
        let jobs = jobs.clone();
        async move {
            let now = nixcache_operator::time::rfc3339(nixcache_operator::time::now_unix());
            jobs.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "startTime": now, "completionTime": now, "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True",
                        "lastProbeTime": now, "lastTransitionTime": now}],
                }})),
            )
            .await
            .expect("complete the Job");
        }
    };
    complete(first.name_any()).await;
    let second = eventually(30, "the next tick's Job", || async {
        list()
            .await
            .into_iter()
            .find(|j| j.name_any() != first.name_any())
    })
    .await;
    let gc_status = eventually(30, "lastSuccessTime", || async {
        let g = caches.get("gc").await.ok()?.status?.gc?;
        g.last_success_time.is_some().then_some(g)
    })
    .await;
    assert!(gc_status.last_schedule_time.is_some());

    // The follower did nothing all along.
    assert_eq!(
        follower
            .metric("nixcache_operator_reconciles_total{result=\"ok\"}")
            .await,
        0.0
    );
    assert_eq!(
        follower
            .metric("nixcache_operator_gc_jobs_created_total")
            .await,
        0.0
    );
    assert_eq!(
        leader
            .metric("nixcache_operator_gc_jobs_created_total")
            .await,
        2.0
    );

    // The leader stops (and hands the Lease over); the other one takes over the schedule, and
    // the history stays bounded (one successful Job kept).
    leader.terminate();
    eventually(30, "the standby to lead", || async {
        (follower.metric("nixcache_operator_leader").await == 1.0).then_some(())
    })
    .await;
    complete(second.name_any()).await;
    eventually(30, "a Job by the new leader", || async {
        (follower
            .metric("nixcache_operator_gc_jobs_created_total")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    eventually(30, "the oldest finished Job pruned", || async {
        let names: Vec<String> = list().await.iter().map(|j| j.name_any()).collect();
        (!names.contains(&first.name_any())).then_some(())
    })
    .await;
    let mut names: Vec<String> = list().await.iter().map(|j| j.name_any()).collect();
    names.dedup();
    assert!(names.len() <= 2, "history beyond its bound: {names:?}");
}
