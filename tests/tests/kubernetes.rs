//! End to end in a real single-node cluster (`scripts/cluster-up.sh`: control plane, controllers,
//! scheduler, a kubelet running pods in containerd, kube-proxy): the chart installs the operator
//! as a pod, the examples under `deploy/examples` become serving caches, and a pod running the
//! real Nix client substitutes a signed closure through them, trusting only the cache's
//! `status.publicKey`. The HA example (three replicas on PostgreSQL, Redis and SeaweedFS, which
//! run on the host where pods reach them) downloads each upstream file once, keeps serving through
//! its Service while PostgreSQL is down and while a spec change rolls it, runs scheduled GC as a
//! real Job, and leaves nothing behind when deleted but its signing key, with which it comes back
//! when re-created.
//!
//! One cluster runs at a time, so this is one test that goes through the steps in order; each
//! step says what it checks, and a failure prints the cluster's objects, events and logs.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::image::{nix_client_image, repo, save, Image};
use common::{fixture, FaultyUpstream, Fixture, Mode};
use nixcache_tests::kube::{helm_bin, KubeCluster};
use nixcache_tests::postgres::Postgres;
use nixcache_tests::redis::Redis;
use nixcache_tests::seaweedfs::{self, SeaweedFs};
use serde_json::{json, Value};

const NS: &str = "default";
const CLIENT: &str = "nix-client";

fn host_ip() -> std::net::IpAddr {
    KubeCluster::HOST_IP.parse().expect("ip")
}

struct E2e {
    k: KubeCluster,
}

