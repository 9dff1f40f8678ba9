//! peagen-spawnerd: queue-driven autoscaling of transient
//! `peagen-worker@<uuid>.service` units.
//!
//! The daemon keeps no state of its own: every tick (and every systemd
//! signal about a worker unit) it re-reads the worker units from systemd and
//! the queue from Redis, lets [`crate::policy::decide`] choose, and acts.
//! Worker ids are the Redis consumer names, so a unit that systemd reports
//! failed or gone has its pending entries re-queued at once
//! ([`Queue::requeue_consumer`]). An XAUTOCLAIM sweep catches orphans of
//! consumers that are not live units. A circuit breaker stops start storms.

use crate::config::Config;
use crate::inventory::{classify, UnitState};
use crate::metrics::{labels, SharedRegistry, SpawnerMetrics};
use crate::policy::{
    self, Backlog, Breaker, BreakerState, Memory, PolicyConfig, WorkerState, WorkerView,
};
use crate::queue::{Queue, QueueStats};
use crate::systemd::Systemd;
use crate::telemetry::notify;
use anyhow::{Context, Result};
use sd_notify::NotifyState;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// How long a start job may take before it counts as failed.
const START_JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the per-kind and memory gauges are refreshed (they scan).
const SLOW_GAUGES_EVERY: Duration = Duration::from_secs(10);
/// A worker seen holding a task counts as busy in `peagen_workers` for this
/// long after: under steady load a worker between two tasks holds nothing
/// for a moment, and each pass that sampled that moment made the gauge flap.
/// Only the gauge: the policy still sees it idle.
pub(crate) const BUSY_GRACE: Duration = Duration::from_secs(3);

type StartResult = (String, Result<crate::systemd::StartOutcome>);

struct Spawner {
    cfg: Config,
    cfg_path: Option<PathBuf>,
    sd: Systemd,
    queue: Arc<Queue>,
    m: SpawnerMetrics,
    host: String,
    /// This host in the fleet and in its worker ids (`spawner.host-id`).
    host_id: String,
    /// Heartbeat, fleet share and dead-host hand-over ([`crate::fleet_store`]).
    fleet: crate::fleet_store::FleetAgent,
    breaker: Breaker,
    mem: Memory,
    /// Worker id -> since when it was seen idle (rebuilt after a restart).
    idle_since: HashMap<String, Instant>,
    /// Worker id -> until when the gauge counts it busy ([`BUSY_GRACE`]).
    busy_until: HashMap<String, Instant>,
    /// Start calls in flight (worker id -> started at), counted as starting.
    starting: HashMap<String, Instant>,
    /// Worker ids seen live in the previous tick, to notice units that vanished.
    live_prev: HashSet<String>,
    start_tx: mpsc::UnboundedSender<StartResult>,
    wake: Arc<Notify>,
    last_slow_gauges: Option<Instant>,
    last_status: String,
}

impl Spawner {
    fn policy_cfg(&self) -> PolicyConfig {
        PolicyConfig::from(&self.cfg.spawner)
    }

    fn max_attempts(&self) -> u32 {
        self.cfg.worker.max_attempts
    }

    fn status(&mut self, s: String) {
        if s != self.last_status {
            notify(&[NotifyState::Status(&s)]);
            self.last_status = s;
        }
    }

    fn count_reclaimed(&self, rep: &crate::queue::ReclaimReport) {
        for (outcome, n) in [
            ("requeued", rep.requeued),
            ("dead_lettered", rep.dead_lettered),
        ] {
            self.m
                .reclaimed
                .get_or_create(&labels(&[("outcome", outcome)]))
                .inc_by(n);
        }
    }

    /// A worker that died without counting its exit (killed, crashed) is
    /// counted here as `worker_exit_reason{reason="error"}`, in the host's
    /// hash where the workers count theirs, so the alert sees crashes.
    async fn count_crash(&self, worker_id: &str) {
        let key = self.cfg.redis.fleet_metrics_key(&self.host);
        let field = crate::metrics::series_text(
            "peagen_worker_exit_reason_total",
            &labels(&[("reason", "error")]),
        );
        if let Err(e) = self.queue.hash_incr(&key, &[(field, 1)], &[]).await {
            tracing::warn!(worker_id, key, error = %e, "cannot count the failed worker's exit (reason=error); this exit is lost");
        }
    }

    /// Re-queue what a dead worker held; drop its consumer if empty.
    /// Returns false if Redis could not be reached: the caller keeps the
    /// worker on its list so the next pass tries again.
    async fn reclaim_worker(&self, worker_id: &str, unit: &str, why: &str) -> bool {
        match self
            .queue
            .requeue_consumer(worker_id, self.max_attempts(), why, &self.host)
            .await
        {
            Ok(rep) => {
                if rep.requeued + rep.dead_lettered > 0 {
                    tracing::warn!(
                        worker_id,
                        unit,
                        requeued = rep.requeued,
                        dead_lettered = rep.dead_lettered,
                        reason = why,
                        "re-queued the tasks of a dead worker"
                    );
                }
                self.count_reclaimed(&rep);
            }
            Err(e) => {
                tracing::error!(worker_id, unit, error = %e, "cannot re-queue the tasks of a dead worker");
                return false;
            }
        }
        if let Err(e) = self.queue.delete_consumer_if_empty(worker_id).await {
            tracing::debug!(worker_id, error = %e, "delete consumer failed");
        }
        true
    }

