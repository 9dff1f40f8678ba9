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

/// Config with a command handler of kind `flaky` that appends `run <ns>` to
/// `<dir>/runs` when it starts and `end <ns>` to `<dir>/ends` when it ends
/// (ns since the epoch), failing retryably (exit 75) until its `ok_from`-th run.
/// `worker_extra` goes into the `[worker]` table.
fn flaky_cfg(dir: &std::path::Path, ok_from: u32, worker_extra: &str) -> std::path::PathBuf {
    let script = dir.join("flaky.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >/dev/null\necho \"run $(date +%s%N)\" >> {r}\nif [ $(wc -l < {r}) -ge {ok_from} ]; then echo '{{\"fixed\":true}}'; echo \"end $(date +%s%N)\" >> {e}; exit 0; fi\necho 'LLM 503' >&2\necho \"end $(date +%s%N)\" >> {e}\nexit 75\n",
            r = dir.join("runs").display(),
            e = dir.join("ends").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    cfg_with(
        dir,
        &format!(
            "{worker_extra}[[handlers.command]]\nkind = \"flaky\"\nprogram = \"{}\"\n",
            script.display()
        ),
    )
}

/// Times (ms since the epoch) written by the `flaky` handler to `dir/name`.
fn stamps_ms(dir: &std::path::Path, name: &str) -> Vec<u64> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1_000_000)
        .collect()
}

/// ZADD calls Redis served so far (scripts' calls included): only a delayed
/// retry writes the delayed set.
fn zadd_calls(r: &Redis) -> i64 {
    r.cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_zadd:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
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
    let mut w2 = WorkerProc::start(&r, &cfg, "w-crash", &[]);
    eventually(LONG, "result after restart", || {
        !results_for(&r, &id).is_empty()
    });
    // Nothing can add a second result once the only worker left has exited
    // (SIGTERM: it finishes what it holds first); count after that.
    w2.term();
    assert_eq!(w2.wait_exit(LONG), Some(0), "{}", w2.log_text());
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
    // Backoff off: today's immediate re-queue.
    let cfg = flaky_cfg(dir.path(), 4, "max-attempts = 3\nretry-backoff-ms = 0\n");
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
    assert_eq!(
        zadd_calls(&r),
        0,
        "backoff 0: no retry went through the delayed set"
    );

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
fn retries_wait_out_a_growing_backoff_then_dead_letter() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // Never succeeds. Delay ceilings 1000 then min(1500, 2000) ms; equal
    // jitter keeps each delay at least half its ceiling.
    let cfg = flaky_cfg(
        dir.path(),
        100,
        "max-attempts = 3\nretry-backoff-ms = 1000\nretry-backoff-max-ms = 1500\n",
    );
    let _w = WorkerProc::start(&r, &cfg, "w-backoff", &[]);
    let id = push(&r, &cfg, "flaky", "backoff-1");
    eventually(LONG, "dead letter", || r.int(&["XLEN", "peagen.dead"]) == 1);
    let (starts, ends) = (stamps_ms(dir.path(), "runs"), stamps_ms(dir.path(), "ends"));
    assert_eq!(starts.len(), 3, "ran exactly max-attempts times");
    assert_eq!(ends.len(), 3);
    for (i, min_gap) in [(0, 500), (1, 750)] {
        let gap = starts[i + 1].saturating_sub(ends[i]);
        assert!(
            starts[i + 1] >= ends[i] + min_gap,
            "attempt {} started {gap} ms after attempt {} ended, before its backoff (>= {min_gap} ms)",
            i + 2,
            i + 1
        );
    }
    let dead = r.stream_data("peagen.dead");
    assert_eq!(dead[0]["task_id"], id.as_str());
    assert_eq!(dead[0]["reason"], "attempts_exhausted");
    assert_eq!(dead[0]["attempts"], 3);
    let res = results_for(&r, &id);
    assert_eq!(res.len(), 1, "one final result: {res:?}");
    assert_eq!(res[0]["status"], "error");
    // Nothing left behind, nothing doubled.
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    assert_eq!(r.int(&["ZCARD", "peagen.tasks.delayed"]), 0);
    assert_eq!(
        zadd_calls(&r),
        2,
        "both retries went through the delayed set"
    );
}

