//! The fast test tier's cache: [`Cache::for_tests`] runs the real flows in-process on a tempdir
//! (SQLite, local disk, the in-process lock) in front of [`FakeUpstream`]s, whose answers come
//! from memory. No service is started: `cargo test -p nixcache-server --lib` needs none.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::{Cache, CacheSettings, NarBody};
use crate::config::{BreakerConfig, DownloadConfig, GcConfig, LookupOrder, UpstreamTimeouts};
use crate::db::SqlDatabase;
use crate::lock::LocalLock;
use crate::metrics::Metrics;
use crate::nix::{base32, nar, Compression, NarFile, NarInfo, SecretKey, Sha256Hash, StorePath};
use crate::storage::LocalStorage;
use crate::upstream::transport::MemoryTransport;
use crate::upstream::{Upstream, UpstreamConfig, Upstreams};

impl CacheSettings {
    /// Short timeouts and small limits, everything under `dir`.
    pub(crate) fn for_tests(dir: &Path) -> Self {
        Self {
            upstreams: UpstreamTimeouts {
                connect: Duration::from_secs(2),
                first_byte: Duration::from_secs(2),
                stall: Duration::from_secs(2),
                negative_ttl: Duration::from_secs(60),
            },
            downloads: DownloadConfig {
                max: 4,
                queue_timeout: Duration::from_secs(2),
                staging_min_free: 0,
                failure_ttl: Duration::from_secs(60),
                part_size: 1 << 20,
            },
            gc: GcConfig {
                max_size: None,
                max_age: None,
                pins: Vec::new(),
                schedule: None,
                grace: Duration::from_secs(2),
                unfetched_ttl: Duration::from_secs(3600),
            },
            lock_ttl: Duration::from_secs(10),
            memory_entries: 1000,
            store_dir: nixcache_settings::store::DEFAULT_STORE_DIR.into(),
            staging_dir: dir.join("tmp"),
            publish_parts: false,
        }
    }
}

impl Cache {
    /// A cache with the server's defaults for its flows, SQLite, local storage and the
    /// in-process lock in `dir`, in front of `upstreams`.
    pub(crate) async fn for_tests(dir: &Path, upstreams: &[&FakeUpstream]) -> Arc<Self> {
        Self::for_tests_asking(dir, upstreams, LookupOrder::Parallel).await
    }

    /// [`Cache::for_tests`], asking its upstreams in `lookup` order.
    pub(crate) async fn for_tests_asking(
        dir: &Path,
        upstreams: &[&FakeUpstream],
        lookup: LookupOrder,
    ) -> Arc<Self> {
        let settings = CacheSettings::for_tests(dir);
        std::fs::create_dir_all(&settings.staging_dir).expect("staging dir");
        let storage = LocalStorage::open(dir.join("store"), true)
            .await
            .expect("storage");
        let db = SqlDatabase::sqlite(&dir.join("db.sqlite"))
            .await
            .expect("database");
        let metrics = Metrics::new();
        let upstreams = upstreams
            .iter()
            .map(|u| Arc::new(u.upstream(&settings, &metrics)))
            .collect();
        Cache::new(
            settings,
            Arc::new(storage),
            None,
            Arc::new(db),
            Arc::new(LocalLock::new()),
            Upstreams::new(upstreams, lookup),
            SecretKey::generate("nixcache-test-1").expect("key"),
            metrics,
        )
    }

    /// Fetches a published path's narinfo and NAR through the cache, and waits until the NAR is
    /// stored.
    pub(crate) async fn fetch_stored(self: &Arc<Self>, p: &Published) {
        assert!(self.narinfo(p.path.hash()).await.is_some(), "{}", p.path);
        assert_eq!(self.nar_bytes(&p.file).await.as_ref(), Some(&p.bytes));
        let start = std::time::Instant::now();
        while !matches!(self.nar(p.file, None).await, Ok(Some(NarBody::Stored(_)))) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} never stored",
                p.path
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A NAR's whole body, from storage or following its download.
    pub(crate) async fn nar_bytes(self: &Arc<Self>, file: &NarFile) -> Option<Bytes> {
        let body = match self.nar(*file, None).await.ok()?? {
            NarBody::Stored(object) => object.body,
            NarBody::Live { body, .. } => body,
        };
        let chunks: Vec<Bytes> = body.try_collect().await.ok()?;
        Some(chunks.concat().into())
    }
}

