//! The one implementation of the database traits, over diesel-async: PostgreSQL natively
//! (tokio-postgres underneath, no libpq), SQLite through `SyncConnectionWrapper` (each query runs
//! on tokio's blocking pool; WAL mode lets readers proceed while one writer writes). Both are
//! pooled with bb8. Every query is written once, in `run!`, and compiled for each backend.
//!
//! Migrations are embedded, one set per dialect, and applied over a synchronous connection: at
//! open, or, for a serving process that starts while PostgreSQL is down, as soon as it answers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::bb8::Pool as Bb8Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::rows::{
    claimable, orphaned_before, q, run_by, size, sized, unfetched_before, unreferenced, NarInfoRow,
};
use super::schema::{narinfos, nars, pins, tasks};
use super::{
    is_unique_violation, Accounting, Database, DbError, LruEntry, NarInfoRecord, Narinfos, Pins,
    TaskKind, TaskRecord, TaskState, TaskStore,
};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The advisory lock key PostgreSQL migrations run under (`nixcache` in ASCII).
const MIGRATION_LOCK: i64 = 0x6e69_7863_6163_6865;
/// Set on every SQLite connection (WAL is the file's, set once at open).
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;";
/// Rows one statement updates at most (below SQLite's and PostgreSQL's bind limits).
const CHUNK: usize = 10_000;

/// Between tries to migrate a database that was unreachable at start.
const MIGRATE_RETRY: Duration = Duration::from_secs(2);
const MIGRATE_RETRY_MAX: Duration = Duration::from_secs(30);

type SqliteAsync = SyncConnectionWrapper<SqliteConnection>;

enum Pool {
    Sqlite(Bb8Pool<SqliteAsync>),
    Postgres(Bb8Pool<AsyncPgConnection>),
}

pub struct SqlDatabase {
    pool: Pool,
    /// Whether this process has seen the schema migrated; queries wait for it.
    migrated: Arc<AtomicBool>,
}

/// Runs `$body` with `$c` bound to a pooled connection of whichever backend this is: the query is
/// written once and type-checked for both. Its `diesel` error becomes a `DbError::Query`.
macro_rules! run {
    ($db:ident, |$c:ident| $body:expr) => {
        match &$db.pool {
            Pool::Sqlite(pool) => {
                $db.ready()?;
                let mut conn = pool.get().await.map_err(unavailable)?;
                let $c = &mut *conn;
                $body.map_err(q)
            }
            Pool::Postgres(pool) => {
                $db.ready()?;
                let mut conn = pool.get().await.map_err(unavailable)?;
                let $c = &mut *conn;
                $body.map_err(q)
            }
        }
    };
}

pub use nixcache_settings::redact::redact_url;

fn unavailable(e: impl std::fmt::Display) -> DbError {
    DbError::Connection(e.to_string())
}

fn connection_error(e: impl std::fmt::Display, url: &str) -> DbError {
    // Driver errors may quote the connection string; never pass one on with its password.
    let text = e.to_string();
    let text = match reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(pw) if !pw.is_empty() => text.replace(&pw, "REDACTED"),
        _ => text,
    };
    DbError::Connection(text)
}

/// Creates the SQLite file if needed, turns on WAL and applies pending migrations.
async fn migrate_sqlite(path: String) -> Result<(), DbError> {
    tokio::task::spawn_blocking(move || {
        let mut conn =
            SqliteConnection::establish(&path).map_err(|e| DbError::Connection(e.to_string()))?;
        diesel::RunQueryDsl::execute(diesel::sql_query("PRAGMA journal_mode = WAL"), &mut conn)
            .map_err(q)?;
        conn.run_pending_migrations(SQLITE_MIGRATIONS)
            .map(|_| ())
            .map_err(|e| DbError::Migration(e.to_string()))
    })
    .await
    .map_err(|e| DbError::Connection(e.to_string()))?
}

/// Applies pending PostgreSQL migrations, one process at a time.
async fn migrate_postgres(url: &str) -> Result<(), DbError> {
    let migrate_url = url.to_string();
    tokio::task::spawn_blocking(move || {
        // The sync wrapper drives the async connection on the runtime this task belongs to.
        type Sync =
            diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;
        let mut conn = <Sync as diesel::Connection>::establish(&migrate_url)
            .map_err(|e| connection_error(e, &migrate_url))?;
        // Replicas starting together migrate one at a time: the others wait here, then find
        // nothing pending. The lock is the session's, so it goes with the connection too.
        let lock = format!("SELECT pg_advisory_lock({MIGRATION_LOCK})");
        diesel::RunQueryDsl::execute(diesel::sql_query(lock), &mut conn)
            .map_err(|e| DbError::Migration(format!("taking the migration lock: {e}")))?;
        let applied = conn
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(|_| ())
            .map_err(|e| DbError::Migration(e.to_string()));
        let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
        let _ = diesel::RunQueryDsl::execute(diesel::sql_query(unlock), &mut conn);
        applied
    })
    .await
    .map_err(|e| DbError::Connection(e.to_string()))?
}

