//! `nixcache fsck`: deliberately broken storage is found, repaired, and served correctly again.

mod common;

use common::{fixture, store_contents, Fixture, NixClient, Nixcache, StaticServer};

fn fsck(data: &std::path::Path, key: &str, extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::nixcache_bin())
        .arg("fsck")
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .args(["--upstream", "http://127.0.0.1:9", "--upstream-key", key])
        .output()
        .expect("nixcache fsck");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_and_repairs_deleted_truncated_corrupt_and_orphaned_nars() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache = Nixcache::in_front_of(&data, &upstream.url, &fx.key, &[]).await;
    let key = cache.public_key().await;
    let mut nar_of = std::collections::BTreeMap::new();
    for p in &fx.paths {
        let text = reqwest::get(format!("{}/{}.narinfo", cache.url, Fixture::hash_of(p)))
            .await
            .expect("narinfo")
            .text()
            .await
            .expect("body");
        let url = Fixture::nar_url(&text);
        reqwest::get(format!("{}/{url}", cache.url))
            .await
            .expect("nar")
            .bytes()
            .await
            .expect("body");
        nar_of.insert(p.clone(), data.join("store").join(url));
    }
    cache.kill();
    let (ok, out) = fsck(&data, &fx.key, &["--deep"]);
    assert!(ok, "a healthy cache: {out}");
    assert!(out.contains("0 problem(s)"), "{out}");

    let find = |part: &str| {
        nar_of
            .iter()
            .find(|(p, _)| p.contains(part))
            .map(|(_, f)| f.clone())
            .expect(part)
    };
    std::fs::remove_file(find("-dep-")).expect("delete");
    let big = find("-big-");
    let len = std::fs::metadata(&big).expect("big").len();
    std::fs::File::options()
        .write(true)
        .open(&big)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let top = find("-top-");
    let mut bytes = std::fs::read(&top).expect("top");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&top, bytes).expect("corrupt");
    std::fs::write(
        data.join("store/nar")
            .join(format!("{}.nar.xz", "1".repeat(52))),
        b"orphan",
    )
    .expect("orphan");

    let (ok, out) = fsck(&data, &fx.key, &[]);
    assert!(!ok, "problems must fail fsck: {out}");
    for what in ["missing NAR", "size mismatch", "orphaned NAR"] {
        assert!(out.contains(what), "{what} not reported: {out}");
    }
    assert!(
        out.contains("3 problem(s)"),
        "a corrupt NAR of the right size needs --deep: {out}"
    );
    let (ok, out) = fsck(&data, &fx.key, &["--deep"]);
    assert!(
        !ok && out.contains("hash mismatch") && out.contains("4 problem(s)"),
        "{out}"
    );
    // A sample at least as large as the cache reads every NAR, and finds the same.
    let (ok, out) = fsck(&data, &fx.key, &["--deep", "--sample", "1000"]);
    assert!(
        !ok && out.contains("hash mismatch") && out.contains("4 problem(s)"),
        "{out}"
    );
    // A sample needs --deep, and is at least one NAR.
    for bad in [&["--sample", "3"][..], &["--deep", "--sample", "0"]] {
        let (ok, out) = fsck(&data, &fx.key, bad);
        assert!(
            !ok && !out.contains("problem(s)"),
            "{bad:?} accepted: {out}"
        );
    }
    let (ok, out) = fsck(&data, &fx.key, &["--deep", "--repair"]);
    assert!(ok, "{out}");
    let (ok, out) = fsck(&data, &fx.key, &["--deep"]);
    assert!(ok && out.contains("0 problem(s)"), "after repair: {out}");

    // Served again: what was forgotten is fetched anew, and Nix verifies all of it.
    let cache = Nixcache::in_front_of(&data, &upstream.url, &fx.key, &[]).await;
    let store = tmp.path().join("store");
    let out = NixClient::new()
        .copy_closure(&cache.url, &store, fx.top(), &key)
        .await;
    assert!(out.success, "{}\n{}", out.stderr, cache.logs());
    assert_eq!(store_contents(&store).len(), fx.paths.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_reports_and_repairs_recorded_orphans_and_stale_unfetched_narinfos() {
    const TOKEN: &str = "upload-token-0123456789abcdef";
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache =
        Nixcache::in_front_of(&data, &upstream.url, &fx.key, &["--upload-token", TOKEN]).await;
    // One path only looked up; a NAR uploaded without a narinfo.
    let hash = Fixture::hash_of(fx.top());
    let r = reqwest::get(format!("{}/{hash}.narinfo", cache.url))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200);
    let orphan = b"an uploaded NAR nobody names".to_vec();
    let name = format!(
        "{}.nar",
        nixcache::nix::Sha256Hash::digest(&orphan).to_nix32()
    );
    let status = reqwest::Client::new()
        .put(format!("{}/nar/{name}", cache.url))
        .bearer_auth(TOKEN)
        .body(orphan)
        .send()
        .await
        .expect("PUT")
        .status();
    assert_eq!(status, 201);
    cache.kill();
    let periods = ["--gc-grace", "1s", "--gc-unfetched-ttl", "1s"];
    // Fresh: neither is a problem yet (GC would not take them either).
    let (ok, out) = fsck(
        &data,
        &fx.key,
        &["--gc-grace", "1h", "--gc-unfetched-ttl", "1h"],
    );
    assert!(ok && out.contains("0 problem(s)"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (ok, out) = fsck(&data, &fx.key, &periods);
    assert!(!ok, "{out}");
    assert!(out.contains("orphaned NAR") && out.contains(&name), "{out}");
    assert!(
        out.contains("unfetched narinfo") && out.contains(hash),
        "{out}"
    );
    assert!(out.contains("2 problem(s)"), "{out}");
    let mut repair = periods.to_vec();
    repair.push("--repair");
    let (ok, out) = fsck(&data, &fx.key, &repair);
    assert!(ok, "{out}");
    let (ok, out) = fsck(&data, &fx.key, &periods);
    assert!(ok && out.contains("0 problem(s)"), "after repair: {out}");
    assert!(!data.join("store/nar").join(&name).exists());
}
