//! The seccomp filters (compiled once with seccompiler) and the landlock
//! constants used by the child.
//!
//! seccompiler has one match action per filter, so there are three stacked
//! filters; the kernel runs all of them and the most restrictive result wins.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

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

fn arch() -> Result<TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: unsupported architecture: {e:?}"))
}

fn cond(arg: u8, len: Len, op: Op, v: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, v).map_err(|e| format!("seccomp condition: {e}"))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| format!("seccomp rule: {e}"))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, String> {
    let f = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    f.try_into().map_err(|e| format!("seccomp compile: {e}"))
}

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

/// The stacked filters, in the order they are installed.
pub fn programs(opts: FilterOptions) -> Result<Vec<BpfProgram>, String> {
    let mut out = Vec::new();

    // 1. EPERM: the deny list, clone with namespace flags, TIOCSTI/TIOCLINUX.
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENY.iter().chain(DENY_LEGACY) {
        r.insert(nr, vec![]);
    }
    let mut clone_rules = Vec::new();
    for &f in NS_FLAGS {
        clone_rules.push(rule(vec![cond(0, Len::Qword, Op::MaskedEq(f), f)?])?);
    }
    r.insert(libc::SYS_clone, clone_rules);
    r.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, libc::TIOCLINUX)?])?,
        ],
    );
    out.push(compile(r, SeccompAction::Errno(libc::EPERM as u32))?);

    // 2. ENOSYS for clone3: its flags live in memory and cannot be checked,
    //    and libc falls back to clone(2) on ENOSYS.
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    r.insert(libc::SYS_clone3, vec![]);
    out.push(compile(r, SeccompAction::Errno(libc::ENOSYS as u32))?);

    // 3. EAFNOSUPPORT for every socket family but AF_UNIX: no inet (even in
    //    the empty netns), no vsock (not namespaced!), no netlink, no packet.
    if opts.deny_foreign_sockets {
        let mut r: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        r.insert(
            libc::SYS_socket,
            vec![rule(vec![cond(0, Len::Dword, Op::Ne, ALLOWED_FAMILY)?])?],
        );
        r.insert(
            libc::SYS_socketpair,
            vec![rule(vec![cond(0, Len::Dword, Op::Ne, ALLOWED_FAMILY)?])?],
        );
        out.push(compile(r, SeccompAction::Errno(libc::EAFNOSUPPORT as u32))?);
    }
    Ok(out)
}

// Landlock UAPI (linux/landlock.h); raw syscalls because the child may not
// allocate.
pub const LL_CREATE_RULESET_VERSION: u32 = 1;
pub const LL_RULE_PATH_BENEATH: u32 = 1;

pub const FS_EXECUTE: u64 = 1 << 0;
pub const FS_WRITE_FILE: u64 = 1 << 1;
pub const FS_READ_FILE: u64 = 1 << 2;
pub const FS_READ_DIR: u64 = 1 << 3;
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

    #[test]
    fn filters_compile() {
        let p = programs(FilterOptions::default()).unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|f| !f.is_empty()));
    }
}
