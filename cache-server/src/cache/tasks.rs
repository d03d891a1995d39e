//! Tasks: admin work (prefetches asked for with `Prefer: respond-async`, and every GC request)
//! recorded in the database, so that any replica reports it and any replica can run it.
//!
//! Every replica runs a worker that looks for claimable tasks: pending ones, and running ones whose
//! runner has gone silent. It takes the task's lock (`task:<id>`, the same lock service as NAR
//! downloads) and then claims the row with a conditional update, so one replica runs a task at a
//! time even if the lock service falls back to in-process locks. While it runs, the runner extends
//! the lock and writes a heartbeat with its progress; if it dies, both lapse after the lock TTL and
//! another replica claims the task again and runs it from the start (prefetching and GC are both
//! safe to repeat). A runner whose heartbeat finds the task taken over stops. A replica shutting
//! down hands its running tasks back as pending.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::prefetch::{PrefetchProgress, PrefetchRequest};
use super::Cache;
use crate::config::{GcConfig, TaskConfig};
use crate::db::{Database, DbError, TaskKind, TaskRecord, TaskState};
use crate::lock::Guard;
use crate::nix::StorePath;
use crate::util::{random_hex, unix_millis};

/// Tasks one replica runs at once; more wait for it or are taken by other replicas.
const MAX_RUNNING: usize = 4;
/// Longest time between a runner's heartbeats (shorter with a short lock TTL).
const HEARTBEAT_MAX: Duration = Duration::from_secs(2);
/// How often finished tasks are checked against the retention (more often for a short one).
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct TaskSettings {
    /// This replica's name in the tasks it runs.
    pub replica: String,
    /// How often the worker looks for tasks (it is also woken when this replica records one).
    pub poll: Duration,
    /// How long finished tasks are kept.
    pub tasks: TaskConfig,
    /// What GC tasks collect down to (without a size limit they fail), and their grace.
    pub gc: GcConfig,
    /// The lock TTL: how long a silent runner keeps its task.
    pub lock_ttl: Duration,
}

pub struct Tasks {
    /// Where tasks are recorded, claimed and finished.
    store: Arc<dyn Database>,
    /// The work tasks do (prefetch, GC) and the locks they run under.
    cache: Arc<Cache>,
    /// `nixcache_tasks_total` and `nixcache_tasks_running`.
    events: IntCounterVec,
    running_gauge: IntGauge,
    settings: TaskSettings,
    wake: Notify,
    /// Ids of the tasks this replica runs now.
    running: Mutex<HashSet<String>>,
}

/// Whether a task ended, or how it was left.
enum Ending {
    Done(Result<String, String>),
    /// Another replica took it over; nothing more to write.
    TakenOver,
    /// This replica is stopping: back to pending.
    Handed,
}

