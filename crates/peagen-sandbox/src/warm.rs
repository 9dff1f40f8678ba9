//! Warm mode: a prepared interpreter (the "zygote") waits inside a sandbox
//! with its runtime imported, and forks one fresh child per task.
//!
//! The zygote is started like any task (`supervise::launch_long`: same
//! namespaces, root, landlock, seccomp, no capabilities, its own cgroups)
//! with one end of a unix `SOCK_SEQPACKET` pair as its stdin. It never runs
//! task code. Per task:
//! 1. supervisor -> zygote: one message carrying four descriptors: a task
//!    socket, the task's stdout and stderr pipes, and a sealed memfd with the
//!    request (`{src, entry, args, kwargs, env}` as JSON);
//! 2. the zygote forks; the child sends one byte on the task socket, and the
//!    kernel attaches its pid (translated into our pid namespace,
//!    `SO_PASSCRED`), then blocks reading the socket;
//! 3. the supervisor opens a pidfd for that pid, checks that its parent is
//!    the zygote, moves it into the task's fresh cgroups and answers with
//!    the task's rlimits (plus the rlimit fallbacks for the limits no cgroup
//!    took); only then does the child apply them, start a new session and a
//!    nested landlock domain, and run the task in the (empty) `/work`;
//! 4. the supervisor enforces wall clock, CPU, memory and output exactly as
//!    for a cold task, on the child's pidfd and the task cgroups; when the
//!    child has ended it kills whatever is left in the task cgroups;
//! 5. the zygote reaps the child, empties `/work` and reports the wait
//!    status, rusage, what is left in `/work` and the SysV IPC objects in
//!    its ipc namespace on the control socket;
//! 6. the supervisor checks the zygote ([`Zygote::healthy`]) and keeps it
//!    for the next task only when nothing changed that should not have and
//!    fewer than `warm-tasks-per-zygote` tasks have used it; any doubt kills
//!    it, and with it its whole pid namespace (whatever a task left behind).
//!
//! What sequential tasks share in this mode is in `docs/security.md`.

use super::cgroup::{self, TaskCgroups};
use super::proto::Report;
use super::supervise::{self, Capture, LongRun};
use super::sys;
use super::{Effective, EnforcedLimits, LimitRequest, Mechanism, Request, Sandbox, Verdict};
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The Python zygote (the bootstrap of the built-in interpreter).
const PYTHON_ZYGOTE: &str = include_str!("zygote.py");

/// A call of `entry_fn` in module `child` (source `src`), run warm.
#[derive(Debug, Clone, Default)]
pub struct WarmRequest {
    pub src: String,
    pub entry_fn: String,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    /// As [`Request::env`]: the complete environment (defaults added).
    pub env: BTreeMap<String, String>,
    pub limits: LimitRequest,
}

/// Why a task could not run warm (the caller then runs it cold).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("warm mode is off (sandbox.warm = false)")]
    Disabled,
    #[error("cannot start the warm interpreter ({interpreter}): {reason}")]
    Start { interpreter: String, reason: String },
}

/// Zygotes kept idle per sandbox (one per concurrently running task).
const IDLE_MAX: usize = 8;
/// Allowed growth of the zygote's resident memory over its baseline.
const RSS_SLACK_KB: u64 = 4096;
/// How long the zygote may take for its own steps (start-up, fork, report).
const ZYGOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// The warm zygotes of one [`Sandbox`].
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<Zygote>>,
    /// Why zygotes were replaced, most recent last (the last 64).
    retired: Mutex<Vec<String>>,
}

impl Pool {
    fn retired(&self, why: &str) {
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= 64 {
            r.remove(0);
        }
        r.push(why.to_string());
    }
}

