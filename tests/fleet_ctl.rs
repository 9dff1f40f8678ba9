//! The pieces for pools without systemd, against a real redis-server and
//! the real `peagenctl` binary: the metrics exporter (`metrics serve`), the
//! autoscaler (`autoscale --print-desired`, `autoscale --compose` driving a
//! recording stand-in `docker`: Docker is not installed here, so the real
//! `docker compose` was never run by these tests), and `workers` across
//! hosts.

mod support;

use peagen_fabric::config::Config;
use peagen_fabric::fleet::{Counts, HostState, ScaleScope};
use peagen_fabric::fleet_store::{heartbeat, FleetKeys};
use peagen_fabric::queue::Queue;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{bin, ctl, ctl_ok, eventually, scrape, Killed, Redis};

const LONG: Duration = Duration::from_secs(60);

/// tasks-per-worker 2, max 16, no warm pool, min 0; hosts stay live for
/// 10 minutes (no test depends on a heartbeat's age).
fn config(dir: &Path, extra: &str) -> PathBuf {
    support::write_config(
        dir,
        &format!(
            "[spawner]\nmin = 0\nmax = 16\nwarm-pool = 0\ntasks-per-worker = 2\nfleet-host-timeout-ms = 600000\n{extra}"
        ),
    )
}

fn push_n(r: &Redis, cfg: &Path, n: u32) {
    ctl_ok(
        r,
        Some(cfg),
        &["push", "--kind", "echo", "--count", &n.to_string()],
    );
}

