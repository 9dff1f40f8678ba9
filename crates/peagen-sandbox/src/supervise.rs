//! Launch, supervision and verdict of one run.
//!
//! Order (parent | child, see `child.rs`):
//! 1. parent: cgroups created (v1 `tasks` files opened), pipes/memfd made,
//!    signals blocked, `clone(NEWUSER|NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS|
//!    PIDFD[|VM])` onto a pooled stack ([`launch`]).
//! 2. parent: uid/gid maps, v2 cgroup attach, release byte (carries which
//!    limits the v2 cgroups took) ([`release`]).
//! 3. child (PID 1 of the pid ns = the reaper): joins the v1 cgroups,
//!    unshare cgroupns, ids, private mounts, tmpfs root + ro binds + /dev +
//!    /proc, pivot_root, root read-only, work files, rlimits (+ fallbacks
//!    for the limits no cgroup took), securebits + bounding set +
//!    capabilities dropped, no_new_privs, landlock, seccomp (last), fds.
//! 4. reaper starts the user process (vfork-style): default signal
//!    dispositions, nested landlock domain, signals unblocked, setsid,
//!    execve.
//! 5. reaper reaps everything, reports the user process's wait status on
//!    the status pipe and exits; the kernel kills whatever is left in the
//!    pid namespace. The parent polls output, pidfd, the OOM event and the
//!    clock ([`supervise`]), then builds the [`Verdict`] ([`decide`]).

use super::cgroup::TaskCgroups;
use super::child;
use super::plan::Plan;
use super::proto::{Report, Step, MAX_MSGS, MSG_BYTES};
use super::sys::Stack;
use super::{
    signal_name, Effective, Enforced, EnforcedLimits, Mechanism, Request, Sandbox, Status, Verdict,
};
use libc::{c_int, c_ulong, c_void};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::{Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Why a run could not start; the verdict is `internal_error` with this
/// as its message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("cannot create pipes: {0}")]
    Pipes(std::io::Error),
    #[error("cannot map the sandbox stacks: {0}")]
    Stacks(std::io::Error),
    #[error("setns(shared netns): {0}")]
    Setns(Errno),
    #[error("clone failed: {0}")]
    Clone(std::io::Error),
    #[error("sandbox set-up: {file}: {err}")]
    IdMap {
        file: &'static str,
        err: std::io::Error,
    },
    #[error("cannot release the sandbox child")]
    Release,
}

/// The parent's ends and the child's ends of one run's descriptors.
struct Pipes {
    out_r: OwnedFd,
    out_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    status_r: OwnedFd,
    status_w: OwnedFd,
    sync_r: OwnedFd,
    sync_w: OwnedFd,
    stdin: OwnedFd,
}

impl Pipes {
    fn new(stdin: &[u8]) -> std::io::Result<Pipes> {
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC);
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (sync_r, sync_w) = pipe()?;
        Ok(Pipes {
            out_r,
            out_w,
            err_r,
            err_w,
            status_r,
            status_w,
            sync_r,
            sync_w,
            stdin: stdin_fd(stdin)?,
        })
    }
}

/// The task's stdin: a sealed memfd (the task cannot change what a retry
/// would read, and needs no writer thread).
pub(crate) fn stdin_fd(data: &[u8]) -> std::io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"peagen-stdin",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(&f, FcntlArg::F_ADD_SEALS(seals))?;
    f.rewind()?;
    Ok(f.into())
}

