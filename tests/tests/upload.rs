//! Uploads with the real Nix client: `nix copy --to http://…` with the token in a netrc file
//! pushes a closure that a fresh store then fetches back through nixcache with signatures
//! required and only nixcache's key trusted; without the token nothing is stored. And uploads
//! that contradict themselves are refused.

mod common;

use std::path::Path;

use common::{fixture, store_contents, Fixture, NixClient, Nixcache};

const TOKEN: &str = "upload-token-0123456789abcdef";

/// `nix copy --to <url> <path>` from the local store, with an optional netrc file.
async fn push(url: &str, path: &str, netrc: Option<&Path>) -> (bool, String) {
    let out = NixClient::new().push(url, path, netrc).await;
    (out.success, out.stderr)
}

fn netrc(dir: &Path, password: &str) -> std::path::PathBuf {
    let path = dir.join("netrc");
    std::fs::write(
        &path,
        format!("machine 127.0.0.1\nlogin nix\npassword {password}\n"),
    )
    .expect("netrc");
    path
}

fn stored_nars(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("store/nar"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn status_of_health(base: &str) -> u16 {
    status(&format!("{base}/healthz")).await
}

async fn status(url: &str) -> u16 {
    reqwest::get(url).await.expect("GET").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copy_pushes_with_the_token_and_a_fresh_store_fetches_it_back() {
    let fx = fixture();
    let data = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::start(
        data.path(),
        &["--upstream", "http://127.0.0.1:1", "--upload-token", TOKEN],
    )
    .await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let top_narinfo = format!("{}/{}.narinfo", cache.url, Fixture::hash_of(fx.top()));

    // Without the token, and with a wrong one: the push fails and nothing is stored.
    let (ok, _) = push(&cache.url, fx.top(), None).await;
    assert!(!ok, "a push without a token succeeded");
    let wrong = netrc(scratch.path(), "not-the-token-at-all");
    let (ok, _) = push(&cache.url, fx.top(), Some(&wrong)).await;
    assert!(!ok, "a push with a wrong token succeeded");
    assert_eq!(status(&top_narinfo).await, 404);
    assert_eq!(stored_nars(data.path()), 0, "a refused push stored a NAR");

    // With the token from a netrc file, as Nix users configure it.
    let good = netrc(scratch.path(), TOKEN);
    let (ok, stderr) = push(&cache.url, fx.top(), Some(&good)).await;
    assert!(ok, "nix copy --to failed:\n{stderr}\n{}", cache.logs());
    assert_eq!(stored_nars(data.path()), fx.paths.len());

    // A fresh store fetches the closure back, trusting only nixcache's key.
    let store = scratch.path().join("store");
    let out = NixClient::new()
        .copy_closure(&cache.url, &store, fx.top(), &cache.public_key().await)
        .await;
    assert!(
        out.success,
        "fetching the pushed closure failed:\n{}",
        out.stderr
    );
    let mut want: Vec<String> = fx
        .paths
        .iter()
        .map(|p| p.trim_start_matches("/nix/store/").to_string())
        .collect();
    want.sort();
    assert_eq!(store_contents(&store), want);
    // The served narinfo carries nixcache's signature.
    let body = reqwest::get(&top_narinfo)
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    let key_name = cache.public_key().await;
    let key_name = key_name.split(':').next().expect("key name");
    assert!(body.contains(&format!("Sig: {key_name}:")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_contradict_themselves_are_refused() {
    let fx = fixture();
    let data = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::start(
        data.path(),
        &["--upstream", "http://127.0.0.1:1", "--upload-token", TOKEN],
    )
    .await;
    let client = reqwest::Client::new();
    let put = |path: String, body: Vec<u8>, token: Option<&str>| {
        let mut req = client.put(format!("{}{path}", cache.url)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.expect("PUT").status().as_u16() }
    };

    // A real NAR and narinfo from the fixture's cache.
    let hash = Fixture::hash_of(fx.top());
    let narinfo =
        std::fs::read_to_string(fx.cache.join(format!("{hash}.narinfo"))).expect("narinfo");
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL")
        .to_string();
    let nar = std::fs::read(fx.cache.join(&url)).expect("nar");

    assert_eq!(put(format!("/{url}"), nar.clone(), None).await, 401);
    assert_eq!(
        put(
            format!("/{url}"),
            nar.clone(),
            Some("wrong-token-0123456789")
        )
        .await,
        401
    );
    // The narinfo before its NAR: refused.
    assert_eq!(
        put(
            format!("/{hash}.narinfo"),
            narinfo.clone().into_bytes(),
            Some(TOKEN)
        )
        .await,
        400
    );
    // NAR bytes that do not hash to the name: refused, not stored.
    let mut corrupt = nar.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(put(format!("/{url}"), corrupt, Some(TOKEN)).await, 400);
    assert_eq!(stored_nars(data.path()), 0);
    // The real NAR, then a narinfo that lies about it (NarSize), then the true one.
    assert_eq!(put(format!("/{url}"), nar.clone(), Some(TOKEN)).await, 201);
    // The same NAR again: accepted, and its staging copy removed rather than left behind.
    assert_eq!(put(format!("/{url}"), nar.clone(), Some(TOKEN)).await, 201);
    assert_eq!(put(format!("/{url}"), nar.clone(), Some(TOKEN)).await, 201);
    assert_eq!(stored_nars(data.path()), 1);
    let staging: Vec<_> = std::fs::read_dir(data.path().join("tmp"))
        .expect("staging dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(staging.is_empty(), "staging files left: {staging:?}");
    let nar_size: u64 = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("NarSize: "))
        .and_then(|v| v.parse().ok())
        .expect("NarSize");
    let lying = narinfo.replace(
        &format!("NarSize: {nar_size}"),
        &format!("NarSize: {}", nar_size + 8),
    );
    assert_eq!(
        put(format!("/{hash}.narinfo"), lying.into_bytes(), Some(TOKEN)).await,
        400
    );
    assert_eq!(status(&format!("{}/{hash}.narinfo", cache.url)).await, 404);
    // Under another path's name: refused.
    let other = Fixture::hash_of(&fx.paths[1]);
    assert_eq!(
        put(
            format!("/{other}.narinfo"),
            narinfo.clone().into_bytes(),
            Some(TOKEN)
        )
        .await,
        400
    );
    // Past the size limit of a narinfo (1 MiB): 413.
    assert_eq!(
        put(format!("/{hash}.narinfo"), vec![b'a'; 2 << 20], Some(TOKEN)).await,
        413
    );
    // Not a narinfo at all.
    assert_eq!(
        put(format!("/{hash}.narinfo"), b"hello".to_vec(), Some(TOKEN)).await,
        400
    );
    assert_eq!(
        put(
            format!("/{hash}.narinfo"),
            narinfo.clone().into_bytes(),
            Some(TOKEN)
        )
        .await,
        201
    );
    assert_eq!(status(&format!("{}/{hash}.narinfo", cache.url)).await, 200);

    // Listings and logs are kept and served back.
    assert_eq!(
        put(
            format!("/{hash}.ls"),
            b"{\"version\":1}".to_vec(),
            Some(TOKEN)
        )
        .await,
        201
    );
    assert_eq!(status(&format!("{}/{hash}.ls", cache.url)).await, 200);
    assert_eq!(
        put(
            "/log/abc-hello-2.12.drv".into(),
            b"building\n".to_vec(),
            Some(TOKEN)
        )
        .await,
        201
    );
    let log = reqwest::get(format!("{}/log/abc-hello-2.12.drv", cache.url))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert_eq!(log, "building\n");
    assert_eq!(
        put("/log/..%2f..%2fetc".into(), b"x".to_vec(), Some(TOKEN)).await,
        400
    );
    assert_eq!(
        put(
            "/nix-cache-info".into(),
            b"StoreDir: /nix/store\n".to_vec(),
            Some(TOKEN)
        )
        .await,
        204
    );

    // A cache without a token accepts no upload at all.
    let closed_data = tempfile::tempdir().expect("tempdir");
    let closed = Nixcache::start(closed_data.path(), &["--upstream", "http://127.0.0.1:1"]).await;
    let status = client
        .put(format!("{}/{url}", closed.url))
        .bearer_auth(TOKEN)
        .body(nar)
        .send()
        .await
        .expect("PUT")
        .status()
        .as_u16();
    assert_eq!(status, 405);
    // A NAR past --max-upload-size: 413, nothing stored.
    let small_data = tempfile::tempdir().expect("tempdir");
    let small = Nixcache::start(
        small_data.path(),
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--upload-token",
            TOKEN,
            "--max-upload-size",
            "1KiB",
        ],
    )
    .await;
    let (big_url, big_nar) = fx
        .paths
        .iter()
        .map(|p| {
            let info = fx.narinfo(p);
            let url = Fixture::nar_url(&info).to_string();
            let bytes = std::fs::read(fx.cache.join(&url)).expect("nar");
            (url, bytes)
        })
        .max_by_key(|(_, b)| b.len())
        .expect("a NAR");
    assert!(big_nar.len() > 1024);
    let status = client
        .put(format!("{}/{big_url}", small.url))
        .bearer_auth(TOKEN)
        .body(big_nar)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(413);
    assert_eq!(status, 413);
    assert_eq!(stored_nars(small_data.path()), 0);
    // Build logs, realisations and build traces are held in memory: a limit of their own, far
    // below the NAR limit. The default cache accepts 8 GiB NARs but not a 17 MiB log.
    let log_put = |base: String, body: Vec<u8>| {
        let req = client
            .put(format!(
                "{base}/log/5sj6fdfym58sdaf3r5p87v4l8sj2zlvn-hello-2.10.drv"
            ))
            .bearer_auth(TOKEN)
            .body(body);
        async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(413) }
    };
    assert_eq!(log_put(cache.url.clone(), vec![b'x'; 17 << 20]).await, 413);
    assert_eq!(log_put(cache.url.clone(), vec![b'x'; 1 << 20]).await, 201);

    // Healthy after all of it, and the token never reached the log.
    assert_eq!(status_of_health(&cache.url).await, 200);
    assert!(!cache.logs().contains(TOKEN));
    assert!(!cache.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trusted_upload_keys_only_narinfos_they_signed_are_accepted() {
    let fx = fixture();
    let data = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::start(
        data.path(),
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--upload-token",
            TOKEN,
            "--upload-trusted-key",
            &fx.key,
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let put = |path: String, body: Vec<u8>| {
        let req = client
            .put(format!("{}{path}", cache.url))
            .bearer_auth(TOKEN)
            .body(body);
        async move { req.send().await.expect("PUT").status().as_u16() }
    };
    let hash = Fixture::hash_of(fx.top());
    // The same path, signed by a key the cache does not trust for uploads, then by one it does.
    let untrusted = std::fs::read_to_string(fx.cache_untrusted.join(format!("{hash}.narinfo")))
        .expect("narinfo");
    let trusted =
        std::fs::read_to_string(fx.cache.join(format!("{hash}.narinfo"))).expect("narinfo");
    let url = Fixture::nar_url(&trusted);
    let nar = std::fs::read(fx.cache.join(&url)).expect("nar");
    assert_eq!(put(format!("/{url}"), nar).await, 201);
    assert_eq!(
        put(format!("/{hash}.narinfo"), untrusted.into_bytes()).await,
        403
    );
    assert_eq!(status(&format!("{}/{hash}.narinfo", cache.url)).await, 404);
    assert_eq!(
        put(format!("/{hash}.narinfo"), trusted.into_bytes()).await,
        201
    );
    let served = reqwest::get(format!("{}/{hash}.narinfo", cache.url))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    // The uploader's signature is kept and nixcache's own added.
    let signer = |key: &str| format!("Sig: {}:", key.split(':').next().unwrap_or_default());
    assert!(served.contains(&signer(&fx.key)), "{served}");
    assert!(
        served.contains(&signer(&cache.public_key().await)),
        "{served}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cannot_replace_a_held_narinfo_with_other_contents() {
    let fx = fixture();
    let upstream = common::StaticServer::start(&fx.cache).await;
    let run = |dir: std::path::PathBuf, extra: &'static [&'static str]| {
        let url = upstream.url.clone();
        async move {
            let mut args = vec!["--upload-token", TOKEN];
            args.extend_from_slice(extra);
            Nixcache::in_front_of(&dir, &url, &fx.key, &args).await
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = run(tmp.path().join("a"), &[]).await;
    let client = reqwest::Client::new();
    // A path held from the upstream, NAR included.
    let dep = fx
        .paths
        .iter()
        .find(|p| fx.narinfo(p).contains("\nReferences: \n"))
        .expect("a path without references");
    let other = fx.paths.iter().find(|p| *p != dep).expect("another path");
    let hash = Fixture::hash_of(dep);
    let held = common::get_text(&format!("{}/{hash}.narinfo", cache.url))
        .await
        .1;
    let nar = reqwest::get(format!("{}/{}", cache.url, Fixture::nar_url(&held)))
        .await
        .expect("nar");
    assert_eq!(nar.status(), 200);
    nar.bytes().await.expect("nar body");

    let put = |base: String, body: String| {
        let req = client
            .put(format!("{base}/{hash}.narinfo"))
            .bearer_auth(TOKEN)
            .body(body);
        async move { req.send().await.expect("PUT").status().as_u16() }
    };
    // The same contents again: fine.
    assert_eq!(put(cache.url.clone(), held.clone()).await, 201);
    // Other references (another fingerprint) for the same path and NAR: refused.
    let other_base = other.trim_start_matches("/nix/store/");
    let replaced = held.replace("References: \n", &format!("References: {other_base}\n"));
    assert_ne!(replaced, held);
    assert_eq!(put(cache.url.clone(), replaced.clone()).await, 409);
    let now = common::get_text(&format!("{}/{hash}.narinfo", cache.url))
        .await
        .1;
    assert_eq!(now, held, "the held narinfo changed");
    assert!(cache.logs().contains("upload refused"), "{}", cache.logs());
    let text = common::metrics(&cache.url).await;
    assert_eq!(
        common::sample(
            &text,
            "nixcache_refused_total",
            &[r#"source="upload""#, r#"reason="replaces""#]
        ),
        Some(1.0),
        "{text}"
    );

    // With --upload-replace the same upload is taken.
    let open = run(tmp.path().join("b"), &["--upload-replace"]).await;
    let held_b = common::get_text(&format!("{}/{hash}.narinfo", open.url))
        .await
        .1;
    let nar = reqwest::get(format!("{}/{}", open.url, Fixture::nar_url(&held_b)))
        .await
        .expect("nar");
    nar.bytes().await.expect("nar body");
    let replaced_b = held_b.replace("References: \n", &format!("References: {other_base}\n"));
    assert_eq!(put(open.url.clone(), replaced_b).await, 201);
    let now = common::get_text(&format!("{}/{hash}.narinfo", open.url))
        .await
        .1;
    assert!(now.contains(other_base), "{now}");
}
