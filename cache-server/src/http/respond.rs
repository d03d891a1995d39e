//! Response builders the handlers share; errors are answered by [`super::error`].

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use actix_web::HttpResponse;

use super::error::NotServed;

pub(crate) fn text(status: actix_web::http::StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body)
}

/// What no route matches.
pub(super) async fn not_found() -> Result<HttpResponse, NotServed> {
    Err(NotServed::NotFound)
}
