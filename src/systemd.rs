//! systemd client for the spawner: transient `peagen-worker@<uuid>.service`
//! units over D-Bus (system bus, or the user manager in `user-mode`).
//!
//! - [`Systemd::connect`] calls `Subscribe()` on every connect, so signals flow.
//! - [`Systemd::start_worker`] uses systemd-run's race-free pattern: the
//!   `JobRemoved` match is registered before `StartTransientUnit`, then the
//!   returned job path is awaited. Workers are `Type=notify`, so `"done"`
//!   arrives only after the worker sent `READY=1` (exact spawn-to-ready time).
//! - [`Systemd::watch`] turns `JobRemoved`/`UnitNew`/`UnitRemoved` and unit
//!   `PropertiesChanged` signals for worker units into wake-ups; the spawner
//!   re-reads state from [`Systemd::list_workers`] (it keeps no state of its own).
//! - No template unit on disk: a `peagen-worker@.service` fragment would make
//!   every transient instance fail with `UnitExists`. Drop-ins in
//!   `peagen-worker@.service.d/` do apply and are how admins tune workers.

use crate::config::WorkerUnitConfig;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use zbus::{OwnedVariant, Variant};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

/// Unit-name prefix of every worker (`peagen-worker@<uuid>.service`).
pub const UNIT_PREFIX: &str = "peagen-worker@";
pub const UNIT_SUFFIX: &str = ".service";
/// D-Bus object-path prefix of worker units (`-` is `_2d`, `@` is `_40`).
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/peagen_2dworker_40";

/// `CLOCK_MONOTONIC` in microseconds: the clock of systemd's `*Monotonic`
/// unit timestamps, so start-up phases logged by the spawner and the worker
/// line up with systemd's own (scripts/bench-spawner.sh joins them).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

pub fn unit_name(worker_id: &str) -> String {
    format!("{UNIT_PREFIX}{worker_id}{UNIT_SUFFIX}")
}

/// The worker id of a worker unit name, `None` for other units.
pub fn worker_id_of(unit: &str) -> Option<&str> {
    let id = unit.strip_prefix(UNIT_PREFIX)?.strip_suffix(UNIT_SUFFIX)?;
    (!id.is_empty()).then_some(id)
}

/// One worker unit as systemd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    pub unit: String,
    pub worker_id: String,
    /// `active`, `activating`, `deactivating`, `failed`, `inactive`, ...
    pub active_state: String,
    pub sub_state: String,
    /// Type of the job queued for the unit (`start`, `stop`, ...), empty if none.
    pub job_type: String,
}

impl UnitInfo {
    /// The unit still occupies a slot (starting, running or stopping). A
    /// unit just created by StartTransientUnit is `inactive` until systemd
    /// runs its queued start job: on a busy host that can take a while, and
    /// such a unit is not dead (treating it so once re-queued the task its
    /// worker had just taken, and the task ran twice).
    pub fn is_live(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "deactivating" | "reloading" | "refreshing"
        ) || matches!(self.job_type.as_str(), "start" | "restart")
    }
}

/// An address prefix as systemd lists it in `IPAddressAllow=`/`IPAddressDeny=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpPrefix {
    pub addr: std::net::IpAddr,
    pub len: u32,
}

impl IpPrefix {
    /// From the D-Bus form `(family, address bytes, prefix length)`.
    fn from_dbus((family, bytes, len): &(i32, Vec<u8>, u32)) -> Option<Self> {
        let addr = match (*family, bytes.len()) {
            (libc::AF_INET, 4) => std::net::IpAddr::from(<[u8; 4]>::try_from(&bytes[..]).ok()?),
            (libc::AF_INET6, 16) => std::net::IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).ok()?),
            _ => return None,
        };
        Some(IpPrefix { addr, len: *len })
    }

    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        match (self.addr, ip) {
            (V4(p), V4(a)) => prefix_eq(&p.octets(), &a.octets(), self.len),
            (V6(p), V6(a)) => prefix_eq(&p.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(p: &[u8], a: &[u8], len: u32) -> bool {
    let len = (len as usize).min(p.len() * 8);
    let (whole, rest) = (len / 8, len % 8);
    p[..whole] == a[..whole]
        && (rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            p[whole] & mask == a[whole] & mask
        })
}

/// A unit's IP access lists. As in systemd.resource-control(5): an address
/// on the allow list passes, else one on the deny list is dropped, else it passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IpFilter {
    pub allow: Vec<IpPrefix>,
    pub deny: Vec<IpPrefix>,
}

