//! The child, from `clone` to `execve`: the reaper (PID 1 of the task's pid
//! namespace) and the user process it starts.
//!
//! This code may run in the worker's address space and thread-local storage
//! (`CLONE_VM`, see `sys.rs`), in a process that was cloned from a
//! multi-threaded one. So it only makes raw syscalls (no libc wrapper, no
//! `errno`) on the [`Plan`] built before the clone and on its own stack:
//! no allocation, no panic, no arithmetic that could overflow-check, no
//! indexing. The lints below make that a compile error, not a habit.
#![deny(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use super::cgroup;
use super::filter::{self, LlPathBeneath, LlRulesetAttr};
use super::plan::{Op, Plan};
use super::proto::{Step, TAG_CG_LOST, TAG_EXEC, TAG_EXIT, TAG_SETUP};
use super::sys;
use libc::{c_int, c_ulong, c_void};
use syscalls::{syscall, Errno, Sysno};

/// Where the status pipe is once the descriptors are in their final place.
const STATUS_FD: c_int = 3;

/// One raw syscall; on failure report `step` on the status pipe `st` and
/// exit. The fd is an argument, not a captured local: a `macro_rules!`
/// resolves locals where it is defined, so a later `let st = ...` would not
/// be seen.
macro_rules! sys {
    ($st:expr, $step:expr; $nr:ident $(, $a:expr)*) => {
        match syscall!(Sysno::$nr $(, $a)*) {
            Ok(v) => v,
            Err(e) => fail($st, $step, e),
        }
    };
}

/// One status message. Async-signal-safe, no errno.
fn send(fd: c_int, msg: [i32; 3]) {
    // SAFETY: writes 12 bytes from a stack array to our own pipe.
    let _ = unsafe { syscall!(Sysno::write, fd, msg.as_ptr(), 12) };
}

/// Leave now (the whole child process, not just this thread).
fn exit(code: i32) -> ! {
    // SAFETY: exit_group takes no pointer and does not return.
    let _ = unsafe { syscall!(Sysno::exit_group, code) };
    loop {
        std::hint::spin_loop();
    }
}

/// Report a failed step on the status pipe `fd` and exit.
fn fail(fd: c_int, step: Step, err: Errno) -> ! {
    send(fd, [TAG_SETUP, step as i32, err.into_raw()]);
    exit(121)
}

/// The reaper's entry (see [`child_main`]).
pub(super) extern "C" fn reaper_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `&Plan`, which outlives this process
    // (the parent reaps it before dropping the plan), and we are the
    // freshly cloned child.
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
    let st = p.status_w;
    // SAFETY: (this and the helpers below) only in the child; every call
    // is a raw syscall on pointers into `p` (alive and unchanged until we
    // exit) or into our own stack.
    unsafe {
        let have = release_and_join(p, st);
        build_root(p, st);
        write_files(p, st);
        set_limits(p, st, have);
        drop_privileges(p, st);
        let st = move_fds(p, st);
        start_and_reap(p, st)
    }
}

