//! Kubernetes ServiceAccounts as readers and pushers, against a real API server (which issues
//! the tokens with TokenRequests and reviews them) and the real Nix clients, 2.8 and 2.34: a
//! granted ServiceAccount's token in a netrc file substitutes and pushes; one no grant names is
//! refused, as is a token for another audience; a deleted ServiceAccount's token stops working
//! once the review's answer expires; concurrent requests with one token cost one review; with
//! the API server gone, tokens it vouched for lately still stand and others are 503; and when
//! the server's own token file is replaced, the server reads it again.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::nixes::{Nix, Scratch};
use common::{fixture, sample, Fixture, Nixcache, StaticServer};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use nixcache_tests::kube::KubeApiServer;

/// The API server, and an admin client of it.
struct Kube {
    api: KubeApiServer,
    admin: kube::Client,
    server_url: String,
}

impl Kube {
    async fn start() -> Self {
        let api = KubeApiServer::start();
        let kubeconfig = kube::config::Kubeconfig::read_from(&api.kubeconfig).expect("kubeconfig");
        let server_url = kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
            .expect("server URL");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        let admin = kube::Client::try_from(config).expect("client");
        Self {
            api,
            admin,
            server_url,
        }
    }

    async fn namespace(&self, name: &str) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    async fn service_account(&self, ns: &str, name: &str) {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        Api::<ServiceAccount>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await
            .expect("create ServiceAccount");
    }

    async fn delete_service_account(&self, ns: &str, name: &str) {
        Api::<ServiceAccount>::namespaced(self.admin.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete ServiceAccount");
        // Gone for good before anything is asked of it again.
        let api = Api::<ServiceAccount>::namespaced(self.admin.clone(), ns);
        let start = Instant::now();
        while api.get_opt(name).await.expect("get").is_some() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{ns}/{name} stays"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new token of `ns/name` from a TokenRequest, for `audience` (else the API server's
    /// own). Each lives a second longer than the last: tokens issued in the same second for the
    /// same account and audience would otherwise be the same.
    async fn token(&self, ns: &str, name: &str, audience: Option<&str>) -> String {
        static ISSUED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let n = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                expiration_seconds: Some(3600 + n),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        Api::<ServiceAccount>::namespaced(self.admin.clone(), ns)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("token")
            .token
    }

    /// Binds `ns/name` to `system:auth-delegator`, as the operator does for a cache's account.
    async fn allow_token_reviews(&self, ns: &str, name: &str) {
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(format!("nixcache:{ns}:{name}:token-review")),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "system:auth-delegator".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(ns.into()),
                api_group: None,
            }]),
        };
        Api::<ClusterRoleBinding>::all(self.admin.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("create ClusterRoleBinding");
    }

    /// The server's kubeconfig: its ServiceAccount token read from `token_file`, as a pod's is.
    fn server_kubeconfig(&self, token_file: &Path) -> PathBuf {
        let path = self.api.dir().join(format!(
            "server-{}.kubeconfig",
            token_file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        ));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: test, cluster: {{server: \"{}\", insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: nixcache, user: {{tokenFile: \"{}\"}}}}]\n\
                 contexts: [{{name: test, context: {{cluster: test, user: nixcache}}}}]\n\
                 current-context: test\n",
                self.server_url,
                token_file.display()
            ),
        )
        .expect("kubeconfig");
        path
    }
}

/// The namespace of the cache's own ServiceAccount.
const CACHE_NS: &str = "nixcache";

/// An API server with the accounts of the tests, and a running cache that reads `ci/*` and
/// takes pushes from `ci/pusher`.
struct Setup {
    kube: Kube,
    cache: Nixcache,
    token_file: PathBuf,
    _upstream: StaticServer,
    _data: tempfile::TempDir,
}