impl IpFilter {
    pub(crate) fn blocks(&self, ip: std::net::IpAddr) -> bool {
        !self.allow.iter().any(|p| p.contains(ip)) && self.deny.iter().any(|p| p.contains(ip))
    }
}

/// How a start job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOutcome {
    pub unit: String,
    pub worker_id: String,
    /// JobRemoved result: `done`, `failed`, `timeout`, `canceled`, `dependency`, ...
    pub result: String,
    /// From the StartTransientUnit call to the job's end (READY=1 for Type=notify).
    pub elapsed: Duration,
    /// [`monotonic_us`] at the StartTransientUnit call.
    pub called_mono_us: u64,
}

impl StartOutcome {
    pub fn ok(&self) -> bool {
        self.result == "done"
    }
}

/// Exit details of a finished worker unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitExit {
    /// Service `Result` (`success`, `exit-code`, `signal`, `timeout`, `watchdog`, ...).
    pub result: String,
    /// `ExecMainCode` (CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3) and `ExecMainStatus`.
    pub code: i32,
    pub status: i32,
}

#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    mgr: ManagerProxy<'static>,
    pub user_mode: bool,
}

impl Systemd {
    /// Connect to the system manager (or the calling user's manager) and `Subscribe()`.
    pub async fn connect(user_mode: bool) -> Result<Self> {
        let conn = if user_mode {
            zbus::Connection::session()
                .await
                .context("connecting to the session bus (user manager)")?
        } else {
            zbus::Connection::system()
                .await
                .context("connecting to the system bus")?
        };
        let mgr = ManagerProxy::new(&conn)
            .await
            .context("creating the systemd1.Manager proxy")?;
        let sd = Systemd {
            conn,
            mgr,
            user_mode,
        };
        sd.subscribe().await?;
        Ok(sd)
    }

    /// The IP filter (`IPAddressAllow=`/`IPAddressDeny=`) of the service unit
    /// that runs `pid`; `None` when `pid` is not in a service unit.
    pub(crate) async fn ip_filter_of_pid(&self, pid: u32) -> Result<Option<IpFilter>> {
        let Ok(path) = self.mgr.get_unit_by_pid(pid).await else {
            return Ok(None);
        };
        let svc = ServiceProxy::builder(&self.conn).path(path).build().await?;
        // Not a service (a scope, say): no such properties.
        let (Ok(allow), Ok(deny)) = (svc.ip_address_allow().await, svc.ip_address_deny().await)
        else {
            return Ok(None);
        };
        Ok(Some(IpFilter {
            allow: allow.iter().filter_map(IpPrefix::from_dbus).collect(),
            deny: deny.iter().filter_map(IpPrefix::from_dbus).collect(),
        }))
    }

    /// `Subscribe()`; `AlreadySubscribed` is fine.
    pub async fn subscribe(&self) -> Result<()> {
        match self.mgr.subscribe().await {
            Ok(()) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str().ends_with("AlreadySubscribed") =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("systemd Subscribe()"),
        }
    }

    /// Cheap liveness probe of the manager connection.
    pub async fn ping(&self) -> Result<String> {
        self.mgr.version().await.context("reading systemd Version")
    }

