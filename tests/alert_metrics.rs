//! The counters the alerts divide and sum, as a real worker against a real
//! redis-server produces them (read from the per-host hash the spawner
//! exports): handler calls and failures per task kind, result-backend
//! failures of the default stream backend.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(60);

fn fleet_key() -> String {
    peagen_fabric::config::RedisConfig::default()
        .fleet_metrics_key(&peagen_fabric::telemetry::hostname())
}

fn hash(r: &Redis) -> BTreeMap<String, f64> {
    // redis-cli without a TTY prints one item per line: field, value, ...
    let raw = r.cli(&["HGETALL", &fleet_key()]);
    let items: Vec<&str> = raw.lines().collect();
    items
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].parse().unwrap()))
        .collect()
}

fn field(r: &Redis, f: &str) -> f64 {
    hash(r).get(f).copied().unwrap_or(0.0)
}

/// A command kind `flaky` that fails retryably (exit 75) on its first
/// `fail_runs` runs, then succeeds; retries at once.
fn flaky_cfg(dir: &std::path::Path, fail_runs: u32, extra: &str) -> std::path::PathBuf {
    let script = dir.join("flaky.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >/dev/null\necho run >> {r}\nif [ $(wc -l < {r}) -gt {fail_runs} ]; then echo '{{}}'; exit 0; fi\necho 'LLM 503' >&2\nexit 75\n",
            r = dir.join("runs").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write_config(
        dir,
        &format!(
            "[worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\nmax-attempts = 5\nretry-backoff-ms = 0\n{extra}[[handlers.command]]\nkind = \"flaky\"\nprogram = \"{}\"\n",
            script.display()
        ),
    )
}

#[test]
fn handler_calls_and_failures_are_counted_per_kind_and_bounded() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = flaky_cfg(dir.path(), 2, "");
    let _w = WorkerProc::start(&r, &cfg, "w-calls", &[]);
    push(&r, &cfg, "flaky", "flaky-1");
    push(&r, &cfg, "echo", "echo-1");
    let calls = r#"peagen_handler_calls_total{handler="flaky"}"#;
    let fails = r#"peagen_handler_fail_total{handler="flaky"}"#;
    // Two failed calls, then the retry that succeeds: 3 calls, 2 failures,
    // one task finished (the old ratio fail/tasks was 2/1).
    eventually(LONG, "3 flaky calls flushed", || field(&r, calls) == 3.0);
    let h = hash(&r);
    assert_eq!(h.get(fails), Some(&2.0), "{h:?}");
    assert_eq!(
        h.get(r#"peagen_handler_calls_total{handler="echo"}"#),
        Some(&1.0),
        "{h:?}"
    );
    assert_eq!(
        h.get(r#"peagen_handler_fail_total{handler="echo"}"#),
        Some(&0.0),
        "a kind's failure series exists at 0 with its first call: {h:?}"
    );
    assert!(
        !h.keys().any(|k| k.contains(r#"handler="command""#)),
        "command kinds are labelled by kind: {h:?}"
    );
    assert_eq!(
        h.get(r#"peagen_tasks_total{kind="flaky",status="ok"}"#),
        Some(&1.0),
        "{h:?}"
    );
}

#[test]
fn stream_backend_result_write_failures_are_counted_while_retried() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // The default backend (stream): results go into peagen.results inside
    // the finishing script. A string under that name makes its XADD fail
    // (WRONGTYPE) before anything is written, as a full or failing Redis would.
    let cfg = flaky_cfg(dir.path(), 0, "");
    r.cli(&["SET", "peagen.results", "not a stream"]);
    let w = WorkerProc::start(&r, &cfg, "w-results", &[]);
    push(&r, &cfg, "echo", "res-1");
    let f = "peagen_result_backend_fail_total";
    eventually(LONG, "the failing result write counted", || {
        field(&r, f) >= 1.0
    });
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 1, "not acknowledged");
    assert!(w.log_text().contains("acknowledging failed; retrying"));
    // Redis is fixed: the retried write lands, the task is acknowledged.
    r.cli(&["DEL", "peagen.results"]);
    eventually(LONG, "acked after the fix", || {
        r.int(&["XLEN", "peagen.tasks"]) == 0
    });
    assert!(r
        .stream_data("peagen.results")
        .iter()
        .any(|v| v["task_id"] == "res-1" && v["status"] == "ok"));
}

/// GET /metrics of `addr`.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn pending_by_kind_is_counted_at_scrape_time_and_reads_zero_when_idle() {
    use peagen_fabric::metrics::{new_registry, HookSlot, WorkerMetrics};
    use std::sync::{Arc, Mutex};
    let r = Redis::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cfg = peagen_fabric::config::Config::default();
    cfg.redis.url = r.url();
    let mut reg = new_registry();
    // The spawner's family is the same type and name as the worker's.
    let m = WorkerMetrics::new(&mut reg);
    m.queue_pending
        .set_configured(peagen_fabric::handlers::Registry::configured_kinds(&cfg));
    let hook = HookSlot::default();
    let addr = rt.block_on(async {
        let q = Arc::new(
            peagen_fabric::queue::Queue::connect_for(&cfg)
                .await
                .unwrap(),
        );
        q.ensure_group().await.unwrap();
        let _ = hook.set(peagen_fabric::spawner::pending_hook(
            q,
            m.queue_pending.clone(),
        ));
        peagen_fabric::metrics::serve_hooked(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Mutex::new(reg)),
            hook.clone(),
        )
        .await
        .unwrap()
    });
    let _rt_guard = rt.enter();
    // Idle: the configured kind reads 0 (no "No data").
    let s = scrape(addr);
    assert!(
        s.contains("peagen_queue_pending_total{kind=\"echo\"} 0\n"),
        "{s}"
    );
    // A burst of 3: the very next scrape sees it (no tick in between).
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let c = write_config(dir.path(), "");
    for i in 0..3 {
        push(&r, &c, "echo", &format!("burst-{i}"));
    }
    let s = scrape(addr);
    assert!(
        s.contains("peagen_queue_pending_total{kind=\"echo\"} 3\n"),
        "{s}"
    );
    r.cli(&["XTRIM", "peagen.tasks", "MAXLEN", "0"]);
    let s = scrape(addr);
    assert!(
        s.contains("peagen_queue_pending_total{kind=\"echo\"} 0\n"),
        "{s}"
    );
}
