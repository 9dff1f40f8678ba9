//! Fleet-wide sizing and the dead-host hand-over against a real
//! redis-server, with several spawner *logic* instances (the heartbeat
//! script, the share, the policy's decision; workers simulated) in one
//! process, one per pretended host. The 3-systemd-box version is not here.

mod support;

use peagen_fabric::config::{Config, SpawnerConfig};
use peagen_fabric::fleet::{self, Counts};
use peagen_fabric::fleet_store::{FleetAgent, FleetMetrics, FleetTick};
use peagen_fabric::policy::{self, Backlog, Memory, PolicyConfig, WorkerState, WorkerView};
use peagen_fabric::queue::Queue;
use peagen_fabric::task::Task;
use std::time::{Duration, Instant};
use support::{ctl_ok, Redis};

/// One host's spawner logic: its agent, the policy's memory, and simulated
/// workers (a started worker is `Starting` for one pass, then busy).
struct SimHost {
    agent: FleetAgent,
    cfg: SpawnerConfig,
    views: Vec<WorkerView>,
    mem: Memory,
    n: u32,
}

impl SimHost {
    fn new(host: &str, cfg: &SpawnerConfig) -> Self {
        SimHost {
            agent: FleetAgent::new(host, "peagen.tasks", FleetMetrics::default()),
            cfg: cfg.clone(),
            views: Vec::new(),
            mem: Memory::default(),
            n: 0,
        }
    }

    fn capacity(&self) -> u32 {
        Counts::of(&self.views).capacity()
    }

    /// One reconcile pass as the spawner does it.
    async fn pass(&mut self, q: &Queue, backlog: &Backlog, work_left: bool) -> FleetTick {
        let now = Instant::now();
        for v in &mut self.views {
            v.state = if work_left {
                WorkerState::Busy
            } else {
                // Idle long enough to be stopped at once (window/timeout 0).
                WorkerState::Idle {
                    since: now - Duration::from_secs(3600),
                }
            };
        }
        let ft = self.agent.tick(q, &self.cfg, backlog, &self.views, 3).await;
        let want = ft.want.unwrap_or_else(|| self.capacity());
        let d = policy::decide_towards(
            &PolicyConfig::from(&self.cfg),
            want,
            &self.views,
            self.mem,
            u32::MAX,
            now,
        );
        self.mem = d.memory;
        self.views.retain(|v| !d.stop.contains(&v.id));
        for _ in 0..d.start {
            self.n += 1;
            self.views.push(WorkerView {
                id: format!("w{}", self.n),
                state: WorkerState::Starting,
            });
        }
        ft
    }
}

fn spawner_cfg(max: u32, warm: u32) -> SpawnerConfig {
    SpawnerConfig {
        max,
        warm_pool: warm,
        tasks_per_worker: 2,
        max_starts_per_tick: 8,
        scale_down_window_secs: 0,
        idle_timeout_secs: 0,
        fleet_host_timeout_ms: 1500,
        ..SpawnerConfig::default()
    }
}

fn backlog_of(st: &peagen_fabric::queue::QueueStats) -> Backlog {
    Backlog {
        lag: st.lag,
        length: st.length,
        pending: st.pending,
    }
}

async fn connect(r: &Redis) -> Queue {
    let mut cfg = Config::default().redis;
    cfg.url = r.url();
    let q = Queue::connect(&cfg).await.unwrap();
    q.ensure_group().await.unwrap();
    q
}

