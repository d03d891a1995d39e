//! NARs in flight across replicas. The replica downloading a NAR publishes it to shared storage in
//! parts as it arrives (`inflight/<file>/<attempt>/<n>`, each `part_size` bytes); a replica whose clients
//! want a NAR that another replica is downloading streams those parts to them as they appear, and
//! the rest from the committed object. So a client on any replica receives bytes steadily while
//! the download runs, however large the NAR, instead of waiting in silence for the commit.
//!
//! Safety:
//! - The part holding a NAR's last byte is never published; that byte only ever comes from the
//!   committed object, which exists only once the whole file is verified. A client can thus never
//!   receive a complete NAR (by Content-Length, or a finished chunked body) that is wrong.
//! - Parts are named by attempt (`inflight/<file>/<attempt>/<n>`), and `inflight/<file>/attempt`
//!   names the current one. An attempt writes that manifest before it publishes anything or
//!   commits, and one that fails removes its parts and the manifest while it still holds the
//!   NAR's lock. A follower keeps to the attempt it began with: when the manifest names another
//!   attempt (or none), it ends its stream with an error rather than continue with another
//!   attempt's bytes, and it takes the rest from the committed object only while the manifest
//!   still names its attempt. So no client receives one attempt's prefix stitched to another's
//!   suffix: a complete-looking body of exactly the right length with the wrong bytes.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tracing::warn;

use crate::storage::keys::{inflight_manifest_key as manifest_key, inflight_part_key as part_key};
use crate::storage::{ByteRange, Storage, StorageError};

/// How often a follower looks for the next part or the committed object.
const POLL: Duration = Duration::from_millis(200);
/// Parts waiting to be uploaded: beyond this, the download waits for storage.
const QUEUED_PARTS: usize = 2;

/// The attempt the manifest names, if any.
async fn current_attempt(storage: &dyn Storage, file_name: &str) -> Option<String> {
    let manifest = crate::storage::read_small(storage, &manifest_key(file_name)).await?;
    String::from_utf8(manifest.to_vec())
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Publishes the parts of one download attempt, in order, from a background task; at most
/// [`QUEUED_PARTS`] wait for storage, then the download waits too (memory stays bounded).
pub struct Publisher {
    part_size: u64,
    published: u64,
    attempt: String,
    tx: Option<mpsc::Sender<(u64, Bytes)>>,
    task: Option<tokio::task::JoinHandle<u64>>,
    storage: Arc<dyn Storage>,
    file_name: String,
}

/// A download that ends without `finish` or `abandon` takes its parts with it, once their
/// uploads are done. (The manifest stays: GC's sweep removes it with the parts of downloads
/// whose lock nobody holds.)
impl Drop for Publisher {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        self.tx = None;
        let (storage, file_name, attempt, published) = (
            self.storage.clone(),
            std::mem::take(&mut self.file_name),
            std::mem::take(&mut self.attempt),
            self.published,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let uploaded = task.await.unwrap_or(published);
                remove_parts(
                    storage.as_ref(),
                    &file_name,
                    &attempt,
                    uploaded.max(published),
                )
                .await;
            });
        }
    }
}

async fn remove_parts(storage: &dyn Storage, file_name: &str, attempt: &str, count: u64) {
    for index in 0..count {
        let _ = storage.delete(&part_key(file_name, attempt, index)).await;
    }
}

impl Publisher {
    /// Starts an attempt: writes the manifest naming it (before anything of it is published or
    /// committed; a download that cannot write it must not go on).
    pub async fn start(
        storage: Arc<dyn Storage>,
        file_name: String,
        part_size: u64,
    ) -> Result<Self, StorageError> {
        let attempt = crate::util::random_hex::<16>();
        storage
            .put_bytes(&manifest_key(&file_name), Bytes::from(attempt.clone()))
            .await?;
        let (tx, mut rx) = mpsc::channel::<(u64, Bytes)>(QUEUED_PARTS);
        let (uploader_storage, uploader_name, uploader_attempt) =
            (storage.clone(), file_name.clone(), attempt.clone());
        let task = tokio::spawn(async move {
            let (storage, file_name, attempt) = (uploader_storage, uploader_name, uploader_attempt);
            let mut uploaded = 0;
            while let Some((index, data)) = rx.recv().await {
                let key = part_key(&file_name, &attempt, index);
                if let Err(e) = storage.put_bytes(&key, data).await {
                    // Followers then wait for the committed object instead.
                    warn!(file = %file_name, part = index, error = %e, "could not publish an in-flight part");
                    continue;
                }
                uploaded = index + 1;
            }
            uploaded
        });
        Ok(Self {
            part_size,
            published: 0,
            attempt,
            tx: Some(tx),
            task: Some(task),
            storage,
            file_name,
        })
    }

