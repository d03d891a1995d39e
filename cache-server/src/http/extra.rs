//! What is served back as it was uploaded: listings (`/<hash>.ls`), build logs, realisations
//! and build traces. Uploading them takes the upload token, as every upload does.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::respond::{not_found_response, text};
use super::upload::{admit, collect, refused};
use super::AppState;
use crate::nix::StoreHash;
use crate::storage::keys::{listing_key, Extra};

fn extra_kind(req: &HttpRequest) -> Option<(Extra, String)> {
    let path = req.path();
    for kind in Extra::ALL {
        if let Some(name) = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(kind.dir()))
            .and_then(|p| p.strip_prefix('/'))
        {
            return Some((kind, name.to_string()));
        }
    }
    None
}

/// `PUT /log/<drv>`, `/realisations/<id>.doi`, `/build-trace-v2/<drv>/<out>.doi`.
pub async fn put_extra(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let uploads = match admit(&state, &req) {
        Ok(u) => u,
        Err(refusal) => return *refusal,
    };
    let Some(key) = extra_kind(&req).and_then(|(kind, name)| kind.key(&name)) else {
        return text(StatusCode::BAD_REQUEST, "invalid name\n");
    };
    let limit = usize::try_from(uploads.max_log_size).unwrap_or(usize::MAX);
    let body = match collect(payload, limit).await {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    match state.cache.upload_extra(&key, body).await {
        Ok(()) => HttpResponse::Created().finish(),
        Err(e) => refused(&state, e),
    }
}

/// `GET|HEAD` of an uploaded build log, realisation or build trace.
pub async fn get_extra(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let Some((kind, name)) = extra_kind(&req) else {
        return not_found_response();
    };
    let Some(key) = kind.key(&name) else {
        return text(StatusCode::BAD_REQUEST, "invalid name\n");
    };
    match state.cache.extra(&key).await {
        Some(body) => {
            let content_type = if kind == Extra::Log {
                "text/plain; charset=utf-8"
            } else {
                "application/json"
            };
            HttpResponse::Ok()
                .insert_header((CONTENT_TYPE, HeaderValue::from_static(content_type)))
                .body(body)
        }
        None => not_found_response(),
    }
}

/// `GET|HEAD /<hash>.ls`.
pub async fn get_listing(state: web::Data<AppState>, hash: web::Path<String>) -> HttpResponse {
    let Ok(hash) = StoreHash::parse(&hash) else {
        return text(StatusCode::BAD_REQUEST, "invalid store path hash\n");
    };
    match state.cache.extra(&listing_key(&hash)).await {
        Some(body) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(body),
        None => not_found_response(),
    }
}