    /// One reconcile pass: read systemd + Redis, reclaim, decide, act.
    async fn reconcile(&mut self) -> Result<()> {
        let now = Instant::now();
        // systemd and Redis are asked at the same time: this pass is what
        // stands between a push and the start of a worker.
        let queue = self.queue.clone();
        let (units, stats) = tokio::join!(self.sd.list_workers(), async move {
            // Due retries become backlog here too, so they are not stuck in the
            // delayed set while no worker runs (and then count for scale-up).
            match queue.promote_due(crate::queue::PROMOTE_BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(promoted = n, "delayed retries now due"),
                Err(e) => tracing::warn!(error = %e, "promoting delayed retries failed"),
            }
            queue.stats().await
        });
        let units = units?;
        let stats = stats.context("reading queue stats")?;
        let pending_of: HashMap<&str, u64> = stats
            .consumers
            .iter()
            .map(|c| (c.name.as_str(), c.pending))
            .collect();

        // Dead units: failed/inactive ones still loaded, and live ones that vanished.
        let mut live_now = HashSet::new();
        for u in &units {
            if u.is_live() {
                live_now.insert(u.worker_id.clone());
                continue;
            }
            let exit = self.sd.unit_exit(&u.unit).await.ok();
            let (result, code, status) = exit
                .map(|e| (e.result, e.code, e.status))
                .unwrap_or_else(|| ("unknown".into(), 0, 0));
            if u.active_state == "failed" {
                tracing::warn!(worker_id = %u.worker_id, unit = %u.unit, result, exec_main_code = code, exec_main_status = status, "worker unit failed");
            } else {
                tracing::info!(worker_id = %u.worker_id, unit = %u.unit, result, "worker unit finished");
            }
            let reclaimed = self
                .reclaim_worker(
                    &u.worker_id,
                    &u.unit,
                    &format!("worker unit {} ({result})", u.active_state),
                )
                .await;
            // Keep the failed unit loaded (and so on our list) until its
            // tasks are safely re-queued.
            if !reclaimed {
                continue;
            }
            match self.sd.reset_failed(&u.unit).await {
                // Counted once: after the reset the unit is not listed again.
                Ok(())
                    if u.active_state == "failed" && uncounted_failure(&result, code, status) =>
                {
                    self.count_crash(&u.worker_id).await
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(unit = %u.unit, error = %e, "ResetFailedUnit failed"),
            }
            self.idle_since.remove(&u.worker_id);
        }
        let vanished: Vec<String> = self
            .live_prev
            .iter()
            .filter(|id| !live_now.contains(*id) && !units.iter().any(|u| &u.worker_id == *id))
            .cloned()
            .collect();
        for id in vanished {
            let unit = crate::systemd::unit_name(&id);
            tracing::info!(worker_id = %id, unit = %unit, "worker unit gone");
            if !self.reclaim_worker(&id, &unit, "worker unit gone").await {
                live_now.insert(id); // seen as gone again next pass: retry
                continue;
            }
            self.idle_since.remove(&id);
        }
        self.live_prev = live_now;

        // Worker views for the policy.
        let mut views = Vec::new();
        let mut seen = HashSet::new();
        for u in units.iter().filter(|u| u.is_live()) {
            seen.insert(u.worker_id.clone());
            let pending = pending_of.get(u.worker_id.as_str()).copied().unwrap_or(0);
            let in_flight = self.starting.contains_key(&u.worker_id);
            let state = match classify(u, pending, in_flight) {
                UnitState::Starting => WorkerState::Starting,
                UnitState::Stopping => WorkerState::Stopping,
                UnitState::Busy => {
                    self.idle_since.remove(&u.worker_id);
                    self.busy_until
                        .insert(u.worker_id.clone(), now + BUSY_GRACE);
                    WorkerState::Busy
                }
                UnitState::Idle => WorkerState::Idle {
                    since: *self.idle_since.entry(u.worker_id.clone()).or_insert(now),
                },
                // Not live: filtered out above.
                UnitState::Failed | UnitState::Inactive => continue,
            };
            views.push(WorkerView {
                id: u.worker_id.clone(),
                state,
            });
        }
        for id in self.starting.keys() {
            if !seen.contains(id) {
                views.push(WorkerView {
                    id: id.clone(),
                    state: WorkerState::Starting,
                });
            }
        }
        self.idle_since.retain(|id, _| seen.contains(id));
        self.busy_until.retain(|id, _| seen.contains(id));

        let backlog = Backlog {
            lag: stats.lag,
            length: stats.length,
            pending: stats.pending,
        };
        let allowed = self.breaker.allowed_starts(now, self.starting.len() as u32);
        let max_attempts = self.max_attempts();
        let ft = (self.fleet)
            .tick(
                &self.queue,
                &self.cfg.spawner,
                &backlog,
                &views,
                max_attempts,
            )
            .await;
        self.count_reclaimed(&ft.reclaimed);
        // No heartbeat (Redis unreachable): hold the current count.
        let want = (ft.want).unwrap_or_else(|| crate::fleet::Counts::of(&views).capacity());
        let d = policy::decide_towards(&self.policy_cfg(), want, &views, self.mem, allowed, now);
        self.mem = d.memory;
        for _ in 0..d.start {
            self.start_one();
        }
        for id in &d.stop {
            let unit = crate::systemd::unit_name(id);
            tracing::info!(worker_id = %id, unit = %unit, "stopping idle worker (scale down)");
            match self.sd.stop_unit(&unit).await {
                Ok(()) => {
                    self.m.stops.inc();
                }
                Err(e) => {
                    tracing::warn!(worker_id = %id, unit = %unit, error = %e, "StopUnit failed")
                }
            };
            self.idle_since.remove(id);
        }
        self.update_gauges(&views, &d, &stats, now).await;
        Ok(())
    }

    fn start_one(&mut self) {
        let id = crate::fleet::worker_id(&self.host_id, &uuid::Uuid::new_v4());
        let unit = crate::systemd::unit_name(&id);
        tracing::info!(worker_id = %id, unit = %unit, mono_us = crate::systemd::monotonic_us(), "starting worker");
        self.m.spawns.inc();
        self.starting.insert(id.clone(), Instant::now());
        let sd = self.sd.clone();
        let wu = self.cfg.spawner.worker_unit.clone();
        let tx = self.start_tx.clone();
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let r = sd.start_worker(&wu, &id, &[], START_JOB_TIMEOUT).await;
            let _ = tx.send((id, r));
            wake.notify_one();
        });
    }

    async fn on_started(&mut self, id: String, r: Result<crate::systemd::StartOutcome>) {
        self.starting.remove(&id);
        let unit = crate::systemd::unit_name(&id);
        let now = Instant::now();
        let failure = match r {
            Ok(o) if o.ok() => {
                self.m.spawn_ready.observe(o.elapsed.as_secs_f64());
                tracing::info!(worker_id = %id, unit = %unit, ready_ms = o.elapsed.as_secs_f64() * 1000.0,
                    call_mono_us = o.called_mono_us, "worker ready");
                self.breaker.on_success();
                None
            }
            Ok(o) => Some(format!("start job ended with {:?}", o.result)),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = failure {
            self.m.spawn_failures.inc();
            let exit = self.sd.unit_exit(&unit).await.ok();
            tracing::error!(worker_id = %id, unit = %unit, error = %why, unit_result = ?exit.as_ref().map(|e| &e.result), exec_main_status = ?exit.as_ref().map(|e| e.status), "worker failed to start");
            if let Some(wait) = self.breaker.on_failure(now) {
                tracing::error!(
                    consecutive_failures = self.breaker.failures(),
                    backoff_secs = wait.as_secs(),
                    "spawn circuit breaker open: workers keep failing at start; no starts until the backoff ends"
                );
            }
        }
    }

    async fn update_gauges(
        &mut self,
        views: &[WorkerView],
        d: &policy::Decision,
        st: &QueueStats,
        now: Instant,
    ) {
        let n = gauge_counts(views, &self.busy_until, now);
        for (i, s) in ["starting", "idle", "busy", "stopping"].iter().enumerate() {
            self.m
                .workers
                .get_or_create(&labels(&[("state", s)]))
                .set(n[i]);
        }
        self.m.desired.set(d.desired as i64);
        self.m.queue.set_stats(st);
        // Workers of this host flush into this hash; on error keep the last snapshot.
        let key = self.cfg.redis.fleet_metrics_key(&self.host);
        match self.queue.hash_all(&key).await {
            Ok(h) => self.m.fleet.set(h),
            Err(e) => tracing::debug!(key, error = %e, "cannot read worker metrics hash"),
        }
        let bstate = self.breaker.state(now);
        self.m
            .breaker_open
            .set(matches!(bstate, BreakerState::Open { .. }) as i64);
        if self
            .last_slow_gauges
            .is_none_or(|t| now.duration_since(t) >= SLOW_GAUGES_EVERY)
        {
            self.last_slow_gauges = Some(now);
            // Also refreshed at each scrape (pending_hook); this keeps
            // the status line's source and unscraped spawners current.
            if let Ok(kinds) = self.queue.pending_by_kind(10_000).await {
                self.m.queue.by_kind.set(kinds);
            }
            let r = &self.cfg.redis;
            for s in [&r.tasks_stream, &r.results_stream, &r.dead_stream] {
                if let Ok(b) = self.queue.memory_usage(s).await {
                    self.m
                        .stream_memory
                        .get_or_create(&labels(&[("stream", s)]))
                        .set(b as i64);
                }
            }
        }
        let breaker = match bstate {
            BreakerState::Closed => String::new(),
            BreakerState::Open { until } => format!(
                "; BREAKER OPEN after {} failed starts, retry in {}s",
                self.breaker.failures(),
                until.saturating_duration_since(now).as_secs()
            ),
            BreakerState::HalfOpen => "; breaker half-open (probing)".into(),
        };
        self.status(format!(
            "workers {} (starting {}, idle {}, busy {}), desired {}, backlog {}, in flight {}, delayed {}{}",
            d.current,
            n[0],
            n[1],
            n[2],
            d.desired,
            st.lag.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            st.pending,
            st.delayed,
            breaker
        ));
    }

    /// XAUTOCLAIM sweep for orphans of consumers that are not live units,
    /// then delete consumers that hold nothing and are not live units.
    async fn sweep(&mut self) {
        let claimer = format!("{}{}", crate::fleet::CLAIMER_PREFIX, self.host_id);
        match self
            .queue
            .autoclaim_orphans(
                &claimer,
                self.cfg.spawner.reclaim_min_idle_ms,
                self.max_attempts(),
                &self.host,
            )
            .await
        {
            Ok(rep) => {
                if rep.requeued + rep.dead_lettered > 0 {
                    tracing::warn!(
                        requeued = rep.requeued,
                        dead_lettered = rep.dead_lettered,
                        "orphan sweep re-queued tasks"
                    );
                }
                self.count_reclaimed(&rep);
            }
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
        }
        let Ok(consumers) = self.queue.consumers().await else {
            return;
        };
        for c in consumers {
            let idle_long = c.idle_ms >= self.cfg.spawner.reclaim_min_idle_ms;
            if c.pending == 0
                && !self.live_prev.contains(&c.name)
                && !self.starting.contains_key(&c.name)
                && (idle_long || c.name == claimer)
            {
                match self.queue.delete_consumer_if_empty(&c.name).await {
                    Ok(true) => tracing::info!(consumer = %c.name, "deleted empty consumer"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(consumer = %c.name, error = %e, "delete consumer failed")
                    }
                }
            }
        }
    }

    fn reload(&mut self) {
        match Config::load(self.cfg_path.as_deref()) {
            Ok(new) => {
                notify(&[NotifyState::Reloading]);
                if new.redis != self.cfg.redis {
                    tracing::warn!("redis settings changed; they take effect after a restart of peagen-spawnerd");
                }
                let s = &new.spawner;
                let old = std::mem::replace(
                    &mut self.breaker,
                    Breaker::new(
                        s.failure_threshold,
                        Duration::from_secs(s.backoff_initial_secs),
                        Duration::from_secs(s.backoff_max_secs),
                    ),
                );
                // Keep an open breaker open across reloads.
                if old.is_open(Instant::now()) {
                    self.breaker = old;
                }
                let redis = self.cfg.redis.clone();
                self.m
                    .queue
                    .by_kind
                    .set_configured(crate::handlers::Registry::configured_kinds(&new));
                self.cfg = new;
                self.cfg.redis = redis;
                tracing::info!("configuration reloaded");
                notify(&[NotifyState::Ready]);
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: configuration is not valid; keeping the running one");
                notify(&[NotifyState::Status(&format!("reload refused: {e}"))]);
            }
        }
    }
}

