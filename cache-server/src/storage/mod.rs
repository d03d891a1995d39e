//! Where NAR files and narinfo bodies are kept. `LocalStorage` is the embedded default; every
//! implementation passes the same conformance tests.

pub mod keys;
mod local;
mod mapped;
mod s3;
mod tier;

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::TryStreamExt;

pub use local::LocalStorage;
pub use s3::{S3Config, S3Storage, PART_SIZE as S3_PART_SIZE};
pub use tier::{LocalTier, StagedNar};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage key {0:?}")]
    Key(String),
    #[error("range not satisfiable (object has {total} bytes)")]
    RangeNotSatisfiable { total: u64 },
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A byte range as asked for by an HTTP `Range` header, not yet resolved against a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=start-` or `bytes=start-end` (end inclusive).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Resolves against an object of `total` bytes: the half-open `[start, end)` to send, or
    /// `None` when unsatisfiable.
    pub fn resolve(self, total: u64) -> Option<(u64, u64)> {
        match self {
            Self::From { start, end } => {
                if start >= total {
                    return None;
                }
                let end = end.map_or(total, |e| e.saturating_add(1).min(total));
                (end > start).then_some((start, end))
            }
            Self::Suffix(0) => None,
            Self::Suffix(n) => (total > 0).then(|| (total.saturating_sub(n), total)),
        }
    }
}

/// An object being read: its full size, the part being sent, and that part's bytes.
pub struct Object {
    pub total: u64,
    /// Half-open range of the bytes in `body`; `(0, total)` when no range was asked for.
    pub range: (u64, u64),
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

impl Object {
    /// The whole body in memory: for small objects (narinfos, listings, manifests, parts).
    pub async fn read_all(self) -> std::io::Result<Bytes> {
        let chunks: Vec<Bytes> = self.body.try_collect().await?;
        Ok(Bytes::from(chunks.concat()))
    }
}

/// A small object read whole; `None` when absent or unreadable.
pub async fn read_small(storage: &dyn Storage, key: &str) -> Option<Bytes> {
    storage.get(key, None).await.ok()??.read_all().await.ok()
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Opens an object for reading, or `None` when it is absent.
    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<Object>, StorageError>;
    /// Size of an object, or `None` when it is absent.
    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError>;
    /// Stores a complete, verified local file under `key`, atomically: readers see either nothing
    /// or all of it. The file is consumed (moved or uploaded, then removed).
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError>;
    /// Stores a small object atomically.
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Keys under a directory-like `prefix` (e.g. `nar`), at any depth, with their sizes.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError>;
    /// Aborts uploads begun more than `older_than` ago and never completed (a process killed in
    /// the middle of one), which would otherwise keep their parts — and their cost — forever.
    /// How many were aborted. Storage without such uploads has nothing to do.
    async fn abort_stale_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, StorageError> {
        let _ = older_than;
        Ok(0)
    }
}

/// Keys are relative paths of `[a-z0-9._-]` segments, never `.` or `..`: safe as file names and as
/// S3 keys alike.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok_segment = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
    };
    if key.len() > 512 || !key.split('/').all(ok_segment) {
        return Err(StorageError::Key(key.chars().take(80).collect()));
    }
    Ok(())
}

pub use keys::{nar_key, narinfo_key};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    //! Behaviour every `Storage` must have.
    use futures_util::TryStreamExt;

    use super::*;

    async fn read_all(o: Object) -> Vec<u8> {
        let chunks: Vec<Bytes> = o.body.try_collect().await.expect("read");
        chunks.concat()
    }

    pub async fn run(storage: &dyn Storage, scratch: &Path) {
        assert!(storage
            .get("nar/absent.nar", None)
            .await
            .expect("get")
            .is_none());
        assert_eq!(storage.size("nar/absent.nar").await.expect("size"), None);

        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let src = scratch.join("upload");
        std::fs::write(&src, &data).expect("write");
        storage
            .put_file("nar/x.nar.xz", &src)
            .await
            .expect("put_file");
        assert!(!src.exists(), "put_file consumes its file");
        assert_eq!(
            storage.size("nar/x.nar.xz").await.expect("size"),
            Some(data.len() as u64)
        );

        let o = storage
            .get("nar/x.nar.xz", None)
            .await
            .expect("get")
            .expect("present");
        assert_eq!((o.total, o.range), (100_000, (0, 100_000)));
        assert_eq!(read_all(o).await, data);

        let r = ByteRange::From {
            start: 10,
            end: Some(19),
        };
        let o = storage
            .get("nar/x.nar.xz", Some(r))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(o.range, (10, 20));
        assert_eq!(read_all(o).await, &data[10..20]);
        let o = storage
            .get("nar/x.nar.xz", Some(ByteRange::Suffix(5)))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(read_all(o).await, &data[99_995..]);
        let past = storage
            .get(
                "nar/x.nar.xz",
                Some(ByteRange::From {
                    start: 100_000,
                    end: None,
                }),
            )
            .await;
        assert!(matches!(
            past,
            Err(StorageError::RangeNotSatisfiable { total: 100_000 })
        ));

        storage
            .put_bytes("narinfo/a.narinfo", Bytes::from_static(b"one"))
            .await
            .expect("put");
        storage
            .put_bytes("narinfo/a.narinfo", Bytes::from_static(b"two"))
            .await
            .expect("overwrite");
        let o = storage
            .get("narinfo/a.narinfo", None)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(read_all(o).await, b"two");

        let listed = storage.list("nar").await.expect("list");
        assert_eq!(listed, vec![("nar/x.nar.xz".to_string(), 100_000)]);
        assert!(storage
            .list("inflight")
            .await
            .expect("list of nothing")
            .is_empty());
        storage.delete("narinfo/a.narinfo").await.expect("delete");
        storage
            .delete("narinfo/a.narinfo")
            .await
            .expect("deleting the absent is fine");
        assert!(storage
            .get("narinfo/a.narinfo", None)
            .await
            .expect("get")
            .is_none());

        for bad in [
            "../etc/passwd",
            "nar/../../x",
            "/abs",
            "nar//x",
            "nar/X.nar",
            "nar/%2e%2e",
        ] {
            assert!(
                matches!(storage.get(bad, None).await, Err(StorageError::Key(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ranges_resolve() {
        assert_eq!(
            ByteRange::From {
                start: 0,
                end: None
            }
            .resolve(10),
            Some((0, 10))
        );
        assert_eq!(
            ByteRange::From {
                start: 5,
                end: Some(100)
            }
            .resolve(10),
            Some((5, 10))
        );
        assert_eq!(
            ByteRange::From {
                start: 10,
                end: None
            }
            .resolve(10),
            None
        );
        assert_eq!(
            ByteRange::From {
                start: 5,
                end: Some(4)
            }
            .resolve(10),
            None
        );
        assert_eq!(ByteRange::Suffix(3).resolve(10), Some((7, 10)));
        assert_eq!(ByteRange::Suffix(30).resolve(10), Some((0, 10)));
        assert_eq!(ByteRange::Suffix(0).resolve(10), None);
        assert_eq!(ByteRange::Suffix(1).resolve(0), None);
    }
}
