//! The admin API: `POST /api/v1/prefetch` fetches a closure through the miss flow; afterwards the
//! real Nix client gets the whole closure from nixcache with the upstream gone. The admin token
//! guards it; without one configured the API does not exist.

mod common;

use common::{fixture, store_contents, Fixture, NixClient, Nixcache, StaticServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789abcdef";

/// `POST <url>/api/v1/<endpoint>` with an optional admin token: status and JSON answer.
async fn call(url: &str, endpoint: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/api/v1/{endpoint}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(url: &str, token: Option<&str>, body: String) -> (u16, Value) {
    call(url, "prefetch", token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_closure_is_served_with_the_upstream_gone() {
    let fx = fixture();
    let upstream = StaticServer::start(&fx.cache).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--admin-token", ADMIN],
    )
    .await;
    let request = json!({"paths": [fx.top()], "closure": true}).to_string();

    // Guarded: without the token or with a wrong one, nothing happens.
    assert_eq!(post(&cache.url, None, request.clone()).await.0, 401);
    assert_eq!(
        post(&cache.url, Some("wrong-token-0123456789"), request.clone())
            .await
            .0,
        401
    );
    let narinfo = format!("{}/{}.narinfo", cache.url, Fixture::hash_of(fx.top()));
    let stored = || {
        std::fs::read_dir(tmp.path().join("data/store/nar"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(stored(), 0, "a refused request fetched something");
    // Bad bodies: 400 with a message.
    for bad in [
        "not json".to_string(),
        json!({"paths": []}).to_string(),
        json!({"paths": ["/etc/passwd"]}).to_string(),
        json!({"paths": [fx.top()], "colour": "blue"}).to_string(),
    ] {
        let (status, body) = post(&cache.url, Some(ADMIN), bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {body}"
        );
    }

    // The closure, fetched once; asked again, it is all cached.
    let (status, report) = post(&cache.url, Some(ADMIN), request.clone()).await;
    assert_eq!(status, 200, "{report}");
    let mut fetched: Vec<String> = report["fetched"]
        .as_array()
        .expect("fetched")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    fetched.sort();
    let mut want = fx.paths.clone();
    want.sort();
    assert_eq!(fetched, want, "{report}");
    assert_eq!(report["failed"], json!([]));
    let (_, again) = post(&cache.url, Some(ADMIN), request).await;
    assert_eq!(
        again["cached"].as_array().map(Vec::len),
        Some(fx.paths.len()),
        "{again}"
    );
    // A path no upstream has.
    let missing = format!("/nix/store/{}-missing", "0".repeat(32));
    let (_, report) = post(
        &cache.url,
        Some(ADMIN),
        json!({"paths": [missing]}).to_string(),
    )
    .await;
    assert_eq!(report["not_found"], json!([missing]));

    // The command line does the same.
    let cli = |token: &str, path: &str| {
        std::process::Command::new(common::nixcache_bin())
            .args(["prefetch", "--server", &cache.url, path])
            .env("NIXCACHE_ADMIN_TOKEN", token)
            .output()
            .expect("nixcache prefetch")
    };
    let out = cli(ADMIN, fx.top());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "0 fetched, {} cached already, 0 not found, 0 failed",
            fx.paths.len()
        )),
        "{stdout}"
    );
    let out = cli(ADMIN, &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not found upstream"));
    let out = cli("wrong-token-0123456789", fx.top());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the admin token"));

    // The upstream goes away; the real Nix client still gets the whole closure.
    drop(upstream);
    let store = tmp.path().join("client");
    let out = NixClient::new()
        .copy_closure(&cache.url, &store, fx.top(), &cache.public_key().await)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(store_contents(&store).len(), fx.paths.len());
    assert_eq!(reqwest::get(&narinfo).await.expect("GET").status(), 200);

    // Without an admin token configured, there is no API.
    let plain = Nixcache::in_front_of(
        &tmp.path().join("plain"),
        "http://127.0.0.1:1",
        &fx.key,
        &[],
    )
    .await;
    let (status, _) = post(
        &plain.url,
        Some(ADMIN),
        json!({"paths": [fx.top()]}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
}

async fn post_gc(url: &str, token: Option<&str>) -> (u16, Value) {
    call(url, "gc", token, String::new()).await
}

async fn gc_runs(url: &str) -> f64 {
    let body = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("nixcache_gc_runs_total ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gc_requests_share_one_pass() {
    let fx = fixture();
    let upstream = StaticServer::start(&fx.cache).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &[
            "--admin-token",
            ADMIN,
            "--max-size",
            "1KiB",
            "--gc-grace",
            "1s",
        ],
    )
    .await;
    let request = json!({"paths": [fx.top()], "closure": true}).to_string();
    assert_eq!(post(&cache.url, Some(ADMIN), request).await.0, 200);

    assert_eq!(post_gc(&cache.url, None).await.0, 401);
    assert_eq!(gc_runs(&cache.url).await, 0.0, "a refused request ran GC");
    let (a, b) = tokio::join!(
        post_gc(&cache.url, Some(ADMIN)),
        post_gc(&cache.url, Some(ADMIN))
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1, b.1, "both requests got the same pass");
    assert_eq!(a.1["ran"], json!(true), "{a:?}");
    assert!(
        a.1["narinfos_evicted"].as_u64().is_some_and(|n| n > 0),
        "{a:?}"
    );
    assert_eq!(gc_runs(&cache.url).await, 1.0, "two requests, one pass");

    // Without a size limit there is nothing to collect down to.
    let plain = Nixcache::in_front_of(
        &tmp.path().join("plain"),
        &upstream.url,
        &fx.key,
        &["--admin-token", ADMIN],
    )
    .await;
    assert_eq!(post_gc(&plain.url, Some(ADMIN)).await.0, 400);
}
