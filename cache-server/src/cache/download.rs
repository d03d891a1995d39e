//! The download of a missing NAR: one per process, fetched from its upstream into a staging file
//! while it is verified, committed to storage only when every check passes, and followed by every
//! client that asks for it meanwhile (`follow`). Across replicas, the NAR's lock makes one of them
//! the downloader; the others follow the parts it publishes (`inflight`).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::Url;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use super::verify::Verifier;
use super::{Backend, Cache};
use crate::db::NarInfoRecord;
use crate::lock::Keeper;
use crate::nix::{NarFile, NarInfo};
use crate::storage::{nar_key, StorageError};
use crate::upstream::{upstream_error_kind, UpstreamError};
use crate::util::{unique_name, unix_now};

const FOLLOW_CHUNK: usize = 256 * 1024;

/// Where a download stands; followers watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the lock or the upstream's headers.
    Starting,
    /// `written` bytes are in the staging file; `length` is the final size when known.
    Streaming { written: u64, length: Option<u64> },
    /// Verified and committed; the staging file holds all `size` bytes.
    Complete { size: u64 },
    /// Someone else committed it before this download began: read it from storage.
    Stored,
    /// Another replica holds the download: follow its published parts.
    Elsewhere,
    /// Abandoned; nothing was committed.
    Failed,
}

pub(super) struct Download {
    pub(super) phase: watch::Sender<Phase>,
    /// The file size when the narinfo vouches for it (FileSize with FileHash).
    pub(super) length_hint: Option<u64>,
    /// The staging file, open for reading, set before the first `Streaming`.
    reader: OnceLock<Arc<std::fs::File>>,
}

