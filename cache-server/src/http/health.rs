//! `/healthz` (the process answers), `/readyz` (it can serve: not shutting down; `?verbose` adds
//! what its backends last answered), `/pubkey`, `/metrics`.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use super::{text, AppState};

pub async fn healthz() -> HttpResponse {
    text(StatusCode::OK, "ok\n")
}

/// Ready means "this process can serve": it is not shutting down. A database or storage outage
/// does not take it out of its Service — it still serves what it can, and answers 404 for the
/// rest, which Nix treats as "try the next substituter" — so they show only in `?verbose` (and
/// in `nixcache_backend_up`, and the log).
pub async fn readyz(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    let verbose = req
        .query_string()
        .split('&')
        .any(|p| p == "verbose" || p.starts_with("verbose="));
    let shutting_down = state.cache.is_shutting_down();
    let (status, head) = if shutting_down {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    };
    if !verbose {
        return text(status, head);
    }
    let (database, storage) = state.cache.backends_up();
    let word = |up: bool| if up { "up" } else { "unavailable" };
    let locks = if state.cache.metrics().lock_degraded.get() > 0 {
        "in-process only (the distributed lock is unavailable)"
    } else {
        "up"
    };
    HttpResponse::build(status)
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .insert_header(("Cache-Control", "no-store"))
        .body(format!(
            "{head}database: {}\nstorage: {}\nlocks: {locks}\n",
            word(database),
            word(storage)
        ))
}

pub async fn pubkey(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .body(format!("{}\n", state.cache.public_key()))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        ))
        .body(state.cache.metrics().render())
}