/// `peagenctl metrics serve --listen 127.0.0.1:0 --interval-ms 200 EXTRA..`:
/// the running exporter and the address it printed on its first line.
fn serve(r: &Redis, cfg: &std::path::Path, extra: &[&str]) -> (Killed, String) {
    let mut child = Command::new(bin("peagenctl"))
        .arg("--config")
        .arg(cfg)
        .args(["metrics", "serve", "--listen", "127.0.0.1:0"])
        .args(["--interval-ms", "200"])
        .args(extra)
        .env("PEAGEN_REDIS_URL", r.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let p = Killed(child);
    let addr = first
        .trim()
        .strip_prefix("serving http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_string();
    (p, addr)
}

/// The value of an unlabelled sample `name` in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Every exported `peagen_*` name is in the metric contract.
fn assert_in_contract(scrape: &str) {
    let contract = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus/metric-names.txt"),
    )
    .unwrap();
    let names: Vec<&str> = contract
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    for line in scrape.lines().filter(|l| l.starts_with("peagen_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|b| names.contains(b)))
            .unwrap_or(name);
        assert!(names.contains(&base), "{name} is not in metric-names.txt");
    }
}

async fn beat(r: &Redis, host: &str, max: u32) {
    let mut rc = Config::default().redis;
    rc.url = r.url();
    let q = Queue::connect(&rc).await.unwrap();
    let st = HostState {
        max,
        workers: Counts::default(),
        scope: ScaleScope::Fleet,
        share: 0,
        desired: 0,
    };
    heartbeat(&q, &FleetKeys::new("peagen.tasks"), host, &st, 600_000)
        .await
        .unwrap();
}

/// `peagenctl metrics serve` exports the unlabelled queue-work gauge and the
/// fleet gauges from Redis, follows the queue, and computes the fleet's
/// desired count as the spawners do once a spawner host heartbeats.
#[test]
fn metrics_serve_exports_queue_work_and_fleet_gauges() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    push_n(&r, &cfg, 10);
    let (_p, addr) = serve(&r, &cfg, &[]);
    let m = scrape(&addr);
    assert_eq!(sample(&m, "peagen_queue_work"), Some(10.0), "{m}");
    assert_eq!(sample(&m, "peagen_fleet_hosts"), Some(0.0), "{m}");
    // No spawner host: the policy with this config, 10 / 2.
    assert_eq!(sample(&m, "peagen_fleet_workers_desired"), Some(5.0), "{m}");
    assert_eq!(sample(&m, "peagen_exporter_redis_up"), Some(1.0), "{m}");
    assert!(
        m.contains("peagen_queue_pending_total{kind=\"echo\"} 10"),
        "{m}"
    );
    assert!(
        m.contains("peagen_redis_queue_pending{stream=\"peagen.tasks\"} 0"),
        "{m}"
    );
    assert_in_contract(&m);
    // The queue grows: the next reads follow it.
    push_n(&r, &cfg, 10);
    eventually(LONG, "queue work 20, desired 10", || {
        let m = scrape(&addr);
        sample(&m, "peagen_queue_work") == Some(20.0)
            && sample(&m, "peagen_fleet_workers_desired") == Some(10.0)
    });
    // A spawner host with max 4 joins: the fleet's count is capped by the
    // hosts' max, as each spawner computes it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(beat(&r, "box-a", 4));
    eventually(LONG, "one host, desired 4", || {
        let m = scrape(&addr);
        sample(&m, "peagen_fleet_hosts") == Some(1.0)
            && sample(&m, "peagen_fleet_workers_desired") == Some(4.0)
    });
}

#[test]
fn metrics_serve_and_autoscale_exit_69_without_redis_and_78_on_bad_config() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let port = support::free_port().to_string();
    for args in [
        vec!["metrics", "serve", "--listen", "127.0.0.1:0"],
        vec!["autoscale", "--print-desired"],
        vec!["autoscale", "--compose", "worker"],
    ] {
        let o = Command::new(bin("peagenctl"))
            .arg("--config")
            .arg(&cfg)
            .args(&args)
            .env("PEAGEN_REDIS_URL", format!("redis://127.0.0.1:{port}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(69), "{args:?}: {err}");
        assert!(err.contains(&port), "names the Redis address: {err}");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[spawner]\ntasks-per-worker = 0\n").unwrap();
    for args in [
        vec!["metrics", "serve"],
        vec!["autoscale", "--print-desired"],
    ] {
        let o = ctl(&r, Some(&bad), &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(78), "{args:?}: {err}");
        assert!(err.contains("tasks-per-worker"), "{err}");
    }
}

/// `autoscale --print-desired` prints the spawners' count for the live
/// queue: the seed's max(1, min(32, work / 2)) with min 1, max 32.
#[test]
fn autoscale_print_desired_follows_the_queue() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::write_config(
        dir.path(),
        "[spawner]\nmin = 1\nmax = 32\nwarm-pool = 0\ntasks-per-worker = 2\n",
    );
    let desired = || {
        ctl_ok(&r, Some(&cfg), &["autoscale", "--print-desired"])
            .trim()
            .to_string()
    };
    assert_eq!(desired(), "1", "empty queue: min");
    push_n(&r, &cfg, 11);
    assert_eq!(desired(), "5");
    push_n(&r, &cfg, 100);
    assert_eq!(desired(), "32", "capped by max");
    let v: serde_json::Value = serde_json::from_str(&ctl_ok(
        &r,
        Some(&cfg),
        &["--json", "autoscale", "--print-desired"],
    ))
    .unwrap();
    assert_eq!(v["work"], 111);
    assert_eq!(v["desired"], 32);
    assert_eq!(v["live_hosts"], 0);
    // --watch prints it again every interval, following the queue.
    r.cli(&["DEL", "peagen.tasks"]);
    let mut child = Command::new(bin("peagenctl"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "autoscale",
            "--print-desired",
            "--watch",
            "--interval-ms",
            "200",
        ])
        .env("PEAGEN_REDIS_URL", r.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _p = Killed(child);
    assert_eq!(lines.next().unwrap().unwrap(), "1", "no stream: min");
    push_n(&r, &cfg, 8);
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("4") {
        seen.push(lines.next().expect("watch output ended").unwrap());
        // A bound on a hang (about a minute of output), not a timing check.
        assert!(seen.len() < 300, "{seen:?}");
    }
}

/// A stand-in `docker` first on PATH: records every call, keeps the
/// replica count in a file (`up --scale S=N` sets it, `ps -q` prints that
/// many ids), as `docker compose` would.
fn stand_in_docker(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let log = dir.join("docker.log");
    let state = dir.join("replicas");
    std::fs::write(&state, "0").unwrap();
    let script = format!(
        r#"#!/bin/sh
echo "$*" >> '{log}'
n=$(cat '{state}')
for a in "$@"; do
  case "$a" in
    ps) i=0; while [ "$i" -lt "$n" ]; do echo "container$i"; i=$((i+1)); done; exit 0 ;;
    *=*) echo "${{a#*=}}" > '{state}' ;;
  esac
done
exit 0
"#,
        log = log.display(),
        state = state.display()
    );
    let p = bin_dir.join("docker");
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin_dir, log, state)
}