async fn setup(server_account: &str, extra: &[&str]) -> Setup {
    let kube = Kube::start().await;
    for ns in [CACHE_NS, "ci", "other"] {
        kube.namespace(ns).await;
    }
    for (ns, name) in [
        (CACHE_NS, server_account),
        ("ci", "pusher"),
        ("ci", "reader"),
        ("other", "intruder"),
    ] {
        kube.service_account(ns, name).await;
    }
    kube.allow_token_reviews(CACHE_NS, server_account).await;
    let data = tempfile::tempdir().expect("tempdir");
    let token_file = data.path().join(format!("{server_account}.token"));
    std::fs::write(
        &token_file,
        kube.token(CACHE_NS, server_account, None).await,
    )
    .expect("token file");
    let kubeconfig = kube.server_kubeconfig(&token_file);

    let fx = fixture();
    let upstream = StaticServer::start(&fx.cache).await;
    let mut args = vec![
        "--upstream",
        upstream.url.as_str(),
        "--upstream-key",
        fx.key.as_str(),
        "--read-service-account",
        "ci/*",
        "--push-service-account",
        "ci/pusher",
        "--public-metrics",
    ];
    args.extend_from_slice(extra);
    let cache = Nixcache::start_with_env(
        &data.path().join("data"),
        &args,
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))],
    )
    .await;
    Setup {
        kube,
        cache,
        token_file,
        _upstream: upstream,
        _data: data,
    }
}

/// The status of a GET with `token` as a Bearer token.
async fn get_status(url: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("GET").status().as_u16()
}

/// A netrc file with `token` as the password for 127.0.0.1: the client setup the README gives.
fn netrc(scratch: &Scratch, name: &str, token: &str) -> String {
    std::fs::write(
        scratch.host(name),
        format!("machine 127.0.0.1\nlogin serviceaccount\npassword {token}\n"),
    )
    .expect("netrc");
    scratch.inside(name)
}

async fn reviews(cache: &Nixcache, answer: &str) -> f64 {
    let text = common::metrics(&cache.url).await;
    sample(
        &text,
        "nixcache_token_reviews_total",
        &[&format!("answer=\"{answer}\"")],
    )
    .unwrap_or(0.0)
}

