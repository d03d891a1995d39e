//! The nixcache operator: the `NixCache` custom resource ([`crd`]), rendered into the server's
//! own configuration ([`config`]) and into its children by pure builders ([`resources`]),
//! reconciled by [`reconcile`] with GC run as Jobs ([`gc`]) while this process holds the leader
//! Lease ([`leader`]); [`run`] wires it together.

pub mod config;
pub mod crd;
pub mod gc;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod resources;
pub mod run;
pub mod status;
pub mod time;
