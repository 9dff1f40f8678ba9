//! The fleet record in Redis: each spawner's heartbeat, dead-host detection
//! and the hand-over of a dead host's tasks.
//!
//! Keys (all `<tasks-stream>.fleet*`, so they share the stream's hash tag):
//! - `.fleet`: hash host -> [`HostState`] JSON;
//! - `.fleet.seen`: sorted set host -> last heartbeat (ms, Redis `TIME`);
//! - `.fleet.since`: hash host -> start of its current unbroken run of
//!   heartbeats (ms);
//! - `.fleet.dead`: sorted set host -> when its hand-over was claimed (ms).
//!
//! One script per reconcile writes the caller's heartbeat and returns the
//! live hosts; Redis `TIME` is the only clock. A host silent for longer than
//! `spawner.fleet-host-timeout-ms` drops out of the shares at once. It is
//! declared dead, atomically, by the first caller that has itself heartbeat
//! without a gap for at least that long (so after a Redis outage nobody
//! declares the others dead before they had a chance to come back); that
//! caller re-queues the dead host's consumers' pending entries (attempts+1,
//! [`Queue::requeue_consumer`]) and then drops the claim. A claim not dropped
//! within the timeout (the claimer died too) is handed to the next caller.

use crate::config::{Config, SpawnerConfig};
use crate::fleet::{self, Counts, Host, HostState};
use crate::policy::{Backlog, PolicyConfig, WorkerView};
use crate::queue::{Queue, QueueError, ReclaimReport};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet record in Redis: {0} (is Redis reachable? peagen-spawnerd keeps its current worker count meanwhile)")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Queue(#[from] QueueError),
}

/// Redis keys of the fleet record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKeys {
    pub hosts: String,
    pub seen: String,
    pub since: String,
    pub dead: String,
}

impl FleetKeys {
    pub fn new(tasks_stream: &str) -> Self {
        FleetKeys {
            hosts: format!("{tasks_stream}.fleet"),
            seen: format!("{tasks_stream}.fleet.seen"),
            since: format!("{tasks_stream}.fleet.since"),
            dead: format!("{tasks_stream}.fleet.dead"),
        }
    }
}

/// KEYS: hosts, seen, since, dead. ARGV: host, state JSON, timeout ms.
/// Returns {now ms, {claimed dead hosts}, {{host, state, age ms}...}} with
/// only hosts heard from within the timeout.
const HEARTBEAT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout = tonumber(ARGV[3])
local cut = string.format('%.0f', now - timeout)
local prev = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not prev) or tonumber(prev) < now - timeout or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[3], ARGV[1], now)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local claimed = {}
if now - tonumber(redis.call('HGET', KEYS[3], ARGV[1])) >= timeout then
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. cut)) do
    redis.call('ZREM', KEYS[2], h)
    redis.call('HDEL', KEYS[1], h)
    redis.call('HDEL', KEYS[3], h)
    redis.call('ZADD', KEYS[4], now, h)
    table.insert(claimed, h)
  end
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. cut)) do
    redis.call('ZADD', KEYS[4], now, h)
    table.insert(claimed, h)
  end
end
local hosts = {}
local seen = redis.call('ZRANGEBYSCORE', KEYS[2], cut, '+inf', 'WITHSCORES')
for i = 1, #seen, 2 do
  local st = redis.call('HGET', KEYS[1], seen[i])
  if st then table.insert(hosts, {seen[i], st, now - tonumber(seen[i + 1])}) end
end
return {now, claimed, hosts}
"#;

/// KEYS: hosts, seen, dead. Read-only: {now ms, {{host, state, age ms}...}
/// (expired ones too), {dead hosts whose hand-over is not finished}}.
const SNAPSHOT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hosts = {}
local seen = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #seen, 2 do
  local st = redis.call('HGET', KEYS[1], seen[i])
  if st then table.insert(hosts, {seen[i], st, now - tonumber(seen[i + 1])}) end
end
return {now, hosts, redis.call('ZRANGE', KEYS[3], 0, -1)}
"#;

/// KEYS: seen. ARGV: host. Refresh a live host's heartbeat time only (Redis
/// TIME; no-op for a host not in the fleet), between the steps of a long
/// hand-over, so the host doing it is not taken for dead meanwhile.
const TOUCH_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
"#;

pub async fn touch(q: &Queue, keys: &FleetKeys, host: &str) -> Result<(), FleetError> {
    let _: i64 = redis::Script::new(TOUCH_SCRIPT)
        .key(&keys.seen)
        .arg(host)
        .invoke_async(&mut q.connection())
        .await?;
    Ok(())
}

