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