/// The burst: 40 tasks, max 16 per host, 2 tasks per worker, warm
/// pool 0, three hosts: 20 workers fleet-wide (7+7+6), never more, where
/// host scope would run 16 on each (48). Then the queue drains: a warm pool
/// of 2 leaves 2 idle workers in the whole fleet, not 2 per host.
#[test]
fn three_spawners_size_the_fleet_once() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let cfg = spawner_cfg(16, 0);
        let mut hosts: Vec<SimHost> = ["box-a", "box-b", "box-c"]
            .iter()
            .map(|h| SimHost::new(h, &cfg))
            .collect();
        // Spawners heartbeat every tick, also while the queue is empty.
        for h in &mut hosts {
            h.pass(&q, &Backlog::default(), false).await;
        }
        for i in 0..40 {
            q.push(&Task::new("echo", serde_json::json!({ "i": i })))
                .await
                .unwrap();
        }
        let mut peak = 0;
        for _ in 0..6 {
            let b = backlog_of(&q.stats().await.unwrap());
            assert_eq!(b.work(), 40);
            for i in 0..hosts.len() {
                hosts[i].pass(&q, &b, true).await;
                peak = peak.max(hosts_total(&hosts_caps(&hosts)));
            }
        }
        let caps = hosts_caps(&hosts);
        assert_eq!(caps, vec![7, 7, 6], "shares in host-id order");
        assert_eq!(peak, 20, "fleet peak");

        // The same in host scope: every host sizes itself for the queue.
        let mut hcfg = cfg.clone();
        hcfg.scale_scope = fleet::ScaleScope::Host;
        let mut solo: Vec<SimHost> = ["solo-a", "solo-b", "solo-c"]
            .iter()
            .map(|h| SimHost::new(h, &hcfg))
            .collect();
        let b = backlog_of(&q.stats().await.unwrap());
        for _ in 0..3 {
            for h in &mut solo {
                h.pass(&q, &b, true).await;
            }
        }
        assert_eq!(hosts_caps(&solo), vec![16, 16, 16]);

        // Drained queue, warm pool 2: two idle workers fleet-wide.
        for h in &mut hosts {
            h.cfg.warm_pool = 2;
        }
        for _ in 0..3 {
            for h in &mut hosts {
                h.pass(&q, &Backlog::default(), false).await;
            }
        }
        assert_eq!(hosts_caps(&hosts), vec![1, 1, 0]);
    });
}

fn hosts_caps(hs: &[SimHost]) -> Vec<u32> {
    hs.iter().map(SimHost::capacity).collect()
}

fn hosts_total(caps: &[u32]) -> u32 {
    caps.iter().sum()
}

/// A host that cannot take its share leaves it to the others; a host that
/// joins takes a share and the others give theirs back (idle workers only).
#[test]
fn capped_and_joining_hosts() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let mut a = SimHost::new("a", &spawner_cfg(2, 0));
        let mut b = SimHost::new("b", &spawner_cfg(16, 0));
        let work = Backlog {
            lag: Some(40),
            length: 40,
            pending: 0,
        };
        for _ in 0..4 {
            a.pass(&q, &work, true).await;
            b.pass(&q, &work, true).await;
        }
        assert_eq!((a.capacity(), b.capacity()), (2, 16));
        let mut c = SimHost::new("c", &spawner_cfg(16, 0));
        let less = Backlog {
            lag: Some(20),
            length: 20,
            pending: 0,
        };
        // Workers idle now (the burst is half done): b gives back to c.
        for _ in 0..4 {
            a.pass(&q, &less, false).await;
            b.pass(&q, &less, false).await;
            c.pass(&q, &less, false).await;
        }
        assert_eq!((a.capacity(), b.capacity(), c.capacity()), (2, 4, 4));
    });
}