#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream no longer has it")]
    Gone,
    #[error("upstream stalled for {0:?}")]
    Stalled(std::time::Duration),
    #[error("upstream Content-Length {got} is not FileSize {want}")]
    Length { got: u64, want: u64 },
    #[error("verification failed: {0}")]
    Verify(#[from] super::verify::VerifyError),
    #[error("stored narinfo unusable: {0}")]
    Record(String),
    #[error("staging: {0}")]
    Staging(#[from] io::Error),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("lock: {0}")]
    Lock(#[from] crate::lock::LockError),
    #[error("no download slot within {0:?} (--max-downloads are all busy)")]
    Queue(Duration),
    #[error("staging has {free} bytes free; this download needs {needed} and --staging-min-free keeps {floor}")]
    NoSpace { free: u64, needed: u64, floor: u64 },
}

impl DownloadError {
    /// The bytes were there and wrong: remembered for `nar_failure_ttl`, so that clients asking
    /// again at once do not each start another download of a bad NAR.
    fn is_verification(&self) -> bool {
        matches!(self, Self::Verify(_) | Self::Length { .. })
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::Verify(_) | Self::Length { .. } => "verify_failed",
            Self::Queue(_) => "queue_timeout",
            Self::NoSpace { .. } => "no_space",
            _ => "failed",
        }
    }
}

/// How often, in bytes written, a download checks the staging directory's free space.
const SPACE_CHECK_EVERY: u64 = 64 << 20;

/// What a NAR miss needs from its narinfo record, parsed once: the narinfo to verify against,
/// the NAR's URL at the upstream that served it, and that upstream's client (`None` when no
/// configured upstream serves the URL any more: then nothing is fetched).
struct MissPlan {
    info: NarInfo,
    url: Url,
    upstream: Option<Arc<crate::upstream::Upstream>>,
}

/// Free bytes for unprivileged use on the file system of `dir`.
fn free_space(dir: &std::path::Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Removes the staging file unless disarmed.
pub(super) struct Staged(pub(super) Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Cache {
    /// The download of `file` in progress in this process, or a new one, or `None` when no
    /// narinfo names this NAR.
    pub(super) async fn download(self: &Arc<Self>, file: &NarFile) -> Option<Arc<Download>> {
        let name = file.file_name();
        if let Some(d) = self
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Some(d.clone());
        }
        let record = match self.db.narinfo_for_nar(&name).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                self.backend_failed(
                    Backend::Database,
                    &name,
                    &e,
                    "database unavailable; answering 404",
                );
                return None;
            }
        };
        let plan = self.plan(&record);
        let download = {
            let mut downloads = self.downloads.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = downloads.get(&name) {
                return Some(d.clone());
            }
            let length_hint = plan
                .as_ref()
                .ok()
                .and_then(|p| p.info.file_hash.and(p.info.file_size));
            let d = Arc::new(Download {
                phase: watch::Sender::new(Phase::Starting),
                length_hint,
                reader: OnceLock::new(),
            });
            downloads.insert(name.clone(), d.clone());
            d
        };
        // Its span is made here, a child of the request that started it; it runs on whether or
        // not that client stays.
        let span = info_span!("nar_download", file = %file);
        tokio::spawn(
            self.clone()
                .run_download(*file, download.clone(), plan)
                .instrument(span),
        );
        Some(download)
    }

    async fn run_download(
        self: Arc<Self>,
        file: NarFile,
        download: Arc<Download>,
        plan: Result<MissPlan, String>,
    ) {
        let started = Instant::now();
        self.metrics.downloads_in_flight.inc();
        let label = plan
            .as_ref()
            .ok()
            .and_then(|p| p.upstream.as_ref())
            .map_or("unknown", |u| u.label())
            .to_string();
        let result = match self.download_slot().await {
            Ok(_slot) => self.fetch(&file, &download, &plan).await,
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(Phase::Stored) => "already_stored",
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics
            .nar_downloads
            .with_label_values(&[outcome])
            .inc();
        match result {
            Ok(phase) => {
                if let Phase::Complete { size } = phase {
                    info!(
                        size,
                        seconds = started.elapsed().as_secs_f64(),
                        "NAR cached"
                    );
                }
                download.phase.send_replace(phase);
            }
            Err(e) => {
                if let DownloadError::Upstream(u) = &e {
                    self.metrics
                        .upstream_errors
                        .with_label_values(&[label.as_str(), upstream_error_kind(u)])
                        .inc();
                }
                if e.is_verification() {
                    self.failed_nars.insert(file.file_name(), ());
                }
                warn!(error = %e, "NAR download failed; nothing stored");
                download.phase.send_replace(Phase::Failed);
            }
        }
        self.finish_download(&file.file_name(), &download);
        self.metrics.downloads_in_flight.dec();
    }

    /// One of the `max_downloads` slots, waiting up to `download_queue_timeout` for it.
    async fn download_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, DownloadError> {
        let wait = self.settings.downloads.queue_timeout;
        self.metrics.downloads_queued.inc();
        let slot = tokio::time::timeout(wait, self.download_slots.clone().acquire_owned()).await;
        self.metrics.downloads_queued.dec();
        match slot {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(DownloadError::Queue(wait)),
        }
    }

    /// Whether the staging directory can take `needed` more bytes and keep its floor.
    fn check_space(&self, needed: u64) -> Result<(), DownloadError> {
        let floor = self.settings.downloads.staging_min_free;
        let free = free_space(&self.settings.staging_dir)?;
        if free < floor.saturating_add(needed) {
            return Err(DownloadError::NoSpace {
                free,
                needed,
                floor,
            });
        }
        Ok(())
    }

    async fn fetch(
        &self,
        file: &NarFile,
        download: &Download,
        plan: &Result<MissPlan, String>,
    ) -> Result<Phase, DownloadError> {
        let key = nar_key(file);
        // Across replicas, the lock makes one of them the downloader. The others serve their
        // clients from its published parts meanwhile, and take over if it dies.
        let lock_name = crate::lock::LockName::Nar(file);
        let ttl = self.settings.lock_ttl;
        // The lock, or `None` when another replica stored the NAR meanwhile.
        let locked = async {
            let mut guard = self.acquire(lock_name, ttl, Duration::ZERO).await?;
            if guard.is_none() {
                download.phase.send_replace(Phase::Elsewhere);
            }
            let guard = loop {
                if let Some(g) = guard {
                    break g;
                }
                if self.storage.size(&key).await?.is_some() {
                    return Ok(None);
                }
                guard = self.acquire(lock_name, ttl, ttl).await?;
            };
            if self.storage.size(&key).await?.is_some() {
                return Ok(None);
            }
            Ok::<_, DownloadError>(Some(guard))
        }
        .instrument(info_span!("lock_wait"))
        .await?;
        let Some(guard) = locked else {
            return Ok(Phase::Stored);
        };
        // Keep the lock while the download runs, pauses and lock-service blips included; once
        // it is lost, the download stops before committing anything.
        let guard = Arc::new(guard);
        let keeper = Keeper::spawn(
            guard.clone(),
            lock_name,
            ttl,
            self.metrics.lock_extensions.clone(),
        );

        let MissPlan {
            info,
            url,
            upstream,
        } = plan
            .as_ref()
            .map_err(|e| DownloadError::Record(e.clone()))?;
        let mut verifier = Verifier::new(info)?;
        let Some(upstream) = upstream else {
            self.metrics
                .refused
                .with_label_values(&["upstream", "nar_url"])
                .inc();
            return Err(DownloadError::Record(format!(
                "no configured upstream serves {}",
                crate::upstream::cache::redact(url)
            )));
        };
        // Room for the file (when its size is vouched for) before anything is asked upstream.
        let expected = verifier.expected_file_size();
        self.check_space(expected.unwrap_or(0))?;
        let fetching = info_span!("upstream_fetch", upstream = upstream.label());
        let mut response = upstream
            .nar(url)
            .instrument(fetching.clone())
            .await?
            .ok_or(DownloadError::Gone)?;
        if let (Some(got), Some(want)) = (response.length, expected) {
            if got != want {
                return Err(DownloadError::Length { got, want });
            }
        }
        let length = expected.or(response.length);
        if expected.is_none() {
            self.check_space(length.unwrap_or(0))?;
        }

        let path = self.settings.staging_dir.join(unique_name());
        let mut staged = Staged(Some(path.clone()));
        let mut out = tokio::fs::File::create(&path).await?;
        let reader = Arc::new(std::fs::File::open(&path)?);
        let _ = download.reader.set(reader.clone());
        let mut publisher = match self.settings.inflight_part_size() {
            Some(size) => Some(
                super::inflight::Publisher::start(self.storage.clone(), file.file_name(), size)
                    .await?,
            ),
            None => None,
        };
        download
            .phase
            .send_replace(Phase::Streaming { written: 0, length });

        let transferred = async {
            let mut written = 0u64;
            // Each chunk is checked as it arrives (the hashes are updated); `verify` is the
            // final check of sizes and hashes.
            async {
                loop {
                    let next =
                        tokio::time::timeout(self.settings.upstreams.stall, response.body.next())
                            .await;
                    let chunk = match next {
                        Err(_) => {
                            return Err(DownloadError::Stalled(self.settings.upstreams.stall))
                        }
                        Ok(None) => break,
                        Ok(Some(chunk)) => chunk?,
                    };
                    keeper.check()?;
                    self.metrics
                        .upstream_bytes
                        .with_label_values(&[upstream.label()])
                        .inc_by(chunk.len() as u64);
                    verifier.update(&chunk).await?;
                    out.write_all(&chunk).await?;
                    // Followers read the file directly: the bytes must be in it before they are
                    // announced.
                    out.flush().await?;
                    let before = written;
                    written += chunk.len() as u64;
                    if written / SPACE_CHECK_EVERY != before / SPACE_CHECK_EVERY {
                        self.check_space(0)?;
                    }
                    download
                        .phase
                        .send_replace(Phase::Streaming { written, length });
                    if let Some(p) = &mut publisher {
                        p.advance(written, length, |offset, len| {
                            read_exact_at(&reader, offset, len)
                        })
                        .await?;
                    }
                }
                Ok::<_, DownloadError>(())
            }
            .instrument(fetching)
            .await?;
            let size = async {
                let size = verifier.finish().await?;
                out.sync_all().await?;
                Ok::<_, DownloadError>(size)
            }
            .instrument(info_span!("verify"))
            .await?;
            drop(out);
            async {
                // A holder whose lock expired (and may have passed to another replica) must not
                // commit.
                keeper.confirm().await?;
                // The verified file goes into the tier too, once storage has it.
                let local = match &self.tier {
                    Some(tier) => tier.stage(&path).await,
                    None => None,
                };
                self.storage.put_file(&key, &path).await?;
                if let (Some(tier), Some(local)) = (&self.tier, local) {
                    tier.commit_staged(&key, local).await;
                    tier.mark_fresh(&key);
                }
                Ok::<_, DownloadError>(())
            }
            .instrument(info_span!("commit", size))
            .await?;
            Ok(size)
        }
        .await;
        let size = match transferred {
            Ok(size) => size,
            Err(e) => {
                // Still under the lock: this attempt's followers are told before another begins.
                if let Some(p) = publisher {
                    p.abandon().await;
                }
                return Err(e);
            }
        };
        staged.0 = None;
        if let Some(p) = publisher {
            p.finish().await;
        }
        let recorded = self.db.put_nar(&file.file_name(), size, unix_now()).await;
        if recorded.is_ok() {
            self.count_stored(1, size);
        }
        if let Err(e) = recorded {
            // The NAR is committed and valid; only its bookkeeping row is missing.
            self.backend_failed(Backend::Database, &file, &e, "could not record stored NAR");
        }
        drop(keeper);
        drop(guard);
        Ok(Phase::Complete { size })
    }

    /// A miss's plan, from its narinfo record: parsed once, here.
    fn plan(&self, record: &NarInfoRecord) -> Result<MissPlan, String> {
        let info = NarInfo::parse(&record.narinfo).map_err(|e| e.to_string())?;
        let url = Url::parse(&record.upstream_nar_url).map_err(|e| e.to_string())?;
        let upstream = self.upstream_for(&url);
        Ok(MissPlan {
            info,
            url,
            upstream,
        })
    }

    /// The upstream a NAR URL is under, whose client fetches it; `None` when no configured
    /// upstream serves it (its narinfo came from an upstream since removed): then nothing is
    /// fetched, since no other upstream vouched for that URL.
    fn upstream_for(&self, url: &Url) -> Option<Arc<crate::upstream::Upstream>> {
        self.upstreams.all().iter().find(|u| u.serves(url)).cloned()
    }
}

fn read_exact_at(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

/// The bytes of a download as they land in its staging file, ending when it is complete, failing
/// if it fails.
pub(super) fn follow(
    download: Arc<Download>,
    rx: watch::Receiver<Phase>,
) -> BoxStream<'static, io::Result<Bytes>> {
    struct State {
        download: Arc<Download>,
        rx: watch::Receiver<Phase>,
        pos: u64,
    }
    let state = State {
        download,
        rx,
        pos: 0,
    };
    stream::try_unfold(state, |mut s| async move {
        loop {
            let phase = *s.rx.borrow_and_update();
            let (available, complete) = match phase {
                // Until the download is verified, the last byte is held back: a client must never
                // receive a whole NAR (by Content-Length) that later turns out to be wrong.
                Phase::Streaming {
                    written,
                    length: Some(length),
                } => (written.min(length.saturating_sub(1)), false),
                Phase::Streaming {
                    written,
                    length: None,
                } => (written, false),
                Phase::Complete { size } => (size, true),
                Phase::Failed => return Err(io::Error::other("upstream download failed")),
                Phase::Starting | Phase::Stored | Phase::Elsewhere => (0, false),
            };
            if s.pos < available {
                let Some(file) = s.download.reader.get().cloned() else {
                    return Err(io::Error::other("staging file missing"));
                };
                let (pos, len) = (s.pos, ((available - s.pos) as usize).min(FOLLOW_CHUNK));
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    let n = file.read_at(&mut buf, pos)?;
                    buf.truncate(n);
                    Ok::<_, io::Error>(buf)
                })
                .await
                .map_err(io::Error::other)??;
                if chunk.is_empty() {
                    return Err(io::Error::other("staging file shorter than announced"));
                }
                s.pos += chunk.len() as u64;
                return Ok(Some((Bytes::from(chunk), s)));
            }
            if complete {
                return Ok(None);
            }
            if s.rx.changed().await.is_err() {
                return Err(io::Error::other("download abandoned"));
            }
        }
    })
    .into_stream()
    .boxed()
}