/// Substitutes the fixture's closure, and pushes a file, with each token in a netrc file.
async fn with_nix(nix: Nix, s: &Setup, reader: &str, pusher: &str, intruder: &str) {
    let fx = fixture();
    let version = nix.version().await;
    let key = s.cache.public_key().await;
    let scratch = nix.tempdir();
    let substitute = |netrc: String| {
        let store = scratch.inside(&format!("store-{}", rand_tag()));
        let cache = s.cache.url.clone();
        let key = key.clone();
        async move {
            nix.run(
                "nix",
                &[
                    "copy",
                    "--from",
                    &cache,
                    "--to",
                    &store,
                    fx.top(),
                    "--option",
                    "trusted-public-keys",
                    &key,
                    "--option",
                    "netrc-file",
                    &netrc,
                ],
            )
            .await
        }
    };
    let out = substitute(netrc(&scratch, "reader", reader)).await;
    assert!(
        out.success,
        "Nix {version} with a reader's token: {}\n{}",
        out.stderr,
        s.cache.logs()
    );
    let out = substitute(netrc(&scratch, "intruder", intruder)).await;
    assert!(
        !out.success,
        "Nix {version} substituted with the token of a ServiceAccount no grant names"
    );

    // Pushes: the pusher's token stores the path; a reader's does not.
    std::fs::write(scratch.host("pushed"), format!("pushed by {version}\n")).expect("write");
    let out = nix
        .run("nix", &["store", "add-file", &scratch.inside("pushed")])
        .await;
    assert!(out.success, "nix store add-file: {}", out.stderr);
    let path = out.stdout.trim().to_string();
    let narinfo = format!("{}/{}.narinfo", s.cache.url, Fixture::hash_of(&path));
    let push = |netrc: String| {
        let cache = s.cache.url.clone();
        let path = path.clone();
        async move {
            nix.run(
                "nix",
                &[
                    "copy",
                    "--to",
                    &cache,
                    &path,
                    "--option",
                    "netrc-file",
                    &netrc,
                ],
            )
            .await
        }
    };
    let out = push(netrc(&scratch, "reader", reader)).await;
    assert!(!out.success, "Nix {version} pushed with a reader's token");
    assert_eq!(get_status(&narinfo, Some(reader)).await, 404);
    let out = push(netrc(&scratch, "pusher", pusher)).await;
    assert!(
        out.success,
        "Nix {version} with the pusher's token: {}\n{}",
        out.stderr,
        s.cache.logs()
    );
    assert_eq!(get_status(&narinfo, Some(reader)).await, 200);
    println!("Nix {version}: substitutes and pushes with ServiceAccount tokens in netrc");
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_read_and_push_as_granted_with_tokens_the_api_server_reviews() {
    let s = setup("server", &["--token-review-ttl", "2s"]).await;
    let fx = fixture();
    let narinfo = format!("{}/{}.narinfo", s.cache.url, Fixture::hash_of(fx.top()));
    let reader = s.kube.token("ci", "reader", Some("nixcache")).await;
    let pusher = s.kube.token("ci", "pusher", Some("nixcache")).await;
    let intruder = s.kube.token("other", "intruder", Some("nixcache")).await;
    let for_the_api = s.kube.token("ci", "reader", None).await;

    // Reads need a credential: a granted ServiceAccount's token, as Bearer or Basic password.
    assert_eq!(get_status(&narinfo, None).await, 401);
    assert_eq!(get_status(&narinfo, Some(&reader)).await, 200);
    assert_eq!(
        get_status(&narinfo, Some(&pusher)).await,
        200,
        "pushers read"
    );
    let basic = reqwest::Client::new()
        .get(&narinfo)
        .basic_auth("anyone", Some(&reader))
        .send()
        .await
        .expect("GET");
    assert_eq!(basic.status(), 200, "the token as the Basic password");
    // Refused: a ServiceAccount no grant names (403), a token for the API server's audience, a
    // token-shaped forgery (401).
    let refused = reqwest::Client::new()
        .get(&narinfo)
        .bearer_auth(&intruder)
        .send()
        .await
        .expect("GET");
    assert_eq!(refused.status(), 403);
    let body = refused.text().await.expect("body");
    assert!(body.contains("other/intruder"), "{body}");
    assert_eq!(get_status(&narinfo, Some(&for_the_api)).await, 401);
    let forged = format!("{}.{}", reader.rsplit_once('.').expect("jwt").0, "AAAA");
    assert_eq!(get_status(&narinfo, Some(&forged)).await, 401);
    // Open as ever: health and the public key.
    assert_eq!(
        get_status(&format!("{}/pubkey", s.cache.url), None).await,
        200
    );

    // Concurrent requests with one new token cost one review.
    let before = reviews(&s.cache, "service_account").await;
    let fresh = s.kube.token("ci", "reader", Some("nixcache")).await;
    let all =
        futures_util::future::join_all((0..20).map(|_| get_status(&narinfo, Some(&fresh)))).await;
    assert!(all.iter().all(|&s| s == 200), "{all:?}");
    assert_eq!(reviews(&s.cache, "service_account").await - before, 1.0);

    // Pushes: the pusher's token uploads, a reader's is refused (403), none is 401.
    let put = |token: Option<String>| {
        let url = format!("{}/nix-cache-info", s.cache.url);
        async move {
            let mut req = reqwest::Client::new()
                .put(url)
                .body("StoreDir: /nix/store\n");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.expect("PUT").status().as_u16()
        }
    };
    assert_eq!(put(None).await, 401);
    assert_eq!(put(Some(reader.clone())).await, 403);
    assert_eq!(put(Some(pusher.clone())).await, 204);

    // The real Nix clients, with the tokens in netrc files.
    for nix in Nix::ALL {
        with_nix(nix, &s, &reader, &pusher, &intruder).await;
    }

    // A deleted ServiceAccount's token is refused once the answers kept expire: the server's
    // (2 s here) and the API server's own (10 s for valid tokens).
    assert_eq!(get_status(&narinfo, Some(&reader)).await, 200);
    s.kube.delete_service_account("ci", "reader").await;
    let deleted = Instant::now();
    loop {
        match get_status(&narinfo, Some(&reader)).await {
            401 => break,
            200 => assert!(
                deleted.elapsed() < Duration::from_secs(20),
                "a deleted ServiceAccount's token still reads"
            ),
            other => panic!("{other} for a deleted ServiceAccount's token"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "a deleted ServiceAccount's token was refused {:.1} s after the deletion",
        deleted.elapsed().as_secs_f64()
    );

    // The API server gone: a token it vouched for within minutes still stands for its
    // ServiceAccount (the pusher reads, the intruder is still 403), past the review TTL; one it
    // never vouched for is 503, try again.
    assert_eq!(get_status(&narinfo, Some(&pusher)).await, 200);
    assert_eq!(get_status(&narinfo, Some(&intruder)).await, 403);
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.kube.api.kill_api_server();
    assert_eq!(get_status(&narinfo, Some(&pusher)).await, 200);
    assert_eq!(get_status(&narinfo, Some(&intruder)).await, 403);
    let never_seen = reqwest::Client::new()
        .get(&narinfo)
        .bearer_auth(&for_the_api)
        .send()
        .await
        .expect("GET");
    assert_eq!(never_seen.status(), 503);
    assert!(reviews(&s.cache, "vouched_before").await >= 2.0);

    let logs = s.cache.logs();
    for token in [&reader, &pusher, &intruder, &for_the_api] {
        assert!(!logs.contains(token.as_str()), "a token reached the log");
    }
    assert!(
        logs.contains("other/intruder"),
        "refusals are logged:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_token_file_is_read_again_when_it_is_replaced() {
    let s = setup("rotating", &[]).await;
    let fx = fixture();
    let narinfo = format!("{}/{}.narinfo", s.cache.url, Fixture::hash_of(fx.top()));
    let reader = s.kube.token("ci", "reader", Some("nixcache")).await;
    assert_eq!(get_status(&narinfo, Some(&reader)).await, 200);

    // The server's ServiceAccount is made anew: its old token is void. The kubelet would write
    // the new one into the token file; so does the test.
    s.kube.delete_service_account(CACHE_NS, "rotating").await;
    s.kube.service_account(CACHE_NS, "rotating").await;
    let new_token = s.kube.token(CACHE_NS, "rotating", None).await;
    let replaced = s.token_file.with_extension("new");
    std::fs::write(&replaced, &new_token).expect("token");
    std::fs::rename(&replaced, &s.token_file).expect("rename");
    // The API server keeps its verdict on a valid token for 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;

    // A token not reviewed yet: asked with the void token, the API server refuses the server,
    // which answers 503 (try again), not a verdict on the client's token.
    let later = s.kube.token("ci", "pusher", Some("nixcache")).await;
    let r = reqwest::Client::new()
        .get(&narinfo)
        .bearer_auth(&later)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 503, "{}", s.cache.logs());
    assert!(
        s.cache.logs().contains("cannot review"),
        "{}",
        s.cache.logs()
    );
    assert!(r.headers().get("retry-after").is_some());

    // Within the client's reload interval (a minute) the new token is read and reviews work.
    let start = Instant::now();
    loop {
        let status = get_status(&narinfo, Some(&later)).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the new token file was not read:\n{}",
            s.cache.logs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "the replaced token file was read {:.0} s after the replacement",
        start.elapsed().as_secs_f64()
    );
    assert!(!s.cache.logs().contains(&new_token));
}
