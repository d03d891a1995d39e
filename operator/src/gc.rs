//! GC as a CronJob-equivalent, pure: from the schedule, the clock, what status remembers and the
//! cache's GC Jobs, decide whether a tick is due, which finished Jobs to delete and what status
//! says. The reconciler does the talking (`reconcile::gc`).

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
pub use nixcache_settings::schedule::parse_schedule;
use nixcache_settings::schedule::Cron;

use crate::crd::{GcSpec, GcStatus};
use crate::resources::SCHEDULED_ANNOTATION;
use crate::time::{parse_rfc3339, rfc3339};

// Schedules are parsed as the server's `--gc-schedule` is: `parse_schedule`.

/// The latest tick in `(after, now]`, if any (UTC).
pub fn latest_tick(schedule: &Cron, after: i64, now: i64) -> Option<i64> {
    let now_t = DateTime::<Utc>::from_timestamp(now, 0)?;
    let t = schedule.find_previous_occurrence(&now_t, true).ok()?;
    (t.timestamp() > after).then_some(t.timestamp())
}

/// The first tick after `now`.
pub fn next_tick(schedule: &Cron, now: i64) -> Option<i64> {
    let now_t = DateTime::<Utc>::from_timestamp(now, 0)?;
    schedule
        .find_next_occurrence(&now_t, false)
        .ok()
        .map(|t| t.timestamp())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Active,
    Succeeded,
    Failed,
}

impl JobState {
    fn word(self) -> &'static str {
        match self {
            JobState::Active => "Running",
            JobState::Succeeded => "Succeeded",
            JobState::Failed => "Failed",
        }
    }
}

/// A GC Job as the decision needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcJob {
    pub name: String,
    pub scheduled: i64,
    pub state: JobState,
    /// When it finished (completion or failure condition), if it did.
    pub finished: Option<i64>,
    /// Why it failed (the Failed condition's reason and message), if it did.
    pub failure: Option<String>,
}

impl GcJob {
    pub fn from_job(job: &Job) -> Option<GcJob> {
        let scheduled = job
            .annotations()
            .get(SCHEDULED_ANNOTATION)
            .and_then(|s| parse_rfc3339(s))?;
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let finished_by = |type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .map(|c| {
                    c.last_transition_time
                        .as_ref()
                        .map(|t| t.0.as_second())
                        .unwrap_or(scheduled)
                })
        };
        let failure = conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or("Failed"),
                    c.message.as_deref().unwrap_or_default()
                )
            });
        let (state, finished) = if let Some(t) = finished_by("Complete") {
            let completion = job
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .map(|t| t.0.as_second());
            (JobState::Succeeded, Some(completion.unwrap_or(t)))
        } else if let Some(t) = finished_by("Failed") {
            (JobState::Failed, Some(t))
        } else {
            (JobState::Active, None)
        };
        Some(GcJob {
            name: job.name_any(),
            scheduled,
            state,
            finished,
            failure,
        })
    }
}

