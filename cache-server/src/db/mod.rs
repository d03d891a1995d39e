//! Metadata: which narinfos nixcache has, where their NARs come from, sizes and last access, and
//! the admin API's tasks. SQLite is the embedded default, PostgreSQL the shared one; both are the
//! one implementation in `sql.rs`. The traits, by concern, are what the flows see.

mod rows;
mod schema;
mod sql;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use sql::{redact_url, SqlDatabase};

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

/// What a task does. Stored, and in the admin API's JSON, in lower case.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "lowercase")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum TaskKind {
    /// Fetch store paths (and their closures) ahead of clients.
    Prefetch,
    /// Collect garbage; at most one is pending or running at a time.
    Gc,
}

/// Where a task is. Stored, and in the admin API's JSON, in lower case.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "lowercase")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl TaskKind {
    pub const ALL: [Self; 2] = [Self::Prefetch, Self::Gc];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefetch => "prefetch",
            Self::Gc => "gc",
        }
    }
}

impl TaskState {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Running, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Whether the task has ended, well or not.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

rows::text_enum!(TaskKind);
rows::text_enum!(TaskState);

/// A task of the admin API (`tasks` table). Times are unix milliseconds.
#[derive(
    Clone, Debug, PartialEq, Eq, diesel::Queryable, diesel::Selectable, diesel::Insertable,
)]
#[diesel(table_name = schema::tasks)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct TaskRecord {
    /// 32 hex characters.
    pub id: String,
    pub kind: TaskKind,
    pub state: TaskState,
    /// The request, as JSON.
    pub request: String,
    /// Progress as JSON, written by the runner.
    pub progress: Option<String>,
    /// The outcome as JSON, once succeeded.
    pub result: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The replica running it, or that ran it last.
    pub owner: Option<String>,
    /// How many times it was claimed (more than once when a runner died).
    pub attempts: i32,
    pub created_at: i64,
    /// When the latest attempt started.
    pub started_at: Option<i64>,
    /// The runner's last sign of life.
    pub heartbeat_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// Narinfo and NAR metadata, as the serving flows read and write it.
#[async_trait]
pub trait Narinfos: Send + Sync {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>, DbError>;
    /// Inserts or replaces a narinfo.
    async fn put_narinfo(&self, record: &NarInfoRecord, now: i64) -> Result<(), DbError>;
    /// A narinfo whose NAR is `nar_file`: where to fetch it and how to verify it.
    async fn narinfo_for_nar(&self, nar_file: &str) -> Result<Option<NarInfoRecord>, DbError>;
    /// Records a NAR file committed to storage.
    async fn put_nar(&self, file: &str, size: u64, now: i64) -> Result<(), DbError>;
    /// Records accesses (batched by the caller).
    async fn touch(&self, narinfos: &[String], nars: &[String], now: i64) -> Result<(), DbError>;
}

/// Sizes, use and what nothing refers to: what GC and `fsck` read and delete.
#[async_trait]
pub trait Accounting: Send + Sync {
    /// Every recorded NAR: (file, size).
    async fn list_nars(&self) -> Result<Vec<(String, u64)>, DbError>;
    /// Number of stored NARs.
    async fn nar_count(&self) -> Result<u64, DbError>;
    /// Total size of the stored NARs (each counted once, however many narinfos refer to it).
    async fn total_nar_size(&self) -> Result<u64, DbError>;
    /// Up to `limit` narinfos whose NAR is stored, least recently used first (ties by hash),
    /// after `after` (a (last use, hash) of an earlier answer; none: from the start).
    async fn lru_narinfos(
        &self,
        after: Option<&LruEntry>,
        limit: i64,
    ) -> Result<Vec<LruEntry>, DbError>;
    /// Up to `limit` recorded NARs that no narinfo refers to, last used before `before`, least
    /// recently used first: (file, size). Left by an upload without its narinfo, an interrupted
    /// GC pass, or a replaced narinfo.
    async fn orphan_nars(&self, before: i64, limit: i64) -> Result<Vec<(String, u64)>, DbError>;
    /// Up to `limit` narinfos whose NAR was never stored (only looked up, e.g. by a client's
    /// HEAD), last used before `before`, least recently used first: their hashes.
    async fn unfetched_narinfos(&self, before: i64, limit: i64) -> Result<Vec<String>, DbError>;
    /// Deletes these narinfos in one statement.
    async fn delete_narinfos(&self, hashes: &[String]) -> Result<(), DbError>;
    /// Of these NAR files, the recorded ones no narinfo refers to: (file, size), in one query.
    async fn unreferenced_nars(&self, files: &[String]) -> Result<Vec<(String, u64)>, DbError>;
    /// Forgets these NAR files in one statement.
    async fn delete_nars(&self, files: &[String]) -> Result<(), DbError>;
    /// How many narinfos refer to this NAR file.
    async fn nar_references(&self, nar_file: &str) -> Result<u64, DbError>;
    async fn delete_nar(&self, nar_file: &str) -> Result<(), DbError>;
}

