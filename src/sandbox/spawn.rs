//! Clone, child set-up and supervision.
//!
//! Everything the child needs is built before `clone` ([`Fixed`] once per
//! [`Sandbox`], [`Plan`] per run). Between `clone` and `execve` the child
//! only makes raw syscalls on that data: the worker is multi-threaded (a
//! thread may hold the allocator's lock at the moment of the clone) and on
//! x86_64 the reaper shares its memory (see [`super::sys`]).
//!
//! Order (parent | child):
//! 1. parent: cgroups created (v1 `tasks` files opened), pipes/memfd made,
//!    signals blocked, `clone(NEWUSER|NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS|
//!    PIDFD[|VM])` onto a pooled stack.
//! 2. parent: uid/gid maps, v2 cgroup attach, release byte (carries which
//!    limits the v2 cgroups took).
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
//!    pid namespace. The parent polls output, pidfd and the clock.

use super::cgroup::{self, TaskCgroups};
use super::filter::{self, BpfProgram, LlPathBeneath, LlRulesetAttr};
use super::sys::{self, Stacks};
use super::{
    check_rel_path, cstr, signal_name, Effective, Enforced, EnforcedLimits, Mechanism, Request,
    RequestError, Sandbox, Status, Verdict, MAX_FILES, WORK_DIR,
};
use crate::config::SandboxConfig;
use libc::{c_char, c_int, c_ulong, c_void};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use syscalls::{syscall, Errno, Sysno};

/// One step of building the root, executed in order by the child.
enum Op {
    Mkdir(CString),
    Touch(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Bind {
        src: CString,
        dst: CString,
    },
    /// Read-only remount of a bind, with the source's locked flags kept
    /// (only used when the kernel has no `mount_setattr`).
    Remount {
        dst: CString,
        flags: c_ulong,
    },
    /// Bind of a device node, made after the tree was set read-only (the
    /// tree gets `nodev`, the device binds must not).
    DevBind {
        src: CString,
        dst: CString,
    },
}

/// The parts of the plan that do not depend on the request.
pub struct Fixed {
    staging: CString,
    root_opts: CString,
    ops: Vec<Op>,
    made_dirs: Vec<PathBuf>,
    bound: Vec<PathBuf>,
    work_dst: CString,
    proc_dst: CString,
    seccomp: BpfProgram,
    pub landlock_abi: u32,
    /// (empty netns, the process's own netns) when tasks share one.
    pub shared_net: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
    last_cap: c_int,
    pub host_uid: u32,
    host_gid: u32,
    /// We can map an arbitrary uid (root in the initial user namespace).
    privileged: bool,
    ll_rules: Vec<(CString, u64)>,
    stacks: Stacks,
    /// Clone the reaper with CLONE_VM (see `sys`): needs landlock, whose
    /// nested domain keeps the task out of the reaper's memory.
    share_vm: bool,
}

const STAGING_CANDIDATES: &[&str] = &["/mnt", "/media", "/srv", "/opt", "/tmp"];
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom"];

fn c(p: &Path) -> CString {
    // Paths come from the config or were validated; a NUL is impossible in
    // a Path built from &str, but never panic: fall back to an empty string.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn remount_flags(src: &Path) -> c_ulong {
    let mut f = (libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID) as c_ulong
        | libc::MS_NODEV as c_ulong;
    if let Ok(st) = nix::sys::statvfs::statvfs(src) {
        use nix::sys::statvfs::FsFlags;
        let fl = st.flags();
        if fl.contains(FsFlags::ST_NOEXEC) {
            f |= libc::MS_NOEXEC as c_ulong;
        }
        if fl.contains(FsFlags::ST_NOATIME) {
            f |= libc::MS_NOATIME as c_ulong;
        }
        if fl.contains(FsFlags::ST_NODIRATIME) {
            f |= libc::MS_NODIRATIME as c_ulong;
        }
        if fl.contains(FsFlags::ST_RELATIME) {
            f |= libc::MS_RELATIME as c_ulong;
        }
    }
    f
}

/// Append the ops that bind `src` read-only at the same path below
/// `staging`; `made` tracks directories already created.
fn bind_ops(
    staging: &Path,
    src: &Path,
    ops: &mut Vec<Op>,
    made: &mut Vec<PathBuf>,
    bound: &mut Vec<PathBuf>,
) {
    let Ok(meta) = std::fs::symlink_metadata(src) else {
        return; // missing binds are skipped (documented)
    };
    // Already visible through a bind of itself or of an ancestor.
    if bound.iter().any(|b| src.starts_with(b)) {
        return;
    }
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dst = staging.join(rel);
    if let Some(parent) = dst.parent() {
        mkdir_p(staging, parent, ops, made);
    }
    if meta.file_type().is_symlink() {
        if let Ok(target) = std::fs::read_link(src) {
            ops.push(Op::Symlink {
                target: c(&target),
                link: c(&dst),
            });
            made.push(dst);
            bound.push(src.to_path_buf());
        }
        return;
    }
    if !made.contains(&dst) {
        if meta.is_dir() {
            ops.push(Op::Mkdir(c(&dst)));
        } else {
            ops.push(Op::Touch(c(&dst)));
        }
        made.push(dst.clone());
    }
    bound.push(src.to_path_buf());
    ops.push(Op::Bind {
        src: c(src),
        dst: c(&dst),
    });
    ops.push(Op::Remount {
        dst: c(&dst),
        flags: remount_flags(src),
    });
}

fn mkdir_p(staging: &Path, dir: &Path, ops: &mut Vec<Op>, made: &mut Vec<PathBuf>) {
    if dir == staging || made.iter().any(|m| m == dir) {
        return;
    }
    if let Some(parent) = dir.parent() {
        mkdir_p(staging, parent, ops, made);
    }
    ops.push(Op::Mkdir(c(dir)));
    made.push(dir.to_path_buf());
}

fn landlock_abi() -> u32 {
    // SAFETY: querying the ABI version takes no pointer (NULL, 0) and only
    // returns a number or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<c_void>(),
            0usize,
            filter::LL_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        r as u32
    }
}

