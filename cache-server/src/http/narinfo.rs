//! `/<hash>.narinfo`

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use super::{not_found_response, text, AppState};
use crate::nix::StoreHash;

/// `GET|HEAD /<hash>.narinfo`.
pub async fn get(state: web::Data<AppState>, hash: web::Path<String>) -> HttpResponse {
    let Ok(hash) = StoreHash::parse(&hash) else {
        return text(StatusCode::BAD_REQUEST, "invalid store path hash\n");
    };
    match state.cache.narinfo(hash).await {
        Some(body) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/x-nix-narinfo")))
            .body(body),
        None => not_found_response(),
    }
}