/// `peagen_workers{state}` counts (starting, idle, busy, stopping): an idle
/// worker still inside its [`BUSY_GRACE`] counts as busy.
fn gauge_counts(
    views: &[WorkerView],
    busy_until: &HashMap<String, Instant>,
    now: Instant,
) -> [i64; 4] {
    let mut n = [0i64; 4];
    for v in views {
        n[match v.state {
            WorkerState::Starting => 0,
            WorkerState::Idle { .. } if busy_until.get(&v.id).is_some_and(|t| *t > now) => 2,
            WorkerState::Idle { .. } => 1,
            WorkerState::Busy => 2,
            WorkerState::Stopping => 3,
        }] += 1;
    }
    n
}

/// A failed worker unit that the worker did not count itself: everything
/// but its own error exit (status 1, after adding `reason="error"` to the
/// host's hash): kills, crashes, watchdog, start failures. `code` is
/// `ExecMainCode` (1 = exited).
pub(crate) fn uncounted_failure(result: &str, code: i32, status: i32) -> bool {
    !(result == "exit-code" && code == 1 && status == crate::exit::FAILURE)
}

/// The scrape hook of the spawner's endpoint: `queue_pending_total{kind}`
/// counted when Prometheus asks (a burst's peak shows at the scrape
/// interval, not the tick's 10 s), configured kinds at 0 while idle.
pub fn pending_hook(
    queue: Arc<Queue>,
    gauge: crate::metrics::KindGauge,
) -> crate::metrics::ScrapeHook {
    Arc::new(move || {
        let (q, g) = (queue.clone(), gauge.clone());
        Box::pin(async move {
            match q.pending_by_kind(10_000).await {
                Ok(kinds) => g.set(kinds),
                Err(e) => {
                    tracing::debug!(error = %e, "scrape: cannot count pending tasks by kind; serving the last counts")
                }
            }
        })
    })
}