/// Create an empty network namespace (on a short-lived thread, so no
/// other thread changes namespace) and return (it, our own netns).
fn make_empty_netns() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    let own = std::fs::File::open("/proc/self/ns/net")
        .map_err(|e| format!("sandbox: open /proc/self/ns/net: {e}"))?;
    let empty = std::thread::spawn(|| -> Result<std::fs::File, String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("sandbox: unshare(CLONE_NEWNET): {e}"))?;
        std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("sandbox: open netns: {e}"))
    })
    .join()
    .map_err(|_| "sandbox: netns thread panicked".to_string())??;
    Ok((empty.into(), own.into()))
}

impl Fixed {
    pub fn new(cfg: &SandboxConfig) -> Result<Fixed, String> {
        let srcs: Vec<&Path> = cfg.ro_binds.iter().map(PathBuf::as_path).collect();
        for s in &srcs {
            if !s.is_absolute() || s.as_os_str().as_bytes().contains(&0) || *s == Path::new("/") {
                return Err(format!(
                    "sandbox.ro-binds: {} must be an absolute path other than /",
                    s.display()
                ));
            }
        }
        let staging = STAGING_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|s| s.is_dir() && !srcs.iter().any(|b| b.starts_with(s) || s.starts_with(b)))
            .ok_or("sandbox: no staging directory (/mnt, /media, /srv, /opt or /tmp) exists")?;
        let mut ops = Vec::new();
        let mut made = Vec::new();
        let mut bound = Vec::new();
        // Parents before children, so a child of a bound dir is skipped.
        let mut sorted = srcs.clone();
        sorted.sort_by_key(|p| p.components().count());
        for s in &sorted {
            bind_ops(staging, s, &mut ops, &mut made, &mut bound);
        }
        let dev = staging.join("dev");
        mkdir_p(staging, &dev, &mut ops, &mut made);
        for n in DEV_NODES {
            let dst = dev.join(n);
            ops.push(Op::Touch(c(&dst)));
            ops.push(Op::DevBind {
                src: c(&Path::new("/dev").join(n)),
                dst: c(&dst),
            });
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink {
                target: c(Path::new(target)),
                link: c(&dev.join(link)),
            });
        }
        let work = staging.join(WORK_DIR.trim_start_matches('/'));
        let proc_ = staging.join("proc");
        mkdir_p(staging, &work, &mut ops, &mut made);
        mkdir_p(staging, &proc_, &mut ops, &mut made);
        if !made.iter().any(|m| m == &staging.join("tmp")) {
            ops.push(Op::Symlink {
                target: c(Path::new(WORK_DIR)),
                link: c(&staging.join("tmp")),
            });
        }

        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        let privileged = euid == 0;
        let (host_uid, host_gid) = if privileged {
            (cfg.uid, cfg.gid)
        } else {
            (euid, egid)
        };
        let abi = landlock_abi();
        let share_vm = sys::CAN_SHARE_VM && abi > 0;
        if share_vm && privileged {
            // A root worker's memory turns non-dumpable anyway once a reaper
            // sharing it switches to the mapped uid (the kernel does that on
            // an effective-uid change): make it so from the start, not from
            // the first task on. (An unprivileged worker must stay dumpable:
            // it writes its children's uid maps, which /proc gives to root
            // for non-dumpable processes.)
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        }
        let rw = filter::FS_READ_FILE | filter::FS_WRITE_FILE | filter::FS_TRUNCATE;
        let mut ll_rules = vec![
            (
                c(Path::new("/")),
                filter::FS_EXECUTE | filter::FS_READ_FILE | filter::FS_READ_DIR,
            ),
            (c(Path::new(WORK_DIR)), filter::ll_handled_fs(abi)),
        ];
        for n in ["null", "zero", "full"] {
            ll_rules.push((c(&Path::new("/dev").join(n)), rw));
        }
        Ok(Fixed {
            staging: c(staging),
            root_opts: c(Path::new("size=1m,nr_inodes=4096,mode=0755")),
            ops,
            made_dirs: made,
            bound,
            work_dst: c(&work),
            proc_dst: c(&proc_),
            seccomp: filter::program(filter::FilterOptions::default())?,
            landlock_abi: abi,
            last_cap,
            host_uid,
            host_gid,
            privileged,
            ll_rules,
            stacks: Stacks::default(),
            share_vm,
            shared_net: if cfg.shared_netns && privileged && abi >= 6 {
                Some(make_empty_netns()?)
            } else {
                None
            },
        })
    }
}

/// Per-run data for the child. Raw pointers in `argv`/`envp` point into the
/// `CString`s owned alongside them and live until the run ends.
struct Plan<'a> {
    fixed: &'a Fixed,
    extra_ops: Vec<Op>,
    work_opts: CString,
    file_dirs: Vec<CString>,
    files: Vec<(CString, &'a [u8])>,
    rlimits: Vec<(u32, u64, u64)>,
    rlimit_as: u64,
    rlimit_nproc: u64,
    exec_paths: Vec<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    hostname: CString,
    /// Top of the user process's stack (between its clone and execve).
    user_stack_top: *mut u8,
    /// The reaper shares the worker's memory (CLONE_VM).
    shared_vm: bool,
    /// v1 cgroups the child joins itself: (open `tasks` fd, limit bits).
    cg_join: Vec<(c_int, u8)>,
    stdin_fd: c_int,
    out_w: c_int,
    err_w: c_int,
    status_w: c_int,
    sync_r: c_int,
}

