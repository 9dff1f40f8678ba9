//! End-to-end tests of the foundation against a real `redis-server` and the
//! real binaries: flow, crash recovery, retries, dead letters, bad input,
//! Redis restarts, the filesystem backend, draining.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(30);

fn cfg_with(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\ndrain-timeout-ms = 10000\n{extra}"
        ),
    )
}

fn results_for(r: &Redis, task_id: &str) -> Vec<Value> {
    r.stream_data("peagen.results")
        .into_iter()
        .filter(|v| v["task_id"] == task_id && v["data"].get("result_backend_failed").is_none())
        .collect()
}

#[test]
fn tasks_flow_end_to_end() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "");
    let mut ids = Vec::new();
    for i in 0..20 {
        let out = ctl_ok(
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
        ids.push(out.trim().to_string());
    }
    let _w = WorkerProc::start(&r, &cfg, "w-flow", &[]);
    eventually(LONG, "all results", || {
        r.int(&["HLEN", "peagen.results.index"]) == 20
    });
    for (i, id) in ids.iter().enumerate() {
        let out = ctl_ok(&r, Some(&cfg), &["task", "get", id, "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["data"]["n"], i);
        assert_eq!(v["worker_id"], "w-flow");
        assert_eq!(v["handler"], "echo");
        assert_eq!(v["attempts"], 1);
        for f in [
            "handler_version",
            "image_tag",
            "host",
            "started_at",
            "finished_at",
            "created_at",
        ] {
            assert!(
                v[f].as_str().is_some_and(|s| !s.is_empty()),
                "audit field {f} missing: {v}"
            );
        }
    }
    // Finished entries are acked and deleted; nothing pending.
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    let stats: Value =
        serde_json::from_str(&ctl_ok(&r, Some(&cfg), &["queue", "stats", "--json"])).unwrap();
    assert_eq!(stats["pending"], 0);
    assert_eq!(stats["lag"], 0);
}

#[test]
fn kill_9_mid_task_then_restart_completes_exactly_once() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let runs = dir.path().join("runs");
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "[[handlers.command]]\nkind = \"slow\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"cat >/dev/null; echo run >> {}; sleep 3; echo '{{\\\"done\\\":true}}'\"]\n",
            runs.display()
        ),
    );
    let id = push(&r, &cfg, "slow", "slow-1").trim().to_string();
    let mut w = WorkerProc::start(&r, &cfg, "w-crash", &[]);
    eventually(LONG, "task started", || runs.exists());
    w.kill9();
    // The entry is still pending for this consumer, not acknowledged.
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 1);
    assert!(results_for(&r, &id).is_empty());
    let _w2 = WorkerProc::start(&r, &cfg, "w-crash", &[]);
    eventually(LONG, "result after restart", || {
        !results_for(&r, &id).is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let res = results_for(&r, &id);
    assert_eq!(res.len(), 1, "exactly one result record: {res:?}");
    assert_eq!(res[0]["status"], "ok");
    assert_eq!(res[0]["data"]["done"], true);
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0, "acked and deleted");
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
}

