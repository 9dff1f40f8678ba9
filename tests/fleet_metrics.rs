//! Worker metrics reach Redis: a real worker flushes its counters into the
//! per-host hash the spawner exports; a flush during a Redis outage keeps its
//! deltas for the next one.

mod support;

use peagen_fabric::config::RedisConfig;
use peagen_fabric::metrics::{
    labels, new_registry, render, FleetCollector, FleetSink, WorkerMetrics,
};
use peagen_fabric::queue::Queue;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(30);

/// The spawner's collector fed with the hash, rendered.
fn exported(r: &Redis, key: &str) -> String {
    let raw = r.cli(&["HGETALL", key]);
    let items: Vec<&str> = raw.lines().collect();
    let snap = items
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect();
    let mut reg = new_registry();
    let c = FleetCollector::default();
    reg.register_collector(Box::new(c.clone()));
    c.set(snap);
    render(&reg)
}

#[test]
fn worker_flushes_counters_and_exit_reason_to_the_host_hash() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nmax-uptime-secs = 0\n[[handlers.command]]\nkind = \"fail\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"exit 3\"]\n",
    );
    for i in 0..3 {
        ctl_ok(
            &r,
            Some(&cfg),
            &[
                "push",
                "--kind",
                "echo",
                "--payload",
                &format!("{{\"n\":{i}}}"),
            ],
        );
    }
    ctl_ok(
        &r,
        Some(&cfg),
        &["push", "--kind", "fail", "--payload", "{}"],
    );
    let mut w = WorkerProc::start(&r, &cfg, "w-fleet", &[("WORKER_IDLE_EXIT", "1")]);
    assert_eq!(w.wait_exit(LONG), Some(0), "{}", w.log_text());

    let key = format!(
        "peagen.tasks.metrics.{}",
        peagen_fabric::telemetry::hostname()
    );
    assert_eq!(
        RedisConfig::default().fleet_metrics_key(&peagen_fabric::telemetry::hostname()),
        key
    );
    let h = r.hash_f64(&key);
    let get = |f: &str| {
        h.get(f)
            .copied()
            .unwrap_or_else(|| panic!("no {f} in {h:#?}"))
    };
    assert_eq!(
        get(r#"peagen_worker_exit_reason_total{reason="idle"}"#),
        1.0
    );
    for reason in ["max_uptime", "signal", "error"] {
        assert_eq!(
            get(&format!(
                "peagen_worker_exit_reason_total{{reason=\"{reason}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(get(r#"peagen_tasks_total{kind="echo",status="ok"}"#), 3.0);
    assert_eq!(
        get(r#"peagen_tasks_total{kind="fail",status="error"}"#),
        1.0
    );
    let fails: f64 = h
        .iter()
        .filter(|(k, _)| k.starts_with("peagen_handler_fail_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(fails, 1.0, "{h:#?}");
    assert_eq!(
        get(r#"peagen_task_duration_seconds_count{kind="echo"}"#),
        3.0
    );
    assert_eq!(
        get(r#"peagen_task_duration_seconds_bucket{kind="echo",le="+Inf"}"#),
        3.0
    );
    assert!(get("peagen_worker_up_seconds_total") > 0.0);
    assert!(!h
        .keys()
        .any(|k| k.contains("queue_pending") || k.contains("build_info")));

    // What the spawner exports from this hash (its collector), checked by promtool.
    let text = exported(&r, &key);
    assert!(
        text.contains("peagen_worker_exit_reason_total{reason=\"idle\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("peagen_task_duration_seconds_bucket{le=\"+Inf\",kind=\"echo\"} 3\n"),
        "{text}"
    );
    std::fs::write(dir.path().join("fleet.prom"), &text).unwrap();
    // promtool comes with scripts/install-deps.sh (Debian's prometheus): a
    // missing one is a broken set-up, not a reason to skip the check.
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(dir.path().join("fleet.prom")).unwrap())
        .output()
        .expect(
            "promtool not found: run scripts/install-deps.sh (it installs Debian's prometheus)",
        );
    {
        // promtool parses the 0.0.4 text format, where an OpenMetrics counter
        // family `x` with sample `x_total` reads as "no help text" (true of
        // every prometheus-client counter); anything else is a real problem.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let bad: Vec<&str> = said
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.ends_with(" no help text"))
            .collect();
        assert!(bad.is_empty(), "promtool check metrics: {said}\n{text}");
    }

    // A second worker on the same host adds to the same fields.
    let mut w = WorkerProc::start(&r, &cfg, "w-fleet2", &[("WORKER_IDLE_EXIT", "1")]);
    assert_eq!(w.wait_exit(LONG), Some(0), "{}", w.log_text());
    let h = r.hash_f64(&key);
    assert_eq!(h[r#"peagen_worker_exit_reason_total{reason="idle"}"#], 2.0);
    assert_eq!(h[r#"peagen_tasks_total{kind="echo",status="ok"}"#], 3.0);
}

#[tokio::test]
async fn failed_flush_keeps_deltas_for_the_next_one() {
    let mut r = Redis::start_with(true);
    let rc = RedisConfig {
        url: r.url(),
        response_timeout_ms: 1000,
        ..Default::default()
    };
    let q = Queue::connect(&rc).await.unwrap();
    let mut reg = new_registry();
    let m = WorkerMetrics::new(&mut reg);
    let sink = FleetSink::new(Arc::new(Mutex::new(reg)), rc.fleet_metrics_key("h1"));
    let fails = m
        .handler_fail
        .get_or_create(&labels(&[("handler", "x")]))
        .clone();
    fails.inc();
    m.busy_seconds.inc_by(0.5);
    assert!(sink.flush(&q).await.unwrap() > 0);
    assert_eq!(
        sink.flush(&q).await.unwrap(),
        0,
        "nothing new, nothing sent"
    );

    r.kill();
    fails.inc_by(2);
    m.busy_seconds.inc_by(0.25);
    assert!(sink.flush(&q).await.is_err());
    r.crash_and_restart(Duration::from_millis(10));
    fails.inc();
    let mut ok = false;
    for _ in 0..50 {
        if sink.flush(&q).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "flush never succeeded after the restart");
    let h = r.hash_f64("peagen.tasks.metrics.h1");
    assert_eq!(
        h[r#"peagen_handler_fail_total{handler="x"}"#], 4.0,
        "{h:#?}"
    );
    assert_eq!(h["peagen_worker_busy_seconds_total"], 0.75, "{h:#?}");
}