pub(crate) fn set_nonblocking(fd: impl AsFd) {
    let fd = fd.as_fd();
    if let Ok(fl) = fcntl(fd, FcntlArg::F_GETFL) {
        let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd, FcntlArg::F_SETFL(fl));
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kill {
    Wall,
    Cpu,
    Output,
    Memory,
}

pub(crate) fn en(value: u64, mechanism: Mechanism) -> Enforced {
    Enforced { value, mechanism }
}

pub(crate) fn run(sb: &Sandbox, req: &Request) -> Verdict {
    let eff = Effective::new(&sb.cfg, &req.limits);
    let limits = EnforcedLimits {
        memory_bytes: en(eff.memory_bytes, Mechanism::None),
        pids: en(eff.pids, Mechanism::None),
        cpu_ms: en(eff.cpu_ms, Mechanism::None),
        wall_ms: en(eff.wall_ms, Mechanism::Supervisor),
        file_size_bytes: en(eff.file_size_bytes, Mechanism::None),
        output_bytes: en(eff.output_bytes, Mechanism::Supervisor),
        tmpfs_bytes: en(eff.tmpfs_bytes, Mechanism::None),
    };
    let mut plan = match Plan::build(&sb.fixed, req, &eff) {
        Ok(p) => p,
        Err(e) => {
            let mut v = Verdict::internal(format!("bad request: {e}"), limits, sb.isolation());
            v.status = Status::RuntimeError;
            return v;
        }
    };
    let internal =
        |e: LaunchError, limits| Verdict::internal(e.to_string(), limits, sb.isolation());
    let pipes = match Pipes::new(&req.stdin) {
        Ok(p) => p,
        Err(e) => return internal(LaunchError::Pipes(e), limits),
    };
    let (mut cg, stack) = match wire(sb, &mut plan, &pipes, pipes.stdin.as_raw_fd(), &eff) {
        Ok(w) => w,
        Err(e) => return internal(e, limits),
    };
    plan.shared_vm = sb.fixed.share_vm && cg.shared_vm_safe();

    let start = Instant::now();
    // From here on the child runs on `stack` and reads `plan`: the guard
    // (declared after both, so dropped before them) kills and reaps it on
    // any way out.
    let mut child = match launch(sb, &plan, &stack) {
        Ok(c) => c,
        Err(e) => {
            cg.remove(&sb.cgroups);
            sb.fixed.stacks.put(stack);
            return internal(e, limits);
        }
    };
    let Pipes {
        out_r,
        err_r,
        status_r,
        sync_w,
        ..
    } = pipes; // the child's ends close here
               // Non-blocking reads: a sibling sandbox cloned concurrently may hold a
               // copy of our write ends until its own close_range, so EOF is not
               // guaranteed right after our task ends; EAGAIN then means "all read".
    for fd in [&out_r, &err_r, &status_r] {
        set_nonblocking(fd);
    }
    if let Err(e) = release(sb, child.pid, &mut cg, sync_w) {
        child.kill_and_reap();
        cg.remove(&sb.cgroups);
        return internal(e, limits);
    }

    let cap = usize::try_from(eff.output_bytes).unwrap_or(usize::MAX);
    let mut out = Capture::new(out_r, cap);
    let mut err = Capture::new(err_r, cap);
    let killed = supervise(
        child.pidfd.as_fd(),
        &|| child.kill(),
        &mut out,
        &mut err,
        &mut cg,
        &eff,
        start,
    );
    // Reap the init; everything in its pid namespace is gone with it.
    let (status, ru) = child.reap();
    drop(child);
    sb.fixed.stacks.put(stack);
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    // Remaining output: every writer of the task is dead, so what is in
    // the pipes is all there is (read until EOF or EAGAIN).
    while out.open && out.read() {}
    while err.open && err.read() {}
    let mut buf = [0u8; MAX_MSGS * MSG_BYTES];
    let n = nix::unistd::read(&status_r, &mut buf).unwrap_or(0);
    let reports = Report::parse_all(buf.get(..n).unwrap_or_default());
    for r in &reports {
        if let Report::CgLost { bits } = r {
            cg.forget(*bits);
        }
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    let cpu_ms = cg
        .cpu_ns()
        .map(|ns| ns as f64 / 1e6)
        .unwrap_or_else(|| tv(ru.ru_utime) + tv(ru.ru_stime));
    let mut v = measured(
        sb,
        cg,
        limits,
        Usage {
            wall_ms,
            cpu_ms,
            maxrss_kb: ru.ru_maxrss as u64,
            killed: killed.is_some(),
        },
        &out,
        &err,
    );
    v.limits.file_size_bytes.mechanism = Mechanism::Rlimit;
    v.limits.tmpfs_bytes.mechanism = Mechanism::Tmpfs;
    decide(&mut v, &reports, killed, status, &eff, &req.argv[0]);
    v
}

/// A long-lived sandboxed process (the warm mode's zygote): the reaper,
/// the cgroups it runs in, and the read ends of its stdout/stderr.
pub(crate) struct LongRun {
    pub(crate) child: Child,
    pub(crate) cg: TaskCgroups,
    pub(crate) out_r: OwnedFd,
    pub(crate) err_r: OwnedFd,
    _status_r: OwnedFd,
}

/// Start `req` like [`run`] does, with `stdin` as its standard input, and
/// return without waiting for it. The reaper gets its own copy of memory
/// (no `CLONE_VM`), so the plan and stack are free again on return. The
/// reaper dies with the calling thread (`PR_SET_PDEATHSIG`): call this from
/// a thread that lives as long as the process should.
pub(crate) fn launch_long(sb: &Sandbox, req: &Request, stdin: OwnedFd) -> Result<LongRun, String> {
    let eff = Effective::new(&sb.cfg, &req.limits);
    let mut plan = Plan::build(&sb.fixed, req, &eff).map_err(|e| format!("bad request: {e}"))?;
    let pipes = Pipes::new(&[]).map_err(|e| LaunchError::Pipes(e).to_string())?;
    let (mut cg, stack) =
        wire(sb, &mut plan, &pipes, stdin.as_raw_fd(), &eff).map_err(|e| e.to_string())?;
    plan.shared_vm = false;
    let launched = launch(sb, &plan, &stack);
    // No CLONE_VM: the child has its own copy of plan and stack by now.
    sb.fixed.stacks.put(stack);
    let mut child = match launched {
        Ok(c) => c,
        Err(e) => {
            cg.remove(&sb.cgroups);
            return Err(e.to_string());
        }
    };
    drop(stdin);
    let Pipes {
        out_r,
        err_r,
        status_r,
        sync_w,
        ..
    } = pipes;
    for fd in [&out_r, &err_r, &status_r] {
        set_nonblocking(fd);
    }
    if let Err(e) = release(sb, child.pid, &mut cg, sync_w) {
        child.kill_and_reap();
        cg.remove(&sb.cgroups);
        return Err(e.to_string());
    }
    Ok(LongRun {
        child,
        cg,
        out_r,
        err_r,
        _status_r: status_r,
    })
}

/// Clone the reaper onto `stack`, running [`child::reaper_main`] on `plan`.
/// Put the pipes' child ends (and `stdin`) into `plan`, create the task
/// cgroups and take a clone stack: what a cold task and a zygote share
/// before [`launch`].
fn wire(
    sb: &Sandbox,
    plan: &mut Plan,
    pipes: &Pipes,
    stdin: std::os::fd::RawFd,
    eff: &Effective,
) -> Result<(TaskCgroups, Stack), LaunchError> {
    plan.stdin_fd = stdin;
    plan.out_w = pipes.out_w.as_raw_fd();
    plan.err_w = pipes.err_w.as_raw_fd();
    plan.status_w = pipes.status_w.as_raw_fd();
    plan.sync_r = pipes.sync_r.as_raw_fd();
    let mut cg = TaskCgroups::create(&sb.cgroups, eff.memory_bytes, eff.pids);
    plan.cg_join = cg.join_fds();
    match sb.fixed.stacks.take() {
        Ok(stack) => {
            plan.user_stack_top = stack.user_top();
            Ok((cg, stack))
        }
        Err(e) => {
            cg.remove(&sb.cgroups);
            Err(LaunchError::Stacks(e))
        }
    }
}

fn launch(sb: &Sandbox, plan: &Plan, stack: &Stack) -> Result<Child, LaunchError> {
    let mut flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD) as c_ulong
        | libc::SIGCHLD as c_ulong;
    if plan.shared_vm {
        flags |= libc::CLONE_VM as c_ulong;
    }
    // A shared empty netns must be joined before the user namespace is
    // created (setns from inside the new userns is EPERM): this thread
    // joins it for the clone and returns to the process's netns at once.
    let netns = nix::sched::CloneFlags::CLONE_NEWNET;
    match &sb.fixed.shared_net {
        Some((empty, _)) => nix::sched::setns(empty, netns).map_err(LaunchError::Setns)?,
        None => flags |= libc::CLONE_NEWNET as c_ulong,
    }
    // The child starts with every signal blocked (and the reaper keeps them
    // blocked): no handler of the worker's may run in it.
    // Raw syscall: glibc's sigfillset/pthread_sigmask leave out its own
    // signals (32, 33), and glibc has a handler for 33.
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: 8-byte kernel sigsets on our stack; restored right after.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    };
    let mut pidfd: c_int = -1;
    // SAFETY: the child runs `reaper_main(plan)` on `stack`, which the
    // caller keeps mapped and reserved for it until it is reaped (the
    // returned guard reaps it on every way out), as it keeps `plan` alive
    // and unchanged; `child_main` makes raw syscalls only.
    let pid = unsafe {
        super::sys::clone_on(
            flags,
            stack.reaper_top(),
            &mut pidfd,
            child::reaper_main,
            plan as *const Plan as *mut c_void,
        )
    };
    // SAFETY: restores this thread's own mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if let Some((_, own)) = &sb.fixed.shared_net {
        if let Err(e) = nix::sched::setns(own, netns) {
            // A worker thread left in the empty netns would break later
            // network use in ways that are hard to see: stop loudly.
            eprintln!("sandbox: cannot return to the worker's network namespace: {e}");
            std::process::abort();
        }
    }
    if pid < 0 {
        let errno = i32::try_from(pid.unsigned_abs()).unwrap_or(libc::EINVAL);
        return Err(LaunchError::Clone(std::io::Error::from_raw_os_error(errno)));
    }
    Ok(Child {
        // SAFETY: CLONE_PIDFD stored a fresh descriptor that we now own.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        pid: pid as i32,
        reaped: false,
    })
}

