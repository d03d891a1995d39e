//! Metadata: which narinfos nixcache has, where their NARs come from, sizes and last access.
//! SQLite is the embedded default; the trait is what the flows see.

mod postgres;
mod rows;
mod schema;
mod sqlite;

use async_trait::async_trait;

pub use postgres::{redact_url, PostgresDatabase};
pub use sqlite::SqliteDatabase;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database connection: {0}")]
    Connection(String),
    #[error("database query: {0}")]
    Query(String),
    #[error("database migration: {0}")]
    Migration(String),
}

/// A narinfo nixcache has accepted, with what it needs to fetch and verify its NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfoRecord {
    /// Store path hash part.
    pub hash: String,
    pub store_path: String,
    /// nixcache's NAR file name (`<nix32>.nar[.ext]`).
    pub nar_file: String,
    /// Absolute URL of the NAR at the upstream that served the narinfo.
    pub upstream_nar_url: String,
    /// The narinfo body as served (with nixcache's signature).
    pub narinfo: String,
    pub nar_size: u64,
    pub file_size: Option<u64>,
}

#[async_trait]
pub trait Database: Send + Sync + 'static {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>, DbError>;
    /// Inserts or replaces a narinfo.
    async fn put_narinfo(&self, record: &NarInfoRecord, now: i64) -> Result<(), DbError>;
    /// A narinfo whose NAR is `nar_file`: where to fetch it and how to verify it.
    async fn narinfo_for_nar(&self, nar_file: &str) -> Result<Option<NarInfoRecord>, DbError>;
    /// Records a NAR file committed to storage.
    async fn put_nar(&self, file: &str, size: u64, now: i64) -> Result<(), DbError>;
    /// Records accesses (batched by the caller).
    async fn touch(&self, narinfos: &[String], nars: &[String], now: i64) -> Result<(), DbError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), DbError>;

    /// Every recorded NAR: (file, size).
    async fn list_nars(&self) -> Result<Vec<(String, u64)>, DbError>;
    /// Number of stored NARs.
    async fn nar_count(&self) -> Result<u64, DbError>;
    /// Total size of the stored NARs (each counted once, however many narinfos refer to it).
    async fn total_nar_size(&self) -> Result<u64, DbError>;
    /// Up to `limit` narinfos whose NAR is stored, least recently used first: (hash, NAR file).
    async fn lru_narinfos(&self, limit: i64) -> Result<Vec<(String, String)>, DbError>;
    async fn delete_narinfo(&self, hash: &str) -> Result<(), DbError>;
    /// How many narinfos refer to this NAR file.
    async fn nar_references(&self, nar_file: &str) -> Result<u64, DbError>;
    /// Size of a stored NAR, if recorded.
    async fn nar_size(&self, nar_file: &str) -> Result<Option<u64>, DbError>;
    async fn delete_nar(&self, nar_file: &str) -> Result<(), DbError>;
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every `Database` must have.
    use super::*;

    pub fn record(hash: &str, nar_file: &str) -> NarInfoRecord {
        NarInfoRecord {
            hash: hash.into(),
            store_path: format!("/nix/store/{hash}-x"),
            nar_file: nar_file.into(),
            upstream_nar_url: format!("http://upstream/nar/{nar_file}"),
            narinfo: format!("StorePath: /nix/store/{hash}-x\n"),
            nar_size: 128,
            file_size: Some(100),
        }
    }

    pub async fn run(db: &dyn Database) {
        db.ping().await.expect("ping");
        let h = "p404n8pan3pvrll7pci95yg83idrvkdx";
        assert_eq!(db.get_narinfo(h).await.expect("get"), None);
        let mut r = record(h, "f.nar.xz");
        db.put_narinfo(&r, 1).await.expect("put");
        assert_eq!(db.get_narinfo(h).await.expect("get"), Some(r.clone()));
        r.narinfo.push_str("Sig: x\n");
        r.file_size = None;
        db.put_narinfo(&r, 2).await.expect("replace");
        assert_eq!(db.get_narinfo(h).await.expect("get"), Some(r.clone()));
        assert_eq!(
            db.narinfo_for_nar("f.nar.xz").await.expect("by nar"),
            Some(r)
        );
        assert_eq!(db.narinfo_for_nar("g.nar.xz").await.expect("by nar"), None);
        db.put_nar("f.nar.xz", 100, 3).await.expect("put nar");
        db.put_nar("f.nar.xz", 100, 4).await.expect("put nar again");
        db.touch(&[h.to_string()], &["f.nar.xz".to_string()], 5)
            .await
            .expect("touch");
        db.touch(&[], &[], 6).await.expect("empty touch");

        // Accounting and eviction.
        let h2 = "v7c5ji9627raqssv1yj0wpg4pzc29r8z";
        db.put_narinfo(&record(h2, "f.nar.xz"), 7)
            .await
            .expect("second narinfo, same NAR");
        let h3 = "4qcclcv5ss2dsdzyjnfynr94c3gn07y0";
        db.put_narinfo(&record(h3, "g.nar.xz"), 8)
            .await
            .expect("third narinfo");
        db.put_nar("g.nar.xz", 50, 8).await.expect("put nar");
        assert_eq!(
            db.total_nar_size().await.expect("total"),
            150,
            "a NAR counts once"
        );
        db.touch(&[h.to_string()], &[], 20).await.expect("touch");
        let lru = db.lru_narinfos(10).await.expect("lru");
        assert_eq!(lru.first().map(|r| r.0.as_str()), Some(h2), "{lru:?}");
        assert_eq!(lru.last().map(|r| r.0.as_str()), Some(h), "{lru:?}");
        assert_eq!(db.nar_references("f.nar.xz").await.expect("refs"), 2);
        db.delete_narinfo(h2).await.expect("delete");
        assert_eq!(db.nar_references("f.nar.xz").await.expect("refs"), 1);
        assert_eq!(db.nar_size("g.nar.xz").await.expect("size"), Some(50));
        db.delete_nar("g.nar.xz").await.expect("delete nar");
        assert_eq!(db.nar_size("g.nar.xz").await.expect("size"), None);
        assert_eq!(db.total_nar_size().await.expect("total"), 100);
        assert_eq!(
            db.lru_narinfos(10).await.expect("lru").len(),
            1,
            "narinfos without a stored NAR are not listed"
        );
    }
}
