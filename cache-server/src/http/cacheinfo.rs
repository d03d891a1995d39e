//! `/nix-cache-info`

use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::{HttpResponse, web};

use super::AppState;

pub async fn get(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/x-nix-cache-info")))
        .body(state.cache_info.clone())
}
