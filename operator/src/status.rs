//! Status conditions, pure: Ready / Progressing / Degraded / Reconciled from what the reconciler
//! saw, keeping each condition's `lastTransitionTime` while its status does not change.
//!
//! - `Reconciled`: the spec was applied as it is (`Applied`), or why not (`InvalidSpec`,
//!   `SecretMissing`, `SigningKeyLost`, `OwnershipConflict`, `ApplyFailed`, …).
//! - `Ready`: the cache serves the current spec: it was applied and at least one replica is
//!   available. `ReplicasReady` when all are, `PartiallyAvailable` when some are; else why not,
//!   with a pod's waiting reason (`ImagePullBackOff`, `CrashLoopBackOff`, …) first.
//! - `Progressing`: a rollout is under way.
//! - `Degraded`: something needs a person: a rejected spec or failed apply, pods that cannot
//!   start, a Deployment that cannot make pods, a claim that stays Pending, a failed GC run.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::crd::Condition;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const RECONCILED: &str = "Reconciled";

/// How the cache's server Deployment is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
    /// The Deployment controller has seen the current Deployment spec.
    pub observed: bool,
    /// The Deployment's `ReplicaFailure` condition's message, when True (quota, admission).
    pub replica_failure: Option<String>,
    /// The Deployment's `Progressing` condition's message, when it is False
    /// (`ProgressDeadlineExceeded`).
    pub deadline_exceeded: Option<String>,
}

impl Rollout {
    pub fn of(deployment: &Deployment) -> Rollout {
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        let generation = deployment.metadata.generation.unwrap_or(0);
        let conditions = status.conditions.clone().unwrap_or_default();
        let message = |type_: &str, status: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| {
                    let reason = c.reason.clone().unwrap_or_default();
                    match c.message.as_deref() {
                        Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                        _ => reason,
                    }
                })
        };
        Rollout {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0) >= generation,
            replica_failure: message("ReplicaFailure", "True"),
            deadline_exceeded: message("Progressing", "False"),
        }
    }
}

/// Why a pod of the cache does not run, as the kubelet or scheduler says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// `ImagePullBackOff`, `ErrImagePull`, `CrashLoopBackOff`, `CreateContainerConfigError`,
    /// `Unschedulable`, …
    pub reason: String,
    pub message: String,
}

/// Waiting reasons that are steps of a normal start, not problems.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// The first problem among the pods (terminating pods aside), if any.
pub fn pod_problem(pods: &[Pod]) -> Option<PodProblem> {
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.metadata.name.clone());
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(status) = &pod.status else { continue };
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for c in statuses {
            let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.clone().unwrap_or_default();
            if reason.is_empty() || STARTING.contains(&reason.as_str()) {
                continue;
            }
            let detail = waiting.message.clone().unwrap_or_default();
            let last_exit = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        " (last exit: code {}{})",
                        t.exit_code,
                        t.reason
                            .as_deref()
                            .map(|r| format!(", {r}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Some(PodProblem {
                message: format!(
                    "pod {name}, container {}: {reason}{}{last_exit}",
                    c.name,
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                ),
                reason,
            });
        }
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            return Some(PodProblem {
                reason: "Unschedulable".into(),
                message: format!(
                    "pod {name} cannot be scheduled: {}",
                    c.message.clone().unwrap_or_default()
                ),
            });
        }
    }
    None
}

/// What the reconciler saw of a cache whose children it applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub rollout: Rollout,
    pub pod_problem: Option<PodProblem>,
    /// The claim is Pending: the message, and whether it has been so for long.
    pub claim_pending: Option<(String, bool)>,
    /// The newest finished GC Job failed: its name and why.
    pub gc_failed: Option<String>,
}

/// The outcome of one reconcile, for the conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not looked at yet: every condition Unknown.
    Reconciling,
    /// Children applied; this is how they are doing.
    Applied(Observed),
    /// The spec, what it refers to, or the API server's answer stopped the reconcile; children
    /// are as they were, or partly updated. `reason` is PascalCase.
    Failed { reason: String, message: String },
}

fn condition(type_: &str, status: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        ..Condition::default()
    }
}

