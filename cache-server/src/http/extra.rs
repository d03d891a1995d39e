//! What is served back as it was uploaded: listings (`/<hash>.ls`), build logs, realisations
//! and build traces. Uploading them takes the upload token, as every upload does.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::{HttpError, NotServed};
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
) -> Result<HttpResponse, HttpError> {
    let uploads = admit(&state, &req).await?;
    let key = extra_kind(&req)
        .and_then(|(kind, name)| kind.key(&name))
        .ok_or(NotServed::InvalidName)?;
    let limit = usize::try_from(uploads.max_log_size).unwrap_or(usize::MAX);
    let body = collect(payload, limit).await?;
    state
        .cache
        .upload_extra(&key, body)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(HttpResponse::Created().finish())
}

/// `GET|HEAD` of an uploaded build log, realisation or build trace.
pub async fn get_extra(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, NotServed> {
    let (kind, name) = extra_kind(&req).ok_or(NotServed::NotFound)?;
    let key = kind.key(&name).ok_or(NotServed::InvalidName)?;
    let body = state.cache.extra(&key).await.ok_or(NotServed::NotFound)?;
    let content_type = if kind == Extra::Log {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .body(body))
}

/// `GET|HEAD /<hash>.ls`.
pub async fn get_listing(
    state: web::Data<AppState>,
    hash: web::Path<String>,
) -> Result<HttpResponse, NotServed> {
    let hash = StoreHash::parse(&hash).map_err(|_| NotServed::InvalidHash)?;
    let body = state
        .cache
        .extra(&listing_key(&hash))
        .await
        .ok_or(NotServed::NotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(body))
}
