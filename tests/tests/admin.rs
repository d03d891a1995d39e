//! The admin API: `POST /api/v1/prefetch` fetches a closure through the miss flow; afterwards the
//! real Nix client gets the whole closure from nixcache with the upstream gone. The admin token
//! guards it; without one configured the API does not exist. With `Prefer: respond-async` the work
//! becomes a task in the database: any replica reports it, and when the replica running it is
//! killed another one finishes it. GC requests coalesce into one run across replicas.

mod common;

use std::time::{Duration, Instant};

use common::{
    fixture, metrics, sample, store_contents, Cluster, FaultyUpstream, Fixture, Mode, NixClient,
    Nixcache, StaticServer,
};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-0123456789abcdef";

/// An admin API answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

/// `POST <url>/api/v1/<endpoint>` with an optional admin token, asking for a task with
/// `prefer_async`.
async fn api(
    url: &str,
    endpoint: &str,
    token: Option<&str>,
    body: String,
    prefer_async: bool,
) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/api/v1/{endpoint}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if prefer_async {
        req = req.header("Prefer", "respond-async");
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// `POST <url>/api/v1/<endpoint>`, synchronous: status and JSON answer.
async fn call(url: &str, endpoint: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let a = api(url, endpoint, token, body, false).await;
    (a.status, a.json)
}

/// `GET <base><location>` with the admin token: status and the task.
async fn get_task(base: &str, location: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{location}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET task");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls a task at `base` until it has finished; panics after `timeout`.
async fn wait_finished(base: &str, location: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (status, task) = get_task(base, location).await;
        assert_eq!(status, 200, "{task}");
        if matches!(task["state"].as_str(), Some("succeeded" | "failed")) {
            return task;
        }
        assert!(start.elapsed() < timeout, "task not finished: {task}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    out.sort();
    out
}

/// The `Location` of a 202, checked to be one.
fn accepted_location(a: &Answer) -> String {
    assert_eq!(a.status, 202, "{}", a.json);
    assert_eq!(
        a.headers
            .get("preference-applied")
            .and_then(|v| v.to_str().ok()),
        Some("respond-async")
    );
    let location = a
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string();
    assert_eq!(
        location,
        format!("/api/v1/tasks/{}", a.json["id"].as_str().expect("id"))
    );
    location
}

async fn post(url: &str, token: Option<&str>, body: String) -> (u16, Value) {
    call(url, "prefetch", token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_closure_is_served_with_the_upstream_gone() {
    let fx = fixture();
    let upstream = StaticServer::start(&fx.cache).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--admin-token", ADMIN],
    )
    .await;
    let request = json!({"paths": [fx.top()], "closure": true}).to_string();

    // Guarded: without the token or with a wrong one, nothing happens.
    assert_eq!(post(&cache.url, None, request.clone()).await.0, 401);
    assert_eq!(
        post(&cache.url, Some("wrong-token-0123456789"), request.clone())
            .await
            .0,
        401
    );
    let narinfo = format!("{}/{}.narinfo", cache.url, Fixture::hash_of(fx.top()));
    let stored = || {
        std::fs::read_dir(tmp.path().join("data/store/nar"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(stored(), 0, "a refused request fetched something");
    // Bad bodies: 400 with a message.
    for bad in [
        "not json".to_string(),
        json!({"paths": []}).to_string(),
        json!({"paths": ["/etc/passwd"]}).to_string(),
        json!({"paths": [fx.top()], "colour": "blue"}).to_string(),
    ] {
        let (status, body) = post(&cache.url, Some(ADMIN), bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {body}"
        );
    }

    // The closure, fetched once; asked again, it is all cached.
    let (status, report) = post(&cache.url, Some(ADMIN), request.clone()).await;
    assert_eq!(status, 200, "{report}");
    let mut fetched: Vec<String> = report["fetched"]
        .as_array()
        .expect("fetched")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    fetched.sort();
    let mut want = fx.paths.clone();
    want.sort();
    assert_eq!(fetched, want, "{report}");
    assert_eq!(report["failed"], json!([]));
    let (_, again) = post(&cache.url, Some(ADMIN), request).await;
    assert_eq!(
        again["cached"].as_array().map(Vec::len),
        Some(fx.paths.len()),
        "{again}"
    );
    // A path no upstream has.
    let missing = format!("/nix/store/{}-missing", "0".repeat(32));
    let (_, report) = post(
        &cache.url,
        Some(ADMIN),
        json!({"paths": [missing]}).to_string(),
    )
    .await;
    assert_eq!(report["not_found"], json!([missing]));

    // The command line does the same.
    let cli = |token: &str, path: &str| {
        std::process::Command::new(common::nixcache_bin())
            .args(["prefetch", "--server", &cache.url, path])
            .env("NIXCACHE_ADMIN_TOKEN", token)
            .output()
            .expect("nixcache prefetch")
    };
    let out = cli(ADMIN, fx.top());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "0 fetched, {} cached already, 0 not found, 0 failed",
            fx.paths.len()
        )),
        "{stdout}"
    );
    let out = cli(ADMIN, &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not found upstream"));
    let out = cli("wrong-token-0123456789", fx.top());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the admin token"));

    // Asked for asynchronously: 202 with the task's Location at once; polling it reaches
    // succeeded, with the report a synchronous request gets.
    let a = api(
        &cache.url,
        "prefetch",
        Some(ADMIN),
        json!({"paths": [missing, fx.top()], "closure": false}).to_string(),
        true,
    )
    .await;
    let location = accepted_location(&a);
    assert!(
        matches!(a.json["state"].as_str(), Some("pending" | "running")),
        "{}",
        a.json
    );
    let task = wait_finished(&cache.url, &location, Duration::from_secs(30)).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["kind"], "prefetch");
    assert_eq!(task["result"]["not_found"], json!([missing]), "{task}");
    assert_eq!(task["result"]["cached"], json!([fx.top()]), "{task}");
    assert_eq!(task["attempts"], 1);
    for t in ["created_at", "started_at", "finished_at"] {
        assert!(
            task[t].as_str().is_some_and(|v| v.starts_with("20")),
            "{t}: {task}"
        );
    }
    // Unknown or malformed ids: 404; without the token: 401.
    let unknown = format!("/api/v1/tasks/{}", "0".repeat(32));
    assert_eq!(get_task(&cache.url, &unknown).await.0, 404);
    assert_eq!(
        get_task(&cache.url, "/api/v1/tasks/not-a-task").await.0,
        404
    );
    let anonymous = reqwest::get(format!("{}{location}", cache.url))
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), 401);

    // The command line: --async prints the task's id; `nixcache tasks` shows it.
    let run = |args: &[&str]| {
        std::process::Command::new(common::nixcache_bin())
            .args(args)
            .env("NIXCACHE_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("nixcache")
    };
    let out = run(&["prefetch", "--async", "--server", &cache.url, fx.top()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
    let out = run(&["tasks", "--server", &cache.url, "--wait", &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(
        stdout.contains(&format!("0 fetched, {} cached already", fx.paths.len())),
        "{stdout}"
    );
    let out = run(&["tasks", "--server", &cache.url, "--json", &id]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["id"], json!(id));
    assert_eq!(shown["state"], "succeeded");
    let out = run(&["tasks", "--server", &cache.url, &"0".repeat(32)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such task"));

    // The upstream goes away; the real Nix client still gets the whole closure.
    drop(upstream);
    let store = tmp.path().join("client");
    let out = NixClient::new()
        .copy_closure(&cache.url, &store, fx.top(), &cache.public_key().await)
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(store_contents(&store).len(), fx.paths.len());
    assert_eq!(reqwest::get(&narinfo).await.expect("GET").status(), 200);

    // Without an admin token configured, there is no API.
    let plain = Nixcache::in_front_of(
        &tmp.path().join("plain"),
        "http://127.0.0.1:1",
        &fx.key,
        &[],
    )
    .await;
    let (status, _) = post(
        &plain.url,
        Some(ADMIN),
        json!({"paths": [fx.top()]}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
}

async fn post_gc(url: &str, token: Option<&str>) -> (u16, Value) {
    call(url, "gc", token, String::new()).await
}

async fn gc_runs(url: &str) -> f64 {
    sample(&metrics(url).await, "nixcache_gc_runs_total", &[]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gc_requests_share_one_pass() {
    let fx = fixture();
    let upstream = StaticServer::start(&fx.cache).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &[
            "--admin-token",
            ADMIN,
            "--max-size",
            "1KiB",
            "--gc-grace",
            "1s",
        ],
    )
    .await;
    let request = json!({"paths": [fx.top()], "closure": true}).to_string();
    assert_eq!(post(&cache.url, Some(ADMIN), request).await.0, 200);

    assert_eq!(post_gc(&cache.url, None).await.0, 401);
    assert_eq!(gc_runs(&cache.url).await, 0.0, "a refused request ran GC");
    let (a, b) = tokio::join!(
        post_gc(&cache.url, Some(ADMIN)),
        post_gc(&cache.url, Some(ADMIN))
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1, b.1, "both requests got the same pass");
    assert_eq!(a.1["ran"], json!(true), "{a:?}");
    assert!(
        a.1["narinfos_evicted"].as_u64().is_some_and(|n| n > 0),
        "{a:?}"
    );
    assert_eq!(gc_runs(&cache.url).await, 1.0, "two requests, one pass");

    // Without a size limit there is nothing to collect down to.
    let plain = Nixcache::in_front_of(
        &tmp.path().join("plain"),
        &upstream.url,
        &fx.key,
        &["--admin-token", ADMIN],
    )
    .await;
    assert_eq!(post_gc(&plain.url, Some(ADMIN)).await.0, 400);
}

/// `nixcache_gc_runs_total` summed over replicas.
async fn gc_runs_total(replicas: &[Nixcache]) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += gc_runs(&r.url).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_prefetches_and_one_gc_run() {
    let fx = fixture();
    let cluster = Cluster::start();
    let upstream = StaticServer::start(&fx.cache).await;
    let extra = [
        "--admin-token",
        ADMIN,
        "--max-size",
        "1KiB",
        "--gc-grace",
        "2s",
    ];
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(cluster.replica(n, &upstream.url, &fx.key, &extra).await);
    }

    // A synchronous prefetch through one replica...
    let request = json!({"paths": [fx.top()], "closure": true}).to_string();
    let (status, report) = call(&replicas[0].url, "prefetch", Some(ADMIN), request).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(sorted_strings(&report["fetched"]), {
        let mut p = fx.paths.clone();
        p.sort();
        p
    });
    // ...and the real Nix client gets the closure from another with the upstream gone.
    drop(upstream);
    let store = cluster.tmp.path().join("client");
    let out = NixClient::new()
        .copy_closure(
            &replicas[1].url,
            &store,
            fx.top(),
            &replicas[1].public_key().await,
        )
        .await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(store_contents(&store).len(), fx.paths.len());

    // GC: refused without the token, nothing runs.
    let refused = api(&replicas[0].url, "gc", None, String::new(), true).await;
    assert_eq!(refused.status, 401);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gc_runs_total(&replicas).await,
        0.0,
        "a refused request ran GC"
    );
    // Two requests at once to two replicas, asynchronous: the same task.
    let (a, b) = tokio::join!(
        api(&replicas[0].url, "gc", Some(ADMIN), String::new(), true),
        api(&replicas[1].url, "gc", Some(ADMIN), String::new(), true),
    );
    let (la, lb) = (accepted_location(&a), accepted_location(&b));
    assert_eq!(la, lb, "two GC tasks queued: {} {}", a.json, b.json);
    // Two synchronous ones meanwhile join it too, and answer with its report.
    let (c, d) = tokio::join!(
        call(&replicas[1].url, "gc", Some(ADMIN), String::new()),
        call(&replicas[2].url, "gc", Some(ADMIN), String::new()),
    );
    assert_eq!((c.0, d.0), (200, 200), "{c:?} {d:?}");
    assert_eq!(c.1, d.1, "both requests got the same run");
    assert_eq!(c.1["ran"], json!(true), "{c:?}");
    assert!(
        c.1["narinfos_evicted"].as_u64().is_some_and(|n| n > 0),
        "{c:?}"
    );
    // Every replica reports the task the same way.
    let mut seen = Vec::new();
    for r in &replicas {
        let task = wait_finished(&r.url, &la, Duration::from_secs(60)).await;
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["result"], c.1, "{task}");
        seen.push(task);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert_eq!(
        gc_runs_total(&replicas).await,
        1.0,
        "four requests, one run"
    );
}

/// Waits until the task at `location` runs on a runner other than those in `not`, and returns it.
async fn running_elsewhere(base: &str, location: &str, not: &[&str], timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (_, task) = get_task(base, location).await;
        let runner = task["runner"].as_str().unwrap_or_default();
        if task["state"] == "running" && !runner.is_empty() && !not.contains(&runner) {
            return task;
        }
        assert_ne!(task["state"], "succeeded", "finished too early: {task}");
        assert!(
            start.elapsed() < timeout,
            "no new runner within {timeout:?}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replica whose process runs a task (`runner` is `host/pid`).
fn replica_of(replicas: &[Nixcache], task: &Value) -> usize {
    let runner = task["runner"].as_str().unwrap_or_default();
    replicas
        .iter()
        .position(|r| runner.ends_with(&format!("/{}", r.pid())))
        .unwrap_or_else(|| panic!("runner {runner} is none of the replicas"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_prefetch_outlives_the_replicas_running_it() {
    let fx = fixture();
    let cluster = Cluster::start();
    // Slow NARs: the 4 MiB one takes about 6 s, long enough to stop the task's runner midway.
    let upstream = FaultyUpstream::start(
        fx.cache.clone(),
        fx.cache_untrusted.clone(),
        Mode::SlowNar(Duration::from_millis(100)),
    )
    .await;
    let ttl = Duration::from_secs(8);
    let extra = ["--admin-token", ADMIN, "--lock-ttl", "8s"];
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(cluster.replica(n, &upstream.url, &fx.key, &extra).await);
    }

    let body = json!({"paths": [fx.top()], "closure": true}).to_string();
    let posted = Instant::now();
    let a = api(&replicas[0].url, "prefetch", Some(ADMIN), body, true).await;
    assert!(
        posted.elapsed() < Duration::from_secs(2),
        "202 only after {:?}",
        posted.elapsed()
    );
    let location = accepted_location(&a);

    // Running somewhere: every replica says where, with progress.
    let first = running_elsewhere(&replicas[2].url, &location, &[], Duration::from_secs(20)).await;
    let first_runner = first["runner"].as_str().expect("runner").to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for r in &replicas {
        let (status, task) = get_task(&r.url, &location).await;
        assert_eq!(status, 200);
        assert_eq!(task["id"], a.json["id"]);
        assert_eq!(task["state"], "running", "finished too early: {task}");
        assert_eq!(task["runner"], json!(first_runner), "{task}");
        assert!(
            task["progress"]["paths_known"]
                .as_u64()
                .is_some_and(|n| n >= 1),
            "no progress shown while running: {task}"
        );
    }

    // Its replica stops gracefully (SIGTERM): the task is handed back and another replica takes
    // it well before the lock would have expired.
    let stopping = replicas.remove(replica_of(&replicas, &first));
    stopping.signal_term();
    let handed = Instant::now();
    let second = running_elsewhere(
        &replicas[0].url,
        &location,
        &[&first_runner],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        handed.elapsed() < ttl / 2,
        "taken over only after {:?}: {second}",
        handed.elapsed()
    );
    assert_eq!(second["attempts"], 2, "{second}");
    let second_runner = second["runner"].as_str().expect("runner").to_string();

    // The next one dies (kill -9): after the lock TTL, the last replica finishes the task.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    replicas.remove(replica_of(&replicas, &second)).kill();
    // (The first one is still in its shutdown delay, refusing nothing yet but running no task.)
    assert!(stopping.wait_exit(Duration::from_secs(40)), "no clean exit");
    let task = wait_finished(&replicas[0].url, &location, Duration::from_secs(90)).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 3, "{task}");
    assert!(
        ![first_runner.as_str(), second_runner.as_str()]
            .contains(&task["runner"].as_str().unwrap_or_default()),
        "{task}"
    );
    let mut done = sorted_strings(&task["result"]["fetched"]);
    done.extend(sorted_strings(&task["result"]["cached"]));
    done.sort();
    let mut want = fx.paths.clone();
    want.sort();
    assert_eq!(done, want, "{task}");
    assert_eq!(task["result"]["failed"], json!([]), "{task}");
    // The whole closure is there, served by the survivor.
    for p in &fx.paths {
        let r = reqwest::get(format!(
            "{}/{}.narinfo",
            replicas[0].url,
            Fixture::hash_of(p)
        ))
        .await
        .expect("narinfo");
        assert_eq!(r.status(), 200, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_kept_for_the_retention_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fx = fixture();
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        "http://127.0.0.1:1",
        &fx.key,
        &["--admin-token", ADMIN, "--task-retention", "2s"],
    )
    .await;
    let body = json!({"paths": [fx.top()]}).to_string();
    let location = accepted_location(&api(&cache.url, "prefetch", Some(ADMIN), body, true).await);
    let task = wait_finished(&cache.url, &location, Duration::from_secs(30)).await;
    assert_eq!(task["result"]["not_found"], json!([fx.top()]), "{task}");
    let text = metrics(&cache.url).await;
    let count = |event: &str| {
        sample(
            &text,
            "nixcache_tasks_total",
            &[&format!("event=\"{event}\""), "kind=\"prefetch\""],
        )
    };
    assert_eq!(count("claimed"), Some(1.0), "{text}");
    assert_eq!(count("succeeded"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "nixcache_tasks_running", &[]),
        Some(0.0),
        "{text}"
    );
    let start = Instant::now();
    while get_task(&cache.url, &location).await.0 == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "a finished task outlived its retention"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, answer) = get_task(&cache.url, &location).await;
    assert_eq!(status, 404);
    assert!(answer["error"]
        .as_str()
        .is_some_and(|e| e.contains("retention")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_prefetch_goes_on_when_its_client_leaves() {
    let fx = fixture();
    // Slow NARs: the closure takes several seconds.
    let upstream = FaultyUpstream::start(
        fx.cache.clone(),
        fx.cache_untrusted.clone(),
        Mode::SlowNar(Duration::from_millis(100)),
    )
    .await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = Nixcache::in_front_of(
        &tmp.path().join("data"),
        &upstream.url,
        &fx.key,
        &["--admin-token", ADMIN],
    )
    .await;
    let gave_up = reqwest::Client::new()
        .post(format!("{}/api/v1/prefetch", cache.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(json!({"paths": [fx.top()], "closure": true}).to_string())
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(gave_up.is_err(), "the prefetch was expected to take longer");
    // Every NAR of the closure arrives all the same.
    let stored = || {
        std::fs::read_dir(tmp.path().join("data/store/nar"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let start = Instant::now();
    while stored() < fx.paths.len() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} NARs stored after the client left",
            stored(),
            fx.paths.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in &fx.paths {
        let nar = format!("/{}", Fixture::nar_url(&fx.narinfo(p)));
        assert_eq!(upstream.hits(&nar), 1, "{p}");
    }
}
