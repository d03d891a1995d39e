//! nixcache: a pull-through Nix binary cache proxy.
//!
//! Layers, from the inside out: [`nix`] (the protocol's formats, pure), the seams ([`storage`] and
//! [`lock`]: each a trait with one implementation per technology; [`db`]: traits by concern, with
//! one implementation over diesel-async for both SQLite and PostgreSQL; [`upstream`]: what an
//! upstream cache's answers mean, with its requests behind the [`upstream::Transport`] trait,
//! HTTP(S) in the server and memory in the unit tests), [`cache`] (the request flows, written
//! once against those traits), and [`http`] (translating requests to flows, and errors to status
//! codes in one place, [`http::error`]; the admin API's JSON is in [`admin`], shared with the
//! CLI's [`admin_client`]). [`server`] wires them together from a [`config::Config`], whose
//! sections it hands on whole; it comes, with the signing keys, from the `nixcache-settings`
//! crate (re-exported here as [`config`] and [`nix::signing`]) that the operator shares.
//!
//! `storage`, `db` and `lock` each have a `conformance` suite, public with the `conformance`
//! feature: the unit tests run it against local disk, SQLite and the in-process lock, and the
//! tests in `tests/` against S3, PostgreSQL and Redis.

pub mod admin;
pub mod admin_client;
pub mod cache;
pub use nixcache_settings::config;
pub mod db;
pub mod fuzz;
pub mod http;
pub mod identity;
pub mod lock;
pub mod metrics;
pub mod nix;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod upstream;
pub mod util;
