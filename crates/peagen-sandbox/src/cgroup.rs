//! cgroup limits for a task: v2 when the controller is available in a
//! delegated v2 subtree, v1 otherwise (hybrid hosts), nothing when neither is
//! writable (then the child falls back to rlimits; the verdict says so).
//!
//! Each task gets its own cgroup per hierarchy, created before the clone
//! and joined before the child unshares its cgroup namespace, then removed
//! (or pooled) after the task. v1 cgroups are joined by the child itself,
//! writing "0" to `tasks` through a descriptor the worker opened: moving a
//! single thread that way skips the global lock that a `cgroup.procs` write
//! takes (`cgroup_threadgroup_rwsem`, whose write side waits for an RCU
//! grace period: 0.18-0.28 ms per task measured here, the largest single
//! start-up cost). v2 cgroups are joined by the parent (`cgroup.procs`).
//!
//! Creating and removing a memory cgroup costs more than the rest of a
//! short task's start-up, so v1 task cgroups are pooled per [`Backends`]
//! (per `Sandbox`): after a task they are kept, and the next task reuses one
//! only once it is provably empty (`cgroup.procs` empty in every hierarchy)
//! and holds little leftover charge; limits are rewritten when they differ,
//! the peak and CPU counters are reset and the OOM-kill counter is read as a
//! baseline, so the verdict is the same as with a fresh cgroup. The pool's
//! cgroups are removed when the `Sandbox` is dropped. v2 cgroups are not
//! pooled (`memory.peak` cannot be reset for other readers).

use super::Mechanism;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ver {
    V1,
    V2,
}

#[derive(Debug, Clone)]
struct Ctl {
    ver: Ver,
    /// Directory under which task cgroups are created.
    parent: PathBuf,
}

/// Where memory, pids and CPU accounting live on this host.
#[derive(Debug, Default)]
pub struct Backends {
    memory: Option<Ctl>,
    pids: Option<Ctl>,
    cpu: Option<Ctl>,
    /// Idle task cgroups kept for reuse (v1 only).
    pool: std::sync::Mutex<Vec<TaskCgroups>>,
}

/// Idle cgroups kept per sandbox (enough for a few tasks in parallel).
const POOL_MAX: usize = 8;
/// A pooled memory cgroup still charged with more than this (page cache
/// left by earlier tasks) is replaced by a fresh one, so the peak reported
/// for a task is not inflated by its predecessors.
const POOL_MAX_LEFTOVER: u64 = 2 << 20;

impl Drop for Backends {
    fn drop(&mut self) {
        let pool = std::mem::take(self.pool.get_mut().unwrap_or_else(|e| e.into_inner()));
        for t in pool {
            t.destroy();
        }
    }
}

