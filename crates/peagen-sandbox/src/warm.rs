//! Warm mode: a prepared interpreter (the "zygote") waits inside a sandbox
//! with its runtime imported, and forks one fresh child per task.
//!
//! The zygote is started like any task (`supervise::launch_long`: same
//! namespaces, root, landlock, seccomp, no capabilities, its own cgroups)
//! with one end of a unix `SOCK_SEQPACKET` pair as its stdin (the control
//! socket). It never runs task code. Its children are forked one task
//! ahead, so a task does not wait for a fork or a cgroup move:
//! 1. supervisor -> zygote: `p SEQ` with a fresh task socket; the zygote
//!    forks a child and answers `f SEQ`. The child starts a new session and
//!    a nested landlock domain (cannot signal/ptrace the zygote or other
//!    task children), sends one byte on the task socket (the kernel
//!    attaches its pid, translated into our pid namespace: `SO_PASSCRED`)
//!    and blocks reading it;
//! 2. the supervisor opens a pidfd for that pid, checks that its parent is
//!    the zygote and moves it into a set of task cgroups: it is prepared;
//! 3. a task comes: the supervisor writes the task's limits into those
//!    cgroups (when they differ from the defaults the child was prepared
//!    with), resets their counters and sends the child the task's rlimits
//!    (plus the rlimit fallbacks for limits no cgroup took) with three
//!    descriptors: stdout, stderr and a sealed memfd with the request
//!    (`{src, entry, args, kwargs, env}` as JSON). Only then does the child
//!    apply them, check that `/work` and the ipc namespace are empty, send
//!    `g` (without it, a failure is ours, not the task's) and run the task
//!    in `/work`. Right after the go, the supervisor asks for the next
//!    task's child (step 1), which the zygote forks while this task runs;
//! 4. the supervisor enforces wall clock, CPU, memory and output exactly as
//!    for a cold task, on the child's pidfd and the task cgroups; when the
//!    child has ended it kills whatever is left in the task cgroups;
//! 5. the zygote reaps the child and reports its wait status and rusage
//!    (`s SEQ ...`: the verdict is made from it). Once the task cgroups are
//!    empty, the supervisor sends `w SEQ`: the zygote empties `/work` and
//!    reports what is left there and the SysV IPC objects in its ipc
//!    namespace (`c SEQ ...`);
//! 6. after the verdict the supervisor checks the zygote
//!    ([`Zygote::unhealthy`]) and confirms the next child (step 2); it keeps
//!    the zygote for the next task only when nothing changed that should
//!    not have and fewer than `warm-tasks-per-zygote` tasks have used it;
//!    any doubt kills it, and with it its whole pid namespace (whatever a
//!    task left behind, the prepared child included).
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
/// What the interpreter is started with: it reads the zygote's source as
/// the first message on the control socket (so `ps` shows this line, not
/// the whole source).
const PYTHON_STUB: &str = "import socket; _s = socket.socket(fileno=0); _src = _s.recv(1 << 20); \
_s.detach(); del _s; exec(compile(_src, 'peagen-zygote.py', 'exec'))  # peagen warm-mode zygote";

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
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Zygote>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `z` for a later task at `at` (clamped to the end, which is used
    /// first; 0 = used last), unless the pool is full (then it is dropped).
    fn put(&self, z: Zygote, at: usize) {
        let mut idle = self.idle();
        if idle.len() < IDLE_MAX {
            let at = at.min(idle.len());
            idle.insert(at, z);
        }
    }

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
    /// Sequence number of the last child asked for.
    seq: u64,
    /// The next task's child, forked and in its cgroups.
    next: Option<Prepared>,
    /// A child asked for, not yet confirmed.
    pending: Option<Pending>,
    /// Control messages read while waiting for another one: (kind, fields).
    stash: Vec<(u8, Vec<i64>)>,
}

