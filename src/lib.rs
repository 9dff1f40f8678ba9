//! Peagen's task fabric for plain systemd hosts.
//!
//! One module per concern; the binaries in `src/bin/` are thin shims over
//! the entry points in [`app`] (and [`ctl`]). No `unsafe` here: it lives only
//! in the `peagen-sandbox` crate (re-exported as [`sandbox`]).
#![forbid(unsafe_code)]

pub mod app;
pub(crate) mod backoff;
pub mod config;
pub mod ctl;
pub mod exit;
pub mod fleet;
pub mod fleet_store;
pub mod handlers;
pub(crate) mod inventory;
pub mod llm;
pub mod metrics;
pub mod policy;
pub mod queue;
pub(crate) mod redact;
pub mod redis_target;
pub mod results;
pub mod retry;
pub mod sandbox;
pub mod spawner;
pub mod systemd;
pub mod task;
pub mod telemetry;
pub mod worker;
