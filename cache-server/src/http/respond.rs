//! Response builders every handler shares.

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use actix_web::HttpResponse;

pub(crate) fn text(status: actix_web::http::StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body)
}

pub(crate) fn not_found_response() -> HttpResponse {
    text(actix_web::http::StatusCode::NOT_FOUND, "not found\n")
}

pub(super) async fn not_found() -> HttpResponse {
    not_found_response()
}
