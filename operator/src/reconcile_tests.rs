//! Reconcile steps against a mocked API server (tower-test): which requests each step makes, and
//! which it must never make. The real API server is exercised by `tests/tests/operator.rs`.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};

use super::*;
use crate::crd::NixCache;
use crate::metrics::Metrics;

/// One request the step made.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

type Answer = Box<dyn Fn(&str, &str, &Value) -> (StatusCode, Value) + Send + Sync>;

/// A client whose every request is answered by `answer` and recorded.
fn mock(answer: Answer) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, reply) = answer(&method, &path, &body);
            log.lock().expect("log").push(Seen {
                method,
                path,
                query,
                body,
            });
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap_or_default()))
                .expect("response");
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), seen)
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
               "code": 404, "message": "not found"}),
    )
}

/// The applied object back, as the API server answers a patch (a status patch names no metadata).
fn echo(body: &Value) -> (StatusCode, Value) {
    let mut reply = body.clone();
    if reply.get("metadata").is_none() {
        reply["metadata"] = json!({"name": "web", "namespace": "team"});
    }
    if reply["kind"] == "NixCache" && reply.get("spec").is_none() {
        reply["spec"] = json!({});
    }
    (StatusCode::OK, reply)
}

fn context(client: Client) -> Context {
    Context {
        recorder: Recorder::new(client.clone(), Reporter::from("test")),
        client,
        metrics: Arc::new(Metrics::new().expect("metrics")),
        defaults: crate::resources::Defaults::with_image("img:1"),
        pdb_api_version: "policy/v1".into(),
        cluster_domain: "cluster.local".into(),
    }
}

fn cache(spec: Value) -> NixCache {
    let mut nc = NixCache::new("web", serde_json::from_value(spec).expect("spec"));
    nc.metadata.namespace = Some("team".into());
    nc.metadata.uid = Some("uid-1".into());
    nc.metadata.generation = Some(2);
    nc
}

fn secret_with(name: &str, key_text: &str) -> Value {
    use base64::Engine;
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "team"},
           "data": {"secret-key": base64::engine::general_purpose::STANDARD.encode(key_text)}})
}

