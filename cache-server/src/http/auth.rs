//! Who may read a private cache, upload, or use the admin API. A credential is an HTTP Basic
//! password (any user name; Nix sends it from its netrc file) or a Bearer token: one of the
//! cache's tokens, or a Kubernetes ServiceAccount's projected token that a TokenReview vouches
//! for ([`crate::identity`]) and a grant names.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, ResponseError};
use base64::Engine;

use super::error::HttpError;
use super::AppState;
use crate::identity::Reviewed;

/// Compares in time independent of where the inputs first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential the request carries: a Bearer token, or the password of HTTP Basic auth.
fn credential(req: &HttpRequest) -> Option<Vec<u8>> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&c| c == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// Whether the request carries `token` as a Basic password (any user) or a Bearer token.
pub fn authorized(req: &HttpRequest, token: &str) -> bool {
    credential(req).is_some_and(|c| same(&c, token.as_bytes()))
}

/// What a request asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    Read,
    Push,
}

/// Whether the request may read (when reads need a credential) or push: with the read token
/// (reads), the upload token (both), or a ServiceAccount token a grant covers. A valid
/// ServiceAccount token without the right is 403; no valid credential, 401; a token that cannot
/// be reviewed now, 503.
pub async fn allow(state: &AppState, req: &HttpRequest, right: Right) -> Result<(), HttpError> {
    let Some(given) = credential(req) else {
        return Err(HttpError::Unauthorized);
    };
    let upload_token = state.uploads.as_ref().and_then(|u| u.token.as_ref());
    let read_token = state
        .http
        .read_token
        .as_ref()
        .filter(|_| right == Right::Read);
    if upload_token
        .into_iter()
        .chain(read_token)
        .any(|t| same(&given, t.expose().as_bytes()))
    {
        return Ok(());
    }
    let Some(accounts) = &state.service_accounts else {
        return Err(HttpError::Unauthorized);
    };
    let Ok(token) = std::str::from_utf8(&given) else {
        return Err(HttpError::Unauthorized);
    };
    let reviewed = accounts
        .review(token)
        .await
        .map_err(|_| HttpError::ReviewUnavailable)?;
    let (namespace, name) = match reviewed {
        Reviewed::ServiceAccount { namespace, name } => (namespace, name),
        Reviewed::Other(user) => {
            tracing::info!(%user, ?right, "refused: not a ServiceAccount");
            return Err(HttpError::Forbidden(format!(
                "{user:?} is not a ServiceAccount; no grant names it"
            )));
        }
        Reviewed::Invalid => return Err(HttpError::Unauthorized),
    };
    let grants = accounts.config();
    let granted = match right {
        Right::Read => grants.may_read(&namespace, &name),
        Right::Push => grants.may_push(&namespace, &name),
    };
    if granted {
        Ok(())
    } else {
        tracing::info!(service_account = %format!("{namespace}/{name}"), ?right, "refused: no grant");
        let verb = match right {
            Right::Read => "read",
            Right::Push => "push",
        };
        Err(HttpError::Forbidden(format!(
            "ServiceAccount {namespace}/{name} may not {verb} here"
        )))
    }
}

/// Whether `path` is the admin API's, which has a token of its own.
fn admin_path(path: &str) -> bool {
    path.strip_prefix(crate::admin::PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether reads need a credential: with a read token, or ServiceAccounts granted reads.
fn reads_need_credential(state: &AppState) -> bool {
    state.http.read_token.is_some()
        || state
            .service_accounts
            .as_ref()
            .is_some_and(|s| !s.config().read.is_empty())
}

/// On a private cache, GET and HEAD need a credential that may read ([`allow`]), except for
/// the health endpoints and the public key, and `/metrics` when it is public. PUTs are checked
/// in their handlers.
pub async fn require_read_access(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>().cloned() {
        if reads_need_credential(&state) {
            let read = matches!(
                *req.method(),
                actix_web::http::Method::GET | actix_web::http::Method::HEAD
            );
            // The admin API has a token of its own.
            let open = matches!(req.path(), "/healthz" | "/readyz" | "/pubkey")
                || admin_path(req.path())
                || (req.path() == "/metrics" && state.http.public_metrics);
            if read && !open {
                if let Err(refusal) = allow(&state, req.request(), Right::Read).await {
                    let refusal = refusal.error_response();
                    return Ok(req.into_response(refusal).map_into_right_body());
                }
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