    /// Start `peagen-worker@<worker_id>.service` and wait for its start job.
    /// `job_timeout` bounds the wait (the unit keeps starting if it elapses).
    pub async fn start_worker(
        &self,
        cfg: &WorkerUnitConfig,
        worker_id: &str,
        extra_env: &[String],
        job_timeout: Duration,
    ) -> Result<StartOutcome> {
        let unit = unit_name(worker_id);
        let props = worker_properties(cfg, worker_id, extra_env)?;
        // Race-free: the JobRemoved match exists before the job does.
        let mut removed = self
            .mgr
            .receive_job_removed()
            .await
            .context("subscribing to JobRemoved")?;
        let t0 = Instant::now();
        let called_mono_us = monotonic_us();
        let job = self
            .mgr
            .start_transient_unit(unit.clone(), "fail".into(), props, Vec::new())
            .await
            .with_context(|| format!("StartTransientUnit {unit}"))?;
        let wait = async {
            while let Some(sig) = removed.next().await {
                let Ok(a) = sig.args() else { continue };
                if a.job.as_str() == job.as_str() {
                    return Ok(a.result.to_string());
                }
            }
            Err(anyhow!(
                "D-Bus connection closed while waiting for job {job:?}"
            ))
        };
        let result = match tokio::time::timeout(job_timeout, wait).await {
            Ok(r) => r?,
            Err(_) => "wait-timeout".to_string(),
        };
        Ok(StartOutcome {
            unit,
            worker_id: worker_id.to_string(),
            result,
            elapsed: t0.elapsed(),
            called_mono_us,
        })
    }

    /// `StopUnit(unit, "replace")`; a unit that is already gone is not an error.
    pub async fn stop_unit(&self, unit: &str) -> Result<()> {
        match self.mgr.stop_unit(unit.into(), "replace".into()).await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("StopUnit {unit}")),
        }
    }

    /// `KillUnit(unit, "all", signal)`.
    pub async fn kill_unit(&self, unit: &str, signal: i32) -> Result<()> {
        self.mgr
            .kill_unit(unit.into(), "all".into(), signal)
            .await
            .with_context(|| format!("KillUnit {unit}"))
    }

    /// `ResetFailedUnit`, so failed transient units do not pile up.
    pub async fn reset_failed(&self, unit: &str) -> Result<()> {
        match self.mgr.reset_failed_unit(unit.into()).await {
            Ok(()) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with("NoSuchUnit") => {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("ResetFailedUnit {unit}")),
        }
    }

    /// All loaded `peagen-worker@*.service` units, any state.
    pub async fn list_workers(&self) -> Result<Vec<UnitInfo>> {
        let rows = self
            .mgr
            .list_units_by_patterns(Vec::new(), vec![format!("{UNIT_PREFIX}*{UNIT_SUFFIX}")])
            .await
            .context("ListUnitsByPatterns")?;
        let mut out: Vec<UnitInfo> = rows
            .into_iter()
            .filter_map(|r| {
                let id = worker_id_of(&r.0)?.to_string();
                Some(UnitInfo {
                    worker_id: id,
                    unit: r.0,
                    active_state: r.3,
                    sub_state: r.4,
                    job_type: r.8,
                })
            })
            .collect();
        out.sort_by(|a, b| a.unit.cmp(&b.unit));
        Ok(out)
    }

    /// Result and exit status of a (finished) worker unit.
    pub async fn unit_exit(&self, unit: &str) -> Result<UnitExit> {
        let path = self
            .mgr
            .get_unit(unit.into())
            .await
            .with_context(|| format!("GetUnit {unit}"))?;
        let svc = ServiceProxy::builder(&self.conn).path(path).build().await?;
        Ok(UnitExit {
            result: svc.result().await?,
            code: svc.exec_main_code().await?,
            status: svc.exec_main_status().await?,
        })
    }

    /// Forward every worker-unit signal (job end, unit new/removed, property
    /// change) to `wake`. Returns when the connection closes.
    pub async fn watch(&self, wake: std::sync::Arc<Notify>) -> Result<()> {
        let mut jobs = self.mgr.receive_job_removed().await?;
        let mut removed = self.mgr.receive_unit_removed().await?;
        let mut new = self.mgr.receive_unit_new().await?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/freedesktop/systemd1/unit")
            .build()?;
        let mut props = zbus::MessageStream::for_match_rule(rule, &self.conn, None).await?;
        // Signals may only flow after Subscribe(); repeat it after adding matches.
        self.subscribe().await?;
        loop {
            let relevant = tokio::select! {
                s = jobs.next() => match s {
                    Some(s) => s.args().map(|a| worker_id_of(a.unit()).is_some()).unwrap_or(false),
                    None => break,
                },
                s = removed.next() => match s {
                    Some(s) => s.args().map(|a| worker_id_of(a.id()).is_some()).unwrap_or(false),
                    None => break,
                },
                s = new.next() => match s {
                    Some(s) => s.args().map(|a| worker_id_of(a.id()).is_some()).unwrap_or(false),
                    None => break,
                },
                m = props.next() => match m {
                    Some(Ok(m)) => m
                        .header()
                        .path()
                        .is_some_and(|p| p.as_str().starts_with(UNIT_PATH_PREFIX)),
                    Some(Err(_)) => false,
                    None => break,
                },
            };
            if relevant {
                wake.notify_one();
            }
        }
        bail!("systemd D-Bus signal stream ended")
    }
}

