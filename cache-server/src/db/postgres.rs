//! PostgreSQL through diesel-async (tokio-postgres underneath, no libpq), pooled with bb8.
//! Migrations are embedded and applied through diesel-async's sync wrapper: at start, or — for a
//! serving process that starts while the database is down — as soon as it answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::rows::{
    claimable, orphaned_before, q, run_by, size, sized, sized3, unfetched_before, unreferenced,
    NarInfoRow,
};
use super::schema::{narinfos, nars, tasks};
use super::task_state::{FAILED, PENDING, RUNNING, SUCCEEDED};
use super::{is_unique_violation, Database, DbError, NarInfoRecord, TaskRecord};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The advisory lock key migrations run under (`nixcache` in ASCII).
const MIGRATION_LOCK: i64 = 0x6e69_7863_6163_6865;

pub struct PostgresDatabase {
    pool: Pool<AsyncPgConnection>,
    /// Whether this process has seen the schema migrated; queries wait for it.
    migrated: Arc<AtomicBool>,
}

/// A database URL for messages: without its password.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable database URL)".to_string(),
    }
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

/// Applies pending migrations, one process at a time.
async fn migrate(url: &str) -> Result<(), DbError> {
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
            .run_pending_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| DbError::Migration(e.to_string()));
        let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
        let _ = diesel::RunQueryDsl::execute(diesel::sql_query(unlock), &mut conn);
        applied
    })
    .await
    .map_err(|e| DbError::Connection(e.to_string()))?
}

/// Between tries to migrate a database that was unreachable at start.
const MIGRATE_RETRY: Duration = Duration::from_secs(2);
const MIGRATE_RETRY_MAX: Duration = Duration::from_secs(30);