/// An upstream binary cache in memory: store paths published to it are served as a Nix binary
/// cache serves them, with narinfos signed by its own key.
pub(crate) struct FakeUpstream {
    pub transport: Arc<MemoryTransport>,
    pub key: SecretKey,
    base: url::Url,
    priority: Option<u32>,
    /// When it is skipped after failing; never, unless a test sets it.
    pub breaker: BreakerConfig,
}

/// A store path published to a [`FakeUpstream`].
pub(crate) struct Published {
    pub path: StorePath,
    pub info: NarInfo,
    pub file: NarFile,
    /// The NAR file as served (compressed as `file` says).
    pub bytes: Bytes,
}

impl FakeUpstream {
    /// An upstream at `http://<host>/` (nothing is resolved: its transport is memory).
    pub(crate) fn new(host: &str) -> Self {
        let transport = Arc::new(MemoryTransport::default());
        transport.put(
            "/nix-cache-info",
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
        );
        Self {
            transport,
            key: SecretKey::generate(&format!("{host}-1")).expect("key"),
            base: url::Url::parse(&format!("http://{host}/")).expect("url"),
            priority: None,
            breaker: BreakerConfig {
                failures: 0,
                backoff: Duration::from_secs(30),
            },
        }
    }

    pub(crate) fn with_priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }

    fn upstream(&self, settings: &CacheSettings, metrics: &Metrics) -> Upstream {
        let config = UpstreamConfig {
            url: self.base.clone(),
            priority: self.priority,
            keys: vec![self.key.public_key()],
            trust_unsigned: false,
            cross_origin_redirects: false,
            credentials: None,
        };
        Upstream::new(
            config,
            self.transport.clone(),
            settings.upstreams.first_byte,
            &settings.store_dir,
            self.breaker,
            metrics.clone(),
        )
    }

    /// Publishes a store path named `name` holding one file with `contents`, uncompressed,
    /// referring to `references` (base names), and signed by this upstream's key.
    pub(crate) fn publish(&self, name: &str, contents: &[u8], references: &[&str]) -> Published {
        let nar = Bytes::from(nar::regular_file(contents));
        let digest = Sha256Hash::digest(format!("{}:{name}", self.base).as_bytes());
        let hash = base32::encode(&digest.0[..20]);
        let path = StorePath::parse(&format!("/nix/store/{hash}-{name}")).expect("store path");
        let file = NarFile {
            hash: Sha256Hash::digest(&nar),
            compression: Compression::None,
        };
        let mut info = NarInfo {
            store_path: path.clone(),
            url: file.url(),
            compression: Some(Compression::None),
            file_hash: Some(file.hash),
            file_size: Some(nar.len() as u64),
            nar_hash: Sha256Hash::digest(&nar),
            nar_size: nar.len() as u64,
            references: references.iter().map(|r| r.to_string()).collect(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
            extra: Vec::new(),
        };
        info.sign(&self.key);
        self.put_narinfo(&info);
        self.transport.put(&format!("/{}", file.url()), nar.clone());
        Published {
            path,
            info,
            file,
            bytes: nar,
        }
    }

    /// Serves `info` as its path's narinfo, as it is (a test may have altered it).
    pub(crate) fn put_narinfo(&self, info: &NarInfo) {
        self.transport.put(
            &format!("/{}.narinfo", info.store_path.hash()),
            info.to_text(),
        );
    }

    /// How many requests asked for `path`.
    pub(crate) fn asked_for(&self, path: &str) -> usize {
        self.transport
            .asked()
            .iter()
            .filter(|p| p.as_str() == path)
            .count()
    }
}

impl Published {
    pub(crate) fn narinfo_path(&self) -> String {
        format!("/{}.narinfo", self.path.hash())
    }

    pub(crate) fn nar_path(&self) -> String {
        format!("/{}", self.file.url())
    }
}

#[cfg(test)]
mod tests {
    //! The miss flows end to end, in-process.
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::nix::StoreHash;

