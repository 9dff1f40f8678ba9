//! Peagen's task fabric for plain systemd hosts.
//!
//! One module per concern; the binaries in `src/bin/` are thin shims over
//! the entry points in [`app`] (and [`ctl`]). `unsafe` lives only in [`sandbox`].
#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod ctl;
pub mod exit;
pub mod fleet;
pub mod fleet_store;
pub mod handlers;
pub(crate) mod inventory;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod redis_target;
pub mod results;
pub mod retry;
#[allow(unsafe_code)]
pub mod sandbox;
pub mod spawner;
pub mod systemd;
pub mod task;
pub mod telemetry;
pub mod worker;
