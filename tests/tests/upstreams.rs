//! Several upstreams: priority order (explicit or from `nix-cache-info`), failover, NAR fetched from
//! the upstream that served the narinfo, parallel and sequential lookups, and a failing upstream
//! skipped until it comes back.

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

/// `URL,priority=N`.
fn at(u: &FaultyUpstream, priority: u32) -> String {
    format!("{},priority={priority}", u.url)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_upstreams_of_different_latencies_are_asked_at_once() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = empty_cache(&tmp.path().join("empty"), 10);
    let (lacking_pause, slow_pause) = (Duration::from_secs(1), Duration::from_secs(2));
    // The best priority lacks the paths; the next has them but answers slowly; the worst answers
    // at once.
    let lacking =
        FaultyUpstream::start(empty.clone(), empty, Mode::SlowNarinfo(lacking_pause)).await;
    let slow = FaultyUpstream::start(
        fx.cache.clone(),
        fx.cache_untrusted.clone(),
        Mode::SlowNarinfo(slow_pause),
    )
    .await;
    let fast =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let start = |dir: &str, lookup: &'static str| {
        let (l, s, f) = (at(&lacking, 10), at(&slow, 20), at(&fast, 30));
        let data = tmp.path().join(dir);
        let key = fx.key.clone();
        async move {
            Nixcache::start(
                &data,
                &[
                    "--upstream",
                    &f,
                    "--upstream",
                    &s,
                    "--upstream",
                    &l,
                    "--upstream-key",
                    &key,
                    "--upstream-timeout",
                    "5s",
                    "--upstream-lookup",
                    lookup,
                ],
            )
            .await
        }
    };

    let cache = start("parallel", "parallel").await;
    let path = fx.top();
    let narinfo = format!("/{}.narinfo", Fixture::hash_of(path));
    let began = Instant::now();
    let r = reqwest::get(format!("{}{narinfo}", cache.url))
        .await
        .expect("narinfo");
    let parallel = began.elapsed();
    assert_eq!(r.status(), 200, "{}", cache.logs());
    let asked: Vec<Instant> = [&lacking, &slow, &fast]
        .iter()
        .map(|u| u.first_hit(&narinfo).expect("every upstream asked"))
        .collect();
    let spread = *asked.iter().max().expect("max") - *asked.iter().min().expect("min");
    assert!(
        spread < lacking_pause,
        "all three asked before the first answered: {spread:?} apart"
    );
    // The better priority's hit, though the worse one answered first: the NAR comes from it.
    let text = r.text().await.expect("body");
    let nar = Fixture::nar_url(&text);
    let r = reqwest::get(format!("{}/{nar}", cache.url))
        .await
        .expect("nar");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("nar body");
    let upstream_nar = format!("/{}", Fixture::nar_url(&fx.narinfo(path)));
    assert_eq!(slow.hits(&upstream_nar), 1, "{}", cache.logs());
    assert_eq!(fast.hits(&upstream_nar), 0);
    drop(cache);

    // In sequence: each asked once the one before has answered; the worst not at all.
    let cache = start("sequential", "sequential").await;
    let path = &fx.paths[1];
    let narinfo = format!("/{}.narinfo", Fixture::hash_of(path));
    let began = Instant::now();
    let r = reqwest::get(format!("{}{narinfo}", cache.url))
        .await
        .expect("narinfo");
    let sequential = began.elapsed();
    assert_eq!(r.status(), 200, "{}", cache.logs());
    let after =
        slow.first_hit(&narinfo).expect("asked") - lacking.first_hit(&narinfo).expect("asked");
    assert!(
        after >= lacking_pause,
        "asked only after the better one: {after:?}"
    );
    assert_eq!(
        fast.hits(&narinfo),
        0,
        "a hit came before the worst upstream"
    );
    println!(
        "a miss over upstreams answering in {lacking_pause:?} (404), {slow_pause:?} (hit) and at once \
         (hit): parallel {:.2} s, sequential {:.2} s",
        parallel.as_secs_f64(),
        sequential.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_goes_down_is_skipped_until_it_comes_back() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let flaky =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let good =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &[
            "--upstream",
            &at(&flaky, 10),
            "--upstream",
            &at(&good, 20),
            "--upstream-key",
            &fx.key,
            "--upstream-failure-threshold",
            "2",
            "--upstream-backoff",
            "2s",
        ],
    )
    .await;
    let label = format!("upstream=\"{}\"", flaky.url.trim_start_matches("http://"));
    let up = || async {
        common::sample(
            &common::metrics(&cache.url).await,
            "nixcache_upstream_up",
            &[&label],
        )
    };
    assert_eq!(up().await, Some(1.0));

    flaky.set_mode(Mode::Down);
    for missing in [
        "p404n8pan3pvrll7pci95yg83idrvkd0",
        "p404n8pan3pvrll7pci95yg83idrvkd1",
    ] {
        let r = reqwest::get(format!("{}/{missing}.narinfo", cache.url))
            .await
            .expect("narinfo");
        assert_eq!(r.status(), 404, "a miss, not an error");
    }
    assert_eq!(up().await, Some(0.0), "{}", cache.logs());
    assert!(
        cache.logs().contains("upstream failing"),
        "{}",
        cache.logs()
    );

    // Skipped: the next miss is answered by the other upstream without asking it.
    let first = format!("/{}.narinfo", Fixture::hash_of(fx.top()));
    let r = reqwest::get(format!("{}{first}", cache.url))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    assert_eq!(flaky.hits(&first), 0, "asked while skipped");
    assert_eq!(good.hits(&first), 1);

    // Back: after the backoff one request tries it, and it is asked again.
    flaky.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let second = format!("/{}.narinfo", Fixture::hash_of(&fx.paths[1]));
    let r = reqwest::get(format!("{}{second}", cache.url))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    assert_eq!(flaky.hits(&second), 1, "tried again after the backoff");
    assert_eq!(up().await, Some(1.0), "{}", cache.logs());
    let text = common::metrics(&cache.url).await;
    for state in ["open", "half_open", "closed"] {
        let s = format!("state=\"{state}\"");
        assert_eq!(
            common::sample(
                &text,
                "nixcache_upstream_circuit_changes_total",
                &[&label, &s]
            ),
            Some(1.0),
            "{state}"
        );
    }
    assert!(cache.logs().contains("answers again"), "{}", cache.logs());
}

