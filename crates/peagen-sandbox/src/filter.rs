//! The seccomp filter and the landlock constants used by the child.
//!
//! The filter is one classic-BPF program built here (a binary search over
//! the syscall number, then small argument checks), rather than seccompiler's
//! linear chains: one program with a short path per syscall keeps the
//! kernel's per-filter cost (JIT + action-cache emulation of every syscall
//! number at install time, paid on every task start) low.

use libc::sock_filter;

/// A compiled seccomp program.
pub type BpfProgram = Vec<sock_filter>;

/// Syscalls denied outright with EPERM.
const DENY: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_lookup_dcookie,
    libc::SYS_fanotify_init,
];

/// Legacy syscalls that only exist on x86_64.
#[cfg(target_arch = "x86_64")]
const DENY_LEGACY: &[i64] = &[
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
];
#[cfg(not(target_arch = "x86_64"))]
const DENY_LEGACY: &[i64] = &[];

/// Namespace-creating clone flags: `clone` with any of them is EPERM.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Which socket address families the sandbox may create.
pub const ALLOWED_FAMILY: u64 = libc::AF_UNIX as u64;

/// Knobs for the filters; every one defaults to "deny" (the tests flip one
/// to show that the battery notices a missing rule).
#[derive(Debug, Clone, Copy)]
pub struct FilterOptions {
    pub deny_foreign_sockets: bool,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            deny_foreign_sockets: true,
        }
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x32 syscalls carry this bit; they are refused (ENOSYS).
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;
#[cfg(not(target_arch = "x86_64"))]
const X32_BIT: u32 = 0;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;

// struct seccomp_data offsets (little endian: low half of an argument first).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}
fn ret(k: u32) -> sock_filter {
    ins(RET_K, 0, 0, k)
}
fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

#[derive(Clone, Copy)]
enum Action {
    Errno(i32),
    /// clone: EPERM when any namespace flag is set.
    Clone,
    /// ioctl: EPERM for TIOCSTI / TIOCLINUX.
    Ioctl,
    /// socket/socketpair: EAFNOSUPPORT unless AF_UNIX.
    Socket,
}

/// Code for one syscall that matched; always ends in a return.
fn action_code(a: Action) -> Vec<sock_filter> {
    match a {
        Action::Errno(e) => vec![ret(errno(e))],
        Action::Clone => {
            let mask = NS_FLAGS.iter().fold(0u64, |m, f| m | f) as u32;
            vec![
                ins(LD_W_ABS, 0, 0, off_arg_lo(0)),
                ins(JSET_K, 0, 1, mask),
                ret(errno(libc::EPERM)),
                ret(RET_ALLOW),
            ]
        }
        Action::Ioctl => vec![
            ins(LD_W_ABS, 0, 0, off_arg_lo(1)),
            ins(JEQ_K, 1, 0, libc::TIOCSTI as u32),
            ins(JEQ_K, 0, 1, libc::TIOCLINUX as u32),
            ret(errno(libc::EPERM)),
            ret(RET_ALLOW),
        ],
        Action::Socket => vec![
            ins(LD_W_ABS, 0, 0, off_arg_lo(0)),
            ins(JEQ_K, 0, 1, ALLOWED_FAMILY as u32),
            ret(RET_ALLOW),
            ret(errno(libc::EAFNOSUPPORT)),
        ],
    }
}

/// Binary search over sorted (nr, action); the accumulator holds the nr
/// on entry to every node (argument checks only run in leaves).
fn search(rules: &[(u32, Action)]) -> Vec<sock_filter> {
    if rules.len() <= 3 {
        let mut out = Vec::new();
        for &(nr, a) in rules {
            let body = action_code(a);
            // jeq nr -> body (next), else skip over the body.
            out.push(ins(JEQ_K, 0, body.len() as u8, nr));
            out.extend(body);
        }
        out.push(ret(RET_ALLOW));
        return out;
    }
    let mid = rules.len() / 2;
    let left = search(&rules[..mid]);
    let right = search(&rules[mid..]);
    let mut out = vec![
        // nr >= pivot: skip the long jump into the right half.
        ins(JGE_K, 1, 0, rules[mid].0),
        ins(JA, 0, 0, right.len() as u32),
    ];
    out.extend(right);
    out.extend(left);
    out
}

/// A seccomp program that cannot be built (a bug in the rules here).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("a syscall is listed twice")]
    Duplicate,
    #[error("program too long")]
    TooLong,
}

/// The seccomp program (installed last, after landlock).
pub fn program(opts: FilterOptions) -> Result<BpfProgram, SeccompError> {
    let mut rules: Vec<(u32, Action)> = DENY
        .iter()
        .chain(DENY_LEGACY)
        .map(|&nr| (nr as u32, Action::Errno(libc::EPERM)))
        .collect();
    rules.push((libc::SYS_clone as u32, Action::Clone));
    rules.push((libc::SYS_ioctl as u32, Action::Ioctl));
    // clone3's flags live in memory and cannot be checked; libc falls back
    // to clone(2) on ENOSYS.
    rules.push((libc::SYS_clone3 as u32, Action::Errno(libc::ENOSYS)));
    if opts.deny_foreign_sockets {
        // No inet (even in the empty netns), no vsock (not namespaced!), no
        // netlink, no packet sockets.
        rules.push((libc::SYS_socket as u32, Action::Socket));
        rules.push((libc::SYS_socketpair as u32, Action::Socket));
    }
    rules.sort_by_key(|r| r.0);
    if rules.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(SeccompError::Duplicate);
    }
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH),
        ret(RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, OFF_NR),
    ];
    if X32_BIT != 0 {
        prog.push(ins(JGE_K, 0, 1, X32_BIT));
        prog.push(ret(errno(libc::ENOSYS)));
    }
    prog.extend(search(&rules));
    if prog.len() > 4096 {
        return Err(SeccompError::TooLong);
    }
    Ok(prog)
}