// Child -> parent messages on the status pipe: [tag, a, b] as 3 x i32.
const TAG_SETUP: i32 = 1;
const TAG_EXEC: i32 = 2;
const TAG_EXIT: i32 = 3;
/// [TAG_CG_LOST, limit bits, 0]: v1 cgroups the child could not join.
const TAG_CG_LOST: i32 = 4;

/// Set-up steps, named in `internal_error` messages.
const STEPS: &[&str] = &[
    "release",                    // 0
    "unshare cgroupns",           // 1
    "setgroups",                  // 2
    "setresgid",                  // 3
    "setresuid",                  // 4
    "make mounts private",        // 5
    "mount root tmpfs",           // 6
    "build root",                 // 7
    "mount work tmpfs",           // 8
    "mount /proc",                // 9
    "pivot_root",                 // 10
    "remount root read-only",     // 11
    "write files",                // 12
    "chdir /work",                // 13
    "setrlimit",                  // 14
    "securebits",                 // 15
    "drop bounding set",          // 16
    "clear ambient capabilities", // 17
    "capset",                     // 18
    "no_new_privs",               // 19
    "landlock",                   // 20
    "seccomp",                    // 21
    "file descriptors",           // 22
    "fork",                       // 23
    "nested landlock domain",     // 24
];
const STEP_FILES: i32 = 12;
const STEP_NEST: i32 = 24;

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Child: one status message. Async-signal-safe, no errno.
fn send(fd: c_int, msg: [i32; 3]) {
    // SAFETY: writes 12 bytes from a stack array to our own pipe.
    let _ = unsafe { syscall!(Sysno::write, fd, msg.as_ptr(), 12) };
}

/// Child: leave now (the whole child process, not just this thread).
fn exit(code: i32) -> ! {
    // SAFETY: exit_group takes no pointer and does not return.
    let _ = unsafe { syscall!(Sysno::exit_group, code) };
    loop {
        std::hint::spin_loop();
    }
}

/// Child: report a failed step and exit.
fn fail(fd: c_int, step: i32, err: Errno) -> ! {
    send(fd, [TAG_SETUP, step, err.into_raw()]);
    exit(121)
}

/// The reaper's entry (see [`child_main`]).
extern "C" fn reaper_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `&Plan`, which outlives this process
    // (the parent reaps it before dropping the plan).
    unsafe { child_main(&*(arg as *const Plan)) }
}

