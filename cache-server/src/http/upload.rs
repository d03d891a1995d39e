//! `PUT` of what `nix copy --to http://…` sends: `nix-cache-info` (accepted, ignored), NARs,
//! narinfos, and listings, build logs and realisations (kept, and served back by `extra`). Only with
//! the upload token or a ServiceAccount that may push (HTTP Basic password or Bearer); otherwise
//! 401 or 403, or 405 when uploads are off.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::auth::{allow, Right};
use super::error::{HttpError, NotServed};
use super::AppState;
use crate::cache::upload::UploadError;
use crate::config::UploadConfig;
use crate::nix::{NarFile, StoreHash};
use crate::storage::keys::listing_key;

/// Largest narinfo, listing or realisation accepted (a narinfo with thousands of references is
/// well under this).
pub(super) const SMALL_LIMIT: usize = 1 << 20;

/// The upload settings when the request may upload, or why it may not.
pub(super) async fn admit<'a>(
    state: &'a AppState,
    req: &HttpRequest,
) -> Result<&'a UploadConfig, HttpError> {
    let uploads = state.uploads.as_ref().ok_or(HttpError::UploadsOff)?;
    allow(state, req, Right::Push).await?;
    Ok(uploads)
}

/// A refused upload, logged and counted by reason (a backend failure is not a refusal: it is
/// logged as a failure and not counted).
pub(super) fn refused(state: &AppState, e: UploadError) -> HttpError {
    let reason = match &e {
        UploadError::Invalid(_) => Some("invalid"),
        UploadError::Body(_) => Some("body"),
        UploadError::Untrusted => Some("untrusted"),
        UploadError::Replaces(_) => Some("replaces"),
        UploadError::TooLarge(_) => Some("too_large"),
        UploadError::Backend(_) => None,
    };
    match reason {
        Some(reason) => {
            state
                .cache
                .metrics()
                .refused
                .with_label_values(&["upload", reason])
                .inc();
            tracing::info!(reason, error = %e, "upload refused");
        }
        None => tracing::warn!(error = %e, "upload not stored"),
    }
    HttpError::Upload(e)
}

/// The whole body, refused past `limit` bytes.
pub(super) async fn collect(mut payload: web::Payload, limit: usize) -> Result<Bytes, HttpError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| HttpError::BrokenBody)?;
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub async fn put_cache_info(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    admit(&state, &req).await?;
    // This cache's nix-cache-info is its own; an uploaded one is accepted and ignored.
    Ok(HttpResponse::NoContent().finish())
}

pub async fn put_nar(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    let uploads = admit(&state, &req).await?;
    let file = NarFile::parse(&file).map_err(|_| NotServed::InvalidNarFile)?;
    state
        .cache
        .upload_nar(&file, payload, uploads.max_size)
        .await
        .map_err(|e| refused(&state, e))?;
    Ok(HttpResponse::Created().finish())
}

/// What a root PUT carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RootUpload {
    Narinfo,
    Listing,
}

/// `PUT /<hash>.narinfo`.
pub async fn put_narinfo(
    state: web::Data<AppState>,
    req: HttpRequest,
    hash: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    put_root(state, req, &hash, payload, RootUpload::Narinfo).await
}

/// `PUT /<hash>.ls`.
pub async fn put_listing(
    state: web::Data<AppState>,
    req: HttpRequest,
    hash: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    put_root(state, req, &hash, payload, RootUpload::Listing).await
}

async fn put_root(
    state: web::Data<AppState>,
    req: HttpRequest,
    hash: &str,
    payload: web::Payload,
    what: RootUpload,
) -> Result<HttpResponse, HttpError> {
    let uploads = admit(&state, &req).await?;
    let hash = StoreHash::parse(hash).map_err(|_| NotServed::InvalidHash)?;
    let body = collect(payload, SMALL_LIMIT).await?;
    let result = match what {
        RootUpload::Narinfo => {
            state
                .cache
                .upload_narinfo(hash, &body, &uploads.trusted_keys, uploads.allow_replace)
                .await
        }
        RootUpload::Listing => state.cache.upload_extra(&listing_key(&hash), body).await,
    };
    result.map_err(|e| refused(&state, e))?;
    Ok(HttpResponse::Created().finish())
}
