//! nixcache: a pull-through Nix binary cache proxy.
//!
//! Layers, from the inside out: [`nix`] (the protocol's formats, pure), the seams
//! ([`storage`], [`lock`], [`upstream`]: each a trait with one implementation per technology;
//! [`db`]: traits by concern, with one implementation over diesel-async for both SQLite and
//! PostgreSQL), [`cache`] (the request flows, written once against those traits), and [`http`]
//! (translating requests to flows and results to status codes). [`server`] wires them together
//! from a [`config::Config`].

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