impl E2e {
    /// Polls `f` every half second until it gives a value; fails with the cluster's state.
    fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                eprintln!("  {what}: {:.1}s", start.elapsed().as_secs_f64());
                return v;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.k.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `kubectl get WHAT... -o json` (e.g. `nixcache/x`, or `pods -l k=v`).
    fn get_json(&self, what: &str) -> Option<Value> {
        let mut args = vec!["-n", NS, "get"];
        args.extend(what.split_whitespace());
        args.extend(["-o", "json"]);
        let out = self.k.kubectl(&args);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn status(&self, cache: &str) -> Value {
        self.get_json(&format!("nixcache/{cache}"))
            .map(|v| v["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Until the cache's `Ready` condition is True for its current generation, with this many
    /// ready replicas.
    fn wait_cache_ready(&self, cache: &str, replicas: i64) -> Value {
        self.wait(
            &format!("NixCache {cache} Ready with {replicas} replicas"),
            Duration::from_secs(180),
            || {
                let nc = self.get_json(&format!("nixcache/{cache}"))?;
                let st = &nc["status"];
                let ready = st["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let current = st["observedGeneration"] == nc["metadata"]["generation"];
                let deploy = self.get_json(&format!("deployment/{cache}"))?;
                let rolled = deploy["status"]["updatedReplicas"].as_i64() == Some(replicas)
                    && deploy["status"]["replicas"].as_i64() == Some(replicas)
                    && deploy["status"]["observedGeneration"] == deploy["metadata"]["generation"];
                (ready
                    && current
                    && rolled
                    && st["readyReplicas"].as_i64() == Some(replicas)
                    && st["publicKey"].is_string())
                .then(|| st.clone())
            },
        )
    }

    /// (Re)starts the client pod, with the Services' names mapped to their ClusterIPs (there
    /// is no cluster DNS): a Service made again has a new one.
    fn start_client(&self) {
        let _ = self.k.kubectl(&[
            "-n",
            NS,
            "delete",
            "pod",
            CLIENT,
            "--grace-period=1",
            "--wait=true",
        ]);
        let aliases: Vec<Value> = ["nixcache", "nixcache-ha"]
            .iter()
            .map(|s| json!({"ip": self.cluster_ip(s), "hostnames": [format!("{s}.{NS}.svc.cluster.local")]}))
            .collect();
        let client = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": CLIENT, "namespace": NS},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "hostAliases": aliases,
                "containers": [{
                    "name": "nix", "image": common::image::NIX_CLIENT, "imagePullPolicy": "Never",
                    "command": ["sleep", "86400"],
                    "env": [{"name": "NIX_CONFIG", "value": common::NIX_CONFIG}],
                }],
            },
        });
        self.k.apply(&client.to_string());
        self.k.kubectl_ok(&[
            "-n",
            NS,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{CLIENT}"),
            "--timeout=120s",
        ]);
    }

    fn exec(&self, pod: &str, script: &str) -> std::process::Output {
        self.k
            .kubectl(&["-n", NS, "exec", pod, "--", "sh", "-c", script])
    }

    fn cluster_ip(&self, service: &str) -> String {
        self.k
            .kubectl_ok(&[
                "-n",
                NS,
                "get",
                "service",
                service,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .trim()
            .to_string()
    }

    /// Pods of a cache's server, by name, with their IPs, that are Ready.
    fn ready_pods(&self, cache: &str) -> Vec<(String, String)> {
        let Some(list) = self.get_json(&format!(
            "pods -l app.kubernetes.io/instance={cache},app.kubernetes.io/component=server"
        )) else {
            return vec![];
        };
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["status"]["podIP"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// The real Nix client in the client pod: `nix copy` of `path`'s closure from `url` into a
    /// fresh chroot store, trusting only `key` and requiring signatures; the store paths it got.
    fn substitute(&self, url: &str, key: &str, path: &str, runs: usize) -> Vec<Vec<String>> {
        let tag = format!("{:x}", rand_tag());
        let mut script = String::new();
        for i in 0..runs {
            script.push_str(&format!(
                "XDG_CACHE_HOME=/tmp/xdg-{tag}-{i} nix copy --from '{url}' --to /tmp/store-{tag}-{i} '{path}' \
                 --option trusted-public-keys '{key}' --option require-sigs true \
                 >/tmp/log-{tag}-{i} 2>&1 & pids=\"$pids $!\"; "
            ));
        }
        script.push_str("ok=0; for p in $pids; do wait $p || ok=1; done; ");
        for i in 0..runs {
            script.push_str(&format!(
                "echo '== {i}'; cat /tmp/log-{tag}-{i}; echo '-- store'; ls /tmp/store-{tag}-{i}/nix/store; "
            ));
        }
        script.push_str("exit $ok");
        let out = self.exec(CLIENT, &script);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "nix copy from {url} failed in the client pod:\n{text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.k.diagnose()
        );
        let runs: Vec<Vec<String>> = text
            .split("== ")
            .skip(1)
            .map(|run| {
                let mut names: Vec<String> = run
                    .split("-- store\n")
                    .nth(1)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with('.'))
                    .map(|l| format!("/nix/store/{l}"))
                    .collect();
                names.sort();
                names
            })
            .collect();
        eprintln!(
            "  nix copy from {url}, {runs} at once:\n{text}",
            runs = runs.len()
        );
        runs
    }
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn closure_of(fx: &Fixture) -> Vec<String> {
    let mut want = fx.paths.clone();
    want.sort();
    want
}

/// `helm install` of the chart, the operator running as a pod of the cluster from the image.
fn install_operator(e: &E2e, image: &Image) {
    let (repository, tag) = image.tag.rsplit_once(':').expect("image tag");
    let out = std::process::Command::new(helm_bin())
        .args([
            "install",
            "nixcache-operator",
            repo()
                .join("charts/nixcache-operator")
                .to_str()
                .expect("utf-8"),
            "--namespace",
            "nixcache-system",
            "--create-namespace",
            "--set",
            &format!("image.repository={repository}"),
            "--set-string",
            &format!("image.tag={tag}"),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "logFormat=text",
            "--wait",
            "--timeout",
            "180s",
        ])
        .env("KUBECONFIG", &e.k.kubeconfig)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm install: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        e.k.diagnose()
    );
    let ready = e.k.kubectl_ok(&[
        "-n",
        "nixcache-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=nixcache-operator",
        "-o",
        "jsonpath={range .items[*]}{.status.phase}/{.status.containerStatuses[0].ready} {end}",
    ]);
    assert_eq!(ready.trim(), "Running/true", "the operator's pod");
}

/// The HA example with its addresses pointed at this run's services on the host.
fn ha_example(upstream: &str, upstream_key: &str, s3: &str, redis: &[Redis]) -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/examples/nixcache-ha.yaml"))
        .expect("deploy/examples/nixcache-ha.yaml");
    let mut nc: Value = serde_saphyr::from_str(&text).expect("the HA example parses");
    let spec = &mut nc["spec"];
    spec["upstreams"] = json!([{"url": upstream, "publicKeys": [upstream_key]}]);
    spec["storage"]["s3"]["endpoint"] = json!(s3);
    spec["storage"]["s3"]["bucket"] = json!(seaweedfs::BUCKET);
    spec["redis"] = json!(redis.iter().map(Redis::url).collect::<Vec<_>>());
    // Often enough to see a scheduled run within the test.
    spec["gc"]["schedule"] = json!("*/20 * * * * *");
    nc
}

/// GET `base/path` on a client that keeps its connections: the body of a 200, or what went wrong.
async fn fetch(client: &reqwest::Client, base: &str, path: &str) -> Result<bytes::Bytes, String> {
    let r = client
        .get(format!("{base}/{path}"))
        .send()
        .await
        .map_err(|e| format!("{path}: {e:#}"))?;
    if r.status() != 200 {
        return Err(format!("{path}: {}", r.status()));
    }
    r.bytes().await.map_err(|e| format!("{path}: {e:#}"))
}

/// Requests through a Service from the host while something happens to it: every narinfo and NAR
/// of the closure, over and over, from several workers; what failed, and how many succeeded.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rt: &tokio::runtime::Handle, base: &str, fx: &Fixture, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let narinfos: Vec<String> = fx
            .paths
            .iter()
            .map(|p| format!("{}.narinfo", Fixture::hash_of(p)))
            .collect();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let (base, narinfos) = (base.to_string(), narinfos.clone());
                rt.spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(20))
                        .build()
                        .expect("client");
                    while !stop.load(Ordering::Relaxed) {
                        for narinfo in &narinfos {
                            // The narinfo, then the NAR it names: each one a request served.
                            let served = async {
                                let info = fetch(&client, &base, narinfo).await?;
                                ok.fetch_add(1, Ordering::Relaxed);
                                let nar = Fixture::nar_url(&String::from_utf8_lossy(&info));
                                fetch(&client, &base, &nar).await?;
                                ok.fetch_add(1, Ordering::Relaxed);
                                Ok::<(), String>(())
                            };
                            if let Err(e) = served.await {
                                failures.lock().expect("failures").push(e);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the workers; (requests that succeeded, failures).
    fn finish(self, rt: &tokio::runtime::Handle) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = rt.block_on(t);
        }
        let failures = self.failures.lock().expect("f").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

impl E2e {
    /// A column of the `kubectl get nc NAME` table (NAME REPLICAS READY STATUS URL AGE), cut
    /// at the header's positions (a column may be empty).
    fn nc_column(&self, cache: &str, column: &str) -> String {
        let table = self.k.kubectl_ok(&["-n", NS, "get", "nc", cache]);
        let mut lines = table.lines();
        let (header, row) = (
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        );
        // Columns start where a header word follows a space.
        let bytes = header.as_bytes();
        let starts: Vec<usize> = (0..bytes.len())
            .filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' '))
            .collect();
        let Some(n) = starts.iter().position(|&i| header[i..].starts_with(column)) else {
            return String::new();
        };
        let end = starts
            .get(n + 1)
            .copied()
            .unwrap_or(row.len())
            .min(row.len());
        row.get(starts[n].min(end)..end)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn condition(&self, cache: &str, type_: &str) -> Option<(String, String, String)> {
        let st = self.status(cache);
        let c = st["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?
            .clone();
        let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        Some((text("status"), text("reason"), text("message")))
    }

    /// Warning events of a NixCache: (reason, message).
    fn warnings(&self, cache: &str) -> Vec<(String, String)> {
        let selector =
            format!("involvedObject.kind=NixCache,involvedObject.name={cache},type=Warning");
        let Some(list) = self.get_json(&format!("events --field-selector {selector}")) else {
            return vec![];
        };
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn delete_cache(&self, cache: &str) {
        self.k.kubectl_ok(&[
            "-n",
            NS,
            "delete",
            "nc",
            cache,
            "--wait=true",
            "--timeout=60s",
        ]);
    }
}

/// A pod whose image cannot be pulled, and a spec the API server refuses, show as the STATUS
/// of `kubectl get nc`, in the conditions, and as Warning events.
fn failures_are_visible(e: &E2e) {
    e.k.apply(
        &json!({"apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
            "metadata": {"name": "broken", "namespace": NS},
            "spec": {"image": "registry.invalid/nixcache:none"}})
        .to_string(),
    );
    let pulling = ["ErrImagePull", "ImagePullBackOff"];
    e.wait(
        "kubectl get nc to show the image pull failure",
        Duration::from_secs(120),
        || {
            pulling
                .contains(&e.nc_column("broken", "STATUS").as_str())
                .then_some(())
        },
    );
    assert_eq!(e.nc_column("broken", "READY"), "0");
    let (status, reason, message) = e.condition("broken", "Degraded").expect("Degraded");
    assert!(
        status == "True" && pulling.contains(&reason.as_str()),
        "Degraded {status} {reason}"
    );
    assert!(
        message.contains("registry.invalid/nixcache:none"),
        "{message}"
    );
    e.wait(
        "a Warning event of the pull failure",
        Duration::from_secs(30),
        || {
            e.warnings("broken")
                .iter()
                .any(|(r, _)| pulling.contains(&r.as_str()))
                .then_some(())
        },
    );
    e.delete_cache("broken");

    // Requests above limits: the API server refuses the Deployment.
    e.k.apply(
        &json!({"apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
            "metadata": {"name": "refused", "namespace": NS},
            "spec": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}})
        .to_string(),
    );
    e.wait(
        "kubectl get nc to show ApplyFailed",
        Duration::from_secs(60),
        || (e.nc_column("refused", "STATUS") == "ApplyFailed").then_some(()),
    );
    let (status, _, message) = e.condition("refused", "Reconciled").expect("Reconciled");
    assert_eq!(status, "False");
    assert!(
        message.contains("Deployment") && message.contains("less than or equal to cpu limit"),
        "the API server's message: {message}"
    );
    e.wait(
        "a Warning event ApplyFailed",
        Duration::from_secs(30),
        || {
            e.warnings("refused")
                .iter()
                .any(|(r, m)| r == "ApplyFailed" && m.contains("cpu limit"))
                .then_some(())
        },
    );
    assert!(
        !e.k.kubectl(&["-n", NS, "get", "deployment", "refused"])
            .status
            .success(),
        "no Deployment was made"
    );
    e.delete_cache("refused");
}

/// A NixCache named like an existing Deployment: refused, and the Deployment is left as it was,
/// also after the NixCache is deleted.
fn no_adoption(e: &E2e) {
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "create",
        "deployment",
        "taken",
        &format!("--image={}", common::image::NIX_CLIENT),
        "--",
        "sleep",
        "86400",
    ]);
    let before = e.get_json("deployment/taken").expect("the Deployment");
    e.k.apply(
        &json!({"apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
            "metadata": {"name": "taken", "namespace": NS}, "spec": {}})
        .to_string(),
    );
    e.wait(
        "kubectl get nc to show OwnershipConflict",
        Duration::from_secs(60),
        || (e.nc_column("taken", "STATUS") == "OwnershipConflict").then_some(()),
    );
    let (_, _, message) = e.condition("taken", "Degraded").expect("Degraded");
    assert!(message.contains("Deployment \"taken\""), "{message}");
    let check = |when: &str| {
        let now: Value = serde_json::from_str(&e.k.kubectl_ok(&[
            "-n",
            NS,
            "get",
            "deployment",
            "taken",
            "-o",
            "json",
            "--show-managed-fields",
        ]))
        .expect("the Deployment");
        // (Its status moves on as its pod starts: the Deployment controller's writes.)
        for field in ["uid", "generation", "labels", "annotations"] {
            assert_eq!(
                now["metadata"][field], before["metadata"][field],
                "the Deployment's {field} {when}"
            );
        }
        assert!(now["metadata"]["ownerReferences"].is_null(), "{when}");
        assert_eq!(now["spec"], before["spec"], "{when}");
        let managers: Vec<&str> = now["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(!managers.is_empty(), "managedFields are shown");
        assert!(
            !managers.contains(&"nixcache-operator"),
            "the operator never wrote to it {when}: {managers:?}"
        );
    };
    check("while the NixCache exists");
    e.delete_cache("taken");
    std::thread::sleep(Duration::from_secs(3));
    check("after the NixCache was deleted");
    e.k.kubectl_ok(&["-n", NS, "delete", "deployment", "taken", "--wait=true"]);
}

/// A cache on a PersistentVolumeClaim (bound to a hostPath volume made here): GC runs in its
/// server, and rotating its upload-token Secret rolls the pod to the new token.
fn claim_backed_cache(e: &E2e, rt: &tokio::runtime::Runtime, fx: &Fixture, upstream: &str) {
    let dir = tempfile::Builder::new()
        .prefix("nixcache-pv-")
        .tempdir()
        .expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(65532), Some(65532)).expect("chown");
    e.k.apply(
        &json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "nixcache-e2e-pv"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "manual",
                "hostPath": {"path": dir.path(), "type": "Directory"}}})
        .to_string(),
    );
    let token = |t: &str| {
        e.k.apply(
            &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "claimed-upload", "namespace": NS},
                "stringData": {"token": t}})
            .to_string(),
        );
    };
    let (old_token, new_token) = (
        "first-upload-token-0123456789",
        "second-upload-token-9876543210",
    );
    token(old_token);
    e.k.apply(
        &json!({"apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
            "metadata": {"name": "claimed", "namespace": NS},
            "spec": {
                "upstreams": [{"url": upstream, "publicKeys": [fx.key]}],
                "storage": {"volumeSize": "1Gi", "storageClassName": "manual"},
                "gc": {"maxSize": "1", "schedule": "*/10 * * * * *"},
                "uploads": {"tokenSecret": {"name": "claimed-upload", "key": "token"}}}})
        .to_string(),
    );
    let st = e.wait_cache_ready("claimed", 1);
    assert_eq!(st["gc"]["mode"], "Server", "{st}");
    let pod = e.ready_pods("claimed")[0].0.clone();
    e.wait(
        "the server's GC pass on the claim",
        Duration::from_secs(60),
        || {
            let logs = e.k.kubectl_ok(&["-n", NS, "logs", &pod]);
            logs.contains("GC pass done").then_some(())
        },
    );

    let base = format!("http://{}", e.cluster_ip("claimed"));
    let nar_url = Fixture::nar_url(&fx.narinfo(fx.top()));
    let nar = std::fs::read(fx.cache.join(&nar_url)).expect("NAR");
    let put = |t: &str| {
        rt.block_on(async {
            reqwest::Client::new()
                .put(format!("{base}/{nar_url}"))
                .bearer_auth(t)
                .body(nar.clone())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    assert!(
        (200..300).contains(&put(old_token)),
        "the first token uploads"
    );
    let template = |e: &E2e| {
        e.get_json("deployment/claimed")
            .map(|d| d["spec"]["template"]["metadata"]["annotations"].clone())
    };
    let before = template(e);
    token(new_token);
    e.wait(
        "the rotated token to roll the pod",
        Duration::from_secs(120),
        || {
            let pods = e.ready_pods("claimed");
            (template(e) != before && pods.len() == 1 && pods[0].0 != pod).then_some(())
        },
    );
    e.wait_cache_ready("claimed", 1);
    e.wait(
        "the new pod to take the new token only",
        Duration::from_secs(60),
        || (put(old_token) == 401 && (200..300).contains(&put(new_token))).then_some(()),
    );
    e.delete_cache("claimed");
    let _ =
        e.k.kubectl(&["delete", "pv", "nixcache-e2e-pv", "--wait=false"]);
}

/// A pod whose only knowledge of the cache is `NIX_CONFIG` from the `<name>-nix-config`
/// ConfigMap (over a base configuration with no substituters) realises the closure from it.
fn client_config_as_nix_config(e: &E2e, fx: &Fixture) {
    let cm = e
        .get_json("configmap/nixcache-nix-config")
        .expect("the client ConfigMap");
    let conf = cm["data"]["nix.conf"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = e.status("nixcache")["publicKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        conf.contains("extra-substituters = http://nixcache.default.svc.cluster.local:80")
            && conf.contains(&format!("extra-trusted-public-keys = {key}")),
        "{conf}"
    );
    e.k.apply(
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "base-nix-conf", "namespace": NS},
            "data": {"nix.conf": format!("{}\nrequire-sigs = true\n", common::NIX_CONFIG)}})
        .to_string(),
    );
    let pod = "nix-config-client";
    e.k.apply(
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": NS},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "hostAliases": [{"ip": e.cluster_ip("nixcache"),
                "hostnames": [format!("nixcache.{NS}.svc.cluster.local")]}],
            "volumes": [{"name": "base", "configMap": {"name": "base-nix-conf"}}],
            "containers": [{
                "name": "nix", "image": common::image::NIX_CLIENT, "imagePullPolicy": "Never",
                "command": ["sleep", "86400"],
                "volumeMounts": [{"name": "base", "mountPath": "/etc/nix-base"}],
                "env": [
                    {"name": "NIX_CONF_DIR", "value": "/etc/nix-base"},
                    {"name": "NIX_CONFIG", "valueFrom": {"configMapKeyRef":
                        {"name": "nixcache-nix-config", "key": "nix.conf"}}},
                ],
            }],
        }})
        .to_string(),
    );
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        &format!("pod/{pod}"),
        "--timeout=120s",
    ]);
    let out = e.exec(
        pod,
        &format!(
            "nix-store --realise '{}' && nix-store --query --requisites '{}'",
            fx.top(),
            fx.top()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nix-store --realise with the cache's NIX_CONFIG:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("/nix/store/"))
        .map(str::to_string)
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        closure_of(fx),
        "the closure realised through NIX_CONFIG"
    );
    let _ = e.k.kubectl(&[
        "-n",
        NS,
        "delete",
        "pod",
        pod,
        "--grace-period=1",
        "--wait=false",
    ]);
}