type RawHost = (String, String, i64);

fn parse_hosts(raw: Vec<RawHost>) -> Vec<Host> {
    raw.into_iter()
        .filter_map(
            |(id, st, age)| match serde_json::from_str::<HostState>(&st) {
                Ok(state) => Some(Host {
                    id,
                    state,
                    age_ms: age.max(0) as u64,
                }),
                Err(e) => {
                    tracing::warn!(host = %id, error = %e, "ignoring a fleet record that is not a host state (other version?)");
                    None
                }
            },
        )
        .collect()
}

/// What one heartbeat returned.
#[derive(Debug, Clone)]
pub struct Beat {
    /// Hosts heard from within the timeout (this one included).
    pub hosts: Vec<Host>,
    /// Dead hosts whose hand-over this caller now owns.
    pub claimed: Vec<String>,
}

/// Write `host`'s heartbeat and read the fleet (one atomic script).
pub async fn heartbeat(
    q: &Queue,
    keys: &FleetKeys,
    host: &str,
    state: &HostState,
    timeout_ms: u64,
) -> Result<Beat, FleetError> {
    let json = serde_json::to_string(state).unwrap_or_default();
    let (_now, claimed, hosts): (i64, Vec<String>, Vec<RawHost>) =
        redis::Script::new(HEARTBEAT_SCRIPT)
            .key(&keys.hosts)
            .key(&keys.seen)
            .key(&keys.since)
            .key(&keys.dead)
            .arg(host)
            .arg(json)
            .arg(timeout_ms)
            .invoke_async(&mut q.connection())
            .await?;
    Ok(Beat {
        hosts: parse_hosts(hosts),
        claimed,
    })
}

/// Re-queue (attempts+1) or dead-letter what the consumers of dead `dead`
/// held, delete those consumers, then drop the claim. `me` is recorded as
/// the host in dead letters.
pub async fn hand_over(
    q: &Queue,
    keys: &FleetKeys,
    dead: &str,
    me: &str,
    max_attempts: u32,
) -> Result<ReclaimReport, FleetError> {
    let mut rep = ReclaimReport::default();
    let why = format!("host {dead} stopped heart-beating");
    for c in q.consumers().await? {
        if fleet::owner_host(&c.name) != Some(dead) {
            continue;
        }
        let r = q.requeue_consumer(&c.name, max_attempts, &why, me).await?;
        tracing::warn!(host = dead, worker_id = %c.name, requeued = r.requeued, dead_lettered = r.dead_lettered, "re-queued the tasks of a dead host's worker");
        rep.add(&r);
        q.delete_consumer_if_empty(&c.name).await?;
        touch(q, keys, me).await?;
    }
    let _: i64 = redis::cmd("ZREM")
        .arg(&keys.dead)
        .arg(dead)
        .query_async(&mut q.connection())
        .await?;
    Ok(rep)
}

/// The fleet gauges of the spawner's endpoint.
#[derive(Clone, Default)]
pub struct FleetMetrics {
    pub hosts: Gauge,
    pub desired: Gauge,
    pub work: Gauge,
}

impl FleetMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = FleetMetrics::default();
        reg.register(
            "fleet_hosts",
            "Hosts whose peagen-spawnerd heartbeat is current (this one included)",
            m.hosts.clone(),
        );
        reg.register(
            "fleet_workers_desired",
            "Worker count the policy wants fleet-wide (this host's scope's count in host scope)",
            m.desired.clone(),
        );
        reg.register(
            "queue_work",
            "Backlog plus in-flight tasks of the queue: the signal for an external autoscaler",
            m.work.clone(),
        );
        m
    }
}

/// One spawner's side of the fleet: heartbeat, share, hand-overs.
pub struct FleetAgent {
    host: String,
    keys: FleetKeys,
    metrics: FleetMetrics,
    /// (share, desired) of the previous pass, published in the heartbeat.
    last: (u32, u32),
    /// Set once this host's own orphans were looked for (first pass).
    adopted: bool,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default)]
pub struct FleetTick {
    /// Workers this host should aim for; `None` when Redis could not be
    /// reached for the heartbeat: keep the current count.
    pub want: Option<u32>,
    /// Tasks of dead hosts re-queued or dead-lettered by this pass.
    pub reclaimed: ReclaimReport,
}