/// Child side. Never returns. Raw syscalls only: with `CLONE_VM` this
/// process shares the worker's memory and thread-local storage, so it must
/// not touch the allocator, libc state or errno; it writes to its own stack
/// and nothing else.
///
/// # Safety
/// Must only be called in the freshly cloned child, with `p` fully built.
unsafe fn child_main(p: &Plan) -> ! {
    let f = p.fixed;
    let st = p.status_w;
    // SAFETY (whole block): every call is a raw syscall on pointers into
    // `p` (alive and unchanged until we exit) or into our own stack.
    unsafe {
        macro_rules! sys {
            ($step:expr; $nr:ident $(, $a:expr)*) => {
                match syscall!(Sysno::$nr $(, $a)*) {
                    Ok(v) => v,
                    Err(e) => fail(st, $step, e),
                }
            };
        }
        let null = 0usize;
        // 0. Wait until the parent wrote the id maps (and joined the v2
        // cgroups). Signals stay blocked in the reaper for good: its
        // handlers are the worker's, and with CLONE_VM they would run on the
        // worker's memory.
        // Die with the thread that cloned us (it stays in `run` until we
        // are reaped): a worker that crashes takes its tasks along.
        let _ = syscall!(Sysno::prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        let mut rel = [0u8; 1];
        loop {
            match syscall!(Sysno::read, p.sync_r, rel.as_mut_ptr(), 1) {
                Ok(1) => break,
                Err(Errno::EINTR) => continue,
                _ => exit(120), // parent gave up
            }
        }
        // Join the v1 cgroups (before the cgroup namespace, or the task
        // would see the host's cgroup path).
        let mut have = rel[0];
        let mut lost = 0u8;
        for &(fd, bits) in &p.cg_join {
            match syscall!(Sysno::write, fd, c"0".as_ptr(), 1) {
                Ok(_) => have |= bits,
                Err(_) => lost |= bits,
            }
        }
        if lost != 0 {
            send(st, [TAG_CG_LOST, lost as i32, 0]);
        }
        sys!(1; unshare, libc::CLONE_NEWCGROUP);
        if f.privileged {
            sys!(2; setgroups, 0, null);
        }
        sys!(3; setresgid, 0, 0, 0);
        sys!(4; setresuid, 0, 0, 0);

        // Mounts.
        sys!(5; mount, null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, null);
        sys!(6; mount, c"tmpfs".as_ptr(), f.staging.as_ptr(), c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV, f.root_opts.as_ptr());
        // The tree: directories, files, symlinks and the read-only binds,
        // then one recursive read-only + nosuid + nodev for all of it (root
        // tmpfs included), then the device nodes on top. Kernels without
        // mount_setattr (< 5.12) get one remount per bind instead.
        let ops = || f.ops.iter().chain(p.extra_ops.iter());
        for op in ops() {
            match op {
                Op::Mkdir(d) => {
                    sys!(7; mkdirat, libc::AT_FDCWD, d.as_ptr(), 0o755);
                }
                Op::Touch(d) => {
                    let fd = sys!(7; openat, libc::AT_FDCWD, d.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                    let _ = syscall!(Sysno::close, fd);
                }
                Op::Symlink { target, link } => {
                    sys!(7; symlinkat, target.as_ptr(), libc::AT_FDCWD, link.as_ptr());
                }
                Op::Bind { src, dst } => {
                    sys!(7; mount, src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null);
                }
                Op::Remount { .. } | Op::DevBind { .. } => {}
            }
        }
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let remount_root = match syscall!(
            Sysno::mount_setattr,
            libc::AT_FDCWD,
            f.staging.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>()
        ) {
            Ok(_) => false,
            Err(Errno::ENOSYS) => true,
            Err(e) => fail(st, 7, e),
        };
        if remount_root {
            for op in ops() {
                if let Op::Remount { dst, flags } = op {
                    sys!(7; mount, null, dst.as_ptr(), null, *flags, null);
                }
            }
        }
        for op in ops() {
            if let Op::DevBind { src, dst } = op {
                sys!(7; mount, src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND | libc::MS_REC, null);
            }
        }
        sys!(8; mount, c"tmpfs".as_ptr(), f.work_dst.as_ptr(), c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV, p.work_opts.as_ptr());
        // hidepid: processes the task may not ptrace (the reaper) are not
        // even listed.
        sys!(9; mount, c"proc".as_ptr(), f.proc_dst.as_ptr(), c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, c"hidepid=invisible".as_ptr());
        sys!(10; chdir, f.staging.as_ptr());
        sys!(10; pivot_root, c".".as_ptr(), c".".as_ptr());
        sys!(10; umount2, c".".as_ptr(), libc::MNT_DETACH);
        sys!(10; chdir, c"/".as_ptr());
        if remount_root {
            sys!(11; mount, null, c"/".as_ptr(), null,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                null);
        }

        // The request's files.
        for d in &p.file_dirs {
            match syscall!(Sysno::mkdirat, libc::AT_FDCWD, d.as_ptr(), 0o755) {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => fail(st, STEP_FILES, e),
            }
        }
        for (path, data) in &p.files {
            let fd = sys!(STEP_FILES; openat, libc::AT_FDCWD, path.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644);
            let mut off = 0usize;
            while off < data.len() {
                match syscall!(Sysno::write, fd, data.as_ptr().add(off), data.len() - off) {
                    Ok(n) => off += n,
                    Err(Errno::EINTR) => {}
                    Err(e) => fail(st, STEP_FILES, e),
                }
            }
            let _ = syscall!(Sysno::close, fd);
        }
        sys!(13; chdir, c"/work".as_ptr());
        // Best effort: the uts namespace is ours.
        let _ = syscall!(
            Sysno::sethostname,
            p.hostname.as_ptr(),
            p.hostname.as_bytes().len()
        );

        // Limits: the rlimits, plus the fallbacks for what no cgroup took.
        let setrl = |res: u32, soft: u64, hard: u64| {
            let rl = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if let Err(e) = syscall!(Sysno::prlimit64, 0, res, &rl as *const libc::rlimit, null) {
                fail(st, 14, e);
            }
        };
        for &(res, soft, hard) in &p.rlimits {
            setrl(res, soft, hard);
        }
        if have & cgroup::MEMORY == 0 {
            setrl(libc::RLIMIT_AS, p.rlimit_as, p.rlimit_as);
        }
        if have & cgroup::PIDS == 0 {
            setrl(libc::RLIMIT_NPROC, p.rlimit_nproc, p.rlimit_nproc);
        }

        // Capabilities: uid 0 gets nothing at exec, bounding/ambient empty,
        // then all sets cleared.
        const SECBITS: c_ulong = 0b1111 | (1 << 5) | (1 << 6) | (1 << 7);
        sys!(15; prctl, libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0);
        for cap in 0..=f.last_cap {
            match syscall!(Sysno::prctl, libc::PR_CAPBSET_DROP, cap, 0, 0, 0) {
                Ok(_) | Err(Errno::EINVAL) => {}
                Err(e) => fail(st, 16, e),
            }
        }
        sys!(17; prctl, libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: c_int,
        }
        #[repr(C)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        sys!(18; capset, &hdr as *const CapHeader, data.as_ptr());
        sys!(19; prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if !p.shared_vm {
            // Our own copy of the worker's memory (environment, secrets):
            // not dumpable = /proc/1/{environ,mem,...} and ptrace need
            // CAP_SYS_PTRACE, which nobody in here has. execve resets this
            // for the user process only. (With CLONE_VM the flag would be
            // the worker's; the user process's nested landlock domain does
            // this job instead, see user_main.)
            sys!(19; prctl, libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        }

        // Landlock (best effort when the kernel has none: abi == 0).
        if f.landlock_abi > 0 {
            let abi = f.landlock_abi;
            let handled = filter::ll_handled_fs(abi);
            let attr = LlRulesetAttr {
                handled_access_fs: handled,
                handled_access_net: filter::ll_handled_net(abi),
                scoped: filter::ll_scoped(abi),
            };
            let rs = sys!(20; landlock_create_ruleset, &attr as *const LlRulesetAttr,
                std::mem::size_of::<LlRulesetAttr>(), 0);
            for (path, access) in &f.ll_rules {
                let fd =
                    sys!(20; openat, libc::AT_FDCWD, path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                let pb = LlPathBeneath {
                    allowed_access: access & handled,
                    parent_fd: fd as c_int,
                };
                sys!(20; landlock_add_rule, rs, filter::LL_RULE_PATH_BENEATH,
                    &pb as *const LlPathBeneath, 0);
                let _ = syscall!(Sysno::close, fd);
            }
            sys!(20; landlock_restrict_self, rs, 0);
            let _ = syscall!(Sysno::close, rs);
        }

        // seccomp last.
        let fprog = libc::sock_fprog {
            len: f.seccomp.len() as u16,
            filter: f.seccomp.as_ptr() as *mut libc::sock_filter,
        };
        sys!(21; prctl, libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog, 0, 0);

        // Descriptors: stdin/stdout/stderr onto 0..2, status pipe on 3
        // (close-on-exec), everything else closed. Go through fds >= 10 so
        // the dups cannot clobber each other.
        let hi = |fd: c_int| match syscall!(Sysno::fcntl, fd, libc::F_DUPFD, 10) {
            Ok(n) => n,
            Err(e) => fail(st, 22, e),
        };
        let (a, b, cc, s) = (hi(p.stdin_fd), hi(p.out_w), hi(p.err_w), hi(st));
        for (from, to) in [(a, 0), (b, 1), (cc, 2), (s, 3)] {
            if let Err(e) = syscall!(Sysno::dup3, from, to, 0) {
                fail(s as c_int, 22, e);
            }
        }
        let st = 3;
        sys!(22; fcntl, 3, libc::F_SETFD, libc::FD_CLOEXEC);
        sys!(22; close_range, 4u32, u32::MAX, 0u32);

        // vfork-style: the user process borrows this memory (no page-table
        // copy) until it execs; we are suspended meanwhile.
        let pid = sys::clone_on(
            (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as c_ulong,
            p.user_stack_top,
            std::ptr::null_mut(),
            user_main,
            p as *const Plan as *mut c_void,
        );
        if pid < 0 {
            fail(st, 23, Errno::new(-pid as i32));
        }
        // The reaper: keep nothing of the task's stdio.
        for fd in 0..3 {
            let _ = syscall!(Sysno::close, fd);
        }
        loop {
            let mut status: c_int = 0;
            match syscall!(Sysno::wait4, -1i32, &mut status as *mut c_int, 0, null) {
                Ok(r) if r as isize == pid => {
                    send(st, [TAG_EXIT, status, 0]);
                    exit(0);
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => exit(122),
            }
        }
    }
}

/// The user process, on its own stack, sharing the reaper's memory until
/// `execve`. Never returns. Raw syscalls only, as in [`child_main`].
extern "C" fn user_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the reaper's `&Plan`, alive and unchanged (the reaper
    // is suspended by CLONE_VFORK); only raw syscalls on it and our stack.
    unsafe {
        let p = &*(arg as *const Plan);
        let st = 3;
        // Default dispositions first (the worker's handlers must never run
        // here, and an inherited SIG_IGN would survive exec), then unblock.
        #[repr(C)]
        struct KSigaction {
            handler: usize,
            flags: u64,
            restorer: usize,
            mask: u64,
        }
        let dfl = KSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                let _ = syscall!(
                    Sysno::rt_sigaction,
                    sig,
                    &dfl as *const KSigaction,
                    0usize,
                    8
                );
            }
        }
        if p.shared_vm {
            // A landlock domain nested in the reaper's: landlock lets a
            // process ptrace (or read /proc/PID/mem of) only processes in
            // its own domain or below, so the task cannot reach the reaper,
            // whose memory is the worker's. The layer restricts nothing
            // else that is not already denied (making block devices).
            // Its scopes (ABI >= 6) also keep the task from signalling the
            // reaper at all.
            let attr = LlRulesetAttr {
                handled_access_fs: filter::FS_MAKE_BLOCK,
                handled_access_net: 0,
                scoped: filter::ll_scoped(p.fixed.landlock_abi),
            };
            let ok = match syscall!(
                Sysno::landlock_create_ruleset,
                &attr as *const LlRulesetAttr,
                std::mem::size_of::<LlRulesetAttr>(),
                0
            ) {
                Ok(rs) => syscall!(Sysno::landlock_restrict_self, rs, 0).map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = ok {
                send(st, [TAG_SETUP, STEP_NEST, e.into_raw()]);
                exit(121);
            }
        }
        let empty = 0u64;
        let _ = syscall!(
            Sysno::rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            0usize,
            8
        );
        let _ = syscall!(Sysno::setsid);
        let mut err = libc::ENOENT;
        for path in &p.exec_paths {
            if let Err(e) = syscall!(
                Sysno::execve,
                path.as_ptr(),
                p.argv_ptrs.as_ptr(),
                p.envp_ptrs.as_ptr()
            ) {
                if e != Errno::ENOENT && e != Errno::ENOTDIR {
                    err = e.into_raw();
                }
            }
        }
        send(st, [TAG_EXEC, err, 0]);
        exit(127)
    }
}

/// An owned fd closed on drop (parent side).
struct Fd(c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: we own this descriptor and close it once.
            unsafe { libc::close(self.0) };
        }
    }
}

fn pipe() -> std::io::Result<(Fd, Fd)> {
    let mut p = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((Fd(p[0]), Fd(p[1])))
}

fn stdin_fd(data: &[u8]) -> std::io::Result<Fd> {
    // SAFETY: memfd_create with a static name; returns an fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"peagen-stdin".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = Fd(fd);
    let mut off = 0;
    while off < data.len() {
        // SAFETY: writes from a valid slice to our memfd.
        let n = unsafe {
            libc::write(
                fd.0,
                data[off..].as_ptr() as *const c_void,
                data.len() - off,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        off += n as usize;
    }
    // SAFETY: plain fcntl/lseek on our fd.
    unsafe {
        libc::fcntl(
            fd.0,
            libc::F_ADD_SEALS,
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        );
        libc::lseek(fd.0, 0, libc::SEEK_SET);
    }
    Ok(fd)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kill {
    Wall,
    Cpu,
    Output,
    Memory,
}

/// Build the per-run plan. Errors are the user's.
fn plan<'a>(
    sb: &'a Sandbox,
    req: &'a Request,
    eff: &Effective,
) -> Result<(Plan<'a>, Vec<CString>, Vec<CString>), RequestError> {
    let f = &*sb.fixed;
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(RequestError::EmptyArgv);
    }
    let argv: Vec<CString> = req
        .argv
        .iter()
        .map(|a| cstr(a, "argv"))
        .collect::<Result<_, _>>()?;
    let mut env: std::collections::BTreeMap<&str, &str> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", WORK_DIR),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .collect();
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(RequestError::EnvName(k.clone()));
        }
        env.insert(k, v);
    }
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}"), "env"))
        .collect::<Result<_, _>>()?;
    let exec_paths: Vec<CString> = if req.argv[0].contains('/') {
        vec![argv[0].clone()]
    } else {
        env["PATH"]
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| {
                cstr(
                    &format!("{}/{}", d.trim_end_matches('/'), req.argv[0]),
                    "argv",
                )
            })
            .collect::<Result<_, _>>()?
    };

    if req.files.len() > MAX_FILES {
        return Err(RequestError::TooManyFiles(req.files.len(), MAX_FILES));
    }
    let mut file_dirs: Vec<String> = Vec::new();
    let mut files = Vec::new();
    for (rel, data) in &req.files {
        check_rel_path(rel)?;
        let mut acc = String::from(WORK_DIR);
        let comps: Vec<&str> = rel.split('/').collect();
        for d in &comps[..comps.len() - 1] {
            acc.push('/');
            acc.push_str(d);
            if !file_dirs.contains(&acc) {
                file_dirs.push(acc.clone());
            }
        }
        files.push((
            cstr(&format!("{WORK_DIR}/{rel}"), "file path")?,
            data.as_slice(),
        ));
    }
    let file_dirs = file_dirs
        .iter()
        .map(|d| cstr(d, "file path"))
        .collect::<Result<_, _>>()?;

    let staging = Path::new(std::ffi::OsStr::from_bytes(f.staging.as_bytes()));
    let mut extra_ops = Vec::new();
    let mut made = f.made_dirs.clone();
    let mut bound = f.bound.clone();
    for b in &req.extra_ro_binds {
        if b.is_absolute() && !b.starts_with(staging) && b != Path::new("/") {
            bind_ops(staging, b, &mut extra_ops, &mut made, &mut bound);
        }
    }

    let cpu_s = eff.cpu_ms.div_ceil(1000).max(1);
    let rlimits = vec![
        (libc::RLIMIT_CPU, cpu_s, cpu_s + 1),
        (libc::RLIMIT_FSIZE, eff.file_size_bytes, eff.file_size_bytes),
        (libc::RLIMIT_CORE, 0, 0),
        (libc::RLIMIT_NOFILE, 1024, 1024),
        (libc::RLIMIT_MSGQUEUE, 0, 0),
    ];
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    Ok((
        Plan {
            fixed: f,
            extra_ops,
            work_opts: cstr(
                &format!("size={},nr_inodes=65536,mode=0755", eff.tmpfs_bytes),
                "tmpfs",
            )?,
            file_dirs,
            files,
            rlimits,
            rlimit_as: eff.memory_bytes,
            rlimit_nproc: eff.pids,
            exec_paths,
            _argv: Vec::new(),
            _envp: Vec::new(),
            argv_ptrs,
            envp_ptrs,
            hostname: c"sandbox".to_owned(),
            user_stack_top: std::ptr::null_mut(),
            shared_vm: false,
            cg_join: Vec::new(),
            stdin_fd: -1,
            out_w: -1,
            err_w: -1,
            status_w: -1,
            sync_r: -1,
        },
        argv,
        envp,
    ))
}

