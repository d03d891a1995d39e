//! The HTTP edge's one error type, and the one place an error becomes a status code
//! ([`HttpError::status`], an exhaustive match).
//!
//! Reads of the cache's objects (narinfos, NARs, listings, logs) fail only with [`NotServed`],
//! whose statuses are all 4xx: Nix fails a build on a 5xx from a substituter, where a 404 makes
//! it try the next one. A backend that fails during a read is counted and logged by the cache,
//! and the read is a miss; no read handler can answer 5xx, by its type.

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, VARY};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::admin::ApiError;
use crate::cache::upload::UploadError;

/// Why an object is not served: the answers a read can give besides the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotServed {
    #[error("invalid store path hash")]
    InvalidHash,
    #[error("invalid NAR file name")]
    InvalidNarFile,
    #[error("invalid name")]
    InvalidName,
    #[error("not found")]
    NotFound,
    /// A `Range` past the end of an object of `total` bytes.
    #[error("range not satisfiable")]
    RangeNotSatisfiable { total: u64 },
}

impl NotServed {
    /// The status of each; none is 5xx (see the module's documentation).
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidHash | Self::InvalidNarFile | Self::InvalidName => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        }
    }
}

/// Every refusal and failure the HTTP edge answers with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// What a read can answer (all 4xx); also the malformed names of writes.
    #[error(transparent)]
    NotServed(#[from] NotServed),
    /// No valid token for a private read, an upload or the admin API.
    #[error("a valid token is required")]
    Unauthorized,
    /// A valid credential without the right asked for (a ServiceAccount no grant names).
    #[error("{0}")]
    Forbidden(String),
    /// A ServiceAccount token that cannot be checked now (the cause is in the log only).
    #[error("the token cannot be checked now; try again")]
    ReviewUnavailable,
    /// A PUT to a cache that takes no uploads.
    #[error("uploads are not enabled on this cache")]
    UploadsOff,
    /// The client's request body broke off.
    #[error("broken request body")]
    BrokenBody,
    /// A request body over its limit.
    #[error("upload too large")]
    TooLarge,
    /// An upload the cache refused, or could not store.
    #[error(transparent)]
    Upload(UploadError),
    /// The admin API of a cache without an admin token: as if it did not exist.
    #[error("not found")]
    ApiOff,
    /// An admin request that cannot be served as written; the message says why.
    #[error("{0}")]
    BadRequest(String),
    /// A task id that names no recorded task.
    #[error("{0}")]
    NoSuchTask(&'static str),
    /// The task table cannot be reached (the cause is in the log only).
    #[error("the database is unavailable; try again")]
    DatabaseUnavailable,
    /// Admin work that ran and failed; the message is what the task recorded.
    #[error("{0}")]
    Failed(String),
}

impl HttpError {
    /// The status of every error the HTTP edge gives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotServed(n) => n.status(),
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ReviewUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UploadsOff => StatusCode::METHOD_NOT_ALLOWED,
            Self::BrokenBody | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Upload(e) => match e {
                UploadError::Invalid(_) | UploadError::Body(_) => StatusCode::BAD_REQUEST,
                UploadError::Untrusted => StatusCode::FORBIDDEN,
                UploadError::Replaces(_) => StatusCode::CONFLICT,
                UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                UploadError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::ApiOff | Self::NoSuchTask(_) => StatusCode::NOT_FOUND,
            Self::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the answer is the admin API's JSON ([`ApiError`]) rather than plain text.
    fn is_api(&self) -> bool {
        match self {
            Self::BadRequest(_)
            | Self::NoSuchTask(_)
            | Self::DatabaseUnavailable
            | Self::Failed(_) => true,
            Self::NotServed(_)
            | Self::Unauthorized
            | Self::Forbidden(_)
            | Self::ReviewUnavailable
            | Self::UploadsOff
            | Self::BrokenBody
            | Self::TooLarge
            | Self::Upload(_)
            | Self::ApiOff => false,
        }
    }

    /// The body's words: a storage or database failure's internals stay in the log.
    fn message(&self) -> String {
        match self {
            Self::Upload(UploadError::Backend(_)) => {
                "the upload could not be stored; try again".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status();
        let mut b = HttpResponse::build(status);
        if self.is_api() {
            return match serde_json::to_string(&ApiError::new(self.message())) {
                Ok(body) => b
                    .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
                    .insert_header((VARY, HeaderValue::from_static("Prefer")))
                    .body(body),
                Err(_) => b.finish(),
            };
        }
        match self {
            Self::NotServed(NotServed::RangeNotSatisfiable { total }) => {
                return b
                    .insert_header((CONTENT_RANGE, format!("bytes */{total}")))
                    .finish();
            }
            Self::Unauthorized => {
                b.insert_header((
                    actix_web::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"nixcache\""),
                ));
            }
            Self::UploadsOff => {
                b.insert_header(("Allow", "GET, HEAD"));
            }
            Self::ReviewUnavailable => {
                b.insert_header((actix_web::http::header::RETRY_AFTER, "5"));
            }
            Self::NotServed(_) | Self::BrokenBody | Self::TooLarge | Self::ApiOff => {
                b.insert_header((CACHE_CONTROL, HeaderValue::from_static("no-store")));
            }
            _ => {}
        }
        b.insert_header((
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .body(format!("{}\n", self.message()))
    }
}

impl ResponseError for NotServed {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        HttpError::NotServed(*self).error_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_read_answer_is_a_server_error() {
        let all = [
            NotServed::InvalidHash,
            NotServed::InvalidNarFile,
            NotServed::InvalidName,
            NotServed::NotFound,
            NotServed::RangeNotSatisfiable { total: 3 },
        ];
        for n in all {
            assert!(n.status().is_client_error(), "{n:?}: {}", n.status());
            assert_eq!(HttpError::from(n).status(), n.status());
        }
    }

    #[test]
    fn backend_failures_of_uploads_keep_their_cause_out_of_the_body() {
        let e = HttpError::Upload(UploadError::Backend("s3://secret-bucket: denied".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.message().contains("secret-bucket"));
        let e = HttpError::Upload(UploadError::Untrusted);
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(e.message().contains("trusted"));
    }

    #[test]
    fn admin_errors_are_json() {
        let r = HttpError::NoSuchTask("no such task").error_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.headers().get(CONTENT_TYPE).expect("content type"),
            "application/json"
        );
        let r = HttpError::Unauthorized.error_response();
        assert!(r
            .headers()
            .contains_key(actix_web::http::header::WWW_AUTHENTICATE));
    }
}
