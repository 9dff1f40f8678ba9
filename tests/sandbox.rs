//! Pen-test battery for the execute sandbox (docs/security.md lists which
//! test covers which item). Runs as root (cgroup limits) and as an
//! unprivileged user (scripts/test-sandbox-unprivileged.sh; rlimits only
//! when no cgroup is delegated): assertions follow the mechanism the
//! verdict reports, and never depend on timing.

use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{
    LimitRequest, Mechanism, Request, Sandbox, Status, Verdict, WarmRequest,
};
use serde_json::json;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

thread_local! {
    /// The mode of the test running on this thread (see `both_modes!`).
    static WARM: Cell<bool> = const { Cell::new(false) };
}

/// Every test runs twice: cold (one interpreter per task) and warm (the
/// command exec'd from a child of the warm zygote, so it runs in exactly
/// the context a warm task's code runs in).
fn warm() -> bool {
    WARM.with(Cell::get)
}

fn in_mode(warm: bool, test: fn()) {
    WARM.with(|w| w.set(warm));
    test();
}

/// A sandbox in the test's mode.
#[derive(Clone)]
struct Sb {
    sb: Arc<Sandbox>,
    warm: bool,
}

/// Runs `argv` from a warm task: files and stdin set up, then exec.
const EXEC_SRC: &str = r#"
import os, signal, sys
def main(argv, files, stdin):
    for rel, data in files.items():
        d = os.path.dirname(rel)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(rel, "wb") as f:
            f.write(bytes(data))
    r, w = os.pipe()
    os.write(w, bytes(stdin))
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    # Python ignores these; a cold task's command starts with the defaults.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print("cannot execute %r: %s" % (argv[0], e), file=sys.stderr)
        sys.stderr.flush()
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)
"#;

impl Sb {
    fn exec(&self, req: &Request) -> Verdict {
        // What the sandbox refuses up front is the same in both modes.
        if !self.warm || req.validate().is_err() {
            return self.sb.run(req);
        }
        let files: serde_json::Map<String, serde_json::Value> = req
            .files
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let w = WarmRequest {
            src: EXEC_SRC.into(),
            entry_fn: "main".into(),
            args: vec![json!(req.argv), json!(files), json!(req.stdin)],
            kwargs: Default::default(),
            env: req.env.clone(),
            limits: req.limits.clone(),
        };
        self.sb.run_warm(&w).expect("warm mode")
    }
}

impl std::ops::Deref for Sb {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sb
    }
}

fn sandbox(f: impl FnOnce(&mut SandboxConfig)) -> Sb {
    let mut cfg = SandboxConfig {
        wall_ms: 20_000,
        ..Default::default()
    };
    f(&mut cfg);
    Sb {
        sb: Arc::new(Sandbox::new(&cfg).expect("sandbox config")),
        warm: warm(),
    }
}

fn sh_in(sb: &Sb, script: &str) -> Verdict {
    sb.exec(&Request::new(["/bin/sh", "-c", script]))
}

fn sh(script: &str) -> Verdict {
    sh_in(&sandbox(|_| {}), script)
}

fn py(src: &str) -> Verdict {
    let v = sandbox(|_| {}).exec(&Request::new(["/usr/bin/python3", "-c", src]));
    assert!(
        !v.stderr.contains("No module named"),
        "python3 incomplete in the sandbox: {v:?}"
    );
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ok_and_exit_codes_and_output() {
    let v = sh("echo hello; echo oops >&2");
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.exit_code, Some(0));
    assert_eq!(v.stdout, "hello\n");
    assert_eq!(v.stderr, "oops\n");
    let v = sh("exit 3");
    assert_eq!(v.status, Status::RuntimeError);
    assert_eq!(v.exit_code, Some(3));
    let v = sandbox(|_| {}).exec(&Request::new(["no-such-program"]));
    assert_eq!(v.status, Status::RuntimeError, "{v:?}");
    assert_eq!(v.exit_code, Some(127));
    // Warm: the exec is the task's own (EXEC_SRC), so is the message.
    let msg = if warm() { &v.stderr } else { &v.message };
    assert!(msg.contains("cannot execute"), "{v:?}");
}