/// Id maps, v2 cgroups, then the release byte (the limit bits the v2
/// cgroups took) that lets the child go on.
fn release(
    sb: &Sandbox,
    pid: i32,
    cg: &mut TaskCgroups,
    sync_w: OwnedFd,
) -> Result<(), LaunchError> {
    let proc_ = format!("/proc/{pid}");
    let write = |file: &'static str, what: String| {
        std::fs::write(format!("{proc_}/{file}"), what)
            .map_err(|err| LaunchError::IdMap { file, err })
    };
    if !sb.fixed.privileged {
        write("setgroups", "deny".into())?;
    }
    write("uid_map", format!("0 {} 1\n", sb.fixed.host_uid))?;
    write("gid_map", format!("0 {} 1\n", sb.fixed.host_gid))?;
    let rel = cg.attach_v2(pid);
    match nix::unistd::write(&sync_w, &[rel]) {
        Ok(1) => Ok(()),
        _ => Err(LaunchError::Release),
    }
}

/// Watch the running task until its init exits: output (capped), wall
/// clock, CPU time (cgroup accounting) and the OOM event. Kills the whole
/// task at the first limit it passes and says which.
pub(crate) fn supervise(
    pidfd: BorrowedFd<'_>,
    kill_task: &dyn Fn(),
    out: &mut Capture,
    err: &mut Capture,
    cg: &mut TaskCgroups,
    eff: &Effective,
    start: Instant,
) -> Option<Kill> {
    let deadline = start + Duration::from_millis(eff.wall_ms);
    let cpu_limit_ns = eff.cpu_ms.saturating_mul(1_000_000);
    let poll_cpu = cg.cpu_mech() != Mechanism::None;
    let mut killed: Option<Kill> = None;
    let kill = |why: Kill, killed: &mut Option<Kill>| {
        if killed.is_none() {
            *killed = Some(why);
            kill_task();
        }
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            kill(Kill::Wall, &mut killed);
        }
        let mut timeout = if killed.is_some() {
            100
        } else {
            let left = deadline.saturating_duration_since(now).as_millis();
            u32::try_from(left).unwrap_or(u32::MAX / 2) + 1
        };
        if poll_cpu && killed.is_none() {
            timeout = timeout.min(25);
        }
        let (exited, out_ready, err_ready, oom_ready, failed) = {
            let mut fds = vec![PollFd::new(pidfd, PollFlags::POLLIN)];
            let oi = poll_in(&mut fds, out.open.then(|| out.fd.as_fd()));
            let ei = poll_in(&mut fds, err.open.then(|| err.fd.as_fd()));
            let mi = poll_in(&mut fds, cg.oom_event().filter(|_| killed.is_none()));
            let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
            let failed = matches!(nix::poll::poll(&mut fds, t), Err(e) if e != Errno::EINTR);
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds.get(i))
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
            };
            (ready(Some(0)), ready(oi), ready(ei), ready(mi), failed)
        };
        if failed {
            kill(Kill::Wall, &mut killed);
        }
        if out_ready {
            out.read();
        }
        if err_ready {
            err.read();
        }
        if out.over || err.over {
            kill(Kill::Output, &mut killed);
        }
        if oom_ready {
            // At the memory limit with the OOM killer off: the task is
            // stalled until we kill it.
            kill(Kill::Memory, &mut killed);
        }
        if poll_cpu && killed.is_none() && cg.cpu_ns().is_some_and(|ns| ns > cpu_limit_ns) {
            kill(Kill::Cpu, &mut killed);
        }
        if exited {
            return killed;
        }
    }
}

