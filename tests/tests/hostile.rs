//! Hostile requests, sent byte for byte over raw TCP (an HTTP client would normalize them): each
//! gets a 4xx, and the server stays healthy and keeps serving.

mod common;

use std::time::Duration;

use common::{fixture, Nixcache, StaticServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one raw request line and returns the response status code.
async fn status_of(port: u16, method: &str, target: &str) -> u16 {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    status
        .parse()
        .unwrap_or_else(|_| panic!("no status for {target:.80}: {text:.200}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_get_4xx_and_the_server_stays_up() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream = StaticServer::start(&fx.cache).await;
    let cache = Nixcache::in_front_of(&tmp.path().join("data"), &upstream.url, &fx.key, &[]).await;
    let nar = format!("{}.nar.xz", "1".repeat(52));
    let long = "a".repeat(70_000);
    let cases: Vec<(String, &str)> = vec![
        // malformed hashes
        ("/abc.narinfo".into(), "short hash"),
        (
            format!("/{}.narinfo", "e".repeat(32)),
            "letter outside nix32",
        ),
        (format!("/{}.narinfo", "A".repeat(32)), "upper case"),
        (format!("/{}.narinfo", "0".repeat(33)), "33 chars"),
        (format!("/{}%00.narinfo", "0".repeat(31)), "NUL byte"),
        (format!("/{}%2e.narinfo", "0".repeat(31)), "encoded dot"),
        // traversal
        ("/nar/../../../../etc/passwd".into(), "dot-dot"),
        ("/nar/..%2f..%2f..%2fetc%2fpasswd".into(), "encoded slashes"),
        (
            "/nar/%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
            "encoded dot-dot",
        ),
        ("/nar/%252e%252e%252fetc".into(), "double encoded"),
        ("/%2e%2e/%2e%2e/etc/passwd".into(), "encoded root traversal"),
        ("/nar/..%5c..%5cwindows".into(), "backslashes"),
        (format!("/nar/{nar}/../../etc/passwd"), "trailing traversal"),
        ("/nar/".into(), "empty file name"),
        // unknown NAR names
        (
            format!("/nar/{}.nar.exe", "1".repeat(52)),
            "unknown extension",
        ),
        (
            format!("/nar/{}.nar.xz.xz", "1".repeat(52)),
            "double extension",
        ),
        (format!("/nar/{}.zip", "1".repeat(52)), "not a NAR"),
        (format!("/nar/{}.nar", "2".repeat(52)), "hash past 256 bits"),
        ("/nar/x.nar".into(), "short NAR hash"),
        // overlong
        (format!("/{long}.narinfo"), "overlong narinfo"),
        (format!("/nar/{long}.nar"), "overlong NAR"),
        (format!("/{long}"), "overlong path"),
    ];
    for (target, what) in &cases {
        for method in ["GET", "HEAD"] {
            let status = status_of(cache.port, method, target).await;
            assert!(
                (400..500).contains(&status),
                "{method} {what} ({target:.80}) → {status}"
            );
        }
    }
    // Not a method we serve.
    assert!((400..500).contains(&status_of(cache.port, "DELETE", "/nix-cache-info").await));
    assert!((400..500).contains(&status_of(cache.port, "PUT", &format!("/nar/{nar}")).await));
    // A malformed hash is a 400 specifically; an unknown but valid one a 404.
    assert_eq!(status_of(cache.port, "GET", "/abc.narinfo").await, 400);
    assert_eq!(
        status_of(
            cache.port,
            "GET",
            &format!("/nar/{}.nar.exe", "1".repeat(52))
        )
        .await,
        400
    );
    assert_eq!(
        status_of(cache.port, "GET", &format!("/nar/{nar}")).await,
        404
    );
    assert_eq!(
        status_of(cache.port, "GET", &format!("/{}.narinfo", "0".repeat(32))).await,
        404
    );

    // Still healthy, still serving.
    assert_eq!(status_of(cache.port, "GET", "/healthz").await, 200);
    assert_eq!(status_of(cache.port, "GET", "/nix-cache-info").await, 200);
    let hash = &fx.top()["/nix/store/".len().."/nix/store/".len() + 32];
    assert_eq!(
        status_of(cache.port, "GET", &format!("/{hash}.narinfo")).await,
        200
    );
    assert!(!cache.logs().contains("panicked"), "{}", cache.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_oversized_requests_are_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &["--upstream", "http://127.0.0.1:1"],
    )
    .await;

    // Slowloris: a request head trickled in a byte at a time and never finished is answered 408
    // and closed once the head timeout (5 s) is over, not kept open.
    let mut conn = TcpStream::connect(("127.0.0.1", cache.port))
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in
        b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if conn.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), conn.read(&mut probe)).await
        {
            let text = String::from_utf8_lossy(&probe[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled request head was kept open");
    assert!(started.elapsed() < Duration::from_secs(20));

    // A head past the size limit: a 4xx or a closed connection, never a hang.
    let mut conn = TcpStream::connect(("127.0.0.1", cache.port))
        .await
        .expect("connect");
    let big = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = conn.write_all(big.as_bytes()).await;
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut resp)).await;
    assert!(read.is_ok(), "an oversized head was kept open");
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        resp.is_empty() || (400..500).contains(&status),
        "{text:.200}"
    );

    // Still healthy.
    assert_eq!(status_of(cache.port, "GET", "/healthz").await, 200);
    assert!(!cache.logs().contains("panicked"), "{}", cache.logs());
}