fn writes(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    seen.lock()
        .expect("log")
        .iter()
        .filter(|s| s.method != "GET" && !s.path.contains("/events"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_missing_key_is_generated_once_into_a_new_secret() {
    let (client, seen) = mock(Box::new(|method, path, body| match (method, path) {
        ("GET", "/api/v1/namespaces/team/secrets/web-signing-key") => not_found(),
        ("POST", "/api/v1/namespaces/team/secrets") => (StatusCode::CREATED, body.clone()),
        _ => (StatusCode::CREATED, json!({})),
    }));
    let ctx = context(client);
    let public = signing_key(&cache(json!({})), &ctx, "team")
        .await
        .expect("no API error")
        .unwrap_or_else(|r| panic!("rejected: {}", r.message));
    let posts = writes(&seen);
    assert_eq!(posts.len(), 1, "{posts:?}");
    let created = &posts[0].body;
    assert_eq!(created["metadata"]["name"], "web-signing-key");
    // The key outlives its NixCache: no owner, so the garbage collector leaves it.
    assert!(
        created["metadata"]["ownerReferences"].is_null(),
        "{}",
        created["metadata"]
    );
    assert_eq!(
        created["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "nixcache-operator"
    );
    let secret_text = created["stringData"]["secret-key"].as_str().expect("key");
    let key = SecretKey::parse(secret_text).expect("a Nix secret key");
    assert_eq!(key.public_key().to_string(), public);
    assert!(public.starts_with("web.team-1:"), "{public}");
}

#[tokio::test]
async fn an_existing_key_is_read_and_never_written() {
    let key = SecretKey::generate("mine-1").expect("key");
    let text = key.to_file_contents();
    let (client, seen) = mock(Box::new(move |method, path, _| match (method, path) {
        ("GET", "/api/v1/namespaces/team/secrets/web-signing-key") => {
            (StatusCode::OK, secret_with("web-signing-key", &text))
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
    }));
    let ctx = context(client);
    for _ in 0..3 {
        let public = signing_key(&cache(json!({})), &ctx, "team")
            .await
            .expect("no API error")
            .unwrap_or_else(|r| panic!("rejected: {}", r.message));
        assert_eq!(public, key.public_key().to_string());
    }
    assert!(writes(&seen).is_empty(), "{:?}", writes(&seen));
}

/// A cache that has published `public` in its status.
fn cache_with_key(public: &str, annotation: Option<&str>) -> NixCache {
    let mut nc = cache(json!({}));
    nc.status = Some(crate::crd::NixCacheStatus {
        public_key: Some(public.into()),
        ..Default::default()
    });
    if let Some(a) = annotation {
        nc.metadata.annotations = Some(std::collections::BTreeMap::from([(
            crate::resources::REGENERATE_KEY_ANNOTATION.to_string(),
            a.to_string(),
        )]));
    }
    nc
}

fn events(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<Value> {
    seen.lock()
        .expect("log")
        .iter()
        .filter(|s| s.method == "POST" && s.path.contains("/events"))
        .map(|s| s.body.clone())
        .collect()
}

#[tokio::test]
async fn a_published_key_whose_secret_is_gone_is_never_replaced_silently() {
    let old = SecretKey::generate("web.team-1").expect("key");
    let old_public = old.public_key().to_string();
    let answer = || -> Answer {
        Box::new(|method, path, body| match (method, path) {
            ("GET", "/api/v1/namespaces/team/secrets/web-signing-key") => not_found(),
            ("POST", "/api/v1/namespaces/team/secrets") => (StatusCode::CREATED, body.clone()),
            _ => (StatusCode::CREATED, json!({})),
        })
    };
    // Without the annotation, or with one naming another key: a rejection and a Warning.
    for annotation in [None, Some("web.team-7"), Some("")] {
        let (client, seen) = mock(answer());
        let ctx = context(client);
        let rejection = signing_key(&cache_with_key(&old_public, annotation), &ctx, "team")
            .await
            .expect("no API error")
            .expect_err("the lost key is not replaced");
        assert_eq!(rejection.reason, "SigningKeyLost");
        assert!(
            rejection.message.contains(&old_public),
            "{}",
            rejection.message
        );
        assert!(
            rejection
                .message
                .contains("nixcache.io/regenerate-signing-key"),
            "{}",
            rejection.message
        );
        let posted: Vec<_> = writes(&seen);
        assert!(posted.is_empty(), "nothing is written: {posted:?}");
        let warnings = events(&seen);
        assert!(
            warnings
                .iter()
                .any(|e| e["type"] == "Warning" && e["reason"] == "SigningKeyLost"),
            "{warnings:?}"
        );
    }
    // The annotation naming the lost key (by name or whole): a new key under the next name.
    for annotation in ["web.team-1", old_public.as_str()] {
        let (client, seen) = mock(answer());
        let ctx = context(client);
        let public = signing_key(&cache_with_key(&old_public, Some(annotation)), &ctx, "team")
            .await
            .expect("no API error")
            .unwrap_or_else(|r| panic!("rejected: {}", r.message));
        assert!(public.starts_with("web.team-2:"), "{public}");
        assert_ne!(public, old_public);
        let posted = writes(&seen);
        assert_eq!(posted.len(), 1, "{posted:?}");
        assert_eq!(posted[0].body["stringData"]["public-key"], public);
        assert!(events(&seen)
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "SigningKeyRegenerated"));
    }
}

#[tokio::test]
async fn a_generated_key_secret_loses_its_owner_and_keeps_its_public_key_entry() {
    use base64::Engine;
    let key = SecretKey::generate("web.team-1").expect("key");
    let text = key.to_file_contents();
    // As an earlier version made it: owned by the NixCache, and here with a stale public key.
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-signing-key", "namespace": "team",
            "labels": {"app.kubernetes.io/managed-by": "nixcache-operator"},
            "ownerReferences": [{"apiVersion": "nixcache.io/v1alpha1", "kind": "NixCache",
                "name": "web", "uid": "uid-1", "controller": true}]},
        "data": {"secret-key": base64::engine::general_purpose::STANDARD.encode(&text),
                 "public-key": base64::engine::general_purpose::STANDARD.encode("stale")}});
    let (client, seen) = mock(Box::new(move |method, path, body| match (method, path) {
        ("GET", "/api/v1/namespaces/team/secrets/web-signing-key") => {
            (StatusCode::OK, secret.clone())
        }
        ("PATCH", "/api/v1/namespaces/team/secrets/web-signing-key") => {
            (StatusCode::OK, body.clone())
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
    }));
    let ctx = context(client);
    let public = signing_key(&cache(json!({})), &ctx, "team")
        .await
        .expect("no API error")
        .unwrap_or_else(|r| panic!("rejected: {}", r.message));
    assert_eq!(public, key.public_key().to_string());
    let patches = writes(&seen);
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].method, "PATCH");
    assert_eq!(patches[0].body["metadata"]["ownerReferences"], json!([]));
    assert_eq!(patches[0].body["stringData"]["public-key"], public);
    assert!(
        !patches[0].body.to_string().contains("secret-key"),
        "the patch never carries the secret half: {}",
        patches[0].body
    );
}

#[tokio::test]
async fn a_named_secret_with_a_bad_key_is_a_rejection_that_keeps_the_key_out_of_messages() {
    let (client, seen) = mock(Box::new(|method, path, _| match (method, path) {
        ("GET", "/api/v1/namespaces/team/secrets/own-key") => (
            StatusCode::OK,
            secret_with("own-key", "own-1:c2VjcmV0LWJ5dGVz"),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
    }));
    let ctx = context(client);
    let nc = cache(json!({"signingKey": {"secretName": "own-key"}}));
    let rejection = signing_key(&nc, &ctx, "team")
        .await
        .expect("no API error")
        .expect_err("a bad key");
    assert_eq!(rejection.reason, "BadSigningKey");
    assert!(rejection.message.contains("own-key"));
    assert!(
        !rejection.message.contains("c2VjcmV0"),
        "{}",
        rejection.message
    );
    assert!(writes(&seen).is_empty());
}

fn status_writes(writes: &[Seen]) -> Vec<Value> {
    writes
        .iter()
        .filter(|w| w.path.ends_with("/status"))
        .map(|w| w.body["status"].clone())
        .collect()
}

fn condition_of(status: &Value, type_: &str) -> (String, String) {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_invalid_spec_writes_status_only() {
    let (client, seen) = mock(Box::new(|_, _, body| echo(body)));
    let ctx = Arc::new(context(client));
    let nc = Arc::new(cache(json!({"replicas": 3})));
    reconcile(nc, ctx).await.expect("reconciled");
    let writes = writes(&seen);
    assert!(
        writes.iter().all(|w| w.method == "PATCH"
            && w.path == "/apis/nixcache.io/v1alpha1/namespaces/team/nixcaches/web/status"),
        "{writes:?}"
    );
    let statuses = status_writes(&writes);
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    // First sight: every condition Unknown; then the rejection.
    assert!(statuses[0]["conditions"]
        .as_array()
        .is_some_and(|c| c.len() == 4 && c.iter().all(|c| c["status"] == "Unknown")));
    assert_eq!(
        condition_of(&statuses[1], "Degraded"),
        ("True".into(), "InvalidSpec".into())
    );
    assert_eq!(
        condition_of(&statuses[1], "Reconciled"),
        ("False".into(), "InvalidSpec".into())
    );
    assert_eq!(statuses[1]["observedGeneration"], 2);
}

/// An API server with the signing key Secret, nothing else, and `extra` answering first.
fn with_key(
    extra: impl Fn(&str, &str, &Value) -> Option<(StatusCode, Value)> + Send + Sync + 'static,
) -> (Client, Arc<Mutex<Vec<Seen>>>, SecretKey) {
    let key = SecretKey::generate("k-1").expect("key");
    let text = key.to_file_contents();
    let (client, seen) = mock(Box::new(move |method, path, body| {
        if let Some(answer) = extra(method, path, body) {
            return answer;
        }
        match (method, path) {
            ("GET", "/api/v1/namespaces/team/secrets/web-signing-key") => {
                (StatusCode::OK, secret_with("web-signing-key", &text))
            }
            ("GET", "/api/v1/namespaces/team/pods") => (
                StatusCode::OK,
                json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {}, "items": []}),
            ),
            ("GET", _) => not_found(),
            _ => echo(body),
        }
    }));
    (client, seen, key)
}

#[tokio::test]
async fn a_valid_spec_applies_every_child_with_one_field_manager() {
    let (client, seen, key) = with_key(|_, _, _| None);
    let ctx = Arc::new(context(client));
    let mut nc = cache(json!({}));
    // Seen before: no first-visit write.
    nc.status = Some(crate::crd::NixCacheStatus {
        conditions: crate::status::conditions(&Outcome::Reconciling, &[], Some(2), "t"),
        ..Default::default()
    });
    reconcile(Arc::new(nc), ctx).await.expect("reconciled");
    let writes = writes(&seen);
    let paths: Vec<&str> = writes.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/team/configmaps/web-config",
            "/api/v1/namespaces/team/configmaps/web-nix-config",
            "/api/v1/namespaces/team/serviceaccounts/web",
            "/api/v1/namespaces/team/services/web",
            "/apis/apps/v1/namespaces/team/deployments/web",
            "/apis/nixcache.io/v1alpha1/namespaces/team/nixcaches/web/status",
        ]
    );
    assert!(writes.iter().all(|w| w.method == "PATCH"
        && w.query.contains("fieldManager=nixcache-operator")
        && w.query.contains("force=true")));
    let client_config = writes[1].body["data"]["nix.conf"]
        .as_str()
        .expect("nix.conf");
    assert!(
        client_config.contains(&format!("extra-trusted-public-keys = {}", key.public_key())),
        "{client_config}"
    );
    let status = &writes[5].body["status"];
    assert_eq!(status["publicKey"], key.public_key().to_string());
    assert_eq!(status["url"], "http://web.team.svc.cluster.local:80");
    assert_eq!(status["clientConfigMap"], "web-nix-config");
    assert_eq!(
        status["gc"]["mode"], "Server",
        "an emptyDir is kept by its server"
    );
    assert_eq!(
        condition_of(status, "Reconciled"),
        ("True".into(), "Applied".into())
    );
}