/// What the program's entry point asks of the daemon (it owns the signals:
/// SIGTERM/SIGINT mean [`Control::Stop`], SIGHUP [`Control::Reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Stop,
    Reload,
}

/// Connect to systemd over D-Bus, waiting out an outage; `None` when asked
/// to stop meanwhile.
async fn connect_systemd(
    cfg: &Config,
    ctl: &mut mpsc::UnboundedReceiver<Control>,
) -> Option<Systemd> {
    let mut backoff = crate::backoff::Backoff::service();
    loop {
        let r = async {
            let sd = Systemd::connect(cfg.spawner.user_mode).await?;
            sd.ping().await?;
            anyhow::Ok(sd)
        }
        .await;
        match r {
            Ok(sd) => return Some(sd),
            Err(e) => {
                let bus = if cfg.spawner.user_mode {
                    "session"
                } else {
                    "system"
                };
                tracing::warn!(error = %format!("{e:#}"), bus, retry_in_ms = backoff.peek().as_millis() as u64, "cannot reach systemd over D-Bus; retrying");
                notify(&[NotifyState::Status(&format!(
                    "waiting for systemd on the {bus} bus: {e:#}"
                ))]);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.step()) => {}
                    c = ctl.recv() => if matches!(c, Some(Control::Stop) | None) { return None },
                }
            }
        }
    }
}

/// What to call the configured Redis in messages (no password).
fn redis_name(cfg: &crate::config::RedisConfig) -> String {
    crate::redis_target::Target::new(cfg)
        .map(|t| t.describe().to_string())
        .unwrap_or_else(|_| "redis.url".into())
}