/// A narinfo as GC's LRU order sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LruEntry {
    pub hash: String,
    pub nar_file: String,
    /// The NAR's size.
    pub size: u64,
    /// Unix seconds.
    pub last_accessed_at: i64,
}

/// Store paths pinned through the admin API: their closures are never evicted.
#[async_trait]
pub trait Pins: Send + Sync {
    /// Records these pins (those held already are kept as they are); how many were new.
    async fn add_pins(&self, store_paths: &[String], now: i64) -> Result<u64, DbError>;
    /// Removes these pins; how many there were.
    async fn remove_pins(&self, store_paths: &[String]) -> Result<u64, DbError>;
    /// Every pin: (store path, unix seconds pinned), by path.
    async fn list_pins(&self) -> Result<Vec<(String, i64)>, DbError>;
}

/// The admin API's tasks: recording, claiming with fencing by owner, heartbeats, retention.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Records a new task. `Ok(false)` when it is a GC task and another one is pending or running
    /// (at most one is: GC requests coalesce).
    async fn insert_task(&self, task: &TaskRecord) -> Result<bool, DbError>;
    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, DbError>;
    /// The oldest pending or running task of `kind`.
    async fn active_task(&self, kind: TaskKind) -> Result<Option<TaskRecord>, DbError>;
    /// Up to `limit` tasks a runner may take, oldest first: pending ones, and running ones whose
    /// runner has not been heard of since `stale_before`.
    async fn claimable_tasks(
        &self,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<TaskRecord>, DbError>;
    /// Makes `owner` the runner of a task if it is still claimable; whether it did.
    async fn claim_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, DbError>;
    /// The runner's sign of life, with its progress; false when the task is not its any more.
    async fn task_heartbeat(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        progress: Option<String>,
    ) -> Result<bool, DbError>;
    /// Ends a task its runner owns: succeeded with `Ok(result)`, failed with `Err(error)`, or,
    /// with `None`, back to pending for another runner (a replica shutting down).
    async fn finish_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        outcome: Option<Result<String, String>>,
    ) -> Result<bool, DbError>;
    /// Forgets tasks that finished before `before`; how many.
    async fn delete_finished_tasks(&self, before: i64) -> Result<u64, DbError>;
}

/// The whole database, as `Cache` holds it.
#[async_trait]
pub trait Database: Narinfos + Accounting + TaskStore + Pins + 'static {
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), DbError>;
}