/// Add `fd` (if any) to `fds` for reading; returns its index.
fn poll_in<'f>(fds: &mut Vec<PollFd<'f>>, fd: Option<BorrowedFd<'f>>) -> Option<usize> {
    let fd = fd?;
    fds.push(PollFd::new(fd, PollFlags::POLLIN));
    Some(fds.len() - 1)
}

/// What a finished task used, measured outside the task cgroups.
pub(crate) struct Usage {
    pub(crate) wall_ms: f64,
    /// From the task cgroup, else rusage (what the caller computed).
    pub(crate) cpu_ms: f64,
    /// The rusage max RSS, used when no cgroup measured the peak.
    pub(crate) maxrss_kb: u64,
    pub(crate) killed: bool,
}

/// The verdict's measured part, for the cold and the warm path alike: peak
/// memory (the task cgroup, else max RSS), what enforced each limit (the
/// cgroups the task really joined, else the rlimit the child set in their
/// place), the output. Removes the task cgroups; [`decide`] sets the rest.
pub(crate) fn measured(
    sb: &Sandbox,
    mut cg: TaskCgroups,
    mut limits: EnforcedLimits,
    u: Usage,
    out: &Capture,
    err: &Capture,
) -> Verdict {
    let (peak, peak_src) = match cg.peak_memory() {
        Some(p) => (
            Some(p),
            if cg.memory_mech() == Mechanism::CgroupV2 {
                "cgroup_v2"
            } else {
                "cgroup_v1"
            },
        ),
        None => (Some(u.maxrss_kb * 1024), "rusage"),
    };
    let oom = cg.oom_hit();
    let or_rlimit = |m: Mechanism| match m {
        Mechanism::None => Mechanism::Rlimit,
        m => m,
    };
    limits.memory_bytes.mechanism = or_rlimit(cg.memory_mech());
    limits.pids.mechanism = or_rlimit(cg.pids_mech());
    limits.cpu_ms.mechanism = or_rlimit(cg.cpu_mech());
    cg.remove(&sb.cgroups);
    Verdict {
        status: Status::InternalError,
        exit_code: None,
        signal: None,
        signal_name: None,
        message: String::new(),
        wall_ms: u.wall_ms,
        cpu_ms: u.cpu_ms,
        peak_memory_bytes: peak,
        peak_memory_source: peak_src.to_string(),
        oom_killed: oom,
        killed: u.killed,
        stdout: String::from_utf8_lossy(&out.buf).into_owned(),
        stderr: String::from_utf8_lossy(&err.buf).into_owned(),
        stdout_truncated: out.over,
        stderr_truncated: err.over,
        limits,
        isolation: sb.isolation(),
    }
}

