//! Storage in a local directory. Objects are committed by `rename(2)` from a staging directory on
//! the same file system, so a reader sees a file either complete or not at all.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{validate_key, ByteRange, Object, Storage, StorageError};

/// First read of an object, done together with opening it.
const FIRST_READ: u64 = 256 * 1024;
/// Later reads.
const READ_CHUNK: u64 = 1024 * 1024;

pub struct LocalStorage {
    root: PathBuf,
    staging: PathBuf,
}

impl LocalStorage {
    /// Uses `root` for objects and `root/.staging` for partial writes. With `clean`, removes what
    /// an interrupted earlier run left in staging (only the process that owns the directory may).
    pub async fn open(root: impl Into<PathBuf>, clean: bool) -> std::io::Result<Self> {
        let root = root.into();
        let staging = root.join(".staging");
        tokio::fs::create_dir_all(&staging).await?;
        if clean {
            // Anything left in staging is from an interrupted write: never complete, never served.
            let mut dir = tokio::fs::read_dir(&staging).await?;
            while let Some(entry) = dir.next_entry().await? {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(Self { root, staging })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    async fn commit(&self, from: &Path, key: &str) -> Result<(), StorageError> {
        let to = self.path(key)?;
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        match tokio::fs::rename(from, &to).await {
            Ok(()) => Ok(()),
            // Another file system (the source was staged elsewhere): copy into our own staging
            // first so that the final step is still an atomic rename.
            Err(e) if e.raw_os_error() == Some(18) => {
                let staged = self.staging_path();
                tokio::fs::copy(from, &staged).await?;
                tokio::fs::File::open(&staged).await?.sync_all().await?;
                tokio::fs::rename(&staged, &to).await?;
                tokio::fs::remove_file(from).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn staging_path(&self) -> PathBuf {
        self.staging.join(crate::util::unique_name())
    }
}

struct Opened {
    file: std::fs::File,
    total: u64,
    start: u64,
    end: u64,
    first: Bytes,
    /// The whole requested range, mapped (reads longer than the first read).
    mapped: Option<Bytes>,
}

fn open_and_read(path: &Path, range: Option<ByteRange>) -> Result<Option<Opened>, StorageError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let total = file.metadata()?.len();
    let (start, end) = match range {
        None => (0, total),
        Some(r) => r
            .resolve(total)
            .ok_or(StorageError::RangeNotSatisfiable { total })?,
    };
    if end - start > FIRST_READ {
        // Larger reads are served from a map of the file: no copy into a buffer of ours. (A
        // file system that cannot map falls back to reads.)
        if let Ok(map) = super::mapped::map(&file, total) {
            return Ok(Some(Opened {
                file,
                total,
                start,
                end,
                first: Bytes::new(),
                mapped: Some(map.slice(start as usize..end as usize)),
            }));
        }
    }
    let first = read_at(&file, start, (end - start).min(FIRST_READ))?;
    Ok(Some(Opened {
        file,
        total,
        start,
        end,
        first,
        mapped: None,
    }))
}

/// Reads exactly `len` bytes at `offset` (a file that shrank underneath is an error). Reads into
/// uninitialized capacity: zeroing a buffer only to overwrite it costs as much as a copy.
fn read_at(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    reader.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shorter than its size",
        ));
    }
    Ok(Bytes::from(buf))
}

/// The bytes `[from, end)` of `file`, read in large chunks on the blocking pool, one chunk ahead:
/// the next read runs while the previous chunk is being sent.
fn read_rest(
    file: std::fs::File,
    from: u64,
    end: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    type Pending = tokio::task::JoinHandle<std::io::Result<Bytes>>;
    let file = std::sync::Arc::new(file);
    let spawn = move |pos: u64| -> Option<Pending> {
        (pos < end).then(|| {
            let file = file.clone();
            let len = (end - pos).min(READ_CHUNK);
            tokio::task::spawn_blocking(move || read_at(&file, pos, len))
        })
    };
    let first = spawn(from);
    futures_util::stream::try_unfold((first, from), move |(pending, pos)| {
        let spawn = spawn.clone();
        async move {
            let Some(pending) = pending else {
                return Ok(None);
            };
            let chunk = pending.await.map_err(std::io::Error::other)??;
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (spawn(next), next))))
        }
    })
}

