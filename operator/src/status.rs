//! Status conditions, pure: Ready / Progressing / Degraded from what the reconciler saw, keeping
//! each condition's `lastTransitionTime` while its status does not change.

use k8s_openapi::api::apps::v1::Deployment;

use crate::crd::Condition;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// How the cache's server Deployment is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    /// The Deployment controller has seen the current Deployment spec.
    pub observed: bool,
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
        Rollout {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.unwrap_or(0) >= generation,
        }
    }
}

/// The outcome of one reconcile, for the conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Children applied; the Deployment is as given.
    Applied(Rollout),
    /// The spec or what it refers to is wrong; nothing was changed. `reason` is PascalCase.
    Rejected { reason: String, message: String },
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        ..Condition::default()
    }
}

/// The three conditions for an outcome, stamped with `now` and the generation they describe,
/// keeping the transition time of those whose status is unchanged from `previous`.
pub fn conditions(
    outcome: &Outcome,
    previous: &[Condition],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let list = match outcome {
        Outcome::Rejected { reason, message } => vec![
            condition(READY, false, reason, message.clone()),
            condition(
                PROGRESSING,
                false,
                reason,
                "Children are left as they were".into(),
            ),
            condition(DEGRADED, true, reason, message.clone()),
        ],
        Outcome::Applied(r) => {
            let ready = r.desired > 0 && r.observed && r.ready >= r.desired;
            let rolling = !r.observed || r.updated < r.desired || r.ready < r.desired;
            let ready_condition = if r.desired == 0 {
                condition(
                    READY,
                    false,
                    "ScaledToZero",
                    "No replicas are wanted".into(),
                )
            } else if ready {
                condition(
                    READY,
                    true,
                    "ReplicasReady",
                    format!("{}/{} replicas are ready", r.ready, r.desired),
                )
            } else {
                condition(
                    READY,
                    false,
                    "ReplicasNotReady",
                    format!("{}/{} replicas are ready", r.ready, r.desired),
                )
            };
            vec![
                ready_condition,
                if rolling && r.desired > 0 {
                    condition(
                        PROGRESSING,
                        true,
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
                        false,
                        "Stable",
                        "The rollout is complete".into(),
                    )
                },
                condition(DEGRADED, false, "Reconciled", "The spec is valid".into()),
            ]
        }
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
    use super::*;

    fn rollout(desired: i32, ready: i32, updated: i32, observed: bool) -> Outcome {
        Outcome::Applied(Rollout {
            desired,
            ready,
            updated,
            observed,
        })
    }

    #[test]
    fn ready_follows_the_deployment() {
        let c = conditions(&rollout(2, 0, 0, false), &[], Some(1), "t0");
        assert_eq!(find(&c, READY).map(|c| c.status.as_str()), Some("False"));
        assert_eq!(
            find(&c, PROGRESSING).map(|c| c.status.as_str()),
            Some("True")
        );
        assert_eq!(find(&c, DEGRADED).map(|c| c.status.as_str()), Some("False"));
        let c2 = conditions(&rollout(2, 2, 2, true), &c, Some(1), "t1");
        let ready = find(&c2, READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.as_str()),
            ("True", "t1")
        );
        assert_eq!(
            find(&c2, PROGRESSING).map(|c| c.status.as_str()),
            Some("False")
        );
        assert_eq!(
            find(&c2, DEGRADED).map(|c| c.last_transition_time.as_str()),
            Some("t0"),
            "unchanged status keeps its transition time"
        );
        assert_eq!(ready.observed_generation, Some(1));
    }

    #[test]
    fn a_rejected_spec_is_degraded_with_its_reason() {
        let c = conditions(
            &Outcome::Rejected {
                reason: "InvalidSpec".into(),
                message: "3 replicas need Redis".into(),
            },
            &[],
            Some(4),
            "t",
        );
        let d = find(&c, DEGRADED).expect("degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(d.message.contains("Redis"));
        assert_eq!(find(&c, READY).map(|c| c.status.as_str()), Some("False"));
    }

    #[test]
    fn a_stale_observation_is_not_ready() {
        let c = conditions(&rollout(1, 1, 1, false), &[], None, "t");
        assert_eq!(find(&c, READY).map(|c| c.status.as_str()), Some("False"));
    }
}