#[test]
fn retryable_failures_retry_then_dead_letter_intact() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let runs = dir.path().join("runs");
    // Fails (retryably) on its first three runs, succeeds from the fourth.
    let script = dir.path().join("flaky.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >/dev/null\necho run >> {r}\nif [ $(wc -l < {r}) -ge 4 ]; then echo '{{\"fixed\":true}}'; exit 0; fi\necho 'LLM 503' >&2\nexit 75\n",
            r = runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "max-attempts = 3\n[[handlers.command]]\nkind = \"flaky\"\nprogram = \"{}\"\n",
            script.display()
        ),
    );
    let _w = WorkerProc::start(&r, &cfg, "w-retry", &[]);
    let id = ctl_ok(
        &r,
        Some(&cfg),
        &[
            "push",
            "--kind",
            "flaky",
            "--payload",
            "{\"keep\":\"me\"}",
            "--trace-id",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ],
    )
    .trim()
    .to_string();
    eventually(LONG, "dead letter", || r.int(&["XLEN", "peagen.dead"]) == 1);
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        3,
        "ran exactly max-attempts times"
    );
    let out = ctl_ok(&r, Some(&cfg), &["queue", "dlq", "export"]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let d = &lines[0];
    assert_eq!(d["task_id"], id.as_str());
    assert_eq!(d["reason"], "attempts_exhausted");
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["worker_id"], "w-retry");
    assert!(d["error"].as_str().unwrap().contains("LLM 503"), "{d}");
    assert!(d["original_id"].as_str().is_some());
    let raw: Value = serde_json::from_str(d["raw"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw["payload"]["keep"], "me",
        "original task intact in the dead letter"
    );
    assert_eq!(raw["attempts"], 2);
    assert_eq!(
        raw["trace_id"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    // The final error is also the task's result record.
    let res = results_for(&r, &id);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0]["status"], "error");
    assert_eq!(res[0]["attempts"], 3);
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);

    // The cause is fixed (the 4th run succeeds) and the operator retries it:
    // back on the queue with attempts reset; the success becomes the final
    // result, replacing the dead letter's error.
    let dead_id = d["dead_id"].as_str().unwrap().to_string();
    ctl_ok(&r, Some(&cfg), &["queue", "dlq", "retry", &dead_id]);
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
    eventually(LONG, "retried task succeeds", || {
        let o = ctl(&r, Some(&cfg), &["task", "get", &id, "--json"]);
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("\"status\":\"ok\"")
    });
    let v: Value =
        serde_json::from_str(&ctl_ok(&r, Some(&cfg), &["task", "get", &id, "--json"])).unwrap();
    assert_eq!(v["data"]["fixed"], true);
    assert_eq!(v["attempts"], 1);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 4);
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
}

