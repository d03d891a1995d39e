//! Several replicas sharing PostgreSQL, S3 (SeaweedFS) and three Redis masters: a fleet of clients
//! fetches each upstream path exactly once, and the real Nix client trusts what any replica serves.

mod common;

use std::time::Duration;

use common::{
    fixture, store_contents, Cluster, FaultyUpstream, Fixture, Mode, NixClient, Nixcache,
};
use nixcache_tests::seaweedfs;

#[tokio::test(flavor = "multi_thread")]
async fn thirty_clients_over_three_replicas_fetch_each_path_once() {
    let fx = fixture();
    let cluster = Cluster::start();
    let upstream = FaultyUpstream::start(
        fx.cache.clone(),
        fx.cache_untrusted.clone(),
        Mode::SlowNar(Duration::from_millis(5)),
    )
    .await;
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(cluster.replica(n, &upstream.url, &fx.key, &[]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let hashes: Vec<String> = fx
        .paths
        .iter()
        .map(|p| Fixture::hash_of(p).to_string())
        .collect();

    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for c in 0..30 {
        let (client, base, hashes) = (client.clone(), urls[c % 3].clone(), hashes.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for h in &hashes {
                let r = client
                    .get(format!("{base}/{h}.narinfo"))
                    .send()
                    .await
                    .expect("narinfo");
                assert_eq!(r.status(), 200, "narinfo {h} from {base}");
                let text = r.text().await.expect("body");
                let url = Fixture::nar_url(&text);
                let r = client
                    .get(format!("{base}/{url}"))
                    .send()
                    .await
                    .expect("nar");
                assert_eq!(r.status(), 200, "{url} from {base}");
                got.push((h.clone(), r.bytes().await.expect("nar body").to_vec()));
            }
            got
        }));
    }
    for t in tasks {
        for (h, bytes) in t.await.expect("client") {
            let path = fx
                .paths
                .iter()
                .find(|p| Fixture::hash_of(p) == h)
                .expect("path");
            let want = std::fs::read(fx.cache.join(Fixture::nar_url(&fx.narinfo(path))))
                .expect("upstream nar");
            assert!(bytes == want, "wrong NAR bytes for {h}");
        }
    }
    for p in &fx.paths {
        let h = Fixture::hash_of(p);
        assert_eq!(
            upstream.hits(&format!("/{h}.narinfo")),
            1,
            "narinfo {h} fetched more than once"
        );
        let nar = format!("/{}", Fixture::nar_url(&fx.narinfo(p)));
        assert_eq!(
            upstream.hits(&nar),
            1,
            "NAR {nar} fetched more than once:\n{}",
            replicas
                .iter()
                .map(|r| r.logs())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }

    // Credentials and the signing key never reach a log.
    let secret = std::fs::read_to_string(&cluster.key_file).expect("key file");
    let secret = secret
        .trim()
        .split(':')
        .nth(1)
        .expect("key material")
        .to_string();
    for r in &replicas {
        let logs = r.logs();
        assert!(
            !logs.contains(seaweedfs::SECRET_KEY),
            "the S3 secret key was logged"
        );
        assert!(!logs.contains(&secret), "the signing key was logged");
    }

    // The real Nix client, pointed at one replica, trusting only the cluster's key.
    let key = replicas[1].public_key().await;
    assert!(key.starts_with("cluster-1:"));
    let store = cluster.tmp.path().join("store");
    let out = NixClient::new()
        .copy_closure(&urls[1], &store, fx.top(), &key)
        .await;
    assert!(
        out.success,
        "nix copy failed:\n{}\n{}",
        out.stderr,
        replicas[1].logs()
    );
    assert_eq!(store_contents(&store).len(), fx.paths.len());
}

/// Two replicas of a fresh cluster in front of an upstream that sends NARs in 64 KiB pieces with a
/// pause between them, and the fixture's largest NAR: its path at the upstream, its bytes, and its
/// URL at nixcache (the narinfo already fetched through the first replica).
struct SlowSetup {
    cluster: Cluster,
    upstream: FaultyUpstream,
    a: Nixcache,
    b: Nixcache,
    rel: String,
    want: Vec<u8>,
    nar: String,
}

async fn slow_setup(pause: Duration, extra: &[&str]) -> SlowSetup {
    let fx = fixture();
    let cluster = Cluster::start();
    let upstream = FaultyUpstream::start(
        fx.cache.clone(),
        fx.cache_untrusted.clone(),
        Mode::SlowNar(pause),
    )
    .await;
    let a = cluster.replica(0, &upstream.url, &fx.key, extra).await;
    let b = cluster.replica(1, &upstream.url, &fx.key, extra).await;
    let (path, rel) = fx.big();
    let want = std::fs::read(fx.cache.join(&rel)).expect("upstream nar");
    let text = reqwest::get(format!("{}/{}.narinfo", a.url, Fixture::hash_of(&path)))
        .await
        .expect("narinfo")
        .text()
        .await
        .expect("body");
    let nar = Fixture::nar_url(&text);
    SlowSetup {
        cluster,
        upstream,
        a,
        b,
        rel,
        want,
        nar,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_download_is_taken_over_after_the_lock_ttl() {
    // About 2.6 s for the 4 MiB NAR: long enough to kill its downloader halfway.
    let SlowSetup {
        cluster,
        upstream,
        a,
        b,
        rel,
        want,
        nar,
    } = slow_setup(Duration::from_millis(40), &["--lock-ttl", "3s"]).await;

    // A starts the download for its client.
    let mut on_a = reqwest::get(format!("{}/{nar}", a.url))
        .await
        .expect("nar from A")
        .bytes_stream();
    use futures_util::StreamExt;
    on_a.next().await.expect("first bytes").expect("chunk");
    assert_eq!(upstream.hits(&format!("/{rel}")), 1);
    // B's client asks meanwhile: B waits for A's lock.
    let b_url = format!("{}/{nar}", b.url);
    let on_b = tokio::spawn(async move {
        let r = reqwest::get(b_url).await.expect("nar from B");
        (r.status(), r.bytes().await.map(|b| b.to_vec()))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = std::time::Instant::now();
    a.kill();
    drop(on_a);
    // Nothing partial is visible: no object, no row.
    assert!(
        cluster.s3.list("replicas/nar/").is_empty(),
        "partial object in S3"
    );
    assert_eq!(cluster.pg.query("SELECT count(*) FROM nars").trim(), "0");

    let (status, body) = on_b.await.expect("B's client");
    assert_eq!(status, 200, "{}", b.logs());
    let body = body.expect("B's body");
    assert!(
        body == want,
        "B served wrong bytes ({} vs {})",
        body.len(),
        want.len()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(3 + 20),
        "takeover took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        upstream.hits(&format!("/{rel}")),
        2,
        "B did not take over the download"
    );
    assert_eq!(cluster.s3.list("replicas/nar/").len(), 1);
    assert_eq!(cluster.pg.query("SELECT count(*) FROM nars").trim(), "1");
}

/// Waits (up to 30 s) until `/readyz?verbose` of `base` says `what`.
async fn wait_for_verbose(base: &str, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let text = reqwest::get(format!("{base}/readyz?verbose"))
            .await
            .expect("readyz")
            .text()
            .await
            .unwrap_or_default();
        if text.contains(what) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{base}/readyz?verbose never said {what:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_hits_still_served_misses_404_and_recovery_without_restart() {
    let fx = fixture();
    let cluster = Cluster::start();
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let a = cluster.replica(0, &upstream.url, &fx.key, &[]).await;
    let b = cluster.replica(1, &upstream.url, &fx.key, &[]).await;
    let key = a.public_key().await;
    // The dependency (a closure of its own) is cached through A; the rest is not.
    let dep = fx
        .paths
        .iter()
        .find(|p| p.contains("-dep-"))
        .expect("dep path")
        .clone();
    let warm = cluster.tmp.path().join("warm");
    let out = NixClient::new()
        .copy_closure(&a.url, &warm, &dep, &key)
        .await;
    assert!(out.success, "{}", out.stderr);

    cluster.pg.stop();
    // Still ready (a Service keeps every replica), the outage shown in the verbose view.
    assert_eq!(status(&format!("{}/readyz", a.url)).await, 200);
    wait_for_verbose(&a.url, "database: unavailable").await;
    let text = common::metrics(&a.url).await;
    assert_eq!(
        common::sample(&text, "nixcache_backend_up", &[r#"backend="database""#]),
        Some(0.0),
        "{text}"
    );
    assert!(a.logs().contains("backend unavailable"), "{}", a.logs());
    // A replica that starts during the outage starts, and serves the warm path too.
    let c = cluster.replica(2, &upstream.url, &fx.key, &[]).await;
    assert_eq!(status(&format!("{}/readyz", c.url)).await, 200);
    // Under load from other clients, the real Nix client still gets the cached path: from A (its
    // narinfo in memory) and from B, which never saw it (its narinfo's copy in S3).
    let load = {
        let url = format!("{}/{}.narinfo", a.url, Fixture::hash_of(&dep));
        tokio::spawn(async move {
            for _ in 0..200 {
                assert_eq!(status(&url).await, 200);
            }
        })
    };
    for (name, replica) in [("a", &a), ("b", &b), ("c", &c)] {
        let store = cluster.tmp.path().join(format!("during-{name}"));
        let out = NixClient::new()
            .copy_closure(&replica.url, &store, &dep, &key)
            .await;
        assert!(
            out.success,
            "replica {name} with PostgreSQL down:\n{}\n{}",
            out.stderr,
            replica.logs()
        );
    }
    load.await.expect("load");
    // A miss cannot be recorded: 404, never 5xx.
    assert_eq!(
        status(&format!("{}/{}.narinfo", b.url, Fixture::hash_of(fx.top()))).await,
        404
    );

    cluster.pg.resume();
    wait_for_verbose(&b.url, "database: up").await;
    // C, which never reached the database, connects (and would migrate) by itself.
    wait_for_verbose(&c.url, "database: up").await;
    assert!(
        c.logs().contains("migrating once it answers"),
        "{}",
        c.logs()
    );
    // Misses work again, without a restart, and the whole closure arrives, through C.
    let store = cluster.tmp.path().join("after");
    let out = NixClient::new()
        .copy_closure(&c.url, &store, fx.top(), &key)
        .await;
    assert!(
        out.success,
        "after PostgreSQL returned:\n{}\n{}",
        out.stderr,
        c.logs()
    );
    assert_eq!(store_contents(&store).len(), fx.paths.len());
    // Every row is whole: one per path, each naming a NAR that is stored.
    let rows = cluster
        .pg
        .query("SELECT hash, nar_file FROM narinfos ORDER BY hash");
    assert_eq!(rows.lines().count(), fx.paths.len(), "{rows}");
    let stored = cluster.s3.list("replicas/nar/");
    for line in rows.lines() {
        let (_, nar_file) = line.split_once('|').expect("two columns");
        assert!(
            stored.contains(&format!("replicas/nar/{nar_file}")),
            "row names a NAR that is not stored: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_masters_failing_one_then_two_then_returning() {
    let fx = fixture();
    let mut cluster = Cluster::start();
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let a = cluster.replica(0, &upstream.url, &fx.key, &[]).await;
    let b = cluster.replica(1, &upstream.url, &fx.key, &[]).await;
    let strict = cluster
        .replica(2, &upstream.url, &fx.key, &["--lock-strict"])
        .await;
    let mut paths = fx.paths.clone();
    paths.sort();
    let narinfo = |base: &str, p: &str| format!("{base}/{}.narinfo", Fixture::hash_of(p));
    let fallbacks = |base: String| async move {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        text.lines()
            .find_map(|l| l.strip_prefix("nixcache_lock_fallbacks_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };

    // One of three down: a majority remains, locking goes on: both replicas, one upstream fetch.
    cluster.redis[0].stop();
    let (ua, ub) = (narinfo(&a.url, &paths[0]), narinfo(&b.url, &paths[0]));
    let (ra, rb) = tokio::join!(status(&ua), status(&ub));
    assert_eq!((ra, rb), (200, 200));
    assert_eq!(
        upstream.hits(&format!("/{}.narinfo", Fixture::hash_of(&paths[0]))),
        1
    );
    assert_eq!(
        fallbacks(a.url.clone()).await + fallbacks(b.url.clone()).await,
        0
    );

    // Two of three down: no majority. By default misses are still served, locked in-process only
    // (counted); with --lock-strict they are a 404.
    cluster.redis[1].stop();
    assert_eq!(status(&narinfo(&strict.url, &paths[1])).await, 404);
    assert_eq!(status(&narinfo(&a.url, &paths[1])).await, 200);
    assert!(fallbacks(a.url.clone()).await > 0);
    assert!(fallbacks(strict.url.clone()).await > 0);

    // Back: normal locking resumes without a restart.
    cluster.redis[0].resume();
    cluster.redis[1].resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before_a, before_b) = (
        fallbacks(a.url.clone()).await,
        fallbacks(b.url.clone()).await,
    );
    let (ua, ub) = (narinfo(&a.url, &paths[2]), narinfo(&b.url, &paths[2]));
    let (ra, rb) = tokio::join!(status(&ua), status(&ub));
    assert_eq!((ra, rb), (200, 200));
    assert_eq!(
        upstream.hits(&format!("/{}.narinfo", Fixture::hash_of(&paths[2]))),
        1
    );
    assert_eq!(
        (
            fallbacks(a.url.clone()).await,
            fallbacks(b.url.clone()).await
        ),
        (before_a, before_b)
    );
    assert_eq!(
        status(&narinfo(&strict.url, &paths[1])).await,
        200,
        "strict replica serves again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_waiting_on_another_replica_receives_bytes_while_the_holder_downloads() {
    // The 4 MiB NAR arrives over ~5 s; published in 256 KiB parts (scaled down from 8 MiB parts
    // of multi-GiB NARs).
    let SlowSetup {
        cluster: _cluster,
        upstream,
        a,
        b,
        rel,
        want,
        nar,
    } = slow_setup(
        Duration::from_millis(80),
        &["--inflight-part-size", "262144"],
    )
    .await;

    use futures_util::StreamExt;
    let mut on_a = reqwest::get(format!("{}/{nar}", a.url))
        .await
        .expect("nar from A")
        .bytes_stream();
    on_a.next().await.expect("first bytes").expect("chunk");
    let a_done = tokio::spawn(async move {
        while let Some(c) = on_a.next().await {
            c.expect("chunk from A");
        }
        std::time::Instant::now()
    });

    let r = reqwest::get(format!("{}/{nar}", b.url))
        .await
        .expect("nar from B");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(want.len() as u64));
    let mut body = r.bytes_stream();
    let (mut got, mut arrivals) = (Vec::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("chunk from B"));
        arrivals.push((std::time::Instant::now(), got.len()));
    }
    let a_finished = a_done.await.expect("A's client");
    assert!(got == want, "B served wrong bytes");
    assert_eq!(
        upstream.hits(&format!("/{rel}")),
        1,
        "B downloaded it again"
    );
    // B's client had half the NAR before A's download ended, and never waited long for more.
    let half = arrivals
        .iter()
        .find(|(_, n)| *n >= want.len() / 2)
        .expect("half")
        .0;
    assert!(
        half < a_finished,
        "B's client got half the NAR only after the download finished"
    );
    let gaps = arrivals
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    assert!(
        gaps < Duration::from_secs(3),
        "B's client waited {gaps:?} between bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_following_a_failed_attempt_never_gets_it_stitched_to_the_next() {
    // A downloads a corrupt NAR over ~5 s, publishing it in 256 KiB parts; B's client follows
    // those parts past the corrupt byte. A's download fails verification; B then downloads the
    // good NAR itself. B's first client must get an error, never A's prefix with B's suffix.
    let SlowSetup {
        cluster: _cluster,
        upstream,
        a,
        b,
        rel,
        want,
        nar,
    } = slow_setup(
        Duration::from_millis(80),
        &["--inflight-part-size", "262144", "--lock-ttl", "5s"],
    )
    .await;
    let pause = Duration::from_millis(80);
    upstream.set_mode(Mode::SlowCorruptNar(pause));

    use futures_util::StreamExt;
    let mut on_a = reqwest::get(format!("{}/{nar}", a.url))
        .await
        .expect("nar from A")
        .bytes_stream();
    on_a.next().await.expect("first bytes").expect("chunk");
    let a_done = tokio::spawn(async move {
        let mut failed = false;
        while let Some(c) = on_a.next().await {
            failed |= c.is_err();
        }
        failed
    });
    // Later requests to the upstream get the good NAR, quickly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    upstream.set_mode(Mode::Normal);
    let r = reqwest::get(format!("{}/{nar}", b.url))
        .await
        .expect("nar from B");
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = Vec::new();
    let mut broke = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(
        a_done.await.expect("A's client"),
        "A served a corrupt NAR whole"
    );
    assert!(
        got.len() > want.len() / 2,
        "B's client did not follow A's download past its corrupt byte ({} bytes)",
        got.len()
    );
    if !broke {
        assert!(
            got == want,
            "B's client received a complete body of {} bytes with wrong bytes: two attempts \
             stitched together",
            got.len()
        );
    }
    // The NAR committed by the next attempt (B's: A remembers its failure for a while) is the
    // right one, on both replicas.
    for r in [&b, &a] {
        let body = reqwest::get(format!("{}/{nar}", r.url))
            .await
            .expect("nar")
            .bytes()
            .await
            .expect("body");
        assert!(body.as_ref() == want.as_slice(), "wrong stored NAR");
    }
    assert_eq!(upstream.hits(&format!("/{rel}")), 2, "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_schedule_run_one_gc_per_tick() {
    let fx = fixture();
    let cluster = Cluster::start();
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    // Every second second (a seconds field first), with room to spare so nothing is evicted.
    let gc = ["--gc-schedule", "*/2 * * * * *", "--max-size", "1G"];
    let a = cluster.replica(0, &upstream.url, &fx.key, &gc).await;
    let b = cluster.replica(1, &upstream.url, &fx.key, &gc).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let count = |needle: &str| a.logs().matches(needle).count() + b.logs().matches(needle).count();
    let (runs, skips) = (count("GC pass done"), count("GC skipped"));
    assert!(runs >= 3, "{runs} runs in 9 s:\n{}\n{}", a.logs(), b.logs());
    // Each tick: one replica ran, the other skipped.
    assert!(
        runs.abs_diff(skips) <= 1,
        "{runs} runs, {skips} skips:\n{}\n{}",
        a.logs(),
        b.logs()
    );
}
