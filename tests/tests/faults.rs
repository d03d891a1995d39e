//! Upstreams that misbehave on purpose: nothing wrong is stored, every miss is a 404, shared
//! downloads happen once and survive their first client.

mod common;

use std::time::{Duration, Instant};

use common::{fetch_nar, fixture, FaultyUpstream, Fixture, Mode, Nixcache};
use futures_util::StreamExt;

struct Setup {
    _tmp: tempfile::TempDir,
    upstream: FaultyUpstream,
    cache: Nixcache,
    /// The big path's narinfo hash, upstream NAR path and nixcache NAR URL.
    hash: String,
    upstream_nar: String,
    nar_url: String,
    nar_bytes: Vec<u8>,
}

async fn setup(mode: Mode, extra: &[&str]) -> Setup {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream = FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), mode).await;
    let cache =
        Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, extra).await;
    let (path, rel) = fx.big();
    let nar_bytes = std::fs::read(fx.cache.join(&rel)).expect("nar");
    Setup {
        hash: Fixture::hash_of(&path).to_string(),
        upstream_nar: format!("/{rel}"),
        nar_url: String::new(),
        nar_bytes,
        _tmp: tmp,
        upstream,
        cache,
    }
}

impl Setup {
    /// GETs the narinfo through nixcache and remembers its NAR URL.
    async fn narinfo(&mut self) -> reqwest::StatusCode {
        let r = reqwest::get(format!("{}/{}.narinfo", self.cache.url, self.hash))
            .await
            .expect("narinfo");
        let status = r.status();
        if status == 200 {
            let text = r.text().await.expect("body");
            self.nar_url = format!("{}/{}", self.cache.url, Fixture::nar_url(&text));
        }
        status
    }

