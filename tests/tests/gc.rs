//! GC: LRU eviction while clients read, as a separate `nixcache gc` process beside a server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{fixture, get_text, Fixture, Nixcache, StaticServer};

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
    // "phases: sweep S s, select S s, evict S s, grace S s, delete S s": the grace was waited.
    let grace: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("phases: "))
        .and_then(|p| p.split(", ").find_map(|s| s.strip_prefix("grace ")))
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("no grace phase in the report: {stdout}"));
    assert!((2.0..10.0).contains(&grace), "{stdout}");
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

/// `nixcache gc` on `data` with these settings: its summary line.
async fn gc_pass(data: &std::path::Path, key: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(common::nixcache_bin())
        .arg("gc")
        .arg("--data-dir")
        .arg(data)
        .args(["--upstream", "http://127.0.0.1:9", "--upstream-key", key])
        .args(args)
        .output()
        .await
        .expect("nixcache gc");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gc failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn stored_nar_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("store/nar"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_nars_and_unfetched_narinfos_are_collected_whatever_the_size() {
    const TOKEN: &str = "upload-token-0123456789abcdef";
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache =
        Nixcache::in_front_of(&data, &upstream.url, &fx.key, &["--upload-token", TOKEN]).await;
    // Two paths fetched whole, the third only looked up.
    let (fetched, looked_up) = fx.paths.split_at(2);
    for p in fetched {
        let (status, text) =
            get_text(&format!("{}/{}.narinfo", cache.url, Fixture::hash_of(p))).await;
        assert_eq!(status, 200);
        let (status, _) = get_text(&format!("{}/{}", cache.url, Fixture::nar_url(&text))).await;
        assert_eq!(status, 200);
    }
    let unfetched = Fixture::hash_of(&looked_up[0]);
    assert_eq!(
        get_text(&format!("{}/{unfetched}.narinfo", cache.url))
            .await
            .0,
        200
    );
    // A NAR uploaded without its narinfo.
    let orphan: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    let name = format!(
        "{}.nar",
        nixcache::nix::Sha256Hash::digest(&orphan).to_nix32()
    );
    let status = reqwest::Client::new()
        .put(format!("{}/nar/{name}", cache.url))
        .bearer_auth(TOKEN)
        .body(orphan.clone())
        .send()
        .await
        .expect("PUT")
        .status();
    assert_eq!(status, 201);
    assert_eq!(stored_nar_files(&data), 3);

    // Far under the size limit, both kinds go once unused for their periods.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let summary = gc_pass(
        &data,
        &fx.key,
        &[
            "--max-size",
            "1TB",
            "--gc-grace",
            "1s",
            "--gc-unfetched-ttl",
            "1s",
        ],
    )
    .await;
    assert!(summary.contains("1 of them orphans"), "{summary}");
    assert!(summary.contains("1 unfetched narinfos"), "{summary}");
    assert!(summary.contains("evicted 0 narinfos"), "{summary}");
    assert_eq!(stored_nar_files(&data), 2, "{summary}");
    assert!(!data.join("store/nar").join(&name).exists());
    // The fetched paths are whole; the unfetched one is looked up again on demand.
    for p in fetched {
        let (status, text) =
            get_text(&format!("{}/{}.narinfo", cache.url, Fixture::hash_of(p))).await;
        assert_eq!(status, 200);
        assert_eq!(
            get_text(&format!("{}/{}", cache.url, Fixture::nar_url(&text)))
                .await
                .0,
            200
        );
    }
    drop(cache);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gc_pass_killed_between_narinfos_and_nars_is_finished_by_the_next() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let upstream = StaticServer::start(&fx.cache).await;
    {
        let cache = Nixcache::in_front_of(&data, &upstream.url, &fx.key, &[]).await;
        for p in &fx.paths {
            let (_, text) =
                get_text(&format!("{}/{}.narinfo", cache.url, Fixture::hash_of(p))).await;
            assert_eq!(
                get_text(&format!("{}/{}", cache.url, Fixture::nar_url(&text)))
                    .await
                    .0,
                200
            );
        }
    }
    assert_eq!(stored_nar_files(&data), fx.paths.len());
    // A pass that must evict everything forgets the narinfos, then waits out its grace period
    // before deleting the NARs: killed there.
    let mut pass = common::KillOnDrop(
        std::process::Command::new(common::nixcache_bin())
            .arg("gc")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-key",
                &fx.key,
            ])
            .args(["--max-size", "0", "--gc-grace", "60s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nixcache gc"),
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        pass.0.try_wait().expect("wait").is_none(),
        "the pass ended early"
    );
    pass.0.kill().expect("kill -9");
    let _ = pass.0.wait();
    assert_eq!(
        stored_nar_files(&data),
        fx.paths.len(),
        "NARs went before their grace"
    );

    // The next pass finds the NARs no narinfo names and deletes them after its own grace.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let summary = gc_pass(&data, &fx.key, &["--max-size", "0", "--gc-grace", "1s"]).await;
    assert!(
        summary.contains(&format!("{} of them orphans", fx.paths.len())),
        "{summary}"
    );
    // The summary's first line ends with the size left; the phases follow on the next.
    assert!(
        summary
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("-> 0 bytes")),
        "{summary}"
    );
    assert_eq!(stored_nar_files(&data), 0);
}

