//! The admin API (`/api/v1`), guarded by the admin token (Bearer) and off without one.
//!
//! - `POST /api/v1/prefetch` fetches store paths (and their closures) through the miss flow.
//!   Synchronous by default: the answer comes when the work is done. With `Prefer: respond-async`
//!   (RFC 7240) the request is recorded as a task and answered at once with 202 and its
//!   `Location`.
//! - `POST /api/v1/gc` runs one GC pass as a task, in the same two modes. While a GC task is
//!   pending or running, on any replica, a request joins it instead of starting another.
//! - `GET /api/v1/tasks/<id>`: a task's state, progress, times and result, from any replica.
//! - `GET /api/v1/pins` lists the pins; `POST` and `DELETE` with `{"paths": [...]}` add and
//!   remove recorded ones. GC never evicts a pinned path's closure.

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, VARY};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::auth::authorized;
use super::error::HttpError;
use super::AppState;
use crate::admin::{stored_json, task_path, PinChange, PinList, PinRequest, PrefetchRequest, Task};
use crate::cache::prefetch::PrefetchProgress;
use crate::db::TaskRecord;
use crate::nix::StorePath;

/// Most store paths one request may name.
pub const MAX_PATHS: usize = 10_000;

fn json_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    match serde_json::to_string(body) {
        Ok(body) => HttpResponse::build(status)
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .insert_header((VARY, HeaderValue::from_static("Prefer")))
            .body(body),
        Err(e) => {
            tracing::warn!(error = %e, "admin API: an answer could not be written as JSON");
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// The task table cannot be reached; the cause goes to the log only.
fn database_unavailable(e: impl std::fmt::Display) -> HttpError {
    tracing::warn!(error = %e, "admin API: the task could not be recorded or read");
    HttpError::DatabaseUnavailable
}

/// Whether the request may use the admin API: not when it is off (as if it did not exist),
/// nor without the token.
fn admit(state: &AppState, req: &HttpRequest) -> Result<(), HttpError> {
    let token = state.http.admin_token.as_ref().ok_or(HttpError::ApiOff)?;
    if authorized(req, token.expose()) {
        Ok(())
    } else {
        Err(HttpError::Unauthorized)
    }
}

/// Whether the client asked for `Prefer: respond-async` (among other preferences, in any of its
/// `Prefer` headers).
fn prefers_async(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let name = p.split([';', '=']).next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("respond-async")
        })
}

/// 202 for a recorded task, pointing at it.
fn accepted(t: &TaskRecord) -> HttpResponse {
    let mut r = json_response(StatusCode::ACCEPTED, &Task::from(t));
    let headers = r.headers_mut();
    if let Ok(location) = HeaderValue::try_from(task_path(&t.id)) {
        headers.insert(LOCATION, location);
    }
    headers.insert(
        HeaderName::from_static("preference-applied"),
        HeaderValue::from_static("respond-async"),
    );
    r
}

/// A finished task's answer in the synchronous mode: its result, or why it failed.
fn finished(t: &TaskRecord) -> Result<HttpResponse, HttpError> {
    match (&t.result, &t.error) {
        (Some(result), _) if t.error.is_none() => {
            Ok(json_response(StatusCode::OK, &stored_json(Some(result))))
        }
        (_, error) => Err(HttpError::Failed(format!(
            "task {} failed: {}",
            t.id,
            error.as_deref().unwrap_or("no reason recorded")
        ))),
    }
}