fn stdin_files_and_env_from_scratch() {
    let sb = sandbox(|_| {});
    let mut req = Request::new([
        "/bin/sh",
        "-c",
        "cat; cat sub/dir/f.txt; echo; env | sort; pwd",
    ]);
    req.stdin = b"from-stdin\n".to_vec();
    req.files
        .insert("sub/dir/f.txt".into(), b"file-content".to_vec());
    req.env.insert("MY_VAR".into(), "x y".into());
    let v = sb.exec(&req);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert!(v.stdout.starts_with("from-stdin\nfile-content\n"), "{v:?}");
    assert!(v.stdout.contains("MY_VAR=x y\n"));
    assert!(v.stdout.ends_with("/work\n"));
    // Nothing of this process's environment (cargo sets CARGO_* for tests).
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    assert!(
        !v.stdout.contains("CARGO"),
        "worker env leaked: {}",
        v.stdout
    );
    let mut bad = Request::new(["/bin/true"]);
    bad.files.insert("../escape".into(), vec![]);
    assert_eq!(sb.exec(&bad).status, Status::RuntimeError);
}

/// `kill -SEGV $$`: the user process is not PID 1, so the signal is real.
fn kill_segv_is_reported_as_signal() {
    let v = sh("echo pid=$$; kill -SEGV $$; echo survived");
    assert_eq!(v.status, Status::Signal, "{v:?}");
    assert_eq!(v.signal, Some(libc::SIGSEGV));
    assert_eq!(v.signal_name.as_deref(), Some("SIGSEGV"));
    if warm() {
        // Reaper 1, zygote 2, the task's child after them.
        assert!(
            v.stdout.starts_with("pid=") && v.stdout != "pid=1\n",
            "{v:?}"
        );
    } else {
        assert_eq!(v.stdout, "pid=2\n", "user process must not be PID 1");
    }
}

