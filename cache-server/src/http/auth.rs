//! Tokens: who may read a private cache, upload, or use the admin API. A token is accepted as an
//! HTTP Basic password (any user name; Nix sends it from its netrc file) or a Bearer token.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, ResponseError};
use base64::Engine;

use super::error::HttpError;
use super::AppState;

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

/// Whether `path` is the admin API's, which has a token of its own.
fn admin_path(path: &str) -> bool {
    path.strip_prefix(crate::admin::PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// With a read token, GET and HEAD need it (or the upload token), except for the health
/// endpoints and the public key, and `/metrics` when it is public. PUTs check the upload token
/// in their handlers.
pub async fn require_read_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        if let Some(token) = &state.http.read_token {
            let read = matches!(
                *req.method(),
                actix_web::http::Method::GET | actix_web::http::Method::HEAD
            );
            // The admin API has a token of its own.
            let open = matches!(req.path(), "/healthz" | "/readyz" | "/pubkey")
                || admin_path(req.path())
                || (req.path() == "/metrics" && state.http.public_metrics);
            let allowed = !read
                || open
                || authorized(req.request(), token.expose())
                || state
                    .uploads
                    .as_ref()
                    .is_some_and(|u| authorized(req.request(), u.token.expose()));
            if !allowed {
                let refusal = HttpError::Unauthorized.error_response();
                return Ok(req.into_response(refusal).map_into_right_body());
            }
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
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
