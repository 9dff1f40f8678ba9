//! The execute sandbox: the `peagen-sandbox` crate (the workspace's only
//! `unsafe` code), re-exported, plus its command line, `sandbox-run`.

pub use peagen_sandbox::*;

pub mod cli;
pub use cli::run_cli;
