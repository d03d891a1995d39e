//! The node-local NAR tier (`--local-cache-dir`) of replicas on S3 (SeaweedFS), PostgreSQL and
//! Redis: a download and an S3 hit fill it with the verified file, warm hits are served from it,
//! it survives a restart, and a NAR GC deleted is not served from any replica's tier once its
//! narinfo is gone.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{fixture, metrics, sample, Cluster, FaultyUpstream, Fixture, Mode, Nixcache};
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";

async fn replica(cluster: &Cluster, n: usize, upstream: &str, key: &str, tier: &Path) -> Nixcache {
    let tier = tier.to_str().expect("utf-8 path").to_string();
    let extra = [
        "--local-cache-dir",
        tier.as_str(),
        "--local-cache-size",
        "64MiB",
        "--admin-token",
        ADMIN,
        "--max-size",
        "1",
        "--gc-grace",
        "2s",
    ];
    cluster.replica(n, upstream, key, &extra).await
}

/// The narinfo and then the NAR of `path` from `base`: (status of the NAR, its bytes).
async fn fetch(base: &str, path: &str) -> (u16, Vec<u8>) {
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/{}.narinfo", Fixture::hash_of(path)))
        .send()
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200, "narinfo of {path} from {base}");
    let text = r.text().await.expect("body");
    nar(base, &Fixture::nar_url(&text)).await
}

async fn nar(base: &str, url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(format!("{base}/{url}")).await.expect("nar");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

async fn tier_hits(base: &str) -> f64 {
    sample(
        &metrics(base).await,
        "nixcache_local_cache_requests_total",
        &["result=\"hit\""],
    )
    .unwrap_or(0.0)
}

/// The NARs a tier directory holds, by file name.
fn held(tier: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tier.join("nar"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The upstream's NAR file for `path` (what every tier must hold byte for byte).
fn upstream_nar(fx: &Fixture, path: &str) -> (String, Vec<u8>) {
    let url = Fixture::nar_url(&fx.narinfo(path));
    let bytes = std::fs::read(fx.cache.join(&url)).expect("upstream NAR");
    (url, bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_warm_hits_from_their_tier_and_drop_what_gc_deleted() {
    let fx = fixture();
    let cluster = Cluster::start();
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let dirs = tempfile::tempdir().expect("tempdir");
    let (tier_a, tier_b) = (dirs.path().join("tier-a"), dirs.path().join("tier-b"));
    let a = replica(&cluster, 0, &upstream.url, &fx.key, &tier_a).await;
    let b = replica(&cluster, 1, &upstream.url, &fx.key, &tier_b).await;

    // A downloads every path (its tier gets each verified download); B then reads each from S3
    // (its tier gets each whole read whose bytes match the name).
    for p in &fx.paths {
        let (_, want) = upstream_nar(fx, p);
        assert_eq!(fetch(&a.url, p).await, (200, want.clone()), "{p} from A");
        assert_eq!(fetch(&b.url, p).await, (200, want), "{p} from B");
    }
    let names: Vec<String> = {
        let mut n: Vec<String> = fx
            .paths
            .iter()
            .map(|p| upstream_nar(fx, p).0.trim_start_matches("nar/").to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(held(&tier_a), names, "A's tier, from its downloads");
    let filled = async {
        for _ in 0..100 {
            if held(&tier_b) == names {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(filled.await, "B's tier, from S3: {:?}", held(&tier_b));
    for p in &fx.paths {
        let (url, want) = upstream_nar(fx, p);
        for tier in [&tier_a, &tier_b] {
            let got = std::fs::read(tier.join(&url)).expect("held file");
            assert!(
                got == want,
                "{url} in {} is the upstream's file",
                tier.display()
            );
        }
        assert_eq!(
            upstream.hits(&format!("/{url}")),
            1,
            "{url} from the upstream"
        );
    }

    // Warm hits on B come from its tier, ranges too.
    let before = tier_hits(&b.url).await;
    for p in &fx.paths {
        let (_, want) = upstream_nar(fx, p);
        assert_eq!(fetch(&b.url, p).await, (200, want), "{p} warm from B");
    }
    let after = tier_hits(&b.url).await;
    assert_eq!(
        after - before,
        fx.paths.len() as f64,
        "every warm hit from the tier"
    );
    let (url, want) = upstream_nar(fx, fx.top());
    let r = reqwest::Client::new()
        .get(format!("{}/{url}", b.url))
        .header("Range", "bytes=1-10")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        want[1..=10].to_vec()
    );

    // A restart takes the directory up again: served from the tier at once.
    assert!(b.terminate(Duration::from_secs(30)), "B stops");
    let b = replica(&cluster, 1, &upstream.url, &fx.key, &tier_b).await;
    let before = tier_hits(&b.url).await;
    assert_eq!(nar(&b.url, &url).await, (200, want.clone()));
    assert_eq!(
        tier_hits(&b.url).await - before,
        1.0,
        "from the tier after a restart"
    );

    // GC (everything over 1 byte) through A: narinfos go, then after the grace the NARs, from S3
    // and from A's tier. B's tier drops each NAR at its next read: none is served any more.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/gc", a.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("")
        .send()
        .await
        .expect("gc");
    assert_eq!(r.status(), 200);
    let report: Value =
        serde_json::from_str(&r.text().await.expect("body")).expect("a JSON report");
    assert!(
        report["nars_evicted"].as_u64() == Some(fx.paths.len() as u64),
        "{report}"
    );
    assert!(
        held(&tier_a).is_empty(),
        "A's tier after its GC: {:?}",
        held(&tier_a)
    );
    drop(upstream);
    for p in &fx.paths {
        let (url, _) = upstream_nar(fx, p);
        for (name, replica) in [("A", &a), ("B", &b)] {
            assert_eq!(
                nar(&replica.url, &url).await.0,
                404,
                "{url} from {name} after GC deleted it"
            );
        }
    }
    assert!(held(&tier_b).is_empty(), "B's tier: {:?}", held(&tier_b));
    let dropped = sample(
        &metrics(&b.url).await,
        "nixcache_local_cache_requests_total",
        &["result=\"dropped\""],
    )
    .unwrap_or(0.0);
    assert_eq!(dropped, fx.paths.len() as f64);
}