fn fork_bomb_is_capped_by_pids_limit() {
    let sb = sandbox(|c| {
        c.pids = 24;
        c.wall_ms = 5_000;
    });
    // Each `sleep &` is a new process that stays; count successful forks.
    let v = sh_in(
        &sb,
        "i=0; while sleep 1000 & do i=$((i+1)); echo $i; [ $i -ge 3000 ] && break; done; echo end",
    );
    assert!(
        matches!(
            v.limits.pids.mechanism,
            Mechanism::CgroupV1 | Mechanism::CgroupV2 | Mechanism::Rlimit
        ),
        "{v:?}"
    );
    let forks: u64 = v
        .stdout
        .lines()
        .filter_map(|l| l.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(forks >= 5, "the loop should fork a few times: {v:?}");
    assert!(forks < 24, "forked {forks} processes with pids=24: {v:?}");
    assert_ne!(v.status, Status::Ok, "{v:?}");
}

fn memory_bomb_is_contained() {
    memory_bomb_in(&sandbox(|c| c.memory_bytes = 96 << 20));
}

/// On x86_64 the reaper shares the worker's memory. Were it left to the
/// kernel's OOM killer, that would rate the reaper by the worker's size,
/// pick it, and kill every process sharing its memory: the worker. Here the
/// worker (this test process) holds 256 MiB, far more than the task may
/// use; it must outlive the task's OOM (else this test binary dies).
fn a_task_at_its_memory_limit_never_takes_the_worker_down() {
    let ballast = vec![1u8; 256 << 20];
    let sb = sandbox(|c| c.memory_bytes = 96 << 20);
    for _ in 0..3 {
        memory_bomb_in(&sb);
    }
    assert!(std::hint::black_box(&ballast)
        .iter()
        .step_by(4096)
        .all(|&b| b == 1));
}

fn memory_bomb_in(sb: &Sb) {
    let v = sb.exec(&Request::new([
        "/usr/bin/python3",
        "-c",
        "b=[]\nwhile True: b.append(b'x' * (8 << 20)); print(len(b), flush=True)",
    ]));
    let chunks: u64 = v
        .stdout
        .lines()
        .filter_map(|l| l.parse().ok())
        .max()
        .unwrap_or(0);
    assert!(
        chunks < 12,
        "allocated {chunks} x 8 MiB under a 96 MiB limit: {v:?}"
    );
    match v.limits.memory_bytes.mechanism {
        Mechanism::CgroupV1 | Mechanism::CgroupV2 => {
            assert_eq!(v.status, Status::MemoryLimit, "{v:?}");
            assert!(v.oom_killed);
            assert!(v.peak_memory_bytes.unwrap() <= 96 << 20, "{v:?}");
        }
        Mechanism::Rlimit => {
            // RLIMIT_AS: allocation fails inside the program.
            assert_eq!(v.status, Status::RuntimeError, "{v:?}");
            assert!(v.stderr.contains("MemoryError"), "{v:?}");
        }
        m => panic!("memory limit not enforced: {m:?}"),
    }
}

fn cpu_spin_hits_cpu_limit() {
    let sb = sandbox(|c| {
        c.cpu_ms = 300;
        c.wall_ms = 60_000;
    });
    let v = sh_in(&sb, "while :; do :; done");
    assert_eq!(v.status, Status::Timeout, "{v:?}");
    assert!(
        v.message.contains("CPU"),
        "must be the CPU limit, not the wall clock: {v:?}"
    );
}

fn sleep_past_wall_clock_is_killed() {
    let sb = sandbox(|c| c.wall_ms = 300);
    let v = sh_in(&sb, "sleep 30; echo woke");
    assert_eq!(v.status, Status::Timeout, "{v:?}");
    assert!(v.killed);
    assert!(v.message.contains("wall clock"), "{v:?}");
    assert!(!v.stdout.contains("woke"));
    assert_eq!(v.limits.wall_ms.mechanism, Mechanism::Supervisor);
}

/// Host processes whose command line contains `marker`.
fn host_procs_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(marker) {
                found.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn grandchild_that_outlives_its_parent_is_killed() {
    let marker = format!("1{}.25", std::process::id());
    // Detached grandchild, parent exits 0 at once.
    let v = sh(&format!("(sleep {marker} &) ; echo started"));
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.stdout, "started\n");
    let left = host_procs_with(&format!("sleep {marker}"));
    assert!(left.is_empty(), "grandchild survived: {left:?}");

    // Same on timeout: the whole tree goes, not just the direct child.
    let marker2 = format!("2{}.5", std::process::id());
    let sb = sandbox(|c| c.wall_ms = 300);
    let v = sh_in(&sb, &format!("sleep {marker2} & sleep {marker2}"));
    assert_eq!(v.status, Status::Timeout, "{v:?}");
    let left = host_procs_with(&format!("sleep {marker2}"));
    assert!(left.is_empty(), "tree survived the timeout: {left:?}");
}

fn output_flood_is_capped() {
    let sb = sandbox(|c| c.output_bytes = 64 << 10);
    let v = sh_in(&sb, "yes flood");
    assert_eq!(v.status, Status::OutputLimit, "{v:?}");
    assert!(v.stdout_truncated);
    assert_eq!(v.stdout.len(), 64 << 10);
    let v = sh_in(&sb, "yes flood >&2");
    assert_eq!(v.status, Status::OutputLimit);
    assert!(v.stderr_truncated);
}

fn no_network_of_any_kind() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    tcp.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.sock");
    let _unix = UnixListener::bind(&path).unwrap();
    let abs_name = format!("peagen-test-{}", std::process::id());
    let abs = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abs_name).unwrap()).unwrap();
    abs.set_nonblocking(true).unwrap();

    let src = format!(
        r#"
import socket, errno
def t(name, f):
    try:
        f(); print(name, "OK")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
def tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(2); s.connect((host, port))
def tcp6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(2); s.connect(("::1", {port}))
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("8.8.8.8", 53))
def vsock():
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); s.settimeout(2); s.connect((2, 1024))
def netlink():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); s.bind((0, 0))
def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
def unix_path():
    s = socket.socket(socket.AF_UNIX); s.connect("{path}")
def unix_abstract():
    s = socket.socket(socket.AF_UNIX); s.connect("\0{abs_name}")
t("tcp_host_loopback", lambda: tcp("127.0.0.1", {port}))
t("tcp_internet", lambda: tcp("1.1.1.1", 443))
t("tcp6", tcp6)
t("udp", udp)
t("vsock", vsock)
t("netlink", netlink)
t("packet", packet)
t("unix_path", unix_path)
t("unix_abstract", unix_abstract)
"#,
        path = path.display()
    );
    let v = py(&src);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let res: BTreeMap<&str, &str> = v.stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(res.len(), 9, "{v:?}");
    for (name, r) in &res {
        assert_ne!(*r, "OK", "{name} reached something: {v:?}");
    }
    // vsock and netlink are not (fully) namespaced: seccomp must refuse the
    // socket itself.
    assert_eq!(res["vsock"], "EAFNOSUPPORT", "{v:?}");
    assert_eq!(res["netlink"], "EAFNOSUPPORT", "{v:?}");
    assert_eq!(res["tcp_internet"], "EAFNOSUPPORT", "{v:?}");
    assert!(tcp.accept().is_err(), "host listener got a connection");
    assert!(abs.accept().is_err(), "abstract listener got a connection");
}