/// `nixcache ARGS` (an admin command): its standard output.
async fn admin_command(args: &[&str]) -> String {
    let out = tokio::process::Command::new(common::nixcache_bin())
        .args(args)
        .output()
        .await
        .expect("nixcache");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nixcache {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_closure_survives_a_gc_pass_that_evicts_everything_else() {
    const ADMIN: &str = "admin-token-0123456789abcdef";
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache =
        Nixcache::in_front_of(&data, &upstream.url, &fx.key, &["--admin-token", ADMIN]).await;
    for p in &fx.paths {
        let (status, text) =
            get_text(&format!("{}/{}.narinfo", cache.url, Fixture::hash_of(p))).await;
        assert_eq!(status, 200);
        let r = reqwest::get(format!("{}/{}", cache.url, Fixture::nar_url(&text)))
            .await
            .expect("nar");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("nar body");
    }
    drop(upstream);
    // A path whose closure is itself alone: it refers to no other path.
    let references = |p: &str| -> Vec<String> {
        fx.narinfo(p)
            .lines()
            .find_map(|l| l.strip_prefix("References:"))
            .unwrap_or_default()
            .split_whitespace()
            .filter(|r| !p.ends_with(*r))
            .map(str::to_string)
            .collect()
    };
    let leaf = fx
        .paths
        .iter()
        .find(|p| references(p).is_empty())
        .expect("a path without references")
        .clone();
    let others = fx.paths.len() - 1;
    assert!(others > 0);

    let token_file = tmp.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).expect("write");
    let token_file = token_file.display().to_string();
    let admin = |command: &'static str| {
        vec![
            command.to_string(),
            "--server".into(),
            cache.url.clone(),
            "--admin-token-file".into(),
            token_file.clone(),
        ]
    };
    let mut pin = admin("pin");
    pin.push(leaf.clone());
    let out = admin_command(&pin.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.contains("pinned 1 new of 1"), "{out}");
    let listed = admin_command(&admin("pins").iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(listed.starts_with(&format!("{leaf}\t")), "{listed}");

    // Everything must go (a size limit of one byte), but the pinned path stays.
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(1200));
    settle().await;
    let summary = gc_pass(&data, &fx.key, &["--max-size", "1", "--gc-grace", "1s"]).await;
    assert!(
        summary.contains(&format!("evicted {others} narinfos")),
        "{summary}"
    );
    assert!(
        summary.contains("pins: 1 paths pinned, 1 narinfos kept for them"),
        "{summary}"
    );
    assert_eq!(stored_nar_files(&data), 1, "{summary}");
    let (status, _) = get_text(&format!(
        "{}/{}.narinfo",
        cache.url,
        Fixture::hash_of(&leaf)
    ))
    .await;
    assert_eq!(status, 200, "the pinned path is still served");

    // Unpinned, the next pass takes it too.
    let mut unpin = admin("unpin");
    unpin.push(leaf.clone());
    let out = admin_command(&unpin.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(out.contains("unpinned 1 of 1"), "{out}");
    let summary = gc_pass(&data, &fx.key, &["--max-size", "1", "--gc-grace", "1s"]).await;
    assert!(summary.contains("pins: 0 paths pinned"), "{summary}");
    assert_eq!(stored_nar_files(&data), 0, "{summary}");
}