// Landlock UAPI (linux/landlock.h); raw syscalls because the child may not
// allocate.
pub const LL_CREATE_RULESET_VERSION: u32 = 1;
pub const LL_RULE_PATH_BENEATH: u32 = 1;

pub const FS_EXECUTE: u64 = 1 << 0;
pub const FS_WRITE_FILE: u64 = 1 << 1;
pub const FS_READ_FILE: u64 = 1 << 2;
pub const FS_READ_DIR: u64 = 1 << 3;
pub const FS_MAKE_BLOCK: u64 = 1 << 11;
pub const FS_TRUNCATE: u64 = 1 << 14;

/// Filesystem rights handled (= denied unless granted) at a given ABI.
pub fn ll_handled_fs(abi: u32) -> u64 {
    let mut m = (1u64 << 13) - 1; // ABI 1: EXECUTE..MAKE_SYM
    if abi >= 2 {
        m |= 1 << 13; // REFER
    }
    if abi >= 3 {
        m |= FS_TRUNCATE;
    }
    if abi >= 5 {
        m |= 1 << 15; // IOCTL_DEV
    }
    m
}

/// TCP bind/connect handled from ABI 4 (no rules: all denied).
pub fn ll_handled_net(abi: u32) -> u64 {
    if abi >= 4 {
        0b11
    } else {
        0
    }
}

/// Scopes from ABI 6: abstract unix sockets and signals stay inside the
/// task's own landlock domain.
pub fn ll_scoped(abi: u32) -> u64 {
    if abi >= 6 {
        0b11
    } else {
        0
    }
}

#[repr(C)]
pub struct LlRulesetAttr {
    pub handled_access_fs: u64,
    pub handled_access_net: u64,
    pub scoped: u64,
}

#[repr(C, packed)]
pub struct LlPathBeneath {
    pub allowed_access: u64,
    pub parent_fd: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions we emit.
    fn eval(p: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                JEQ_K | JGE_K | JSET_K => {
                    let t = match i.code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                JA => pc += i.k as usize,
                RET_K => return i.k,
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn filter_decisions() {
        let p = program(FilterOptions::default()).unwrap();
        let e = |nr: i64, args: [u64; 6]| eval(&p, AUDIT_ARCH, nr as u32, args);
        let z = [0u64; 6];
        for &nr in DENY.iter().chain(DENY_LEGACY) {
            assert_eq!(e(nr, z), errno(libc::EPERM), "syscall {nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_exit_group,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_rt_sigaction,
        ] {
            assert_eq!(e(nr, z), RET_ALLOW, "syscall {nr}");
        }
        let sigchld = libc::SIGCHLD as u64;
        assert_eq!(e(libc::SYS_clone, [sigchld, 0, 0, 0, 0, 0]), RET_ALLOW);
        for f in NS_FLAGS {
            assert_eq!(
                e(libc::SYS_clone, [sigchld | f, 0, 0, 0, 0, 0]),
                errno(libc::EPERM)
            );
        }
        assert_eq!(e(libc::SYS_clone3, z), errno(libc::ENOSYS));
        let tiocsti = [0, libc::TIOCSTI, 0, 0, 0, 0];
        assert_eq!(e(libc::SYS_ioctl, tiocsti), errno(libc::EPERM));
        assert_eq!(
            e(libc::SYS_ioctl, [0, libc::TIOCSTI | (1 << 32), 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(e(libc::SYS_ioctl, [0, libc::TCGETS, 0, 0, 0, 0]), RET_ALLOW);
        for fam in [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_VSOCK,
            libc::AF_NETLINK,
            libc::AF_PACKET,
        ] {
            let a = [fam as u64, 1, 0, 0, 0, 0];
            assert_eq!(
                e(libc::SYS_socket, a),
                errno(libc::EAFNOSUPPORT),
                "family {fam}"
            );
            assert_eq!(e(libc::SYS_socketpair, a), errno(libc::EAFNOSUPPORT));
        }
        assert_eq!(
            e(libc::SYS_socket, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            eval(&p, 0x4000_0003, libc::SYS_read as u32, z),
            RET_KILL_PROCESS
        );
        if X32_BIT != 0 {
            assert_eq!(
                eval(&p, AUDIT_ARCH, X32_BIT | libc::SYS_ptrace as u32, z),
                errno(libc::ENOSYS)
            );
        }
        // Every syscall number gets a decision without running off the end.
        for nr in 0..600 {
            e(nr, z);
        }
    }
}