fn var<'a>(v: impl Into<Variant<'a>>) -> Result<OwnedVariant> {
    OwnedVariant::try_from(v.into()).context("encoding a D-Bus property")
}

/// A `(bas)` property: (allow-list?, names), as SystemCallFilter and
/// RestrictAddressFamilies take it.
fn list_var(allow: bool, names: &[&str]) -> Result<OwnedVariant> {
    var((
        allow,
        names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    ))
}

/// Namespaces the worker's sandbox must be able to create (everything but time).
const ALLOWED_NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;
const ALLOWED_NAMESPACE_NAMES: &str = "user mnt pid net ipc uts cgroup";
/// Syscalls allowed to workers: the service baseline plus what the sandbox
/// needs to build itself (mount/pivot_root, seccomp, landlock, sethostname
/// in its own UTS namespace; unshare/setns/clone are in @system-service).
const ALLOWED_SYSCALLS: [&str; 8] = [
    "@system-service",
    "@mount",
    "seccomp",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "sethostname",
    "setdomainname",
];
/// Then denied again, even where the groups above overlap.
const DENIED_SYSCALL_GROUPS: [&str; 8] = [
    "@clock",
    "@cpu-emulation",
    "@debug",
    "@module",
    "@obsolete",
    "@raw-io",
    "@reboot",
    "@swap",
];
/// No AF_NETLINK: tasks inherit this, and netlink from an unprivileged
/// namespace is how the nf_tables privilege escalations got in. The sandbox
/// needs none: its tasks get no network at all.
const ADDRESS_FAMILIES: [&str; 3] = ["AF_UNIX", "AF_INET", "AF_INET6"];

/// Boolean hardening settings applied when `hardening = true`. Deliberately
/// absent: ProtectProc/ProcSubset/ProtectKernelTunables/ProtectKernelLogs
/// (they over-mount parts of /proc, and the kernel then refuses the sandbox's
/// own procfs mount), ProtectHostname (blocks sethostname in the sandbox's UTS
/// namespace), MemoryDenyWriteExecute (inherited by interpreters that JIT),
/// RestrictNamespaces beyond time namespaces.
fn hardening_bools(cfg: &WorkerUnitConfig) -> Vec<(&'static str, bool)> {
    let mut v = vec![
        ("NoNewPrivileges", true),
        ("PrivateTmp", true),
        ("PrivateDevices", true),
        ("ProtectKernelModules", true),
        ("ProtectClock", true),
        ("RestrictRealtime", true),
        ("RestrictSUIDSGID", true),
        ("LockPersonality", true),
        ("PrivateMounts", true),
        ("PrivateIPC", true),
    ];
    // An unprivileged worker gets its own user namespace (it can still nest
    // the sandbox's); a root worker keeps real root for cgroup v1 limits.
    if cfg.dynamic_user || !cfg.user.is_empty() {
        v.push(("PrivateUsers", true));
    }
    // A delegated cgroup subtree must stay writable.
    if !cfg.delegate {
        v.push(("ProtectControlGroups", true));
    }
    v
}

