//! The admin API (`/api/v1`), guarded by the admin token (Bearer) and off without one.
//! `POST /api/v1/prefetch` fetches store paths (and their closures) through the miss flow and
//! answers, when done, with what became of each. A `Prefer: respond-async` is not honoured yet:
//! the answer is synchronous, without `Preference-Applied` (RFC 7240 lets a server ignore it).

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

pub async fn prefetch(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let Some(token) = &state.admin_token else {
        return not_found_response();
    };
    if !authorized(&req, token.expose()) {
        return super::upload::unauthorized();
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
