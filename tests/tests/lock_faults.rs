//! The lock service failing under a download that holds its lock: a stall of a majority of the
//! Redis masters longer than one extension (but shorter than the TTL) must not cost the download.

mod common;

use std::time::{Duration, Instant};

use common::{
    fetch_nar, fixture, get_text, metrics, sample, FaultyUpstream, Fixture, Mode, Nixcache,
};
use nixcache_tests::redis::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_during_a_long_download_does_not_lose_it() {
    let fx = fixture();
    let (big, rel) = fx.big();
    let want = std::fs::read(fx.cache.join(&rel)).expect("nar");
    // About ten seconds of download, in 64 KiB pieces.
    let pieces = want.len().div_ceil(64 * 1024) as u32;
    let pause = Duration::from_secs(10) / pieces.max(1);
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let redis = [Redis::start(), Redis::start(), Redis::start()];
    let tmp = tempfile::tempdir().expect("tempdir");
    let urls: Vec<String> = redis.iter().map(Redis::url).collect();
    let mut args = vec!["--lock-ttl", "6s"];
    for u in &urls {
        args.extend(["--redis", u.as_str()]);
    }
    let cache =
        Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, &args).await;

    let hash = Fixture::hash_of(&big);
    let (_, text) = get_text(&format!("{}/{hash}.narinfo", cache.url)).await;
    let nar_url = format!("{}/{}", cache.url, Fixture::nar_url(&text));
    upstream.set_mode(Mode::SlowNar(pause));
    let started = Instant::now();
    let download = tokio::spawn(async move {
        let r = reqwest::get(nar_url).await.expect("nar");
        assert_eq!(r.status(), 200);
        r.bytes().await.map(|b| b.to_vec())
    });

    // The lock is extended every 2 s. Two of three masters freeze from 3 s to 6 s: the
    // extensions at about 4 s and 5.5 s fail; the one after they thaw succeeds, well within
    // the TTL since the last good one (2 s + 6 s).
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    redis[0].pause();
    redis[1].pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis[0].unpause();
    redis[1].unpause();
    let body = download
        .await
        .expect("download task")
        .expect("the download completed");
    assert!(
        started.elapsed() > Duration::from_secs(7),
        "the download ended before the masters thawed: the test proves nothing"
    );
    assert_eq!(body.len(), want.len());
    assert!(body == want, "wrong bytes");
    assert_eq!(
        upstream.hits(&format!("/{rel}")),
        1,
        "fetched more than once"
    );

    let logs = cache.logs();
    assert!(logs.contains("could not extend a lock"), "{logs}");
    assert!(logs.contains("NAR cached"), "{logs}");
    let text = metrics(&cache.url).await;
    let ext = |result: &str| {
        sample(
            &text,
            "nixcache_lock_extensions_total",
            &[&format!(r#"result="{result}""#)],
        )
        .unwrap_or(0.0)
    };
    assert!(ext("failed") >= 1.0, "{text}");
    assert_eq!(ext("lost"), 0.0, "{text}");
    // Committed: served from storage now, with no further upstream fetch.
    let (status, again) = fetch_nar(&cache.url, &big).await;
    assert_eq!(status, 200);
    assert!(again == want);
    assert_eq!(upstream.hits(&format!("/{rel}")), 1);
}