/// One connection attempt, bounded (a black-holed address otherwise takes
/// the client's connect timeout times its retries).
async fn connect_redis(cfg: &Config) -> Result<Queue> {
    const LIMIT: Duration = Duration::from_secs(10);
    let attempt = async {
        let q = Queue::connect_for(cfg).await?;
        q.ensure_group().await?;
        anyhow::Ok(q)
    };
    match tokio::time::timeout(LIMIT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "Redis at {} did not answer within {}s",
            redis_name(&cfg.redis),
            LIMIT.as_secs()
        )),
    }
}

/// TCP endpoints the `[redis]` section points at (the sentinels with Sentinel).
fn redis_endpoints(cfg: &crate::config::RedisConfig) -> Vec<(String, u16)> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let urls: Vec<&str> = if cfg.sentinel_master.is_some() {
        cfg.sentinels.iter().map(String::as_str).collect()
    } else {
        vec![cfg.url.as_str()]
    };
    urls.into_iter()
        .filter_map(|u| u.into_connection_info().ok())
        .filter_map(|i| match i.addr() {
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => Some((h.clone(), *p)),
            _ => None,
        })
        .collect()
}

/// Why Redis may be unreachable when the reason is this unit's own IP
/// filter: systemd's `IPAddressDeny=` drops the packets in the kernel, so the
/// client only sees a timeout while `peagenctl`, outside the unit, connects
/// fine. Returns the operator's message, or `None` if the filter is not it.
async fn ip_filter_hint(cfg: &crate::config::RedisConfig, sd: &Systemd) -> Option<String> {
    let filter = sd.ip_filter_of_pid(std::process::id()).await.ok()??;
    let mut blocked = Vec::new();
    for (host, port) in redis_endpoints(cfg) {
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
            continue;
        };
        for a in addrs {
            if filter.blocks(a.ip()) && !blocked.contains(&a) {
                blocked.push(a);
            }
        }
    }
    if blocked.is_empty() {
        return None;
    }
    let list: Vec<String> = blocked.iter().map(|a| a.to_string()).collect();
    Some(ip_filter_message(&list))
}

fn ip_filter_message(blocked: &[String]) -> String {
    format!(
        "Redis at {} is outside this unit's IP allow list (IPAddressDeny=/IPAddressAllow= of peagen-spawnerd.service; the shipped unit allows localhost only): the kernel drops the packets, which looks like a timeout. Allow the address with a drop-in: install /usr/share/doc/peagen-fabric/examples/20-remote-redis.conf as /etc/systemd/system/peagen-spawnerd.service.d/20-remote-redis.conf with your address, then systemctl daemon-reload and restart (docs/operations.md, \"Remote Redis\")",
        blocked.join(", ")
    )
}

/// Connect to Redis until it answers, keeping the service up meanwhile: the
/// status names the address and the error, the watchdog is pinged, a reload
/// applies a corrected `[redis]` section at once. `None` when asked to stop.
async fn wait_for_redis(
    cfg: &mut Config,
    cfg_path: Option<&std::path::Path>,
    sd: &Systemd,
    ctl: &mut mpsc::UnboundedReceiver<Control>,
    first_error: anyhow::Error,
) -> Option<Queue> {
    let watchdog = crate::telemetry::watchdog_interval();
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let mut err = first_error;
    let mut last_said = (String::new(), None::<Instant>);
    loop {
        let hint = ip_filter_hint(&cfg.redis, sd).await;
        let error = format!("{err:#}");
        let redis = redis_name(&cfg.redis);
        // Every change at WARN; the same error again once a minute.
        if last_said.0 != error
            || last_said
                .1
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            match &hint {
                // Address and error in the message too: `journalctl` shows only the message.
                Some(h) => tracing::error!(redis = %redis, error = %error, "{h} (error: {error})"),
                None => {
                    tracing::warn!(redis = %redis, error = %error, retry_in_ms = backoff.peek().as_millis() as u64,
                    "cannot reach Redis at {redis}: {error}; the spawner is running and starts workers once Redis answers")
                }
            }
            last_said = (error.clone(), Some(Instant::now()));
        }
        notify(&[NotifyState::Status(&match &hint {
            Some(h) => format!("waiting for Redis: {h} (error: {error})"),
            None => format!(
                "waiting for Redis (retrying every {}s): {error}",
                backoff.peek().as_secs().max(1)
            ),
        })]);
        let deadline = tokio::time::sleep(backoff.step());
        tokio::pin!(deadline);
        loop {
            let ping_in = watchdog.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = &mut deadline => break,
                _ = tokio::time::sleep(ping_in) => notify(&[NotifyState::Watchdog]),
                c = ctl.recv() => match c {
                    Some(Control::Reload) => match Config::load(cfg_path) {
                        // Nothing is connected yet: the whole new config applies.
                        Ok(new) => {
                            notify(&[NotifyState::Reloading]);
                            *cfg = new;
                            tracing::info!("configuration reloaded");
                            notify(&[NotifyState::Ready]);
                            break;
                        }
                        Err(e) => tracing::error!(error = %e, "reload refused: configuration is not valid; keeping the running one"),
                    },
                    Some(Control::Stop) | None => return None,
                },
            }
        }
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
        match connect_redis(cfg).await {
            Ok(q) => {
                tracing::info!(redis = %redis_name(&cfg.redis), "connected to Redis");
                return Some(q);
            }
            Err(e) => err = e,
        }
    }
}