/// Environment of a worker: config env plus its identity.
pub fn worker_environment(
    worker_id: &str,
    cfg: &WorkerUnitConfig,
    extra: &[String],
) -> Vec<String> {
    let mut env: Vec<String> = cfg.environment.clone();
    env.extend(extra.iter().cloned());
    env.push(format!("PEAGEN_WORKER_ID={worker_id}"));
    env
}

/// The D-Bus property set of one worker unit (StartTransientUnit `a(sv)`).
pub fn worker_properties(
    cfg: &WorkerUnitConfig,
    worker_id: &str,
    extra_env: &[String],
) -> Result<Vec<(String, OwnedVariant)>> {
    let mut p: Vec<(String, OwnedVariant)> = Vec::new();
    let mut put = |k: &str, v: OwnedVariant| p.push((k.to_string(), v));
    let path = cfg
        .exec_start
        .first()
        .cloned()
        .context("worker-unit.exec-start is empty")?;
    put("Description", var(format!("Peagen worker {worker_id}"))?);
    put(
        "ExecStart",
        var(vec![(path, cfg.exec_start.clone(), false)])?,
    );
    put("Type", var("notify")?);
    put("NotifyAccess", var("main")?);
    put("KillMode", var("mixed")?);
    put("TimeoutStopUSec", var(cfg.timeout_stop_secs * 1_000_000)?);
    if cfg.watchdog_secs > 0 {
        put("WatchdogUSec", var(cfg.watchdog_secs * 1_000_000)?);
    }
    if !cfg.slice.is_empty() {
        put("Slice", var(cfg.slice.as_str())?);
    }
    if cfg.dynamic_user && cfg.user.is_empty() {
        put("DynamicUser", var(true)?);
    }
    if !cfg.user.is_empty() {
        put("User", var(cfg.user.as_str())?);
    }
    if !cfg.group.is_empty() {
        put("Group", var(cfg.group.as_str())?);
    }
    put(
        "Environment",
        var(worker_environment(worker_id, cfg, extra_env))?,
    );
    put(
        "LogExtraFields",
        var(vec![format!("PEAGEN_WORKER_ID={worker_id}").into_bytes()])?,
    );
    if !cfg.load_credential.is_empty() {
        // `a(ss)`: (credential id, path); validated as ID:PATH in config.
        let creds: Vec<(String, String)> = cfg
            .load_credential
            .iter()
            .filter_map(|c| c.split_once(':'))
            .map(|(id, path)| (id.to_string(), path.to_string()))
            .collect();
        put("LoadCredential", var(creds)?);
    }
    if cfg.delegate {
        put("Delegate", var(true)?);
    }
    if cfg.hardening {
        for (k, v) in hardening_bools(cfg) {
            put(k, var(v)?);
        }
        put("ProtectSystem", var("strict")?);
        put("ProtectHome", var("yes")?);
        put("UMask", var(0o077u32)?);
        put("RestrictNamespaces", var(ALLOWED_NAMESPACES)?);
        put("SystemCallFilter", list_var(true, &ALLOWED_SYSCALLS)?);
        put("SystemCallFilter", list_var(false, &DENIED_SYSCALL_GROUPS)?);
        // EPERM rather than SIGSYS: a denied call fails like any refused one.
        put("SystemCallErrorNumber", var(libc::EPERM)?);
        put("SystemCallArchitectures", var(vec!["native".to_string()])?);
        put(
            "RestrictAddressFamilies",
            list_var(true, &ADDRESS_FAMILIES)?,
        );
        if cfg.dynamic_user || !cfg.user.is_empty() {
            // No capabilities for unprivileged workers; the sandbox gets its
            // own full set inside the user namespace it creates.
            put("CapabilityBoundingSet", var(0u64)?);
        }
    }
    Ok(p)
}