/// `autoscale --compose worker` runs `docker compose up -d --no-recreate
/// --scale worker=N` with the policy's count: up when work arrives, back
/// up when replicas vanish, down when the queue empties (window 0 here; the
/// window itself is unit-tested in src/ctl/autoscale.rs); with `--reclaim` it
/// re-queues what a dead container held.
#[test]
fn autoscale_compose_scales_the_service_with_the_policy() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::write_config(
        dir.path(),
        "[spawner]\nmin = 1\nmax = 32\nwarm-pool = 0\ntasks-per-worker = 2\nscale-down-window-secs = 0\nreclaim-min-idle-ms = 200\nreclaim-interval-secs = 1\n",
    );
    let (bin_dir, log, state) = stand_in_docker(dir.path());
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    push_n(&r, &cfg, 10);
    // A container that died holding a task (--reclaim re-queues it).
    r.cli(&[
        "XREADGROUP",
        "GROUP",
        "peagen",
        "gone-ctr",
        "COUNT",
        "1",
        "STREAMS",
        "peagen.tasks",
        ">",
    ]);
    let compose_file = dir.path().join("docker-compose.yml");
    let _p = Killed(
        Command::new(bin("peagenctl"))
            .arg("--config")
            .arg(&cfg)
            .args([
                "autoscale",
                "--compose",
                "worker",
                "--interval-ms",
                "200",
                "--reclaim",
            ])
            .args(["--project", "peagen"])
            .arg("--compose-file")
            .arg(&compose_file)
            .env("PEAGEN_REDIS_URL", r.url())
            .env("PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let cf = compose_file.display().to_string();
    eventually(LONG, "scaled to 5 for 10 tasks", || {
        read(&state).trim() == "5"
    });
    let calls = read(&log);
    assert!(
        calls.contains(&format!(
            "compose -f {cf} -p peagen up -d --no-recreate --scale worker=5"
        )),
        "{calls}"
    );
    assert!(
        calls.contains(&format!("compose -f {cf} -p peagen ps -q worker")),
        "{calls}"
    );
    eventually(LONG, "the dead container's task re-queued", || {
        r.cli(&["XPENDING", "peagen.tasks", "peagen"])
            .lines()
            .next()
            == Some("0")
    });
    // Two replicas die: the next pass sees 3 running and scales back to 5.
    std::fs::write(&state, "3").unwrap();
    eventually(LONG, "back to 5 after replicas vanished", || {
        read(&state).trim() == "5" && read(&log).matches("--scale worker=5").count() >= 2
    });
    // A real worker runs the tasks, the queue empties: down to min 1.
    let mut w = support::WorkerProc::start(&r, &cfg, "drainer", &[]);
    eventually(LONG, "scaled down to 1", || read(&state).trim() == "1");
    w.kill9();
    assert!(read(&log).contains("--scale worker=1"));
}

#[test]
fn autoscale_compose_without_docker_exits_69() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = Command::new(bin("peagenctl"))
        .arg("--config")
        .arg(&cfg)
        .args(["autoscale", "--compose", "worker"])
        .env("PEAGEN_REDIS_URL", r.url())
        .env("PATH", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("docker"), "{err}");
}