/// A host's heartbeat expires: one survivor (and only one) re-queues what
/// that host's workers held, with attempts+1, and deletes their consumers;
/// the fleet shrinks to the survivors and their shares grow. A spawner that
/// itself has not heart-beaten for a whole timeout (just started, or back
/// from a Redis outage) does not declare anybody dead.
#[test]
fn dead_host_tasks_are_requeued_once_by_a_survivor() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let cfg = spawner_cfg(16, 0);
        let mut dead = SimHost::new("box-dead", &cfg);
        let mut s1 = SimHost::new("box-s1", &cfg);
        let b0 = Backlog::default();
        dead.pass(&q, &b0, false).await;
        s1.pass(&q, &b0, false).await;
        // Two workers of the doomed host hold three tasks; one of the
        // survivor's workers holds one.
        let wd1 = fleet::worker_id("box-dead", &uuid::Uuid::new_v4());
        let wd2 = fleet::worker_id("box-dead", &uuid::Uuid::new_v4());
        let ws = fleet::worker_id("box-s1", &uuid::Uuid::new_v4());
        for i in 0..4 {
            q.push(&Task::new("echo", serde_json::json!({ "i": i })))
                .await
                .unwrap();
        }
        assert_eq!(q.read(&wd1, 2, false).await.unwrap().len(), 2);
        assert_eq!(q.read(&wd2, 1, false).await.unwrap().len(), 1);
        assert_eq!(q.read(&ws, 1, false).await.unwrap().len(), 1);

        // box-dead goes silent. s1 keeps its heartbeat; s2 joins late.
        let started = Instant::now();
        let mut s2: Option<SimHost> = None;
        let mut requeued = [0u64; 2];
        while requeued.iter().sum::<u64>() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nobody took over box-dead's tasks"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s2.is_none() && started.elapsed() > Duration::from_millis(1000) {
                s2 = Some(SimHost::new("box-s2", &cfg));
            }
            requeued[0] += s1.pass(&q, &b0, false).await.reclaimed.requeued;
            if let Some(s) = &mut s2 {
                requeued[1] += s.pass(&q, &b0, false).await.reclaimed.requeued;
            }
        }
        // Only the survivor with an unbroken run of heartbeats could claim.
        assert_eq!(requeued, [3, 0]);
        for _ in 0..3 {
            requeued[0] += s1.pass(&q, &b0, false).await.reclaimed.requeued;
            requeued[1] += s2
                .as_mut()
                .unwrap()
                .pass(&q, &b0, false)
                .await
                .reclaimed
                .requeued;
        }
        assert_eq!(requeued, [3, 0], "handed over exactly once");
        let consumers: Vec<(String, u64)> = q
            .consumers()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.pending))
            .collect();
        assert_eq!(
            consumers,
            vec![(ws.clone(), 1)],
            "dead host's consumers gone"
        );
        let st = q.stats().await.unwrap();
        assert_eq!((st.length, st.pending), (4, 1));
        let attempts: Vec<u64> = r
            .stream_data("peagen.tasks")
            .iter()
            .map(|v| v["attempts"].as_u64().unwrap_or(0))
            .collect();
        let mut sorted = attempts.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 1, 1], "re-queued with attempts+1");
        assert_eq!(r.int(&["ZCARD", "peagen.tasks.fleet.dead"]), 0);
        assert_eq!(r.int(&["HEXISTS", "peagen.tasks.fleet", "box-dead"]), 0);

        // The two survivors now split the whole fleet's count.
        let work = Backlog {
            lag: Some(40),
            length: 40,
            pending: 0,
        };
        let s2 = s2.as_mut().unwrap();
        for _ in 0..4 {
            s1.pass(&q, &work, true).await;
            s2.pass(&q, &work, true).await;
        }
        assert_eq!((s1.capacity(), s2.capacity()), (10, 10));
    });
}

/// Everybody silent past the timeout (a Redis outage, say): the first host
/// back must not declare the others dead; they come back and nothing of
/// theirs is re-queued.
#[test]
fn after_a_fleet_wide_silence_nobody_is_declared_dead() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let cfg = spawner_cfg(16, 0);
        let mut a = SimHost::new("a", &cfg);
        let mut b = SimHost::new("b", &cfg);
        let b0 = Backlog::default();
        // Long enough unbroken runs that both could claim.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(2000) {
            a.pass(&q, &b0, false).await;
            b.pass(&q, &b0, false).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let wb = fleet::worker_id("b", &uuid::Uuid::new_v4());
        q.push(&Task::new("echo", serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(q.read(&wb, 1, false).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let ra = a.pass(&q, &b0, false).await;
        let rb = b.pass(&q, &b0, false).await;
        assert_eq!(ra.reclaimed.requeued + rb.reclaimed.requeued, 0);
        assert_eq!(r.int(&["ZCARD", "peagen.tasks.fleet.seen"]), 2);
        assert_eq!(q.stats().await.unwrap().pending, 1);
    });
}

/// With Redis gone the heartbeat fails and the host holds its count.
#[test]
fn redis_unreachable_keeps_the_current_count() {
    let mut r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let mut a = SimHost::new("a", &spawner_cfg(16, 0));
        let work = Backlog {
            lag: Some(10),
            length: 10,
            pending: 0,
        };
        a.pass(&q, &work, true).await;
        assert_eq!(a.capacity(), 5);
        r.kill();
        let ft = a.pass(&q, &Backlog::default(), false).await;
        assert_eq!(ft.want, None);
        assert_eq!(a.capacity(), 5, "no scale-down without the fleet record");
    });
}

