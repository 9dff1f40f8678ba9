//! The plan of a run: everything the child needs, built before `clone` as
//! plain data ([`Fixed`] once per [`Sandbox`], [`Plan`] per run). The child
//! (`child.rs`) only walks it; nothing here runs in the child.

use super::filter::{self, BpfProgram};
use super::sys::Stacks;
use super::{cstr, Effective, Request, RequestError, SandboxError, WORK_DIR};
use crate::SandboxConfig;
use libc::{c_char, c_int, c_ulong};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One step of building the root, executed in order by the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
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
pub(crate) struct Fixed {
    pub(super) staging: CString,
    pub(super) root_opts: CString,
    pub(super) ops: Vec<Op>,
    pub(super) made_dirs: Vec<PathBuf>,
    pub(super) bound: Vec<PathBuf>,
    pub(super) work_dst: CString,
    pub(super) proc_dst: CString,
    pub(super) seccomp: BpfProgram,
    pub(crate) landlock_abi: u32,
    /// (empty netns, the process's own netns) when tasks share one.
    pub(crate) shared_net: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
    pub(super) last_cap: c_int,
    pub(crate) host_uid: u32,
    pub(super) host_gid: u32,
    /// We can map an arbitrary uid (root in the initial user namespace).
    pub(super) privileged: bool,
    pub(super) ll_rules: Vec<(CString, u64)>,
    pub(super) stacks: Stacks,
    /// Clone the reaper with CLONE_VM (see `sys`): needs landlock, whose
    /// nested domain keeps the task out of the reaper's memory.
    pub(super) share_vm: bool,
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

/// Create an empty network namespace (on a short-lived thread, so no
/// other thread changes namespace) and return (it, our own netns).
fn make_empty_netns() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let netns = |what: &'static str| move |err: std::io::Error| SandboxError::Netns { what, err };
    let own = std::fs::File::open("/proc/self/ns/net").map_err(netns("open /proc/self/ns/net"))?;
    let empty = std::thread::spawn(move || -> Result<std::fs::File, SandboxError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| netns("unshare(CLONE_NEWNET)")(e.into()))?;
        std::fs::File::open("/proc/thread-self/ns/net").map_err(netns("open netns"))
    })
    .join()
    .map_err(|_| SandboxError::NetnsThread)??;
    Ok((empty.into(), own.into()))
}

/// The ops that build the root below `staging` from the read-only binds
/// `srcs` (host paths that exist), the device nodes, `/work` and `/proc`.
pub(super) struct RootOps {
    pub(super) ops: Vec<Op>,
    pub(super) made: Vec<PathBuf>,
    pub(super) bound: Vec<PathBuf>,
    pub(super) work: PathBuf,
    pub(super) proc_: PathBuf,
}

pub(super) fn root_ops(staging: &Path, srcs: &[&Path]) -> RootOps {
    let mut ops = Vec::new();
    let mut made = Vec::new();
    let mut bound = Vec::new();
    // Parents before children, so a child of a bound dir is skipped.
    let mut sorted = srcs.to_vec();
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
    RootOps {
        ops,
        made,
        bound,
        work,
        proc_,
    }
}