    /// Called as the download grows: publishes every whole part that is not the last one, reading
    /// it with `read(offset, len)` from the staging file. `length` is the final size when known.
    /// Waits while [`QUEUED_PARTS`] parts are still being uploaded.
    pub async fn advance<F>(&mut self, written: u64, length: Option<u64>, read: F) -> io::Result<()>
    where
        F: Fn(u64, u64) -> io::Result<Bytes>,
    {
        loop {
            let end = (self.published + 1) * self.part_size;
            // The part is whole, and at least one more byte follows it (so it is not the last).
            let more_follows = match length {
                Some(l) => end < l,
                None => end < written,
            };
            if end > written || !more_follows {
                return Ok(());
            }
            let data = read(self.published * self.part_size, self.part_size)?;
            if let Some(tx) = &self.tx {
                let _ = tx.send((self.published, data)).await;
            }
            self.published += 1;
        }
    }

    /// Waits for the uploads of the parts sent so far; the number uploaded.
    async fn drain(&mut self) -> u64 {
        self.tx = None;
        match self.task.take() {
            Some(t) => t.await.unwrap_or(self.published),
            None => self.published,
        }
    }

    /// After the commit: waits for the uploads, then removes the parts (followers now read the
    /// committed object). The manifest stays, so that followers of this attempt know the
    /// committed object is its continuation.
    pub async fn finish(mut self) {
        let uploaded = self.drain().await;
        remove_parts(
            self.storage.as_ref(),
            &self.file_name,
            &self.attempt,
            uploaded.max(self.published),
        )
        .await;
    }

    /// After a failure, while the NAR's lock is still held: removes the parts and the manifest,
    /// so that followers of this attempt stop instead of waiting for a continuation.
    pub async fn abandon(mut self) {
        let uploaded = self.drain().await;
        let _ = self.storage.delete(&manifest_key(&self.file_name)).await;
        remove_parts(
            self.storage.as_ref(),
            &self.file_name,
            &self.attempt,
            uploaded.max(self.published),
        )
        .await;
    }
}

