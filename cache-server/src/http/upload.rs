//! `PUT` of what `nix copy --to http://…` sends: `nix-cache-info` (accepted, ignored), NARs,
//! narinfos, and listings, build logs and realisations (kept, and served back on GET). Only with
//! the upload token (HTTP Basic password or Bearer); otherwise 401, or 405 when uploads are off.

use actix_web::http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{not_found_response, text, AppState};
use crate::cache::upload::UploadError;
use crate::config::UploadConfig;
use crate::nix::{NarFile, StoreHash};
use crate::storage::keys::{listing_key, Extra};

/// Largest narinfo, listing or realisation accepted (a narinfo with thousands of references is
/// well under this).
const SMALL_LIMIT: usize = 1 << 20;

/// Compares in time independent of where the inputs first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries `token` as a Basic password (any user) or a Bearer token.
pub fn authorized(req: &HttpRequest, token: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(rest.as_bytes(), token.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        let password = match decoded.iter().position(|&c| c == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        return same(password, token.as_bytes());
    }
    false
}

pub fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"nixcache\""),
        ))
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .body("a valid token is required\n")
}

/// A response refusing a request, boxed: it is the rare path.
type Refusal = Box<HttpResponse>;

/// The upload settings when the request may upload, or the response refusing it.
fn admit<'a>(state: &'a AppState, req: &HttpRequest) -> Result<&'a UploadConfig, Refusal> {
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
fn refused(state: &AppState, e: UploadError) -> HttpResponse {
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
async fn collect(mut payload: web::Payload, limit: usize) -> Result<Bytes, Refusal> {
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
pub async fn get_listing(state: &AppState, hash: StoreHash) -> HttpResponse {
    match state.cache.extra(&listing_key(&hash)).await {
        Some(body) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(body),
        None => not_found_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn tokens_as_basic_passwords_or_bearer() {
        let token = "0123456789abcdef0123";
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        let with = |v: &str| {
            TestRequest::default()
                .insert_header(("Authorization", v.to_string()))
                .to_http_request()
        };
        assert!(authorized(&with(&basic(&format!("nix:{token}"))), token));
        assert!(authorized(&with(&basic(&format!(":{token}"))), token));
        assert!(authorized(&with(&format!("Bearer {token}")), token));
        assert!(authorized(&with(&format!("bearer  {token}")), token));
        assert!(!authorized(&with(&basic("nix:wrong")), token));
        assert!(
            !authorized(&with(&basic(token)), token),
            "no user:password form"
        );
        assert!(!authorized(&with(&format!("Bearer {token}x")), token));
        assert!(!authorized(&with("Basic !!!"), token));
        assert!(!authorized(
            &TestRequest::default().to_http_request(),
            token
        ));
    }
}
