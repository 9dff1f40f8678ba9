//! Sandbox for untrusted code: the only crate of peagen-fabric with
//! `unsafe` (the others `forbid` it), and within it only `child`, `sys` and
//! `supervise` may use it; every block says why it is sound (`[lints]`).
//!
//! One call = one task: [`Sandbox::run`] clones a child into fresh user,
//! pid, mount, network, ipc and uts namespaces (cgroup namespace after the
//! cgroup attach), builds a minimal read-only root around a size-limited
//! tmpfs work dir, applies rlimits, drops every capability, sets
//! no_new_privs, applies landlock and then seccomp, and runs the command
//! under a tiny reaper that is PID 1 of the task's pid namespace. The parent
//! enforces wall clock, output caps and (via cgroup accounting) total CPU
//! time, and returns a [`Verdict`]. See `docs/security.md`.
//!
//! Layout, by what the code does:
//! - `plan.rs`: everything the child will need, built before `clone` as
//!   plain data (safe code, unit-tested as data);
//! - `child.rs`: the child from `clone` to `execve`, raw syscalls only, in
//!   the worker's memory (no allocation, no panic: lint-enforced);
//! - `supervise.rs`: launch, supervision (limits, output) and the verdict;
//! - `proto.rs`: the child -> supervisor messages and set-up steps;
//! - `warm.rs`: warm mode, a prepared interpreter forking one child per
//!   task (`zygote.py` is its Python side);
//! - `sys.rs` (clone onto our own stack), `cgroup.rs`, `filter.rs`
//!   (seccomp program, landlock constants), `config.rs` (`[sandbox]`).
//!
//! `peagen-worker sandbox-run` (the CLI) lives in the main crate
//! (`peagen_fabric::sandbox::cli`), which re-exports this crate as
//! `peagen_fabric::sandbox`.

#![deny(unsafe_code)]

mod cgroup;
#[allow(unsafe_code)]
mod child;
mod config;
mod filter;
mod plan;
mod proto;
#[allow(unsafe_code)]
mod supervise;
#[allow(unsafe_code)]
mod sys;
mod warm;

pub use config::SandboxConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
pub use warm::{interpreter_binds, WarmError, WarmRequest};

/// How the task ended (isolate's meta `status`, spelled out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exited with code 0.
    Ok,
    /// Exited with a non-zero code (or could not be executed).
    RuntimeError,
    /// Killed by a signal it did not ask for from us.
    Signal,
    /// Wall clock or CPU time exceeded; the whole task tree was killed.
    Timeout,
    /// The memory cgroup's OOM killer fired.
    MemoryLimit,
    /// stdout or stderr went over the cap; the task tree was killed.
    OutputLimit,
    /// The sandbox itself failed; nothing is known about the user code.
    InternalError,
}

/// What enforced a limit. Never claims more than was actually set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    CgroupV2,
    CgroupV1,
    Rlimit,
    /// Enforced by the supervising parent (timer, capped pipe reads).
    Supervisor,
    /// Size option of the tmpfs mount.
    Tmpfs,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    pub value: u64,
    pub mechanism: Mechanism,
}

/// The limits of one run, each with the mechanism that enforced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcedLimits {
    pub memory_bytes: Enforced,
    pub pids: Enforced,
    pub cpu_ms: Enforced,
    pub wall_ms: Enforced,
    pub file_size_bytes: Enforced,
    pub output_bytes: Enforced,
    pub tmpfs_bytes: Enforced,
}

/// Which layers were active for this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub namespaces: Vec<String>,
    /// Host uid the sandbox's uid 0 maps to.
    pub host_uid: u32,
    /// 0 = landlock unavailable (not applied).
    pub landlock_abi: u32,
    pub seccomp: bool,
}

/// The result of one sandboxed run (like isolate's meta file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub signal_name: Option<String>,
    /// Human-readable detail (why a timeout, which setup step failed...).
    pub message: String,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub peak_memory_bytes: Option<u64>,
    /// `cgroup_v2`, `cgroup_v1` (whole tree) or `rusage` (largest process).
    pub peak_memory_source: String,
    pub oom_killed: bool,
    /// The supervisor killed the task tree (timeout or output cap).
    pub killed: bool,
    /// Captured output, decoded as lossy UTF-8 (invalid bytes -> U+FFFD).
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub limits: EnforcedLimits,
    pub isolation: Isolation,
}

