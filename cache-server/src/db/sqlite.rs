//! SQLite through diesel. Queries are synchronous, so each runs on tokio's blocking pool with a
//! connection from a small r2d2 pool; WAL mode lets readers proceed while one writer writes.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::rows::{
    claimable, orphaned_before, q, run_by, size, sized, sized3, unfetched_before, unreferenced,
    NarInfoRow,
};
use super::schema::{narinfos, nars, tasks};
use super::task_state::{FAILED, PENDING, RUNNING, SUCCEEDED};
use super::{is_unique_violation, Database, DbError, NarInfoRecord, TaskRecord};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

type Conn = PooledConnection<ConnectionManager<SqliteConnection>>;

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        diesel::sql_query("PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;")
            .execute(conn)
            .map(|_| ())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub struct SqliteDatabase {
    pool: Pool<ConnectionManager<SqliteConnection>>,
}

impl SqliteDatabase {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, DbError> {
        let url = path.to_string_lossy().into_owned();
        tokio::task::spawn_blocking(move || {
            let pool = Pool::builder()
                .max_size(4)
                .connection_timeout(Duration::from_secs(10))
                .connection_customizer(Box::new(Pragmas))
                .build(ConnectionManager::<SqliteConnection>::new(url))
                .map_err(|e| DbError::Connection(e.to_string()))?;
            let mut conn = pool.get().map_err(|e| DbError::Connection(e.to_string()))?;
            // WAL is a property of the database file: set once, not by every pooled connection.
            diesel::sql_query("PRAGMA journal_mode = WAL")
                .execute(&mut conn)
                .map_err(q)?;
            conn.run_pending_migrations(MIGRATIONS)
                .map_err(|e| DbError::Migration(e.to_string()))?;
            Ok(Self { pool })
        })
        .await
        .map_err(|e| DbError::Connection(e.to_string()))?
    }

    async fn with<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, diesel::result::Error> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|e| DbError::Connection(e.to_string()))?;
            f(&mut conn).map_err(q)
        })
        .await
        .map_err(|e| DbError::Connection(e.to_string()))?
    }
}

#[async_trait]
impl Database for SqliteDatabase {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>, DbError> {
        let hash = hash.to_string();
        self.with(move |c| {
            narinfos::table
                .find(hash)
                .select(NarInfoRow::as_select())
                .first(c)
                .optional()
                .map(|r| r.map(Into::into))
        })
        .await
    }

    async fn put_narinfo(&self, r: &NarInfoRecord, now: i64) -> Result<(), DbError> {
        let row = NarInfoRow::from(r);
        self.with(move |c| {
            diesel::insert_into(narinfos::table)
                .values((
                    &row,
                    narinfos::created_at.eq(now),
                    narinfos::last_accessed_at.eq(now),
                ))
                .on_conflict(narinfos::hash)
                .do_update()
                .set((&row, narinfos::last_accessed_at.eq(now)))
                .execute(c)
                .map(|_| ())
        })
        .await
    }

    async fn narinfo_for_nar(&self, nar_file: &str) -> Result<Option<NarInfoRecord>, DbError> {
        let nar_file = nar_file.to_string();
        self.with(move |c| {
            narinfos::table
                .filter(narinfos::nar_file.eq(nar_file))
                .select(NarInfoRow::as_select())
                .first(c)
                .optional()
                .map(|r| r.map(Into::into))
        })
        .await
    }