/// Run the daemon until [`Control::Stop`]. Returns the process exit code.
///
/// Readiness (`READY=1`) does not wait for Redis: once the metrics endpoint
/// is up and systemd answers, the daemon is up. If Redis answers at once the
/// first reconcile pass runs before `READY=1` (state rebuilt from systemd and
/// Redis); if not, `READY=1` goes out with a `STATUS=` that names the Redis
/// address and the error, and the connection is retried in the background.
/// A start job that hangs on a remote service helps nobody: `systemctl
/// status` says what is wrong instead, and the unit does not restart-loop.
pub(crate) async fn run(
    cfg: Config,
    cfg_path: Option<PathBuf>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) -> i32 {
    let mut cfg = cfg;
    let mut reg = crate::metrics::new_registry();
    let m = SpawnerMetrics::new(&mut reg);
    m.queue
        .by_kind
        .set_configured(crate::handlers::Registry::configured_kinds(&cfg));
    let fleet_m = crate::fleet_store::FleetMetrics::register(&mut reg);
    let reg: SharedRegistry = Arc::new(std::sync::Mutex::new(reg));
    let scrape_hook = crate::metrics::HookSlot::default();
    if !cfg.metrics.spawner_listen.is_empty() {
        match cfg.metrics.spawner_listen.parse() {
            Ok(addr) => {
                match crate::metrics::serve_hooked(addr, reg.clone(), scrape_hook.clone()).await {
                    Ok(local) => tracing::info!(listen = %local, "metrics endpoint up"),
                    Err(e) => {
                        tracing::error!(listen = %addr, error = %e, "cannot serve metrics");
                        return crate::exit::UNAVAILABLE;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "metrics.spawner-listen is not IP:PORT");
                return crate::exit::CONFIG;
            }
        }
    }
    let Some(sd) = connect_systemd(&cfg, &mut ctl).await else {
        return crate::exit::OK;
    };
    // One try before READY=1, so the usual start rebuilds state first.
    let queue = match connect_redis(&cfg).await {
        Ok(q) => q,
        Err(e) => {
            tracing::info!(
                user_mode = cfg.spawner.user_mode,
                "peagen-spawnerd ready (waiting for Redis)"
            );
            notify(&[NotifyState::Ready]);
            match wait_for_redis(&mut cfg, cfg_path.as_deref(), &sd, &mut ctl, e).await {
                Some(q) => q,
                None => {
                    notify(&[NotifyState::Stopping]);
                    return crate::exit::OK;
                }
            }
        }
    };
    let queue = Arc::new(queue);
    let _ = scrape_hook.set(pending_hook(queue.clone(), m.queue.by_kind.clone()));
    let (start_tx, mut start_rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    let s = &cfg.spawner;
    let mut sp = Spawner {
        breaker: Breaker::new(
            s.failure_threshold,
            Duration::from_secs(s.backoff_initial_secs),
            Duration::from_secs(s.backoff_max_secs),
        ),
        cfg: cfg.clone(),
        cfg_path,
        sd,
        queue,
        m,
        host: crate::telemetry::hostname(),
        host_id: crate::fleet::host_id(&cfg.spawner.host_id),
        fleet: crate::fleet_store::FleetAgent::new(
            &crate::fleet::host_id(&cfg.spawner.host_id),
            &cfg.redis.tasks_stream,
            fleet_m,
        ),
        mem: Memory::default(),
        idle_since: HashMap::new(),
        busy_until: HashMap::new(),
        starting: HashMap::new(),
        live_prev: HashSet::new(),
        start_tx,
        wake: wake.clone(),
        last_slow_gauges: None,
        last_status: String::new(),
    };
    let mut watcher = spawn_watcher(&sp.sd, wake.clone());
    let (redis_watcher, _) = spawn_queue_watcher(cfg.redis.clone(), wake.clone());
    // First pass before READY=1: state is rebuilt from systemd + Redis.
    if let Err(e) = sp.reconcile().await {
        tracing::warn!(error = %format!("{e:#}"), "first reconcile failed");
    }
    tracing::info!(user_mode = cfg.spawner.user_mode, "peagen-spawnerd ready");
    notify(&[NotifyState::Ready]);
    let watchdog = crate::telemetry::watchdog_interval();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.spawner.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(Duration::from_secs(
        cfg.spawner.reclaim_interval_secs.max(1),
    ));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    loop {
        tokio::select! {
            c = ctl.recv() => match c {
                Some(Control::Reload) => { sp.reload(); continue; }
                Some(Control::Stop) | None => break,
            },
            Some((id, r)) = start_rx.recv() => { sp.on_started(id, r).await; }
            _ = wake.notified() => {}
            _ = tick.tick() => {}
            _ = sweep.tick() => { sp.sweep().await; }
        }
        if watcher.is_finished() {
            tracing::warn!("lost the systemd signal stream; reconnecting");
            match Systemd::connect(sp.cfg.spawner.user_mode).await {
                Ok(sd) => {
                    sp.sd = sd;
                    watcher = spawn_watcher(&sp.sd, wake.clone());
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "systemd reconnect failed"),
            }
        }
        if let Err(e) = sp.reconcile().await {
            tracing::warn!(error = %format!("{e:#}"), "reconcile failed");
            sp.status(format!("degraded: {e:#}"));
        }
        // Pinged after every pass that returned, failed ones included: a
        // wedged loop stops the pings, but a Redis outage or a bad key is not
        // cured by a restart (systemd would give up after StartLimitBurst and
        // leave the host without a spawner once Redis is back).
        // Every pass (one datagram a tick): pinging only every half period
        // let the gap reach half a period plus a tick.
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
    }
    notify(&[NotifyState::Stopping]);
    tracing::info!("stopping; worker units keep running and finish their tasks");
    watcher.abort();
    redis_watcher.abort();
    crate::exit::OK
}

/// What the queue watcher did (for tests and the debug log).
#[derive(Debug, Default)]
pub struct WatcherStats {
    /// Connections made (1 while all goes well; each further one is a reconnect).
    pub connects: std::sync::atomic::AtomicU64,
    /// Wake-ups sent because the stream got new entries.
    pub wakes: std::sync::atomic::AtomicU64,
    /// Invalidation pushes (CLIENT TRACKING mode) received.
    pub invalidations: std::sync::atomic::AtomicU64,
    /// True while the watcher waits by CLIENT TRACKING (false: blocking XREAD).
    pub tracking: std::sync::atomic::AtomicBool,
}

/// Returns only the stream's last generated id (`""` if there is no stream):
/// the watcher learns that entries were added without receiving any entry.
const LAST_ID_SCRIPT: &str = r"
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return '' end
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return ''
";

/// Least time between two checks of the stream in tracking mode.
const MIN_CHECK_GAP: Duration = Duration::from_millis(2);
/// How long the watcher waits before it re-checks the stream on its own (this
/// also proves the connection is alive).
const WATCH_BLOCK_MS: u64 = 5000;

/// Wake the supervisor as soon as a task is added, without copying entries.
///
/// Preferred: RESP3 `CLIENT TRACKING ON` on its own connection. `XLEN` arms
/// the tracking of the stream key, Redis pushes an invalidation when the key
/// changes, and [`LAST_ID_SCRIPT`] tells an added entry (a new last id) from
/// acks and deletions. Nothing crosses the wire but ids and lengths, whatever
/// the entries hold (oversize payloads, non-UTF-8 field names).
/// Fallback when the server or a proxy refuses RESP3 or tracking: a blocking
/// `XREAD COUNT 1` parsed as raw values (only the id is kept; at most one
/// entry per wake-up is transferred, the backlog behind it is skipped by the
/// script). XREAD, not XREADGROUP: it delivers nothing to the group.
pub fn spawn_queue_watcher(
    cfg: crate::config::RedisConfig,
    wake: Arc<Notify>,
) -> (tokio::task::JoinHandle<()>, Arc<WatcherStats>) {
    let stats = Arc::new(WatcherStats::default());
    let st = stats.clone();
    let h = tokio::spawn(async move {
        use std::sync::atomic::Ordering::Relaxed;
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        // Resolved afresh on every reconnect, so a Sentinel failover is followed.
        let target = match crate::redis_target::Target::new(&cfg) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "queue watcher: bad redis config; wake-ups only by tick");
                return;
            }
        };
        let script = redis::Script::new(LAST_ID_SCRIPT);
        let mut use_tracking = true;
        loop {
            let client = match target.client().await {
                Ok(r) => r.client,
                Err(e) => {
                    tracing::debug!(error = %e, "queue watcher: cannot resolve Redis");
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
            };
            st.connects.fetch_add(1, Relaxed);
            let r = if use_tracking {
                watch_tracking(&client, &cfg.tasks_stream, &script, &wake, &st).await
            } else {
                watch_xread(&client, &cfg.tasks_stream, &script, &wake, &st).await
            };
            st.tracking.store(false, Relaxed);
            match r {
                WatchEnd::Unsupported(e) => {
                    tracing::warn!(error = %e, "queue watcher: no RESP3 client tracking (Redis < 6 or a proxy); waiting with XREAD instead");
                    use_tracking = false;
                }
                WatchEnd::Failed(e) => {
                    tracing::debug!(error = %e, "queue watcher: connection failed; reconnecting");
                    tokio::time::sleep(backoff.step()).await;
                    continue;
                }
            }
            backoff.reset();
        }
    });
    (h, stats)
}