/// `peagenctl workers` lists the workers of every host sharing the queue,
/// with the host from the consumer name and its status from the fleet
/// record.
#[test]
fn workers_lists_every_hosts_workers() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "host-id = \"box-here\"\n");
    push_n(&r, &cfg, 3);
    let a = format!("box-a-{}", uuid::Uuid::new_v4());
    let b = format!("box-b-{}", uuid::Uuid::new_v4());
    // Each takes one task, as a worker of that host would.
    for c in [&a, &b] {
        r.cli(&[
            "XREADGROUP",
            "GROUP",
            "peagen",
            c,
            "COUNT",
            "1",
            "STREAMS",
            "peagen.tasks",
            ">",
        ]);
    }
    r.cli(&[
        "XGROUP",
        "CREATECONSUMER",
        "peagen.tasks",
        "peagen",
        "pod-7f9c",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(beat(&r, "box-a", 4));
    let v: serde_json::Value =
        serde_json::from_str(&ctl_ok(&r, Some(&cfg), &["--json", "workers"])).unwrap();
    let rows: Vec<(String, String, String, String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["host"].as_str().unwrap_or("-").to_string(),
                w["host_status"].as_str().unwrap().to_string(),
                w["worker_id"].as_str().unwrap().to_string(),
                w["state"].as_str().unwrap().to_string(),
                w["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "-".into(),
                "none".into(),
                "pod-7f9c".into(),
                "idle".into(),
                0
            ),
            ("box-a".into(), "live".into(), a.clone(), "busy".into(), 1),
            ("box-b".into(), "none".into(), b.clone(), "busy".into(), 1),
        ]
    );
    assert!(v[1]["current_task"].as_str().is_some(), "{v}");
    let text = ctl_ok(&r, Some(&cfg), &["workers"]);
    let line = text.lines().find(|l| l.contains(&b)).unwrap();
    assert!(line.starts_with("box-b "), "{text}");
}

/// Without a spawner nobody re-queues what a gone worker held: `metrics
/// serve --reclaim` runs the spawner's orphan sweep (attempts+1).
#[test]
fn metrics_serve_reclaim_requeues_a_gone_workers_task() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "reclaim-min-idle-ms = 200\nreclaim-interval-secs = 1\n",
    );
    push_n(&r, &cfg, 1);
    // A worker (a deleted pod) took it and is gone.
    r.cli(&[
        "XREADGROUP",
        "GROUP",
        "peagen",
        "gone-pod",
        "COUNT",
        "1",
        "STREAMS",
        "peagen.tasks",
        ">",
    ]);
    let pending = || {
        r.cli(&["XPENDING", "peagen.tasks", "peagen"])
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    };
    assert_eq!(pending(), "1");
    let (_p, _) = serve(&r, &cfg, &["--reclaim"]);
    let task = eventually(LONG, "the task re-queued with attempts 1", || {
        let d = r.stream_data("peagen.tasks");
        (pending() == "0" && d.len() == 1 && d[0]["attempts"] == 1).then(|| d[0].clone())
    });
    assert_eq!(task["kind"], "echo");
}

/// `metrics serve --worker-counters` exports the workers' counters summed
/// over every host's hash: a real worker's and another pod's.
#[test]
fn metrics_serve_sums_the_workers_counters() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    push_n(&r, &cfg, 3);
    // Another pod's flushed counters.
    r.cli(&[
        "HSET",
        "peagen.tasks.metrics.pod-b",
        "peagen_tasks_total{kind=\"echo\",status=\"ok\"}",
        "2",
    ]);
    let mut w = support::WorkerProc::start(&r, &cfg, "counting-worker", &[]);
    let (_p, addr) = serve(&r, &cfg, &["--worker-counters"]);
    eventually(LONG, "3 + 2 echo tasks counted", || {
        scrape(&addr).contains("peagen_tasks_total{kind=\"echo\",status=\"ok\"} 5\n")
    });
    assert_in_contract(&scrape(&addr));
    w.kill9();
}
