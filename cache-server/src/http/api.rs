//! The admin API (`/api/v1`), guarded by the admin token (Bearer) and off without one.
//! `POST /api/v1/prefetch` fetches store paths (and their closures) through the miss flow and
//! answers, when done, with what became of each. `POST /api/v1/gc` runs one GC pass; requests
//! that arrive while one runs share it. A `Prefer: respond-async` is not honoured yet: answers
//! are synchronous, without `Preference-Applied` (RFC 7240 lets a server ignore it).

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::upload::authorized;
use super::{not_found_response, text, AppState};
use crate::nix::StorePath;

/// Most store paths one request may name.
pub const MAX_PATHS: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefetchRequest {
    paths: Vec<String>,
    #[serde(default)]
    closure: bool,
}

fn json_error(status: StatusCode, message: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(serde_json::json!({ "error": message }).to_string())
}

/// The refusal for a request the admin API may not serve: 404 when it is off, 401 without the
/// token.
fn refuse(state: &AppState, req: &HttpRequest) -> Option<HttpResponse> {
    let Some(token) = &state.admin_token else {
        return Some(not_found_response());
    };
    (!authorized(req, token.expose())).then(super::upload::unauthorized)
}

/// A GC pass shared by the requests that arrive while it runs.
pub type SharedGc = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<crate::cache::gc::GcReport, String>>,
>;

pub async fn gc(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    use futures_util::FutureExt;
    if let Some(refusal) = refuse(&state, &req) {
        return refusal;
    }
    let Some(max_size) = state.gc_max_size else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "this cache has no size limit (--max-size) to collect down to".into(),
        );
    };
    let run = {
        let mut slot = state.gc_run.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(run) if run.peek().is_none() => run.clone(),
            _ => {
                // Its own task: a client that goes away does not stop the pass.
                let cache = state.cache.clone();
                let grace = state.gc_grace;
                let task = tokio::spawn(async move {
                    cache
                        .gc(
                            max_size,
                            grace,
                            std::time::Duration::from_secs(60),
                            std::time::Duration::ZERO,
                        )
                        .await
                        .map_err(|e| e.to_string())
                });
                let run: SharedGc =
                    async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }
                        .boxed()
                        .shared();
                *slot = Some(run.clone());
                run
            }
        }
    };
    match run.await {
        Ok(report) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(serde_json::to_string(&report).unwrap_or_default()),
        Err(e) => {
            tracing::warn!(error = %e, "GC on request failed");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the GC pass failed; see the server's log".into(),
            )
        }
    }
}

pub async fn prefetch(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(refusal) = refuse(&state, &req) {
        return refusal;
    }
    let request: PrefetchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"paths\": [\"/nix/store/...\"], \"closure\": true}}: {e}"),
            )
        }
    };
    if request.paths.is_empty() || request.paths.len() > MAX_PATHS {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("name between 1 and {MAX_PATHS} store paths"),
        );
    }
    let mut paths = Vec::with_capacity(request.paths.len());
    for p in &request.paths {
        match StorePath::parse(p) {
            Ok(path) if path.store_dir() == state.store_dir => paths.push(path),
            _ => {
                let shown: String = p.chars().take(200).collect();
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("not a store path of {}: {shown:?}", state.store_dir),
                );
            }
        }
    }
    let report = state.cache.prefetch(paths, request.closure).await;
    match serde_json::to_string(&report) {
        Ok(body) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(body),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    }
}
