//! The programs' entry points: command lines (clap definitions), signal
//! set-up and the wiring of domain modules. `peagen-spawnerd` and
//! `peagen-worker` live here; `peagenctl` in [`crate::ctl`]. The programs
//! are siblings: none imports another's domain module; they share `queue`,
//! `systemd`, `inventory`, `metrics`, ... below them. [`docs`] renders
//! completions and man pages from the three command lines.

pub(crate) mod docs;
pub mod spawnerd;
pub mod worker;
