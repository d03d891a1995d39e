//! What an upstream controls beyond its signatures — a narinfo's `URL` and `FileHash` fields and
//! its redirects — must not make nixcache fetch from any other host (an "internal" server beside
//! the upstream must never see a request), nor let one path's narinfo take over another's NAR.

mod common;

use std::net::IpAddr;
use std::path::Path;

use common::{
    fetch_nar, fixture, metrics, sample, FaultyUpstream, Fixture, Mode, NixClient, Nixcache,
};

/// Copies the fixture cache into `dir` (files only; it is flat but for `nar/`).
fn copy_cache(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).expect("under");
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &dest).expect("copy");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Replaces the `URL:` line of `path`'s narinfo in the cache at `dir`.
fn set_url(dir: &Path, path: &str, url: &str) {
    let file = dir.join(format!("{}.narinfo", Fixture::hash_of(path)));
    let text = std::fs::read_to_string(&file).expect("narinfo");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("URL: ") {
                format!("URL: {url}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&file, text).expect("write narinfo");
}

async fn status(url: &str) -> u16 {
    reqwest::get(url).await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_urls_outside_the_upstream_are_refused() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    // The internal server holds the real NARs: any request reaching it is a fetch nixcache was
    // talked into.
    let internal =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let internal_host = internal.url.trim_start_matches("http://").to_string();
    // The upstream serves the cache under /sub/, with the NARs also at /nar/ outside that base.
    let root = tmp.path().join("root");
    copy_cache(&fx.cache, &root.join("sub"));
    copy_cache(&fx.cache.join("nar"), &root.join("nar"));
    let sub = root.join("sub");
    let nar_of = |p: &str| Fixture::nar_url(&fx.narinfo(p));
    let (absolute, escaping, good) = (&fx.paths[0], &fx.paths[1], &fx.paths[2]);
    set_url(
        &sub,
        absolute,
        &format!("{}/{}", internal.url, nar_of(absolute)),
    );
    set_url(&sub, escaping, &format!("../{}", nar_of(escaping)));
    let upstream =
        FaultyUpstream::start(root.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let base = format!("{}/sub/", upstream.url);
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &base,
        &fx.key,
        &["--negative-ttl", "1s"],
    )
    .await;

    for p in [absolute, escaping] {
        let hash = Fixture::hash_of(p);
        assert_eq!(
            status(&format!("{}/{hash}.narinfo", cache.url)).await,
            404,
            "{p}"
        );
        // Asked again: still refused, from the negative cache.
        assert_eq!(status(&format!("{}/{hash}.narinfo", cache.url)).await, 404);
    }
    // The first path again, once forgotten, now named by a scheme-relative URL.
    set_url(
        &sub,
        absolute,
        &format!("//{internal_host}/{}", nar_of(absolute)),
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let hash = Fixture::hash_of(absolute);
    assert_eq!(status(&format!("{}/{hash}.narinfo", cache.url)).await, 404);
    // A narinfo that stays under the base is served, and its NAR fetched from the upstream.
    let hash = Fixture::hash_of(good);
    let r = reqwest::get(format!("{}/{hash}.narinfo", cache.url))
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 200);
    let served = r.text().await.expect("body");
    let nar = reqwest::get(format!("{}/{}", cache.url, Fixture::nar_url(&served)))
        .await
        .expect("nar");
    assert_eq!(nar.status(), 200);
    let body = nar.bytes().await.expect("nar body");
    assert_eq!(
        body.as_ref(),
        std::fs::read(fx.cache.join(nar_of(good))).expect("nar")
    );

    assert_eq!(internal.total_hits(), 0, "the internal server was asked");
    assert_eq!(upstream.hits(&format!("/{}", nar_of(escaping))), 0);
    let text = metrics(&cache.url).await;
    assert_eq!(
        sample(
            &text,
            "nixcache_refused_total",
            &[r#"source="upstream""#, r#"reason="nar_url""#]
        ),
        Some(3.0),
        "{text}"
    );
    let logs = cache.logs();
    assert_eq!(logs.matches("narinfo refused").count(), 3, "{logs}");
    assert!(logs.contains("is not under this upstream"), "{logs}");

    // The real Nix client sees a path that is not there, not a corrupt narinfo.
    let client = NixClient::new();
    let out = client
        .copy_closure(
            &cache.url,
            &tmp.path().join("client-store"),
            absolute,
            &cache.public_key().await,
        )
        .await;
    assert!(!out.success);
    assert!(!out.stderr.contains("corrupt"), "{}", out.stderr);
    assert_eq!(internal.total_hits(), 0);
}

/// A non-loopback address of this machine, so that an upstream can be on a host that is not
/// "internal" while everything still runs here.
fn external_ip() -> IpAddr {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv4() && !a.is_loopback())
        .expect("this test needs a non-loopback IPv4 address on the machine (hostname -I)")
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_stay_at_the_upstream_unless_allowed_and_never_go_internal() {
    let fx = fixture();
    let (big, rel) = fx.big();
    let want = std::fs::read(fx.cache.join(&rel)).expect("nar");
    let start = |ip: IpAddr, mode: Mode| {
        FaultyUpstream::start_on(ip, fx.cache.clone(), fx.cache_untrusted.clone(), mode)
    };
    let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
    let external = external_ip();
    let internal = start(loopback, Mode::Normal).await;

    // By default a redirect to another origin is refused: the NAR is a 404, nothing is fetched.
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream = start(loopback, Mode::Redirect(internal.url.clone())).await;
    let cache = Nixcache::in_front_of(&tmp.path().join("a"), &upstream.url, &fx.key, &[]).await;
    let (status, _) = fetch_nar(&cache.url, &big).await;
    assert_eq!(status, 404);
    assert_eq!(
        internal.total_hits(),
        0,
        "a cross-origin redirect was followed"
    );
    let text = metrics(&cache.url).await;
    assert!(
        sample(
            &text,
            "nixcache_refused_total",
            &[r#"source="upstream""#, r#"reason="redirect""#]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        cache.logs().contains("redirect to another origin"),
        "{}",
        cache.logs()
    );

    // A redirect within the upstream's origin is followed.
    let same = start(loopback, Mode::Normal).await;
    same.set_mode(Mode::Redirect(same.url.clone()));
    let cache = Nixcache::in_front_of(&tmp.path().join("b"), &same.url, &fx.key, &[]).await;
    let (status, body) = fetch_nar(&cache.url, &big).await;
    assert_eq!(status, 200);
    assert_eq!(body, want);
    assert_eq!(same.hits(&format!("/r/{rel}")), 1);

    // Allowed cross-origin redirects reach a CDN on another host...
    let cdn = start(external, Mode::Normal).await;
    let upstream = start(external, Mode::Redirect(cdn.url.clone())).await;
    let spec = format!("{},cross-origin-redirects", upstream.url);
    let cache = Nixcache::in_front_of(&tmp.path().join("c"), &spec, &fx.key, &[]).await;
    let (status, body) = fetch_nar(&cache.url, &big).await;
    assert_eq!(status, 200);
    assert_eq!(body, want);
    assert_eq!(cdn.hits(&format!("/r/{rel}")), 1);

    // ...but never an internal address, by literal or by `localhost`, from an upstream that is
    // not itself on one.
    for (i, target) in [
        internal.url.clone(),
        internal.url.replace("127.0.0.1", "localhost"),
    ]
    .into_iter()
    .enumerate()
    {
        let upstream = start(external, Mode::Redirect(target.clone())).await;
        let spec = format!("{},cross-origin-redirects", upstream.url);
        let dir = tmp.path().join(format!("d{i}"));
        let cache = Nixcache::in_front_of(&dir, &spec, &fx.key, &[]).await;
        let (status, _) = fetch_nar(&cache.url, &big).await;
        assert_eq!(status, 404, "{target}");
        assert!(
            cache.logs().contains("redirect to an internal address"),
            "{}",
            cache.logs()
        );
    }
    assert_eq!(internal.total_hits(), 0, "an internal address was reached");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_hash_claimed_by_another_path_is_refused() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    copy_cache(&fx.cache, &dir);
    // The second path's narinfo, still validly signed (FileHash and URL are not signed), names
    // the first path's NAR file.
    // The first is one without references, so that the client's copy of it needs only itself.
    let first = fx
        .paths
        .iter()
        .find(|p| fx.narinfo(p).contains("\nReferences: \n"))
        .expect("a path without references");
    let second = fx.paths.iter().find(|p| *p != first).expect("another path");
    let first_info = fx.narinfo(first);
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .expect("field")
            .to_string()
    };
    let file = dir.join(format!("{}.narinfo", Fixture::hash_of(second)));
    let text = std::fs::read_to_string(&file).expect("narinfo");
    let text = text
        .replace(&line(&text, "FileHash: "), &line(&first_info, "FileHash: "))
        .replace(&line(&text, "FileSize: "), &line(&first_info, "FileSize: "))
        .replace(&line(&text, "URL: "), &line(&first_info, "URL: "));
    std::fs::write(&file, text).expect("write");
    let upstream =
        FaultyUpstream::start(dir.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let cache = Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, &[]).await;

    let first_hash = Fixture::hash_of(first);
    assert_eq!(
        status(&format!("{}/{first_hash}.narinfo", cache.url)).await,
        200
    );
    let second_hash = Fixture::hash_of(second);
    assert_eq!(
        status(&format!("{}/{second_hash}.narinfo", cache.url)).await,
        404
    );
    let text = metrics(&cache.url).await;
    assert_eq!(
        sample(
            &text,
            "nixcache_refused_total",
            &[r#"reason="conflicting_file_hash""#]
        ),
        Some(1.0),
        "{text}"
    );
    // The first path's NAR is still its own.
    let client = NixClient::new();
    let out = client
        .copy_closure(
            &cache.url,
            &tmp.path().join("client-store"),
            first,
            &cache.public_key().await,
        )
        .await;
    assert!(out.success, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_lines_nix_would_misread_are_refused_or_dropped() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    copy_cache(&fx.cache, &dir);
    let leaf = fx
        .paths
        .iter()
        .find(|p| fx.narinfo(p).contains("\nReferences: \n"))
        .expect("a path without references");
    let others: Vec<&String> = fx.paths.iter().filter(|p| *p != leaf).collect();
    let append = |path: &str, extra: &str| {
        let file = dir.join(format!("{}.narinfo", Fixture::hash_of(path)));
        let mut text = std::fs::read_to_string(&file).expect("narinfo");
        text.push_str(extra);
        std::fs::write(&file, text).expect("write");
    };
    // Signatures do not cover these lines. Nix splits at the first colon: this is a second
    // NarHash to it, which a line-based reader would keep as an unknown field.
    append(
        others[0],
        "NarHash:Xsha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0: \n",
    );
    // Nix reads a Deriver as a store path.
    let file = dir.join(format!("{}.narinfo", Fixture::hash_of(others[1])));
    let text = std::fs::read_to_string(&file).expect("narinfo");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("Deriver: "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, format!("{text}Deriver: not/a-path\n")).expect("write");
    // Fields nobody names that way are dropped; fields named like Nix's are kept.
    append(leaf, "Odd Key: 1\nX-Extra: kept\n");
    let upstream =
        FaultyUpstream::start(dir.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let cache = Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, &[]).await;

    for p in &others {
        let hash = Fixture::hash_of(p);
        assert_eq!(
            status(&format!("{}/{hash}.narinfo", cache.url)).await,
            404,
            "{p}"
        );
    }
    let text = metrics(&cache.url).await;
    assert_eq!(
        sample(
            &text,
            "nixcache_upstream_errors_total",
            &[r#"kind="invalid""#]
        ),
        Some(2.0),
        "{text}"
    );
    let served = reqwest::get(format!("{}/{}.narinfo", cache.url, Fixture::hash_of(leaf)))
        .await
        .expect("narinfo")
        .text()
        .await
        .expect("body");
    assert!(!served.contains("Odd Key"), "{served}");
    assert!(served.contains("\nX-Extra: kept\n"), "{served}");

    // The real Nix client reads what is served; what is refused is a miss to it, never corrupt.
    let key = cache.public_key().await;
    let client = NixClient::new();
    let out = client
        .copy_closure(&cache.url, &tmp.path().join("store-a"), leaf, &key)
        .await;
    assert!(out.success, "{}", out.stderr);
    for (i, p) in others.iter().enumerate() {
        let out = client
            .copy_closure(&cache.url, &tmp.path().join(format!("store-{i}")), p, &key)
            .await;
        assert!(!out.success, "{p}");
        assert!(
            !out.stderr.contains("corrupt") && !out.stderr.contains("too short"),
            "{}",
            out.stderr
        );
    }
}
