//! `/metrics`: scraped, parsed, and checked for the exact counts this test's own requests caused.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{fixture, FaultyUpstream, Fixture, Mode, Nixcache};

/// `name{label="v",...} value` lines into a map keyed by `name{labels sorted}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_happened() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let cache = Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, &[]).await;
    // The priority is learned from nix-cache-info in the background: let that happen first.
    let start = Instant::now();
    while upstream.hits("/nix-cache-info") == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(
            client
                .get(format!("{}/nix-cache-info", cache.url))
                .send()
                .await
                .expect("get")
                .status(),
            200
        );
    }
    assert_eq!(
        client
            .head(format!("{}/nix-cache-info", cache.url))
            .send()
            .await
            .expect("head")
            .status(),
        200
    );
    let dep = fx.paths.iter().find(|p| p.contains("-dep-")).expect("dep");
    let hash = Fixture::hash_of(dep);
    let mut text = String::new();
    for _ in 0..2 {
        text = client
            .get(format!("{}/{hash}.narinfo", cache.url))
            .send()
            .await
            .expect("narinfo")
            .text()
            .await
            .expect("body");
    }
    let nar = client
        .get(format!("{}/{}", cache.url, Fixture::nar_url(&text)))
        .send()
        .await
        .expect("nar")
        .bytes()
        .await
        .expect("body");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let m = parse(
        &client
            .get(format!("{}/metrics", cache.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body"),
    );
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from:\n{m:#?}"))
    };
    assert_eq!(
        get(r#"nixcache_http_requests_total{method="GET",route="/nix-cache-info",status="200"}"#),
        3.0
    );
    assert_eq!(
        get(r#"nixcache_http_requests_total{method="HEAD",route="/nix-cache-info",status="200"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nixcache_http_requests_total{method="GET",route="/{hash}.narinfo",status="200"}"#),
        2.0
    );
    assert_eq!(
        get(r#"nixcache_http_requests_total{method="GET",route="/nar/{file}",status="200"}"#),
        1.0
    );
    assert_eq!(
        get(
            r#"nixcache_http_request_duration_seconds_count{method="GET",route="/nix-cache-info"}"#
        ),
        3.0
    );
    assert_eq!(
        get(r#"nixcache_narinfo_lookups_total{result="upstream"}"#),
        1.0
    );
    assert_eq!(
        get(r#"nixcache_narinfo_lookups_total{result="memory"}"#),
        1.0
    );
    assert_eq!(get(r#"nixcache_nar_requests_total{result="live"}"#), 1.0);
    // Upstreams are labelled by host and port.
    let label = upstream.url.trim_start_matches("http://").to_string();
    for (kind, n) in [("cache_info", 1.0), ("narinfo", 1.0), ("nar", 1.0)] {
        assert_eq!(
            get(&format!(
                r#"nixcache_upstream_requests_total{{kind="{kind}",upstream="{label}"}}"#
            )),
            n,
            "{kind}"
        );
    }
    let upstream_bytes = std::fs::read(fx.cache.join("nix-cache-info"))
        .expect("info")
        .len()
        + std::fs::read(fx.cache.join(format!("{hash}.narinfo")))
            .expect("narinfo")
            .len()
        + nar.len();
    assert_eq!(
        get(&format!(
            r#"nixcache_upstream_bytes_total{{upstream="{label}"}}"#
        )),
        upstream_bytes as f64
    );
    assert_eq!(get(r#"nixcache_nar_downloads_total{result="ok"}"#), 1.0);
    assert_eq!(get("nixcache_downloads_in_flight"), 0.0);
    assert_eq!(get("nixcache_stored_nars"), 1.0);
    assert_eq!(get("nixcache_stored_bytes"), nar.len() as f64);
    assert_eq!(
        get(r#"nixcache_lock_acquisitions_total{result="acquired"}"#),
        2.0,
        "one narinfo, one NAR lock"
    );
    assert_eq!(get("nixcache_lock_degraded"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn scrapes_cost_the_database_nothing_and_the_gauges_follow_commits() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pg = nixcache_tests::postgres::Postgres::start();
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let db = pg.url();
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--database-url", &db],
    )
    .await;
    let scrape = || async {
        parse(
            &reqwest::get(format!("{}/metrics", cache.url))
                .await
                .expect("metrics")
                .text()
                .await
                .expect("body"),
        )
    };
    // The gauges are set from the database at start.
    let start = Instant::now();
    while !scrape().await.contains_key("nixcache_stored_nars") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no stored-NARs gauge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(scrape().await["nixcache_stored_nars"], 0.0);

    // Every statement is logged from here on; scrapes must add none about stored NARs.
    pg.query("ALTER SYSTEM SET log_statement = 'all'");
    pg.query("SELECT pg_reload_conf()");
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.query("SELECT 'scrapes-begin'");
    for _ in 0..20 {
        scrape().await;
    }
    pg.query("SELECT 'scrapes-end'");
    let log = pg.log();
    let during = log
        .split("scrapes-begin")
        .nth(1)
        .and_then(|rest| rest.split("scrapes-end").next())
        .expect("markers in the PostgreSQL log");
    assert!(
        !during.contains("\"nars\"") && !during.contains(" nars"),
        "scrapes queried the nars table:\n{during}"
    );

    // A commit shows at once, without a scrape querying anything.
    let (big, rel) = fx.big();
    let (status, nar) = common::fetch_nar(&cache.url, &big).await;
    assert_eq!(status, 200);
    assert!(nar == std::fs::read(fx.cache.join(rel)).expect("nar"));
    let m = scrape().await;
    assert_eq!(m["nixcache_stored_nars"], 1.0);
    assert_eq!(m["nixcache_stored_bytes"], nar.len() as f64);
}
