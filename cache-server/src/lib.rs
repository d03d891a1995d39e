//! nixcache: a pull-through Nix binary cache proxy.
//!
//! Layers, from the inside out: [`nix`] (the protocol's formats, pure), the seams ([`storage`] and
//! [`lock`]: each a trait with one implementation per technology; [`db`]: traits by concern, with
//! one implementation over diesel-async for both SQLite and PostgreSQL; [`upstream`]: the HTTP
//! client of an upstream cache, a concrete type), [`cache`] (the request flows, written once against those traits), and [`http`]
//! (translating requests to flows and results to status codes; the admin API's JSON is in
//! [`admin`], shared with the CLI's [`admin_client`]). [`server`] wires them together from a
//! [`config::Config`], which, with the signing keys, comes from the `nixcache-settings` crate
//! (re-exported here as [`config`] and [`nix::signing`]) that the operator shares.

pub mod admin;
pub mod admin_client;
pub mod cache;
pub use nixcache_settings::config;
pub mod db;
pub mod fuzz;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod nix;
pub mod server;
pub mod storage;
pub mod upstream;
pub mod util;