/// One prepared interpreter.
struct Zygote {
    run: LongRun,
    cgroups: Arc<cgroup::Backends>,
    /// Our end of the control socket (the zygote's stdin).
    ctl: OwnedFd,
    /// Host pid of the zygote (the reaper's only child).
    pid: i32,
    served: u64,
    base_rss_kb: u64,
    base_fds: usize,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // The reaper is PID 1 of the zygote's pid namespace: killing it
        // kills the zygote and anything a task left behind.
        self.run.child.kill_and_reap();
        std::mem::take(&mut self.run.cg).remove(&self.cgroups);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Zygotes are started from one long-lived thread: the reaper dies with
/// the thread that cloned it (`PR_SET_PDEATHSIG`), and tokio's blocking
/// threads come and go.
fn launcher() -> &'static Mutex<mpsc::Sender<Job>> {
    static L: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    L.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("peagen-zygote-launcher".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(e) = spawned {
            // Jobs sent now fail to run; callers see a start error.
            eprintln!("sandbox: cannot start the zygote launcher thread: {e}");
        }
        Mutex::new(tx)
    })
}

fn on_launcher(job: Job) -> bool {
    launcher()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .is_ok()
}

/// The defaults every task environment starts from (as a cold task's).
pub(crate) const ENV_DEFAULTS: [(&str, &str); 4] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", super::WORK_DIR),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
];

fn wait_readable(fd: BorrowedFd<'_>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let t =
            PollTimeout::try_from(left.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, t) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(nix::errno::Errno::EINTR) if !left.is_zero() => continue,
            Err(_) => return false,
        }
    }
}

/// Drain a non-blocking pipe; true when anything was in it.
fn drain(fd: BorrowedFd<'_>) -> bool {
    let mut any = false;
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        any = true;
    }
    any
}

/// `(Threads, VmRSS in kB)` from `/proc/PID/status` (one read).
fn threads_rss(pid: i32) -> (Option<u64>, Option<u64>) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |key: &str| {
        s.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse().ok()
        })
    };
    (field("Threads"), field("VmRSS"))
}

fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn children(pid: i32) -> Option<Vec<i32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    Some(
        s.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

fn ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, then ppid.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Zygote {
    /// Start a zygote (on the launcher thread) and wait until it is ready.
    fn start(sb: &Sandbox) -> Result<Zygote, String> {
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
        sys::pass_cred(ours.as_fd()).map_err(|e| format!("SO_PASSCRED: {e}"))?;
        let python = sb.cfg.python.display().to_string();
        let mut req = Request::new([python.as_str(), "-c", PYTHON_ZYGOTE]);
        req.extra_ro_binds = interpreter_binds(&sb.cfg);
        let run = supervise::launch_long(sb, &req, theirs)?;
        let mut z = Zygote {
            run,
            cgroups: Arc::clone(&sb.cgroups),
            ctl: ours,
            pid: 0,
            served: 0,
            base_rss_kb: 0,
            base_fds: 0,
        };
        let mut buf = [0u8; 64];
        let got = wait_readable(z.ctl.as_fd(), ZYGOTE_TIMEOUT)
            .then(|| sys::recv_with_pid(z.ctl.as_fd(), &mut buf).ok())
            .flatten();
        match got {
            Some((5, Some(pid))) if &buf[..5] == b"ready" => z.pid = pid,
            _ => {
                let mut err =
                    Capture::new(z.run.err_r.try_clone().map_err(|e| e.to_string())?, 4096);
                while err.read() {}
                return Err(format!(
                    "it did not get ready: {}",
                    String::from_utf8_lossy(&err.buf).trim()
                ));
            }
        }
        if children(z.run.child.pid) != Some(vec![z.pid]) {
            return Err("the zygote is not the reaper's only child".into());
        }
        z.base_rss_kb = threads_rss(z.pid).1.unwrap_or(0);
        z.base_fds = fd_count(z.pid).unwrap_or(0);
        Ok(z)
    }

    /// Everything that must hold after a task for the zygote to serve the
    /// next one; the first failed check, if any.
    fn unhealthy(&self, left_in_work: u64, ipc_objects: u64) -> Option<&'static str> {
        let reaper = self.run.child.pid;
        if wait_readable(self.run.child.pidfd.as_fd(), Duration::ZERO) {
            return Some("the zygote's pid namespace ended");
        }
        if left_in_work != 0 {
            return Some("/work could not be emptied");
        }
        if ipc_objects != 0 {
            return Some("SysV IPC objects left in the zygote's ipc namespace");
        }
        let (threads, rss) = threads_rss(self.pid);
        if threads != Some(1) {
            return Some("the zygote is not single-threaded");
        }
        if children(self.pid).is_none_or(|c| !c.is_empty()) {
            return Some("the zygote has children left");
        }
        if children(reaper) != Some(vec![self.pid]) {
            return Some("processes left in the zygote's pid namespace");
        }
        if rss.is_none_or(|r| r > self.base_rss_kb + RSS_SLACK_KB) {
            return Some("the zygote's resident memory grew");
        }
        if fd_count(self.pid) != Some(self.base_fds) {
            return Some("the zygote's descriptors changed");
        }
        if drain(self.run.out_r.as_fd()) | drain(self.run.err_r.as_fd()) {
            return Some("the zygote wrote output");
        }
        None
    }

    /// Run one task; the verdict and whether the zygote may serve another.
    fn run_task(&mut self, sb: &Sandbox, req: &WarmRequest) -> (Verdict, Result<(), String>) {
        self.served += 1;
        let eff = Effective::new(&sb.cfg, &req.limits);
        let limits = EnforcedLimits {
            memory_bytes: supervise::en(eff.memory_bytes, Mechanism::None),
            pids: supervise::en(eff.pids, Mechanism::None),
            cpu_ms: supervise::en(eff.cpu_ms, Mechanism::None),
            wall_ms: supervise::en(eff.wall_ms, Mechanism::Supervisor),
            file_size_bytes: supervise::en(eff.file_size_bytes, Mechanism::Rlimit),
            output_bytes: supervise::en(eff.output_bytes, Mechanism::Supervisor),
            tmpfs_bytes: supervise::en(sb.cfg.tmpfs_bytes.max(1 << 20), Mechanism::Tmpfs),
        };
        let internal = |msg: String, limits: EnforcedLimits| {
            (
                Verdict::internal(format!("warm mode: {msg}"), limits, sb.isolation()),
                Err(msg),
            )
        };
        let start = Instant::now();
        let mut env: BTreeMap<&str, &str> = ENV_DEFAULTS.into_iter().collect();
        for (k, v) in &req.env {
            env.insert(k, v);
        }
        let payload = json!({
            "src": req.src,
            "entry": req.entry_fn,
            "args": req.args,
            "kwargs": req.kwargs,
            "env": env,
        })
        .to_string();
        let pipes = (|| -> std::io::Result<_> {
            let memfd = supervise::stdin_fd(payload.as_bytes())?;
            let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (t_ours, t_theirs) = sys::seqpacket_pair()?;
            sys::pass_cred(t_ours.as_fd())?;
            Ok((memfd, out_r, out_w, err_r, err_w, t_ours, t_theirs))
        })();
        let (memfd, out_r, out_w, err_r, err_w, task_sock, t_theirs) = match pipes {
            Ok(p) => p,
            Err(e) => return internal(format!("cannot create pipes: {e}"), limits),
        };
        let mut cg = TaskCgroups::create(&sb.cgroups, eff.memory_bytes, eff.pids);
        let sent = sys::send_fds(
            self.ctl.as_fd(),
            b"t",
            &[
                t_theirs.as_fd(),
                out_w.as_fd(),
                err_w.as_fd(),
                memfd.as_fd(),
            ],
        );
        drop((t_theirs, out_w, err_w, memfd));
        if let Err(e) = sent {
            cg.remove(&sb.cgroups);
            return internal(format!("cannot reach the zygote: {e}"), limits);
        }
        // The child's first byte carries its pid.
        let mut b = [0u8; 8];
        let hello = wait_readable(task_sock.as_fd(), ZYGOTE_TIMEOUT)
            .then(|| sys::recv_with_pid(task_sock.as_fd(), &mut b).ok())
            .flatten();
        let pid = match hello {
            Some((1, Some(pid))) if b[0] == b'r' && pid > 0 => pid,
            _ => {
                cg.remove(&sb.cgroups);
                return internal("the zygote did not fork a task child".into(), limits);
            }
        };
        let task = match sys::pidfd_open(pid) {
            Ok(fd) if ppid(pid) == Some(self.pid) => fd,
            _ => {
                cg.remove(&sb.cgroups);
                return internal(format!("task child {pid} is not the zygote's"), limits);
            }
        };
        // Into the task's own cgroups before it runs any task code.
        let have = cg.attach_pid(pid);
        let cpu_s = eff.cpu_ms.div_ceil(1000).max(1);
        let mut rl = vec![
            (libc::RLIMIT_CPU, cpu_s, cpu_s + 1),
            (libc::RLIMIT_FSIZE, eff.file_size_bytes, eff.file_size_bytes),
            (libc::RLIMIT_CORE, 0, 0),
            (libc::RLIMIT_NOFILE, 1024, 1024),
            (libc::RLIMIT_MSGQUEUE, 0, 0),
        ];
        if have & cgroup::MEMORY == 0 {
            rl.push((libc::RLIMIT_AS, eff.memory_bytes, eff.memory_bytes));
        }
        if have & cgroup::PIDS == 0 {
            rl.push((libc::RLIMIT_NPROC, eff.pids, eff.pids));
        }
        let go = json!(rl).to_string();
        if nix::unistd::write(&task_sock, go.as_bytes()).is_err() {
            sys::pidfd_kill(task.as_fd());
            cg.kill_all();
            cg.remove(&sb.cgroups);
            return internal("cannot release the task child".into(), limits);
        }
        for fd in [&out_r, &err_r] {
            supervise::set_nonblocking(fd);
        }
        let cap = usize::try_from(eff.output_bytes).unwrap_or(usize::MAX);
        let mut out = Capture::new(out_r, cap);
        let mut err = Capture::new(err_r, cap);
        let killed = supervise::supervise(
            task.as_fd(),
            &|| sys::pidfd_kill(task.as_fd()),
            &mut out,
            &mut err,
            &mut cg,
            &eff,
            start,
        );
        // Everything the task started goes with it.
        cg.kill_all();
        let mut done = [0u8; 128];
        let report = wait_readable(self.ctl.as_fd(), ZYGOTE_TIMEOUT)
            .then(|| sys::recv_with_pid(self.ctl.as_fd(), &mut done).ok())
            .flatten()
            .and_then(|(n, _)| {
                let s = std::str::from_utf8(&done[..n]).ok()?;
                let f: Vec<i64> = s
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (f.len() == 6).then_some(f)
            });
        let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
        while out.open && out.read() {}
        while err.open && err.read() {}
        let Some(f) = report else {
            cg.kill_all();
            cg.remove(&sb.cgroups);
            return internal("the zygote did not report the task's end".into(), limits);
        };
        let status = f[0] as i32;
        let cpu_ms = cg
            .cpu_ns()
            .map(|ns| ns as f64 / 1e6)
            .unwrap_or((f[1] + f[2]) as f64 / 1000.0);
        let mut v = supervise::measured(
            sb,
            cg,
            limits,
            supervise::Usage {
                wall_ms,
                cpu_ms,
                maxrss_kb: f[3] as u64,
                killed: killed.is_some(),
            },
            &out,
            &err,
        );
        let python = sb.cfg.python.display().to_string();
        supervise::decide(
            &mut v,
            &[Report::Exit { status }],
            killed,
            status,
            &eff,
            &python,
        );
        let health = match self.unhealthy(f[4] as u64, f[5] as u64) {
            Some(why) => Err(why.to_string()),
            None => Ok(()),
        };
        (v, health)
    }
}