fn mountinfo() -> (Option<PathBuf>, Vec<(String, PathBuf)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return (None, v1);
    };
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mnt = pre.split(' ').nth(4).unwrap_or("");
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let _src = post.next();
        let opts = post.next().unwrap_or("");
        match fstype {
            "cgroup2" => v2 = Some(PathBuf::from(mnt)),
            "cgroup" => {
                for o in opts.split(',') {
                    if matches!(o, "memory" | "pids" | "cpuacct") {
                        v1.push((o.to_string(), PathBuf::from(mnt)));
                    }
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

fn own_v2_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

fn writable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

impl Backends {
    /// `parent`: the configured `cgroup-parent` (v2 path below the cgroup2
    /// mount, or the v1 directory name under each controller). Empty = v2:
    /// the parent of our own cgroup if that is named `worker` (systemd's
    /// `DelegateSubgroup=worker`); v1: `peagen`.
    pub fn detect(parent: &str) -> Backends {
        let (v2mount, v1) = mountinfo();
        let mut b = Backends::default();

        if let Some(m) = v2mount {
            let rel = if !parent.is_empty() {
                Some(parent.trim_matches('/').to_string())
            } else {
                own_v2_cgroup().and_then(|own| {
                    let own = own.trim_matches('/');
                    let (dir, base) = own.rsplit_once('/').unwrap_or(("", own));
                    (base == "worker").then(|| dir.to_string())
                })
            };
            if let Some(rel) = rel {
                let p = m.join(rel);
                if writable(&p) {
                    let want = |c: &str| -> bool {
                        let has = |f: &str| {
                            fs::read_to_string(p.join(f))
                                .map(|s| s.split_whitespace().any(|w| w == c))
                                .unwrap_or(false)
                        };
                        if has("cgroup.subtree_control") {
                            return true;
                        }
                        has("cgroup.controllers")
                            && fs::write(p.join("cgroup.subtree_control"), format!("+{c}")).is_ok()
                    };
                    let ctl = Ctl {
                        ver: Ver::V2,
                        parent: p.clone(),
                    };
                    if want("memory") {
                        b.memory = Some(ctl.clone());
                    }
                    if want("pids") {
                        b.pids = Some(ctl.clone());
                    }
                    // cpu.stat usage exists in every v2 cgroup.
                    if b.memory.is_some() || b.pids.is_some() {
                        b.cpu = Some(ctl);
                    }
                }
            }
        }

        let v1name = if parent.is_empty() {
            "peagen"
        } else {
            parent.trim_matches('/')
        };
        for (c, m) in v1 {
            let slot = match c.as_str() {
                "memory" => &mut b.memory,
                "pids" => &mut b.pids,
                _ => &mut b.cpu,
            };
            if slot.is_some() {
                continue;
            }
            let p = m.join(v1name);
            let _ = fs::create_dir_all(&p);
            if p.is_dir() && writable(&p) {
                *slot = Some(Ctl {
                    ver: Ver::V1,
                    parent: p,
                });
            }
        }
        b
    }
}

fn mech(c: &Option<(Ver, PathBuf)>) -> Mechanism {
    match c {
        Some((Ver::V1, _)) => Mechanism::CgroupV1,
        Some((Ver::V2, _)) => Mechanism::CgroupV2,
        None => Mechanism::None,
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);
/// Task cgroups whose removal hit EBUSY, retried after later tasks.
static PENDING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The cgroups of one task.
#[derive(Debug, Default)]
pub struct TaskCgroups {
    memory: Option<(Ver, PathBuf)>,
    pids: Option<(Ver, PathBuf)>,
    cpu: Option<(Ver, PathBuf)>,
    /// (memory, pids) limits as written.
    limits: (u64, u64),
    /// `oom_kill` count when this task got the cgroup (reused cgroups).
    oom_base: u64,
    /// v2 CPU usage (ns) when this task got the cgroup (cannot be reset).
    cpu_base: u64,
    /// Open `tasks` files of the v1 cgroups (kept while pooled).
    join: Vec<(PathBuf, OwnedFd)>,
    files: Files,
    /// v1 memory cgroup with the OOM killer disabled: this eventfd fires
    /// when the task hits the limit, and the supervisor kills the task.
    oom_event: Option<fs::File>,
}

/// Open control files of a task's cgroups, kept with them (a pooled set
/// serves many tasks): opening a cgroupfs file costs a path walk, a kernfs
/// open and a deferred close, a dozen times per task otherwise.
#[derive(Debug, Default)]
struct Files(Vec<(PathBuf, fs::File)>);

impl Files {
    fn get(&mut self, dir: &Path, name: &str) -> Option<&fs::File> {
        let p = dir.join(name);
        let i = match self.0.iter().position(|(q, _)| *q == p) {
            Some(i) => i,
            None => {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .or_else(|_| fs::File::open(&p))
                    .ok()?;
                self.0.push((p, f));
                self.0.len() - 1
            }
        };
        Some(&self.0[i].1)
    }

    /// The whole file (cgroupfs regenerates it on a read from offset 0).
    fn read(&mut self, dir: &Path, name: &str) -> Option<String> {
        let f = self.get(dir, name)?;
        let mut buf = vec![0u8; 256];
        let mut n = 0;
        loop {
            let r = f.read_at(&mut buf[n..], n as u64).ok()?;
            if r == 0 {
                break;
            }
            n += r;
            if n == buf.len() {
                buf.resize(2 * n, 0);
            }
        }
        buf.truncate(n);
        String::from_utf8(buf).ok()
    }

    fn write(&mut self, dir: &Path, name: &str, v: &str) -> bool {
        self.get(dir, name)
            .is_some_and(|f| f.write_at(v.as_bytes(), 0).is_ok_and(|n| n == v.len()))
    }

    fn u64(&mut self, dir: &Path, name: &str) -> Option<u64> {
        self.read(dir, name)?.trim().parse().ok()
    }

    /// The value of `key` in a "key value" per line file.
    fn keyed(&mut self, dir: &Path, name: &str, key: &str) -> Option<u64> {
        self.read(dir, name)?.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }

    fn drop_dir(&mut self, dir: &Path) {
        self.0.retain(|(q, _)| !q.starts_with(dir));
    }
}

/// Limit bits: which limits a cgroup directory carries.
pub const MEMORY: u8 = 1;
pub const PIDS: u8 = 2;
pub const CPU: u8 = 4;

fn create(ctl: &Option<Ctl>, name: &str) -> Option<(Ver, PathBuf)> {
    let ctl = ctl.as_ref()?;
    let p = ctl.parent.join(name);
    match fs::create_dir(&p) {
        Ok(()) => Some((ctl.ver, p)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some((ctl.ver, p)),
        Err(_) => None,
    }
}

impl TaskCgroups {
    /// The task's cgroups with the limits written: an idle pooled set when
    /// one is reusable, else fresh ones. A controller whose limit cannot be
    /// written is dropped (and so not claimed).
    pub fn create(b: &Backends, memory: u64, pids: u64) -> TaskCgroups {
        loop {
            let idle = {
                let mut pool = b.pool.lock().unwrap_or_else(|e| e.into_inner());
                let i = pool.iter_mut().position(TaskCgroups::is_empty);
                i.map(|i| pool.swap_remove(i))
            };
            let Some(mut t) = idle else { break };
            if t.reuse(memory, pids) {
                return t;
            }
            t.destroy();
        }
        TaskCgroups::fresh(b, memory, pids)
    }

    /// No process in any of the cgroups (every task of the previous user has
    /// been released by the kernel).
    fn is_empty(&mut self) -> bool {
        let dirs: Vec<PathBuf> = self.dirs().into_iter().cloned().collect();
        dirs.iter().all(|p| {
            self.files
                .read(p, "cgroup.procs")
                .is_some_and(|s| s.trim().is_empty())
        })
    }

    /// Make an idle pooled set ready for a task: limits, counters reset.
    /// False when it cannot be reused (the caller destroys it).
    fn reuse(&mut self, memory: u64, pids: u64) -> bool {
        if let Some((_, p)) = &self.memory {
            if self
                .files
                .u64(p, "memory.usage_in_bytes")
                .is_none_or(|u| u > POOL_MAX_LEFTOVER)
            {
                return false;
            }
        }
        self.retarget(memory, pids)
    }

    /// Start a new task in these cgroups: limits rewritten when they
    /// differ, peak and CPU counters reset (or, where they cannot be, read
    /// as a baseline), the OOM-kill count taken as a baseline. For a pooled
    /// set and for one that already holds the warm mode's prepared child
    /// (whose own few pages then count towards the task's). False when a
    /// limit or counter cannot be written (the caller replaces the set).
    pub fn retarget(&mut self, memory: u64, pids: u64) -> bool {
        let files = &mut self.files;
        if let Some((Ver::V1, p)) = &self.memory {
            if self.limits.0 != memory {
                let m = memory.to_string();
                // Order matters: memsw must stay >= the memory limit.
                let ok = if memory > self.limits.0 {
                    let _ = files.write(p, "memory.memsw.limit_in_bytes", &m);
                    files.write(p, "memory.limit_in_bytes", &m)
                } else {
                    let ok = files.write(p, "memory.limit_in_bytes", &m);
                    let _ = files.write(p, "memory.memsw.limit_in_bytes", &m);
                    ok
                };
                if !ok {
                    return false;
                }
                self.limits.0 = memory;
            }
            if !files.write(p, "memory.max_usage_in_bytes", "0") {
                return false;
            }
            let _ = files.write(p, "memory.memsw.max_usage_in_bytes", "0");
            if self.oom_event.is_some()
                && files.keyed(p, "memory.oom_control", "under_oom") != Some(0)
            {
                return false;
            }
            self.oom_base = files
                .keyed(p, "memory.oom_control", "oom_kill")
                .unwrap_or(0);
        }
        if let Some(efd) = &self.oom_event {
            // A new task, a new count.
            let _ = (&*efd).read(&mut [0u8; 8]);
        }
        if let Some((Ver::V2, p)) = &self.memory {
            if self.limits.0 != memory {
                if !files.write(p, "memory.max", &memory.to_string()) {
                    return false;
                }
                self.limits.0 = memory;
            }
            self.oom_base = files.keyed(p, "memory.events", "oom_kill").unwrap_or(0);
        }
        if let Some((_, p)) = &self.pids {
            if self.limits.1 != pids {
                if !files.write(p, "pids.max", &pids.to_string()) {
                    return false;
                }
                self.limits.1 = pids;
            }
        }
        match &self.cpu {
            Some((Ver::V1, p)) => files.write(p, "cpuacct.usage", "0"),
            Some((Ver::V2, _)) => {
                self.cpu_base = 0;
                self.cpu_base = self.cpu_ns().unwrap_or(0);
                true
            }
            None => true,
        }
    }

    fn fresh(b: &Backends, memory: u64, pids: u64) -> TaskCgroups {
        let name = format!(
            "t{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut t = TaskCgroups {
            memory: create(&b.memory, &name),
            pids: None,
            cpu: None,
            limits: (memory, pids),
            oom_base: 0,
            cpu_base: 0,
            join: Vec::new(),
            files: Files::default(),
            oom_event: None,
        };
        // v2 controllers share one directory.
        t.pids = match (&b.pids, &t.memory) {
            (Some(c), Some((Ver::V2, p))) if c.ver == Ver::V2 => Some((Ver::V2, p.clone())),
            _ => create(&b.pids, &name),
        };
        t.cpu = match &b.cpu {
            Some(c) if c.ver == Ver::V2 => t
                .memory
                .iter()
                .chain(t.pids.iter())
                .find(|(v, _)| *v == Ver::V2)
                .cloned()
                .or_else(|| create(&b.cpu, &name)),
            _ => create(&b.cpu, &name),
        };

        let m = memory.to_string();
        if let Some((v, p)) = &t.memory {
            let f = &mut t.files;
            let ok = match v {
                Ver::V2 => {
                    let _ = f.write(p, "memory.swap.max", "0");
                    f.write(p, "memory.max", &m)
                }
                Ver::V1 => {
                    let ok = f.write(p, "memory.limit_in_bytes", &m);
                    // Swap must not extend the limit (absent without swap accounting).
                    let _ = f.write(p, "memory.memsw.limit_in_bytes", &m);
                    ok
                }
            };
            if !ok {
                t.forget(MEMORY);
            } else if *v == Ver::V1 {
                t.guard_oom();
            }
        }
        if let Some((_, p)) = &t.pids {
            if !t.files.write(p, "pids.max", &pids.to_string()) {
                t.forget(PIDS);
            }
        }
        t
    }

    fn in_use(&self, p: &Path) -> bool {
        [&self.memory, &self.pids, &self.cpu]
            .iter()
            .any(|c| c.as_ref().is_some_and(|(_, q)| q == p))
    }

    fn dirs(&self) -> Vec<&PathBuf> {
        let mut v: Vec<&PathBuf> = Vec::new();
        for (_, p) in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    /// Turn the kernel's OOM killer off in the v1 memory cgroup and ask for
    /// an eventfd notification instead: the supervisor then kills the whole
    /// task (through its pidfd). Why: the reaper is in this cgroup, and when
    /// it shares the worker's memory the OOM killer would rate it by the
    /// worker's size, pick it, and kill every process sharing that memory:
    /// the worker. Without the guard the reaper gets its own copy.
    fn guard_oom(&mut self) {
        let Some((Ver::V1, p)) = &self.memory else {
            return;
        };
        if !self.files.write(p, "memory.oom_control", "1") {
            return;
        }
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let Ok(efd) = EventFd::from_value_and_flags(0, flags) else {
            return;
        };
        let efd = fs::File::from(OwnedFd::from(efd));
        let Some(ctl) = self.files.get(p, "memory.oom_control") else {
            return;
        };
        let reg = format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd());
        if self.files.write(p, "cgroup.event_control", &reg) {
            self.oom_event = Some(efd);
        }
    }

    /// The eventfd that fires when the task hits its memory limit.
    pub fn oom_event(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.oom_event.as_ref().map(|f| f.as_fd())
    }

    /// The reaper may share the worker's memory: no memory cgroup, or a v1
    /// one whose OOM killer is off ([`TaskCgroups::guard_oom`]). v2 has no
    /// such switch, so there the reaper gets its own copy.
    pub fn shared_vm_safe(&self) -> bool {
        match &self.memory {
            None => true,
            Some((Ver::V1, _)) => self.oom_event.is_some(),
            Some((Ver::V2, _)) => false,
        }
    }

    /// The task hit its memory limit (the kernel killed in it, or, with the
    /// OOM killer off, the limit was reached).
    pub fn oom_hit(&mut self) -> bool {
        let event = self
            .oom_event
            .as_ref()
            .is_some_and(|f| (&*f).read(&mut [0u8; 8]).is_ok());
        event || self.oom_kills() > 0
    }

    /// The distinct directories of one cgroup version, each with the limit
    /// bits it carries (v2 controllers share one directory).
    fn dirs_of(&self, ver: Ver) -> Vec<(PathBuf, u8)> {
        let mut out: Vec<(PathBuf, u8)> = Vec::new();
        for (slot, bit) in [(&self.memory, MEMORY), (&self.pids, PIDS), (&self.cpu, CPU)] {
            let Some((v, p)) = slot else { continue };
            if *v != ver {
                continue;
            }
            match out.iter_mut().find(|(q, _)| q == p) {
                Some((_, b)) => *b |= bit,
                None => out.push((p.clone(), bit)),
            }
        }
        out
    }

    /// For the child to join the v1 cgroups itself: (open `tasks` fd, limit
    /// bits). A directory whose `tasks` cannot be opened is dropped.
    pub fn join_fds(&mut self) -> Vec<(i32, u8)> {
        let mut out = Vec::new();
        let mut lost = 0;
        for (p, bits) in self.dirs_of(Ver::V1) {
            let fd = match self.join.iter().find(|(q, _)| *q == p) {
                Some((_, fd)) => fd.as_raw_fd(),
                None => match fs::OpenOptions::new().write(true).open(p.join("tasks")) {
                    Ok(f) => {
                        let fd = OwnedFd::from(f);
                        let raw = fd.as_raw_fd();
                        self.join.push((p, fd));
                        raw
                    }
                    Err(_) => {
                        lost |= bits;
                        continue;
                    }
                },
            };
            out.push((fd, bits));
        }
        self.forget(lost);
        out
    }

    /// Move `pid` into the v2 task cgroups (the v1 ones are joined by the
    /// child). Returns the limit bits now enforced that way; a directory
    /// that fails to attach is dropped, so it is not reported as enforcing
    /// anything.
    pub fn attach_v2(&mut self, pid: i32) -> u8 {
        let s = pid.to_string();
        let mut ok = 0;
        let mut lost = 0;
        for (p, bits) in self.dirs_of(Ver::V2) {
            if fs::write(p.join("cgroup.procs"), &s).is_ok() {
                ok |= bits;
            } else {
                lost |= bits;
            }
        }
        self.forget(lost);
        ok
    }

    /// Move the (single-threaded) process `pid` into every task cgroup, v1
    /// through the open `tasks` files, v2 through `cgroup.procs` (the warm
    /// mode's task child, which the supervisor moves itself). Returns the
    /// limit bits now enforced; a cgroup that refused is dropped.
    pub fn attach_pid(&mut self, pid: i32) -> u8 {
        let mut ok = self.attach_v2(pid);
        let s = pid.to_string();
        let mut lost = 0;
        let _ = self.join_fds();
        for (p, bits) in self.dirs_of(Ver::V1) {
            let done = self
                .join
                .iter()
                .find(|(q, _)| *q == p)
                .is_some_and(|(_, fd)| {
                    nix::unistd::write(fd, s.as_bytes()).is_ok_and(|n| n == s.len())
                });
            if done {
                ok |= bits;
            } else {
                lost |= bits;
            }
        }
        self.forget(lost);
        ok
    }

    /// SIGKILL every process in the task cgroups (a few rounds: a process
    /// may fork while we read the list). True when they are empty after.
    pub fn kill_all(&mut self) -> bool {
        let dirs: Vec<PathBuf> = self.dirs().into_iter().cloned().collect();
        for _ in 0..8 {
            let mut any = false;
            for d in &dirs {
                let Some(list) = self.files.read(d, "cgroup.procs") else {
                    continue;
                };
                for pid in list.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    any = true;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            if !any {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Stop claiming the limits in `bits` (their cgroup could not be
    /// joined): the directories go once nothing else uses them.
    pub fn forget(&mut self, bits: u8) {
        if bits & MEMORY != 0 {
            self.oom_event = None;
        }
        let mut gone = Vec::new();
        for (slot, bit) in [
            (&mut self.memory, MEMORY),
            (&mut self.pids, PIDS),
            (&mut self.cpu, CPU),
        ] {
            if bits & bit != 0 {
                if let Some((_, p)) = slot.take() {
                    gone.push(p);
                }
            }
        }
        for p in gone {
            if !self.in_use(&p) {
                self.join.retain(|(q, _)| *q != p);
                self.files.drop_dir(&p);
                let _ = fs::remove_dir(&p);
            }
        }
    }

    pub fn memory_mech(&self) -> Mechanism {
        mech(&self.memory)
    }
    pub fn pids_mech(&self) -> Mechanism {
        mech(&self.pids)
    }
    pub fn cpu_mech(&self) -> Mechanism {
        mech(&self.cpu)
    }

    /// Total CPU time of the task tree in nanoseconds.
    pub fn cpu_ns(&mut self) -> Option<u64> {
        let (v, p) = self.cpu.as_ref()?;
        match v {
            Ver::V1 => self.files.u64(p, "cpuacct.usage"),
            Ver::V2 => self
                .files
                .keyed(p, "cpu.stat", "usage_usec")
                .map(|u| (u * 1000).saturating_sub(self.cpu_base)),
        }
    }

    pub fn peak_memory(&mut self) -> Option<u64> {
        let (v, p) = self.memory.as_ref()?;
        match v {
            Ver::V1 => self.files.u64(p, "memory.max_usage_in_bytes"),
            Ver::V2 => self.files.u64(p, "memory.peak"),
        }
    }

    pub fn oom_kills(&mut self) -> u64 {
        let Some((v, p)) = self.memory.as_ref() else {
            return 0;
        };
        let n = match v {
            Ver::V1 => self.files.keyed(p, "memory.oom_control", "oom_kill"),
            Ver::V2 => self.files.keyed(p, "memory.events", "oom_kill"),
        }
        .unwrap_or(0);
        n.saturating_sub(self.oom_base)
    }

    /// Done with the task: back to the pool when it is a v1-only set and
    /// the pool has room, else removed.
    pub fn remove(self, b: &Backends) {
        let v1_only = [&self.memory, &self.pids, &self.cpu]
            .into_iter()
            .flatten()
            .all(|(v, _)| *v == Ver::V1);
        // Only complete sets: one that lost a controller is not kept.
        let complete = self.memory.is_some() == b.memory.is_some()
            && self.pids.is_some() == b.pids.is_some()
            && self.cpu.is_some() == b.cpu.is_some();
        if v1_only && complete && !self.dirs().is_empty() {
            let mut pool = b.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(self);
                return;
            }
        }
        self.destroy();
    }

    /// Remove the cgroups. All processes are gone once the pid namespace's
    /// init has been reaped, but the kernel may still be finishing their
    /// exit (EBUSY): such directories are retried on later runs instead of
    /// sleeping here.
    fn destroy(mut self) {
        self.join.clear();
        self.oom_event = None;
        self.files.0.clear();
        let mut busy = Vec::new();
        for p in self.dirs() {
            if let Err(e) = fs::remove_dir(p) {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    busy.push(p.clone());
                }
            }
        }
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(
            |p| matches!(fs::remove_dir(p), Err(e) if e.raw_os_error() == Some(libc::EBUSY)),
        );
        pending.extend(busy);
    }
}
