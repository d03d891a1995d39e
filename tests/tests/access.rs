//! A private cache: with `--read-token` every read needs the token (the real Nix client sends it
//! from a netrc file), the health endpoints and the public key stay open, `/metrics` only when
//! made public; the upload token reads too. Tokens and keys never reach the log.

mod common;

use std::path::Path;

use common::{fixture, store_contents, Fixture, NixClient, Nixcache, StaticServer};

const READ: &str = "read-token-0123456789abcdef";
const UPLOAD: &str = "upload-token-0123456789abcdef";

async fn status(url: &str, bearer: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("GET").status().as_u16()
}

/// `nix copy --from <cache> --to <store> <path>` trusting `key`, with an optional netrc file.
async fn fetch(cache: &str, store: &Path, path: &str, key: &str, netrc: Option<&Path>) -> bool {
    NixClient::new()
        .copy_closure_with_netrc(cache, store, path, key, netrc)
        .await
        .success
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_cache_serves_only_with_the_token() {
    let fx = fixture();
    let upstream = StaticServer::start(&fx.cache).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--read-token", READ, "--upload-token", UPLOAD],
    )
    .await;
    let hash = Fixture::hash_of(fx.top());
    let narinfo = format!("{}/{hash}.narinfo", cache.url);

    // Reads need a token; the answer says how to give one.
    let r = reqwest::get(&narinfo).await.expect("GET");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    assert_eq!(
        status(&format!("{}/nix-cache-info", cache.url), None).await,
        401
    );
    assert_eq!(status(&narinfo, Some("wrong-token-0123456789")).await, 401);
    assert_eq!(status(&narinfo, Some(READ)).await, 200);
    assert_eq!(
        status(&narinfo, Some(UPLOAD)).await,
        200,
        "the upload token reads too"
    );
    // Open: health, readiness, the public key. Metrics need the token unless made public.
    for open in ["/healthz", "/readyz", "/pubkey"] {
        assert_eq!(
            status(&format!("{}{open}", cache.url), None).await,
            200,
            "{open}"
        );
    }
    assert_eq!(status(&format!("{}/metrics", cache.url), None).await, 401);
    assert_eq!(
        status(&format!("{}/metrics", cache.url), Some(READ)).await,
        200
    );

    // The real Nix client, with and without the token in its netrc file.
    let key = cache.public_key().await;
    let store = tmp.path().join("without");
    assert!(!fetch(&cache.url, &store, fx.top(), &key, None).await);
    assert!(store_contents(&store).is_empty());
    let netrc = tmp.path().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1\nlogin nix\npassword {READ}\n"),
    )
    .expect("netrc");
    let store = tmp.path().join("with");
    assert!(
        fetch(&cache.url, &store, fx.top(), &key, Some(&netrc)).await,
        "{}",
        cache.logs()
    );
    assert_eq!(store_contents(&store).len(), fx.paths.len());

    // Public metrics, on request.
    let open = Nixcache::in_front_of(
        &tmp.path().join("data2"),
        &upstream.url,
        &fx.key,
        &["--read-token", READ, "--public-metrics"],
    )
    .await;
    assert_eq!(status(&format!("{}/metrics", open.url), None).await, 200);
    assert_eq!(
        status(&format!("{}/{hash}.narinfo", open.url), None).await,
        401
    );

    // Neither token nor the signing key is ever logged.
    let secret = std::fs::read_to_string(tmp.path().join("data/signing-key.sec")).expect("key");
    let secret_b64 = secret.trim().split(':').nth(1).expect("key material");
    for logs in [cache.logs(), open.logs()] {
        assert!(
            !logs.contains(READ) && !logs.contains(UPLOAD),
            "a token was logged"
        );
        assert!(!logs.contains(secret_b64), "the signing key was logged");
    }
}
