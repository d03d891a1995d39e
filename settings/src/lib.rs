//! nixcache's settings: what `nixcache serve` is configured with ([`config`]: flags, environment
//! and file, resolved into a checked [`config::Config`]), the signing keys in Nix's format
//! ([`keys`]), GC schedules, environment names and URL redaction.
//!
//! It is its own crate so that the operator, which renders and checks these settings for a
//! `NixCache`, depends on them alone and not on the server's HTTP, database and storage stacks.

pub mod config;
pub mod env;
pub mod keys;
pub mod redact;
pub mod schedule;
pub mod store;
