//! The real Nix client against nixcache, in both versions the project supports: Debian
//! bookworm's Nix 2.8 and Debian sid's Nix 2.34 (see `common::nixes`). Each pushes store paths
//! with its netrc file in xz, zstd and no compression, fetches them back into a fresh store
//! trusting only nixcache's key, reads them with `nix store ls` and `cat` without fetching, and
//! uploads a build log that `nix log` then reads from the cache.

mod common;

use common::nixes::{Nix, Scratch};
use common::Nixcache;

const TOKEN: &str = "upload-token-0123456789abcdef";

/// A netrc file the client reads, with the upload token for 127.0.0.1.
fn netrc(scratch: &Scratch) -> String {
    std::fs::write(
        scratch.host("netrc"),
        format!("machine 127.0.0.1\nlogin nix\npassword {TOKEN}\n"),
    )
    .expect("netrc");
    scratch.inside("netrc")
}

/// A store path in the client's own store: a file with `contents`.
async fn add_file(nix: Nix, scratch: &Scratch, name: &str, contents: &str) -> String {
    std::fs::write(scratch.host(name), contents).expect("write");
    let out = nix
        .run("nix", &["store", "add-file", &scratch.inside(name)])
        .await;
    assert!(out.success, "{nix:?}: nix store add-file: {}", out.stderr);
    out.stdout.trim().to_string()
}

async fn each_version(nix: Nix) {
    let version = nix.version().await;
    let data = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::start(
        data.path(),
        &["--upstream", "http://127.0.0.1:1", "--upload-token", TOKEN],
    )
    .await;
    let key = cache.public_key().await;
    let scratch = nix.tempdir();
    let netrc = netrc(&scratch);

    for compression in ["xz", "zstd", "none"] {
        let contents = format!("pushed by Nix {version} with {compression}\n");
        let path = add_file(nix, &scratch, &format!("file-{compression}"), &contents).await;
        let to = format!(
            "{}?compression={compression}&write-nar-listing=true",
            cache.url
        );
        let out = nix
            .run(
                "nix",
                &["copy", "--to", &to, &path, "--option", "netrc-file", &netrc],
            )
            .await;
        assert!(
            out.success,
            "Nix {version}: push with {compression}: {}\n{}",
            out.stderr,
            cache.logs()
        );
        let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
        let narinfo = reqwest::get(format!("{}/{hash}.narinfo", cache.url))
            .await
            .expect("narinfo")
            .text()
            .await
            .expect("body");
        assert!(
            narinfo.contains(&format!("Compression: {compression}")),
            "Nix {version}: {narinfo}"
        );

        // A fresh store fetches it back, trusting only nixcache's key.
        let fresh = nix.tempdir();
        let out = nix
            .run(
                "nix",
                &[
                    "copy",
                    "--from",
                    &cache.url,
                    "--to",
                    &fresh.inside("store"),
                    &path,
                    "--option",
                    "trusted-public-keys",
                    &key,
                    "--option",
                    "require-sigs",
                    "true",
                ],
            )
            .await;
        assert!(
            out.success,
            "Nix {version}: fetch ({compression}): {}",
            out.stderr
        );
        let base = path.trim_start_matches("/nix/store/");
        let fetched = fresh.host("store").join("nix/store").join(base);
        assert_eq!(
            std::fs::read_to_string(&fetched).expect("fetched file"),
            contents
        );

        // Read in the cache, without fetching into a store.
        let out = nix
            .run("nix", &["store", "cat", "--store", &cache.url, &path])
            .await;
        assert!(out.success, "Nix {version}: nix store cat: {}", out.stderr);
        assert_eq!(out.stdout, contents);
        let out = nix
            .run("nix", &["store", "ls", "--store", &cache.url, "-l", &path])
            .await;
        assert!(out.success, "Nix {version}: nix store ls: {}", out.stderr);
        assert!(
            out.stdout.contains(&contents.len().to_string()),
            "Nix {version}: {}",
            out.stdout
        );
    }

    // A build's log, uploaded and read back from the cache.
    let marker = format!("build log of Nix {version}");
    std::fs::write(
        scratch.host("log.nix"),
        format!(
            "derivation {{ name = \"logged\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"echo '{marker}'; echo done > $out\" ]; }}"
        ),
    )
    .expect("write");
    let out = nix
        .run("nix-build", &["--no-out-link", &scratch.inside("log.nix")])
        .await;
    assert!(out.success, "Nix {version}: build: {}", out.stderr);
    let built = out.stdout.trim().to_string();
    let out = nix
        .run("nix-instantiate", &[&scratch.inside("log.nix")])
        .await;
    assert!(out.success, "Nix {version}: instantiate: {}", out.stderr);
    let drv = out.stdout.trim().to_string();
    // The output, then its derivation's log, as a CI job uploads them.
    for args in [
        vec!["copy", "--to", cache.url.as_str(), built.as_str()],
        vec![
            "store",
            "copy-log",
            "--to",
            cache.url.as_str(),
            drv.as_str(),
        ],
    ] {
        let mut args = args;
        args.extend(["--option", "netrc-file", netrc.as_str()]);
        let out = nix.run("nix", &args).await;
        assert!(
            out.success,
            "Nix {version}: nix {}: {}\n{}",
            args[..2].join(" "),
            out.stderr,
            cache.logs()
        );
    }
    // `nix log` of the output finds its deriver in the cache's narinfo and the log beside it.
    let out = nix
        .run("nix", &["log", "--store", &cache.url, &built])
        .await;
    assert!(out.success, "Nix {version}: nix log: {}", out.stderr);
    assert!(
        out.stdout.contains(&marker),
        "Nix {version}: {}",
        out.stdout
    );
    println!("Nix {version}: pushes (xz, zstd, none), fetches, ls, cat, copy-log and log work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_2_8_of_bookworm() {
    assert!(Nix::Bookworm.version().await.starts_with("2."));
    each_version(Nix::Bookworm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_2_34_of_sid() {
    let version = Nix::Sid.version().await;
    assert!(version.starts_with("2.3"), "sid's Nix is {version}");
    each_version(Nix::Sid).await;
}
