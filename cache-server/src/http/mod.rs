//! HTTP: translates requests into calls on [`Cache`] and results into status codes. One file per
//! endpoint (`narinfo`, `nar`, `cacheinfo`, `health`, `api`, `upload`, `extra` for what is served
//! back as uploaded), with tokens in `auth`, the shared response builders in `respond`, and the
//! one error type and its statuses in `error` (where reads' errors are a type with no 5xx); the
//! flows themselves live in `cache`.

mod api;
mod auth;
mod cacheinfo;
pub mod error;
mod extra;
mod health;
mod nar;
mod narinfo;
mod range;
mod respond;
pub(crate) mod upload;

pub use auth::require_read_access;
pub use error::{HttpError, NotServed};
pub(crate) use respond::text;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{guard, web};

use crate::cache::Cache;

/// What every handler shares.
pub struct AppState {
    pub cache: Arc<Cache>,
    /// The `/nix-cache-info` body.
    pub cache_info: String,
    /// Its tokens (read, admin) and whether `/metrics` is public.
    pub http: crate::config::HttpConfig,
    /// Uploads, when enabled.
    pub uploads: Option<crate::config::UploadConfig>,
    /// ServiceAccounts that may read or push, when any may.
    pub service_accounts: Option<Arc<crate::identity::ServiceAccounts>>,
    /// The store directory paths must be in.
    pub store_dir: String,
    /// Whether GC has a limit (size or age) to collect down to; without one GC on request is
    /// refused.
    pub gc_collects: bool,
    /// Admin work recorded in the database.
    pub tasks: Arc<crate::cache::tasks::Tasks>,
}

/// Routes of the cache. GET and HEAD are answered on every route; PUT (uploads) where
/// `nix copy --to` sends it.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let get_or_head = || guard::Any(guard::Get()).or(guard::Head());
    cfg.service(
        web::resource("/nix-cache-info")
            .route(web::route().guard(get_or_head()).to(cacheinfo::get))
            .route(web::put().to(upload::put_cache_info)),
    )
    .service(
        web::resource("/nar/{file}")
            .route(web::route().guard(get_or_head()).to(nar::get))
            .route(web::put().to(upload::put_nar)),
    )
    .service(
        web::resource(format!("{}/prefetch", crate::admin::PREFIX))
            .app_data(web::PayloadConfig::new(4 << 20))
            .route(web::post().to(api::prefetch)),
    )
    .service(web::resource(format!("{}/gc", crate::admin::PREFIX)).route(web::post().to(api::gc)))
    .service(
        web::resource(format!("{}/pins", crate::admin::PREFIX))
            .app_data(web::PayloadConfig::new(4 << 20))
            .route(web::get().to(api::pins))
            .route(web::post().to(api::pin))
            .route(web::delete().to(api::unpin)),
    )
    .service(
        web::resource(format!("{}/tasks/{{id}}", crate::admin::PREFIX))
            .route(web::get().to(api::task)),
    )
    .route(
        "/pubkey",
        web::route().guard(get_or_head()).to(health::pubkey),
    )
    .route(
        "/healthz",
        web::route().guard(get_or_head()).to(health::healthz),
    )
    .route(
        "/readyz",
        web::route().guard(get_or_head()).to(health::readyz),
    )
    .route(
        "/metrics",
        web::route().guard(get_or_head()).to(health::metrics),
    )
    .service(
        web::resource([
            "/log/{name:.+}",
            "/realisations/{name:.+}",
            "/build-trace-v2/{name:.+}",
        ])
        .route(web::route().guard(get_or_head()).to(extra::get_extra))
        .route(web::put().to(extra::put_extra)),
    )
    .service(
        web::resource("/{hash}.narinfo")
            .route(web::route().guard(get_or_head()).to(narinfo::get))
            .route(web::put().to(upload::put_narinfo)),
    )
    .service(
        web::resource("/{hash}.ls")
            .route(web::route().guard(get_or_head()).to(extra::get_listing))
            .route(web::put().to(upload::put_listing)),
    )
    .default_service(web::to(respond::not_found));
}

