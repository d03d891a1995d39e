//! Several upstreams: priority order (explicit or from `nix-cache-info`), failover, NAR fetched from
//! the upstream that served the narinfo.

mod common;

use std::time::{Duration, Instant};

use common::{fixture, FaultyUpstream, Fixture, Mode, Nixcache};

/// A cache directory with only a `nix-cache-info` announcing `priority`.
fn empty_cache(dir: &std::path::Path, priority: u32) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("nix-cache-info"),
        format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {priority}\n"),
    )
    .expect("write");
    dir.to_path_buf()
}

async fn wait_for_cache_info(upstreams: &[&FaultyUpstream]) {
    let start = Instant::now();
    while upstreams.iter().any(|u| u.hits("/nix-cache-info") == 0) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nix-cache-info never asked for"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The answer is applied right after the request.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_from_nix_cache_info_and_failover() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = empty_cache(&tmp.path().join("empty"), 10);
    // Listed first but without a Priority (so 50); the empty one announces 10 and is asked first.
    let good =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let lacking = FaultyUpstream::start(empty.clone(), empty, Mode::Normal).await;
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &[
            "--upstream",
            &good.url,
            "--upstream",
            &lacking.url,
            "--upstream-key",
            &fx.key,
        ],
    )
    .await;
    wait_for_cache_info(&[&good, &lacking]).await;

    let hash = Fixture::hash_of(fx.top());
    let r = reqwest::get(format!("{}/{hash}.narinfo", cache.url))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    let narinfo_path = format!("/{hash}.narinfo");
    assert_eq!(
        lacking.hits(&narinfo_path),
        1,
        "the higher-priority upstream was not asked first"
    );
    assert_eq!(good.hits(&narinfo_path), 1);

    // The NAR comes from the upstream that served the narinfo, at the URL it named.
    let text = r.text().await.expect("body");
    let r = reqwest::get(format!("{}/{}", cache.url, Fixture::nar_url(&text)))
        .await
        .expect("nar");
    assert_eq!(r.status(), 200);
    let upstream_url = format!("/{}", Fixture::nar_url(&fx.narinfo(fx.top())));
    assert_eq!(good.hits(&upstream_url), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_priority_wins_and_a_failing_upstream_is_skipped() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let good =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    // Asked first (priority 1), but it hangs: after its timeout the next one answers.
    let hanging =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let first = format!("{},priority=1", hanging.url);
    let second = format!("{},priority=2", good.url);
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &[
            "--upstream",
            &second,
            "--upstream",
            &first,
            "--upstream-key",
            &fx.key,
            "--upstream-timeout",
            "1s",
        ],
    )
    .await;
    hanging.set_mode(Mode::Hang);
    let hash = Fixture::hash_of(fx.top());
    let r = reqwest::get(format!("{}/{hash}.narinfo", cache.url))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    assert_eq!(hanging.hits(&format!("/{hash}.narinfo")), 1);
    assert_eq!(good.hits(&format!("/{hash}.narinfo")), 1);
    assert!(cache.logs().contains("timed out"), "{}", cache.logs());
}