impl FleetAgent {
    pub fn new(host: &str, tasks_stream: &str, metrics: FleetMetrics) -> Self {
        FleetAgent {
            host: host.to_string(),
            keys: FleetKeys::new(tasks_stream),
            metrics,
            last: (0, 0),
            adopted: false,
        }
    }

    /// First pass only: consumers named for this host that hold entries but
    /// are not among its live or starting workers died while no spawner ran
    /// here (a reboot, or the spawner was down when they died). Nobody else
    /// hands them over: this host never stopped heart-beating for longer
    /// than the timeout, or it did and is back. Re-queue them like a dead
    /// worker's.
    async fn adopt_own_orphans(
        &self,
        q: &Queue,
        views: &[WorkerView],
        max_attempts: u32,
    ) -> Result<ReclaimReport, FleetError> {
        let mut rep = ReclaimReport::default();
        let why = "worker gone while its host's spawner was not running";
        for c in q.consumers().await? {
            if c.pending == 0
                || fleet::owner_host(&c.name) != Some(self.host.as_str())
                || views.iter().any(|v| v.id == c.name)
            {
                continue;
            }
            let r = q
                .requeue_consumer(&c.name, max_attempts, why, &self.host)
                .await?;
            tracing::warn!(worker_id = %c.name, requeued = r.requeued, dead_lettered = r.dead_lettered, "re-queued the tasks of a worker of this host that is gone");
            rep.add(&r);
            q.delete_consumer_if_empty(&c.name).await?;
            touch(q, &self.keys, &self.host).await?;
        }
        Ok(rep)
    }

    /// Heartbeat, compute this host's target, hand over dead hosts' tasks.
    pub async fn tick(
        &mut self,
        q: &Queue,
        cfg: &SpawnerConfig,
        backlog: &Backlog,
        views: &[WorkerView],
        max_attempts: u32,
    ) -> FleetTick {
        self.metrics.work.set(backlog.work() as i64);
        let state = HostState {
            max: cfg.max,
            workers: Counts::of(views),
            scope: cfg.scale_scope,
            share: self.last.0,
            desired: self.last.1,
        };
        let beat = match heartbeat(q, &self.keys, &self.host, &state, cfg.fleet_host_timeout_ms)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fleet heartbeat failed; keeping the current worker count");
                return FleetTick::default();
            }
        };
        // Hosts in host scope size themselves: they take no share.
        let hosts: Vec<(String, u32)> = beat
            .hosts
            .iter()
            .filter(|h| h.state.scope == fleet::ScaleScope::Fleet || h.id == self.host)
            .map(|h| (h.id.clone(), h.state.max))
            .collect();
        let (share, desired) = fleet::target(
            cfg.scale_scope,
            &self.host,
            &PolicyConfig::from(cfg),
            backlog,
            &hosts,
        );
        if (share, desired) != self.last {
            tracing::debug!(share, desired, hosts = hosts.len(), "fleet share");
        }
        self.last = (share, desired);
        let n = beat.hosts.len() + usize::from(!beat.hosts.iter().any(|h| h.id == self.host));
        self.metrics.hosts.set(n as i64);
        self.metrics.desired.set(desired as i64);
        let mut reclaimed = ReclaimReport::default();
        if !self.adopted {
            match self.adopt_own_orphans(q, views, max_attempts).await {
                Ok(r) => {
                    reclaimed.add(&r);
                    self.adopted = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "looking for this host's orphaned workers failed; retrying next pass")
                }
            }
        }
        for dead in beat.claimed.iter().filter(|d| **d != self.host) {
            tracing::warn!(host = %dead, "host stopped heart-beating; re-queueing its workers' tasks");
            match hand_over(q, &self.keys, dead, &self.host, max_attempts).await {
                Ok(r) => reclaimed.add(&r),
                Err(e) => {
                    tracing::error!(host = %dead, error = %e, "hand-over of a dead host's tasks failed; another spawner retries after the timeout")
                }
            }
        }
        FleetTick {
            want: Some(share),
            reclaimed,
        }
    }
}

/// Every host in the fleet record (expired ones too, sorted by id) and the
/// dead hosts whose hand-over is not finished. Read-only.
pub async fn snapshot(cfg: &Config, q: &Queue) -> Result<(Vec<Host>, Vec<String>), FleetError> {
    let keys = FleetKeys::new(&cfg.redis.tasks_stream);
    let (_now, hosts, dead): (i64, Vec<RawHost>, Vec<String>) = redis::Script::new(SNAPSHOT_SCRIPT)
        .key(&keys.hosts)
        .key(&keys.seen)
        .key(&keys.dead)
        .invoke_async(&mut q.connection())
        .await?;
    // Sorted by host id (the order shares are dealt in), not Redis hash order.
    let mut hosts = parse_hosts(hosts);
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((hosts, dead))
}

