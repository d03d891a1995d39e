//! NARs in flight across replicas. The replica downloading a NAR publishes it to shared storage in
//! parts as it arrives (`inflight/<file>/<n>`, each `part_size` bytes); a replica whose clients
//! want a NAR that another replica is downloading streams those parts to them as they appear, and
//! the rest from the committed object. So a client on any replica receives bytes steadily while
//! the download runs, however large the NAR, instead of waiting in silence for the commit.
//!
//! Safety: the part holding a NAR's last byte is never published; that byte only ever comes from
//! the committed object, which exists only once the whole file is verified. A client can thus
//! never receive a complete NAR (by Content-Length, or a finished chunked body) that is wrong.
//! Parts are named by position, so a replica that takes over a dead holder's download publishes
//! the same bytes under the same names.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tracing::warn;

use crate::storage::{ByteRange, Storage, StorageError};

/// How often a follower looks for the next part or the committed object.
const POLL: Duration = Duration::from_millis(200);

pub fn part_key(file_name: &str, index: u64) -> String {
    format!("inflight/{file_name}/{index}")
}

/// Publishes the parts of one download, in order, from a background task so the download never
/// waits for storage.
pub struct Publisher {
    part_size: u64,
    published: u64,
    tx: Option<mpsc::UnboundedSender<(u64, Bytes)>>,
    task: Option<tokio::task::JoinHandle<u64>>,
    storage: Arc<dyn Storage>,
    file_name: String,
}

/// A download that ends without `finish` (failed, abandoned) takes its parts with it, once their
/// uploads are done.
impl Drop for Publisher {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        self.tx = None;
        let (storage, file_name, published) = (
            self.storage.clone(),
            std::mem::take(&mut self.file_name),
            self.published,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let uploaded = task.await.unwrap_or(published);
                remove_parts(storage.as_ref(), &file_name, uploaded.max(published)).await;
            });
        }
    }
}

async fn remove_parts(storage: &dyn Storage, file_name: &str, count: u64) {
    for index in 0..count {
        let _ = storage.delete(&part_key(file_name, index)).await;
    }
}

impl Publisher {
    pub fn new(storage: Arc<dyn Storage>, file_name: String, part_size: u64) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Bytes)>();
        let (uploader_storage, uploader_name) = (storage.clone(), file_name.clone());
        let task = tokio::spawn(async move {
            let (storage, file_name) = (uploader_storage, uploader_name);
            let mut uploaded = 0;
            while let Some((index, data)) = rx.recv().await {
                if let Err(e) = storage.put_bytes(&part_key(&file_name, index), data).await {
                    // Followers then wait for the committed object instead.
                    warn!(file = %file_name, part = index, error = %e, "could not publish an in-flight part");
                    continue;
                }
                uploaded = index + 1;
            }
            uploaded
        });
        Self {
            part_size,
            published: 0,
            tx: Some(tx),
            task: Some(task),
            storage,
            file_name,
        }
    }

    /// Called as the download grows: publishes every whole part that is not the last one, reading
    /// it with `read(offset, len)` from the staging file. `length` is the final size when known.
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
                let _ = tx.send((self.published, data));
            }
            self.published += 1;
        }
    }

    /// After the commit: waits for the uploads, then removes the parts (followers now read the
    /// committed object).
    pub async fn finish(mut self) {
        self.tx = None;
        let uploaded = match self.task.take() {
            Some(t) => t.await.unwrap_or(self.published),
            None => self.published,
        };
        remove_parts(
            self.storage.as_ref(),
            &self.file_name,
            uploaded.max(self.published),
        )
        .await;
    }
}

/// The bytes of a NAR that another replica is downloading: its published parts in order, then
/// the rest from the committed object. Fails when nothing new appears for `stall`.
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
        pos: u64,
        next_part: u64,
        progress: Instant,
        tail: Option<BoxStream<'static, io::Result<Bytes>>>,
    }
    let state = State {
        storage,
        key,
        file_name,
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
            // Committed? Then the rest comes from the object itself.
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
                    s.tail = Some(object.body);
                    continue;
                }
                Err(StorageError::RangeNotSatisfiable { .. }) => return Ok(None), // all sent already
                Ok(None) | Err(_) => {}
            }
            let part = s
                .storage
                .get(&part_key(&s.file_name, s.next_part), None)
                .await;
            if let Ok(Some(object)) = part {
                let chunks: Vec<Bytes> = object.body.try_collect().await?;
                let data = Bytes::from(chunks.concat());
                s.pos += data.len() as u64;
                s.next_part += 1;
                s.progress = Instant::now();
                return Ok(Some((data, s)));
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
        let mut publisher = Publisher::new(storage.clone(), name.clone(), 1000);
        let follower = tokio::spawn(
            follow_remote(
                storage.clone(),
                "nar/x.nar.xz".into(),
                name.clone(),
                Duration::from_secs(10),
            )
            .try_collect::<Vec<Bytes>>(),
        );
        let read = |off: u64, len: u64| {
            Ok(Bytes::copy_from_slice(
                &data[off as usize..(off + len) as usize],
            ))
        };
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
                .get(&part_key(&name, 0), None)
                .await
                .expect("get")
                .is_none(),
            "parts removed"
        );
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