fn host_secrets_are_unreadable() {
    let v = sh(
        "cat /etc/shadow; echo rc=$?; ls /root; echo rc=$?; ls /home; echo rc=$?; \
         cat /proc/1/environ; echo rc=$?; ls /sys; echo rc=$?",
    );
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert!(!v.stdout.contains("rc=0"), "{v:?}");
    assert!(!v.stdout.contains("root:"), "{v:?}");
    // Even with /etc bound in, the mapped uid has no access to shadow.
    if Path::new("/etc/shadow").exists() {
        let sb = sandbox(|c| c.ro_binds.push("/etc".into()));
        let v = sh_in(
            &sb,
            "test -e /etc/shadow && echo present; cat /etc/shadow; echo rc=$?",
        );
        assert!(v.stdout.contains("present"), "{v:?}");
        assert!(v.stdout.contains("rc=1"), "{v:?}");
        assert!(v.stderr.contains("Permission denied"), "{v:?}");
    }
}

fn writes_outside_the_work_dir_fail() {
    let v = sh("for p in /x /usr/x /etc/x /dev/x /proc/x /bin/x; do \
           touch $p 2>/dev/null && echo wrote $p; done; \
         mkdir /newdir 2>/dev/null && echo made dir; \
         echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo sysctl; \
         touch /work/ok && echo work-ok; touch /tmp/ok2 && echo tmp-ok; \
         echo x > /dev/null && echo devnull-ok");
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.stdout, "work-ok\ntmp-ok\ndevnull-ok\n", "{v:?}");
}

fn file_size_and_tmpfs_limits() {
    let sb = sandbox(|c| {
        c.file_size_bytes = 1 << 20;
        c.tmpfs_bytes = 4 << 20;
    });
    let v = sh_in(&sb, "exec head -c 2000000 /dev/zero > /work/big");
    assert_eq!(v.status, Status::Signal, "{v:?}");
    assert_eq!(v.signal, Some(libc::SIGXFSZ));
    let v = sh_in(
        &sb,
        "for i in 1 2 3 4 5 6; do head -c 1000000 /dev/zero > /work/f$i || exit 9; done",
    );
    assert_eq!(v.exit_code, Some(9), "tmpfs size not enforced: {v:?}");
}