pub async fn gc(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, HttpError> {
    admit(&state, &req)?;
    if !state.gc_collects {
        return Err(HttpError::BadRequest(
            "this cache has no size limit (--max-size) or age limit (--max-age) to collect down \
             to"
            .to_string(),
        ));
    }
    let task = state
        .tasks
        .submit_gc()
        .await
        .map_err(database_unavailable)?;
    if prefers_async(&req) {
        return Ok(accepted(&task));
    }
    // The task runs whether or not this client stays to see its end.
    match state.tasks.wait(&task.id).await {
        Ok(Some(t)) => finished(&t),
        Ok(None) => Err(HttpError::Failed("the GC task disappeared".to_string())),
        Err(e) => Err(database_unavailable(e)),
    }
}

/// The store paths of a request body, each of this cache's store directory.
fn store_paths(state: &AppState, paths: &[String]) -> Result<Vec<StorePath>, HttpError> {
    if paths.is_empty() || paths.len() > MAX_PATHS {
        return Err(HttpError::BadRequest(format!(
            "name between 1 and {MAX_PATHS} store paths"
        )));
    }
    paths
        .iter()
        .map(|p| match StorePath::parse(p) {
            Ok(path) if path.store_dir() == state.store_dir => Ok(path),
            _ => {
                let shown: String = p.chars().take(200).collect();
                Err(HttpError::BadRequest(format!(
                    "not a store path of {}: {shown:?}",
                    state.store_dir
                )))
            }
        })
        .collect()
}

fn pin_request(state: &AppState, body: &[u8]) -> Result<Vec<StorePath>, HttpError> {
    let request: PinRequest = serde_json::from_slice(body).map_err(|e| {
        HttpError::BadRequest(format!("expected {{\"paths\": [\"/nix/store/...\"]}}: {e}"))
    })?;
    store_paths(state, &request.paths)
}

/// `GET /api/v1/pins`: every pin, the configuration's and the recorded ones.
pub async fn pins(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, HttpError> {
    admit(&state, &req)?;
    let pins = state.cache.pins().await.map_err(database_unavailable)?;
    Ok(json_response(StatusCode::OK, &PinList { pins }))
}

/// `POST /api/v1/pins`: records pins (their closures are kept from the next GC pass on).
pub async fn pin(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, HttpError> {
    change_pins(&state, &req, &body, Change::Add).await
}

/// `DELETE /api/v1/pins`: removes recorded pins (the configuration's stay).
pub async fn unpin(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, HttpError> {
    change_pins(&state, &req, &body, Change::Remove).await
}

enum Change {
    Add,
    Remove,
}

async fn change_pins(
    state: &AppState,
    req: &HttpRequest,
    body: &[u8],
    change: Change,
) -> Result<HttpResponse, HttpError> {
    admit(state, req)?;
    let paths = pin_request(state, body)?;
    let changed = match change {
        Change::Add => state.cache.pin(&paths).await,
        Change::Remove => state.cache.unpin(&paths).await,
    }
    .map_err(database_unavailable)?;
    Ok(json_response(StatusCode::OK, &PinChange { changed }))
}

pub async fn prefetch(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, HttpError> {
    admit(&state, &req)?;
    let request: PrefetchRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::BadRequest(format!(
            "expected {{\"paths\": [\"/nix/store/...\"], \"closure\": true}}: {e}"
        ))
    })?;
    let paths = store_paths(&state, &request.paths)?;
    if prefers_async(&req) {
        let task = state
            .tasks
            .submit_prefetch(&request)
            .await
            .map_err(database_unavailable)?;
        return Ok(accepted(&task));
    }
    // Its own task: a client that goes away does not stop the prefetch.
    let cache = state.cache.clone();
    let work = tokio::spawn(async move {
        cache
            .prefetch(paths, request.closure, &PrefetchProgress::default())
            .await
    });
    match work.await {
        Ok(report) => Ok(json_response(StatusCode::OK, &report)),
        Err(e) => {
            tracing::warn!(error = %e, "prefetch on request failed");
            Err(HttpError::Failed(
                "the prefetch failed; see the server's log".to_string(),
            ))
        }
    }
}

pub async fn task(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, HttpError> {
    admit(&state, &req)?;
    let id = id.into_inner();
    let well_formed = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(HttpError::NoSuchTask("no such task"));
    }
    let found = state
        .tasks
        .get(&id.to_ascii_lowercase())
        .await
        .map_err(database_unavailable)?;
    match found {
        Some(t) => {
            let mut r = json_response(StatusCode::OK, &Task::from(&t));
            if !t.state.is_finished() {
                // Pollers should not be served a cached "running".
                r.headers_mut().insert(
                    actix_web::http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
            }
            Ok(r)
        }
        None => Err(HttpError::NoSuchTask(
            "no such task (finished tasks are kept for --task-retention)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn respond_async_is_found_among_preferences() {
        let asks = |values: &[&str]| {
            let mut r = TestRequest::default();
            for v in values {
                r = r.append_header(("Prefer", *v));
            }
            prefers_async(&r.to_http_request())
        };
        assert!(asks(&["respond-async"]));
        assert!(asks(&["Respond-Async"]));
        assert!(asks(&["return=minimal, respond-async; foo=bar"]));
        assert!(asks(&["wait=10", " respond-async "]));
        assert!(!asks(&[]));
        assert!(!asks(&["wait=10"]));
        assert!(!asks(&["respond-asynchronously"]));
        assert!(!asks(&["handling=respond-async"]));
    }
}