impl PostgresDatabase {
    fn pool(url: &str, max_connections: u32) -> Pool<AsyncPgConnection> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        Pool::builder()
            .max_size(max_connections)
            .connection_timeout(Duration::from_secs(5))
            // Connections are made when needed, so a database that is down at start-up or later
            // only fails the requests that need it.
            .min_idle(Some(0))
            .build_unchecked(manager)
    }

    /// Connects, applies pending migrations, and keeps a pool of up to `max_connections`; fails
    /// when the database cannot be reached or migrated (for `nixcache migrate`, `gc`, `fsck`).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, DbError> {
        migrate(url).await?;
        Ok(Self {
            pool: Self::pool(url, max_connections),
            migrated: Arc::new(AtomicBool::new(true)),
        })
    }

    /// For a serving process: never fails. Migrates now if the database answers; otherwise keeps
    /// trying in the background, and until it has succeeded every query fails as the database
    /// being unavailable (so hits are served from storage, misses are 404) — a replica starts
    /// and serves during a database outage, and needs no restart when the database returns.
    pub async fn connect(url: &str, max_connections: u32) -> Self {
        let migrated = Arc::new(AtomicBool::new(false));
        let db = Self {
            pool: Self::pool(url, max_connections),
            migrated: migrated.clone(),
        };
        match migrate(url).await {
            Ok(()) => migrated.store(true, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "database unavailable at start; serving what storage has, migrating once it answers");
                let url = url.to_string();
                tokio::spawn(async move {
                    let mut pause = MIGRATE_RETRY;
                    loop {
                        tokio::time::sleep(pause).await;
                        match migrate(&url).await {
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

    async fn conn(
        &self,
    ) -> Result<
        diesel_async::pooled_connection::bb8::PooledConnection<'_, AsyncPgConnection>,
        DbError,
    > {
        if !AtomicBool::load(&self.migrated, Ordering::SeqCst) {
            return Err(DbError::Connection(
                "database not reached since start (its schema is not known to be current)".into(),
            ));
        }
        self.pool
            .get()
            .await
            .map_err(|e| DbError::Connection(e.to_string()))
    }
}

#[async_trait]
impl Database for PostgresDatabase {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>, DbError> {
        let mut c = self.conn().await?;
        narinfos::table
            .find(hash)
            .select(NarInfoRow::as_select())
            .first(&mut c)
            .await
            .optional()
            .map(|r| r.map(Into::into))
            .map_err(q)
    }

    async fn put_narinfo(&self, r: &NarInfoRecord, now: i64) -> Result<(), DbError> {
        let row = NarInfoRow::from(r);
        let mut c = self.conn().await?;
        diesel::insert_into(narinfos::table)
            .values((
                &row,
                narinfos::created_at.eq(now),
                narinfos::last_accessed_at.eq(now),
            ))
            .on_conflict(narinfos::hash)
            .do_update()
            .set((&row, narinfos::last_accessed_at.eq(now)))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn narinfo_for_nar(&self, nar_file: &str) -> Result<Option<NarInfoRecord>, DbError> {
        let mut c = self.conn().await?;
        narinfos::table
            .filter(narinfos::nar_file.eq(nar_file))
            .select(NarInfoRow::as_select())
            .first(&mut c)
            .await
            .optional()
            .map(|r| r.map(Into::into))
            .map_err(q)
    }

    async fn put_nar(&self, file: &str, nar_size: u64, now: i64) -> Result<(), DbError> {
        let mut c = self.conn().await?;
        diesel::insert_into(nars::table)
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
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn touch(&self, hashes: &[String], files: &[String], now: i64) -> Result<(), DbError> {
        if hashes.is_empty() && files.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        if !hashes.is_empty() {
            diesel::update(narinfos::table.filter(narinfos::hash.eq_any(hashes)))
                .set(narinfos::last_accessed_at.eq(now))
                .execute(&mut c)
                .await
                .map_err(q)?;
        }
        if !files.is_empty() {
            diesel::update(nars::table.filter(nars::file.eq_any(files)))
                .set(nars::last_accessed_at.eq(now))
                .execute(&mut c)
                .await
                .map_err(q)?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), DbError> {
        let mut c = self.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn list_nars(&self) -> Result<Vec<(String, u64)>, DbError> {
        let mut c = self.conn().await?;
        nars::table
            .order(nars::file.asc())
            .select((nars::file, nars::size))
            .load::<(String, i64)>(&mut c)
            .await
            .map(sized)
            .map_err(q)
    }

    async fn nar_count(&self) -> Result<u64, DbError> {
        let mut c = self.conn().await?;
        nars::table
            .count()
            .get_result::<i64>(&mut c)
            .await
            .map(|n| n.max(0) as u64)
            .map_err(q)
    }

    async fn total_nar_size(&self) -> Result<u64, DbError> {
        let mut c = self.conn().await?;
        // SUM over BIGINT is NUMERIC in PostgreSQL: cast back for diesel.
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM nars)",
        ))
        .get_result::<i64>(&mut c)
        .await
        .map(|s| s.max(0) as u64)
        .map_err(q)
    }

    async fn lru_narinfos(&self, limit: i64) -> Result<Vec<(String, String, u64)>, DbError> {
        let mut c = self.conn().await?;
        narinfos::table
            .inner_join(nars::table.on(nars::file.eq(narinfos::nar_file)))
            .order(narinfos::last_accessed_at.asc())
            .select((narinfos::hash, narinfos::nar_file, nars::size))
            .limit(limit)
            .load::<(String, String, i64)>(&mut c)
            .await
            .map(sized3)
            .map_err(q)
    }

    async fn orphan_nars(&self, before: i64, limit: i64) -> Result<Vec<(String, u64)>, DbError> {
        let mut c = self.conn().await?;
        nars::table
            .filter(orphaned_before(before))
            .order(nars::last_accessed_at.asc())
            .select((nars::file, nars::size))
            .limit(limit)
            .load::<(String, i64)>(&mut c)
            .await
            .map(sized)
            .map_err(q)
    }

    async fn unfetched_narinfos(&self, before: i64, limit: i64) -> Result<Vec<String>, DbError> {
        let mut c = self.conn().await?;
        narinfos::table
            .filter(unfetched_before(before))
            .order(narinfos::last_accessed_at.asc())
            .select(narinfos::hash)
            .limit(limit)
            .load(&mut c)
            .await
            .map_err(q)
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<(), DbError> {
        let mut c = self.conn().await?;
        diesel::delete(narinfos::table.find(hash))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn delete_narinfos(&self, hashes: &[String]) -> Result<(), DbError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        diesel::delete(narinfos::table.filter(narinfos::hash.eq_any(hashes)))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn unreferenced_nars(&self, files: &[String]) -> Result<Vec<(String, u64)>, DbError> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        nars::table
            .filter(nars::file.eq_any(files))
            .filter(unreferenced())
            .select((nars::file, nars::size))
            .load::<(String, i64)>(&mut c)
            .await
            .map(sized)
            .map_err(q)
    }

    async fn delete_nars(&self, files: &[String]) -> Result<(), DbError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        diesel::delete(nars::table.filter(nars::file.eq_any(files)))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn nar_references(&self, nar_file: &str) -> Result<u64, DbError> {
        let mut c = self.conn().await?;
        narinfos::table
            .filter(narinfos::nar_file.eq(nar_file))
            .count()
            .get_result::<i64>(&mut c)
            .await
            .map(|n| n.max(0) as u64)
            .map_err(q)
    }

    async fn nar_size(&self, nar_file: &str) -> Result<Option<u64>, DbError> {
        let mut c = self.conn().await?;
        nars::table
            .find(nar_file)
            .select(nars::size)
            .first::<i64>(&mut c)
            .await
            .optional()
            .map(|s| s.map(|s| s.max(0) as u64))
            .map_err(q)
    }

    async fn delete_nar(&self, nar_file: &str) -> Result<(), DbError> {
        let mut c = self.conn().await?;
        diesel::delete(nars::table.find(nar_file))
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(q)
    }

    async fn insert_task(&self, task: &TaskRecord) -> Result<bool, DbError> {
        let mut c = self.conn().await?;
        match diesel::insert_into(tasks::table)
            .values(task)
            .execute(&mut c)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(q(e)),
        }
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        let mut c = self.conn().await?;
        tasks::table
            .find(id)
            .select(TaskRecord::as_select())
            .first(&mut c)
            .await
            .optional()
            .map_err(q)
    }

    async fn active_task(&self, kind: &str) -> Result<Option<TaskRecord>, DbError> {
        let mut c = self.conn().await?;
        tasks::table
            .filter(tasks::kind.eq(kind))
            .filter(tasks::state.eq_any([PENDING, RUNNING]))
            .order(tasks::created_at.asc())
            .select(TaskRecord::as_select())
            .first(&mut c)
            .await
            .optional()
            .map_err(q)
    }

    async fn claimable_tasks(
        &self,
        stale_before: i64,
        limit: i64,
    ) -> Result<Vec<TaskRecord>, DbError> {
        let mut c = self.conn().await?;
        tasks::table
            .filter(claimable(stale_before))
            .order(tasks::created_at.asc())
            .limit(limit)
            .select(TaskRecord::as_select())
            .load(&mut c)
            .await
            .map_err(q)
    }

    async fn claim_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool, DbError> {
        let mut c = self.conn().await?;
        diesel::update(tasks::table.find(id).filter(claimable(stale_before)))
            .set((
                tasks::state.eq(RUNNING),
                tasks::owner.eq(owner),
                tasks::attempts.eq(tasks::attempts + 1),
                tasks::started_at.eq(now),
                tasks::heartbeat_at.eq(now),
            ))
            .execute(&mut c)
            .await
            .map(|n| n == 1)
            .map_err(q)
    }

    async fn task_heartbeat(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        progress: Option<String>,
    ) -> Result<bool, DbError> {
        let mut c = self.conn().await?;
        let mine = run_by(id, owner);
        match progress {
            Some(p) => {
                diesel::update(mine)
                    .set((tasks::heartbeat_at.eq(now), tasks::progress.eq(p)))
                    .execute(&mut c)
                    .await
            }
            None => {
                diesel::update(mine)
                    .set(tasks::heartbeat_at.eq(now))
                    .execute(&mut c)
                    .await
            }
        }
        .map(|n| n == 1)
        .map_err(q)
    }

    async fn finish_task(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        outcome: Option<Result<String, String>>,
    ) -> Result<bool, DbError> {
        let mut c = self.conn().await?;
        let mine = run_by(id, owner);
        match outcome {
            Some(Ok(result)) => {
                diesel::update(mine)
                    .set((
                        tasks::state.eq(SUCCEEDED),
                        tasks::result.eq(result),
                        tasks::finished_at.eq(now),
                    ))
                    .execute(&mut c)
                    .await
            }
            Some(Err(error)) => {
                diesel::update(mine)
                    .set((
                        tasks::state.eq(FAILED),
                        tasks::error.eq(error),
                        tasks::finished_at.eq(now),
                    ))
                    .execute(&mut c)
                    .await
            }
            None => {
                diesel::update(mine)
                    .set((
                        tasks::state.eq(PENDING),
                        tasks::heartbeat_at.eq(None::<i64>),
                    ))
                    .execute(&mut c)
                    .await
            }
        }
        .map(|n| n == 1)
        .map_err(q)
    }

    async fn delete_finished_tasks(&self, before: i64) -> Result<u64, DbError> {
        let mut c = self.conn().await?;
        diesel::delete(tasks::table.filter(tasks::finished_at.lt(before)))
            .execute(&mut c)
            .await
            .map(|n| n as u64)
            .map_err(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixcache_tests::postgres::Postgres;

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let pg = Postgres::start();
        let db = PostgresDatabase::open(&pg.url(), 4).await.expect("open");
        super::super::conformance::run(&db).await;
        super::super::conformance::tasks(&db).await;
        // Migrations are applied once: opening again is fine and keeps the data.
        let again = PostgresDatabase::open(&pg.url(), 4).await.expect("reopen");
        assert!(again
            .get_narinfo("p404n8pan3pvrll7pci95yg83idrvkdx")
            .await
            .expect("get")
            .is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn survives_the_server_going_away_and_coming_back() {
        let pg = Postgres::start();
        let db = PostgresDatabase::open(&pg.url(), 2).await.expect("open");
        db.ping().await.expect("ping");
        pg.stop();
        assert!(db.ping().await.is_err(), "ping with the server stopped");
        assert!(db
            .get_narinfo("p404n8pan3pvrll7pci95yg83idrvkdx")
            .await
            .is_err());
        pg.resume();
        let start = std::time::Instant::now();
        while db.ping().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no recovery after the server came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        super::super::conformance::run(&db).await;
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