#[test]
fn every_bad_input_is_dead_lettered_and_the_worker_keeps_going() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "max-payload-bytes = 2048\n");
    let mut w = WorkerProc::start(&r, &cfg, "w-bad", &[]);
    let big = format!(
        "{{\"kind\":\"echo\",\"id\":\"big\",\"payload\":{{\"x\":\"{}\"}}}}",
        "a".repeat(4096)
    );
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("malformed", vec!["data", "{not json"]),
        (
            "malformed",
            vec!["data", r#"{"id":"no-kind","payload":{}}"#],
        ),
        ("malformed", vec!["data", r#"{"kind":"echo","id":42}"#]),
        (
            "malformed",
            vec!["data", r#"{"kind":"echo","id":"a","attempts":"x"}"#],
        ),
        (
            "no_handler",
            vec!["data", r#"{"kind":"warp-drive","id":"u1","payload":{}}"#],
        ),
        ("no_data", vec!["payload", "{}"]),
        ("too_large", vec!["data", &big]),
    ];
    for (_, fields) in &cases {
        let mut args = vec!["XADD", "peagen.tasks", "*"];
        args.extend(fields.iter());
        r.cli(&args);
    }
    push(&r, &cfg, "echo", "good-after");
    eventually(LONG, "all bad entries dead-lettered", || {
        r.int(&["XLEN", "peagen.dead"]) == cases.len() as i64
    });
    eventually(LONG, "good task done", || {
        r.int(&["HEXISTS", "peagen.results.index", "good-after"]) == 1
    });
    let dead = r.stream_data("peagen.dead");
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    let expected: Vec<&str> = cases.iter().map(|(r, _)| *r).collect();
    assert_eq!(reasons, expected);
    for d in &dead {
        assert!(
            !d["error"].as_str().unwrap().is_empty(),
            "a clear reason: {d}"
        );
    }
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0, "all acked");
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "worker still running"
    );
}

#[test]
fn redis_restart_mid_run_loses_nothing() {
    let mut r = Redis::start_with(true);
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // Slow enough (~20 ms a task) that the restart lands mid-run.
    let cfg = cfg_with(
        dir.path(),
        "[[handlers.command]]\nkind = \"tick\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"cat >/dev/null; sleep 0.02; echo '{}'\"]\n",
    );
    let n = 300;
    ctl_ok(
        &r,
        Some(&cfg),
        &[
            "push",
            "--kind",
            "tick",
            "--id",
            "rr",
            "--count",
            &n.to_string(),
        ],
    );
    let w = WorkerProc::start(&r, &cfg, "w-rr", &[]);
    eventually(LONG, "some progress", || {
        r.int(&["HLEN", "peagen.results.index"]) > 20
    });
    r.crash_and_restart(Duration::from_millis(1500));
    // More work arrives after the restart, too.
    assert!(
        r.int(&["HLEN", "peagen.results.index"]) < n,
        "restart happened mid-run"
    );
    ctl_ok(
        &r,
        Some(&cfg),
        &["push", "--kind", "tick", "--id", "after", "--count", "50"],
    );
    eventually(
        Duration::from_secs(60),
        "everything done after restart",
        || r.int(&["HLEN", "peagen.results.index"]) == n + 50,
    );
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
    // Exactly one result record per task.
    let res = r.stream_data("peagen.results");
    let mut ids: Vec<String> = res
        .iter()
        .map(|v| v["task_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), res.len(), "no duplicate result records");
    let log = w.log_text();
    assert!(
        log.contains("backing off") || log.contains("retrying"),
        "the worker noticed the outage: {log}"
    );
}

#[test]
fn fs_backend_does_not_duplicate_on_redelivery() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let results = dir.path().join("results");
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "[results]\nbackend = \"fs\"\ndir = \"{}\"\n",
            results.display()
        ),
    );
    let _w = WorkerProc::start(&r, &cfg, "w-fs", &[]);
    ctl_ok(
        &r,
        Some(&cfg),
        &[
            "push",
            "--kind",
            "echo",
            "--id",
            "dup-1",
            "--payload",
            "{\"v\":1}",
        ],
    );
    eventually(LONG, "first record", || results.join("dup-1.json").exists());
    let first = std::fs::read_to_string(results.join("dup-1.json")).unwrap();
    // A duplicate delivery of the same task id (at-least-once).
    ctl_ok(
        &r,
        Some(&cfg),
        &[
            "push",
            "--kind",
            "echo",
            "--id",
            "dup-1",
            "--payload",
            "{\"v\":2}",
        ],
    );
    eventually(LONG, "duplicate consumed", || {
        r.int(&["XLEN", "peagen.tasks"]) == 0
    });
    assert_eq!(
        std::fs::read_to_string(results.join("dup-1.json")).unwrap(),
        first,
        "first record kept"
    );
    let files: Vec<_> = std::fs::read_dir(&results).unwrap().collect();
    assert_eq!(files.len(), 1, "one file per task id, no temp files left");
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["data"]["v"], 1);
    let out = ctl_ok(&r, Some(&cfg), &["task", "get", "dup-1", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["task_id"],
        "dup-1"
    );
}

#[test]
fn failing_result_backend_leaves_task_pending_and_worker_running() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let results = dir.path().join("results");
    // A plain file where the directory should be: every save fails (ENOTDIR),
    // even for root.
    std::fs::write(&results, b"not a directory").unwrap();
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "[results]\nbackend = \"fs\"\ndir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            results.display()
        ),
    );
    let mut w = WorkerProc::start(&r, &cfg, "w-disk", &[]);
    push(&r, &cfg, "echo", "disk-1");
    eventually(LONG, "error record published", || {
        r.stream_data("peagen.results")
            .iter()
            .any(|v| v["task_id"] == "disk-1" && v["status"] == "error")
    });
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 1, "not acknowledged");
    let stats: Value =
        serde_json::from_str(&ctl_ok(&r, Some(&cfg), &["queue", "stats", "--json"])).unwrap();
    assert_eq!(stats["pending"], 1, "still pending for retry");
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "worker keeps running"
    );
    assert!(w.log_text().contains("result backend failed"));
    // The disk is fixed: the pending entry is retried and completes.
    std::fs::remove_file(&results).unwrap();
    eventually(LONG, "completed after the fix", || {
        results.join("disk-1.json").exists()
    });
    eventually(LONG, "acked", || r.int(&["XLEN", "peagen.tasks"]) == 0);
}