impl Verdict {
    fn internal(message: String, limits: EnforcedLimits, isolation: Isolation) -> Verdict {
        Verdict {
            status: Status::InternalError,
            exit_code: None,
            signal: None,
            signal_name: None,
            message,
            wall_ms: 0.0,
            cpu_ms: 0.0,
            peak_memory_bytes: None,
            peak_memory_source: String::new(),
            oom_killed: false,
            killed: false,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            limits,
            isolation,
        }
    }
}

/// Per-task limit requests. Each value is clamped to the configured one
/// (the config is both the default and the ceiling).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct LimitRequest {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub wall_ms: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
}

/// One command to run.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// argv[0] is looked up in the sandbox's `PATH` unless it contains `/`.
    pub argv: Vec<String>,
    /// The complete environment (built from scratch; nothing of the worker's
    /// environment is passed). `PATH`, `HOME`, `TMPDIR`, `LANG` get defaults
    /// unless set here.
    pub env: BTreeMap<String, String>,
    /// Relative path (below the work dir `/work`) -> content.
    pub files: BTreeMap<String, Vec<u8>>,
    pub stdin: Vec<u8>,
    pub limits: LimitRequest,
    /// Extra host paths bound read-only at the same path (e.g. a command
    /// handler's program directory).
    pub extra_ro_binds: Vec<PathBuf>,
}

impl Request {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Request {
        Request {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Request::default()
        }
    }

    /// Check what [`Sandbox::run`] would refuse (as a `runtime_error`
    /// verdict "bad request: ...") without running anything.
    pub fn validate(&self) -> Result<(), RequestError> {
        match self.argv.first() {
            None => return Err(RequestError::EmptyArgv),
            Some(a) if a.is_empty() => return Err(RequestError::EmptyArgv),
            Some(_) => {}
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(RequestError::Nul("argv"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(RequestError::EnvName(k.clone()));
            }
            if v.contains('\0') {
                return Err(RequestError::Nul("env"));
            }
        }
        if self.files.len() > MAX_FILES {
            return Err(RequestError::TooManyFiles(self.files.len(), MAX_FILES));
        }
        for rel in self.files.keys() {
            check_rel_path(rel)?;
        }
        Ok(())
    }
}

/// Errors in a request (user input), reported before anything runs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("argv is empty")]
    EmptyArgv,
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("env name {0:?} is not valid")]
    EnvName(String),
    #[error("file path {0:?} must be relative, without `.`/`..` components")]
    FilePath(String),
    #[error("{0} file(s) given; at most {1}")]
    TooManyFiles(usize, usize),
}

/// Why a [`Sandbox`] cannot be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox.ro-binds: {} must be an absolute path other than /", .0.display())]
    RoBind(PathBuf),
    #[error("sandbox: no staging directory (/mnt, /media, /srv, /opt or /tmp) exists")]
    NoStaging,
    #[error("sandbox: {what}: {err}")]
    Netns {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("sandbox: netns thread panicked")]
    NetnsThread,
    #[error("sandbox: seccomp: {0}")]
    Seccomp(#[from] filter::SeccompError),
}

/// Work dir inside the sandbox.
pub const WORK_DIR: &str = "/work";
const MAX_FILES: usize = 1000;

/// A sandbox configured once (binds resolved, seccomp compiled, cgroup
/// backends detected); [`Sandbox::run`] is then cheap and thread-safe.
pub struct Sandbox {
    cfg: SandboxConfig,
    fixed: Arc<plan::Fixed>,
    cgroups: Arc<cgroup::Backends>,
    /// Warm zygotes (started on first use, see `warm.rs`).
    warm: warm::Pool,
}