fn applied(o: &Observed) -> Vec<Condition> {
    let r = &o.rollout;
    let available = r.observed && r.available > 0;
    let counts = format!(
        "{}/{} replicas ready, {} available",
        r.ready, r.desired, r.available
    );
    let ready = if r.desired == 0 {
        condition(
            READY,
            "False",
            "ScaledToZero",
            "No replicas are wanted".into(),
        )
    } else if available && r.ready >= r.desired {
        condition(READY, "True", "ReplicasReady", counts)
    } else if available {
        condition(READY, "True", "PartiallyAvailable", counts)
    } else if let Some(p) = &o.pod_problem {
        condition(READY, "False", &p.reason, p.message.clone())
    } else if let Some((message, _)) = &o.claim_pending {
        condition(READY, "False", "ClaimPending", message.clone())
    } else if let Some(m) = &r.replica_failure {
        condition(READY, "False", "ReplicaFailure", m.clone())
    } else {
        condition(READY, "False", "ReplicasNotReady", counts)
    };
    let rolling = !r.observed || r.updated < r.desired || r.ready < r.desired;
    let progressing = if let Some(m) = &r.deadline_exceeded {
        condition(PROGRESSING, "False", "ProgressDeadlineExceeded", m.clone())
    } else if rolling && r.desired > 0 {
        condition(
            PROGRESSING,
            "True",
            "RollingOut",
            format!(
                "{} of {} replicas updated, {} ready",
                r.updated.min(r.desired),
                r.desired,
                r.ready
            ),
        )
    } else {
        condition(
            PROGRESSING,
            "False",
            "Stable",
            "The rollout is complete".into(),
        )
    };
    let degraded = if let Some(p) = &o.pod_problem {
        condition(DEGRADED, "True", &p.reason, p.message.clone())
    } else if let Some(m) = &r.replica_failure {
        condition(DEGRADED, "True", "ReplicaFailure", m.clone())
    } else if let Some(m) = &r.deadline_exceeded {
        condition(DEGRADED, "True", "ProgressDeadlineExceeded", m.clone())
    } else if let Some((message, true)) = &o.claim_pending {
        condition(DEGRADED, "True", "ClaimPending", message.clone())
    } else if let Some(m) = &o.gc_failed {
        condition(DEGRADED, "True", "GcJobFailed", m.clone())
    } else {
        condition(
            DEGRADED,
            "False",
            "AsExpected",
            "Nothing needs attention".into(),
        )
    };
    vec![
        ready,
        progressing,
        degraded,
        condition(RECONCILED, "True", "Applied", "The spec is applied".into()),
    ]
}