    fn served(body: &Bytes) -> NarInfo {
        NarInfo::parse(std::str::from_utf8(body).expect("utf-8")).expect("narinfo")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_narinfo_miss_is_fetched_once_verified_and_signed_with_the_cache_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let p = up.publish("hello", b"hello\n", &[]);
        let cache = Cache::for_tests(dir.path(), &[&up]).await;

        let body = cache.narinfo(p.path.hash()).await.expect("found");
        let info = served(&body);
        assert_eq!(info.store_path, p.path);
        assert_eq!(info.nar_hash, p.info.nar_hash);
        let cache_key = crate::nix::PublicKey::parse(&cache.public_key()).expect("key");
        assert!(info.verify(&[cache_key]), "signed by the cache");
        assert!(
            info.verify(&[up.key.public_key()]),
            "the upstream's signature kept"
        );
        assert_eq!(
            info.url,
            p.file.url(),
            "the NAR is served from the cache's own URL"
        );

        // Again: from the cache, without asking the upstream.
        assert!(cache.narinfo(p.path.hash()).await.is_some());
        assert_eq!(up.asked_for(&p.narinfo_path()), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_nar_miss_is_verified_stored_and_then_served_from_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let p = up.publish("data", &[7u8; 100_000], &[]);
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        // Served whole, and committed once verified: the next read is the stored copy.
        cache.fetch_stored(&p).await;
        assert_eq!(cache.nar_bytes(&p.file).await.expect("nar"), p.bytes);
        assert_eq!(up.asked_for(&p.nar_path()), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_truncated_or_corrupt_nar_is_never_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let cut = up.publish("cut", &[1u8; 50_000], &[]);
        let bad = up.publish("bad", &[2u8; 50_000], &[]);
        // The corrupt one: other bytes of the same length at its URL.
        let mut other = bad.bytes.to_vec();
        other[40_000] ^= 0xff;
        up.transport.put(&bad.nar_path(), other);
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        for p in [&cut, &bad] {
            assert!(cache.narinfo(p.path.hash()).await.is_some());
        }

        up.transport.truncate.store(true, Ordering::Relaxed);
        assert_ne!(cache.nar_bytes(&cut.file).await, Some(cut.bytes.clone()));
        up.transport.truncate.store(false, Ordering::Relaxed);
        assert_ne!(cache.nar_bytes(&bad.file).await, Some(bad.bytes.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        for p in [&cut, &bad] {
            assert!(
                !matches!(cache.nar(p.file, None).await, Ok(Some(NarBody::Stored(_)))),
                "{} stored",
                p.path
            );
            let stored = crate::storage::keys::nar_key(&p.file);
            assert!(cache.storage.size(&stored).await.expect("size").is_none());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_no_upstream_has_is_a_miss_remembered_for_the_negative_ttl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        let hash = StoreHash::parse("p404n8pan3pvrll7pci95yg83idrvkdx").expect("hash");
        assert!(cache.narinfo(hash).await.is_none());
        assert!(cache.narinfo(hash).await.is_none());
        assert_eq!(up.asked_for(&format!("/{hash}.narinfo")), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn narinfos_not_signed_by_a_trusted_key_or_for_another_path_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let unsigned = up.publish("unsigned", b"u\n", &[]);
        let mut info = unsigned.info.clone();
        info.sigs.clear();
        info.sign(&SecretKey::generate("stranger-1").expect("key"));
        up.put_narinfo(&info);
        let swapped = up.publish("swapped", b"s\n", &[]);
        let other = up.publish("other", b"o\n", &[]);
        up.transport
            .put(&swapped.narinfo_path(), other.info.to_text());
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        assert!(cache.narinfo(unsigned.path.hash()).await.is_none());
        assert!(cache.narinfo(swapped.path.hash()).await.is_none());
        assert!(cache.narinfo(other.path.hash()).await.is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_upstream_is_a_miss_and_the_next_upstream_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let down = FakeUpstream::new("down.test").with_priority(10);
        let up = FakeUpstream::new("up.test").with_priority(20);
        let p = up.publish("hello", b"hello\n", &[]);
        down.transport.down.store(true, Ordering::Relaxed);
        let cache = Cache::for_tests(dir.path(), &[&down, &up]).await;
        assert!(cache.narinfo(p.path.hash()).await.is_some());
        assert_eq!(down.asked_for(&p.narinfo_path()), 1, "asked first");

        // Alone, a failing upstream makes a miss, not an error.
        let dir = tempfile::tempdir().expect("tempdir");
        let alone = FakeUpstream::new("alone.test");
        let q = alone.publish("q", b"q\n", &[]);
        alone.transport.down.store(true, Ordering::Relaxed);
        let cache = Cache::for_tests(dir.path(), &[&alone]).await;
        assert!(cache.narinfo(q.path.hash()).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_nar_url_outside_its_upstream_is_never_fetched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let up = FakeUpstream::new("up.test");
        let p = up.publish("away", b"away\n", &[]);
        // The URL field is not covered by the signature.
        let mut info = p.info.clone();
        info.url = format!("http://elsewhere.test/{}", p.file.url());
        up.put_narinfo(&info);
        let cache = Cache::for_tests(dir.path(), &[&up]).await;
        assert!(cache.narinfo(p.path.hash()).await.is_none());
        assert!(cache.nar_bytes(&p.file).await.is_none());
    }

    fn signed_by(body: &Bytes, up: &FakeUpstream) -> bool {
        served(body).verify(&[up.key.public_key()])
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn parallel_lookups_take_the_best_priority_hit_once_every_better_one_has_said_no() {
        let delay = Duration::from_millis(300);
        let lacking = FakeUpstream::new("lacking.test").with_priority(10);
        let better = FakeUpstream::new("better.test").with_priority(20);
        let faster = FakeUpstream::new("faster.test").with_priority(30);
        *lacking.transport.delay.lock().expect("delay") = delay;
        *better.transport.delay.lock().expect("delay") = delay;
        // The same path from both: each signs its own copy.
        let p = better.publish("both", b"both\n", &[]);
        faster.put_narinfo(&{
            let mut info = p.info.clone();
            info.sigs.clear();
            info.sign(&faster.key);
            info
        });

        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::for_tests(dir.path(), &[&faster, &better, &lacking]).await;
        let body = cache.narinfo(p.path.hash()).await.expect("found");
        assert!(
            signed_by(&body, &better),
            "the better priority's hit, though it came later"
        );
        assert!(!signed_by(&body, &faster));
        let asked = |u: &FakeUpstream| u.transport.first_asked(&p.narinfo_path()).expect("asked");
        let (first, last) = {
            let t = [asked(&lacking), asked(&better), asked(&faster)];
            (*t.iter().min().expect("min"), *t.iter().max().expect("max"))
        };
        assert!(
            last.duration_since(first) < delay,
            "all asked before the first answer: {:?} apart",
            last.duration_since(first)
        );

        // In sequence: the next is asked once the one before has answered, and the worse one
        // not at all.
        let dir = tempfile::tempdir().expect("tempdir");
        let lacking = FakeUpstream::new("lacking.test").with_priority(10);
        let better = FakeUpstream::new("better.test").with_priority(20);
        let faster = FakeUpstream::new("faster.test").with_priority(30);
        *lacking.transport.delay.lock().expect("delay") = delay;
        let p = better.publish("both", b"both\n", &[]);
        let cache = Cache::for_tests_asking(
            dir.path(),
            &[&faster, &better, &lacking],
            LookupOrder::Sequential,
        )
        .await;
        let body = cache.narinfo(p.path.hash()).await.expect("found");
        assert!(signed_by(&body, &better));
        assert!(asked(&better).duration_since(asked(&lacking)) >= delay);
        assert_eq!(faster.asked_for(&p.narinfo_path()), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_upstream_is_skipped_for_its_backoff_then_asked_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut failing = FakeUpstream::new("failing.test").with_priority(10);
        failing.breaker = BreakerConfig {
            failures: 2,
            backoff: Duration::from_millis(300),
        };
        let good = FakeUpstream::new("good.test").with_priority(20);
        let paths: Vec<Published> = (0..4)
            .map(|i| good.publish(&format!("p{i}"), format!("{i}\n").as_bytes(), &[]))
            .collect();
        failing.transport.down.store(true, Ordering::Relaxed);
        let cache = Cache::for_tests(dir.path(), &[&failing, &good]).await;
        let up = || {
            cache
                .metrics()
                .upstream_up
                .with_label_values(&["failing.test"])
                .get()
        };
        for p in &paths[..2] {
            assert!(cache.narinfo(p.path.hash()).await.is_some());
        }
        assert_eq!(up(), 0, "two failures in a row: skipped");
        assert!(cache.narinfo(paths[2].path.hash()).await.is_some());
        assert_eq!(
            failing.asked_for(&paths[2].narinfo_path()),
            0,
            "not asked while skipped"
        );

        failing.transport.down.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(cache.narinfo(paths[3].path.hash()).await.is_some());
        assert_eq!(
            failing.asked_for(&paths[3].narinfo_path()),
            1,
            "tried again"
        );
        assert_eq!(up(), 1, "its 404 closed the circuit");
    }
}