/// The newest finished Job's failure, if it failed: what status reports until a run succeeds.
pub fn last_failure(jobs: &[GcJob]) -> Option<String> {
    let newest = jobs
        .iter()
        .filter(|j| j.state != JobState::Active)
        .max_by_key(|j| (j.scheduled, j.name.clone()))?;
    (newest.state == JobState::Failed).then(|| {
        format!(
            "GC Job {} failed: {}",
            newest.name,
            newest.failure.as_deref().unwrap_or("no reason given")
        )
    })
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct GcPlan {
    /// Start a Job for this tick.
    pub start: Option<i64>,
    /// A tick came while a run was still active: it is skipped, not queued.
    pub skipped: Option<i64>,
    /// Finished Jobs beyond the history limits, oldest first.
    pub delete: Vec<String>,
    pub status: GcStatus,
    /// When to look again (the next tick), seconds from now.
    pub requeue_after: Option<i64>,
}

/// Decides one step. `last_handled` is the last tick started or skipped (from status); before the
/// first, ticks count from the cache's creation.
pub fn plan(
    spec: &GcSpec,
    schedule: &Cron,
    last_handled: Option<i64>,
    created: i64,
    now: i64,
    jobs: &[GcJob],
) -> GcPlan {
    let since = last_handled.unwrap_or(created);
    let mut jobs = jobs.to_vec();
    jobs.sort_by_key(|j| (j.scheduled, j.name.clone()));
    let active = jobs.iter().rev().find(|j| j.state == JobState::Active);
    let due = latest_tick(schedule, since, now);
    let (start, skipped) = match (due, active) {
        // A Job already made for this tick (a retried reconcile) is not a reason to skip it.
        (Some(t), Some(a)) if a.scheduled != t => (None, Some(t)),
        (Some(t), _) => (Some(t), None),
        (None, _) => (None, None),
    };

    let mut delete = Vec::new();
    for (state, limit) in [
        (JobState::Succeeded, spec.successful_jobs_history_limit),
        (JobState::Failed, spec.failed_jobs_history_limit),
    ] {
        let finished: Vec<&GcJob> = jobs.iter().filter(|j| j.state == state).collect();
        let extra = finished.len().saturating_sub(limit.max(0) as usize);
        delete.extend(finished.iter().take(extra).map(|j| j.name.clone()));
    }

    let last_schedule = start
        .or(skipped)
        .or(last_handled.max(jobs.last().map(|j| j.scheduled)));
    let last_success = jobs
        .iter()
        .filter(|j| j.state == JobState::Succeeded)
        .filter_map(|j| j.finished)
        .max();
    // What became of the latest tick: its own Job's state, or, when it has none because a run
    // was still going, that it was skipped; once that run is over, the newest run's result.
    let own_job = last_schedule.and_then(|t| jobs.iter().find(|j| j.scheduled == t));
    let last_result = match (own_job, active, jobs.last()) {
        (Some(j), _, _) => Some(format!("{} {}", j.state.word(), j.name)),
        (None, Some(a), _) if start.is_none() => {
            Some(format!("Skipped: {} is still running", a.name))
        }
        (_, _, Some(j)) => Some(format!("{} {}", j.state.word(), j.name)),
        _ => None,
    };
    let status = GcStatus {
        last_schedule_time: last_schedule.map(rfc3339),
        last_success_time: last_success.map(rfc3339),
        last_result,
        active_job: active.map(|a| a.name.clone()),
        mode: None,
    };
    GcPlan {
        start,
        skipped,
        delete,
        status,
        requeue_after: next_tick(schedule, now).map(|t| (t - now).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GcSpec {
        GcSpec {
            max_size: "1G".into(),
            schedule: "0 * * * *".into(),
            max_age: None,
            successful_jobs_history_limit: 2,
            failed_jobs_history_limit: 1,
        }
    }

    const H: i64 = 3600;
    const T0: i64 = 1_700_000_000 / H * H; // on the hour

    fn job(n: i64, state: JobState) -> GcJob {
        GcJob {
            name: format!("c-gc-{n}"),
            scheduled: T0 + n * H,
            state,
            finished: (state != JobState::Active).then_some(T0 + n * H + 60),
            failure: (state == JobState::Failed).then(|| {
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            }),
        }
    }

    #[test]
    fn schedules_in_both_cron_dialects() {
        let hourly = parse_schedule("0 * * * *").expect("5 fields");
        assert_eq!(latest_tick(&hourly, T0 - 1, T0 + 10), Some(T0));
        assert_eq!(latest_tick(&hourly, T0, T0 + 10), None, "already handled");
        assert_eq!(next_tick(&hourly, T0), Some(T0 + H));
        let every5s = parse_schedule("*/5 * * * * *").expect("6 fields");
        assert_eq!(next_tick(&every5s, T0 + 1), Some(T0 + 5));
        assert!(parse_schedule("every hour").is_err());
    }

    #[test]
    fn a_due_tick_starts_one_job_and_then_waits_for_the_next() {
        let s = parse_schedule(&spec().schedule).expect("cron");
        let p = plan(&spec(), &s, None, T0 - 10, T0 + 5, &[]);
        assert_eq!(p.start, Some(T0));
        assert_eq!(p.requeue_after, Some(H - 5));
        assert_eq!(p.status.last_schedule_time, Some(rfc3339(T0)));
        // The next look, with the Job made and status written: nothing to do.
        let p = plan(
            &spec(),
            &s,
            Some(T0),
            T0 - 10,
            T0 + 30,
            &[job(0, JobState::Active)],
        );
        assert_eq!((p.start, p.skipped), (None, None));
        assert_eq!(p.status.active_job.as_deref(), Some("c-gc-0"));
        assert_eq!(p.status.last_result.as_deref(), Some("Running c-gc-0"));
    }

    #[test]
    fn a_status_write_lost_after_the_job_was_made_retries_the_same_tick() {
        let s = parse_schedule(&spec().schedule).expect("cron");
        let p = plan(
            &spec(),
            &s,
            None,
            T0 - 10,
            T0 + 5,
            &[job(0, JobState::Active)],
        );
        assert_eq!(p.start, Some(T0), "same name: the create finds it exists");
    }

    #[test]
    fn no_overlap_a_tick_during_a_run_is_skipped() {
        let s = parse_schedule(&spec().schedule).expect("cron");
        let p = plan(
            &spec(),
            &s,
            Some(T0),
            T0 - 10,
            T0 + H + 1,
            &[job(0, JobState::Active)],
        );
        assert_eq!((p.start, p.skipped), (None, Some(T0 + H)));
        assert_eq!(p.status.last_schedule_time, Some(rfc3339(T0 + H)));
        // Looked at again before the next tick, it still says so.
        let again = plan(
            &spec(),
            &s,
            Some(T0 + H),
            T0 - 10,
            T0 + H + 30,
            &[job(0, JobState::Active)],
        );
        assert_eq!(again.status.last_result, p.status.last_result);
        assert!(p
            .status
            .last_result
            .as_deref()
            .is_some_and(|r| r.starts_with("Skipped")));
        // Later, the run over: the skipped tick stays skipped; the status does not go back.
        let p = plan(
            &spec(),
            &s,
            Some(T0 + H),
            T0 - 10,
            T0 + H + 60,
            &[job(0, JobState::Succeeded)],
        );
        assert_eq!((p.start, p.skipped), (None, None));
        assert_eq!(p.status.last_schedule_time, Some(rfc3339(T0 + H)));
    }

    #[test]
    fn history_is_bounded_and_status_follows_the_jobs() {
        let s = parse_schedule(&spec().schedule).expect("cron");
        let jobs = [
            job(0, JobState::Succeeded),
            job(1, JobState::Failed),
            job(2, JobState::Succeeded),
            job(3, JobState::Failed),
            job(4, JobState::Succeeded),
        ];
        let p = plan(
            &spec(),
            &s,
            Some(T0 + 4 * H),
            T0 - 10,
            T0 + 4 * H + 120,
            &jobs,
        );
        assert_eq!(p.delete, ["c-gc-0", "c-gc-1"]);
        assert_eq!(p.start, None);
        assert_eq!(p.status.last_success_time, Some(rfc3339(T0 + 4 * H + 60)));
        assert_eq!(p.status.last_result.as_deref(), Some("Succeeded c-gc-4"));
        assert_eq!(p.status.active_job, None);
    }

    #[test]
    fn the_newest_finished_run_decides_whether_gc_is_failing() {
        assert_eq!(last_failure(&[]), None);
        let failed = [job(1, JobState::Succeeded), job(2, JobState::Failed)];
        let f = last_failure(&failed).expect("failing");
        assert!(
            f.contains("c-gc-2") && f.contains("BackoffLimitExceeded"),
            "{f}"
        );
        let recovered = [job(2, JobState::Failed), job(3, JobState::Succeeded)];
        assert_eq!(last_failure(&recovered), None);
        let running = [job(2, JobState::Failed), job(3, JobState::Active)];
        assert!(last_failure(&running).is_some(), "until a run succeeds");
    }
}