/// Quote one word for a unit file (`%` escaped, since it starts a specifier).
fn quote_arg(a: &str) -> String {
    let a = &a.replace('%', "%%");
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
    {
        a.to_string()
    } else {
        format!("\"{}\"", a.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The worker property set as unit-file text (what the spawner passes over
/// D-Bus for one worker, with `%i` as the worker id), for review and for
/// `systemd-analyze security --offline=true`. Never install it as
/// `peagen-worker@.service`: a template fragment blocks transient instances.
pub fn render_worker_unit(cfg: &WorkerUnitConfig) -> String {
    let mut s = String::from(
        "# Generated by peagen-spawnerd (render_worker_unit): the properties of each\n\
         # transient worker unit. Reference only; never install as a template.\n\
         [Unit]\nDescription=Peagen worker %i\n\n[Service]\n",
    );
    let mut line = |k: &str, v: &str| {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\n');
    };
    line(
        "ExecStart",
        &cfg.exec_start
            .iter()
            .map(|a| quote_arg(a))
            .collect::<Vec<_>>()
            .join(" "),
    );
    line("Type", "notify");
    line("NotifyAccess", "main");
    line("KillMode", "mixed");
    line("TimeoutStopSec", &cfg.timeout_stop_secs.to_string());
    if cfg.watchdog_secs > 0 {
        line("WatchdogSec", &cfg.watchdog_secs.to_string());
    }
    if !cfg.slice.is_empty() {
        line("Slice", &cfg.slice);
    }
    if cfg.dynamic_user && cfg.user.is_empty() {
        line("DynamicUser", "yes");
    }
    if !cfg.user.is_empty() {
        line("User", &cfg.user);
    }
    if !cfg.group.is_empty() {
        line("Group", &cfg.group);
    }
    for e in &cfg.environment {
        line("Environment", &quote_arg(e));
    }
    line("Environment", "PEAGEN_WORKER_ID=%i");
    line("LogExtraFields", "PEAGEN_WORKER_ID=%i");
    for c in &cfg.load_credential {
        line("LoadCredential", c);
    }
    if cfg.delegate {
        line("Delegate", "yes");
    }
    if cfg.hardening {
        for (k, v) in hardening_bools(cfg) {
            line(k, if v { "yes" } else { "no" });
        }
        line("ProtectSystem", "strict");
        line("ProtectHome", "yes");
        line("UMask", "0077");
        line("RestrictNamespaces", ALLOWED_NAMESPACE_NAMES);
        line("SystemCallFilter", &ALLOWED_SYSCALLS.join(" "));
        line(
            "SystemCallFilter",
            &format!("~{}", DENIED_SYSCALL_GROUPS.join(" ")),
        );
        line("SystemCallErrorNumber", "EPERM");
        line("SystemCallArchitectures", "native");
        line("RestrictAddressFamilies", &ADDRESS_FAMILIES.join(" "));
        if cfg.dynamic_user || !cfg.user.is_empty() {
            line("CapabilityBoundingSet", "");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_round_trip() {
        let id = "0b6f3c1e-4a53-4c3b-9d7e-2a1b0c9d8e7f";
        assert_eq!(worker_id_of(&unit_name(id)), Some(id));
        assert_eq!(worker_id_of("peagen-worker@.service"), None);
        assert_eq!(worker_id_of("redis.service"), None);
        assert_eq!(worker_id_of("peagen-worker@x.socket"), None);
    }

    #[test]
    fn ip_filter_follows_systemd_semantics() {
        // What peagen-spawnerd.service ships: IPAddressDeny=any, IPAddressAllow=localhost.
        let shipped = IpFilter {
            allow: vec![
                IpPrefix::from_dbus(&(libc::AF_INET, vec![127, 0, 0, 0], 8)).unwrap(),
                IpPrefix::from_dbus(&(
                    libc::AF_INET6,
                    [0u8; 15].iter().copied().chain([1]).collect(),
                    128,
                ))
                .unwrap(),
            ],
            deny: vec![
                IpPrefix::from_dbus(&(libc::AF_INET, vec![0; 4], 0)).unwrap(),
                IpPrefix::from_dbus(&(libc::AF_INET6, vec![0; 16], 0)).unwrap(),
            ],
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(!shipped.blocks(ip("127.0.0.1")));
        assert!(!shipped.blocks(ip("127.3.2.1")));
        assert!(!shipped.blocks(ip("::1")));
        assert!(shipped.blocks(ip("10.0.0.5")));
        assert!(shipped.blocks(ip("2001:db8::1")));
        // With the remote-Redis drop-in (IPAddressAllow=10.0.0.5/32).
        let mut widened = shipped.clone();
        widened
            .allow
            .push(IpPrefix::from_dbus(&(libc::AF_INET, vec![10, 0, 0, 5], 32)).unwrap());
        assert!(!widened.blocks(ip("10.0.0.5")));
        assert!(widened.blocks(ip("10.0.0.6")));
        // Prefixes that end inside a byte.
        let p = IpPrefix::from_dbus(&(libc::AF_INET, vec![192, 168, 16, 0], 20)).unwrap();
        assert!(p.contains(ip("192.168.31.255")) && !p.contains(ip("192.168.32.0")));
        // No lists: nothing blocked.
        assert!(!IpFilter::default().blocks(ip("10.0.0.5")));
        assert!(IpPrefix::from_dbus(&(libc::AF_INET, vec![1, 2, 3], 8)).is_none());
    }

    #[test]
    fn a_unit_with_a_queued_start_is_live() {
        let u = |state: &str, job: &str| UnitInfo {
            unit: "peagen-worker@x.service".into(),
            worker_id: "x".into(),
            active_state: state.into(),
            sub_state: String::new(),
            job_type: job.into(),
        };
        for (state, job, live) in [
            ("inactive", "start", true),
            ("inactive", "restart", true),
            ("inactive", "", false),
            ("inactive", "stop", false),
            ("failed", "", false),
            ("activating", "", true),
            ("active", "", true),
            ("deactivating", "stop", true),
        ] {
            assert_eq!(u(state, job).is_live(), live, "{state} + {job:?}");
        }
    }

    #[test]
    fn properties_carry_identity_and_hardening() {
        let cfg = WorkerUnitConfig {
            environment: vec!["A=1".into()],
            ..Default::default()
        };
        let p = worker_properties(&cfg, "w1", &["B=2".into()]).unwrap();
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| format!("{:?}", **v))
                .unwrap_or_default()
        };
        assert!(get("Environment").contains("PEAGEN_WORKER_ID=w1"));
        assert!(get("Environment").contains("A=1") && get("Environment").contains("B=2"));
        assert!(get("Type").contains("notify"));
        assert!(get("DynamicUser").contains("true"));
        assert!(get("Delegate").contains("true"));
        assert!(get("Slice").contains("peagen-workers.slice"));
        for k in [
            "ProtectProc",
            "ProcSubset",
            "ProtectKernelTunables",
            "ProtectKernelLogs",
        ] {
            assert!(p.iter().all(|(n, _)| n != k), "{k} must not be set");
        }
        // Delegate keeps the cgroup tree writable.
        assert!(p.iter().all(|(n, _)| n != "ProtectControlGroups"));
        assert_eq!(
            p.iter().filter(|(n, _)| n == "ExecStart").count(),
            1,
            "one ExecStart"
        );
    }

    #[test]
    fn rendered_unit_matches_properties() {
        let cfg = WorkerUnitConfig {
            exec_start: vec![
                "/usr/bin/peagen-worker".into(),
                "--config".into(),
                "/etc/peagen/a b.toml".into(),
            ],
            ..Default::default()
        };
        let text = render_worker_unit(&cfg);
        assert!(text.contains("[Service]\n"), "{text}");
        assert!(
            text.contains("ExecStart=/usr/bin/peagen-worker --config \"/etc/peagen/a b.toml\"\n")
        );
        assert!(text.contains("Environment=PEAGEN_WORKER_ID=%i\n"));
        assert!(text.contains("LogExtraFields=PEAGEN_WORKER_ID=%i\n"));
        assert!(text.contains("RestrictNamespaces=user mnt pid net ipc uts cgroup\n"));
        assert!(!text.contains("ProtectKernelTunables"));
    }
}