/// A task child forked before its task: in its own cgroups, waiting.
struct Prepared {
    seq: u64,
    /// Host pid.
    pid: i32,
    pidfd: OwnedFd,
    sock: OwnedFd,
    cg: TaskCgroups,
    /// Limit bits its cgroups enforce.
    have: u8,
}

/// A child asked of the zygote (`p SEQ` sent), not yet confirmed.
struct Pending {
    seq: u64,
    sock: OwnedFd,
    cg: TaskCgroups,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // The reaper is PID 1 of the zygote's pid namespace: killing it
        // kills the zygote, its prepared child and anything a task left.
        self.run.child.kill_and_reap();
        let cgs = [
            self.next.take().map(|p| p.cg),
            self.pending.take().map(|p| p.cg),
        ];
        for mut cg in cgs.into_iter().flatten() {
            cg.kill_all();
            cg.remove(&self.cgroups);
        }
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

/// The state letter of `/proc/PID/stat` (R, S, T, Z, ...).
fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

impl Zygote {
    /// Start a zygote (on the launcher thread) and wait until it is ready.
    fn start(sb: &Sandbox) -> Result<Zygote, String> {
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
        sys::pass_cred(ours.as_fd()).map_err(|e| format!("SO_PASSCRED: {e}"))?;
        let python = sb.cfg.python.display().to_string();
        let mut req = Request::new([python.as_str(), "-c", PYTHON_STUB]);
        req.extra_ro_binds = interpreter_binds(&sb.cfg);
        sys::send_fds(ours.as_fd(), PYTHON_ZYGOTE.as_bytes(), &[])
            .map_err(|e| format!("cannot queue the zygote's source: {e}"))?;
        let run = supervise::launch_long(sb, &req, theirs)?;
        let mut z = Zygote {
            run,
            cgroups: Arc::clone(&sb.cgroups),
            ctl: ours,
            pid: 0,
            served: 0,
            base_rss_kb: 0,
            base_fds: 0,
            seq: 0,
            next: None,
            pending: None,
            stash: Vec::new(),
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
        // The first task's child, with the default limits.
        let eff = Effective::new(&sb.cfg, &LimitRequest::default());
        let first = z.prepare(sb, eff.memory_bytes, eff.pids)?;
        z.next = Some(first);
        Ok(z)
    }

    /// Ask the zygote for a child, in fresh (or pooled) task cgroups.
    fn ask(&mut self, sb: &Sandbox, memory: u64, pids: u64) -> Result<Pending, String> {
        let (ours, theirs) = sys::seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
        sys::pass_cred(ours.as_fd()).map_err(|e| format!("SO_PASSCRED: {e}"))?;
        let cg = TaskCgroups::create(&sb.cgroups, memory, pids);
        self.seq += 1;
        let msg = format!("p {}", self.seq);
        if let Err(e) = sys::send_fds(self.ctl.as_fd(), msg.as_bytes(), &[theirs.as_fd()]) {
            cg.remove(&sb.cgroups);
            return Err(format!("cannot reach the zygote: {e}"));
        }
        Ok(Pending {
            seq: self.seq,
            sock: ours,
            cg,
        })
    }

    /// The child asked for has forked: check it is the zygote's and move
    /// it into its cgroups.
    fn confirm(&mut self, sb: &Sandbox, p: Pending) -> Result<Prepared, String> {
        let Pending { seq, sock, mut cg } = p;
        let mut fail = |why: String| {
            cg.kill_all();
            std::mem::take(&mut cg).remove(&sb.cgroups);
            Err(why)
        };
        let mut b = [0u8; 8];
        let hello = wait_readable(sock.as_fd(), ZYGOTE_TIMEOUT)
            .then(|| sys::recv_with_pid(sock.as_fd(), &mut b).ok())
            .flatten();
        let pid = match hello {
            Some((1, Some(pid))) if b[0] == b'r' && pid > 0 => pid,
            _ => return fail("the zygote did not fork a task child".into()),
        };
        // Its pidfd is in the zygote's table once `f` came (the health
        // check counts it).
        if self.expect(b'f', seq).is_none() {
            return fail("the zygote did not confirm its fork".into());
        }
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) if ppid(pid) == Some(self.pid) => fd,
            _ => return fail(format!("task child {pid} is not the zygote's")),
        };
        // Into the task's own cgroups before it runs any task code.
        let have = cg.attach_pid(pid);
        Ok(Prepared {
            seq,
            pid,
            pidfd,
            sock,
            cg,
            have,
        })
    }

