//! The conformance suites of the seams (`nixcache::{db, lock, storage}::conformance`) against the
//! real backends they are written for: PostgreSQL, Redis (one and three masters, and with the
//! in-process fallback), and S3 (SeaweedFS), and those backends' own failure modes. The unit
//! tests of `nixcache-server` run the same suites against SQLite, the in-process lock and local
//! disk, without any service.

mod postgres {
    use std::time::Duration;

    use nixcache::db::{conformance, Database, Narinfos, SqlDatabase};
    use nixcache_tests::postgres::Postgres;

    const HASH: &str = "p404n8pan3pvrll7pci95yg83idrvkdx";

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_conformance() {
        let pg = Postgres::start();
        let db = SqlDatabase::postgres(&pg.url(), 4).await.expect("open");
        conformance::run(&db).await;
        conformance::tasks(&db).await;
        conformance::pins(&db).await;
        // Migrations are applied once: opening again is fine and keeps the data.
        let again = SqlDatabase::postgres(&pg.url(), 4).await.expect("reopen");
        assert!(again.get_narinfo(HASH).await.expect("get").is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_survives_the_server_going_away_and_coming_back() {
        let pg = Postgres::start();
        let db = SqlDatabase::postgres(&pg.url(), 2).await.expect("open");
        db.ping().await.expect("ping");
        pg.stop();
        assert!(db.ping().await.is_err(), "ping with the server stopped");
        assert!(db.get_narinfo(HASH).await.is_err());
        pg.resume();
        let start = std::time::Instant::now();
        while db.ping().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no recovery after the server came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        conformance::run(&db).await;
    }
}

mod redis {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use nixcache::lock::{conformance, Lock, LockError, RedisLock};
    use nixcache_tests::redis::Redis;

    fn lock_over(servers: &[Redis]) -> RedisLock {
        let urls: Vec<String> = servers.iter().map(Redis::url).collect();
        RedisLock::new(&urls, Duration::from_millis(500), "s3://test").expect("lock")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn caches_sharing_a_redis_do_not_block_each_other() {
        let servers = [Redis::start()];
        let urls = vec![servers[0].url()];
        let ttl = Duration::from_secs(10);
        let a = RedisLock::new(&urls, Duration::from_millis(500), "s3://a").expect("lock");
        let a2 = RedisLock::new(&urls, Duration::from_millis(500), "s3://a").expect("lock");
        let b = RedisLock::new(&urls, Duration::from_millis(500), "s3://b").expect("lock");
        let held = a.acquire("nar:x", ttl, Duration::ZERO).await.expect("up");
        assert!(held.is_some());
        assert!(
            a2.acquire("nar:x", ttl, Duration::from_millis(50))
                .await
                .expect("up")
                .is_none(),
            "replicas of one cache share a lock"
        );
        assert!(
            b.acquire("nar:x", ttl, Duration::ZERO)
                .await
                .expect("up")
                .is_some(),
            "another cache's lock of the same name is its own"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_one_master() {
        let servers = [Redis::start()];
        conformance::run(Arc::new(lock_over(&servers))).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_three_masters() {
        let servers = [Redis::start(), Redis::start(), Redis::start()];
        conformance::run(Arc::new(lock_over(&servers))).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_minority_of_masters_down_is_tolerated_a_majority_is_not() {
        let mut servers = [Redis::start(), Redis::start(), Redis::start()];
        let lock = lock_over(&servers);
        let ttl = Duration::from_secs(10);
        servers[0].stop();
        let g = lock
            .acquire("a", ttl, Duration::ZERO)
            .await
            .expect("two of three")
            .expect("free");
        assert!(lock
            .acquire("a", ttl, Duration::from_millis(100))
            .await
            .expect("reachable")
            .is_none());
        g.extend(ttl).await.expect("extend with two of three");
        drop(g);
        servers[1].stop();
        let err = lock
            .acquire("b", ttl, Duration::from_millis(200))
            .await
            .map(|_| ());
        assert!(
            matches!(err, Err(LockError::Unavailable(_))),
            "one of three must not grant a lock"
        );
        // Back: locking resumes without a new client.
        servers[0].resume();
        servers[1].resume();
        let start = Instant::now();
        loop {
            match lock.acquire("b", ttl, Duration::ZERO).await {
                Ok(Some(_)) => break,
                _ => assert!(start.elapsed() < Duration::from_secs(10), "no recovery"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_expired_holder_cannot_extend_or_release_the_next_holders_lock() {
        let servers = [Redis::start()];
        let lock = lock_over(&servers);
        let first = lock
            .acquire("k", Duration::from_millis(200), Duration::ZERO)
            .await
            .expect("acquire")
            .expect("free");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = lock
            .acquire("k", Duration::from_secs(10), Duration::ZERO)
            .await
            .expect("acquire")
            .expect("expired");
        assert!(matches!(
            first.extend(Duration::from_secs(10)).await,
            Err(LockError::Lost(_))
        ));
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            lock.acquire("k", Duration::from_secs(10), Duration::ZERO)
                .await
                .expect("acquire")
                .is_none(),
            "released by the old holder"
        );
        second
            .extend(Duration::from_secs(10))
            .await
            .expect("still held");
    }
}

mod fallback {
    use std::sync::Arc;
    use std::time::Duration;

    use nixcache::lock::{conformance, FallbackLock, Lock, LockError, RedisLock};
    use nixcache_tests::redis::Redis;
    use prometheus::{IntCounter, IntGauge};

    fn counter() -> IntCounter {
        IntCounter::new("fallbacks", "test").expect("counter")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn falls_back_while_redis_is_down_and_recovers() {
        let mut redis = Redis::start();
        let primary =
            RedisLock::new(&[redis.url()], Duration::from_millis(300), "s3://test").expect("lock");
        let fallbacks = counter();
        let lock = Arc::new(FallbackLock::new(
            primary,
            false,
            fallbacks.clone(),
            IntGauge::new("d", "test").expect("gauge"),
        ));
        conformance::run(lock.clone()).await;
        assert_eq!(fallbacks.get(), 0);

        redis.stop();
        let ttl = Duration::from_secs(10);
        let g = lock
            .acquire("x", ttl, Duration::ZERO)
            .await
            .expect("falls back")
            .expect("free locally");
        assert!(fallbacks.get() >= 1);
        assert!(
            lock.acquire("x", ttl, Duration::from_millis(50))
                .await
                .expect("falls back")
                .is_none(),
            "still exclusive in-process"
        );
        drop(g);

        redis.resume();
        let before = fallbacks.get();
        let start = std::time::Instant::now();
        while lock
            .acquire("y", ttl, Duration::ZERO)
            .await
            .expect("acquire")
            .is_none()
            || fallbacks.get() > before
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "Redis locking did not resume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn strict_mode_refuses_instead() {
        let mut redis = Redis::start();
        let primary =
            RedisLock::new(&[redis.url()], Duration::from_millis(300), "s3://test").expect("lock");
        let lock = FallbackLock::new(
            primary,
            true,
            counter(),
            IntGauge::new("d", "test").expect("gauge"),
        );
        redis.stop();
        let r = lock
            .acquire("x", Duration::from_secs(10), Duration::ZERO)
            .await
            .map(|_| ());
        assert!(matches!(r, Err(LockError::Unavailable(_))));
    }
}

mod s3 {
    use bytes::Bytes;
    use futures_util::TryStreamExt;
    use nixcache::storage::{
        conformance, ByteRange, S3Config, S3Storage, Storage, S3_PART_SIZE as PART_SIZE,
    };
    use nixcache_tests::seaweedfs::{self, SeaweedFs};
    use object_store::aws::{AmazonS3, AmazonS3Builder};
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};

    /// A client of the test server with its credentials.
    fn client(server: &SeaweedFs) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(seaweedfs::BUCKET)
            .with_region("us-east-1")
            .with_endpoint(server.endpoint.clone())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(seaweedfs::ACCESS_KEY)
            .with_secret_access_key(seaweedfs::SECRET_KEY)
            .build()
            .expect("store")
    }

    fn storage(server: &SeaweedFs, prefix: &str) -> S3Storage {
        // Credentials as the environment would give them, but without touching the process env.
        let config = S3Config {
            bucket: seaweedfs::BUCKET.into(),
            prefix: prefix.into(),
            endpoint: Some(server.endpoint.clone()),
            region: "us-east-1".into(),
        };
        let store = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_endpoint(server.endpoint.clone())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(seaweedfs::ACCESS_KEY)
            .with_secret_access_key(seaweedfs::SECRET_KEY)
            .build()
            .expect("store");
        S3Storage::with_store(store, &config.prefix)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let server = SeaweedFs::start();
        let dir = tempfile::tempdir().expect("tempdir");
        conformance::run(&storage(&server, "conformance"), dir.path()).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn incomplete_uploads_left_by_a_crash_are_aborted_once_stale() {
        let server = SeaweedFs::start();
        let s = storage(&server, "stale");
        let other = storage(&server, "elsewhere");
        // Uploads begun and never completed, as a process killed mid-commit leaves them.
        for prefix in ["stale", "elsewhere"] {
            let path = ObjectPath::from(format!("{prefix}/nar/x.nar"));
            let mut upload = client(&server).put_multipart(&path).await.expect("create");
            upload
                .put_part(PutPayload::from(vec![7u8; 5 << 20]))
                .await
                .expect("part");
            drop(upload);
        }
        // Not stale yet: kept.
        assert_eq!(
            s.abort_stale_uploads(std::time::Duration::from_secs(3600))
                .await
                .expect("list"),
            0
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(
            s.abort_stale_uploads(std::time::Duration::from_secs(1))
                .await
                .expect("abort"),
            1,
            "only this prefix's upload"
        );
        assert_eq!(
            s.abort_stale_uploads(std::time::Duration::ZERO)
                .await
                .expect("again"),
            0,
            "gone"
        );
        assert_eq!(
            other
                .abort_stale_uploads(std::time::Duration::ZERO)
                .await
                .expect("other prefix"),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn large_files_go_up_in_parts_and_come_back_whole() {
        let server = SeaweedFs::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let s = storage(&server, "");
        let data: Vec<u8> = (0..(PART_SIZE * 2 + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let file = dir.path().join("big");
        std::fs::write(&file, &data).expect("write");
        s.put_file("nar/big.nar", &file).await.expect("upload");
        assert_eq!(
            s.size("nar/big.nar").await.expect("size"),
            Some(data.len() as u64)
        );
        let o = s
            .get("nar/big.nar", None)
            .await
            .expect("get")
            .expect("present");
        let got: Vec<Bytes> = o.body.try_collect().await.expect("read");
        assert!(got.concat() == data);
        let o = s
            .get("nar/big.nar", Some(ByteRange::Suffix(10)))
            .await
            .expect("get")
            .expect("present");
        let got: Vec<Bytes> = o.body.try_collect().await.expect("read");
        assert_eq!(got.concat(), &data[data.len() - 10..]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrong_credentials_are_an_error_not_a_miss() {
        let server = SeaweedFs::start();
        let store = AmazonS3Builder::new()
            .with_bucket_name(seaweedfs::BUCKET)
            .with_region("us-east-1")
            .with_endpoint(server.endpoint.clone())
            .with_allow_http(true)
            .with_access_key_id(seaweedfs::ACCESS_KEY)
            .with_secret_access_key("wrong")
            .build()
            .expect("store");
        let s = S3Storage::with_store(store, "");
        let err = s
            .put_bytes("narinfo/x.narinfo", Bytes::from_static(b"x"))
            .await
            .map(|_| ());
        let Err(err) = err else {
            panic!("a write with the wrong secret succeeded")
        };
        assert!(!err.to_string().contains("wrong"), "secret in error: {err}");
    }
}