/// A cache that ServiceAccounts read and push with their projected tokens: the operator binds
/// its ServiceAccount to system:auth-delegator, its server reviews tokens as that account, and
/// Nix in a pod of a granted ServiceAccount substitutes and pushes with the token in netrc, set up
/// as the README says; a pod of another ServiceAccount is refused. Deleting the cache deletes
/// the binding.
fn service_account_access(e: &E2e, fx: &Fixture, upstream: &str) {
    for sa in ["builder", "outsider"] {
        e.k.apply(
            &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": NS}})
            .to_string(),
        );
    }
    e.k.apply(
        &json!({"apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
        "metadata": {"name": "private", "namespace": NS},
        "spec": {
            "upstreams": [{"url": upstream, "publicKeys": [fx.key]}],
            "uploads": {},
            "serviceAccountAccess": {
                "read": [{"namespace": "readers"}],
                "push": [{"namespace": NS, "name": "builder"}],
            },
        }})
        .to_string(),
    );
    let st = e.wait_cache_ready("private", 1);
    let url = st["url"].as_str().expect("status.url").to_string();
    let key = st["publicKey"]
        .as_str()
        .expect("status.publicKey")
        .to_string();
    let binding = e.k.kubectl_ok(&[
        "get",
        "clusterrolebinding",
        "nixcache:default:private:token-review",
        "-o",
        "jsonpath={.roleRef.name} {.subjects[0].namespace}/{.subjects[0].name}",
    ]);
    assert_eq!(binding.trim(), "system:auth-delegator default/private");

    let host = format!("private.{NS}.svc.cluster.local");
    let pod = |name: &str, sa: &str| {
        e.k.apply(
            &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "serviceAccountName": sa,
                "terminationGracePeriodSeconds": 1,
                "hostAliases": [{"ip": e.cluster_ip("private"), "hostnames": [host]}],
                "volumes": [{"name": "nixcache-token", "projected": {"sources": [
                    {"serviceAccountToken":
                        {"audience": "nixcache", "expirationSeconds": 3600, "path": "token"}}]}}],
                "containers": [{
                    "name": "nix", "image": common::image::NIX_CLIENT, "imagePullPolicy": "Never",
                    "command": ["sleep", "86400"],
                    "env": [{"name": "NIX_CONFIG", "value":
                        format!("{}\nnetrc-file = /tmp/nixcache.netrc", common::NIX_CONFIG)}],
                    "volumeMounts": [{"name": "nixcache-token",
                        "mountPath": "/var/run/secrets/nixcache", "readOnly": true}],
                }],
            }})
            .to_string(),
        );
    };
    pod("builder-client", "builder");
    pod("outsider-client", "outsider");
    for p in ["builder-client", "outsider-client"] {
        e.k.kubectl_ok(&[
            "-n",
            NS,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{p}"),
            "--timeout=120s",
        ]);
    }
    let netrc = format!(
        "printf 'machine {host} login serviceaccount password %s\\n' \
         \"$(cat /var/run/secrets/nixcache/token)\" > /tmp/nixcache.netrc"
    );
    let substitute = format!(
        "{netrc} && nix copy --from '{url}' --to /tmp/store '{}' \
         --option trusted-public-keys '{key}' --option require-sigs true",
        fx.top()
    );
    let out = e.exec("builder-client", &substitute);
    assert!(
        out.status.success(),
        "nix copy from {url} as ServiceAccount builder:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        e.k.diagnose()
    );
    let push = format!(
        "{netrc} && echo pushed-from-a-pod > /tmp/pushed && \
         p=$(nix store add-file /tmp/pushed) && nix copy --to '{url}' \"$p\" && echo \"$p\""
    );
    let out = e.exec("builder-client", &push);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nix copy --to {url} as ServiceAccount builder:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = stdout.trim().lines().last().unwrap_or_default().to_string();
    assert!(pushed.starts_with("/nix/store/"), "{stdout}");
    let out = e.exec("outsider-client", &substitute);
    assert!(
        !out.status.success(),
        "a ServiceAccount no grant names substituted from {url}"
    );
    let out = e.exec("outsider-client", &push);
    assert!(
        !out.status.success(),
        "a ServiceAccount no grant names pushed to {url}"
    );
    // What the builder pushed is there for it, through the cache.
    let out = e.exec(
        "builder-client",
        &format!("{netrc} && nix path-info --store '{url}' '{pushed}'"),
    );
    assert!(
        out.status.success(),
        "the pushed path in the cache:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    e.k.kubectl_ok(&[
        "-n",
        NS,
        "delete",
        "nc",
        "private",
        "--wait=true",
        "--timeout=60s",
    ]);
    let left = e.k.kubectl(&[
        "get",
        "clusterrolebinding",
        "nixcache:default:private:token-review",
    ]);
    assert!(!left.status.success(), "the binding outlived its cache");
    for p in ["builder-client", "outsider-client"] {
        let _ = e.k.kubectl(&[
            "-n",
            NS,
            "delete",
            "pod",
            p,
            "--grace-period=1",
            "--wait=false",
        ]);
    }
}