/// The four conditions for an outcome, stamped with `now` and the generation they describe,
/// keeping the transition time of those whose status is unchanged from `previous`.
pub fn conditions(
    outcome: &Outcome,
    previous: &[Condition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let list = match outcome {
        Outcome::Reconciling => [READY, PROGRESSING, DEGRADED, RECONCILED]
            .into_iter()
            .map(|t| {
                condition(
                    t,
                    "Unknown",
                    "Reconciling",
                    "The operator has not looked at this generation yet".into(),
                )
            })
            .collect(),
        Outcome::Failed { reason, message } => vec![
            condition(READY, "False", reason, message.clone()),
            condition(
                PROGRESSING,
                "False",
                reason,
                "Children are left as they were".into(),
            ),
            condition(DEGRADED, "True", reason, message.clone()),
            condition(RECONCILED, "False", reason, message.clone()),
        ],
        Outcome::Applied(o) => applied(o),
    };
    list.into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            c
        })
        .collect()
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rollout(desired: i32, ready: i32, updated: i32, observed: bool) -> Outcome {
        Outcome::Applied(Observed {
            rollout: Rollout {
                desired,
                ready,
                available: ready,
                updated,
                observed,
                ..Rollout::default()
            },
            ..Observed::default()
        })
    }

    fn status<'a>(c: &'a [Condition], t: &str) -> (&'a str, &'a str) {
        find(c, t)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
            .unwrap_or_default()
    }

    #[test]
    fn ready_follows_the_deployment() {
        let c = conditions(&rollout(2, 0, 0, false), &[], Some(1), "t0");
        assert_eq!(status(&c, READY).0, "False");
        assert_eq!(status(&c, PROGRESSING).0, "True");
        assert_eq!(status(&c, DEGRADED).0, "False");
        assert_eq!(status(&c, RECONCILED), ("True", "Applied"));
        let c2 = conditions(&rollout(2, 2, 2, true), &c, Some(1), "t1");
        let ready = find(&c2, READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.as_str()),
            ("True", "t1")
        );
        assert_eq!(status(&c2, PROGRESSING).0, "False");
        assert_eq!(
            find(&c2, DEGRADED).map(|c| c.last_transition_time.as_str()),
            Some("t0"),
            "unchanged status keeps its transition time"
        );
        assert_eq!(ready.observed_generation, Some(1));
    }

    #[test]
    fn ready_means_available_not_every_replica() {
        let c = conditions(&rollout(3, 2, 3, true), &[], Some(1), "t");
        assert_eq!(status(&c, READY), ("True", "PartiallyAvailable"));
        let c = conditions(&rollout(3, 0, 3, true), &[], Some(1), "t");
        assert_eq!(status(&c, READY), ("False", "ReplicasNotReady"));
    }

    #[test]
    fn the_first_visit_is_unknown() {
        let c = conditions(&Outcome::Reconciling, &[], Some(1), "t");
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.status == "Unknown"), "{c:?}");
    }

    #[test]
    fn a_failed_reconcile_is_degraded_with_its_reason() {
        let c = conditions(
            &Outcome::Failed {
                reason: "ApplyFailed".into(),
                message: "Deployment web: spec.template...: Invalid value".into(),
            },
            &[],
            Some(4),
            "t",
        );
        assert_eq!(status(&c, DEGRADED), ("True", "ApplyFailed"));
        assert_eq!(status(&c, RECONCILED), ("False", "ApplyFailed"));
        assert_eq!(status(&c, READY), ("False", "ApplyFailed"));
        assert!(find(&c, DEGRADED).is_some_and(|d| d.message.contains("Invalid value")));
    }

    #[test]
    fn a_stale_observation_is_not_ready() {
        let c = conditions(&rollout(1, 1, 1, false), &[], None, "t");
        assert_eq!(status(&c, READY).0, "False");
    }

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).expect("pod")
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_is_the_reason() {
        let pulling = pod(
            "web-1",
            json!({"containerStatuses": [{"name": "nixcache", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"nope:1\""}}}]}),
        );
        let starting = pod(
            "web-0",
            json!({"containerStatuses": [{"name": "nixcache", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        let p = pod_problem(&[starting.clone(), pulling]).expect("problem");
        assert_eq!(p.reason, "ImagePullBackOff");
        assert!(
            p.message.contains("web-1") && p.message.contains("nope:1"),
            "{p:?}"
        );
        assert_eq!(pod_problem(&[starting]), None, "starting is no problem");

        let mut o = Observed {
            rollout: Rollout {
                desired: 1,
                observed: true,
                ..Rollout::default()
            },
            pod_problem: Some(p),
            ..Observed::default()
        };
        let c = conditions(&Outcome::Applied(o.clone()), &[], Some(1), "t");
        assert_eq!(status(&c, READY), ("False", "ImagePullBackOff"));
        assert_eq!(status(&c, DEGRADED), ("True", "ImagePullBackOff"));
        // An old replica still serving: Ready, and still Degraded.
        o.rollout.available = 1;
        let c = conditions(&Outcome::Applied(o), &[], Some(1), "t");
        assert_eq!(status(&c, READY).0, "True");
        assert_eq!(status(&c, DEGRADED), ("True", "ImagePullBackOff"));
    }

    #[test]
    fn crash_loops_and_unschedulable_pods_are_named() {
        let crashing = pod(
            "web-2",
            json!({"containerStatuses": [{"name": "nixcache", "image": "x", "imageID": "",
                "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
        );
        let p = pod_problem(&[crashing]).expect("problem");
        assert_eq!(p.reason, "CrashLoopBackOff");
        assert!(p.message.contains("code 2"), "{p:?}");
        let pending = pod(
            "web-3",
            json!({"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/1 nodes are available"}]}),
        );
        let p = pod_problem(&[pending]).expect("problem");
        assert_eq!(p.reason, "Unschedulable");
    }

    #[test]
    fn claims_deployments_and_gc_failures_degrade() {
        let base = Rollout {
            desired: 1,
            observed: true,
            ..Rollout::default()
        };
        let o = |f: &dyn Fn(&mut Observed)| {
            let mut o = Observed {
                rollout: base.clone(),
                ..Observed::default()
            };
            f(&mut o);
            conditions(&Outcome::Applied(o), &[], Some(1), "t")
        };
        let c = o(&|o| o.claim_pending = Some(("claim web-data is Pending".into(), false)));
        assert_eq!(status(&c, READY), ("False", "ClaimPending"));
        assert_eq!(
            status(&c, DEGRADED).0,
            "False",
            "pending a moment is normal"
        );
        let c = o(&|o| o.claim_pending = Some(("claim web-data is Pending".into(), true)));
        assert_eq!(status(&c, DEGRADED), ("True", "ClaimPending"));
        let c = o(&|o| o.rollout.replica_failure = Some("FailedCreate: quota".into()));
        assert_eq!(status(&c, DEGRADED), ("True", "ReplicaFailure"));
        let c = o(&|o| o.rollout.deadline_exceeded = Some("ProgressDeadlineExceeded".into()));
        assert_eq!(
            status(&c, PROGRESSING),
            ("False", "ProgressDeadlineExceeded")
        );
        assert_eq!(status(&c, DEGRADED), ("True", "ProgressDeadlineExceeded"));
        let c = o(&|o| o.gc_failed = Some("Job web-gc-1 failed".into()));
        assert_eq!(status(&c, DEGRADED), ("True", "GcJobFailed"));
    }
}