/// Read-only binds an interpreter outside the configured binds needs (its
/// prefix, e.g. `/opt/python3.12` for `/opt/python3.12/bin/python3`).
pub fn interpreter_binds(cfg: &super::SandboxConfig) -> Vec<std::path::PathBuf> {
    let py = &cfg.python;
    match py.parent().and_then(std::path::Path::parent) {
        Some(prefix) if !cfg.ro_binds.iter().any(|b| py.starts_with(b)) => {
            vec![prefix.to_path_buf()]
        }
        _ => Vec::new(),
    }
}

impl Sandbox {
    /// Run `req` in a warm zygote (starting one if none is idle). `Err`
    /// when warm mode is off or no zygote could be started: run it cold.
    pub fn run_warm(self: &Arc<Self>, req: &WarmRequest) -> Result<Verdict, WarmError> {
        if !self.cfg.warm {
            return Err(WarmError::Disabled);
        }
        let idle = self
            .warm
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut z = match idle {
            Some(z) => z,
            None => self.start_zygote().map_err(|reason| WarmError::Start {
                interpreter: self.cfg.python.display().to_string(),
                reason,
            })?,
        };
        let (v, health) = z.run_task(self, req);
        let spent = z.served >= self.cfg.warm_tasks_per_zygote.max(1);
        match health {
            Ok(()) if !spent => {
                let mut idle = self.warm.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < IDLE_MAX {
                    idle.push(z);
                }
            }
            other => {
                let why = other.err().unwrap_or_else(|| "served its tasks".into());
                self.warm.retired(&why);
                drop(z);
                // Prepare the replacement off the task path.
                let me = Arc::clone(self);
                on_launcher(Box::new(move || {
                    if let Ok(z) = Zygote::start(&me) {
                        let mut idle = me.warm.idle.lock().unwrap_or_else(|e| e.into_inner());
                        if idle.len() < IDLE_MAX {
                            idle.push(z);
                        }
                    }
                }));
            }
        }
        Ok(v)
    }