    async fn put_nar(&self, file: &str, nar_size: u64, now: i64) -> Result<(), DbError> {
        let file = file.to_string();
        self.with(move |c| {
            diesel::insert_into(nars::table)
                .values((
                    nars::file.eq(&file),
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
                .map(|_| ())
        })
        .await
    }

    async fn touch(&self, hashes: &[String], files: &[String], now: i64) -> Result<(), DbError> {
        if hashes.is_empty() && files.is_empty() {
            return Ok(());
        }
        let (hashes, files) = (hashes.to_vec(), files.to_vec());
        self.with(move |c| {
            c.transaction(|c| {
                for chunk in hashes.chunks(500) {
                    diesel::update(narinfos::table.filter(narinfos::hash.eq_any(chunk)))
                        .set(narinfos::last_accessed_at.eq(now))
                        .execute(c)?;
                }
                for chunk in files.chunks(500) {
                    diesel::update(nars::table.filter(nars::file.eq_any(chunk)))
                        .set(nars::last_accessed_at.eq(now))
                        .execute(c)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), DbError> {
        self.with(|c| diesel::sql_query("SELECT 1").execute(c).map(|_| ()))
            .await
    }

    async fn list_nars(&self) -> Result<Vec<(String, u64)>, DbError> {
        self.with(|c| {
            nars::table
                .order(nars::file.asc())
                .select((nars::file, nars::size))
                .load::<(String, i64)>(c)
                .map(sized)
        })
        .await
    }

    async fn nar_count(&self) -> Result<u64, DbError> {
        self.with(|c| {
            nars::table
                .count()
                .get_result::<i64>(c)
                .map(|n| n.max(0) as u64)
        })
        .await
    }

    async fn total_nar_size(&self) -> Result<u64, DbError> {
        self.with(|c| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT COALESCE(SUM(size), 0) FROM nars)",
            ))
            .get_result::<i64>(c)
            .map(|s| s.max(0) as u64)
        })
        .await
    }

    async fn lru_narinfos(&self, limit: i64) -> Result<Vec<(String, String, u64)>, DbError> {
        self.with(move |c| {
            narinfos::table
                .inner_join(nars::table.on(nars::file.eq(narinfos::nar_file)))
                .order(narinfos::last_accessed_at.asc())
                .select((narinfos::hash, narinfos::nar_file, nars::size))
                .limit(limit)
                .load::<(String, String, i64)>(c)
        })
        .await
        .map(sized3)
    }

    async fn orphan_nars(&self, before: i64, limit: i64) -> Result<Vec<(String, u64)>, DbError> {
        self.with(move |c| {
            nars::table
                .filter(orphaned_before(before))
                .order(nars::last_accessed_at.asc())
                .select((nars::file, nars::size))
                .limit(limit)
                .load::<(String, i64)>(c)
        })
        .await
        .map(sized)
    }

    async fn unfetched_narinfos(&self, before: i64, limit: i64) -> Result<Vec<String>, DbError> {
        self.with(move |c| {
            narinfos::table
                .filter(unfetched_before(before))
                .order(narinfos::last_accessed_at.asc())
                .select(narinfos::hash)
                .limit(limit)
                .load(c)
        })
        .await
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<(), DbError> {
        let hash = hash.to_string();
        self.with(move |c| {
            diesel::delete(narinfos::table.find(hash))
                .execute(c)
                .map(|_| ())
        })
        .await
    }

    async fn delete_narinfos(&self, hashes: &[String]) -> Result<(), DbError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let hashes = hashes.to_vec();
        self.with(move |c| {
            diesel::delete(narinfos::table.filter(narinfos::hash.eq_any(hashes)))
                .execute(c)
                .map(|_| ())
        })
        .await
    }

    async fn unreferenced_nars(&self, files: &[String]) -> Result<Vec<(String, u64)>, DbError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let files = files.to_vec();
        self.with(move |c| {
            nars::table
                .filter(nars::file.eq_any(files))
                .filter(unreferenced())
                .select((nars::file, nars::size))
                .load::<(String, i64)>(c)
        })
        .await
        .map(sized)
    }

    async fn delete_nars(&self, files: &[String]) -> Result<(), DbError> {
        if files.is_empty() {
            return Ok(());
        }
        let files = files.to_vec();
        self.with(move |c| {
            diesel::delete(nars::table.filter(nars::file.eq_any(files)))
                .execute(c)
                .map(|_| ())
        })
        .await
    }

    async fn nar_references(&self, nar_file: &str) -> Result<u64, DbError> {
        let f = nar_file.to_string();
        self.with(move |c| {
            narinfos::table
                .filter(narinfos::nar_file.eq(f))
                .count()
                .get_result::<i64>(c)
                .map(|n| n.max(0) as u64)
        })
        .await
    }

    async fn nar_size(&self, nar_file: &str) -> Result<Option<u64>, DbError> {
        let f = nar_file.to_string();
        self.with(move |c| {
            nars::table
                .find(f)
                .select(nars::size)
                .first::<i64>(c)
                .optional()
                .map(|s| s.map(|s| s.max(0) as u64))
        })
        .await
    }

    async fn delete_nar(&self, nar_file: &str) -> Result<(), DbError> {
        let f = nar_file.to_string();
        self.with(move |c| diesel::delete(nars::table.find(f)).execute(c).map(|_| ()))
            .await
    }

    async fn insert_task(&self, task: &TaskRecord) -> Result<bool, DbError> {
        let task = task.clone();
        self.with(
            move |c| match diesel::insert_into(tasks::table).values(&task).execute(c) {
                Ok(_) => Ok(true),
                Err(e) if is_unique_violation(&e) => Ok(false),
                Err(e) => Err(e),
            },
        )
        .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        let id = id.to_string();
        self.with(move |c| {
            tasks::table
                .find(id)
                .select(TaskRecord::as_select())
                .first(c)
                .optional()
        })
        .await
    }

    async fn active_task(&self, kind: &str) -> Result<Option<TaskRecord>, DbError> {
        let kind = kind.to_string();
        self.with(move |c| {
            tasks::table
                .filter(tasks::kind.eq(kind))
                .filter(tasks::state.eq_any([PENDING, RUNNING]))
                .order(tasks::created_at.asc())
                .select(TaskRecord::as_select())
                .first(c)
                .optional()
        })
        .await
    }

    async fn claimable_tasks(
        &self,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<TaskRecord>, DbError> {
        self.with(move |c| {
            tasks::table
                .filter(claimable(stale_before))
                .order(tasks::created_at.asc())
                .limit(limit)
                .select(TaskRecord::as_select())
                .load(c)
        })
        .await
    }

    async fn claim_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, DbError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with(move |c| {
            diesel::update(tasks::table.find(id).filter(claimable(stale_before)))
                .set((
                    tasks::state.eq(RUNNING),
                    tasks::owner.eq(owner),
                    tasks::attempts.eq(tasks::attempts + 1),
                    tasks::started_at.eq(now),
                    tasks::heartbeat_at.eq(now),
                ))
                .execute(c)
                .map(|n| n == 1)
        })
        .await
    }

    async fn task_heartbeat(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        progress: Option<String>,
    ) -> Result<bool, DbError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with(move |c| {
            let mine = run_by(&id, &owner);
            match progress {
                Some(p) => diesel::update(mine)
                    .set((tasks::heartbeat_at.eq(now), tasks::progress.eq(p)))
                    .execute(c),
                None => diesel::update(mine)
                    .set(tasks::heartbeat_at.eq(now))
                    .execute(c),
            }
            .map(|n| n == 1)
        })
        .await
    }

    async fn finish_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        outcome: Option<Result<String, String>>,
    ) -> Result<bool, DbError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with(move |c| {
            let mine = run_by(&id, &owner);
            match outcome {
                Some(Ok(result)) => diesel::update(mine)
                    .set((
                        tasks::state.eq(SUCCEEDED),
                        tasks::result.eq(result),
                        tasks::finished_at.eq(now),
                    ))
                    .execute(c),
                Some(Err(error)) => diesel::update(mine)
                    .set((
                        tasks::state.eq(FAILED),
                        tasks::error.eq(error),
                        tasks::finished_at.eq(now),
                    ))
                    .execute(c),
                None => diesel::update(mine)
                    .set((
                        tasks::state.eq(PENDING),
                        tasks::heartbeat_at.eq(None::<i64>),
                    ))
                    .execute(c),
            }
            .map(|n| n == 1)
        })
        .await
    }

    async fn delete_finished_tasks(&self, before: i64) -> Result<u64, DbError> {
        self.with(move |c| {
            diesel::delete(tasks::table.filter(tasks::finished_at.lt(before)))
                .execute(c)
                .map(|n| n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = SqliteDatabase::open(&dir.path().join("db.sqlite"))
            .await
            .expect("open");
        super::super::conformance::run(&db).await;
        super::super::conformance::tasks(&db).await;
        // Reopening applies no migration twice and keeps the data.
        drop(db);
        let db = SqliteDatabase::open(&dir.path().join("db.sqlite"))
            .await
            .expect("reopen");
        assert!(db
            .get_narinfo("p404n8pan3pvrll7pci95yg83idrvkdx")
            .await
            .expect("get")
            .is_some());
    }
}