/// An answer that says "cannot do that" (not a broken link).
fn refused(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

enum WatchEnd {
    /// The server cannot do this mode; use the other one.
    Unsupported(redis::RedisError),
    /// Connection trouble: reconnect.
    Failed(redis::RedisError),
}

/// Wake when the stream's last generated id moves past `last`; returns the new one.
async fn check_last_id(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    script: &redis::Script,
    last: &mut Option<String>,
    wake: &Notify,
    st: &WatcherStats,
) -> redis::RedisResult<()> {
    // XLEN first: it (re)arms the key's tracking before the id is read, so
    // an entry added in between is seen either here or by the next push.
    let mut p = redis::pipe();
    p.cmd("XLEN").arg(key).ignore();
    p.invoke_script(&script.key(key));
    let (id,): (String,) = match p.query_async(conn).await {
        Ok(v) => v,
        // The pipeline sends EVALSHA; load the script once and retry.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(conn).await?;
            p.query_async(conn).await?
        }
        Err(e) => return Err(e),
    };
    if last.as_deref().is_some_and(|l| l != id) {
        st.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        wake.notify_one();
    }
    *last = Some(id);
    Ok(())
}

async fn watch_tracking(
    client: &redis::Client,
    key: &str,
    script: &redis::Script,
    wake: &Notify,
    st: &WatcherStats,
) -> WatchEnd {
    use std::sync::atomic::Ordering::Relaxed;
    let info = client.get_connection_info().clone();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = match redis::Client::open(info.set_redis_settings(resp3)) {
        Ok(c) => c,
        Err(e) => return WatchEnd::Unsupported(e),
    };
    let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let acfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_millis(WATCH_BLOCK_MS)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_push_sender(tx);
    let mut conn = match client
        .get_multiplexed_async_connection_with_config(&acfg)
        .await
    {
        Ok(c) => c,
        // HELLO 3 refused by an old server or a proxy.
        Err(e) if refused(&e) => return WatchEnd::Unsupported(e),
        Err(e) => return WatchEnd::Failed(e),
    };
    let on: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .query_async(&mut conn)
        .await;
    match on {
        Ok(()) => {}
        Err(e) if refused(&e) => return WatchEnd::Unsupported(e),
        Err(e) => return WatchEnd::Failed(e),
    }
    st.tracking.store(true, Relaxed);
    let mut last = None;
    loop {
        if let Err(e) = check_last_id(&mut conn, key, script, &mut last, wake, st).await {
            return WatchEnd::Failed(e);
        }
        let checked = Instant::now();
        // Any push (an invalidation, or the client's own disconnect notice)
        // means: look again. The timeout re-checks, which also tests the link.
        match tokio::time::timeout(Duration::from_millis(WATCH_BLOCK_MS), pushes.recv()).await {
            Ok(Some(p)) => {
                if p.kind == redis::PushKind::Invalidate {
                    st.invalidations.fetch_add(1, Relaxed);
                }
                // Every finished task's XDEL invalidates too: under load, at
                // most one check per MIN_CHECK_GAP (a push waits that long at most).
                if let Some(rest) = MIN_CHECK_GAP.checked_sub(checked.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
                // Several changes may be queued: one check covers them all.
                while pushes.try_recv().is_ok() {}
            }
            Ok(None) => {
                return WatchEnd::Failed(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "push channel closed",
                )))
            }
            Err(_) => {}
        }
    }
}