    /// [`Sandbox::run_warm`] on tokio's blocking pool.
    pub async fn run_warm_async(self: &Arc<Self>, req: WarmRequest) -> Result<Verdict, WarmError> {
        let me = Arc::clone(self);
        match tokio::task::spawn_blocking(move || me.run_warm(&req)).await {
            Ok(r) => r,
            Err(e) => Ok(Verdict::internal(
                format!("sandbox thread failed: {e}"),
                self.limits_none(),
                self.isolation(),
            )),
        }
    }

    /// Why zygotes were replaced, most recent last (for tests and operators).
    pub fn warm_retired(&self) -> Vec<String> {
        self.warm
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Start one zygote in the background if none is idle, so the first
    /// prototype task does not pay for the interpreter's start (the worker
    /// calls this after READY=1). Errors are left for the first task to meet.
    pub fn prestart_warm(self: &Arc<Self>) {
        if !self.cfg.warm {
            return;
        }
        let me = Arc::clone(self);
        on_launcher(Box::new(move || {
            let mut idle = me.warm.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.is_empty() {
                drop(idle);
                if let Ok(z) = Zygote::start(&me) {
                    idle = me.warm.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < IDLE_MAX {
                        idle.push(z);
                    }
                }
            }
        }));
    }

    fn start_zygote(self: &Arc<Self>) -> Result<Zygote, String> {
        let (tx, rx) = mpsc::channel();
        let me = Arc::clone(self);
        if !on_launcher(Box::new(move || {
            // The launcher runs jobs in order: a zygote that a prestart or a
            // replacement made while this task waited is taken, not doubled.
            let idle = me.warm.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let _ = tx.send(match idle {
                Some(z) => Ok(z),
                None => Zygote::start(&me),
            });
        })) {
            return Err("the zygote launcher thread is gone".into());
        }
        rx.recv()
            .unwrap_or_else(|_| Err("the zygote launcher thread failed".into()))
    }
}