/// The queue and the fleet as an external pool sees them (`peagenctl
/// metrics serve`, `peagenctl autoscale`): read-only.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    #[serde(skip)]
    pub stats: crate::queue::QueueStats,
    /// Backlog plus in flight ([`Backlog::work`]).
    pub work: u64,
    /// Spawner hosts whose heartbeat is current (any scope).
    pub live_hosts: usize,
    /// [`fleet::pool_desired`] for this queue and fleet.
    pub desired: u32,
}

/// Read the queue's stats and the fleet record once and compute the desired
/// count with the spawners' own policy ([`fleet::pool_desired`]).
pub async fn pool_view(cfg: &Config, q: &Queue) -> Result<PoolView, FleetError> {
    let stats = q.stats().await?;
    let timeout = cfg.spawner.fleet_host_timeout_ms;
    let live: Vec<Host> = snapshot(cfg, q)
        .await?
        .0
        .into_iter()
        .filter(|h| h.age_ms <= timeout)
        .collect();
    // Host-scope spawners size themselves for the whole queue; only
    // fleet-scope ones share the fleet's count.
    let sharing: Vec<(String, u32)> = live
        .iter()
        .filter(|h| h.state.scope == fleet::ScaleScope::Fleet)
        .map(|h| (h.id.clone(), h.state.max))
        .collect();
    let backlog = Backlog {
        lag: stats.lag,
        length: stats.length,
        pending: stats.pending,
    };
    let desired = fleet::pool_desired(&PolicyConfig::from(&cfg.spawner), &backlog, &sharing);
    Ok(PoolView {
        work: backlog.work(),
        live_hosts: live.len(),
        desired,
        stats,
    })
}

/// One row of `peagenctl fleet`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    pub host: String,
    /// live | expired (silent longer than the timeout, not yet handed over)
    pub status: &'static str,
    pub heartbeat_age_ms: u64,
    pub scope: fleet::ScaleScope,
    pub workers: Counts,
    pub share: u32,
    pub desired: u32,
    pub max: u32,
}

/// `peagenctl fleet`: the hosts, their heartbeat age, workers by state,
/// share and max. Returns the text to print.
pub async fn ctl_fleet(cfg: &Config, q: &Queue, as_json: bool) -> Result<String, FleetError> {
    let (hosts, dead) = snapshot(cfg, q).await?;
    let timeout = cfg.spawner.fleet_host_timeout_ms;
    let rows: Vec<FleetRow> = hosts
        .into_iter()
        .map(|h| FleetRow {
            status: if h.age_ms > timeout {
                "expired"
            } else {
                "live"
            },
            heartbeat_age_ms: h.age_ms,
            scope: h.state.scope,
            workers: h.state.workers,
            share: h.state.share,
            desired: h.state.desired,
            max: h.state.max,
            host: h.id,
        })
        .collect();
    if as_json {
        let v = serde_json::json!({"hosts": rows, "handing_over": dead});
        return Ok(v.to_string());
    }
    let mut out = format!(
        "{:<24} {:<8} {:>8} {:>8} {:>5} {:>5} {:>5} {:>5} {:>6} {:>5} {:>7}\n",
        "host",
        "status",
        "age",
        "scope",
        "start",
        "idle",
        "busy",
        "stop",
        "share",
        "max",
        "desired"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<24} {:<8} {:>7.1}s {:>8} {:>5} {:>5} {:>5} {:>5} {:>6} {:>5} {:>7}\n",
            r.host,
            r.status,
            r.heartbeat_age_ms as f64 / 1000.0,
            match r.scope {
                fleet::ScaleScope::Fleet => "fleet",
                fleet::ScaleScope::Host => "host",
            },
            r.workers.starting,
            r.workers.idle,
            r.workers.busy,
            r.workers.stopping,
            r.share,
            r.max,
            r.desired
        ));
    }
    let live = rows.iter().filter(|r| r.status == "live");
    out.push_str(&format!(
        "{} live host(s), {} worker(s) fleet-wide",
        live.clone().count(),
        live.map(|r| r.workers.capacity()).sum::<u32>()
    ));
    for d in dead {
        out.push_str(&format!("\nhanding over the tasks of dead host {d}"));
    }
    Ok(out)
}