#[test]
fn delayed_retry_is_promoted_after_its_worker_died() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // Fails once, then succeeds. The delay (1.5-3 s) leaves ample time to
    // kill the worker before the retry is due.
    let cfg = flaky_cfg(
        dir.path(),
        2,
        "max-attempts = 3\nretry-backoff-ms = 3000\nretry-backoff-max-ms = 3000\n",
    );
    let mut first = WorkerProc::start(&r, &cfg, "w-first", &[]);
    let id = push(&r, &cfg, "flaky", "orphan-retry");
    eventually(LONG, "first run failed into the delayed set", || {
        r.int(&["ZCARD", "peagen.tasks.delayed"]) == 1
    });
    first.kill9();
    assert_eq!(stamps_ms(dir.path(), "runs").len(), 1);
    // Waiting out its backoff: shown, but neither backlog nor in flight.
    let stats: Value =
        serde_json::from_str(&ctl_ok(&r, Some(&cfg), &["queue", "stats", "--json"])).unwrap();
    assert_eq!(stats["delayed"], 1, "{stats}");
    assert_eq!(stats["length"], 0, "{stats}");
    assert_eq!(stats["lag"], 0, "{stats}");
    assert_eq!(stats["pending"], 0, "{stats}");
    let text = ctl_ok(&r, Some(&cfg), &["queue", "stats"]);
    assert!(text.contains("delayed       1"), "{text}");
    // Another worker promotes it once due and runs it.
    let _second = WorkerProc::start(&r, &cfg, "w-second", &[]);
    eventually(LONG, "retried task succeeds", || {
        !results_for(&r, &id).is_empty()
    });
    let res = results_for(&r, &id);
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(res[0]["status"], "ok");
    assert_eq!(res[0]["attempts"], 2);
    assert_eq!(res[0]["worker_id"], "w-second");
    let (starts, ends) = (stamps_ms(dir.path(), "runs"), stamps_ms(dir.path(), "ends"));
    assert_eq!(starts.len(), 2, "ran once more, not twice");
    assert!(starts[1] >= ends[0] + 1500, "{starts:?} {ends:?}");
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    assert_eq!(r.int(&["ZCARD", "peagen.tasks.delayed"]), 0);
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
}

/// The queue API itself: a retry is moved once (a repeated call after a lost
/// reply does not double it), and many concurrent promoters move every due
/// retry exactly once.
#[test]
fn concurrent_promoters_move_each_delayed_retry_once() {
    use peagen_fabric::queue::{Moved, Queue};
    use peagen_fabric::task::Task;
    let r = Redis::start();
    let mut cfg = peagen_fabric::config::Config::default().redis;
    cfg.url = r.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let q = std::sync::Arc::new(Queue::connect(&cfg).await.unwrap());
        let n = 60;
        for i in 0..n {
            // Identical documents twice over: the delayed set must keep both.
            let doc = format!(r#"{{"kind":"echo","id":"same-{}","payload":{{}}}}"#, i % 30);
            q.push_raw(&doc).await.unwrap();
        }
        let entries = q.read("c1", n, false).await.unwrap();
        assert_eq!(entries.len(), n);
        for e in &entries {
            let t = Task::parse(e.data.as_deref().unwrap(), usize::MAX).unwrap();
            let next = t.next_attempt();
            assert_eq!(
                q.retry(&e.id, "other", &next, 1).await.unwrap(),
                Moved::NotOwner
            );
            assert_eq!(q.retry(&e.id, "c1", &next, 1).await.unwrap(), Moved::Done);
            assert_eq!(
                q.retry(&e.id, "c1", &next, 1).await.unwrap(),
                Moved::NotPending
            );
        }
        assert_eq!(q.delayed_count().await.unwrap(), n as u64);
        assert_eq!(q.stats().await.unwrap().length, 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut moved = 0;
                loop {
                    let m = q.promote_due(7).await.unwrap();
                    if m == 0 {
                        return moved;
                    }
                    moved += m;
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, n as u64);
        assert_eq!(q.delayed_count().await.unwrap(), 0);
        let st = q.stats().await.unwrap();
        assert_eq!((st.length, st.delayed), (n as u64, 0));
    });
    let mut ids: Vec<String> = r
        .stream_data("peagen.tasks")
        .iter()
        .inspect(|v| assert_eq!(v["attempts"], 1))
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expect: Vec<String> = (0..60).map(|i| format!("same-{}", i % 30)).collect();
    expect.sort();
    assert_eq!(ids, expect, "each retry promoted exactly once");
    // A foreign member does not block the set: it is moved whole.
    r.cli(&["ZADD", "peagen.tasks.delayed", "0", "garbage"]);
    let n = rt.block_on(async {
        let q = Queue::connect(&cfg).await.unwrap();
        q.promote_due(10).await.unwrap()
    });
    assert_eq!(n, 1);
    assert_eq!(r.int(&["ZCARD", "peagen.tasks.delayed"]), 0);
    assert!(r
        .stream_data("peagen.tasks")
        .contains(&Value::String("garbage".into())));
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
    // Redis comes up only once the worker has found it down and is retrying.
    eventually(LONG, "the worker retrying its connection", || {
        let log = w.log_text();
        log.contains("cannot connect to Redis") || log.contains("Redis not ready")
    });
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
