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
