//! SIGTERM: readiness goes first, in-flight downloads finish within the bound or are abandoned,
//! and nothing half-written is ever committed.

mod common;

use std::time::Duration;

use common::{fixture, FaultyUpstream, Fixture, Mode, Nixcache};
use futures_util::StreamExt;

struct Started {
    _tmp: tempfile::TempDir,
    _upstream: FaultyUpstream,
    cache: Nixcache,
    want: Vec<u8>,
    nar_file: String,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
}

async fn download_in_progress(pause: Duration, timeout: &str) -> Started {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream = FaultyUpstream::start(
        fx.cache.clone(),
        fx.cache_untrusted.clone(),
        Mode::SlowNar(pause),
    )
    .await;
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--shutdown-timeout", timeout],
    )
    .await;
    let (path, rel) = fx.big();
    let want = std::fs::read(fx.cache.join(&rel)).expect("nar");
    let text = reqwest::get(format!("{}/{}.narinfo", cache.url, Fixture::hash_of(&path)))
        .await
        .expect("narinfo")
        .text()
        .await
        .expect("body");
    let url = Fixture::nar_url(&text);
    let mut body = reqwest::get(format!("{}/{url}", cache.url))
        .await
        .expect("nar")
        .bytes_stream()
        .boxed();
    let first = body.next().await.expect("first bytes").expect("chunk");
    let body = futures_util::stream::iter([Ok(first)]).chain(body).boxed();
    let nar_file = url.trim_start_matches("nar/").to_string();
    Started {
        _tmp: tmp,
        _upstream: upstream,
        cache,
        want,
        nar_file,
        body,
    }
}

async fn read_all(
    mut body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(c) = body.next().await {
        out.extend_from_slice(&c.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_download_finish_within_the_bound() {
    // ~2.6 s of download, 20 s allowed.
    let s = download_in_progress(Duration::from_millis(40), "20s").await;
    s.cache.signal_term();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(format!("{}/readyz", s.cache.url))
        .await
        .expect("readyz during shutdown");
    assert_eq!(ready.status(), 503, "readiness must fail first");
    // Still answered while draining, with keep-alive off: a client behind a Service reconnects
    // to a replica that is ready rather than reuse this connection.
    let info = reqwest::get(format!("{}/nix-cache-info", s.cache.url))
        .await
        .expect("a request while draining");
    assert_eq!(info.status(), 200);
    assert_eq!(
        info.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "Connection header while draining"
    );
    let got = read_all(s.body)
        .await
        .expect("the client got the whole NAR");
    assert!(got == s.want);
    let store = s.cache.data_dir.join("store/nar").join(&s.nar_file);
    let data_dir = s.cache.data_dir.clone();
    assert!(
        s.cache.wait_exit(Duration::from_secs(30)),
        "did not exit cleanly"
    );
    assert_eq!(std::fs::read(&store).expect("committed NAR"), s.want);
    assert_eq!(
        std::fs::read_dir(data_dir.join("tmp"))
            .expect("staging")
            .count(),
        0,
        "staging left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_abandons_a_download_past_the_bound_without_committing() {
    // ~6.4 s of download, 1 s allowed.
    let s = download_in_progress(Duration::from_millis(100), "1s").await;
    let store = s.cache.data_dir.join("store/nar").join(&s.nar_file);
    s.cache.signal_term();
    let got = read_all(s.body).await;
    assert!(
        !matches!(&got, Ok(b) if *b == s.want && b.len() == s.want.len()),
        "the whole NAR arrived"
    );
    assert!(
        s.cache.wait_exit(Duration::from_secs(20)),
        "did not exit cleanly"
    );
    assert!(!store.exists(), "an abandoned download was committed");
}