/// A pool whose connections are made when needed, so a database that is down at start-up or
/// later only fails the requests that need it.
fn pool<M: bb8::ManageConnection>(
    manager: M,
    max_connections: u32,
    timeout: Duration,
) -> bb8::Pool<M> {
    bb8::Pool::builder()
        .max_size(max_connections)
        .connection_timeout(timeout)
        .min_idle(Some(0))
        .build_unchecked(manager)
}

fn postgres_pool(url: &str, max_connections: u32) -> Bb8Pool<AsyncPgConnection> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    pool(manager, max_connections, Duration::from_secs(5))
}

impl SqlDatabase {
    /// Opens (creating if needed) a SQLite database file and applies pending migrations.
    pub async fn sqlite(path: &Path) -> Result<Self, DbError> {
        let url = path.to_string_lossy().into_owned();
        migrate_sqlite(url.clone()).await?;
        let mut config = ManagerConfig::<SqliteAsync>::default();
        config.custom_setup = Box::new(|url| {
            let url = url.to_string();
            Box::pin(async move {
                let mut conn = SqliteAsync::establish(&url).await?;
                conn.batch_execute(SQLITE_PRAGMAS)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        let manager = AsyncDieselConnectionManager::new_with_config(url, config);
        Ok(Self {
            pool: Pool::Sqlite(pool(manager, 4, Duration::from_secs(10))),
            migrated: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Connects to PostgreSQL, applies pending migrations, and keeps a pool of up to
    /// `max_connections`; fails when the database cannot be reached or migrated (for
    /// `nixcache migrate`, `gc`, `fsck`).
    pub async fn postgres(url: &str, max_connections: u32) -> Result<Self, DbError> {
        migrate_postgres(url).await?;
        Ok(Self {
            pool: Pool::Postgres(postgres_pool(url, max_connections)),
            migrated: Arc::new(AtomicBool::new(true)),
        })
    }

    /// PostgreSQL for a serving process: never fails. Migrates now if the database answers;
    /// otherwise keeps trying in the background, and until it has succeeded every query fails as
    /// the database being unavailable (so hits are served from storage, misses are 404) — a
    /// replica starts and serves during a database outage, and needs no restart when the
    /// database returns.
    pub async fn postgres_serving(url: &str, max_connections: u32) -> Self {
        let migrated = Arc::new(AtomicBool::new(false));
        let db = Self {
            pool: Pool::Postgres(postgres_pool(url, max_connections)),
            migrated: migrated.clone(),
        };
        match migrate_postgres(url).await {
            Ok(()) => migrated.store(true, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "database unavailable at start; serving what storage has, migrating once it answers");
                let url = url.to_string();
                tokio::spawn(async move {
                    let mut pause = MIGRATE_RETRY;
                    loop {
                        tokio::time::sleep(pause).await;
                        match migrate_postgres(&url).await {
                            Ok(()) => {
                                migrated.store(true, Ordering::SeqCst);
                                tracing::info!("database reachable; migrations applied");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "database still unavailable");
                                pause = (pause * 2).min(MIGRATE_RETRY_MAX);
                            }
                        }
                    }
                });
            }
        }
        db
    }

    /// Fails while the schema is not known to be current.
    fn ready(&self) -> Result<(), DbError> {
        if AtomicBool::load(&self.migrated, Ordering::SeqCst) {
            Ok(())
        } else {
            Err(DbError::Connection(
                "database not reached since start (its schema is not known to be current)".into(),
            ))
        }
    }
}

#[async_trait]
impl Narinfos for SqlDatabase {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>, DbError> {
        run!(self, |c| narinfos::table
            .find(hash)
            .select(NarInfoRow::as_select())
            .first(c)
            .await
            .optional()
            .map(|r| r.map(Into::into)))
    }

    async fn put_narinfo(&self, r: &NarInfoRecord, now: i64) -> Result<(), DbError> {
        let row = NarInfoRow::from(r);
        run!(self, |c| diesel::insert_into(narinfos::table)
            .values((
                &row,
                narinfos::created_at.eq(now),
                narinfos::last_accessed_at.eq(now),
            ))
            .on_conflict(narinfos::hash)
            .do_update()
            .set((&row, narinfos::last_accessed_at.eq(now)))
            .execute(c)
            .await
            .map(|_| ()))
    }

    async fn narinfo_for_nar(&self, nar_file: &str) -> Result<Option<NarInfoRecord>, DbError> {
        run!(self, |c| narinfos::table
            .filter(narinfos::nar_file.eq(nar_file))
            .select(NarInfoRow::as_select())
            .first(c)
            .await
            .optional()
            .map(|r| r.map(Into::into)))
    }

    async fn put_nar(&self, file: &str, nar_size: u64, now: i64) -> Result<(), DbError> {
        run!(self, |c| diesel::insert_into(nars::table)
            .values((
                nars::file.eq(file),
                nars::size.eq(size(nar_size)),
                nars::created_at.eq(now),
                nars::last_accessed_at.eq(now),
            ))
            .on_conflict(nars::file)
            .do_update()
            .set((
                nars::size.eq(size(nar_size)),
                nars::last_accessed_at.eq(now),
            ))
            .execute(c)
            .await
            .map(|_| ()))
    }

    async fn touch(&self, hashes: &[String], files: &[String], now: i64) -> Result<(), DbError> {
        if hashes.is_empty() && files.is_empty() {
            return Ok(());
        }
        run!(self, |c| async {
            for chunk in hashes.chunks(CHUNK) {
                diesel::update(narinfos::table.filter(narinfos::hash.eq_any(chunk)))
                    .set(narinfos::last_accessed_at.eq(now))
                    .execute(&mut *c)
                    .await?;
            }
            for chunk in files.chunks(CHUNK) {
                diesel::update(nars::table.filter(nars::file.eq_any(chunk)))
                    .set(nars::last_accessed_at.eq(now))
                    .execute(&mut *c)
                    .await?;
            }
            Ok::<_, diesel::result::Error>(())
        }
        .await)
    }
}

#[async_trait]
impl Accounting for SqlDatabase {
    async fn list_nars(&self) -> Result<Vec<(String, u64)>, DbError> {
        run!(self, |c| nars::table
            .order(nars::file.asc())
            .select((nars::file, nars::size))
            .load::<(String, i64)>(c)
            .await
            .map(sized))
    }

    async fn nar_count(&self) -> Result<u64, DbError> {
        run!(self, |c| nars::table
            .count()
            .get_result::<i64>(c)
            .await
            .map(|n| n.max(0) as u64))
    }

    async fn total_nar_size(&self) -> Result<u64, DbError> {
        // SUM over BIGINT is NUMERIC in PostgreSQL: cast back for diesel (a no-op in SQLite).
        run!(self, |c| diesel::select(diesel::dsl::sql::<
            diesel::sql_types::BigInt,
        >(
            "(SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM nars)",
        ))
        .get_result::<i64>(c)
        .await
        .map(|s| s.max(0) as u64))
    }

    async fn lru_narinfos(
        &self,
        after: Option<&LruEntry>,
        limit: i64,
    ) -> Result<Vec<LruEntry>, DbError> {
        // (last use, hash) after the cursor's: a later use, or the same and a greater hash.
        let (used, hash) = after.map_or((i64::MIN, String::new()), |e| {
            (e.last_accessed_at, e.hash.clone())
        });
        run!(self, |c| narinfos::table
            .inner_join(nars::table.on(nars::file.eq(narinfos::nar_file)))
            .filter(
                narinfos::last_accessed_at
                    .gt(used)
                    .or(narinfos::last_accessed_at
                        .eq(used)
                        .and(narinfos::hash.gt(&hash))),
            )
            .order((narinfos::last_accessed_at.asc(), narinfos::hash.asc()))
            .select((
                narinfos::hash,
                narinfos::nar_file,
                nars::size,
                narinfos::last_accessed_at,
            ))
            .limit(limit)
            .load::<(String, String, i64, i64)>(c)
            .await
            .map(|rows| rows
                .into_iter()
                .map(|(hash, nar_file, size, last_accessed_at)| LruEntry {
                    hash,
                    nar_file,
                    size: size.max(0) as u64,
                    last_accessed_at,
                })
                .collect()))
    }

    async fn orphan_nars(&self, before: i64, limit: i64) -> Result<Vec<(String, u64)>, DbError> {
        run!(self, |c| nars::table
            .filter(orphaned_before(before))
            .order(nars::last_accessed_at.asc())
            .select((nars::file, nars::size))
            .limit(limit)
            .load::<(String, i64)>(c)
            .await
            .map(sized))
    }

    async fn unfetched_narinfos(&self, before: i64, limit: i64) -> Result<Vec<String>, DbError> {
        run!(self, |c| narinfos::table
            .filter(unfetched_before(before))
            .order(narinfos::last_accessed_at.asc())
            .select(narinfos::hash)
            .limit(limit)
            .load(c)
            .await)
    }

    async fn delete_narinfos(&self, hashes: &[String]) -> Result<(), DbError> {
        if hashes.is_empty() {
            return Ok(());
        }
        run!(self, |c| diesel::delete(
            narinfos::table.filter(narinfos::hash.eq_any(hashes))
        )
        .execute(c)
        .await
        .map(|_| ()))
    }

    async fn unreferenced_nars(&self, files: &[String]) -> Result<Vec<(String, u64)>, DbError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        run!(self, |c| nars::table
            .filter(nars::file.eq_any(files))
            .filter(unreferenced())
            .select((nars::file, nars::size))
            .load::<(String, i64)>(c)
            .await
            .map(sized))
    }

    async fn delete_nars(&self, files: &[String]) -> Result<(), DbError> {
        if files.is_empty() {
            return Ok(());
        }
        run!(self, |c| diesel::delete(
            nars::table.filter(nars::file.eq_any(files))
        )
        .execute(c)
        .await
        .map(|_| ()))
    }

    async fn nar_references(&self, nar_file: &str) -> Result<u64, DbError> {
        run!(self, |c| narinfos::table
            .filter(narinfos::nar_file.eq(nar_file))
            .count()
            .get_result::<i64>(c)
            .await
            .map(|n| n.max(0) as u64))
    }

    async fn delete_nar(&self, nar_file: &str) -> Result<(), DbError> {
        run!(self, |c| diesel::delete(nars::table.find(nar_file))
            .execute(c)
            .await
            .map(|_| ()))
    }
}

#[async_trait]
impl TaskStore for SqlDatabase {
    async fn insert_task(&self, task: &TaskRecord) -> Result<bool, DbError> {
        run!(self, |c| match diesel::insert_into(tasks::table)
            .values(task)
            .execute(c)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e),
        })
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        run!(self, |c| tasks::table
            .find(id)
            .select(TaskRecord::as_select())
            .first(c)
            .await
            .optional())
    }

    async fn active_task(&self, kind: TaskKind) -> Result<Option<TaskRecord>, DbError> {
        run!(self, |c| tasks::table
            .filter(tasks::kind.eq(kind))
            .filter(tasks::state.eq_any([TaskState::Pending, TaskState::Running]))
            .order(tasks::created_at.asc())
            .select(TaskRecord::as_select())
            .first(c)
            .await
            .optional())
    }

    async fn claimable_tasks(
        &self,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<TaskRecord>, DbError> {
        // A kind this version does not know (a newer replica's, in a rolling upgrade) is left to
        // a replica that does.
        run!(self, |c| tasks::table
            .filter(claimable(stale_before))
            .filter(tasks::kind.eq_any(TaskKind::ALL))
            .order(tasks::created_at.asc())
            .limit(limit)
            .select(TaskRecord::as_select())
            .load(c)
            .await)
    }

    async fn claim_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, DbError> {
        run!(self, |c| diesel::update(
            tasks::table.find(id).filter(claimable(stale_before))
        )
        .set((
            tasks::state.eq(TaskState::Running),
            tasks::owner.eq(owner),
            tasks::attempts.eq(tasks::attempts + 1),
            tasks::started_at.eq(now),
            tasks::heartbeat_at.eq(now),
        ))
        .execute(c)
        .await
        .map(|n| n == 1))
    }

    async fn task_heartbeat(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        progress: Option<String>,
    ) -> Result<bool, DbError> {
        let mine = run_by(id, owner);
        run!(self, |c| match &progress {
            Some(p) => {
                diesel::update(mine)
                    .set((tasks::heartbeat_at.eq(now), tasks::progress.eq(p)))
                    .execute(c)
                    .await
            }
            None => {
                diesel::update(mine)
                    .set(tasks::heartbeat_at.eq(now))
                    .execute(c)
                    .await
            }
        }
        .map(|n| n == 1))
    }

    async fn finish_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        outcome: Option<Result<String, String>>,
    ) -> Result<bool, DbError> {
        let mine = run_by(id, owner);
        run!(self, |c| match &outcome {
            Some(Ok(result)) => {
                diesel::update(mine)
                    .set((
                        tasks::state.eq(TaskState::Succeeded),
                        tasks::result.eq(result),
                        tasks::finished_at.eq(now),
                    ))
                    .execute(c)
                    .await
            }
            Some(Err(error)) => {
                diesel::update(mine)
                    .set((
                        tasks::state.eq(TaskState::Failed),
                        tasks::error.eq(error),
                        tasks::finished_at.eq(now),
                    ))
                    .execute(c)
                    .await
            }
            None => {
                diesel::update(mine)
                    .set((
                        tasks::state.eq(TaskState::Pending),
                        tasks::heartbeat_at.eq(None::<i64>),
                    ))
                    .execute(c)
                    .await
            }
        }
        .map(|n| n == 1))
    }

    async fn delete_finished_tasks(&self, before: i64) -> Result<u64, DbError> {
        run!(self, |c| diesel::delete(
            tasks::table.filter(tasks::finished_at.lt(before))
        )
        .execute(c)
        .await
        .map(|n| n as u64))
    }
}

#[async_trait]
impl Pins for SqlDatabase {
    async fn add_pins(&self, store_paths: &[String], now: i64) -> Result<u64, DbError> {
        if store_paths.is_empty() {
            return Ok(0);
        }
        // One statement a path: SQLite takes no batch insert with ON CONFLICT.
        run!(self, |c| async {
            let mut added = 0;
            for p in store_paths {
                added += diesel::insert_into(pins::table)
                    .values((pins::store_path.eq(p), pins::created_at.eq(now)))
                    .on_conflict(pins::store_path)
                    .do_nothing()
                    .execute(&mut *c)
                    .await? as u64;
            }
            Ok::<_, diesel::result::Error>(added)
        }
        .await)
    }

    async fn remove_pins(&self, store_paths: &[String]) -> Result<u64, DbError> {
        if store_paths.is_empty() {
            return Ok(0);
        }
        run!(self, |c| diesel::delete(
            pins::table.filter(pins::store_path.eq_any(store_paths))
        )
        .execute(c)
        .await
        .map(|n| n as u64))
    }

    async fn list_pins(&self) -> Result<Vec<(String, i64)>, DbError> {
        run!(self, |c| pins::table
            .order(pins::store_path.asc())
            .select((pins::store_path, pins::created_at))
            .load(c)
            .await)
    }
}

#[async_trait]
impl Database for SqlDatabase {
    async fn ping(&self) -> Result<(), DbError> {
        run!(self, |c| diesel::sql_query("SELECT 1")
            .execute(c)
            .await
            .map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "p404n8pan3pvrll7pci95yg83idrvkdx";

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = SqlDatabase::sqlite(&dir.path().join("db.sqlite"))
            .await
            .expect("open");
        super::super::conformance::run(&db).await;
        super::super::conformance::tasks(&db).await;
        super::super::conformance::pins(&db).await;
        // Reopening applies no migration twice and keeps the data.
        drop(db);
        let db = SqlDatabase::sqlite(&dir.path().join("db.sqlite"))
            .await
            .expect("reopen");
        assert!(db.get_narinfo(HASH).await.expect("get").is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_stored_task_state_nothing_knows_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let db = SqlDatabase::sqlite(&path).await.expect("open");
        let task = super::super::conformance::task(&"e".repeat(32), TaskKind::Prefetch, 1);
        assert!(db.insert_task(&task).await.expect("insert"));
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("connect");
        diesel::RunQueryDsl::execute(
            diesel::update(tasks::table).set(tasks::state.eq("paused")),
            &mut conn,
        )
        .expect("update");
        let e = db.get_task(&task.id).await.expect_err("an unknown state");
        assert!(e.to_string().contains("paused"), "{e}");
    }

    #[test]
    fn task_enums_are_stored_as_their_json() {
        for k in TaskKind::ALL {
            let json = serde_json::to_string(&k).expect("json");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        for s in TaskState::ALL {
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<TaskState>(&json).expect("back"), s);
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:hunter2@db:5432/x"),
            "postgres://u:REDACTED@db:5432/x"
        );
        let e = connection_error(
            "could not connect to postgres://u:hunter2@db",
            "postgres://u:hunter2@db/x",
        );
        assert!(!e.to_string().contains("hunter2"));
    }
}