impl Tasks {
    pub fn new(cache: Arc<Cache>, settings: TaskSettings) -> Arc<Self> {
        Arc::new(Self {
            store: cache.database(),
            events: cache.metrics().tasks.clone(),
            running_gauge: cache.metrics().tasks_running.clone(),
            cache,
            settings,
            wake: Notify::new(),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// A replica name for task records: host and process, unique among running replicas.
    pub fn default_replica_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host = if host.is_empty() { "nixcache" } else { &host };
        format!("{host}/{}", std::process::id())
    }

    fn new_record(kind: TaskKind, request: String) -> TaskRecord {
        TaskRecord {
            id: random_hex::<16>(),
            kind,
            state: TaskState::Pending,
            request,
            progress: None,
            result: None,
            error: None,
            owner: None,
            attempts: 0,
            created_at: unix_millis(),
            started_at: None,
            heartbeat_at: None,
            finished_at: None,
        }
    }

    /// Records a prefetch task.
    pub async fn submit_prefetch(&self, request: &PrefetchRequest) -> Result<TaskRecord, DbError> {
        let body = serde_json::to_string(request).map_err(|e| DbError::Query(e.to_string()))?;
        let task = Self::new_record(TaskKind::Prefetch, body);
        self.store.insert_task(&task).await?;
        self.wake.notify_one();
        Ok(task)
    }

    /// The GC task: the one pending or running (from any replica), or a new one.
    pub async fn submit_gc(&self) -> Result<TaskRecord, DbError> {
        // The insert loses to a concurrent one only while that task is active; it can finish
        // between the two statements, hence a few rounds.
        for _ in 0..5 {
            if let Some(active) = self.store.active_task(TaskKind::Gc).await? {
                return Ok(active);
            }
            let task = Self::new_record(TaskKind::Gc, "{}".into());
            if self.store.insert_task(&task).await? {
                self.wake.notify_one();
                return Ok(task);
            }
        }
        Err(DbError::Query(
            "GC tasks kept finishing while a new one was being recorded".into(),
        ))
    }

    pub async fn get(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        self.store.get_task(id).await
    }

    /// Waits until the task has finished and returns it (`None` if it disappeared).
    pub async fn wait(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        let mut errors = 0;
        loop {
            match self.store.get_task(id).await {
                Ok(Some(t)) if t.state.is_finished() => return Ok(Some(t)),
                Ok(None) => return Ok(None),
                Ok(Some(_)) => errors = 0,
                // A database that blinks does not end the wait; one that stays away does.
                Err(e) if errors >= 50 => return Err(e),
                Err(_) => errors += 1,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The worker: runs until `stop`, then hands back the tasks it runs.
    pub async fn work(self: Arc<Self>, stop: CancellationToken) {
        let mut last_cleanup: Option<tokio::time::Instant> = None;
        let mut running = tokio::task::JoinSet::new();
        // Said once when the database stops answering, and once when it is back.
        let mut unreachable = false;
        loop {
            let cleanup_every = CLEANUP_INTERVAL.min(self.settings.tasks.retention / 2);
            if last_cleanup.is_none_or(|t| t.elapsed() >= cleanup_every) {
                last_cleanup = Some(tokio::time::Instant::now());
                let before = unix_millis() - self.settings.tasks.retention.as_millis() as i64;
                match self.store.delete_finished_tasks(before).await {
                    Ok(0) => {}
                    Ok(n) => info!(tasks = n, "forgot finished tasks past their retention"),
                    Err(e) => warn!(error = %e, "could not forget old tasks"),
                }
            }
            if running.len() < MAX_RUNNING {
                match self.claim_some(&mut running, &stop).await {
                    Ok(()) if unreachable => {
                        info!("the task table answers again");
                        unreachable = false;
                    }
                    Ok(()) => {}
                    Err(e) if !unreachable => {
                        warn!(error = %e, "cannot look for tasks; retrying every poll");
                        unreachable = true;
                    }
                    Err(_) => {}
                }
            }
            while running.try_join_next().is_some() {}
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        // The runners see `stop` too and hand their tasks back.
        while running.join_next().await.is_some() {}
    }

    fn stale_before(&self) -> i64 {
        unix_millis() - self.settings.lock_ttl.as_millis() as i64
    }

    async fn claim_some(
        self: &Arc<Self>,
        running: &mut tokio::task::JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<(), DbError> {
        let candidates = self
            .cache
            .db
            .claimable_tasks(self.stale_before(), (MAX_RUNNING * 4) as i64)
            .await?;
        for task in candidates {
            if running.len() >= MAX_RUNNING {
                break;
            }
            if self.lock_running().contains(&task.id) {
                continue;
            }
            let ttl = self.settings.lock_ttl;
            let guard = match self
                .cache
                .acquire(crate::lock::LockName::Task(&task.id), ttl, Duration::ZERO)
                .await
            {
                Ok(Some(g)) => g,
                // Another replica runs it.
                Ok(None) => continue,
                Err(e) => {
                    // The lock service reports its own outages; tasks wait for it.
                    tracing::debug!(error = %e, "cannot lock a task");
                    return Ok(());
                }
            };
            let now = unix_millis();
            match self
                .cache
                .db
                .claim_task(&task.id, &self.settings.replica, now, self.stale_before())
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(e),
            }
            if task.attempts > 0 {
                info!(task = %task.id, kind = %task.kind, previous_runner = task.owner.as_deref().unwrap_or("?"), "taking over a task");
            } else {
                info!(task = %task.id, kind = %task.kind, "running a task");
            }
            self.event(&task, "claimed");
            self.lock_running().insert(task.id.clone());
            running.spawn(self.clone().run(task, guard, stop.clone()));
        }
        Ok(())
    }

    fn event(&self, task: &TaskRecord, event: &str) {
        self.events
            .with_label_values(&[task.kind.as_str(), event])
            .inc();
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a claimed task to its end, with heartbeats.
    async fn run(self: Arc<Self>, task: TaskRecord, guard: Guard, stop: CancellationToken) {
        let ttl = self.settings.lock_ttl;
        self.running_gauge.inc();
        let progress = PrefetchProgress::default();
        let work = self.execute(&task, &progress);
        let mut work = std::pin::pin!(work);
        // Often enough to keep the lock, and for pollers to see progress move.
        let mut beat = tokio::time::interval((ttl / 3).min(HEARTBEAT_MAX));
        beat.tick().await;
        let ending = loop {
            tokio::select! {
                outcome = &mut work => break Ending::Done(outcome),
                _ = stop.cancelled() => break Ending::Handed,
                _ = beat.tick() => {
                    if let Err(e) = guard.extend(ttl).await {
                        warn!(task = %task.id, error = %e, "could not extend a task's lock");
                    }
                    let shown = (task.kind == TaskKind::Prefetch)
                        .then(|| progress.snapshot())
                        .and_then(|counts| serde_json::to_string(&counts).ok());
                    match self.store.task_heartbeat(&task.id, &self.settings.replica, unix_millis(), shown).await {
                        Ok(true) => {}
                        Ok(false) => break Ending::TakenOver,
                        Err(e) => warn!(task = %task.id, error = %e, "could not record a task's heartbeat"),
                    }
                }
            }
        };
        let event = match &ending {
            Ending::Done(Ok(_)) => "succeeded",
            Ending::Done(Err(_)) => "failed",
            Ending::TakenOver => "taken_over",
            Ending::Handed => "handed_back",
        };
        self.event(&task, event);
        let outcome = match ending {
            Ending::TakenOver => {
                warn!(task = %task.id, "another replica took this task over; stopped");
                None
            }
            Ending::Handed => {
                info!(task = %task.id, "stopping: the task goes back to pending");
                Some(None)
            }
            Ending::Done(outcome) => {
                match &outcome {
                    Ok(_) => info!(task = %task.id, kind = %task.kind, "task succeeded"),
                    Err(e) => warn!(task = %task.id, kind = %task.kind, error = %e, "task failed"),
                }
                Some(Some(outcome))
            }
        };
        if let Some(outcome) = outcome {
            self.record_end(&task.id, outcome).await;
        }
        self.lock_running().remove(&task.id);
        self.running_gauge.dec();
        drop(guard);
    }

    /// Writes a task's end, retrying while the database is away (a task left running is taken
    /// over and run again once its heartbeat is stale, so giving up loses no work, only time).
    async fn record_end(&self, id: &str, outcome: Option<Result<String, String>>) {
        for attempt in 0..20u32 {
            match self
                .cache
                .db
                .finish_task(id, &self.settings.replica, unix_millis(), outcome.clone())
                .await
            {
                Ok(true) => return,
                Ok(false) => {
                    warn!(task = %id, "the task was taken over before it could be recorded as ended");
                    return;
                }
                Err(e) => {
                    warn!(task = %id, error = %e, attempt, "could not record a task's end");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The work itself: the result as JSON, or why it failed.
    async fn execute(
        &self,
        task: &TaskRecord,
        progress: &PrefetchProgress,
    ) -> Result<String, String> {
        match task.kind {
            TaskKind::Prefetch => {
                let request: PrefetchRequest = serde_json::from_str(&task.request)
                    .map_err(|e| format!("unreadable request: {e}"))?;
                let paths = request
                    .paths
                    .iter()
                    .map(|p| StorePath::parse(p).map_err(|e| format!("{p}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let report = self.cache.prefetch(paths, request.closure, progress).await;
                serde_json::to_string(&report).map_err(|e| e.to_string())
            }
            TaskKind::Gc => {
                let gc = &self.settings.gc;
                if !gc.collects() {
                    return Err(
                        "this replica has no limit (--max-size, --max-age) to collect down to"
                            .into(),
                    );
                }
                let report = self
                    .cache
                    .gc(
                        gc.max_size,
                        gc.max_age,
                        gc.grace,
                        Duration::from_secs(60),
                        Duration::ZERO,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::to_string(&report).map_err(|e| e.to_string())
            }
        }
    }
}