#[tokio::test]
async fn a_same_named_object_it_did_not_make_is_left_alone() {
    let (client, seen, _) = with_key(|method, path, _| {
        (method == "GET" && path == "/apis/apps/v1/namespaces/team/deployments/web").then(|| {
            (
                StatusCode::OK,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"name": "web", "namespace": "team", "uid": "theirs"}}),
            )
        })
    });
    let ctx = Arc::new(context(client));
    reconcile(Arc::new(cache(json!({}))), ctx)
        .await
        .expect("reconciled");
    let writes = writes(&seen);
    assert!(
        writes.iter().all(|w| w.path.ends_with("/status")),
        "nothing but status is written: {writes:?}"
    );
    let last = status_writes(&writes).pop().expect("status");
    assert_eq!(
        condition_of(&last, "Degraded"),
        ("True".into(), "OwnershipConflict".into())
    );
    let message = last["conditions"][2]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("Deployment \"web\""), "{last}");
    let warnings: Vec<Value> = events(&seen)
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["reason"], "OwnershipConflict");
}

#[tokio::test]
async fn a_refused_apply_is_reported_with_the_api_message() {
    let (client, seen, _) = with_key(|method, path, _| {
        (method == "PATCH" && path == "/apis/apps/v1/namespaces/team/deployments/web").then(|| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Invalid", "code": 422,
                    "message": "Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit"}),
            )
        })
    });
    let ctx = Arc::new(context(client));
    let e = reconcile(Arc::new(cache(json!({}))), ctx)
        .await
        .expect_err("reported");
    assert!(matches!(e, Error::Reported { .. }), "{e}");
    let last = status_writes(&writes(&seen)).pop().expect("status");
    assert_eq!(
        condition_of(&last, "Reconciled"),
        ("False".into(), "ApplyFailed".into())
    );
    let message = last["conditions"][3]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("Deployment") && message.contains("less than or equal to cpu limit"),
        "{message}"
    );
    assert!(events(&seen)
        .iter()
        .any(|e| e["reason"] == "ApplyFailed" && e["type"] == "Warning"));
}