impl Sandbox {
    pub fn new(cfg: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let fixed = plan::Fixed::new(cfg)?;
        let cgroups = Arc::new(cgroup::Backends::detect(&cfg.cgroup_parent));
        Ok(Sandbox {
            cfg: cfg.clone(),
            fixed: Arc::new(fixed),
            cgroups,
            warm: warm::Pool::default(),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    /// Run one request to completion (blocking; use [`Sandbox::run_async`]
    /// from async code).
    pub fn run(&self, req: &Request) -> Verdict {
        supervise::run(self, req)
    }

    /// [`Sandbox::run`] on tokio's blocking pool.
    pub async fn run_async(self: &Arc<Self>, req: Request) -> Verdict {
        let me = Arc::clone(self);
        match tokio::task::spawn_blocking(move || me.run(&req)).await {
            Ok(v) => v,
            Err(e) => Verdict::internal(
                format!("sandbox thread failed: {e}"),
                self.limits_none(),
                self.isolation(),
            ),
        }
    }

    /// For the `command` handler's `sandbox = true`: run `program args...`
    /// inside the same sandbox with `stdin`, the program's directory bound
    /// read-only, environment exactly `env`. Stdout/exit code are in the
    /// verdict (`stdout`, `exit_code`, `status`).
    pub async fn run_program(
        self: &Arc<Self>,
        program: &Path,
        args: &[String],
        stdin: Vec<u8>,
        env: BTreeMap<String, String>,
        limits: LimitRequest,
    ) -> Verdict {
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().cloned());
        let mut extra = Vec::new();
        if let Some(dir) = program.parent() {
            if !self
                .cfg
                .ro_binds
                .iter()
                .any(|b| dir.starts_with(b) && b != Path::new("/"))
            {
                extra.push(dir.to_path_buf());
            }
        }
        let req = Request {
            argv,
            env,
            files: BTreeMap::new(),
            stdin,
            limits,
            extra_ro_binds: extra,
        };
        self.run_async(req).await
    }

    fn limits_none(&self) -> EnforcedLimits {
        let n = |v| Enforced {
            value: v,
            mechanism: Mechanism::None,
        };
        EnforcedLimits {
            memory_bytes: n(self.cfg.memory_bytes),
            pids: n(self.cfg.pids),
            cpu_ms: n(self.cfg.cpu_ms),
            wall_ms: n(self.cfg.wall_ms),
            file_size_bytes: n(self.cfg.file_size_bytes),
            output_bytes: n(self.cfg.output_bytes),
            tmpfs_bytes: n(self.cfg.tmpfs_bytes),
        }
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            namespaces: [
                "user",
                "pid",
                "mount",
                if self.fixed.shared_net.is_some() {
                    "net (shared empty)"
                } else {
                    "net"
                },
                "ipc",
                "uts",
                "cgroup",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            host_uid: self.fixed.host_uid,
            landlock_abi: self.fixed.landlock_abi,
            seccomp: true,
        }
    }
}

/// The effective limits of a request (clamped to the config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effective {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_ms: u64,
    pub wall_ms: u64,
    pub file_size_bytes: u64,
    pub output_bytes: u64,
    pub tmpfs_bytes: u64,
}

impl Effective {
    pub(crate) fn new(cfg: &SandboxConfig, r: &LimitRequest) -> Effective {
        let c = |req: Option<u64>, max: u64| req.map_or(max, |v| v.min(max)).max(1);
        Effective {
            memory_bytes: c(r.memory_bytes, cfg.memory_bytes).max(4 << 20),
            pids: c(r.pids, cfg.pids).max(2),
            cpu_ms: c(r.cpu_ms, cfg.cpu_ms),
            wall_ms: c(r.wall_ms, cfg.wall_ms),
            file_size_bytes: c(r.file_size_bytes, cfg.file_size_bytes),
            output_bytes: c(r.output_bytes, cfg.output_bytes),
            tmpfs_bytes: cfg.tmpfs_bytes.max(1 << 20),
        }
    }
}

fn cstr(s: &str, what: &'static str) -> Result<CString, RequestError> {
    CString::new(s).map_err(|_| RequestError::Nul(what))
}

/// Validate a relative work-dir path: non-empty components, no `.`/`..`.
fn check_rel_path(p: &str) -> Result<(), RequestError> {
    let bad = || RequestError::FilePath(p.to_string());
    if p.is_empty() || p.starts_with('/') || p.contains('\0') || p.len() > 1024 {
        return Err(bad());
    }
    for comp in p.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(bad());
        }
    }
    Ok(())
}

/// Signal number -> name, for verdicts.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths() {
        assert!(check_rel_path("a/b.py").is_ok());
        for bad in ["", "/etc/x", "../x", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_rel_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_clamped_to_config() {
        let cfg = SandboxConfig::default();
        let e = Effective::new(
            &cfg,
            &LimitRequest {
                memory_bytes: Some(u64::MAX),
                pids: Some(8),
                ..Default::default()
            },
        );
        assert_eq!(e.memory_bytes, cfg.memory_bytes);
        assert_eq!(e.pids, 8);
        assert_eq!(e.wall_ms, cfg.wall_ms);
    }
}
