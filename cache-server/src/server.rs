//! Builds the cache from a [`Config`] — the one place that picks an implementation for each seam —
//! and runs the HTTP server and the background tasks.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context as _;
use tracing::{info, warn};

use crate::cache::tasks::{TaskSettings, Tasks};
use crate::cache::{memory_ttl, Cache, CacheSettings};
use crate::config::{load_signing_key, Config, DatabaseBackend, LocalCacheConfig, StorageBackend};
use crate::db::{Database, SqlDatabase};
use crate::http::{configure, count_requests, require_read_access, AppState};
use crate::identity::ServiceAccounts;
use crate::lock::{FallbackLock, LocalLock, Lock, RedisLock};
use crate::metrics::Metrics;
use crate::nix::CacheInfo;
use crate::storage::{LocalStorage, LocalTier, S3Storage, Storage};
use crate::upstream::{Upstream, Upstreams};

const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// How often the stored-NARs gauges are set from the database (between, each replica counts what
/// it commits and evicts itself).
const STORAGE_GAUGES_INTERVAL: Duration = Duration::from_secs(60);
/// How often a replica looks for admin tasks to run (beside being woken when it records one).
const TASK_POLL_INTERVAL: Duration = Duration::from_secs(1);
const CACHE_INFO_RETRY: Duration = Duration::from_secs(30);
/// How often a serving process checks that its database and storage answer (for the
/// `nixcache_backend_up` gauges, `/readyz?verbose` and a log line on each change).
const BACKEND_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Time for a client to send a whole request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the configured database, applying migrations; fails when that cannot be done now.
pub async fn open_database(config: &Config) -> anyhow::Result<Arc<dyn Database>> {
    open_database_as(config, Role::Gc).await
}

/// Opens the configured database for `role`: a serving process starts even while PostgreSQL is
/// down (and migrates once it answers); the others need it now.
async fn open_database_as(config: &Config, role: Role) -> anyhow::Result<Arc<dyn Database>> {
    match &config.database.backend {
        DatabaseBackend::Sqlite(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent)
                    .await
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let db = SqlDatabase::sqlite(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            Ok(Arc::new(db))
        }
        DatabaseBackend::Postgres(url) if role == Role::Serve => Ok(Arc::new(
            SqlDatabase::postgres_serving(url.expose(), 16).await,
        )),
        DatabaseBackend::Postgres(url) => {
            let db = SqlDatabase::postgres(url.expose(), 16)
                .await
                .with_context(|| format!("opening {url:?}"))?;
            Ok(Arc::new(db))
        }
    }
}

/// What every upstream's HTTP client shares; each adds its own redirect rules.
fn http_client(config: &Config) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("nixcache/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.upstreams.timeouts.connect)
        .pool_idle_timeout(Duration::from_secs(60))
}

/// What the cache is built for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `nixcache serve`: owns the data dir's staging areas (clears what an earlier run left).
    Serve,
    /// `nixcache gc`: may run beside serving processes on the same data dir; touches no staging.
    Gc,
}