/// Writes `contents` to `path` as a rotated Kubernetes Secret does: a new file put in its place.
fn replace_file(path: &std::path::Path, contents: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_demands_a_token_gets_it_and_no_other_host_does() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let private =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let elsewhere =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let first_token = "first-token-0123456789abcdef";
    private.require_auth(Some(&format!("Bearer {first_token}")));
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{first_token}\n")).expect("write");
    let narinfo = |path: &str| format!("/{}.narinfo", Fixture::hash_of(path));

    // Without credentials: refused upstream, a miss here.
    let anonymous = Nixcache::start(
        &tmp.path().join("anonymous"),
        &["--upstream", &private.url, "--upstream-key", &fx.key],
    )
    .await;
    let r = reqwest::get(format!("{}{}", anonymous.url, narinfo(fx.top())))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 404);
    drop(anonymous);

    let spec = format!(
        "{},cross-origin-redirects,bearer-token-file={}",
        private.url,
        token_file.display()
    );
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &["--upstream", &spec, "--upstream-key", &fx.key],
    )
    .await;
    let r = reqwest::get(format!("{}{}", cache.url, narinfo(fx.top())))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());

    // The NAR's redirect to another host is followed without the token.
    private.set_mode(Mode::Redirect(elsewhere.url.clone()));
    let text = r.text().await.expect("body");
    let r = reqwest::get(format!("{}/{}", cache.url, Fixture::nar_url(&text)))
        .await
        .expect("nar");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    r.bytes().await.expect("nar body");
    let moved = format!("/r/{}", Fixture::nar_url(&fx.narinfo(fx.top())));
    assert_eq!(elsewhere.hits(&moved), 1, "{}", cache.logs());
    assert_eq!(
        elsewhere.authorizations(),
        Vec::<String>::new(),
        "the token went elsewhere"
    );
    private.set_mode(Mode::Normal);

    // A rotated token is read again, without a restart.
    let second_token = "second-token-0123456789abcdef-rotated";
    replace_file(&token_file, &format!("{second_token}\n"));
    private.require_auth(Some(&format!("Bearer {second_token}")));
    let r = reqwest::get(format!("{}{}", cache.url, narinfo(&fx.paths[1])))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    for secret in [first_token, second_token] {
        assert!(!cache.logs().contains(secret), "a token in the log");
    }
    drop(cache);

    // HTTP Basic from a netrc file, as Nix reads one, for the upstream's host.
    let netrc = tmp.path().join("netrc");
    std::fs::write(
        &netrc,
        "machine other.example login x password y\nmachine 127.0.0.1 login nix password pw-0123\n",
    )
    .expect("write");
    private.require_auth(Some("Basic bml4OnB3LTAxMjM="));
    let cache = Nixcache::start(
        &tmp.path().join("netrc-data"),
        &[
            "--upstream",
            &private.url,
            "--upstream-key",
            &fx.key,
            "--upstream-netrc-file",
            &netrc.display().to_string(),
        ],
    )
    .await;
    let r = reqwest::get(format!("{}{}", cache.url, narinfo(fx.top())))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "{}", cache.logs());
    assert!(!cache.logs().contains("pw-0123"));
}