    /// GETs the NAR; `Ok(bytes)` only when the response arrived complete.
    async fn get_nar(&self) -> Result<Vec<u8>, String> {
        let r = reqwest::get(&self.nar_url)
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("status {}", r.status()));
        }
        r.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    fn stored_nars(&self) -> Vec<String> {
        let dir = self.cache.data_dir.join("store/nar");
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A download that went wrong leaves nothing behind, and the next request, once the upstream
/// is fixed, succeeds. A NAR that failed verification is answered 404 for `--nar-failure-ttl`
/// first, without another download.
async fn recovers_after(mode: Mode) {
    let mut s = setup(mode.clone(), &["--nar-failure-ttl", "2s"]).await;
    assert_eq!(s.narinfo().await, 200);
    let first = s.get_nar().await;
    assert!(first.is_err(), "a {mode:?} NAR was served as complete");
    assert!(
        s.stored_nars().is_empty(),
        "a {mode:?} NAR was stored: {:?}",
        s.stored_nars()
    );
    assert_eq!(s.upstream.hits(&s.upstream_nar), 1);

    s.upstream.set_mode(Mode::Normal);
    if mode == Mode::CorruptNar {
        assert_eq!(
            s.get_nar().await.err().as_deref(),
            Some("status 404 Not Found")
        );
        assert_eq!(s.upstream.hits(&s.upstream_nar), 1, "fetched again at once");
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let second = s.get_nar().await.expect("NAR after the upstream was fixed");
    assert!(second == s.nar_bytes, "wrong bytes after recovery");
    assert_eq!(s.upstream.hits(&s.upstream_nar), 2);
    assert_eq!(s.stored_nars().len(), 1);
    // Now it is a hit: served from storage, the upstream not asked again.
    assert!(s.get_nar().await.expect("hit") == s.nar_bytes);
    assert_eq!(s.upstream.hits(&s.upstream_nar), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_nar_is_not_stored() {
    recovers_after(Mode::CorruptNar).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_cut_midway_is_not_stored() {
    recovers_after(Mode::TruncateNar).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_narinfo_is_a_miss() {
    let mut s = setup(Mode::Unsigned, &[]).await;
    assert_eq!(s.narinfo().await, 404);
    assert!(
        s.cache.logs().contains("no signature by a trusted key"),
        "{}",
        s.cache.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn narinfo_signed_by_an_untrusted_key_is_a_miss() {
    let mut s = setup(Mode::UntrustedSig, &[]).await;
    assert_eq!(s.narinfo().await, 404);
    // Once the upstream serves properly signed narinfos (and the negative entry expired) it is found.
    let mut s = setup(Mode::UntrustedSig, &["--negative-ttl", "1s"]).await;
    assert_eq!(s.narinfo().await, 404);
    s.upstream.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.narinfo().await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_upstream_is_a_404_within_the_timeout() {
    let mut s = setup(Mode::Hang, &["--upstream-timeout", "2s"]).await;
    let start = Instant::now();
    assert_eq!(s.narinfo().await, 404);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "answered before the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} with a 2s timeout"
    );
    // The server is still healthy.
    let r = reqwest::get(format!("{}/healthz", s.cache.url))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn misses_are_remembered_briefly() {
    let s = setup(Mode::Normal, &["--negative-ttl", "1h"]).await;
    let missing = "0".repeat(32);
    for _ in 0..3 {
        let r = reqwest::get(format!("{}/{missing}.narinfo", s.cache.url))
            .await
            .expect("narinfo");
        assert_eq!(r.status(), 404);
    }
    assert_eq!(s.upstream.hits(&format!("/{missing}.narinfo")), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_one_download() {
    let mut s = setup(Mode::SlowNar(Duration::from_millis(20)), &[]).await;
    assert_eq!(s.narinfo().await, 200);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), s.nar_url.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.get(&url).send().await.expect("request");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body").to_vec()
        }));
    }
    for t in tasks {
        let body = t.await.expect("client");
        assert!(
            body == s.nar_bytes,
            "a client got different bytes ({} vs {})",
            body.len(),
            s.nar_bytes.len()
        );
    }
    assert_eq!(
        s.upstream.hits(&s.upstream_nar),
        1,
        "the upstream served the NAR more than once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn first_client_leaving_does_not_stop_the_download() {
    let mut s = setup(Mode::SlowNar(Duration::from_millis(20)), &[]).await;
    assert_eq!(s.narinfo().await, 200);
    {
        let r = reqwest::get(&s.nar_url).await.expect("request");
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let first = body.next().await.expect("a first chunk").expect("chunk");
        assert!(!first.is_empty());
        // The client goes away here, mid-download.
    }
    let start = Instant::now();
    while s.stored_nars().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "download never completed:\n{}",
            s.cache.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = s.get_nar().await.expect("stored NAR");
    assert!(body == s.nar_bytes);
    assert_eq!(s.upstream.hits(&s.upstream_nar), 1);
    assert!(s.cache.logs().contains("NAR cached"), "{}", s.cache.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_beyond_the_limit_wait_and_then_are_404() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--max-downloads", "1", "--download-queue-timeout", "1s"],
    )
    .await;
    let (big, big_rel) = fx.big();
    let others: Vec<&String> = fx.paths.iter().filter(|p| **p != big).collect();
    assert!(others.len() >= 2);
    // The one slot: the big NAR, over about eight seconds.
    upstream.set_mode(Mode::SlowNar(Duration::from_millis(120)));
    let first = {
        let url = cache.url.clone();
        let big = big.clone();
        tokio::spawn(async move { fetch_nar(&url, &big).await })
    };
    let start = Instant::now();
    while upstream.hits(&format!("/{big_rel}")) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Distinct NARs meanwhile: each waits for the slot, is given up after a second, and is a
    // 404; the upstream never hears of them.
    for p in &others {
        let asked = Instant::now();
        let (status, _) = fetch_nar(&cache.url, p).await;
        assert_eq!(status, 404, "{p}");
        assert!(asked.elapsed() >= Duration::from_millis(900));
        let rel = Fixture::nar_url(&fx.narinfo(p));
        assert_eq!(upstream.hits(&format!("/{rel}")), 0, "{p} was fetched");
    }
    let text = common::metrics(&cache.url).await;
    let get = |name: &str, labels: &[&str]| common::sample(&text, name, labels).unwrap_or(0.0);
    assert_eq!(
        get(
            "nixcache_nar_downloads_total",
            &[r#"result="queue_timeout""#]
        ),
        others.len() as f64,
        "{text}"
    );
    assert_eq!(get("nixcache_downloads_queued", &[]), 0.0);
    assert_eq!(get("nixcache_downloads_in_flight", &[]), 1.0);
    let (status, body) = first.await.expect("first client");
    assert_eq!(status, 200);
    assert!(body == std::fs::read(fx.cache.join(&big_rel)).expect("nar"));
    // The slot is free again.
    upstream.set_mode(Mode::Normal);
    let (status, _) = fetch_nar(&cache.url, others[0]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_that_would_eat_the_staging_floor_is_not_started() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    // A floor no disk here has: every download would go below it.
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--staging-min-free", "1000PiB"],
    )
    .await;
    let (big, big_rel) = fx.big();
    let (status, _) = fetch_nar(&cache.url, &big).await;
    assert_eq!(status, 404);
    assert_eq!(upstream.hits(&format!("/{big_rel}")), 0, "fetched anyway");
    assert!(
        cache.logs().contains("--staging-min-free keeps"),
        "{}",
        cache.logs()
    );
    let text = common::metrics(&cache.url).await;
    assert_eq!(
        common::sample(
            &text,
            "nixcache_nar_downloads_total",
            &[r#"result="no_space""#]
        ),
        Some(1.0),
        "{text}"
    );
}