/// Builds the cache from the configuration: the one place that picks each seam's implementation.
pub async fn build_cache(config: &Config, role: Role) -> anyhow::Result<(Arc<Cache>, Upstreams)> {
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let staging_dir = config.data_dir.join("tmp");
    if role == Role::Serve {
        // Partial downloads from an earlier run are never complete: start with an empty staging dir.
        let _ = tokio::fs::remove_dir_all(&staging_dir).await;
    }
    tokio::fs::create_dir_all(&staging_dir)
        .await
        .with_context(|| format!("creating {}", staging_dir.display()))?;

    let storage: Arc<dyn Storage> = match &config.storage.backend {
        StorageBackend::Local(dir) => Arc::new(
            LocalStorage::open(dir, role == Role::Serve)
                .await
                .with_context(|| format!("opening local storage {}", dir.display()))?,
        ),
        StorageBackend::S3(s3) => {
            info!(bucket = %s3.bucket, prefix = %s3.prefix, endpoint = ?s3.endpoint, "storage in S3");
            Arc::new(S3Storage::new(s3).context("configuring S3 storage")?)
        }
    };
    let db = open_database_as(config, role).await?;
    let metrics = Metrics::new();
    let locks = &config.locks;
    let lock: Arc<dyn Lock> = if locks.redis.is_empty() {
        Arc::new(LocalLock::new())
    } else {
        let urls: Vec<String> = locks.redis.iter().map(|u| u.expose().to_string()).collect();
        let redlock = RedisLock::new(&urls, Duration::from_millis(500), &locks.namespace)?;
        info!(
            masters = urls.len(),
            strict = locks.strict,
            "locks in Redis"
        );
        Arc::new(FallbackLock::new(
            redlock,
            locks.strict,
            metrics.lock_fallbacks.clone(),
            metrics.lock_degraded.clone(),
        ))
    };

    let (key, created) = match role {
        Role::Serve => load_signing_key(&config.signing_key)?,
        // GC signs nothing; it must not create a key file a server would then adopt.
        Role::Gc => (crate::nix::SecretKey::generate("gc-unused")?, false),
    };
    if created {
        info!(public_key = %key.public_key(), "generated a new signing key");
    }
    info!(
        "public key (for clients' trusted-public-keys): {}",
        key.public_key()
    );
    if let Some(uploads) = &config.uploads {
        info!(
            token = uploads.token.is_some(),
            trusted_keys = uploads.trusted_keys.len(),
            max_size = uploads.max_size,
            "uploads enabled"
        );
    }

    let mut all = Vec::new();
    for u in &config.upstreams.caches {
        let upstream = Upstream::http(
            u.clone(),
            http_client(config),
            config.upstreams.timeouts.first_byte,
            &config.store_dir,
            config.upstreams.breaker,
            metrics.clone(),
        )
        .context("building the HTTP client")?;
        all.push(Arc::new(upstream));
    }
    let upstreams = Upstreams::new(all, config.upstreams.lookup);
    let settings = CacheSettings {
        upstreams: config.upstreams.timeouts,
        downloads: config.downloads,
        gc: config.gc.clone(),
        lock_ttl: locks.ttl,
        memory_entries: config.database.memory_entries,
        store_dir: config.store_dir.clone(),
        staging_dir,
        publish_parts: !locks.redis.is_empty(),
    };
    let tier = match (&config.storage.local_cache, &config.storage.backend, role) {
        (Some(LocalCacheConfig { dir, size }), StorageBackend::S3(_), Role::Serve) => {
            let tier = LocalTier::open(dir, *size, memory_ttl(config.gc.grace), metrics.clone())
                .await
                .with_context(|| format!("opening the local NAR cache {}", dir.display()))?;
            info!(dir = %dir.display(), size, held = tier.held_bytes(), "local NAR cache in front of S3");
            Some(tier)
        }
        (Some(LocalCacheConfig { dir, .. }), StorageBackend::Local(_), Role::Serve) => {
            warn!(dir = %dir.display(), "--local-cache-dir ignored: storage is local already");
            None
        }
        _ => None,
    };
    let cache = Cache::new(
        settings,
        storage,
        tier,
        db,
        lock,
        upstreams.clone(),
        key,
        metrics,
    );
    Ok((cache, upstreams))
}

/// Runs `nixcache serve` until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let (cache, upstreams) = build_cache(&config, Role::Serve).await?;
    match (config.gc.collects(), &config.gc.schedule) {
        (true, Some(_)) => {
            tokio::spawn(scheduled_gc(cache.clone(), config.gc.clone()));
        }
        (false, Some(_)) => {
            warn!("--gc-schedule without --max-size or --max-age: nothing will be evicted")
        }
        _ => {}
    }

    tokio::spawn(learn_upstream_priorities(upstreams));
    let flusher = every(ACCESS_FLUSH_INTERVAL, &cache, |c| async move {
        c.flush_access_log().await
    });
    let backends = every(BACKEND_CHECK_INTERVAL, &cache, |c| async move {
        c.check_backends().await
    });
    let gauges = every(STORAGE_GAUGES_INTERVAL, &cache, |c| async move {
        c.reconcile_storage_gauges().await
    });

    // Admin tasks: recorded by any replica, run by whichever claims them.
    let tasks = Tasks::new(
        cache.clone(),
        TaskSettings {
            replica: Tasks::default_replica_name(),
            poll: TASK_POLL_INTERVAL,
            tasks: config.tasks,
            gc: config.gc.clone(),
            lock_ttl: config.locks.ttl,
        },
    );
    let stop_tasks = tokio_util::sync::CancellationToken::new();
    let task_worker = tokio::spawn(tasks.clone().work(stop_tasks.clone()));

    let cache_info = CacheInfo {
        store_dir: config.store_dir.clone(),
        want_mass_query: true,
        priority: Some(config.http.priority),
    }
    .to_text();
    let service_accounts = match &config.service_accounts {
        Some(accounts) => Some(Arc::new(
            ServiceAccounts::connect(accounts.clone(), cache.metrics().clone()).await?,
        )),
        None => None,
    };
    let state = web::Data::new(AppState {
        cache: cache.clone(),
        cache_info,
        http: config.http.clone(),
        uploads: config.uploads.clone(),
        service_accounts,
        store_dir: config.store_dir.clone(),
        gc_collects: config.gc.collects(),
        tasks: tasks.clone(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(middleware::from_fn(require_read_access))
            .wrap(middleware::from_fn(count_requests))
            .configure(configure)
    })
    // Slow or idle clients: a request head must arrive whole within REQUEST_HEAD_TIMEOUT (a
    // trickled head is answered 408 and closed), an idle keep-alive connection is closed after
    // IDLE_TIMEOUT. Heads are bounded by actix-http (32 KiB, 96 headers: 431 beyond).
    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(IDLE_TIMEOUT)
    // Headers and a streamed body leave in separate writes: without TCP_NODELAY, Nagle's algorithm
    // holds the body back until the client's delayed ACK (~40 ms) on keep-alive connections.
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    // Shutdown is ours: readiness first, then no new connections, then in-flight requests (and
    // the downloads their clients follow) get up to the timeout to finish.
    .disable_signals()
    .shutdown_timeout(config.http.shutdown_timeout.as_secs().max(1))
    .bind(config.http.listen)
    .with_context(|| format!("listening on {}", config.http.listen))?
    .run();
    info!(listen = %config.http.listen, upstreams = config.upstreams.caches.len(), "nixcache serving");
    let handle = server.handle();
    let draining = cache.clone();
    let shutdown_delay = config.http.shutdown_delay;
    let stopping = stop_tasks.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: not ready any more, finishing in-flight requests");
        draining.begin_shutdown();
        // Running tasks go back to pending for the other replicas.
        stopping.cancel();
        // Time for endpoints and load balancers to see /readyz fail before connections are
        // refused.
        tokio::time::sleep(shutdown_delay).await;
        handle.stop(true).await;
    });
    server.await.context("HTTP server")?;
    stop_tasks.cancel();
    let _ = task_worker.await;
    flusher.abort();
    gauges.abort();
    backends.abort();
    cache.flush_access_log().await;
    info!("stopped");
    Ok(())
}