/// Counts and times requests by route template, method and status.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = match *req.method() {
        actix_web::http::Method::GET => "GET",
        actix_web::http::Method::HEAD => "HEAD",
        actix_web::http::Method::PUT => "PUT",
        actix_web::http::Method::POST => "POST",
        _ => "other",
    };
    let started = std::time::Instant::now();
    // Every log line of the request carries its id; a sane incoming X-Request-Id is kept.
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
        .map_or_else(crate::util::request_id, str::to_string);
    let path: String = req.path().chars().take(200).collect();
    let span = tracing::info_span!("request", id = %id, method, path = %path);
    let mut res = tracing::Instrument::instrument(next.call(req), span).await?;
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            v,
        );
    }
    if let Some(state) = state {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        let m = state.cache.metrics();
        m.http_requests
            .with_label_values(&[route.as_str(), method, res.status().as_str()])
            .inc();
        m.http_duration
            .with_label_values(&[route.as_str(), method])
            .observe(started.elapsed().as_secs_f64());
        // Draining: each keep-alive client closes its connection after this response and
        // reconnects, through the Service, to a replica that is still ready, instead of sending
        // its next request on a connection that is about to be closed.
        if state.cache.is_shutting_down() {
            res.response_mut()
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    //! The edge in-process, over [`Cache::for_tests`]: what each kind of request is answered.
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use actix_web::http::StatusCode;
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use actix_web::App;

    use super::*;
    use crate::cache::tasks::{TaskSettings, Tasks};
    use crate::cache::testing::FakeUpstream;

    async fn state(dir: &std::path::Path, up: &FakeUpstream) -> web::Data<AppState> {
        let cache = Cache::for_tests(dir, &[up]).await;
        let cache_settings = crate::cache::CacheSettings::for_tests(dir);
        let tasks = Tasks::new(
            cache.clone(),
            TaskSettings {
                replica: "test".into(),
                poll: Duration::from_secs(1),
                tasks: crate::config::TaskConfig {
                    retention: Duration::from_secs(60),
                },
                gc: cache_settings.gc.clone(),
                lock_ttl: Duration::from_secs(10),
            },
        );
        web::Data::new(AppState {
            cache,
            cache_info: "StoreDir: /nix/store\n".into(),
            http: crate::config::HttpConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                priority: 40,
                read_token: None,
                admin_token: None,
                public_metrics: false,
                shutdown_timeout: Duration::from_secs(1),
                shutdown_delay: Duration::ZERO,
            },
            uploads: None,
            service_accounts: None,
            store_dir: "/nix/store".into(),
            gc_collects: false,
            tasks,
        })
    }

    #[actix_web::test]
    async fn reads_answer_400_or_404_never_5xx_even_with_the_upstream_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let p = up.publish("hello", b"hello\n", &[]);
        let app = init_service(
            App::new()
                .app_data(state(dir.path(), &up).await)
                .wrap(actix_web::middleware::from_fn(require_read_access))
                .wrap(actix_web::middleware::from_fn(count_requests))
                .configure(configure),
        )
        .await;
        let get = |uri: String| TestRequest::get().uri(&uri).to_request();

        let r = call_service(&app, get(p.narinfo_path())).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = call_service(&app, get(p.nar_path())).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(read_body(r).await, p.bytes);

        for (uri, want) in [
            ("/not-a-hash.narinfo", StatusCode::BAD_REQUEST),
            ("/nar/zzz.nar", StatusCode::BAD_REQUEST),
            (
                "/p404n8pan3pvrll7pci95yg83idrvkdx.ls",
                StatusCode::NOT_FOUND,
            ),
            ("/log/..", StatusCode::BAD_REQUEST),
            ("/no/such/route", StatusCode::NOT_FOUND),
            ("/api/v1/tasks/x", StatusCode::NOT_FOUND),
        ] {
            let r = call_service(&app, get(uri.to_string())).await;
            assert_eq!(r.status(), want, "{uri}");
        }

        up.transport.down.store(true, Ordering::Relaxed);
        let q = up.publish("unreachable", b"q\n", &[]);
        for uri in [q.narinfo_path(), q.nar_path()] {
            let r = call_service(&app, get(uri.clone())).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{uri}");
        }

        // Past the end of the stored NAR (once its commit is done: a download in progress is
        // served whole).
        let start = std::time::Instant::now();
        loop {
            let r = call_service(
                &app,
                TestRequest::get()
                    .uri(&p.nar_path())
                    .insert_header(("Range", "bytes=100000-"))
                    .to_request(),
            )
            .await;
            if r.status() != StatusCode::OK || start.elapsed() > Duration::from_secs(10) {
                assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let r = call_service(&app, TestRequest::put().uri(&p.narinfo_path()).to_request()).await;
        assert_eq!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "uploads are off"
        );
    }
}
