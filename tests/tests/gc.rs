//! GC: LRU eviction while clients read, as a separate `nixcache gc` process beside a server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{fixture, Fixture, Nixcache, StaticServer};

#[tokio::test(flavor = "multi_thread")]
async fn gc_beside_a_serving_process_never_leaves_a_narinfo_without_its_nar() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache = Nixcache::in_front_of(&data, &upstream.url, &fx.key, &["--gc-grace", "2s"]).await;
    let client = reqwest::Client::new();
    let mut nars = Vec::new();
    for p in &fx.paths {
        let text = client
            .get(format!("{}/{}.narinfo", cache.url, Fixture::hash_of(p)))
            .send()
            .await
            .expect("narinfo")
            .text()
            .await
            .expect("body");
        let url = format!("{}/{}", cache.url, Fixture::nar_url(&text));
        let len = client
            .get(&url)
            .send()
            .await
            .expect("nar")
            .bytes()
            .await
            .expect("body")
            .len();
        nars.push((Fixture::hash_of(p).to_string(), len));
    }
    // Evicted paths must not come back from the upstream during the test.
    drop(upstream);

    // Readers hammer every path while GC runs: a narinfo they get must have its NAR.
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (client, base, nars, stop, checked) = (
            client.clone(),
            cache.url.clone(),
            nars.clone(),
            stop.clone(),
            checked.clone(),
        );
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (hash, len) in &nars {
                    let r = client
                        .get(format!("{base}/{hash}.narinfo"))
                        .send()
                        .await
                        .expect("narinfo");
                    match r.status().as_u16() {
                        404 => continue,
                        200 => {}
                        s => panic!("narinfo {hash}: status {s}"),
                    }
                    let text = r.text().await.expect("body");
                    let r = client
                        .get(format!("{base}/{}", Fixture::nar_url(&text)))
                        .send()
                        .await
                        .expect("nar");
                    assert_eq!(r.status(), 200, "narinfo {hash} served, its NAR gone");
                    assert_eq!(r.bytes().await.expect("nar body").len(), *len);
                    checked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let out = tokio::process::Command::new(common::nixcache_bin())
        .arg("gc")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--max-size",
            "1000",
            "--gc-grace",
            "2s",
            "--upstream",
            "http://127.0.0.1:9",
            "--upstream-key",
            &fx.key,
        ])
        .output()
        .await
        .expect("nixcache gc");
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gc failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        checked.load(Ordering::Relaxed) > 0,
        "readers checked nothing"
    );
    // "... stored NARs BEFORE -> AFTER bytes"
    let after: u64 = stdout
        .rsplit("-> ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in the summary: {stdout}"));
    assert!(after <= 1000, "{stdout}");
    assert!(
        stdout.contains("evicted") && !stdout.contains("evicted 0 narinfos"),
        "{stdout}"
    );
    // What the server still answers for is whole.
    for (hash, len) in &nars {
        let r = client
            .get(format!("{}/{hash}.narinfo", cache.url))
            .send()
            .await
            .expect("narinfo");
        if r.status() == 200 {
            let text = r.text().await.expect("body");
            let body = client
                .get(format!("{}/{}", cache.url, Fixture::nar_url(&text)))
                .send()
                .await
                .expect("nar")
                .bytes()
                .await
                .expect("body");
            assert_eq!(body.len(), *len);
        }
    }
}

#[test]
fn gc_without_a_size_limit_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::nixcache_bin())
        .arg("gc")
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .expect("nixcache gc");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-size"));
}
