//! Rows, column types and query fragments (the schema is the same on both backends).

use diesel::prelude::*;

use super::schema::{narinfos, nars, tasks};
use super::{DbError, NarInfoRecord, TaskState};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = narinfos, treat_none_as_null = true)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(super) struct NarInfoRow {
    hash: String,
    store_path: String,
    nar_file: String,
    upstream_nar_url: String,
    narinfo: String,
    nar_size: i64,
    file_size: Option<i64>,
}

impl From<NarInfoRow> for NarInfoRecord {
    fn from(r: NarInfoRow) -> Self {
        Self {
            hash: r.hash,
            store_path: r.store_path,
            nar_file: r.nar_file,
            upstream_nar_url: r.upstream_nar_url,
            narinfo: r.narinfo,
            nar_size: r.nar_size.max(0) as u64,
            file_size: r.file_size.map(|s| s.max(0) as u64),
        }
    }
}

impl From<&NarInfoRecord> for NarInfoRow {
    fn from(r: &NarInfoRecord) -> Self {
        Self {
            hash: r.hash.clone(),
            store_path: r.store_path.clone(),
            nar_file: r.nar_file.clone(),
            upstream_nar_url: r.upstream_nar_url.clone(),
            narinfo: r.narinfo.clone(),
            nar_size: size(r.nar_size),
            file_size: r.file_size.map(size),
        }
    }
}

/// A query's error, with its causes (e.g. which value of a column could not be read).
pub(super) fn q(e: diesel::result::Error) -> DbError {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    DbError::Query(text)
}

/// Sizes are unsigned here and BIGINT in SQL.
pub(super) fn size(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sizes read as BIGINT, as the unsigned sizes they are.
pub(super) fn sized(rows: Vec<(String, i64)>) -> Vec<(String, u64)> {
    rows.into_iter()
        .map(|(f, s)| (f, s.max(0) as u64))
        .collect()
}

/// Recorded NARs no narinfo names.
#[diesel::dsl::auto_type]
pub(super) fn unreferenced() -> _ {
    let named = narinfos::table.filter(narinfos::nar_file.eq(nars::file));
    diesel::dsl::not(diesel::dsl::exists(named))
}

/// Recorded NARs no narinfo names, last used before `before`.
#[diesel::dsl::auto_type]
pub(super) fn orphaned_before(before: i64) -> _ {
    unreferenced().and(nars::last_accessed_at.lt(before))
}

/// Narinfos whose NAR was never stored, last used before `before`.
#[diesel::dsl::auto_type]
pub(super) fn unfetched_before(before: i64) -> _ {
    let stored = nars::table.filter(nars::file.eq(narinfos::nar_file));
    diesel::dsl::not(diesel::dsl::exists(stored)).and(narinfos::last_accessed_at.lt(before))
}

/// Tasks a runner may take: pending ones, and running ones not heard of since `stale_before`.
#[diesel::dsl::auto_type]
pub(super) fn claimable(stale_before: i64) -> _ {
    let pending: TaskState = TaskState::Pending;
    let running: TaskState = TaskState::Running;
    tasks::state.eq(pending).or(tasks::state
        .eq(running)
        .and(tasks::heartbeat_at.lt(stale_before)))
}

/// The task `id` while `owner` runs it.
#[diesel::dsl::auto_type]
pub(super) fn run_by<'a>(id: &'a str, owner: &'a str) -> _ {
    let running: TaskState = TaskState::Running;
    tasks::table
        .find(id)
        .filter(tasks::owner.eq(owner))
        .filter(tasks::state.eq(running))
}

/// Stores an enum with `as_str` as TEXT on any backend, and reads it back; an unknown value is an
/// error, not a default.
macro_rules! text_enum {
    ($ty:ty) => {
        impl<DB> diesel::serialize::ToSql<diesel::sql_types::Text, DB> for $ty
        where
            DB: diesel::backend::Backend,
            str: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
        {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, DB>,
            ) -> diesel::serialize::Result {
                use diesel::serialize::ToSql;
                ToSql::<diesel::sql_types::Text, DB>::to_sql(self.as_str(), out)
            }
        }

        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $ty
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                use diesel::deserialize::FromSql;
                let text: String = FromSql::<diesel::sql_types::Text, DB>::from_sql(bytes)?;
                <$ty>::ALL
                    .into_iter()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| format!("unknown {} {text:?}", stringify!($ty)).into())
            }
        }
    };
}
pub(super) use text_enum;