/// `peagenctl fleet --json` lists the hosts with their share and max.
#[test]
fn peagenctl_fleet_lists_hosts() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let mut a = SimHost::new("box-a", &spawner_cfg(16, 0));
        let mut b = SimHost::new("box-b", &spawner_cfg(4, 0));
        let work = Backlog {
            lag: Some(30),
            length: 30,
            pending: 0,
        };
        for _ in 0..3 {
            a.pass(&q, &work, true).await;
            b.pass(&q, &work, true).await;
        }
    });
    let v: serde_json::Value =
        serde_json::from_str(&ctl_ok(&r, None, &["fleet", "--json"])).unwrap();
    let hosts = v["hosts"].as_array().unwrap();
    let row = |i: usize| {
        let h = &hosts[i];
        (
            h["host"].as_str().unwrap().to_string(),
            h["status"].as_str().unwrap().to_string(),
            h["share"].as_u64().unwrap(),
            h["max"].as_u64().unwrap(),
            h["workers"]["busy"].as_u64().unwrap() + h["workers"]["starting"].as_u64().unwrap(),
            h["desired"].as_u64().unwrap(),
        )
    };
    let mut rows: Vec<_> = (0..hosts.len()).map(row).collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("box-a".into(), "live".into(), 11, 16, 11, 15),
            ("box-b".into(), "live".into(), 4, 4, 4, 15),
        ]
    );
    let text = ctl_ok(&r, None, &["fleet"]);
    assert!(
        text.contains("2 live host(s), 15 worker(s) fleet-wide"),
        "{text}"
    );
}

/// A spawner (re)starting on a host re-queues what this host's workers held
/// if their units are gone (the host rebooted within the timeout, or was
/// alone): not its live workers', not other hosts'. Once.
#[test]
fn a_restarted_spawner_requeues_its_own_gone_workers_tasks() {
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let gone = fleet::worker_id("h", &uuid::Uuid::new_v4());
        let alive = fleet::worker_id("h", &uuid::Uuid::new_v4());
        let other = fleet::worker_id("x", &uuid::Uuid::new_v4());
        for i in 0..4 {
            q.push(&Task::new("echo", serde_json::json!({ "i": i })))
                .await
                .unwrap();
        }
        assert_eq!(q.read(&gone, 2, false).await.unwrap().len(), 2);
        assert_eq!(q.read(&alive, 1, false).await.unwrap().len(), 1);
        assert_eq!(q.read(&other, 1, false).await.unwrap().len(), 1);
        let mut h = SimHost::new("h", &spawner_cfg(16, 0));
        h.views.push(WorkerView {
            id: alive.clone(),
            state: WorkerState::Busy,
        });
        let busy = Backlog {
            lag: Some(0),
            length: 4,
            pending: 4,
        };
        let first = h.pass(&q, &busy, true).await;
        assert_eq!(first.reclaimed.requeued, 2);
        assert_eq!(h.pass(&q, &busy, true).await.reclaimed.requeued, 0);
        let mut consumers: Vec<(String, u64)> = q
            .consumers()
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.pending))
            .collect();
        consumers.sort();
        let mut expect = vec![(alive, 1), (other, 1)];
        expect.sort();
        assert_eq!(consumers, expect);
        let mut attempts: Vec<u64> = r
            .stream_data("peagen.tasks")
            .iter()
            .map(|v| v["attempts"].as_u64().unwrap_or(0))
            .collect();
        attempts.sort();
        assert_eq!(attempts, vec![0, 0, 1, 1]);
    });
}

/// The touch between hand-over steps refreshes a member's heartbeat time
/// and never adds a host.
#[test]
fn touch_refreshes_members_only() {
    use peagen_fabric::fleet_store::{touch, FleetKeys};
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = connect(&r).await;
        let mut h = SimHost::new("h", &spawner_cfg(4, 0));
        h.pass(&q, &Backlog::default(), false).await;
        let seen = || r.int(&["ZSCORE", "peagen.tasks.fleet.seen", "h"]);
        let before = seen();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let keys = FleetKeys::new("peagen.tasks");
        touch(&q, &keys, "h").await.unwrap();
        assert!(seen() > before);
        touch(&q, &keys, "ghost").await.unwrap();
        assert_eq!(r.int(&["ZCARD", "peagen.tasks.fleet.seen"]), 1);
    });
}