/// Run a ctypes syscall probe; prints `name errno` lines.
fn ctypes_probe(body: &str) -> BTreeMap<String, String> {
    let src = format!(
        "import ctypes, errno, os\nlibc = ctypes.CDLL(None, use_errno=True)\n\
         def r(name, ret):\n    e = ctypes.get_errno() if ret == -1 else 0\n    \
         print(name, errno.errorcode.get(e, 'OK') if ret == -1 else 'OK')\n{body}"
    );
    let v = py(&src);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    v.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn mounting_is_denied() {
    let r = ctypes_probe(
        "r('mount', libc.mount(b'none', b'/work', b'tmpfs', 0, None))\n\
         r('umount', libc.umount2(b'/proc', 2))\n\
         r('pivot_root', libc.syscall(155, b'/work', b'/work'))\n\
         r('fsopen', libc.syscall(430, b'tmpfs', 0))\n\
         r('open_tree', libc.syscall(428, -100, b'/usr', 1))\n\
         r('chroot', libc.chroot(b'/work'))",
    );
    for (k, v) in &r {
        assert_eq!(v, "EPERM", "{k}: {r:?}");
    }
    let v = sh("mount -t tmpfs none /work 2>&1; echo rc=$?");
    assert!(!v.stdout.contains("rc=0"), "{v:?}");
}

fn ptrace_is_denied() {
    let host_pid = std::process::id();
    let r = ctypes_probe(&format!(
        "r('attach_reaper', libc.ptrace(16, 1, 0, 0))\n\
         r('traceme', libc.ptrace(0, 0, 0, 0))\n\
         r('seize_parent', libc.ptrace(0x4206, os.getppid(), 0, 0))\n\
         r('kill_worker', libc.kill({host_pid}, 0))\n\
         r('process_vm_readv', libc.syscall(310, 1, 0, 0, 0, 0, 0))"
    ));
    assert_eq!(r["attach_reaper"], "EPERM", "{r:?}");
    assert_eq!(r["traceme"], "EPERM", "{r:?}");
    assert_eq!(r["seize_parent"], "EPERM", "{r:?}");
    assert_eq!(r["process_vm_readv"], "EPERM", "{r:?}");
    assert_ne!(r["kill_worker"], "OK", "worker pid visible: {r:?}");
}

/// The reaper (PID 1 of the task's pid namespace) shares the worker's
/// memory on x86_64: the task must not see it, read anything of it or
/// disturb it with signals. No pause after the signals is needed: signals
/// are queued when `kill` returns, and the reaper handles its pending
/// signals before it can reap the shell and report an `Ok` verdict; had one
/// killed it, the kernel would have killed the whole task with it.
fn the_reaper_is_out_of_reach() {
    let v = sh("ls /proc | grep -qx 1 && echo listed; \
         for f in environ cmdline maps mem status stat; do \
           cat /proc/1/$f >/dev/null 2>&1 && echo read $f; done; \
         ls /proc/1/fd >/dev/null 2>&1 && echo fds; \
         for s in TERM INT HUP USR1 USR2 CHLD PIPE; do kill -$s 1 2>/dev/null; done; \
         echo alive");
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.stdout, "alive\n", "{v:?}");
}

fn new_namespaces_are_denied() {
    let r = ctypes_probe(
        "r('unshare_user', libc.unshare(0x10000000))\n\
         r('unshare_net', libc.unshare(0x40000000))\n\
         r('unshare_mnt', libc.unshare(0x00020000))\n\
         r('clone_newuser', libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0))\n\
         r('clone3', libc.syscall(435, 0, 0))\n\
         r('setns', libc.setns(0, 0))",
    );
    assert_eq!(r["unshare_user"], "EPERM", "{r:?}");
    assert_eq!(r["unshare_net"], "EPERM", "{r:?}");
    assert_eq!(r["unshare_mnt"], "EPERM", "{r:?}");
    assert_eq!(r["clone_newuser"], "EPERM", "{r:?}");
    assert_eq!(r["clone3"], "ENOSYS", "{r:?}");
    assert_eq!(r["setns"], "EPERM", "{r:?}");
    let v = sh("unshare -U -r true; echo rc=$?");
    assert!(!v.stdout.contains("rc=0"), "{v:?}");
}

fn no_capabilities_and_setuid_gains_nothing() {
    let v = sh("grep -E '^(Uid|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status");
    for l in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(v.stdout.contains(l), "missing {l:?}: {v:?}");
    }
    // A setuid-root program (the host's su) runs without any privilege.
    let su = Path::new("/usr/bin/su");
    assert!(su.exists());
    let v = sh("/usr/bin/su -c 'echo PWNED' root </dev/null; echo rc=$?");
    assert!(!v.stdout.contains("PWNED"), "{v:?}");
    // A setuid helper that reports its own credentials.
    let dir = tempfile::Builder::new()
        .prefix("peagen-suid")
        .tempdir_in("/var/tmp")
        .unwrap();
    let c = dir.path().join("creds.c");
    std::fs::write(
        &c,
        "#include <stdio.h>\n#include <unistd.h>\nint main(){FILE*f=fopen(\"/proc/self/status\",\"r\");\
         char l[256];printf(\"euid=%d\\n\",(int)geteuid());while(fgets(l,256,f))\
         if(l[0]=='C'&&l[3]=='E')fputs(l,stdout);return 0;}\n",
    )
    .unwrap();
    let bin = dir.path().join("creds");
    let ok = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&bin)
        .arg(&c)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "gcc is needed for this test");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let sb = sandbox(|c| c.ro_binds.push(dir.path().to_path_buf()));
    let v = sb.exec(&Request::new([bin.to_str().unwrap()]));
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert_eq!(v.stdout, "euid=0\nCapEff:\t0000000000000000\n", "{v:?}");
}

