//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does
//! it: the holder renews `renewTime` well within `leaseDurationSeconds`; another candidate takes
//! the Lease over only once it has expired; every write carries the `resourceVersion` it read, so
//! two candidates racing for it cannot both win.
//!
//! Expiry is judged by the observed-time rule, not by comparing `renewTime` with this machine's
//! clock: a candidate notes when (on its own monotonic clock) it last saw the Lease's record
//! change, and takes over only when it has not changed for a whole `leaseDurationSeconds`. Clocks
//! that disagree between nodes then cannot make two leaders.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observer: Mutex<Observer>,
}

/// What of a Lease another candidate holds tells that it is alive: any change to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder: String,
    pub renew_time: Option<String>,
    pub acquire_time: Option<String>,
    pub duration_seconds: i32,
    pub transitions: i32,
    pub resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            acquire_time: spec.acquire_time.map(|t| t.0.to_string()),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(15),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// The observed-time rule: the last record seen, and when (locally) it was first seen.
#[derive(Debug, Default)]
pub struct Observer {
    last: Option<(Record, Instant)>,
}

impl Observer {
    /// Notes `record` as seen at `now`; whether it has gone unchanged for its whole duration.
    pub fn expired(&mut self, record: &Record, now: Instant) -> bool {
        match &self.last {
            Some((seen, _)) if seen == record => {}
            _ => self.last = Some((record.clone(), now)),
        }
        let since = self.last.as_ref().map_or(now, |(_, at)| *at);
        let duration =
            Duration::from_secs(u64::try_from(record.duration_seconds.max(1)).unwrap_or(15));
        now.saturating_duration_since(since) >= duration
    }
}

/// Who holds the Lease after a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This process holds it (acquired or renewed).
    Leader,
    /// Another candidate holds a Lease that has not expired.
    Follower { holder: String },
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observer: Mutex::new(Observer::default()),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Acquires, renews or observes the Lease. A lost race is `Follower`, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<Leadership, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leader),
                Err(e) if is_conflict(&e) => Ok(Leadership::Follower {
                    holder: "(another candidate)".into(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(now, spec.acquire_time.clone(), transitions)
        } else {
            let expired = self
                .observer
                .lock()
                .map(|mut o| o.expired(&Record::of(&lease), Instant::now()))
                .unwrap_or(false);
            // A released Lease (no holder) is free at once.
            if !holder.is_empty() && !expired {
                return Ok(Leadership::Follower { holder });
            }
            self.spec(now, None, transitions + 1)
        };
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Leadership::Leader),
            Err(e) if is_conflict(&e) => Ok(Leadership::Follower {
                holder: "(another candidate)".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up at shutdown so a standby takes over at once instead of after expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// When reconciles must be gone once leadership ends: within `grace`, and never after the Lease,
/// last renewed at `last_renewed`, could be taken over (a second short of it, for the requests
/// under way to return).
pub fn stop_deadline(
    now: Instant,
    last_renewed: Instant,
    lease_duration: Duration,
    grace: Duration,
) -> Instant {
    let expiry = last_renewed + lease_duration.saturating_sub(Duration::from_secs(1));
    (now + grace).min(expiry).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(renew: &str) -> Record {
        Record {
            holder: "other".into(),
            renew_time: Some(renew.into()),
            acquire_time: None,
            duration_seconds: 15,
            transitions: 0,
            resource_version: Some(renew.into()),
        }
    }

    #[test]
    fn expiry_is_judged_by_the_local_clock_only() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        // The holder's clock is an hour behind: its renewTime looks long past. It renews, so the
        // record changes, and it is never expired.
        assert!(!o.expired(&record("2020-01-01T00:00:00Z"), t0));
        assert!(!o.expired(
            &record("2020-01-01T00:00:05Z"),
            t0 + Duration::from_secs(14)
        ));
        assert!(!o.expired(
            &record("2020-01-01T00:00:10Z"),
            t0 + Duration::from_secs(28)
        ));
        // It stops renewing: expired a whole duration after the last change was seen.
        let last = record("2020-01-01T00:00:10Z");
        assert!(!o.expired(&last, t0 + Duration::from_secs(42)));
        assert!(o.expired(&last, t0 + Duration::from_secs(43)));
        // A holder whose clock is ahead (renewTime in the future) expires just the same.
        let mut o = Observer::default();
        let ahead = record("2099-01-01T00:00:00Z");
        assert!(!o.expired(&ahead, t0));
        assert!(o.expired(&ahead, t0 + Duration::from_secs(15)));
    }

    #[test]
    fn reconciles_stop_before_the_lease_can_be_taken_over() {
        let now = Instant::now();
        let lease = Duration::from_secs(15);
        let grace = Duration::from_secs(10);
        // Renewed just now: the whole grace.
        assert_eq!(stop_deadline(now, now, lease, grace), now + grace);
        // Renewal failing for 10 s: the Lease may go in 5 s, so 4 s are left.
        let renewed = now - Duration::from_secs(10);
        assert_eq!(
            stop_deadline(now, renewed, lease, grace),
            now + Duration::from_secs(4)
        );
        // Already past: at once.
        let long_ago = now - Duration::from_secs(60);
        assert_eq!(stop_deadline(now, long_ago, lease, grace), now);
    }
}