/// The entry ids in an XREAD reply, as raw values: field names and values
/// are never decoded (they may be anything a producer wrote).
fn xread_ids(v: &redis::Value) -> Vec<String> {
    use redis::Value as V;
    let streams: Vec<&V> = match v {
        V::Array(a) => a
            .iter()
            .filter_map(|s| match s {
                V::Array(kv) if kv.len() == 2 => Some(&kv[1]),
                _ => None,
            })
            .collect(),
        V::Map(m) => m.iter().map(|(_, e)| e).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|e| match e {
            V::Array(entries) => Some(entries),
            _ => None,
        })
        .flatten()
        .filter_map(|e| match e {
            V::Array(pair) => match pair.first() {
                Some(V::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(V::SimpleString(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn watch_xread(
    client: &redis::Client,
    key: &str,
    script: &redis::Script,
    wake: &Notify,
    st: &WatcherStats,
) -> WatchEnd {
    let acfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_millis(WATCH_BLOCK_MS + 5000)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    let mut conn = match client
        .get_multiplexed_async_connection_with_config(&acfg)
        .await
    {
        Ok(c) => c,
        Err(e) => return WatchEnd::Failed(e),
    };
    let mut last = "$".to_string();
    loop {
        let r: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(WATCH_BLOCK_MS)
            .arg("STREAMS")
            .arg(key)
            .arg(&last)
            .query_async(&mut conn)
            .await;
        match r {
            Ok(v) => {
                if let Some(id) = xread_ids(&v).pop() {
                    st.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    wake.notify_one();
                    // Skip the rest of a burst without reading it.
                    let newest: redis::RedisResult<String> =
                        script.key(key).invoke_async(&mut conn).await;
                    last = match newest {
                        Ok(n) if !n.is_empty() => n,
                        _ => id,
                    };
                }
            }
            Err(e) => return WatchEnd::Failed(e),
        }
    }
}

fn spawn_watcher(sd: &Systemd, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    let sd = sd.clone();
    tokio::spawn(async move {
        if let Err(e) = sd.watch(wake.clone()).await {
            tracing::warn!(error = %format!("{e:#}"), "systemd watch ended");
        }
        wake.notify_one();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_between_two_tasks_counts_busy_within_the_grace() {
        let now = Instant::now();
        let idle = |id: &str| WorkerView {
            id: id.into(),
            state: WorkerState::Idle { since: now },
        };
        let views = vec![
            idle("between-tasks"),
            idle("long-idle"),
            WorkerView {
                id: "busy".into(),
                state: WorkerState::Busy,
            },
            WorkerView {
                id: "stopping".into(),
                state: WorkerState::Stopping,
            },
        ];
        let busy_until = HashMap::from([
            ("between-tasks".to_string(), now + BUSY_GRACE),
            ("long-idle".to_string(), now - Duration::from_millis(1)),
        ]);
        assert_eq!(gauge_counts(&views, &busy_until, now), [0, 1, 2, 1]);
        // After the grace it is idle.
        assert_eq!(
            gauge_counts(&views, &busy_until, now + BUSY_GRACE),
            [0, 2, 1, 1]
        );
    }

    #[test]
    fn only_the_workers_own_error_exit_is_left_uncounted() {
        assert!(!uncounted_failure("exit-code", 1, crate::exit::FAILURE));
        assert!(uncounted_failure("signal", 2, 9), "SIGKILL");
        assert!(uncounted_failure("core-dump", 3, 6), "abort");
        assert!(uncounted_failure("exit-code", 1, 101), "panic");
        assert!(uncounted_failure("exit-code", 1, crate::exit::CONFIG));
        assert!(uncounted_failure("watchdog", 2, 6));
        assert!(uncounted_failure("unknown", 0, 0));
    }
}