fn leaked_descriptors_are_closed() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let f = std::fs::File::open("/etc/hostname").unwrap();
    // A copy without O_CLOEXEC, as a careless library would leave one, on
    // whatever number >= 100 is free: a fixed number (dup2) could replace a
    // descriptor another test thread is using.
    // SAFETY: F_DUPFD of a descriptor we own; it returns a new descriptor or -1.
    let raw = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, 100) };
    assert!(raw >= 100, "F_DUPFD: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nothing else owns; closed on drop.
    let leak = unsafe { OwnedFd::from_raw_fd(raw) };
    let v = sh(&format!(
        "ls /proc/$$/fd; test -e /proc/$$/fd/{raw} && echo LEAK; true"
    ));
    drop(leak);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert!(!v.stdout.contains("LEAK"), "{v:?}");
    let fds: Vec<&str> = v.stdout.lines().collect();
    assert!(
        fds.iter().all(|f| ["0", "1", "2", "3", "10"].contains(f)),
        "{v:?}"
    );
}

fn tiocsti_is_denied() {
    let r = ctypes_probe(
        "import fcntl, termios\n\
         try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('tiocsti OK')\n\
         except OSError as e: print('tiocsti', errno.errorcode[e.errno])\n\
         r('setsid_again', libc.setsid())\n\
         try:\n    open('/dev/tty'); print('devtty OK')\n\
         except OSError as e: print('devtty', errno.errorcode[e.errno])",
    );
    assert_eq!(r["tiocsti"], "EPERM", "{r:?}");
    // Already a session leader (setsid before exec) -> EPERM.
    assert_eq!(r["setsid_again"], "EPERM", "{r:?}");
    assert_ne!(r["devtty"], "OK", "{r:?}");
}

fn cgroup_namespace_hides_host_paths() {
    let v = sh("cat /proc/self/cgroup");
    assert_eq!(v.status, Status::Ok);
    for l in v.stdout.lines() {
        let path = l.splitn(3, ':').nth(2).unwrap_or("");
        assert!(
            path == "/" || !path.contains("peagen"),
            "host cgroup path visible: {l}"
        );
    }
}

fn limits_report_is_honest() {
    let v = sh("true");
    let l = &v.limits;
    assert_eq!(l.file_size_bytes.mechanism, Mechanism::Rlimit);
    assert_eq!(l.tmpfs_bytes.mechanism, Mechanism::Tmpfs);
    let own_cg = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if !is_root() && !own_cg.lines().any(|l| l.ends_with("/worker")) {
        // Unprivileged without a delegated cgroup: rlimits only.
        assert_eq!(l.memory_bytes.mechanism, Mechanism::Rlimit, "{v:?}");
        assert_eq!(l.pids.mechanism, Mechanism::Rlimit, "{v:?}");
    }
    if l.memory_bytes.mechanism == Mechanism::CgroupV1 {
        assert_eq!(v.peak_memory_source, "cgroup_v1");
    }
    // Per-task requests are clamped to the config.
    let sb = sandbox(|c| c.memory_bytes = 256 << 20);
    let mut req = Request::new(["/bin/true"]);
    req.limits = LimitRequest {
        memory_bytes: Some(1 << 40),
        ..Default::default()
    };
    assert_eq!(sb.exec(&req).limits.memory_bytes.value, 256 << 20);
}