/// Runs `job` on the cache every `period`, the first time at once, until aborted.
fn every<F, Fut>(period: Duration, cache: &Arc<Cache>, job: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Cache>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cache = cache.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            job(cache.clone()).await;
        }
    })
}

/// SIGTERM (what Kubernetes sends) or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            warn!("cannot listen for signals; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs a GC pass at every tick of the schedule, when this replica gets the `gc` lock.
async fn scheduled_gc(cache: Arc<Cache>, gc: crate::config::GcConfig) {
    let Some(schedule) = gc.schedule.clone() else {
        return;
    };
    loop {
        let now = chrono::Utc::now();
        let next = match schedule.find_next_occurrence(&now, false) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "GC schedule has no next run; scheduled GC stops");
                return;
            }
        };
        tokio::time::sleep((next - now).to_std().unwrap_or_default()).await;
        match cache
            .gc(
                gc.max_size,
                gc.max_age,
                gc.grace,
                Duration::ZERO,
                Duration::from_secs(1),
            )
            .await
        {
            Ok(r) if !r.ran => info!("GC skipped: another replica holds the gc lock"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "GC pass failed"),
        }
    }
}

/// `nixcache gc`: one pass, then a summary.
pub async fn gc_once(config: Config) -> anyhow::Result<crate::cache::gc::GcReport> {
    if !config.gc.collects() {
        anyhow::bail!(
            "nixcache gc needs --max-size or --max-age (or NIXCACHE_MAX_SIZE, NIXCACHE_MAX_AGE, \
             or max-size, max-age in the config file)"
        );
    }
    let (cache, _) = build_cache(&config, Role::Gc).await?;
    let gc = &config.gc;
    let report = cache
        .gc(
            gc.max_size,
            gc.max_age,
            gc.grace,
            config.locks.ttl,
            Duration::ZERO,
        )
        .await?;
    cache.flush_access_log().await;
    Ok(report)
}

/// `nixcache fsck`: the problems found (and repaired, with `repair`).
pub async fn fsck(
    config: Config,
    deep: bool,
    sample: Option<usize>,
    repair: bool,
) -> anyhow::Result<Vec<crate::cache::fsck::Problem>> {
    let (cache, _) = build_cache(&config, Role::Gc).await?;
    Ok(cache.fsck(deep, sample, repair, config.gc.grace).await?)
}

/// Learns each upstream's priority from its `nix-cache-info`, retrying in the background until
/// every upstream has answered: nixcache serves what it has meanwhile.
async fn learn_upstream_priorities(upstreams: Upstreams) {
    loop {
        let mut pending = 0;
        for u in upstreams.all() {
            if !u.needs_cache_info() {
                continue;
            }
            match u.refresh_cache_info().await {
                Ok(info) => {
                    info!(upstream = u.label(), priority = u.priority(), store_dir = %info.store_dir, "upstream reachable")
                }
                Err(e) => {
                    pending += 1;
                    warn!(upstream = u.label(), error = %e, "upstream nix-cache-info unavailable; retrying in the background");
                }
            }
        }
        if pending == 0 {
            return;
        }
        tokio::time::sleep(CACHE_INFO_RETRY).await;
    }
}
