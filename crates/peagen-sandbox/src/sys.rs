//! Process creation for the sandbox: a `clone` that runs a function on a
//! stack of our own, and the pool of those stacks.
//!
//! Why not `fork`: a forked child gets a copy of the worker's page tables,
//! and copying them (then tearing them down, and the copy-on-write faults
//! the worker takes afterwards) costs more than everything else in a task's
//! start-up, growing with the worker's memory (0.13 ms for a small process,
//! 0.5 ms at 20 MB resident, measured here). So on x86_64 the reaper is
//! cloned with `CLONE_VM`: it shares the worker's memory, runs on its own
//! stack from [`Stacks`], and makes only raw syscalls (the `syscalls` crate:
//! no libc wrapper, so no `errno` write into the worker thread's TLS, which
//! the reaper shares). Why that is safe is in `docs/security.md`
//! ("The reaper shares the worker's memory").
//!
//! Elsewhere, without landlock (whose nested domain keeps the task from
//! reading the reaper's memory), or with a cgroup v2 memory limit (whose
//! OOM killer cannot be turned off, and would kill the worker along with a
//! reaper sharing its memory), the reaper is a classic copy (no `CLONE_VM`)
//! on the same stack layout.

use libc::{c_int, c_ulong, c_void};
use std::sync::Mutex;

/// The child's entry: never returns.
pub type Entry = extern "C" fn(*mut c_void) -> c_int;

/// Whether this build can run the reaper in the worker's address space.
pub const CAN_SHARE_VM: bool = cfg!(target_arch = "x86_64");

/// `clone(flags)` with the child running `f(arg)` on `stack_top`; with
/// `CLONE_PIDFD` the pidfd is stored at `pidfd`. Returns the child's pid or
/// -errno. The child exits with `f`'s return value should it return.
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of a stack that stays mapped
/// and unused by anyone else until the child has exited (or, with
/// `CLONE_VFORK`, exec'd); `f` must be safe to run in the child given the
/// flags (with `CLONE_VM`: no libc calls that touch thread-local state).
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone_on(
    flags: c_ulong,
    stack_top: *mut u8,
    pidfd: *mut c_int,
    f: Entry,
    arg: *mut c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the kernel returns twice. The parent falls through to `2:`
    // with every register but rax/rcx/r11 intact. The child starts with rsp
    // = stack_top (aligned, so the call leaves the ABI's rsp%16 == 8 at
    // entry), a cleared frame pointer, and calls f(arg) from the callee-saved
    // r12/r13 it inherited; it never comes back into the parent's frame.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone as isize => ret,
            in("rdi") flags,
            in("rsi") stack_top,
            in("rdx") pidfd,
            in("r10") 0usize,
            in("r8") 0usize,
            in("r12") arg,
            in("r13") f,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Portable fallback: glibc's `clone` (sets `errno` on failure, which is
/// why callers here never pass `CLONE_VM` for a long-lived child).
///
/// # Safety
/// As for the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn clone_on(
    flags: c_ulong,
    stack_top: *mut u8,
    pidfd: *mut c_int,
    f: Entry,
    arg: *mut c_void,
) -> isize {
    // SAFETY: forwarded contract.
    let r = unsafe { libc::clone(f, stack_top as *mut c_void, flags as c_int, arg, pidfd) };
    if r < 0 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL) as isize)
    } else {
        r as isize
    }
}

/// The kernel's landlock ABI version; 0 when landlock is unavailable.
pub fn landlock_abi() -> u32 {
    // SAFETY: querying the ABI version takes no pointer (NULL, 0) and only
    // returns a number or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            super::filter::LL_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        r as u32
    }
}

const PAGE: usize = 4096;
const GUARD: usize = PAGE;
/// The reaper's set-up runs on this (a few KiB used; room for the stack
/// probes of large frames).
const REAPER_STACK: usize = 128 << 10;
/// The user process's stack between its clone and `execve`.
const USER_STACK: usize = 32 << 10;
const MAP_LEN: usize = GUARD + USER_STACK + GUARD + REAPER_STACK;

/// One mapping: guard, user stack, guard, reaper stack. The guard pages
/// turn an overflow into a fault instead of silent damage to the worker's
/// memory.
pub struct Stack {
    base: *mut u8,
}

