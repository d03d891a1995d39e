//! Span export: a NAR miss seen by a real OTLP/HTTP receiver (oteltap, from PyPI), as one trace
//! in which the request's span holds the download's, and that one its steps: lock wait,
//! upstream fetch, verification and commit. Without `--otlp-endpoint` nothing is sent, even
//! with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` set.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fetch_nar, fixture, FaultyUpstream, Fixture, KillOnDrop, Mode, Nixcache};

/// `python3 -m oteltap` on a free port, printing what it receives as NDJSON into a file.
struct Receiver {
    _process: KillOnDrop,
    out: std::path::PathBuf,
    port: u16,
}

impl Receiver {
    fn start(dir: &std::path::Path) -> Self {
        let port = common::free_port();
        let out = dir.join("oteltap.ndjson");
        let file = std::fs::File::create(&out).expect("create");
        let process = Command::new("python3")
            .args(["-u", "-m", "oteltap", "--port", &port.to_string()])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m oteltap (scripts/provision.sh installs it)");
        let receiver = Self {
            _process: KillOnDrop(process),
            out,
            port,
        };
        let start = Instant::now();
        while !receiver.text().contains("Listening") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "oteltap did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        receiver
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The spans received so far.
    fn spans(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("spanId").is_some())
            .collect()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn field<'a>(span: &'a serde_json::Value, name: &str) -> &'a str {
    span[name].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nar_miss_is_one_trace_with_its_steps_as_child_spans() {
    let fx = fixture();
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(tmp.path());
    let upstream =
        FaultyUpstream::start(fx.cache.clone(), fx.cache_untrusted.clone(), Mode::Normal).await;
    let otlp = receiver.url();
    let cache = Nixcache::start(
        &tmp.path().join("data"),
        &[
            "--upstream",
            &upstream.url,
            "--upstream-key",
            &fx.key,
            "--otlp-endpoint",
            &otlp,
        ],
    )
    .await;
    let (status, body) = fetch_nar(&cache.url, fx.top()).await;
    assert_eq!(status, 200);
    assert!(!body.is_empty());

    // Batches leave every few seconds.
    let wanted = ["lock_wait", "upstream_fetch", "verify", "commit"];
    let start = Instant::now();
    let spans = loop {
        let spans = receiver.spans();
        let names: Vec<&str> = spans.iter().map(|s| field(s, "name")).collect();
        if wanted.iter().all(|w| names.contains(w)) {
            break spans;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "spans received: {names:?}\n{}",
            cache.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&str, &serde_json::Value> =
        spans.iter().map(|s| (field(s, "spanId"), s)).collect();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| field(s, "name") == name)
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let download = named("nar_download");
    for step in wanted {
        let span = named(step);
        assert_eq!(
            field(span, "parentSpanId"),
            field(download, "spanId"),
            "{step} is a step of the download"
        );
        assert_eq!(field(span, "traceId"), field(download, "traceId"));
    }
    // The download belongs to the NAR request that started it.
    let parent = by_id
        .get(field(download, "parentSpanId"))
        .expect("the download's parent was exported");
    assert_eq!(field(parent, "name"), "request");
    let nar_url = Fixture::nar_url(&fx.narinfo(fx.top()));
    let path_of = |s: &serde_json::Value| {
        s["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == "path"))
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        path_of(parent).starts_with("/nar/"),
        "{} (upstream {nar_url})",
        path_of(parent)
    );
    drop(cache);

    // Not configured: nothing leaves, whatever the OpenTelemetry variables say.
    let before = receiver.spans().len();
    let quiet = Nixcache::start_with_env(
        &tmp.path().join("quiet"),
        &["--upstream", &upstream.url, "--upstream-key", &fx.key],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    )
    .await;
    let (status, _) = fetch_nar(&quiet.url, &fx.paths[1]).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        receiver.spans().len(),
        before,
        "spans sent without --otlp-endpoint"
    );
}
