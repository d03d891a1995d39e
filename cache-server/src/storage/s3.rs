//! Storage in an S3 bucket (AWS, SeaweedFS, Garage, Ceph, MinIO) through `object_store`.
//! Uploads are multipart from the verified staging file, in constant memory; an object becomes
//! visible only when its upload completes, and a failed upload is aborted.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncReadExt;

use super::{validate_key, ByteRange, Object, Storage, StorageError};

/// Multipart part size: above S3's 5 MiB minimum, small enough to stay in constant memory.
pub const PART_SIZE: usize = 8 << 20;

pub use nixcache_settings::config::S3Config;

pub struct S3Storage {
    store: Arc<AmazonS3>,
    prefix: String,
}

/// A page of S3's ListMultipartUploads answer, as far as it is read here.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct MultipartUploads {
    #[serde(rename = "Upload")]
    uploads: Vec<PendingUpload>,
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PendingUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

/// Pages of pending uploads read per cleanup (1000 uploads each).
const MAX_UPLOAD_PAGES: usize = 20;

/// `GET`, as object_store's signer spells it.
fn http_method_get() -> http::Method {
    http::Method::GET
}

fn io(e: object_store::Error) -> StorageError {
    StorageError::Io(std::io::Error::other(e.to_string()))
}

impl S3Storage {
    pub fn new(config: &S3Config) -> Result<Self, StorageError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(io)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.trim_matches('/').to_string(),
        })
    }

    /// Storage over a client built elsewhere (with credentials of its own, where [`Self::new`]
    /// takes them from the environment), under `prefix`.
    pub fn with_store(store: AmazonS3, prefix: &str) -> Self {
        Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    fn path(&self, key: &str) -> Result<ObjectPath, StorageError> {
        validate_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(full).map_err(|e| StorageError::Key(e.to_string()))
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn get(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<Object>, StorageError> {
        let path = self.path(key)?;
        let options = match range {
            None => GetOptions::default(),
            Some(r) => {
                // Resolve against the size first: a range past the end is a 416 here, not an error.
                let total = match self.store.head(&path).await {
                    Ok(meta) => meta.size,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(io(e)),
                };
                let (start, end) = r
                    .resolve(total)
                    .ok_or(StorageError::RangeNotSatisfiable { total })?;
                GetOptions {
                    range: Some(GetRange::Bounded(start..end)),
                    ..Default::default()
                }
            }
        };
        match self.store.get_opts(&path, options).await {
            Ok(result) => {
                let total = result.meta.size;
                let range = (result.range.start, result.range.end);
                let body = result
                    .into_stream()
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .boxed();
                Ok(Some(Object { total, range, body }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let mut f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        if len <= PART_SIZE as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).await?;
            self.store
                .put(&path, PutPayload::from(buf))
                .await
                .map_err(io)?;
        } else {
            let mut upload = self.store.put_multipart(&path).await.map_err(io)?;
            let sent = async {
                loop {
                    let mut part = Vec::with_capacity(PART_SIZE);
                    (&mut f)
                        .take(PART_SIZE as u64)
                        .read_to_end(&mut part)
                        .await?;
                    if part.is_empty() {
                        break;
                    }
                    upload.put_part(PutPayload::from(part)).await.map_err(io)?;
                }
                upload.complete().await.map_err(io)?;
                Ok::<(), StorageError>(())
            }
            .await;
            if let Err(e) = sent {
                // Nothing becomes visible; the parts already sent are discarded.
                let _ = upload.abort().await;
                return Err(e);
            }
        }
        tokio::fs::remove_file(file).await?;
        Ok(())
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&self.path(key)?, PutPayload::from(data))
            .await
            .map_err(io)?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let dir = self.path(prefix)?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out: Vec<(String, u64)> = self
            .store
            .list(Some(&dir))
            .map_ok(|meta| {
                (
                    meta.location
                        .as_ref()
                        .trim_start_matches(strip.as_str())
                        .to_string(),
                    meta.size,
                )
            })
            .try_collect()
            .await
            .map_err(io)?;
        out.sort();
        Ok(out)
    }

    async fn abort_stale_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, StorageError> {
        // object_store creates, completes and aborts multipart uploads but does not list them:
        // ListMultipartUploads is one GET on the bucket, signed by the same store's credentials.
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let client = reqwest::Client::new();
        let mut markers: Option<(String, String)> = None;
        let mut aborted = 0;
        for _ in 0..MAX_UPLOAD_PAGES {
            let mut query = vec![
                ("uploads".to_string(), String::new()),
                ("prefix".to_string(), prefix.clone()),
            ];
            if let Some((key, id)) = &markers {
                query.push(("key-marker".to_string(), key.clone()));
                query.push(("upload-id-marker".to_string(), id.clone()));
            }
            let url = self
                .store
                .signed_url_opts(
                    http_method_get(),
                    &ObjectPath::default(),
                    std::time::Duration::from_secs(300),
                    &SignedUrlOptions::default().with_query(query),
                )
                .await
                .map_err(io)?;
            let resp = client
                .get(url)
                .send()
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e.without_url())))?;
            if !resp.status().is_success() {
                return Err(StorageError::Io(std::io::Error::other(format!(
                    "listing incomplete uploads: status {}",
                    resp.status()
                ))));
            }
            let text = resp
                .text()
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e.without_url())))?;
            let page: MultipartUploads = quick_xml::de::from_str(&text).map_err(|e| {
                StorageError::Io(std::io::Error::other(format!(
                    "listing incomplete uploads: {e}"
                )))
            })?;
            for upload in &page.uploads {
                let started = chrono::DateTime::parse_from_rfc3339(&upload.initiated)
                    .map(|t| t.with_timezone(&chrono::Utc));
                // An upload whose start cannot be read is left alone.
                if started.is_ok_and(|t| t < cutoff) {
                    let path = ObjectPath::from(upload.key.as_str());
                    self.store
                        .abort_multipart(&path, &upload.upload_id)
                        .await
                        .map_err(io)?;
                    aborted += 1;
                }
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(u)) => markers = Some((k, u)),
                _ => break,
            }
        }
        Ok(aborted)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}