fn parallel_runs_do_not_interfere() {
    let sb = sandbox(|_| {});
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let sb = sb.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    let v = sh_in(&sb, &format!("echo {i}-{j}"));
                    assert_eq!(v.status, Status::Ok, "{v:?}");
                    assert_eq!(v.stdout, format!("{i}-{j}\n"));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// Two concurrent tasks cannot talk over abstract unix sockets, whether
/// they share the pre-made empty netns (landlock scoping) or not.
fn concurrent_tasks_cannot_connect_to_each_other() {
    let name = format!("peagen-peer-{}", std::process::id());
    let sb = sandbox(|c| c.wall_ms = 4_000);
    let a = {
        let sb = sb.clone();
        let src = format!(
            "import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind('\\0{name}')\n\
             s.listen(5)\ns.settimeout(3.5)\ntry:\n    s.accept(); print('accepted')\n\
             except OSError: print('no-connection')\n"
        );
        std::thread::spawn(move || sb.exec(&Request::new(["/usr/bin/python3", "-c", &src])))
    };
    let src = format!(
        "import socket, time, errno\nfor i in range(70):\n    s = socket.socket(socket.AF_UNIX)\n    \
         try:\n        s.bind('\\0{name}')\n        s.close(); time.sleep(0.05); continue\n    \
         except OSError as e:\n        if e.errno != errno.EADDRINUSE: raise\n    \
         c = socket.socket(socket.AF_UNIX)\n    try:\n        c.connect('\\0{name}'); print('connect OK')\n    \
         except OSError as e:\n        print('connect', errno.errorcode[e.errno])\n    break\n\
         else:\n    print('no-peer')\n"
    );
    let b = sb.exec(&Request::new(["/usr/bin/python3", "-c", &src]));
    let a = a.join().unwrap();
    assert_eq!(b.status, Status::Ok, "{b:?}");
    assert!(!a.stdout.contains("accepted"), "{a:?}");
    let shared = b.isolation.namespaces.iter().any(|n| n.contains("shared"));
    if shared {
        // Same abstract namespace (bind collides), but landlock's scope
        // refuses the connection.
        assert_eq!(b.stdout, "connect EPERM\n", "{b:?}");
    } else {
        assert_eq!(b.stdout, "no-peer\n", "{b:?}");
    }
}

/// Task cgroups are pooled per `Sandbox`: a reused one still reports each
/// task's own OOM, peak memory and CPU, and takes the task's own limit.
fn reused_cgroups_report_per_task_results() {
    let sb = sandbox(|c| c.memory_bytes = 96 << 20);
    let bomb = Request::new([
        "/usr/bin/python3",
        "-c",
        "b=[]\nwhile True: b.append(b'x' * (8 << 20))",
    ]);
    for _ in 0..2 {
        let v = sb.exec(&bomb);
        assert_ne!(v.status, Status::Ok, "{v:?}");
        let v = sb.exec(&Request::new(["/bin/true"]));
        assert_eq!(v.status, Status::Ok, "{v:?}");
        assert!(!v.oom_killed, "{v:?}");
        if v.peak_memory_source == "cgroup_v1" {
            assert!(v.peak_memory_bytes.unwrap() < 16 << 20, "{v:?}");
            assert!(v.cpu_ms < 1000.0, "{v:?}");
        }
    }
    // A lower per-task limit on a reused cgroup, then the full one again.
    let mut low = Request::new(["/usr/bin/python3", "-c", "b=b'x'*(40<<20); print(len(b))"]);
    low.limits.memory_bytes = Some(24 << 20);
    let v = sb.exec(&low);
    assert_ne!(v.status, Status::Ok, "{v:?}");
    low.limits.memory_bytes = None;
    let v = sb.exec(&low);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    assert!(!v.oom_killed, "{v:?}");
    if v.peak_memory_source == "cgroup_v1" {
        assert!(v.peak_memory_bytes.unwrap() >= 40 << 20, "{v:?}");
    }
}

/// Each test above, once per mode: `cold::NAME` and `warm::NAME`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod cold {
            $( #[test] fn $name() { super::in_mode(false, super::$name) } )*
        }
        mod warm {
            $( #[test] fn $name() { super::in_mode(true, super::$name) } )*
        }
    };
}

both_modes!(
    ok_and_exit_codes_and_output,
    stdin_files_and_env_from_scratch,
    kill_segv_is_reported_as_signal,
    fork_bomb_is_capped_by_pids_limit,
    memory_bomb_is_contained,
    a_task_at_its_memory_limit_never_takes_the_worker_down,
    cpu_spin_hits_cpu_limit,
    sleep_past_wall_clock_is_killed,
    grandchild_that_outlives_its_parent_is_killed,
    output_flood_is_capped,
    no_network_of_any_kind,
    host_secrets_are_unreadable,
    writes_outside_the_work_dir_fail,
    file_size_and_tmpfs_limits,
    mounting_is_denied,
    ptrace_is_denied,
    the_reaper_is_out_of_reach,
    new_namespaces_are_denied,
    no_capabilities_and_setuid_gains_nothing,
    leaked_descriptors_are_closed,
    tiocsti_is_denied,
    cgroup_namespace_hides_host_paths,
    limits_report_is_honest,
    parallel_runs_do_not_interfere,
    concurrent_tasks_cannot_connect_to_each_other,
    reused_cgroups_report_per_task_results,
);