#[test]
fn sigterm_drains_the_current_task_and_exits_0() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let started = dir.path().join("started");
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "[[handlers.command]]\nkind = \"slow\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"cat >/dev/null; touch {}; sleep 2; echo '{{}}'\"]\n",
            started.display()
        ),
    );
    let mut w = WorkerProc::start(&r, &cfg, "w-term", &[]);
    push(&r, &cfg, "slow", "drain-1");
    push(&r, &cfg, "slow", "drain-2");
    eventually(LONG, "task started", || started.exists());
    w.term();
    assert_eq!(w.wait_exit(LONG), Some(0));
    assert_eq!(
        r.int(&["HEXISTS", "peagen.results.index", "drain-1"]),
        1,
        "current task finished"
    );
    assert_eq!(
        r.int(&["HEXISTS", "peagen.results.index", "drain-2"]),
        0,
        "no new task taken after SIGTERM"
    );
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 1);
    let stats: Value =
        serde_json::from_str(&ctl_ok(&r, Some(&cfg), &["queue", "stats", "--json"])).unwrap();
    assert_eq!(stats["pending"], 0, "nothing left half-done");
    assert!(
        w.log_text().contains("reason=\"signal\""),
        "{}",
        w.log_text()
    );
}

#[test]
fn idle_exit_and_max_uptime_exit_cleanly() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = write_config(dir.path(), "");
    let mut w = WorkerProc::start(&r, &cfg, "w-idle", &[("WORKER_IDLE_EXIT", "1")]);
    assert_eq!(w.wait_exit(LONG), Some(0));
    assert!(w.log_text().contains("reason=\"idle\""), "{}", w.log_text());
    let mut w = WorkerProc::start(
        &r,
        &cfg,
        "w-up",
        &[("WORKER_IDLE_EXIT", "0"), ("WORKER_MAX_UPTIME", "1")],
    );
    assert_eq!(w.wait_exit(LONG), Some(0));
    assert!(
        w.log_text().contains("reason=\"max_uptime\""),
        "{}",
        w.log_text()
    );
}

#[test]
fn push_fails_clearly_when_redis_is_down() {
    let mut r = Redis::start();
    r.kill();
    let o = ctl(&r, None, &["push", "--kind", "echo"]);
    assert_eq!(o.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unreachable"));
}

#[test]
fn worker_waits_for_redis_that_starts_later() {
    let mut r = Redis::start();
    r.kill();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "");
    let w = WorkerProc::start(&r, &cfg, "w-late", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    r.crash_and_restart(Duration::ZERO);
    push(&r, &cfg, "echo", "late-1");
    eventually(LONG, "processed once Redis is up", || {
        r.int(&["HEXISTS", "peagen.results.index", "late-1"]) == 1
    });
    drop(w);
}

#[test]
fn config_errors_exit_78() {
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let bad = write_config(dir.path(), "[worker]\nmax-attempts = 0\n");
    let o = std::process::Command::new(bin("peagenctl"))
        .args(["config", "validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("max-attempts"));
    let o = std::process::Command::new(bin("peagen-worker"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    let typo = write_config(dir.path(), "[worker]\nmax-attempt = 3\n");
    let o = std::process::Command::new(bin("peagenctl"))
        .args(["config", "validate", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field"));
}
