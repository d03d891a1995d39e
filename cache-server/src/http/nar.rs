//! `/nar/<file hash>.nar[.<ext>]`

use actix_web::body::SizedStream;
use actix_web::http::header::{HeaderValue, ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use futures_util::stream;

use super::error::NotServed;
use super::{range, AppState};
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
) -> Result<HttpResponse, NotServed> {
    let file = NarFile::parse(&file).map_err(|_| NotServed::InvalidNarFile)?;
    if req.method() == Method::HEAD {
        // Answered without starting a download.
        let head = state
            .cache
            .nar_head(&file)
            .await
            .ok_or(NotServed::NotFound)?;
        let mut b = builder(StatusCode::OK);
        b.insert_header((ACCEPT_RANGES, "bytes"));
        return Ok(match head.length {
            // A sized body that is never sent: HEAD answers carry the GET's Content-Length.
            Some(n) => b.body(SizedStream::new(
                n,
                stream::empty::<Result<Bytes, std::io::Error>>(),
            )),
            None => b.finish(),
        });
    }
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|h| h.to_str().ok())
        .and_then(range::parse);
    Ok(match state.cache.nar(file, range).await {
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
        Ok(None) => return Err(NotServed::NotFound),
        Err(StorageError::RangeNotSatisfiable { total }) => {
            return Err(NotServed::RangeNotSatisfiable { total })
        }
        // Counted and logged by the cache; a read is never a 5xx.
        Err(_) => return Err(NotServed::NotFound),
    })
}