/// The bytes of a NAR that another replica is downloading: the published parts of one attempt in
/// order, then the rest from the committed object. Fails when nothing new appears for `stall`, or
/// when the attempt it follows is abandoned or replaced by another.
pub fn follow_remote(
    storage: Arc<dyn Storage>,
    key: String,
    file_name: String,
    stall: Duration,
) -> BoxStream<'static, io::Result<Bytes>> {
    struct State {
        storage: Arc<dyn Storage>,
        key: String,
        file_name: String,
        /// The attempt followed, once known.
        attempt: Option<String>,
        pos: u64,
        next_part: u64,
        progress: Instant,
        tail: Option<BoxStream<'static, io::Result<Bytes>>>,
    }
    let state = State {
        storage,
        key,
        file_name,
        attempt: None,
        pos: 0,
        next_part: 0,
        progress: Instant::now(),
        tail: None,
    };
    stream::try_unfold(state, move |mut s| async move {
        loop {
            if let Some(tail) = &mut s.tail {
                return match tail.next().await {
                    Some(chunk) => Ok(Some((chunk?, s))),
                    None => Ok(None),
                };
            }
            let current = current_attempt(s.storage.as_ref(), &s.file_name).await;
            if s.pos == 0 {
                // Nothing sent yet: follow whichever attempt is current.
                s.attempt = current.clone();
            } else if current != s.attempt {
                return Err(io::Error::other(
                    "the download this client followed on another replica was abandoned",
                ));
            }
            if let Some(attempt) = &s.attempt {
                let part = s
                    .storage
                    .get(&part_key(&s.file_name, attempt, s.next_part), None)
                    .await;
                if let Ok(Some(object)) = part {
                    let data = object.read_all().await?;
                    s.pos += data.len() as u64;
                    s.next_part += 1;
                    s.progress = Instant::now();
                    return Ok(Some((data, s)));
                }
            }
            // Committed? Then the rest comes from the object itself — its continuation, since
            // the manifest (read before) still named this attempt.
            match s
                .storage
                .get(
                    &s.key,
                    Some(ByteRange::From {
                        start: s.pos,
                        end: None,
                    }),
                )
                .await
            {
                Ok(Some(object)) => {
                    if s.pos > 0
                        && current_attempt(s.storage.as_ref(), &s.file_name).await != s.attempt
                    {
                        return Err(io::Error::other(
                            "the NAR was committed by another download than the one followed",
                        ));
                    }
                    s.tail = Some(object.body);
                    continue;
                }
                Err(StorageError::RangeNotSatisfiable { .. }) => return Ok(None), // all sent already
                Ok(None) | Err(_) => {}
            }
            if s.progress.elapsed() > stall {
                return Err(io::Error::other("the download on another replica stopped"));
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .into_stream()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    /// What `advance` reads parts with, over bytes in memory.
    fn reader(data: &[u8]) -> impl Fn(u64, u64) -> io::Result<Bytes> + Copy + '_ {
        move |off, len| {
            Ok(Bytes::copy_from_slice(
                &data[off as usize..(off + len) as usize],
            ))
        }
    }

    #[tokio::test]
    async fn followers_get_parts_then_the_committed_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(
            LocalStorage::open(dir.path().join("s"), true)
                .await
                .expect("open"),
        );
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let name = "x.nar.xz".to_string();
        let mut publisher = Publisher::start(storage.clone(), name.clone(), 1000)
            .await
            .expect("start");
        let attempt = publisher.attempt.clone();
        let follower = tokio::spawn(
            follow_remote(
                storage.clone(),
                "nar/x.nar.xz".into(),
                name.clone(),
                Duration::from_secs(10),
            )
            .try_collect::<Vec<Bytes>>(),
        );
        let read = reader(&data);
        for written in [500, 2500, 9999, 10_000] {
            publisher
                .advance(written, Some(10_000), read)
                .await
                .expect("advance");
        }
        // Never the part with the last byte: 9 parts of 1000, the tenth holds byte 9999.
        assert_eq!(publisher.published, 9);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let file = dir.path().join("staged");
        std::fs::write(&file, &data).expect("write");
        storage
            .put_file("nar/x.nar.xz", &file)
            .await
            .expect("commit");
        publisher.finish().await;
        let got = follower.await.expect("join").expect("stream");
        assert!(got.concat() == data);
        assert!(
            storage
                .get(&part_key(&name, &attempt, 0), None)
                .await
                .expect("get")
                .is_none(),
            "parts removed"
        );
    }

    #[tokio::test]
    async fn a_follower_never_stitches_two_attempts_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(
            LocalStorage::open(dir.path().join("s"), true)
                .await
                .expect("open"),
        );
        let good: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut bad = good.clone();
        bad[1500] ^= 0xff;
        let name = "z.nar.xz".to_string();
        let follower = tokio::spawn(
            follow_remote(
                storage.clone(),
                "nar/z.nar.xz".into(),
                name.clone(),
                Duration::from_secs(10),
            )
            .try_collect::<Vec<Bytes>>(),
        );
        // Attempt A publishes a corrupt prefix, then fails verification and is abandoned.
        let mut a = Publisher::start(storage.clone(), name.clone(), 1000)
            .await
            .expect("start");
        let read_bad = reader(&bad);
        a.advance(5000, Some(10_000), read_bad)
            .await
            .expect("advance");
        tokio::time::sleep(Duration::from_millis(700)).await;
        a.abandon().await;
        // Attempt B publishes the right bytes under the same positions and commits.
        let mut b = Publisher::start(storage.clone(), name.clone(), 1000)
            .await
            .expect("start");
        let read_good = reader(&good);
        b.advance(10_000, Some(10_000), read_good)
            .await
            .expect("advance");
        let file = dir.path().join("staged");
        std::fs::write(&file, &good).expect("write");
        storage
            .put_file("nar/z.nar.xz", &file)
            .await
            .expect("commit");
        b.finish().await;
        match follower.await.expect("join") {
            Err(_) => {}
            Ok(chunks) => {
                let got = chunks.concat();
                assert!(
                    got == good,
                    "a stitched body of {} bytes was served",
                    got.len()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_remote_download_fails_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(dir.path(), true).await.expect("open"));
        let r = follow_remote(
            storage,
            "nar/y.nar".into(),
            "y.nar".into(),
            Duration::from_millis(300),
        )
        .try_collect::<Vec<Bytes>>()
        .await;
        assert!(r.is_err());
    }
}