#[test]
fn the_chart_and_the_examples_serve_nix_clients_in_a_real_cluster() {
    let t0 = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let fx = fixture();

    // Images: nixcache from Containerfile, and the Nix client's.
    let image = Image::build();
    let images = tempfile::tempdir().expect("tempdir");
    let nixcache_tar = images.path().join("nixcache.tar");
    image.save(&nixcache_tar);
    let client_tar = images.path().join("nix-client.tar");
    save(nix_client_image(), &client_tar);
    eprintln!("images: {:.1}s", t0.elapsed().as_secs_f64());

    let k = KubeCluster::start(&[&nixcache_tar, &client_tar]);
    eprintln!("cluster started in {:.1}s", k.started_in.as_secs_f64());
    let e = E2e { k };

    // Upstreams on the host, where pods reach them: one per cache, so each counts its own.
    let upstream = || {
        rt.block_on(FaultyUpstream::start_on(
            host_ip(),
            fx.cache.clone(),
            fx.cache_untrusted.clone(),
            Mode::Normal,
        ))
    };
    let (upstream_a, upstream_b) = (upstream(), upstream());

    // 1. The chart: the operator runs as a pod.
    install_operator(&e, &image);
    eprintln!("operator installed: {:.1}s", t0.elapsed().as_secs_f64());

    // 2. The plain example becomes a Ready cache, as `kubectl get nc` shows.
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "apply",
        "-f",
        repo()
            .join("deploy/examples/nixcache.yaml")
            .to_str()
            .expect("utf-8"),
    ]);
    e.wait_cache_ready("nixcache", 1);
    let table = e.k.kubectl_ok(&["-n", NS, "get", "nc", "nixcache"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..5),
        Some(
            &[
                "nixcache",
                "1",
                "1",
                "ReplicasReady",
                "http://nixcache.default.svc.cluster.local:80"
            ][..]
        ),
        "kubectl get nc:\n{table}"
    );
    // -o wide adds the public key.
    let wide =
        e.k.kubectl_ok(&["-n", NS, "get", "nc", "nixcache", "-o", "wide"]);
    let key_now = e.status("nixcache")["publicKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !key_now.is_empty() && wide.contains(&key_now),
        "kubectl get nc -o wide:\n{wide}"
    );
    // A spec change (this run's upstream instead of cache.nixos.org) rolls it.
    let before = e.ready_pods("nixcache");
    let patch = json!({"spec": {"upstreams": [{"url": upstream_a.url, "publicKeys": [fx.key]}]}});
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "patch",
        "nc",
        "nixcache",
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ]);
    let single = e.wait_cache_ready("nixcache", 1);
    let after = e.ready_pods("nixcache");
    assert_ne!(before, after, "the upstream change rolled the pod");

    // 3. The HA example on PostgreSQL, three Redis masters and SeaweedFS, run on the host.
    let pg = Postgres::start_on(KubeCluster::HOST_IP);
    let redis: Vec<Redis> = (0..3)
        .map(|_| Redis::start_on(KubeCluster::HOST_IP))
        .collect();
    let s3 = SeaweedFs::start_on(KubeCluster::HOST_IP);
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "nixcache-s3",
        &format!("--from-literal=AWS_ACCESS_KEY_ID={}", seaweedfs::ACCESS_KEY),
        &format!(
            "--from-literal=AWS_SECRET_ACCESS_KEY={}",
            seaweedfs::SECRET_KEY
        ),
    ]);
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "nixcache-postgres",
        &format!("--from-literal=url={}", pg.url()),
    ]);
    let ha_manifest = ha_example(&upstream_b.url, &fx.key, &s3.endpoint, &redis).to_string();
    e.k.apply(&ha_manifest);
    let ha = e.wait_cache_ready("nixcache-ha", 3);
    eprintln!("caches ready: {:.1}s", t0.elapsed().as_secs_f64());

    // 4. The client pod.
    e.start_client();

    // 5. The single-replica cache: the closure through status.url, trusting only its key.
    let url = single["url"].as_str().expect("status.url");
    let key = single["publicKey"].as_str().expect("status.publicKey");
    assert_ne!(key, fx.key, "the cache signs with its own key");
    let got = e.substitute(url, key, fx.top(), 1);
    assert_eq!(got, vec![closure_of(fx)], "the closure through {url}");

    // 6. The HA cache: three clients at once through the Service; each upstream file once.
    let ha_url = ha["url"].as_str().expect("status.url");
    let ha_key = ha["publicKey"].as_str().expect("status.publicKey");
    let got = e.substitute(ha_url, ha_key, fx.top(), 3);
    assert_eq!(got, vec![closure_of(fx); 3], "the closure through {ha_url}");
    for p in &fx.paths {
        let narinfo = format!("/{}.narinfo", Fixture::hash_of(p));
        let nar = format!("/{}", Fixture::nar_url(&fx.narinfo(p)));
        assert_eq!(upstream_b.hits(&narinfo), 1, "{narinfo} from the upstream");
        assert_eq!(upstream_b.hits(&nar), 1, "{nar} from the upstream");
    }

    // 7. Scheduled GC runs as a real Job, to completion.
    let job = e.wait(
        "a scheduled GC Job to succeed",
        Duration::from_secs(120),
        || {
            let jobs = e.get_json("jobs -l app.kubernetes.io/instance=nixcache-ha")?;
            jobs["items"].as_array()?.iter().find_map(|j| {
                (j["status"]["succeeded"].as_i64() == Some(1)).then(|| {
                    j["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            })
        },
    );
    e.wait("status.gc to report it", Duration::from_secs(60), || {
        let gc = e.status("nixcache-ha")["gc"].clone();
        (gc["lastSuccessTime"].is_string()
            && gc["lastResult"]
                .as_str()
                .is_some_and(|r| r.starts_with("Succeeded")))
        .then_some(())
    });
    let logs = e.k.kubectl_ok(&["-n", NS, "logs", &format!("job/{job}")]);
    assert!(logs.contains("GC pass done"), "the GC Job's log:\n{logs}");

    // 8. A spec change rolls the Deployment while clients keep fetching through the Service: no
    //    request fails. (GC goes back to hourly in the same change.)
    let ip = e.cluster_ip("nixcache-ha");
    let before = e.ready_pods("nixcache-ha");
    let load = Load::start(rt.handle(), &format!("http://{ip}"), fx, 4);
    std::thread::sleep(Duration::from_secs(3));
    let patch = json!({"spec": {"resources": {"requests": {"cpu": "200m"}}, "gc": {"schedule": "0 * * * *"}}});
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "patch",
        "nc",
        "nixcache-ha",
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ]);
    e.wait_cache_ready("nixcache-ha", 3);
    std::thread::sleep(Duration::from_secs(3));
    let (served, failures) = load.finish(rt.handle());
    let after = e.ready_pods("nixcache-ha");
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "every pod was replaced: {before:?} → {after:?}"
    );
    assert!(served > 100, "requests during the rollout: {served}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rollout: {failures:?}",
        failures.len(),
        served + failures.len()
    );
    eprintln!("rollout: {served} requests served, none failed");

    // 9. PostgreSQL down: warm paths still come through the Service, and a pod deleted meanwhile
    //    is replaced by one that starts and serves without the database.
    pg.stop();
    let got = e.substitute(ha_url, ha_key, fx.top(), 1);
    assert_eq!(got, vec![closure_of(fx)], "warm paths with PostgreSQL down");
    let pods = e.ready_pods("nixcache-ha");
    let (victim, _) = pods[0].clone();
    e.k.kubectl_ok(&["-n", NS, "delete", "pod", &victim, "--wait=false"]);
    let (new_pod, new_ip) = e.wait(
        "a replacement pod Ready with PostgreSQL down",
        Duration::from_secs(120),
        || {
            e.ready_pods("nixcache-ha")
                .into_iter()
                .find(|p| !pods.contains(p))
        },
    );
    rt.block_on(async {
        let base = format!("http://{new_ip}:8080");
        for p in &fx.paths {
            let (status, body) = common::fetch_nar(&base, p).await;
            assert_eq!(status, 200, "{p}'s NAR from the new pod {new_pod}");
            let nar = Fixture::nar_url(&fx.narinfo(p));
            let want = std::fs::read(fx.cache.join(&nar)).expect("upstream NAR");
            assert!(body == want, "{nar} bytes from the new pod {new_pod}");
        }
    });
    let got = e.substitute(ha_url, ha_key, fx.top(), 1);
    assert_eq!(
        got,
        vec![closure_of(fx)],
        "warm paths after the replacement"
    );
    pg.resume();
    for p in &fx.paths {
        let nar = format!("/{}", Fixture::nar_url(&fx.narinfo(p)));
        assert_eq!(upstream_b.hits(&nar), 1, "{nar} fetched again");
    }

    // 10. Deleting the NixCache garbage-collects everything the operator made for it but the
    //     signing key, which is meant to outlive it; what the user made (the Secrets it referred
    //     to) stays.
    e.k.kubectl_ok(&[
        "-n",
        NS,
        "delete",
        "nc",
        "nixcache-ha",
        "--wait=true",
        "--timeout=60s",
    ]);
    e.wait("the HA cache's children to go", Duration::from_secs(240), || {
        let left = e.k.kubectl_ok(&[
            "-n",
            NS,
            "get",
            "deployment,replicaset,pod,service,endpoints,configmap,secret,serviceaccount,job,pvc,role,rolebinding",
            "-l",
            "app.kubernetes.io/instance=nixcache-ha",
            "-o",
            "name",
        ]);
        let owned = e.k.kubectl_ok(&[
            "-n",
            NS,
            "get",
            "deployment,service,configmap,secret,serviceaccount,job",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.ownerReferences[0].name}{\"\\n\"}{end}",
        ]);
        let owned: Vec<&str> = owned.lines().filter(|l| l.ends_with(" nixcache-ha")).collect();
        (left.trim() == "secret/nixcache-ha-signing-key" && owned.is_empty()).then_some(())
    });
    for secret in ["nixcache-s3", "nixcache-postgres"] {
        e.k.kubectl_ok(&["-n", NS, "get", "secret", secret]);
    }

    // 11. Re-created under the same name (as GitOps tools do), the cache signs with the same
    //     key: clients that trust it keep substituting, from what the bucket and database kept.
    e.k.apply(&ha_manifest);
    let again = e.wait_cache_ready("nixcache-ha", 3);
    assert_eq!(
        again["publicKey"].as_str(),
        Some(ha_key),
        "the key after re-creation"
    );
    e.start_client();
    let got = e.substitute(ha_url, ha_key, fx.top(), 1);
    assert_eq!(got, vec![closure_of(fx)], "the closure after re-creation");
    for p in &fx.paths {
        let nar = format!("/{}", Fixture::nar_url(&fx.narinfo(p)));
        assert_eq!(upstream_b.hits(&nar), 1, "{nar} fetched again");
    }
    // The other cache is untouched.
    assert_eq!(
        e.ready_pods("nixcache").len(),
        1,
        "the other cache still serves"
    );

    // 12. Failures reach `kubectl get nc`, the conditions and Warning events.
    failures_are_visible(&e);
    // 13. A NixCache named like a Deployment it did not make is refused; the Deployment is
    //     untouched.
    no_adoption(&e);
    // 14. A cache on a claim: its server runs GC; a rotated upload token rolls its pod.
    claim_backed_cache(&e, &rt, fx, &upstream_a.url);
    // 15. The client ConfigMap, as NIX_CONFIG in a Nix client pod, is all it needs.
    client_config_as_nix_config(&e, fx);
    // 16. ServiceAccounts read and push with their own tokens.
    service_account_access(&e, fx, &upstream_a.url);
    let times = format!(
        "test cluster: start-up (until the node is Ready) {:.1} s; the end-to-end test {:.1} s\n",
        e.k.started_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    eprint!("{times}");
    // scripts/test prints this after the suite (cargo test shows no output of passing tests).
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-e2e-times.txt"),
        times,
    );
}
