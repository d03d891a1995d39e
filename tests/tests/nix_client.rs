//! The real Nix client, end to end: a real signed upstream cache made by Nix, served by a static
//! HTTP server, with nixcache in front of it.

mod common;

use common::{fixture, store_contents, Fixture, NixClient, Nixcache, StaticServer};

fn names(paths: &[String]) -> Vec<String> {
    let mut v: Vec<String> = paths
        .iter()
        .map(|p| p.trim_start_matches("/nix/store/").to_string())
        .collect();
    v.sort();
    v
}

/// Fetches the fixture's closure from `cache` into a fresh store, trusting only `key`, and checks
/// every path arrived.
async fn assert_fetches_closure(cache: &Nixcache, store: &std::path::Path, key: &str, when: &str) {
    let fx = fixture();
    let out = NixClient::new()
        .copy_closure(&cache.url, store, fx.top(), key)
        .await;
    assert!(
        out.success,
        "nix copy {when} failed:\n{}\nnixcache log:\n{}",
        out.stderr,
        cache.logs()
    );
    assert_eq!(store_contents(store), names(&fx.paths));
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_fetches_a_closure_trusting_only_nixcache() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache = Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, &[]).await;
    let our_key = cache.public_key().await;
    assert!(our_key.starts_with("nixcache-1:"), "{our_key}");

    // Trusting only nixcache's key, with signatures required: the whole closure arrives.
    assert_fetches_closure(
        &cache,
        &tmp.path().join("store-1"),
        &our_key,
        "through nixcache",
    )
    .await;

    // Trusting another key instead: Nix refuses.
    let store = tmp.path().join("store-2");
    let out = NixClient::new()
        .copy_closure(&cache.url, &store, fx.top(), &fx.untrusted_key)
        .await;
    assert!(
        !out.success,
        "nix accepted paths without a trusted signature:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("signature"),
        "unexpected failure:\n{}",
        out.stderr
    );
    assert!(store_contents(&store)
        .iter()
        .all(|p| !names(&fx.paths).contains(p)));

    // With the upstream gone, a fresh store still gets everything from nixcache.
    drop(upstream);
    assert_fetches_closure(
        &cache,
        &tmp.path().join("store-3"),
        &our_key,
        "after upstream stopped",
    )
    .await;

    // And so does a restarted nixcache whose upstream is unreachable from the start.
    let data = cache.data_dir.clone();
    cache.kill();
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let cache = Nixcache::in_front_of(&data, &dead, &fx.key, &["--upstream-timeout", "2s"]).await;
    assert_eq!(
        cache.public_key().await,
        our_key,
        "the generated key is kept across restarts"
    );
    assert_fetches_closure(
        &cache,
        &tmp.path().join("store-4"),
        &our_key,
        "from restarted nixcache",
    )
    .await;
    // What it does not have is a plain 404, not an error.
    let r = reqwest::get(format!("{}/{}.narinfo", cache.url, "0".repeat(32)))
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_from_nixcache_keygen_is_trusted_by_nix() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let secret = tmp.path().join("key.sec");
    let public = common::keygen("ci-cache-1", &secret);
    assert!(public.starts_with("ci-cache-1:"));

    let upstream = StaticServer::start(&fx.cache).await;
    let secret_arg = secret.to_string_lossy().into_owned();
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--signing-key-file", &secret_arg],
    )
    .await;
    assert_eq!(cache.public_key().await, public);
    assert!(
        !cache
            .logs()
            .contains(&std::fs::read_to_string(&secret).expect("secret")[11..]),
        "secret key in the log"
    );

    assert_fetches_closure(
        &cache,
        &tmp.path().join("store"),
        &public,
        "with a keygen key",
    )
    .await;

    // And the other way round: nixcache serves what Nix itself signed, keeping that signature.
    let narinfo = reqwest::get(format!(
        "{}/{}.narinfo",
        cache.url,
        Fixture::hash_of(fx.top())
    ))
    .await
    .expect("narinfo")
    .text()
    .await
    .expect("body");
    let upstream_sig = fx
        .narinfo(fx.top())
        .lines()
        .find(|l| l.starts_with("Sig:"))
        .expect("sig")
        .to_string();
    assert!(
        narinfo.contains(&upstream_sig),
        "upstream signature dropped:\n{narinfo}"
    );
    assert!(narinfo.contains("\nSig: ci-cache-1:"), "{narinfo}");
}