// SAFETY: the mapping is owned by this value and used by one task at a time.
unsafe impl Send for Stack {}

impl Stack {
    fn new() -> std::io::Result<Stack> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let s = Stack {
            base: base as *mut u8,
        };
        for off in [0, GUARD + USER_STACK] {
            // SAFETY: a page inside our own mapping.
            if unsafe { libc::mprotect(base.cast::<u8>().add(off).cast(), GUARD, libc::PROT_NONE) }
                < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(s)
    }

    pub fn user_top(&self) -> *mut u8 {
        // SAFETY: in bounds of the mapping (end of the user stack).
        unsafe { self.base.add(GUARD + USER_STACK) }
    }

    pub fn reaper_top(&self) -> *mut u8 {
        // SAFETY: one past the end of the mapping (top of the reaper stack).
        unsafe { self.base.add(MAP_LEN) }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used by any child.
        unsafe { libc::munmap(self.base.cast(), MAP_LEN) };
    }
}

/// Stacks kept for reuse (one per concurrently running task).
#[derive(Default)]
pub struct Stacks(Mutex<Vec<Stack>>);

const STACKS_KEPT: usize = 8;

impl Stacks {
    pub fn take(&self) -> std::io::Result<Stack> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match kept {
            Some(s) => Ok(s),
            None => Stack::new(),
        }
    }

    /// Only once the task using it has been reaped.
    pub fn put(&self, s: Stack) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < STACKS_KEPT {
            v.push(s);
        }
    }
}

/// A pidfd for `pid` (any process we may signal; pollable: readable once
/// it has exited).
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes no pointer; a non-negative result is a fresh
    // descriptor that we own from here on.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as c_int) })
}

/// SIGKILL through a pidfd (no pid reuse race).
pub fn pidfd_kill(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal on a descriptor we hold, no info pointer.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<c_void>(),
            0u32,
        )
    };
}

/// A connected pair of unix `SOCK_SEQPACKET` sockets (close-on-exec).
pub fn seqpacket_pair() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [-1 as c_int; 2];
    // SAFETY: socketpair writes two descriptors into our array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors, owned from here on.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Ask the kernel to attach the sender's credentials (pid translated into
/// our pid namespace) to every message received on `sock`.
pub fn pass_cred(sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: c_int = 1;
    // SAFETY: setsockopt with a pointer to a local int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &one as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Send one message carrying `fds` (`SCM_RIGHTS`, at most 8).
pub fn send_fds(
    sock: std::os::fd::BorrowedFd<'_>,
    data: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const MAX: usize = 8;
    if fds.len() > MAX {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    let raw: Vec<c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = (raw.len() * std::mem::size_of::<c_int>()) as u32;
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe { (libc::CMSG_SPACE(payload), libc::CMSG_LEN(payload)) };
    if space as usize > std::mem::size_of_val(&cbuf) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before we fill it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds `space` bytes (checked above),
        // so the first header and its `payload` data bytes are in bounds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr() as *const u8,
                libc::CMSG_DATA(c),
                payload as usize,
            );
        }
    }
    // SAFETY: msg points at our iovec and control buffer, alive for the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receive one message into `buf`: (bytes, the sender's pid in our pid
/// namespace when the kernel attached credentials, see [`pass_cred`]).
/// Descriptors sent along are closed (`MSG_CMSG_CLOEXEC` + dropped).
pub fn recv_with_pid(
    sock: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<i32>)> {
    use std::os::fd::AsRawFd;
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is valid before we fill it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: msg points at our iovec and control buffer, alive for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut pid = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf, with
    // the kernel's lengths (CMSG_NXTHDR stops at msg_controllen).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let dlen = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if (*c).cmsg_level == libc::SOL_SOCKET {
                if (*c).cmsg_type == libc::SCM_CREDENTIALS
                    && dlen >= std::mem::size_of::<libc::ucred>()
                {
                    let cred = std::ptr::read_unaligned(data as *const libc::ucred);
                    pid = Some(cred.pid);
                } else if (*c).cmsg_type == libc::SCM_RIGHTS {
                    for i in 0..dlen / std::mem::size_of::<c_int>() {
                        let fd = std::ptr::read_unaligned((data as *const c_int).add(i));
                        libc::close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, pid))
}