impl Fixed {
    pub(crate) fn new(cfg: &SandboxConfig) -> Result<Fixed, SandboxError> {
        let srcs: Vec<&Path> = cfg.ro_binds.iter().map(PathBuf::as_path).collect();
        for s in &srcs {
            if !s.is_absolute() || s.as_os_str().as_bytes().contains(&0) || *s == Path::new("/") {
                return Err(SandboxError::RoBind(s.to_path_buf()));
            }
        }
        let staging = STAGING_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|s| s.is_dir() && !srcs.iter().any(|b| b.starts_with(s) || s.starts_with(b)))
            .ok_or(SandboxError::NoStaging)?;
        let RootOps {
            ops,
            made,
            bound,
            work,
            proc_,
        } = root_ops(staging, &srcs);

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
        let abi = super::sys::landlock_abi();
        let share_vm = super::sys::CAN_SHARE_VM && abi > 0;
        if share_vm && privileged {
            // A root worker's memory turns non-dumpable anyway once a reaper
            // sharing it switches to the mapped uid (the kernel does that on
            // an effective-uid change): make it so from the start, not from
            // the first task on. (An unprivileged worker must stay dumpable:
            // it writes its children's uid maps, which /proc gives to root
            // for non-dumpable processes.)
            let _ = nix::sys::prctl::set_dumpable(false);
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

/// Per-run data for the child. Raw pointers in `argv_ptrs`/`envp_ptrs`
/// point into the heap buffers of the `CString`s owned alongside them (a
/// move of the plan does not move those), alive until the run ends. The
/// descriptors and the stack top are filled in by the supervisor.
pub(super) struct Plan<'a> {
    pub(super) fixed: &'a Fixed,
    pub(super) extra_ops: Vec<Op>,
    pub(super) work_opts: CString,
    pub(super) file_dirs: Vec<CString>,
    pub(super) files: Vec<(CString, &'a [u8])>,
    pub(super) rlimits: Vec<(u32, u64, u64)>,
    pub(super) rlimit_as: u64,
    pub(super) rlimit_nproc: u64,
    pub(super) exec_paths: Vec<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    pub(super) argv_ptrs: Vec<*const c_char>,
    pub(super) envp_ptrs: Vec<*const c_char>,
    pub(super) hostname: CString,
    /// Top of the user process's stack (between its clone and execve).
    pub(super) user_stack_top: *mut u8,
    /// The reaper shares the worker's memory (CLONE_VM).
    pub(super) shared_vm: bool,
    /// v1 cgroups the child joins itself: (open `tasks` fd, limit bits).
    pub(super) cg_join: Vec<(c_int, u8)>,
    pub(super) stdin_fd: c_int,
    pub(super) out_w: c_int,
    pub(super) err_w: c_int,
    pub(super) status_w: c_int,
    pub(super) sync_r: c_int,
}

impl<'a> Plan<'a> {
    /// Build the per-run plan. Errors are the user's.
    pub(super) fn build(
        f: &'a Fixed,
        req: &'a Request,
        eff: &Effective,
    ) -> Result<Plan<'a>, RequestError> {
        req.validate()?;
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

        let mut file_dirs: Vec<String> = Vec::new();
        let mut files = Vec::new();
        for (rel, data) in &req.files {
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
        Ok(Plan {
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
            _argv: argv,
            _envp: envp,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The ops as text, `@` for the staging copy of the fixture dir `t`,
    /// `T` for `t`, `S` for the staging dir; the mkdirs of `@`'s parents
    /// (which depend on where `t` is) left out.
    fn render(ops: &[Op], staging: &Path, t: &Path) -> Vec<String> {
        let at = staging.join(t.strip_prefix("/").unwrap());
        let s = |c: &CString| {
            c.to_str()
                .unwrap()
                .replace(at.to_str().unwrap(), "@")
                .replace(t.to_str().unwrap(), "T")
                .replace(staging.to_str().unwrap(), "S")
        };
        let parent_of_at = |op: &Op| match op {
            Op::Mkdir(d) => {
                let d = Path::new(d.to_str().unwrap());
                d != staging && at.starts_with(d)
            }
            _ => false,
        };
        ops.iter()
            .filter(|op| !parent_of_at(op))
            .map(|op| match op {
                Op::Mkdir(d) => format!("mkdir {}", s(d)),
                Op::Touch(d) => format!("touch {}", s(d)),
                Op::Symlink { target, link } => format!("symlink {} -> {}", s(link), s(target)),
                Op::Bind { src, dst } => format!("bind {} at {}", s(src), s(dst)),
                Op::Remount { dst, flags } => {
                    let must = (libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY)
                        | libc::MS_NOSUID
                        | libc::MS_NODEV;
                    assert_eq!(flags & must, must, "{op:?}");
                    format!("remount ro {}", s(dst))
                }
                Op::DevBind { src, dst } => format!("devbind {} at {}", s(src), s(dst)),
            })
            .collect()
    }

    #[test]
    fn root_ops_for_a_set_of_binds() {
        // Not below /tmp (the staging /tmp would then be a directory, not
        // the link to /work) nor /work.
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let t = t.path();
        std::fs::create_dir_all(t.join("usr/lib")).unwrap();
        std::fs::create_dir_all(t.join("etc")).unwrap();
        std::fs::write(t.join("etc/ld.so.cache"), "").unwrap();
        std::os::unix::fs::symlink("usr/lib", t.join("lib")).unwrap();
        let staging = Path::new("/stage");
        let srcs = [
            t.join("usr/lib"), // inside /usr, bound below: skipped
            t.join("usr"),
            t.join("etc/ld.so.cache"),
            t.join("lib"),
            t.join("missing"), // skipped
        ];
        let srcs: Vec<&Path> = srcs.iter().map(PathBuf::as_path).collect();
        let r = root_ops(staging, &srcs);
        let mut want = vec![
            "mkdir @/usr",
            "bind T/usr at @/usr",
            "remount ro @/usr",
            "symlink @/lib -> usr/lib",
            "mkdir @/etc",
            "touch @/etc/ld.so.cache",
            "bind T/etc/ld.so.cache at @/etc/ld.so.cache",
            "remount ro @/etc/ld.so.cache",
            "mkdir S/dev",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        for n in DEV_NODES {
            want.push(format!("touch S/dev/{n}"));
            want.push(format!("devbind /dev/{n} at S/dev/{n}"));
        }
        for (l, t) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            want.push(format!("symlink S/dev/{l} -> {t}"));
        }
        want.push("mkdir S/work".into());
        want.push("mkdir S/proc".into());
        want.push("symlink S/tmp -> /work".into());
        assert_eq!(render(&r.ops, staging, t), want);
        assert_eq!(r.work, Path::new("/stage/work"));
        assert_eq!(r.proc_, Path::new("/stage/proc"));
        assert_eq!(
            r.bound,
            [t.join("usr"), t.join("lib"), t.join("etc/ld.so.cache")]
        );
    }

    #[test]
    fn per_run_plan() {
        let cfg = SandboxConfig {
            shared_netns: false,
            ..SandboxConfig::default()
        };
        let fixed = Fixed::new(&cfg).unwrap();
        let req = Request {
            argv: vec!["prog".into(), "arg".into()],
            env: BTreeMap::from([("PATH".into(), "/a:rel:/b/".into())]),
            files: BTreeMap::from([
                ("d/e/f.txt".into(), b"1".to_vec()),
                ("d/g.txt".into(), b"2".to_vec()),
                ("h".into(), b"3".to_vec()),
            ]),
            ..Request::default()
        };
        let eff = Effective::new(
            &cfg,
            &crate::LimitRequest {
                cpu_ms: Some(1500),
                file_size_bytes: Some(7),
                ..Default::default()
            },
        );
        let p = Plan::build(&fixed, &req, &eff).unwrap();
        let strs = |v: &[CString]| {
            v.iter()
                .map(|c| c.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strs(&p.exec_paths), ["/a/prog", "/b/prog"]);
        assert_eq!(strs(&p.file_dirs), ["/work/d", "/work/d/e"]);
        let files: Vec<_> = p
            .files
            .iter()
            .map(|(c, d)| (c.to_str().unwrap(), *d))
            .collect();
        assert_eq!(
            files,
            [
                ("/work/d/e/f.txt", &b"1"[..]),
                ("/work/d/g.txt", b"2"),
                ("/work/h", b"3")
            ]
        );
        assert_eq!(
            strs(&p._envp),
            [
                "HOME=/work",
                "LANG=C.UTF-8",
                "PATH=/a:rel:/b/",
                "TMPDIR=/tmp"
            ]
        );
        assert_eq!(p.argv_ptrs.len(), 3);
        assert!(p.argv_ptrs[2].is_null() && p.envp_ptrs[4].is_null());
        assert!(p.rlimits.contains(&(libc::RLIMIT_CPU, 2, 3)));
        assert!(p.rlimits.contains(&(libc::RLIMIT_FSIZE, 7, 7)));
        assert!(p.extra_ops.is_empty());

        // argv[0] with a slash is run as is; a bad env name is refused.
        let req = Request::new(["./x"]);
        assert_eq!(
            strs(&Plan::build(&fixed, &req, &eff).unwrap().exec_paths),
            ["./x"]
        );
        let mut req = Request::new(["x"]);
        req.env.insert("A=B".into(), "c".into());
        assert!(matches!(
            Plan::build(&fixed, &req, &eff),
            Err(RequestError::EnvName(_))
        ));
    }
}
