//! The admin API's contract: its paths and the JSON of its bodies, written by [`crate::http`]'s
//! handlers and read by [`crate::admin_client`] (the CLI), so the two cannot disagree.
//!
//! A task's `request`, `progress` and `result` are kept as the JSON they were stored as (their
//! shape depends on the task's kind, and a task recorded by another version still shows); the
//! typed readers here give the reports they hold.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::cache::gc::{GcPhases, GcReport};
pub use crate::cache::pins::Pin;
pub use crate::cache::prefetch::{
    PrefetchCounts, PrefetchFailure, PrefetchReport, PrefetchRequest,
};
use crate::db::TaskRecord;
pub use crate::db::{TaskKind, TaskState};

/// Where the admin API is served.
pub const PREFIX: &str = "/api/v1";

/// The path of a task, as a 202's `Location` names it.
pub fn task_path(id: &str) -> String {
    format!("{PREFIX}/tasks/{id}")
}

/// A task as the API shows it. Times are RFC 3339, in milliseconds, in UTC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// 32 hex characters.
    pub id: String,
    pub kind: TaskKind,
    pub state: TaskState,
    /// As submitted: a [`PrefetchRequest`] for a prefetch, `{}` for GC.
    pub request: Value,
    /// A prefetch's [`PrefetchCounts`] while it runs.
    pub progress: Option<Value>,
    /// Once succeeded: a [`PrefetchReport`] or a [`GcReport`], by kind.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The replica running it, or that ran it last.
    pub runner: Option<String>,
    /// How many times it was started (more than once when a runner died).
    pub attempts: i32,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub heartbeat_at: Option<String>,
    pub finished_at: Option<String>,
}

/// `POST` and `DELETE /api/v1/pins`: the store paths to pin or unpin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRequest {
    pub paths: Vec<String>,
}

/// The answer to `POST` and `DELETE /api/v1/pins`: how many pins were added or removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinChange {
    pub changed: u64,
}

/// `GET /api/v1/pins`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinList {
    pub pins: Vec<Pin>,
}

/// The body of every refusal and failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

impl ApiError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
        }
    }
}

impl Task {
    /// A prefetch's report, once it succeeded.
    pub fn prefetch_report(&self) -> Option<PrefetchReport> {
        self.typed(TaskKind::Prefetch, self.result.as_ref())
    }

    /// A GC pass's report, once it succeeded.
    pub fn gc_report(&self) -> Option<GcReport> {
        self.typed(TaskKind::Gc, self.result.as_ref())
    }

    /// A prefetch's progress.
    pub fn prefetch_counts(&self) -> Option<PrefetchCounts> {
        self.typed(TaskKind::Prefetch, self.progress.as_ref())
    }

    fn typed<T: DeserializeOwned>(&self, kind: TaskKind, value: Option<&Value>) -> Option<T> {
        if self.kind != kind {
            return None;
        }
        serde_json::from_value(value?.clone()).ok()
    }
}

impl From<&TaskRecord> for Task {
    fn from(t: &TaskRecord) -> Self {
        Self {
            id: t.id.clone(),
            kind: t.kind,
            state: t.state,
            request: stored_json(Some(&t.request)).unwrap_or(Value::Null),
            progress: stored_json(t.progress.as_deref()),
            result: stored_json(t.result.as_deref()),
            error: t.error.clone(),
            runner: t.owner.clone(),
            attempts: t.attempts,
            created_at: rfc3339(Some(t.created_at)),
            started_at: rfc3339(t.started_at),
            heartbeat_at: rfc3339(t.heartbeat_at),
            finished_at: rfc3339(t.finished_at),
        }
    }
}

fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// A stored JSON column as JSON (a column that somehow is not JSON is shown as a string).
pub fn stored_json(text: Option<&str>) -> Option<Value> {
    text.map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: TaskKind) -> TaskRecord {
        TaskRecord {
            id: "a".repeat(32),
            kind,
            state: TaskState::Succeeded,
            request: r#"{"paths":["/nix/store/x"],"closure":true}"#.into(),
            progress: Some(
                r#"{"paths_known":3,"paths_done":3,"fetched":1,"not_found_or_failed":0}"#.into(),
            ),
            result: Some(
                r#"{"cached":[],"fetched":["/nix/store/x"],"not_found":[],"failed":[]}"#.into(),
            ),
            error: None,
            owner: Some("r1".into()),
            attempts: 1,
            created_at: 1_700_000_000_123,
            started_at: Some(1_700_000_001_000),
            heartbeat_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_task_reads_back_as_written() {
        let task = Task::from(&record(TaskKind::Prefetch));
        let json = serde_json::to_value(&task).expect("json");
        assert_eq!(json["kind"], "prefetch");
        assert_eq!(json["state"], "succeeded");
        assert_eq!(json["runner"], "r1");
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["heartbeat_at"], Value::Null);
        assert_eq!(json["request"]["closure"], true);
        let back: Task = serde_json::from_value(json).expect("back");
        assert_eq!(back, task);
        let report = back.prefetch_report().expect("a prefetch report");
        assert_eq!(report.fetched, ["/nix/store/x"]);
        assert_eq!(back.prefetch_counts().map(|c| c.paths_known), Some(3));
        assert_eq!(back.gc_report(), None, "not a GC task");
    }

    #[test]
    fn unreadable_columns_are_shown_not_dropped() {
        let mut r = record(TaskKind::Gc);
        r.result = Some("not json".into());
        let task = Task::from(&r);
        assert_eq!(task.result, Some(Value::String("not json".into())));
        assert_eq!(task.gc_report(), None);
        assert_eq!(task.prefetch_report(), None, "not a prefetch task");
    }
}
