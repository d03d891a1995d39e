//! `/nar/<file hash>.nar[.<ext>]`

use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderValue, ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use futures_util::stream;

use super::{not_found_response, range, text, AppState};
use crate::cache::NarBody;
use crate::nix::NarFile;
use crate::storage::StorageError;

fn builder(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header((
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    ));
    b
}

pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
) -> HttpResponse {
    let Ok(file) = NarFile::parse(&file) else {
        return text(StatusCode::BAD_REQUEST, "invalid NAR file name\n");
    };
    if req.method() == Method::HEAD {
        // Answered without starting a download.
        return match state.cache.nar_head(&file).await {
            Some(head) => {
                let mut b = builder(StatusCode::OK);
                b.insert_header((ACCEPT_RANGES, "bytes"));
                match head.length {
                    // A sized body that is never sent: HEAD answers carry the GET's Content-Length.
                    Some(n) => b.body(SizedStream::new(
                        n,
                        stream::empty::<Result<Bytes, std::io::Error>>(),
                    )),
                    None => b.finish(),
                }
            }
            None => not_found_response(),
        };
    }
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|h| h.to_str().ok())
        .and_then(range::parse);
    match state.cache.nar(file, range).await {
        Ok(Some(NarBody::Stored(object))) => {
            let (start, end) = object.range;
            let partial = range.is_some();
            let mut b = builder(if partial {
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            });
            b.insert_header((ACCEPT_RANGES, "bytes"));
            if partial {
                b.insert_header((
                    CONTENT_RANGE,
                    format!("bytes {start}-{}/{}", end.saturating_sub(1), object.total),
                ));
            }
            b.no_chunking(end - start).streaming(object.body)
        }
        Ok(Some(NarBody::Live { length, body })) => {
            let mut b = builder(StatusCode::OK);
            match length {
                Some(n) => b.no_chunking(n).streaming(body),
                None => b.streaming(body),
            }
        }
        Ok(None) => not_found_response(),
        Err(StorageError::RangeNotSatisfiable { total }) => HttpResponse::RangeNotSatisfiable()
            .insert_header((CONTENT_RANGE, format!("bytes */{total}")))
            .finish(),
        Err(_) => not_found_response(),
    }
}