pub fn run(sb: &Sandbox, req: &Request) -> Verdict {
    let eff = Effective::new(&sb.cfg, &req.limits);
    let mut limits = EnforcedLimits {
        memory_bytes: en(eff.memory_bytes, Mechanism::None),
        pids: en(eff.pids, Mechanism::None),
        cpu_ms: en(eff.cpu_ms, Mechanism::None),
        wall_ms: en(eff.wall_ms, Mechanism::Supervisor),
        file_size_bytes: en(eff.file_size_bytes, Mechanism::None),
        output_bytes: en(eff.output_bytes, Mechanism::Supervisor),
        tmpfs_bytes: en(eff.tmpfs_bytes, Mechanism::None),
    };
    let isolation = sb.isolation();
    let (mut plan, _argv, _envp) = match plan(sb, req, &eff) {
        Ok(p) => p,
        Err(e) => {
            let mut v = Verdict::internal(format!("bad request: {e}"), limits, isolation);
            v.status = Status::RuntimeError;
            return v;
        }
    };
    let internal = |m: String, limits: EnforcedLimits| Verdict::internal(m, limits, sb.isolation());
    let fds = (|| -> std::io::Result<_> {
        Ok((pipe()?, pipe()?, pipe()?, pipe()?, stdin_fd(&req.stdin)?))
    })();
    let ((out_r, out_w), (err_r, err_w), (status_r, status_w), (sync_r, sync_w), stdin) = match fds
    {
        Ok(x) => x,
        Err(e) => return internal(format!("cannot create pipes: {e}"), limits),
    };
    plan.stdin_fd = stdin.0;
    plan.out_w = out_w.0;
    plan.err_w = err_w.0;
    plan.status_w = status_w.0;
    plan.sync_r = sync_r.0;

    let mut cg = TaskCgroups::create(&sb.cgroups, eff.memory_bytes, eff.pids);
    plan.cg_join = cg.join_fds();
    let stack = match sb.fixed.stacks.take() {
        Ok(s) => s,
        Err(e) => {
            cg.remove(&sb.cgroups);
            return internal(format!("cannot map the sandbox stacks: {e}"), limits);
        }
    };
    plan.user_stack_top = stack.user_top();
    plan.shared_vm = sb.fixed.share_vm && cg.shared_vm_safe();

    let start = Instant::now();
    let mut pidfd: c_int = -1;
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
    use std::os::fd::AsRawFd;
    match &sb.fixed.shared_net {
        Some((empty, _)) => {
            // SAFETY: setns of this thread's netns to a namespace fd we own.
            if unsafe { libc::setns(empty.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                let e = std::io::Error::last_os_error();
                cg.remove(&sb.cgroups);
                return internal(format!("setns(shared netns): {e}"), limits);
            }
        }
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
    // SAFETY: the child runs `reaper_main(&plan)` on `stack`, which stays
    // mapped and reserved for it until it is reaped below (the guard reaps
    // it on every other way out); `child_main` makes raw syscalls only.
    let pid = unsafe {
        sys::clone_on(
            flags,
            stack.reaper_top(),
            &mut pidfd,
            reaper_main,
            &plan as *const Plan as *mut c_void,
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
        // SAFETY: back to the process's own netns (fd we own).
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            // A worker thread left in the empty netns would break later
            // network use in ways that are hard to see: stop loudly.
            eprintln!(
                "sandbox: cannot return to the worker's network namespace: {}",
                std::io::Error::last_os_error()
            );
            std::process::abort();
        }
    }
    if pid < 0 {
        let e = std::io::Error::from_raw_os_error(-pid as i32);
        cg.remove(&sb.cgroups);
        sb.fixed.stacks.put(stack);
        return internal(format!("clone failed: {e}"), limits);
    }
    let pid = pid as i32;
    // From here on the child runs on `stack` and reads `plan`: the guard
    // (dropped before both) kills and reaps it on any way out.
    let mut child = Child {
        pidfd: Fd(pidfd),
        pid,
        reaped: false,
    };
    drop((out_w, err_w, status_w, sync_r, stdin));
    // Non-blocking reads: a sibling sandbox cloned concurrently may hold a
    // copy of our write ends until its own close_range, so EOF is not
    // guaranteed right after our task ends; EAGAIN then means "all read".
    for fd in [out_r.0, err_r.0, status_r.0] {
        // SAFETY: fcntl flags on our own fds.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }

    // Id maps, cgroups, release.
    let setup = (|| -> Result<u8, String> {
        let proc_ = format!("/proc/{pid}");
        if !sb.fixed.privileged {
            std::fs::write(format!("{proc_}/setgroups"), "deny")
                .map_err(|e| format!("setgroups: {e}"))?;
        }
        std::fs::write(
            format!("{proc_}/uid_map"),
            format!("0 {} 1\n", sb.fixed.host_uid),
        )
        .map_err(|e| format!("uid_map: {e}"))?;
        std::fs::write(
            format!("{proc_}/gid_map"),
            format!("0 {} 1\n", sb.fixed.host_gid),
        )
        .map_err(|e| format!("gid_map: {e}"))?;
        Ok(cg.attach_v2(pid))
    })();
    let rel = match setup {
        Ok(r) => r,
        Err(e) => {
            child.kill_and_reap();
            cg.remove(&sb.cgroups);
            return internal(format!("sandbox set-up: {e}"), limits);
        }
    };
    // SAFETY: one byte from a stack variable into our pipe.
    if unsafe { libc::write(sync_w.0, &rel as *const u8 as *const c_void, 1) } != 1 {
        child.kill_and_reap();
        cg.remove(&sb.cgroups);
        return internal("cannot release the sandbox child".into(), limits);
    }
    drop(sync_w);

    // Supervise.
    let cap = eff.output_bytes as usize;
    let mut out = Capture::new(out_r, cap);
    let mut err = Capture::new(err_r, cap);
    let deadline = start + std::time::Duration::from_millis(eff.wall_ms);
    let cpu_limit_ns = eff.cpu_ms.saturating_mul(1_000_000);
    let poll_cpu = cg.cpu_mech() != Mechanism::None;
    let oom_fd = cg.oom_event_fd().unwrap_or(-1);
    let mut killed: Option<Kill> = None;
    let mut exited = false;
    while !exited {
        let now = Instant::now();
        if killed.is_none() && now >= deadline {
            killed = Some(Kill::Wall);
            send_kill(&child.pidfd);
        }
        let mut timeout = if killed.is_some() {
            100
        } else {
            deadline
                .saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32
                + 1
        };
        if poll_cpu && killed.is_none() {
            timeout = timeout.min(25);
        }
        let mut pfds = [
            libc::pollfd {
                fd: child.pidfd.0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if out.open { out.fd.0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if err.open { err.fd.0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if killed.is_none() { oom_fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on a stack array of four pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 4, timeout) };
        if n < 0 && errno() != libc::EINTR {
            send_kill(&child.pidfd);
            killed.get_or_insert(Kill::Wall);
        }
        if pfds[1].revents != 0 {
            out.read();
        }
        if pfds[2].revents != 0 {
            err.read();
        }
        if killed.is_none() && (out.over || err.over) {
            killed = Some(Kill::Output);
            send_kill(&child.pidfd);
        }
        if killed.is_none() && pfds[3].revents != 0 {
            // At the memory limit with the OOM killer off: the task is
            // stalled until we kill it.
            killed = Some(Kill::Memory);
            send_kill(&child.pidfd);
        }
        if poll_cpu && killed.is_none() {
            if let Some(ns) = cg.cpu_ns() {
                if ns > cpu_limit_ns {
                    killed = Some(Kill::Cpu);
                    send_kill(&child.pidfd);
                }
            }
        }
        if pfds[0].revents != 0 {
            exited = true;
        }
    }
    // Reap the init; everything in its pid namespace is gone with it.
    let mut status: c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it and the status.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    while unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut ru) } < 0
        && errno() == libc::EINTR
    {}
    child.reaped = true;
    sb.fixed.stacks.put(stack);
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    // Remaining output: every writer of the task is dead, so what is in
    // the pipes is all there is (read until EOF or EAGAIN).
    while out.open && out.read() {}
    while err.open && err.read() {}
    let mut msgs = [0i32; 12];
    // SAFETY: read into a stack buffer from our pipe (writers are gone).
    let n = unsafe { libc::read(status_r.0, msgs.as_mut_ptr() as *mut c_void, 48) };
    let msgs: Vec<[i32; 3]> = msgs[..(n.max(0) as usize / 12) * 3]
        .chunks(3)
        .map(|m| [m[0], m[1], m[2]])
        .collect();
    if let Some(m) = msgs.iter().find(|m| m[0] == TAG_CG_LOST) {
        cg.forget(m[1] as u8);
    }
    // What enforced each limit: the cgroups the task really joined, else
    // the rlimit the child set in their place.
    let or_rlimit = |m: Mechanism| match m {
        Mechanism::None => Mechanism::Rlimit,
        m => m,
    };
    limits.memory_bytes.mechanism = or_rlimit(cg.memory_mech());
    limits.pids.mechanism = or_rlimit(cg.pids_mech());
    limits.cpu_ms.mechanism = or_rlimit(cg.cpu_mech());
    limits.file_size_bytes.mechanism = Mechanism::Rlimit;
    limits.tmpfs_bytes.mechanism = Mechanism::Tmpfs;

    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    let cpu_ms = cg
        .cpu_ns()
        .map(|ns| ns as f64 / 1e6)
        .unwrap_or_else(|| tv(ru.ru_utime) + tv(ru.ru_stime));
    let (peak, peak_src) = match cg.peak_memory() {
        Some(p) => (
            Some(p),
            if cg.memory_mech() == Mechanism::CgroupV2 {
                "cgroup_v2"
            } else {
                "cgroup_v1"
            },
        ),
        None => (Some(ru.ru_maxrss as u64 * 1024), "rusage"),
    };
    let oom = cg.oom_hit();
    cg.remove(&sb.cgroups);

    let mut v = Verdict {
        status: Status::InternalError,
        exit_code: None,
        signal: None,
        signal_name: None,
        message: String::new(),
        wall_ms,
        cpu_ms,
        peak_memory_bytes: peak,
        peak_memory_source: peak_src.to_string(),
        oom_killed: oom,
        killed: killed.is_some(),
        stdout: String::from_utf8_lossy(&out.buf).into_owned(),
        stderr: String::from_utf8_lossy(&err.buf).into_owned(),
        stdout_truncated: out.over,
        stderr_truncated: err.over,
        limits,
        isolation,
    };
    let setup_err = msgs.iter().find(|m| m[0] == TAG_SETUP);
    let exec_err = msgs.iter().find(|m| m[0] == TAG_EXEC);
    let exit = msgs.iter().find(|m| m[0] == TAG_EXIT).map(|m| m[1]);
    if let Some(m) = setup_err {
        let step = STEPS.get(m[1] as usize).copied().unwrap_or("?");
        v.message = format!(
            "sandbox set-up failed at {step}: {}",
            std::io::Error::from_raw_os_error(m[2])
        );
        v.status = if m[1] == STEP_FILES {
            Status::RuntimeError
        } else {
            Status::InternalError
        };
        return v;
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
            if sig == libc::SIGXCPU || (sig == libc::SIGKILL && cpu_ms >= eff.cpu_ms as f64) {
                v.status = Status::Timeout;
                v.message = "CPU time limit exceeded".into();
            } else if sig == libc::SIGXFSZ {
                v.message = "file size limit exceeded".into();
            }
        }
        if let Some(m) = exec_err {
            v.message = format!(
                "cannot execute {:?}: {}",
                req.argv[0],
                std::io::Error::from_raw_os_error(m[1])
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
            v.message = format!("sandbox init ended without a status (wait status {status:#x})");
            return v;
        }
        None => {}
    }
    if killed.is_none() {
        if oom && v.status != Status::Ok {
            v.status = Status::MemoryLimit;
            v.message = format!("memory limit of {} bytes exceeded", eff.memory_bytes);
        } else if out.over || err.over {
            v.status = Status::OutputLimit;
            v.message = format!("output over {} bytes", eff.output_bytes);
        }
    }
    v
}

fn en(value: u64, mechanism: Mechanism) -> Enforced {
    Enforced { value, mechanism }
}

fn send_kill(pidfd: &Fd) {
    // SAFETY: pidfd_send_signal on our own pidfd; SIGKILL of the pid
    // namespace's init kills every process in the namespace.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.0,
            libc::SIGKILL,
            std::ptr::null::<c_void>(),
            0u32,
        )
    };
}

/// The reaper, from its clone until it is reaped. It runs on a stack and
/// reads a plan that the parent owns, so it must be gone before they are:
/// dropping this kills and reaps it unless that already happened.
struct Child {
    pidfd: Fd,
    pid: i32,
    reaped: bool,
}

impl Child {
    fn kill_and_reap(&mut self) {
        send_kill(&self.pidfd);
        let mut st = 0;
        // SAFETY: reap our own child.
        while unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL) } < 0
            && errno() == libc::EINTR
        {}
        self.reaped = true;
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
struct Capture {
    fd: Fd,
    buf: Vec<u8>,
    cap: usize,
    over: bool,
    open: bool,
}

impl Capture {
    fn new(fd: Fd, cap: usize) -> Capture {
        Capture {
            fd,
            buf: Vec::new(),
            cap,
            over: false,
            open: true,
        }
    }

    /// One read; false when nothing more is available right now.
    fn read(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        // SAFETY: read into a stack buffer of the given size.
        let n = unsafe { libc::read(self.fd.0, chunk.as_mut_ptr() as *mut c_void, chunk.len()) };
        if n < 0 {
            let e = errno();
            if e != libc::EINTR && e != libc::EAGAIN {
                self.open = false;
            }
            return e == libc::EINTR;
        }
        if n == 0 {
            self.open = false;
            return false;
        }
        let n = n as usize;
        let room = self.cap.saturating_sub(self.buf.len());
        if n > room {
            self.over = true;
        }
        self.buf.extend_from_slice(&chunk[..n.min(room)]);
        true
    }
}
