//! `/healthz` (the process answers), `/readyz` (its backends answer), `/pubkey`, `/metrics`.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use super::{text, AppState};

pub async fn healthz() -> HttpResponse {
    text(StatusCode::OK, "ok\n")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.cache.is_shutting_down() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        );
    }
    match state.cache.check_database().await {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: database unavailable\n",
            )
        }
    }
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
