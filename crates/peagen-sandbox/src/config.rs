//! `[sandbox]` of the configuration file (documented in
//! `packaging/peagen.toml`; validated by the main crate's `config`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_ms: u64,
    pub wall_ms: u64,
    pub file_size_bytes: u64,
    pub output_bytes: u64,
    pub tmpfs_bytes: u64,
    /// Host paths bound read-only into the sandbox root (missing ones skipped).
    pub ro_binds: Vec<PathBuf>,
    /// Interpreter for the prototype form `{child_src, entry_fn}`.
    pub python: PathBuf,
    /// Parent cgroup (v2 path below /sys/fs/cgroup, or v1 name) for tasks;
    /// empty = detect (the worker's own delegated cgroup, else `peagen`).
    pub cgroup_parent: String,
    /// Host uid/gid the sandbox's uid/gid 0 maps to when the worker runs as
    /// root (an unprivileged worker always maps its own ids).
    pub uid: u32,
    pub gid: u32,
    /// Join one pre-made empty network namespace instead of creating one
    /// per task (faster, less contention). Only used when the worker is
    /// root and landlock ABI >= 6 scopes abstract unix sockets per task;
    /// otherwise every task gets its own network namespace.
    pub shared_netns: bool,
    /// Warm mode for the prototype form: a prepared interpreter inside the
    /// sandbox forks one fresh child per task (opt-out).
    pub warm: bool,
    /// Tasks one warm interpreter serves before it is replaced (which also
    /// re-randomises its address-space layout).
    pub warm_tasks_per_zygote: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 1 << 30,
            pids: 128,
            cpu_ms: 10_000,
            wall_ms: 30_000,
            file_size_bytes: 64 << 20,
            output_bytes: 1 << 20,
            tmpfs_bytes: 64 << 20,
            ro_binds: [
                "/usr",
                "/lib",
                "/lib64",
                "/bin",
                "/sbin",
                "/etc/ssl",
                "/etc/alternatives",
                "/etc/ld.so.cache",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            python: PathBuf::from("/usr/bin/python3"),
            cgroup_parent: String::new(),
            uid: 65534,
            gid: 65534,
            shared_netns: true,
            warm: true,
            warm_tasks_per_zygote: 100,
        }
    }
}
