//! `/<hash>.narinfo`

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::{web, HttpResponse};

use super::error::NotServed;
use super::AppState;
use crate::nix::StoreHash;

/// `GET|HEAD /<hash>.narinfo`.
pub async fn get(
    state: web::Data<AppState>,
    hash: web::Path<String>,
) -> Result<HttpResponse, NotServed> {
    let hash = StoreHash::parse(&hash).map_err(|_| NotServed::InvalidHash)?;
    let body = state.cache.narinfo(hash).await.ok_or(NotServed::NotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/x-nix-narinfo")))
        .body(body))
}