#[async_trait]
impl Storage for LocalStorage {
    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<Object>, StorageError> {
        let path = self.path(key)?;
        // Open, size and first read in one trip to the blocking pool: most NARs are small, and
        // each trip costs more than reading a few hundred KiB.
        let opened = tokio::task::spawn_blocking(move || open_and_read(&path, range))
            .await
            .map_err(std::io::Error::other)??;
        let Some(Opened {
            file,
            total,
            start,
            end,
            first,
            mapped,
        }) = opened
        else {
            return Ok(None);
        };
        if let Some(mapped) = mapped {
            // Handed to the server in read-sized slices of the map, none of them a copy.
            let step = READ_CHUNK as usize;
            let chunks: Vec<std::io::Result<Bytes>> = (0..mapped.len())
                .step_by(step)
                .map(|at| Ok(mapped.slice(at..(at + step).min(mapped.len()))))
                .collect();
            return Ok(Some(Object {
                total,
                range: (start, end),
                body: futures_util::stream::iter(chunks).boxed(),
            }));
        }
        let first_len = first.len() as u64;
        let head = futures_util::stream::once(async move { Ok(first) });
        let body = if start + first_len >= end {
            head.boxed()
        } else {
            head.chain(read_rest(file, start + first_len, end)).boxed()
        };
        Ok(Some(Object {
            total,
            range: (start, end),
            body,
        }))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        self.commit(file, key).await
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        validate_key(key)?;
        let staged = self.staging_path();
        let mut f = tokio::fs::File::create(&staged).await?;
        f.write_all(&data).await?;
        f.sync_all().await?;
        drop(f);
        let result = self.commit(&staged, key).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&staged).await;
        }
        result
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut dirs = vec![prefix.to_string()];
        while let Some(dir) = dirs.pop() {
            let mut entries = match tokio::fs::read_dir(self.path(&dir)?).await {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            while let Some(entry) = entries.next_entry().await? {
                let key = format!("{dir}/{}", entry.file_name().to_string_lossy());
                let meta = entry.metadata().await?;
                if meta.is_dir() {
                    dirs.push(key);
                } else if meta.is_file() {
                    out.push((key, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path().join("store"), true)
            .await
            .expect("open");
        super::super::conformance::run(&storage, dir.path()).await;
    }

    #[tokio::test]
    async fn large_reads_come_from_a_map_that_outlives_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path().join("store"), true)
            .await
            .expect("open");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        storage
            .put_bytes("nar/big.nar.xz", Bytes::from(data.clone()))
            .await
            .expect("put");
        let collect = |o: Object| async move {
            let mut out = Vec::new();
            let mut body = o.body;
            let mut chunks = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("chunk");
                assert!(chunk.len() as u64 <= READ_CHUNK, "read-sized slices");
                out.extend_from_slice(&chunk);
                chunks += 1;
            }
            (out, chunks)
        };
        let whole = storage
            .get("nar/big.nar.xz", None)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(whole.total, 3_000_000);
        let (bytes, chunks) = collect(whole).await;
        assert!(bytes == data, "every byte, in order");
        assert_eq!(chunks, 3);
        // A range across slice boundaries.
        let part = storage
            .get(
                "nar/big.nar.xz",
                Some(ByteRange::From {
                    start: 1_000_000,
                    end: Some(2_499_999),
                }),
            )
            .await
            .expect("get")
            .expect("present");
        assert_eq!(part.range, (1_000_000, 2_500_000));
        // Deleted (GC, eviction) while a response is under way: the mapped bytes stay readable.
        storage.delete("nar/big.nar.xz").await.expect("delete");
        let (bytes, _) = collect(part).await;
        assert!(bytes == data[1_000_000..2_500_000]);
        assert!(storage
            .get("nar/big.nar.xz", None)
            .await
            .expect("get")
            .is_none());
    }

    #[tokio::test]
    async fn staging_is_emptied_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".staging")).expect("mkdir");
        std::fs::write(dir.path().join(".staging/partial"), b"half").expect("write");
        let _storage = LocalStorage::open(dir.path(), true).await.expect("open");
        assert!(!dir.path().join(".staging/partial").exists());
    }
}