/// Whether an insert failed only because of a unique index.
pub(crate) fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
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

    pub fn task(id: &str, kind: TaskKind, created_at: i64) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            kind,
            state: TaskState::Pending,
            request: "{}".into(),
            progress: None,
            result: None,
            error: None,
            owner: None,
            attempts: 0,
            created_at,
            started_at: None,
            heartbeat_at: None,
            finished_at: None,
        }
    }

    /// Tasks: claiming, fencing by owner, staleness, GC coalescing, retention.
    pub async fn tasks(db: &dyn Database) {
        use TaskState::*;
        let a = task("a0000000000000000000000000000000", TaskKind::Prefetch, 1);
        assert!(db.insert_task(&a).await.expect("insert"));
        assert_eq!(db.get_task(&a.id).await.expect("get"), Some(a.clone()));
        assert_eq!(db.get_task("nope").await.expect("get"), None);
        let b = task("b0000000000000000000000000000000", TaskKind::Prefetch, 2);
        assert!(db.insert_task(&b).await.expect("insert"));

        // Claiming: one runner wins; the loser's writes are refused.
        let ids = |v: Vec<TaskRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(db.claimable_tasks(0, 10).await.expect("claimable")),
            [a.id.clone(), b.id.clone()]
        );
        assert!(db.claim_task(&a.id, "r1", 10, 0).await.expect("claim"));
        assert!(!db
            .claim_task(&a.id, "r2", 11, 0)
            .await
            .expect("claim again"));
        let t = db.get_task(&a.id).await.expect("get").expect("task");
        assert_eq!(
            (t.state, t.owner.as_deref(), t.attempts),
            (Running, Some("r1"), 1)
        );
        assert_eq!((t.started_at, t.heartbeat_at), (Some(10), Some(10)));
        assert_eq!(
            ids(db.claimable_tasks(5, 10).await.expect("claimable")),
            std::slice::from_ref(&b.id),
            "a running task heard of recently is not claimable"
        );
        assert!(db
            .task_heartbeat(&a.id, "r1", 20, Some("{\"done\":1}".into()))
            .await
            .expect("heartbeat"));
        assert!(!db
            .task_heartbeat(&a.id, "r2", 21, None)
            .await
            .expect("heartbeat"));
        let t = db.get_task(&a.id).await.expect("get").expect("task");
        assert_eq!(
            (t.heartbeat_at, t.progress.as_deref()),
            (Some(20), Some("{\"done\":1}"))
        );

        // Its runner went silent: another takes it over, and the first one's outcome is refused.
        assert_eq!(
            ids(db.claimable_tasks(21, 10).await.expect("claimable")),
            [a.id.clone(), b.id.clone()]
        );
        assert!(db.claim_task(&a.id, "r2", 30, 21).await.expect("take over"));
        assert!(!db
            .finish_task(&a.id, "r1", 31, Some(Ok("{}".into())))
            .await
            .expect("finish"));
        assert!(db
            .finish_task(&a.id, "r2", 32, Some(Ok("{\"ok\":true}".into())))
            .await
            .expect("finish"));
        let t = db.get_task(&a.id).await.expect("get").expect("task");
        assert_eq!(
            (t.state, t.attempts, t.finished_at),
            (Succeeded, 2, Some(32))
        );
        assert_eq!(t.result.as_deref(), Some("{\"ok\":true}"));
        assert!(!db.claim_task(&a.id, "r3", 40, 100).await.expect("finished"));

        // Handed back (a replica shutting down): pending again, then failed by the next runner.
        assert!(db.claim_task(&b.id, "r1", 40, 0).await.expect("claim"));
        assert!(db
            .finish_task(&b.id, "r1", 41, None)
            .await
            .expect("release"));
        let t = db.get_task(&b.id).await.expect("get").expect("task");
        assert_eq!((t.state, t.heartbeat_at), (Pending, None));
        assert!(db.claim_task(&b.id, "r2", 42, 0).await.expect("claim"));
        assert!(db
            .finish_task(&b.id, "r2", 43, Some(Err("boom".into())))
            .await
            .expect("fail"));
        let t = db.get_task(&b.id).await.expect("get").expect("task");
        assert_eq!((t.state, t.error.as_deref()), (Failed, Some("boom")));

        // One active GC task at a time.
        let g1 = task("c0000000000000000000000000000000", TaskKind::Gc, 50);
        let g2 = task("d0000000000000000000000000000000", TaskKind::Gc, 51);
        assert!(db.insert_task(&g1).await.expect("insert"));
        assert!(!db.insert_task(&g2).await.expect("coalesced"));
        assert_eq!(
            db.active_task(TaskKind::Gc)
                .await
                .expect("active")
                .map(|t| t.id),
            Some(g1.id.clone())
        );
        assert!(db.claim_task(&g1.id, "r1", 52, 0).await.expect("claim"));
        assert!(!db.insert_task(&g2).await.expect("still coalesced"));
        assert!(db
            .finish_task(&g1.id, "r1", 53, Some(Ok("{}".into())))
            .await
            .expect("finish"));
        assert_eq!(db.active_task(TaskKind::Gc).await.expect("active"), None);
        assert!(db
            .insert_task(&g2)
            .await
            .expect("a new one after it finished"));

        // Retention: finished tasks go, active ones stay.
        assert_eq!(db.delete_finished_tasks(43).await.expect("delete"), 1);
        assert_eq!(db.delete_finished_tasks(1000).await.expect("delete"), 2);
        assert!(db.get_task(&g2.id).await.expect("get").is_some());
        assert!(db.get_task(&a.id).await.expect("get").is_none());
    }

    /// Pins: added once, listed by path, removed.
    pub async fn pins(db: &dyn Database) {
        let a = "/nix/store/p404n8pan3pvrll7pci95yg83idrvkdx-a".to_string();
        let b = "/nix/store/1b4sb93wp679q4zx9k1ignby1yna3z7c-b".to_string();
        assert_eq!(
            db.add_pins(&[a.clone(), b.clone()], 5).await.expect("add"),
            2
        );
        assert_eq!(
            db.add_pins(std::slice::from_ref(&a), 9)
                .await
                .expect("again"),
            0,
            "held already"
        );
        assert_eq!(
            db.list_pins().await.expect("list"),
            vec![(b.clone(), 5), (a.clone(), 5)]
        );
        assert_eq!(
            db.remove_pins(&[a.clone(), "/nix/store/x".into()])
                .await
                .expect("remove"),
            1
        );
        assert_eq!(db.list_pins().await.expect("list"), vec![(b.clone(), 5)]);
        assert_eq!(db.remove_pins(&[b]).await.expect("remove"), 1);
        assert!(db.list_pins().await.expect("list").is_empty());
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
        let lru = db.lru_narinfos(None, 10).await.expect("lru");
        assert_eq!(lru.first().map(|r| r.hash.as_str()), Some(h2), "{lru:?}");
        assert_eq!(lru.last().map(|r| r.hash.as_str()), Some(h), "{lru:?}");
        assert_eq!(lru.last().map(|r| r.last_accessed_at), Some(20));
        // Page by page from a cursor: the same order, nothing twice.
        let mut paged = Vec::new();
        let mut cursor: Option<LruEntry> = None;
        loop {
            let page = db.lru_narinfos(cursor.as_ref(), 1).await.expect("page");
            let Some(last) = page.last().cloned() else {
                break;
            };
            paged.extend(page);
            cursor = Some(last);
        }
        assert_eq!(paged, lru);
        assert_eq!(db.nar_references("f.nar.xz").await.expect("refs"), 2);
        db.delete_narinfos(&[h2.to_string()]).await.expect("delete");
        assert_eq!(db.nar_references("f.nar.xz").await.expect("refs"), 1);
        let size_of = |nars: Vec<(String, u64)>, file: &str| {
            nars.into_iter().find(|n| n.0 == file).map(|n| n.1)
        };
        assert_eq!(
            size_of(db.list_nars().await.expect("list"), "g.nar.xz"),
            Some(50)
        );
        db.delete_nar("g.nar.xz").await.expect("delete nar");
        assert_eq!(
            size_of(db.list_nars().await.expect("list"), "g.nar.xz"),
            None
        );
        assert_eq!(db.total_nar_size().await.expect("total"), 100);
        assert_eq!(
            db.lru_narinfos(None, 10).await.expect("lru").len(),
            1,
            "narinfos without a stored NAR are not listed"
        );

        // What nothing collected before: NARs no narinfo names, narinfos whose NAR never came.
        // Now h (-> f, stored) and h3 (-> g, no longer stored).
        assert_eq!(
            db.unfetched_narinfos(100, 10).await.expect("unfetched"),
            vec![h3.to_string()]
        );
        assert!(
            db.unfetched_narinfos(8, 10)
                .await
                .expect("unfetched")
                .is_empty(),
            "used at 8, not before"
        );
        assert!(db.orphan_nars(100, 10).await.expect("orphans").is_empty());
        db.put_nar("o.nar.zst", 7, 30)
            .await
            .expect("an uploaded NAR alone");
        assert_eq!(
            db.orphan_nars(31, 10).await.expect("orphans"),
            vec![("o.nar.zst".to_string(), 7)]
        );
        assert!(db.orphan_nars(30, 10).await.expect("orphans").is_empty());
        let h4 = "1b4sb93wp679q4zx9k1ignby1yna3z7c";
        db.put_narinfo(&record(h4, "q.nar.xz"), 9)
            .await
            .expect("put");
        db.put_nar("q.nar.xz", 3, 9).await.expect("put nar");
        assert_eq!(db.orphan_nars(100, 10).await.expect("orphans").len(), 1);
        db.delete_narinfos(&[h4.to_string()])
            .await
            .expect("its narinfo replaced or evicted");
        let orphans = db.orphan_nars(100, 10).await.expect("orphans");
        assert_eq!(
            orphans.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
            vec!["q.nar.xz", "o.nar.zst"],
            "least recently used first"
        );
        assert_eq!(db.orphan_nars(100, 1).await.expect("orphans").len(), 1);

        // The batched forms GC uses. Now h -> f (100 bytes); orphans q and o.
        assert_eq!(
            db.lru_narinfos(None, 10).await.expect("lru"),
            vec![LruEntry {
                hash: h.to_string(),
                nar_file: "f.nar.xz".to_string(),
                size: 100,
                last_accessed_at: 20,
            }]
        );
        let files = ["f.nar.xz", "q.nar.xz", "o.nar.zst", "never.nar"].map(String::from);
        let mut free = db.unreferenced_nars(&files).await.expect("unreferenced");
        free.sort();
        assert_eq!(
            free,
            vec![("o.nar.zst".to_string(), 7), ("q.nar.xz".to_string(), 3)],
            "named or unrecorded files are not listed"
        );
        db.delete_narinfos(&[h3.to_string(), "0".repeat(32)])
            .await
            .expect("delete narinfos");
        assert!(db.get_narinfo(h3).await.expect("get").is_none());
        assert!(
            db.get_narinfo(h).await.expect("get").is_some(),
            "only those named"
        );
        db.delete_nars(&files[1..3]).await.expect("delete nars");
        assert_eq!(db.nar_count().await.expect("count"), 1, "f is left");
        assert!(db.unreferenced_nars(&files).await.expect("none").is_empty());
        db.delete_narinfos(&[]).await.expect("nothing to delete");
        db.delete_nars(&[]).await.expect("nothing to delete");
        assert!(db.unreferenced_nars(&[]).await.expect("none").is_empty());
    }
}
