//! `PUT` of what `nix copy --to http://…` sends: `nix-cache-info` (accepted, ignored), NARs,
//! narinfos, and listings, build logs and realisations (kept, and served back by `extra`). Only with
//! the upload token (HTTP Basic password or Bearer); otherwise 401, or 405 when uploads are off.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::auth::{authorized, unauthorized};
use super::{text, AppState};
use crate::cache::upload::UploadError;
use crate::config::UploadConfig;
use crate::nix::{NarFile, StoreHash};
use crate::storage::keys::listing_key;

/// Largest narinfo, listing or realisation accepted (a narinfo with thousands of references is
/// well under this).
pub(super) const SMALL_LIMIT: usize = 1 << 20;

/// A response refusing a request, boxed: it is the rare path.
pub(super) type Refusal = Box<HttpResponse>;

/// The upload settings when the request may upload, or the response refusing it.
pub(super) fn admit<'a>(
    state: &'a AppState,
    req: &HttpRequest,
) -> Result<&'a UploadConfig, Refusal> {
    let Some(uploads) = state.uploads.as_ref() else {
        return Err(Box::new(
            HttpResponse::MethodNotAllowed()
                .insert_header(("Allow", "GET, HEAD"))
                .insert_header((
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ))
                .body("uploads are not enabled on this cache\n"),
        ));
    };
    if !authorized(req, uploads.token.expose()) {
        return Err(Box::new(unauthorized()));
    }
    Ok(uploads)
}

/// The answer to a refused upload; the refusal is logged and counted by reason.
pub(super) fn refused(state: &AppState, e: UploadError) -> HttpResponse {
    // The status, and the reason a refusal is counted under (a backend failure is not one).
    let (status, reason) = match &e {
        UploadError::Invalid(_) => (StatusCode::BAD_REQUEST, Some("invalid")),
        UploadError::Body(_) => (StatusCode::BAD_REQUEST, Some("body")),
        UploadError::Untrusted => (StatusCode::FORBIDDEN, Some("untrusted")),
        UploadError::Replaces(_) => (StatusCode::CONFLICT, Some("replaces")),
        UploadError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        UploadError::Backend(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let message = match reason {
        Some(reason) => {
            state
                .cache
                .metrics()
                .refused
                .with_label_values(&["upload", reason])
                .inc();
            tracing::info!(reason, error = %e, "upload refused");
            format!("{e}\n")
        }
        // Internals of storage and database stay in the log.
        None => {
            tracing::warn!(error = %e, "upload not stored");
            "the upload could not be stored; try again\n".to_string()
        }
    };
    HttpResponse::build(status)
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .body(message)
}

/// The whole body, refused past `limit` bytes.
pub(super) async fn collect(mut payload: web::Payload, limit: usize) -> Result<Bytes, Refusal> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| Box::new(text(StatusCode::BAD_REQUEST, "broken request body\n")))?;
        if body.len() + chunk.len() > limit {
            return Err(Box::new(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload too large\n",
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub async fn put_cache_info(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    match admit(&state, &req) {
        // This cache's nix-cache-info is its own; an uploaded one is accepted and ignored.
        Ok(_) => HttpResponse::NoContent().finish(),
        Err(refusal) => *refusal,
    }
}

pub async fn put_nar(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let uploads = match admit(&state, &req) {
        Ok(u) => u,
        Err(refusal) => return *refusal,
    };
    let Ok(file) = NarFile::parse(&file) else {
        return text(StatusCode::BAD_REQUEST, "invalid NAR file name\n");
    };
    match state
        .cache
        .upload_nar(&file, payload, uploads.max_size)
        .await
    {
        Ok(()) => HttpResponse::Created().finish(),
        Err(e) => refused(&state, e),
    }
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
) -> HttpResponse {
    put_root(state, req, &hash, payload, RootUpload::Narinfo).await
}

/// `PUT /<hash>.ls`.
pub async fn put_listing(
    state: web::Data<AppState>,
    req: HttpRequest,
    hash: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    put_root(state, req, &hash, payload, RootUpload::Listing).await
}

async fn put_root(
    state: web::Data<AppState>,
    req: HttpRequest,
    hash: &str,
    payload: web::Payload,
    what: RootUpload,
) -> HttpResponse {
    let uploads = match admit(&state, &req) {
        Ok(u) => u,
        Err(refusal) => return *refusal,
    };
    let Ok(hash) = StoreHash::parse(hash) else {
        return text(StatusCode::BAD_REQUEST, "invalid store path hash\n");
    };
    let body = match collect(payload, SMALL_LIMIT).await {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    let result = match what {
        RootUpload::Narinfo => {
            state
                .cache
                .upload_narinfo(hash, &body, &uploads.trusted_keys, uploads.allow_replace)
                .await
        }
        RootUpload::Listing => state.cache.upload_extra(&listing_key(&hash), body).await,
    };
    match result {
        Ok(()) => HttpResponse::Created().finish(),
        Err(e) => refused(&state, e),
    }
}