/// Wait until the parent wrote the id maps (and joined the v2 cgroups),
/// join the v1 cgroups. Returns the limit bits cgroups now enforce.
///
/// # Safety
/// As [`child_main`].
unsafe fn release_and_join(p: &Plan, st: c_int) -> u8 {
    // SAFETY: see child_main.
    unsafe {
        // Signals stay blocked in the reaper for good: its handlers are the
        // worker's, and with CLONE_VM they would run on the worker's memory.
        // Die with the thread that cloned us (it stays in `run` until we
        // are reaped): a worker that crashes takes its tasks along.
        let _ = syscall!(Sysno::prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        let mut rel = 0u8;
        loop {
            match syscall!(Sysno::read, p.sync_r, &mut rel as *mut u8, 1) {
                Ok(1) => break,
                Err(Errno::EINTR) => continue,
                _ => exit(120), // parent gave up
            }
        }
        // Join the v1 cgroups (before the cgroup namespace, or the task
        // would see the host's cgroup path).
        let mut have = rel;
        let mut lost = 0u8;
        for &(fd, bits) in &p.cg_join {
            match syscall!(Sysno::write, fd, c"0".as_ptr(), 1) {
                Ok(_) => have |= bits,
                Err(_) => lost |= bits,
            }
        }
        if lost != 0 {
            send(st, [TAG_CG_LOST, i32::from(lost), 0]);
        }
        have
    }
}

/// Namespaced ids, then the root: private mounts, tmpfs root, binds, one
/// recursive read-only for all of it, device nodes, work tmpfs, /proc,
/// pivot_root, and the root read-only.
///
/// # Safety
/// As [`child_main`].
unsafe fn build_root(p: &Plan, st: c_int) {
    let f = p.fixed;
    let null = 0usize;
    // SAFETY: see child_main.
    unsafe {
        sys!(st, Step::UnshareCgroupns; unshare, libc::CLONE_NEWCGROUP);
        if f.privileged {
            sys!(st, Step::Setgroups; setgroups, 0, null);
        }
        sys!(st, Step::Setresgid; setresgid, 0, 0, 0);
        sys!(st, Step::Setresuid; setresuid, 0, 0, 0);

        sys!(st, Step::MountsPrivate; mount, null, c"/".as_ptr(), null,
            libc::MS_REC | libc::MS_PRIVATE, null);
        sys!(st, Step::RootTmpfs; mount, c"tmpfs".as_ptr(), f.staging.as_ptr(),
            c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, f.root_opts.as_ptr());
        // The tree: directories, files, symlinks and the read-only binds,
        // then one recursive read-only + nosuid + nodev for all of it (root
        // tmpfs included), then the device nodes on top. Kernels without
        // mount_setattr (< 5.12) get one remount per bind instead.
        let ops = || f.ops.iter().chain(p.extra_ops.iter());
        let step = Step::BuildRoot;
        for op in ops() {
            match op {
                Op::Mkdir(d) => {
                    sys!(st, step; mkdirat, libc::AT_FDCWD, d.as_ptr(), 0o755);
                }
                Op::Touch(d) => {
                    let fd = sys!(st, step; openat, libc::AT_FDCWD, d.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                    let _ = syscall!(Sysno::close, fd);
                }
                Op::Symlink { target, link } => {
                    sys!(st, step; symlinkat, target.as_ptr(), libc::AT_FDCWD, link.as_ptr());
                }
                Op::Bind { src, dst } => {
                    sys!(st, step; mount, src.as_ptr(), dst.as_ptr(), null,
                        libc::MS_BIND | libc::MS_REC, null);
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
            Err(e) => fail(st, step, e),
        };
        if remount_root {
            for op in ops() {
                if let Op::Remount { dst, flags } = op {
                    sys!(st, step; mount, null, dst.as_ptr(), null, *flags, null);
                }
            }
        }
        for op in ops() {
            if let Op::DevBind { src, dst } = op {
                sys!(st, step; mount, src.as_ptr(), dst.as_ptr(), null,
                    libc::MS_BIND | libc::MS_REC, null);
            }
        }
        sys!(st, Step::WorkTmpfs; mount, c"tmpfs".as_ptr(), f.work_dst.as_ptr(),
            c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, p.work_opts.as_ptr());
        // hidepid: processes the task may not ptrace (the reaper) are not
        // even listed.
        sys!(st, Step::Proc; mount, c"proc".as_ptr(), f.proc_dst.as_ptr(), c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, c"hidepid=invisible".as_ptr());
        let step = Step::PivotRoot;
        sys!(st, step; chdir, f.staging.as_ptr());
        sys!(st, step; pivot_root, c".".as_ptr(), c".".as_ptr());
        sys!(st, step; umount2, c".".as_ptr(), libc::MNT_DETACH);
        sys!(st, step; chdir, c"/".as_ptr());
        if remount_root {
            sys!(st, Step::RootReadOnly; mount, null, c"/".as_ptr(), null,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID
                    | libc::MS_NODEV,
                null);
        }
    }
}

/// The request's files, then `chdir /work` and the hostname.
///
/// # Safety
/// As [`child_main`].
unsafe fn write_files(p: &Plan, st: c_int) {
    let step = Step::WriteFiles;
    // SAFETY: see child_main.
    unsafe {
        for d in &p.file_dirs {
            match syscall!(Sysno::mkdirat, libc::AT_FDCWD, d.as_ptr(), 0o755) {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => fail(st, step, e),
            }
        }
        for (path, data) in &p.files {
            let fd = sys!(st, step; openat, libc::AT_FDCWD, path.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644);
            let mut rest: &[u8] = data;
            while !rest.is_empty() {
                match syscall!(Sysno::write, fd, rest.as_ptr(), rest.len()) {
                    Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                    Err(Errno::EINTR) => {}
                    Err(e) => fail(st, step, e),
                }
            }
            let _ = syscall!(Sysno::close, fd);
        }
        sys!(st, Step::ChdirWork; chdir, c"/work".as_ptr());
        // Best effort: the uts namespace is ours.
        let _ = syscall!(
            Sysno::sethostname,
            p.hostname.as_ptr(),
            p.hostname.as_bytes().len()
        );
    }
}

/// The rlimits, plus the fallbacks for what no cgroup took (`have`).
///
/// # Safety
/// As [`child_main`].
unsafe fn set_limits(p: &Plan, st: c_int, have: u8) {
    let setrl = |res: u32, soft: u64, hard: u64| {
        let rl = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: prlimit64 on ourselves with a pointer to a stack value.
        let r = unsafe { syscall!(Sysno::prlimit64, 0, res, &rl as *const libc::rlimit, 0usize) };
        if let Err(e) = r {
            fail(st, Step::Setrlimit, e);
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
}

/// securebits, every capability set emptied, no_new_privs, not dumpable,
/// landlock, then seccomp (last).
///
/// # Safety
/// As [`child_main`].
unsafe fn drop_privileges(p: &Plan, st: c_int) {
    let f = p.fixed;
    // SAFETY: see child_main.
    unsafe {
        // Capabilities: uid 0 gets nothing at exec, bounding/ambient empty,
        // then all sets cleared. (SECBITS_NOROOT, _NO_SETUID_FIXUP,
        // _KEEP_CAPS, each with its lock bit, and _NO_CAP_AMBIENT_RAISE
        // with its lock: 0b1111 | 1 << 5 | 1 << 6 | 1 << 7.)
        const SECBITS: c_ulong = 0b1110_1111;
        sys!(st, Step::Securebits; prctl, libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0);
        for cap in 0..=f.last_cap {
            match syscall!(Sysno::prctl, libc::PR_CAPBSET_DROP, cap, 0, 0, 0) {
                Ok(_) | Err(Errno::EINVAL) => {}
                Err(e) => fail(st, Step::DropBoundingSet, e),
            }
        }
        sys!(st, Step::ClearAmbient; prctl, libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
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
        let none = || CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        };
        let data = [none(), none()];
        sys!(st, Step::Capset; capset, &hdr as *const CapHeader, data.as_ptr());
        sys!(st, Step::NoNewPrivs; prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if !p.shared_vm {
            // Our own copy of the worker's memory (environment, secrets):
            // not dumpable = /proc/1/{environ,mem,...} and ptrace need
            // CAP_SYS_PTRACE, which nobody in here has. execve resets this
            // for the user process only. (With CLONE_VM the flag would be
            // the worker's; the user process's nested landlock domain does
            // this job instead, see user_main.)
            sys!(st, Step::NotDumpable; prctl, libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
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
            let step = Step::Landlock;
            let rs = sys!(st, step; landlock_create_ruleset, &attr as *const LlRulesetAttr,
                std::mem::size_of::<LlRulesetAttr>(), 0);
            for (path, access) in &f.ll_rules {
                let fd = sys!(st, step; openat, libc::AT_FDCWD, path.as_ptr(),
                    libc::O_PATH | libc::O_CLOEXEC);
                let pb = LlPathBeneath {
                    allowed_access: access & handled,
                    parent_fd: fd as c_int,
                };
                sys!(st, step; landlock_add_rule, rs, filter::LL_RULE_PATH_BENEATH,
                    &pb as *const LlPathBeneath, 0);
                let _ = syscall!(Sysno::close, fd);
            }
            sys!(st, step; landlock_restrict_self, rs, 0);
            let _ = syscall!(Sysno::close, rs);
        }

        // seccomp last.
        let fprog = libc::sock_fprog {
            len: f.seccomp.len() as u16,
            filter: f.seccomp.as_ptr() as *mut libc::sock_filter,
        };
        sys!(st, Step::Seccomp; prctl, libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog, 0, 0);
    }
}

/// stdin/stdout/stderr onto 0..2, the status pipe on [`STATUS_FD`]
/// (close-on-exec), everything else closed. Returns the status fd.
///
/// # Safety
/// As [`child_main`].
unsafe fn move_fds(p: &Plan, st: c_int) -> c_int {
    let step = Step::FileDescriptors;
    // SAFETY: see child_main.
    unsafe {
        // Go through fds >= 10 so the dups cannot clobber each other.
        let hi = |fd: c_int| match syscall!(Sysno::fcntl, fd, libc::F_DUPFD, 10) {
            Ok(n) => n as c_int,
            Err(e) => fail(st, step, e),
        };
        let (a, b, c, s) = (hi(p.stdin_fd), hi(p.out_w), hi(p.err_w), hi(st));
        for (from, to) in [(a, 0), (b, 1), (c, 2), (s, STATUS_FD)] {
            if let Err(e) = syscall!(Sysno::dup3, from, to, 0) {
                fail(s, step, e);
            }
        }
        let st = STATUS_FD;
        sys!(st, step; fcntl, st, libc::F_SETFD, libc::FD_CLOEXEC);
        sys!(st, step; close_range, 4u32, u32::MAX, 0u32);
        st
    }
}

/// Start the user process, then reap everything until it has ended and
/// report its wait status.
///
/// # Safety
/// As [`child_main`].
unsafe fn start_and_reap(p: &Plan, st: c_int) -> ! {
    // SAFETY: see child_main; the user process runs `user_main(p)` on its
    // own stack, and we are suspended (CLONE_VFORK) until it execs or exits.
    unsafe {
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
            fail(st, Step::Fork, Errno::new(pid.wrapping_neg() as i32));
        }
        // The reaper: keep nothing of the task's stdio.
        for fd in 0..3 {
            let _ = syscall!(Sysno::close, fd);
        }
        loop {
            let mut status: c_int = 0;
            match syscall!(Sysno::wait4, -1i32, &mut status as *mut c_int, 0, 0usize) {
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

/// Exit status of a command that could not be started: 127 when no file
/// was found, 126 when one was found but could not be executed (as shells
/// do).
pub(super) fn exec_failure_status(errno: c_int) -> i32 {
    if errno == libc::ENOENT {
        127
    } else {
        126
    }
}

/// The user process, on its own stack, sharing the reaper's memory until
/// `execve`. Never returns. Raw syscalls only, as in [`child_main`].
extern "C" fn user_main(arg: *mut c_void) -> c_int {
    let st = STATUS_FD;
    // SAFETY: `arg` is the reaper's `&Plan`, alive and unchanged (the reaper
    // is suspended by CLONE_VFORK); only raw syscalls on it and our stack.
    unsafe {
        let p = &*(arg as *const Plan);
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
                fail(st, Step::NestedLandlock, e);
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
        exit(exec_failure_status(err))
    }
}