/// Status and message of the verdict from what the child reported, what
/// the supervisor killed for, and the init's wait status.
pub(crate) fn decide(
    v: &mut Verdict,
    reports: &[Report],
    killed: Option<Kill>,
    init_status: c_int,
    eff: &Effective,
    argv0: &str,
) {
    let setup_err = reports.iter().find_map(|r| match r {
        Report::Setup { step, errno } => Some((*step, *errno)),
        _ => None,
    });
    let exec_err = reports.iter().find_map(|r| match r {
        Report::Exec { errno } => Some(*errno),
        _ => None,
    });
    let exit = reports.iter().find_map(|r| match r {
        Report::Exit { status } => Some(*status),
        _ => None,
    });
    if let Some((step, errno)) = setup_err {
        v.message = format!(
            "sandbox set-up failed at {}: {}",
            step.map_or("?", Step::name),
            std::io::Error::from_raw_os_error(errno)
        );
        v.status = if step == Some(Step::WriteFiles) {
            Status::RuntimeError
        } else {
            Status::InternalError
        };
        return;
    }
    if let Some(ws) = exit {
        if libc::WIFEXITED(ws) {
            v.exit_code = Some(libc::WEXITSTATUS(ws));
            v.status = if v.exit_code == Some(0) {
                Status::Ok
            } else {
                Status::RuntimeError
            };
        } else if libc::WIFSIGNALED(ws) {
            let sig = libc::WTERMSIG(ws);
            v.signal = Some(sig);
            v.signal_name = Some(signal_name(sig));
            v.status = Status::Signal;
            if sig == libc::SIGXCPU || (sig == libc::SIGKILL && v.cpu_ms >= eff.cpu_ms as f64) {
                v.status = Status::Timeout;
                v.message = "CPU time limit exceeded".into();
            } else if sig == libc::SIGXFSZ {
                v.message = "file size limit exceeded".into();
            }
        }
        if let Some(errno) = exec_err {
            v.message = format!(
                "cannot execute {argv0:?}: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }
    match killed {
        Some(Kill::Wall) => {
            v.status = Status::Timeout;
            v.message = format!("wall clock limit of {} ms exceeded", eff.wall_ms);
        }
        Some(Kill::Cpu) => {
            v.status = Status::Timeout;
            v.message = format!("CPU time limit of {} ms exceeded", eff.cpu_ms);
        }
        Some(Kill::Output) => {
            v.status = Status::OutputLimit;
            v.message = format!("output over {} bytes", eff.output_bytes);
        }
        Some(Kill::Memory) => {
            v.status = Status::MemoryLimit;
            v.message = format!("memory limit of {} bytes exceeded", eff.memory_bytes);
        }
        None if exit.is_none() => {
            v.message =
                format!("sandbox init ended without a status (wait status {init_status:#x})");
            return;
        }
        None => {}
    }
    if killed.is_none() {
        if v.oom_killed && v.status != Status::Ok {
            v.status = Status::MemoryLimit;
            v.message = format!("memory limit of {} bytes exceeded", eff.memory_bytes);
        } else if v.stdout_truncated || v.stderr_truncated {
            v.status = Status::OutputLimit;
            v.message = format!("output over {} bytes", eff.output_bytes);
        }
    }
}

/// The reaper, from its clone until it is reaped. It runs on a stack and
/// reads a plan that the parent owns, so it must be gone before they are:
/// dropping this kills and reaps it unless that already happened.
pub(crate) struct Child {
    pub(crate) pidfd: OwnedFd,
    pub(crate) pid: i32,
    reaped: bool,
}

impl Child {
    pub(crate) fn kill(&self) {
        // SAFETY: pidfd_send_signal on our own pidfd, no info pointer;
        // SIGKILL of the pid namespace's init kills every process in it.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<c_void>(),
                0u32,
            )
        };
    }

    /// Wait for the init (its wait status and resource usage).
    fn reap(&mut self) -> (c_int, libc::rusage) {
        let mut status: c_int = 0;
        // SAFETY: rusage is plain data, all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers.
        while unsafe { libc::wait4(self.pid, &mut status, libc::__WALL, &mut ru) } < 0
            && Errno::last() == Errno::EINTR
        {}
        self.reaped = true;
        (status, ru)
    }

    pub(crate) fn kill_and_reap(&mut self) {
        self.kill();
        self.reap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_and_reap();
        }
    }
}