    fn prepare(&mut self, sb: &Sandbox, memory: u64, pids: u64) -> Result<Prepared, String> {
        let p = self.ask(sb, memory, pids)?;
        self.confirm(sb, p)
    }

    /// Kill a prepared child that will not run a task, and wait until the
    /// zygote has emptied `/work` after it (so it cannot empty it under
    /// the next task). False when the zygote did not report.
    fn discard(&mut self, sb: &Sandbox, p: Prepared) -> bool {
        sys::pidfd_kill(p.pidfd.as_fd());
        let mut cg = p.cg;
        let gone = cg.kill_all();
        cg.remove(&sb.cgroups);
        gone && self.expect(b's', p.seq).is_some() && self.cleaned(p.seq).is_some()
    }

    /// Ask the zygote to empty `/work` after child `seq` (whose processes
    /// are all gone) and wait for its report: `[seq, left, ipc objects]`.
    fn cleaned(&mut self, seq: u64) -> Option<Vec<i64>> {
        let msg = format!("w {seq}");
        sys::send_fds(self.ctl.as_fd(), msg.as_bytes(), &[]).ok()?;
        self.expect(b'c', seq).filter(|c| c.len() == 3)
    }

    /// The next control message of `kind` for child `seq` (its fields after
    /// the kind: `seq` first); others are kept for later. `None` when the
    /// zygote does not send it in time.
    fn expect(&mut self, kind: u8, seq: u64) -> Option<Vec<i64>> {
        let is = |k: u8, f: &[i64]| k == kind && f.first() == Some(&(seq as i64));
        if let Some(i) = self.stash.iter().position(|(k, f)| is(*k, f)) {
            return Some(self.stash.remove(i).1);
        }
        let deadline = Instant::now() + ZYGOTE_TIMEOUT;
        let mut buf = [0u8; 128];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.ctl.as_fd(), left) {
                return None;
            }
            let (n, _) = sys::recv_with_pid(self.ctl.as_fd(), &mut buf).ok()?;
            if n == 0 {
                return None;
            }
            let msg = std::str::from_utf8(&buf[..n]).ok()?;
            let mut words = msg.split_whitespace();
            let k = words.next()?.as_bytes().first().copied()?;
            let f: Vec<i64> = words.filter_map(|x| x.parse().ok()).collect();
            if is(k, &f) {
                return Some(f);
            }
            // A message about a discarded child, or one that comes later.
            if self.stash.len() >= 16 {
                self.stash.remove(0);
            }
            self.stash.push((k, f));
        }
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
        let prepared: Vec<i32> = self.next.iter().map(|p| p.pid).collect();
        if children(self.pid) != Some(prepared) {
            return Some("the zygote has children left");
        }
        if let Some(p) = &self.next {
            // Blocked waiting for its task, or on its way there; not
            // stopped, traced or dead.
            if wait_readable(p.pidfd.as_fd(), Duration::ZERO)
                || !matches!(state(p.pid), Some('S' | 'R'))
            {
                return Some("the prepared task child is not waiting");
            }
        }
        if children(reaper) != Some(vec![self.pid]) {
            return Some("processes left in the zygote's pid namespace");
        }
        if rss.is_none_or(|r| r > self.base_rss_kb + RSS_SLACK_KB) {
            return Some("the zygote's resident memory grew");
        }
        // The zygote holds one pidfd per live child.
        if fd_count(self.pid) != Some(self.base_fds + usize::from(self.next.is_some())) {
            return Some("the zygote's descriptors changed");
        }
        if drain(self.run.out_r.as_fd()) | drain(self.run.err_r.as_fd()) {
            return Some("the zygote wrote output");
        }
        None
    }

    /// The prepared child for a task with these limits: the waiting one
    /// when it is alive and its cgroups take the limits, else one made now.
    fn child_for(&mut self, sb: &Sandbox, eff: &Effective) -> Result<Prepared, String> {
        if let Some(mut p) = self.next.take() {
            if !wait_readable(p.pidfd.as_fd(), Duration::ZERO)
                && p.cg.retarget(eff.memory_bytes, eff.pids)
            {
                return Ok(p);
            }
            if !self.discard(sb, p) {
                return Err("the zygote did not report a discarded child".into());
            }
        }
        if let Some(p) = self.pending.take() {
            let p = self.confirm(sb, p)?;
            if !self.discard(sb, p) {
                return Err("the zygote did not report a discarded child".into());
            }
        }
        self.prepare(sb, eff.memory_bytes, eff.pids)
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
            Ok((memfd, out_r, out_w, err_r, err_w))
        })();
        let (memfd, out_r, out_w, err_r, err_w) = match pipes {
            Ok(p) => p,
            Err(e) => return internal(format!("cannot create pipes: {e}"), limits),
        };
        let child = match self.child_for(sb, &eff) {
            Ok(c) => c,
            Err(e) => return internal(e, limits),
        };
        let cpu_s = eff.cpu_ms.div_ceil(1000).max(1);
        let mut rl = vec![
            (libc::RLIMIT_CPU, cpu_s, cpu_s + 1),
            (libc::RLIMIT_FSIZE, eff.file_size_bytes, eff.file_size_bytes),
            (libc::RLIMIT_CORE, 0, 0),
            (libc::RLIMIT_NOFILE, 1024, 1024),
            (libc::RLIMIT_MSGQUEUE, 0, 0),
        ];
        if child.have & cgroup::MEMORY == 0 {
            rl.push((libc::RLIMIT_AS, eff.memory_bytes, eff.memory_bytes));
        }
        if child.have & cgroup::PIDS == 0 {
            rl.push((libc::RLIMIT_NPROC, eff.pids, eff.pids));
        }
        let go = json!(rl).to_string();
        // The task's own clock (wall limit) starts here; `start` (the
        // verdict's wall time) also holds getting its child ready.
        let go_at = Instant::now();
        let sent = sys::send_fds(
            child.sock.as_fd(),
            go.as_bytes(),
            &[out_w.as_fd(), err_w.as_fd(), memfd.as_fd()],
        );
        drop((out_w, err_w, memfd));
        let Prepared {
            seq,
            pidfd: task,
            sock,
            mut cg,
            ..
        } = child;
        if sent.is_err() {
            sys::pidfd_kill(task.as_fd());
            cg.kill_all();
            cg.remove(&sb.cgroups);
            return internal("cannot release the task child".into(), limits);
        }
        // The next task's child is forked while this one runs.
        if self.served < sb.cfg.warm_tasks_per_zygote.max(1) {
            let dflt = Effective::new(&sb.cfg, &LimitRequest::default());
            self.pending = self.ask(sb, dflt.memory_bytes, dflt.pids).ok();
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
            go_at,
        );
        // Everything the task started goes with it; /work is emptied only
        // once that is proved (a straggler could write into it otherwise).
        let all_gone = cg.kill_all();
        let ended = self.expect(b's', seq).filter(|f| f.len() == 5);
        // The child says "g" just before the task's code: without it, the
        // set-up failed (or found an earlier task's leftovers).
        let mut g = [0u8; 1];
        let started = wait_readable(sock.as_fd(), Duration::ZERO)
            && matches!(sys::recv_with_pid(sock.as_fd(), &mut g), Ok((1, _)))
            && g[0] == b'g';
        drop(sock);
        let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
        while out.open && out.read() {}
        while err.open && err.read() {}
        let Some(f) = ended else {
            cg.kill_all();
            cg.remove(&sb.cgroups);
            return internal("the zygote did not report the task's end".into(), limits);
        };
        if !started && killed.is_none() {
            cg.remove(&sb.cgroups);
            let why = String::from_utf8_lossy(&err.buf).trim().to_string();
            return internal(
                format!("the task child failed before the task: {why}"),
                limits,
            );
        }
        let status = f[1] as i32;
        let cpu_ms = cg
            .cpu_ns()
            .map(|ns| ns as f64 / 1e6)
            .unwrap_or((f[2] + f[3]) as f64 / 1000.0);
        let mut v = supervise::measured(
            sb,
            cg,
            limits,
            supervise::Usage {
                wall_ms,
                cpu_ms,
                maxrss_kb: f[4] as u64,
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
        // After the verdict: the zygote's clean-up, the next child, the
        // health check.
        let health = (|| {
            if !all_gone {
                return Err("processes of the task survived SIGKILL".to_string());
            }
            if !started {
                return Err("the task was killed before it started".to_string());
            }
            let c = self
                .cleaned(seq)
                .ok_or("the zygote did not report emptying /work")?;
            if let Some(p) = self.pending.take() {
                self.next = Some(self.confirm(sb, p)?);
            }
            match self.unhealthy(c[1] as u64, c[2] as u64) {
                Some(why) => Err(why.to_string()),
                None => Ok(()),
            }
        })();
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
        let idle = self.warm.idle().pop();
        let mut z = match idle {
            Some(z) => z,
            None => self.start_zygote().map_err(|reason| WarmError::Start {
                interpreter: self.cfg.python.display().to_string(),
                reason,
            })?,
        };
        let (v, health) = z.run_task(self, req);
        let budget = self.cfg.warm_tasks_per_zygote.max(1);
        let spent = z.served >= budget;
        if health.is_ok() && budget >= 2 && z.served + 1 == budget {
            // One task left: start the successor now, so the task after
            // the last one does not wait for an interpreter's start. It
            // goes under the idle ones, which are used first.
            self.start_in_background(0, false);
        }
        match health {
            Ok(()) if !spent => self.warm.put(z, usize::MAX),
            other => {
                let anomaly = other.is_err();
                let why = other.err().unwrap_or_else(|| "served its tasks".into());
                self.warm.retired(&why);
                drop(z);
                // (A spent zygote's successor was started a task ago.)
                if budget < 2 || (anomaly && !spent) {
                    // The replacement, off the task path.
                    self.start_in_background(usize::MAX, false);
                }
            }
        }
        Ok(v)
    }

    /// Start a zygote on the launcher thread and put it into the idle pool
    /// at `at` ([`Pool::put`]); with `unless_idle`, only when none is idle
    /// by the time the launcher gets to it.
    fn start_in_background(self: &Arc<Self>, at: usize, unless_idle: bool) {
        let me = Arc::clone(self);
        on_launcher(Box::new(move || {
            if unless_idle && !me.warm.idle().is_empty() {
                return;
            }
            if let Ok(z) = Zygote::start(&me) {
                me.warm.put(z, at);
            }
        }));
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

    /// Zygotes waiting idle (for tests and operators).
    pub fn warm_idle(&self) -> usize {
        self.warm.idle().len()
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
        self.start_in_background(usize::MAX, true);
    }

    fn start_zygote(self: &Arc<Self>) -> Result<Zygote, String> {
        let (tx, rx) = mpsc::channel();
        let me = Arc::clone(self);
        if !on_launcher(Box::new(move || {
            // The launcher runs jobs in order: a zygote that a prestart or a
            // replacement made while this task waited is taken, not doubled.
            let idle = me.warm.idle().pop();
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
