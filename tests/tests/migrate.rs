//! Many replicas starting at once against a new PostgreSQL database: migrations run once, under
//! an advisory lock, and every process succeeds.

mod common;

use common::nixcache_bin;
use nixcache_tests::postgres::Postgres;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_all_succeed() {
    let pg = Postgres::start();
    let url = pg.url();
    let tmp = tempfile::tempdir().expect("tempdir");
    let runs: Vec<_> = (0..6)
        .map(|i| {
            tokio::process::Command::new(nixcache_bin())
                .arg("migrate")
                .arg("--data-dir")
                .arg(tmp.path().join(format!("r{i}")))
                .args(["--database-url", &url])
                .output()
        })
        .collect();
    for out in futures_util::future::join_all(runs).await {
        let out = out.expect("nixcache migrate");
        assert!(
            out.status.success(),
            "a concurrent migrate failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let applied = pg.query("SELECT count(*) FROM __diesel_schema_migrations");
    let dirs = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cache-server/migrations/postgres"
    ))
    .expect("migrations")
    .count();
    assert_eq!(applied.trim(), dirs.to_string());
    assert_eq!(pg.query("SELECT count(*) FROM nars").trim(), "0");
}