/// A pipe read with a byte cap; data beyond the cap is read and dropped.
pub(crate) struct Capture {
    pub(crate) fd: OwnedFd,
    pub(crate) buf: Vec<u8>,
    cap: usize,
    pub(crate) over: bool,
    pub(crate) open: bool,
}

impl Capture {
    pub(crate) fn new(fd: OwnedFd, cap: usize) -> Capture {
        Capture {
            fd,
            buf: Vec::new(),
            cap,
            over: false,
            open: true,
        }
    }

    /// One read; false when nothing more is available right now.
    pub(crate) fn read(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match nix::unistd::read(&self.fd, &mut chunk) {
            Err(Errno::EINTR) => true,
            Err(Errno::EAGAIN) => false,
            Err(_) | Ok(0) => {
                self.open = false;
                false
            }
            Ok(n) => {
                let room = self.cap.saturating_sub(self.buf.len());
                if n > room {
                    self.over = true;
                }
                self.buf.extend_from_slice(&chunk[..n.min(room)]);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SandboxConfig;

    fn verdict() -> Verdict {
        let cfg = SandboxConfig::default();
        let mut v = Verdict::internal(
            String::new(),
            EnforcedLimits {
                memory_bytes: en(1, Mechanism::None),
                pids: en(1, Mechanism::None),
                cpu_ms: en(1, Mechanism::None),
                wall_ms: en(1, Mechanism::None),
                file_size_bytes: en(1, Mechanism::None),
                output_bytes: en(1, Mechanism::None),
                tmpfs_bytes: en(1, Mechanism::None),
            },
            crate::Isolation {
                namespaces: vec![],
                host_uid: cfg.uid,
                landlock_abi: 0,
                seccomp: true,
            },
        );
        v.status = Status::InternalError;
        v
    }

    fn eff() -> Effective {
        Effective::new(&SandboxConfig::default(), &Default::default())
    }

    fn exited(code: i32) -> Report {
        Report::Exit { status: code << 8 }
    }

    #[test]
    fn a_failed_step_is_named_and_only_the_files_step_is_the_users() {
        let mut v = verdict();
        let r = [Report::Setup {
            step: Some(Step::NotDumpable),
            errno: libc::EPERM,
        }];
        decide(&mut v, &r, None, 121 << 8, &eff(), "x");
        assert_eq!(v.status, Status::InternalError);
        assert!(
            v.message
                .starts_with("sandbox set-up failed at not dumpable: "),
            "{}",
            v.message
        );
        let mut v = verdict();
        let r = [Report::Setup {
            step: Some(Step::WriteFiles),
            errno: libc::ENOSPC,
        }];
        decide(&mut v, &r, None, 121 << 8, &eff(), "x");
        assert_eq!(v.status, Status::RuntimeError);
    }

    #[test]
    fn exits_signals_kills() {
        let mut v = verdict();
        decide(&mut v, &[exited(0)], None, 0, &eff(), "x");
        assert_eq!((v.status, v.exit_code), (Status::Ok, Some(0)));
        let mut v = verdict();
        let r = [
            Report::Exec {
                errno: libc::EACCES,
            },
            exited(126),
        ];
        decide(&mut v, &r, None, 0, &eff(), "/etc");
        assert_eq!((v.status, v.exit_code), (Status::RuntimeError, Some(126)));
        assert!(
            v.message.starts_with("cannot execute \"/etc\": "),
            "{}",
            v.message
        );
        let mut v = verdict();
        decide(
            &mut v,
            &[Report::Exit {
                status: libc::SIGSEGV,
            }],
            None,
            0,
            &eff(),
            "x",
        );
        assert_eq!(v.status, Status::Signal);
        assert_eq!(v.signal_name.as_deref(), Some("SIGSEGV"));
        let mut v = verdict();
        decide(&mut v, &[], Some(Kill::Wall), libc::SIGKILL, &eff(), "x");
        assert_eq!(v.status, Status::Timeout);
        let mut v = verdict();
        decide(&mut v, &[], None, libc::SIGKILL, &eff(), "x");
        assert_eq!(v.status, Status::InternalError);
        assert!(v.message.contains("without a status"), "{}", v.message);
    }

    #[test]
    fn exec_failures_exit_126_or_127() {
        assert_eq!(child::exec_failure_status(libc::ENOENT), 127);
        for e in [libc::EACCES, libc::ENOEXEC, libc::EISDIR, libc::ETXTBSY] {
            assert_eq!(child::exec_failure_status(e), 126);
        }
    }
}
