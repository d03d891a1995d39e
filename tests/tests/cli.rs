//! The command line contract: flags, environment variables, the config file, keys, endpoints.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{nixcache_bin, Nixcache};

#[test]
fn serve_help_documents_every_flag_and_its_env_var() {
    let out = Command::new(nixcache_bin())
        .args(["serve", "--help"])
        .output()
        .expect("help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "listen",
        "data-dir",
        "upstream",
        "upstream-key",
        "signing-key-file",
        "priority",
        "database-url",
        "config",
        "upstream-timeout",
        "upstream-connect-timeout",
        "negative-ttl",
    ] {
        assert!(
            help.contains(&format!("--{flag} ")),
            "--{flag} missing:\n{help}"
        );
        let env = format!("NIXCACHE_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&env), "{env} missing:\n{help}");
    }
    for default in [
        "0.0.0.0:8080",
        "./nixcache-data",
        "https://cache.nixos.org",
        "cache.nixos.org-1:",
    ] {
        assert!(
            help.contains(default),
            "default {default} not documented:\n{help}"
        );
    }
}

#[test]
fn bad_configuration_is_a_clear_error() {
    for (args, expect) in [
        (vec!["--upstream", "ftp://x"], "upstream"),
        (vec!["--upstream-key", "nonsense"], "upstream-key"),
        (
            vec!["--database-url", "mysql://root:hunter2@db/x"],
            "database-url",
        ),
        (vec!["--upstream-timeout", "soon"], "upstream-timeout"),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = Command::new(nixcache_bin())
            .arg("serve")
            .args(&args)
            .arg("--data-dir")
            .arg(tmp.path())
            .output()
            .expect("serve");
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "password echoed: {err}");
    }
}

#[test]
fn keygen_writes_a_private_key_nix_can_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (sec, public) = (tmp.path().join("k.sec"), tmp.path().join("k.pub"));
    let out = Command::new(nixcache_bin())
        .args(["keygen", "--name", "test-1", "--secret-key-file"])
        .arg(&sec)
        .arg("--public-key-file")
        .arg(&public)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&sec).expect("sec").permissions().mode() & 0o777,
        0o600
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(std::fs::read_to_string(&public).expect("pub"), printed);
    // Nix signs with it (so the format is Nix's).
    let nix = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "convert-secret-to-public",
        ])
        .stdin(std::fs::File::open(&sec).expect("open"))
        .output()
        .expect("nix key");
    assert!(
        nix.status.success(),
        "{}",
        String::from_utf8_lossy(&nix.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&nix.stdout).trim(), printed);
    // Never overwrites an existing key.
    let again = Command::new(nixcache_bin())
        .args(["keygen", "--name", "x", "--secret-key-file"])
        .arg(&sec)
        .output()
        .expect("keygen");
    assert!(!again.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_configuration_start_generates_a_key_and_serves_the_endpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // Default upstream (cache.nixos.org) is unreachable here: nixcache starts anyway.
    let cache = Nixcache::start(
        &data,
        &[
            "--upstream-timeout",
            "2s",
            "--upstream-connect-timeout",
            "1s",
        ],
    )
    .await;
    let key_file = data.join("signing-key.sec");
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let public = cache.public_key().await;
    assert!(cache.logs().contains(&public), "public key not logged");
    let secret = std::fs::read_to_string(&key_file).expect("key");
    let secret_b64 = secret.split_once(':').expect("name:key").1.trim();
    assert!(!cache.logs().contains(secret_b64), "secret key logged");

    let get = |path: &str| reqwest::get(format!("{}{path}", cache.url));
    let r = get("/nix-cache-info").await.expect("cache info");
    assert_eq!(r.headers()["content-type"], "text/x-nix-cache-info");
    assert_eq!(
        r.text().await.expect("body"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    let r = get("/metrics").await.expect("metrics");
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("nixcache_http_requests_total"));
    let r = get(&format!("/{}.narinfo", "0".repeat(32)))
        .await
        .expect("narinfo");
    assert_eq!(
        r.status(),
        404,
        "an unreachable upstream is a miss, never a 5xx"
    );
    assert!(data.join("nixcache.sqlite").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_come_from_env_and_config_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("nixcache.toml");
    std::fs::write(
        &config,
        "priority = 17\nupstream = [\"http://127.0.0.1:9\"]\nupstream-timeout = \"1s\"\n",
    )
    .expect("write");
    let config = config.to_string_lossy().into_owned();
    let (info, key) = cache_info_with(
        &["--config", &config],
        &[("NIXCACHE_SIGNING_KEY_NAME", "from-env-1")],
    )
    .await;
    assert!(info.contains("Priority: 17"), "{info}");
    assert!(key.starts_with("from-env-1:"), "{key}");
    // A flag wins over the environment, the environment over the file.
    let env = [("NIXCACHE_PRIORITY", "5")];
    let (info, _) = cache_info_with(&["--config", &config, "--priority", "3"], &env).await;
    assert!(info.contains("Priority: 3"), "{info}");
    let (info, _) = cache_info_with(&["--config", &config], &env).await;
    assert!(info.contains("Priority: 5"), "{info}");
}

/// Starts nixcache with these arguments and environment; returns its nix-cache-info and public key.
async fn cache_info_with(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::start_with_env(&tmp.path().join("data"), args, env).await;
    let info = reqwest::get(format!("{}/nix-cache-info", cache.url))
        .await
        .expect("info")
        .text()
        .await
        .expect("body");
    (info, cache.public_key().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_request_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &[
            "--log-format",
            "json",
            "--upstream",
            &dead,
            "--upstream-timeout",
            "1s",
        ],
    )
    .await;
    let r = reqwest::Client::new()
        .get(format!("{}/{}.narinfo", cache.url, "1".repeat(32)))
        .header("x-request-id", "req-test-42")
        .send()
        .await
        .expect("narinfo");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "req-test-42");
    let r = reqwest::get(format!("{}/healthz", cache.url))
        .await
        .expect("healthz");
    assert_eq!(r.headers()["x-request-id"].len(), 24, "a generated id");
    let logs = cache.logs();
    // The upstream failure is logged inside the request's span, as JSON.
    let line = logs
        .lines()
        .find(|l| l.contains("upstream lookup failed"))
        .unwrap_or_else(|| panic!("no upstream failure logged:\n{logs}"));
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not JSON: {line}"
    );
    assert!(line.contains("req-test-42"), "no request id: {line}");
}
