//! Hostile and mistaken input against a real `redis-server` and the real
//! binaries: every bad entry gets a clear answer (a dead letter with a
//! reason, an error result when its task id is known), nothing is lost,
//! nothing escapes the results directory, no password is printed, and the
//! operator CLI fails per item with clear exit codes.

mod support;

use serde_json::Value;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(30);
const MB: usize = 1 << 20;

fn cfg_with(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\ndrain-timeout-ms = 10000\n{extra}"
        ),
    )
}

/// `redis-cli` with raw byte arguments (names that are not UTF-8).
fn cli_bytes(r: &Redis, args: &[&[u8]]) -> String {
    let mut c = Command::new("redis-cli");
    c.arg("-p").arg(r.port.to_string());
    for a in args {
        c.arg(std::ffi::OsStr::from_bytes(a));
    }
    String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
}

fn conn(r: &Redis) -> redis::Connection {
    redis::Client::open(r.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Field names and values of every entry of a stream, as bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn raw_entries(r: &Redis, stream: &str) -> Vec<(String, Fields)> {
    let v: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn(r))
        .unwrap();
    v.into_iter()
        .map(|(id, flat)| {
            let pairs = flat
                .chunks(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect();
            (id, pairs)
        })
        .collect()
}

/// The `data` records of a stream, parsed (whatever its other field names).
fn records(r: &Redis, stream: &str) -> Vec<Value> {
    raw_entries(r, stream)
        .into_iter()
        .filter_map(|(_, f)| f.into_iter().find(|(n, _)| n == b"data"))
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect()
}

fn ctl_code(r: &Redis, cfg: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let o = ctl(r, Some(cfg), args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn field_names_that_are_not_utf8_are_dead_lettered_and_stats_keep_working() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "");
    r.cli(&[
        "XGROUP",
        "CREATE",
        "peagen.tasks",
        "peagen",
        "0",
        "MKSTREAM",
    ]);
    // One held by a consumer that died, one waiting.
    cli_bytes(
        &r,
        &[
            b"XADD",
            b"peagen.tasks",
            b"*",
            b"\xff\xfename",
            b"v",
            b"data",
            br#"{"kind":"echo","id":"ghost-1"}"#,
        ],
    );
    r.cli(&[
        "XREADGROUP",
        "GROUP",
        "peagen",
        "ghost",
        "COUNT",
        "1",
        "STREAMS",
        "peagen.tasks",
        ">",
    ]);
    // One held by a consumer that stopped heart-beating (the XAUTOCLAIM sweep).
    cli_bytes(&r, &[b"XADD", b"peagen.tasks", b"*", b"\xfe", b"y"]);
    r.cli(&[
        "XREADGROUP",
        "GROUP",
        "peagen",
        "stuck",
        "COUNT",
        "1",
        "STREAMS",
        "peagen.tasks",
        ">",
    ]);
    cli_bytes(&r, &[b"XADD", b"peagen.tasks", b"*", b"\xc3\x28", b"x"]);

    // The operator's views work while they exist (they exited 69 before).
    let (code, out, err) = ctl_code(&r, &cfg, &["queue", "stats", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["length"], 3);
    assert_eq!(st["by_kind"]["invalid"], 2, "{st}");
    // (Lists the queue's consumers when systemd is not reachable.)
    let (code, _, err) = ctl_code(&r, &cfg, &["workers", "--json"]);
    assert_eq!(code, Some(0), "{err}");

    // The spawner's reclaim of the dead consumer dead-letters its entry.
    let (rep, swept) = rt().block_on(async {
        let mut c = peagen_fabric::config::Config::load(Some(&cfg)).unwrap();
        c.redis.url = r.url();
        let q = peagen_fabric::queue::Queue::connect_for(&c).await.unwrap();
        let rep = q
            .requeue_consumer("ghost", 3, "worker unit gone", "test-host")
            .await
            .unwrap();
        let swept = q
            .autoclaim_orphans("sweeper", 0, 3, "test-host")
            .await
            .unwrap();
        (rep, swept)
    });
    assert_eq!(rep.dead_lettered, 1, "{rep:?}");
    assert_eq!(swept.dead_lettered, 1, "{swept:?}");

    // A worker dead-letters the other one and keeps going.
    let _w = WorkerProc::start(&r, &cfg, "w-names", &[]);
    push(&r, &cfg, "echo", "after-names");
    eventually(LONG, "all three dead-lettered", || {
        r.int(&["XLEN", "peagen.dead"]) == 3
    });
    eventually(LONG, "good task done", || {
        r.int(&["HEXISTS", "peagen.results.index", "after-names"]) == 1
    });
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0, "nothing left pending");
    let dead = records(&r, "peagen.dead");
    for d in &dead {
        assert_eq!(d["reason"], "field_not_utf8", "{d}");
        assert!(d["error"].as_str().unwrap().contains("not UTF-8"), "{d}");
    }
    // The ghost's entry had a valid id: it gets its error result.
    assert_eq!(dead[0]["task_id"], "ghost-1");
    let res: Value = serde_json::from_str(&ctl_ok(
        &r,
        Some(&cfg),
        &["task", "get", "ghost-1", "--json"],
    ))
    .unwrap();
    assert_eq!(res["status"], "error");
    // Nothing is lost: the original fields travel with the dead letter.
    let raw = raw_entries(&r, "peagen.dead");
    let names: Vec<Vec<u8>> = raw[2].1.iter().map(|(n, _)| n.clone()).collect();
    assert!(names.contains(&b"orig.\xc3\x28".to_vec()), "{names:?}");
    let (code, _, err) = ctl_code(&r, &cfg, &["queue", "dlq", "list"]);
    assert_eq!(code, Some(0), "{err}");
}

fn status_kb(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_100_mb_entry_is_dead_lettered_without_bloating_the_worker() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "");
    r.cli(&[
        "XGROUP",
        "CREATE",
        "peagen.tasks",
        "peagen",
        "0",
        "MKSTREAM",
    ]);
    let big = vec![b'a'; 100 * MB];
    let xadd = |data: &[u8]| {
        let _: String = redis::cmd("XADD")
            .arg("peagen.tasks")
            .arg("*")
            .arg("data")
            .arg(data)
            .query(&mut conn(&r))
            .unwrap();
    };
    // Waiting before the worker starts: read by the script, never copied.
    xadd(&big);
    let w = WorkerProc::start(&r, &cfg, "w-big", &[]);
    eventually(LONG, "first dead-lettered", || {
        r.int(&["XLEN", "peagen.dead"]) == 1
    });
    let hwm_script = status_kb(w.pid(), "VmHWM:");
    let base = status_kb(w.pid(), "VmRSS:");
    // Arriving while the worker blocks: one copy in the connection's buffer,
    // one parsed, then both dropped.
    std::thread::sleep(Duration::from_millis(1500));
    xadd(&big);
    eventually(LONG, "second dead-lettered", || {
        r.int(&["XLEN", "peagen.dead"]) == 2
    });
    push(&r, &cfg, "echo", "after-big");
    eventually(LONG, "good task done", || {
        r.int(&["HEXISTS", "peagen.results.index", "after-big"]) == 1
    });
    let hwm = status_kb(w.pid(), "VmHWM:");
    let rss = status_kb(w.pid(), "VmRSS:");
    eprintln!(
        "worker memory: peak after the script path {hwm_script} kB, baseline {base} kB, peak {hwm} kB, now {rss} kB"
    );
    let dead = records(&r, "peagen.dead");
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d["reason"], "too_large", "{d}");
        assert!(
            d["error"].as_str().unwrap().contains("over the limit"),
            "{d}"
        );
        assert_eq!(d["raw"], Value::Null);
    }
    // The data is kept server-side with the dead letter.
    for (_, fields) in raw_entries(&r, "peagen.dead") {
        let orig = fields.iter().find(|(n, _)| n == b"orig.data").unwrap();
        assert_eq!(orig.1.len(), 100 * MB);
    }
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    let entry_kb = (100 * MB / 1024) as u64;
    assert!(
        hwm_script < 64 * 1024,
        "script path copied the entry: {hwm_script} kB"
    );
    assert!(hwm < 2 * entry_kb + 40 * 1024, "peak {hwm} kB");
    assert!(
        rss < base + 32 * 1024,
        "RSS stayed grown: {rss} kB (baseline {base} kB)"
    );
}

#[test]
fn bad_tasks_with_a_valid_id_get_an_error_result() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let results = dir.path().join("results");
    for (backend, extra) in [
        ("stream", String::new()),
        (
            "fs",
            format!(
                "[results]\nbackend = \"fs\"\ndir = \"{}\"\n",
                results.display()
            ),
        ),
    ] {
        let cfg = cfg_with(dir.path(), &extra);
        r.cli(&[
            "XGROUP",
            "CREATE",
            "peagen.tasks",
            "peagen",
            "0",
            "MKSTREAM",
        ]);
        let id = |n: &str| format!("{backend}-{n}");
        for data in [
            format!(
                r#"{{"kind":"echo","id":"{}","attempts":"x"}}"#,
                id("wrong-type")
            ),
            format!(
                r#"{{"kind":"echo","id":"{}","payload":[1]}}"#,
                id("bad-payload")
            ),
            format!(r#"{{"id":"{}","payload":{{}}}}"#, id("no-kind")),
        ] {
            r.cli(&["XADD", "peagen.tasks", "*", "data", &data]);
        }
        let mut w = WorkerProc::start(&r, &cfg, &format!("w-{backend}"), &[]);
        for (n, reason) in [
            ("wrong-type", "malformed"),
            ("bad-payload", "invalid"),
            ("no-kind", "malformed"),
        ] {
            let (code, out, err) =
                ctl_code(&r, &cfg, &["task", "get", &id(n), "--wait", "30", "--json"]);
            assert_eq!(code, Some(0), "{backend} {n}: {err}");
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["status"], "error", "{v}");
            assert_eq!(v["data"]["dead_letter_reason"], reason, "{v}");
        }
        let dead = r.stream_data("peagen.dead");
        for n in ["wrong-type", "bad-payload", "no-kind"] {
            assert!(
                dead.iter().any(|d| d["task_id"] == id(n)),
                "{backend}: dead letter names {n}: {dead:?}"
            );
        }
        w.kill9();
    }
}

#[test]
fn task_get_never_reads_outside_the_results_dir() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(dir.path().join("outside.json"), br#"{"secret":1}"#).unwrap();
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "[results]\nbackend = \"fs\"\ndir = \"{}\"\n",
            results.display()
        ),
    );
    let abs = dir.path().join("outside");
    for id in ["../outside", abs.to_str().unwrap(), ".."] {
        let (code, out, err) = ctl_code(&r, &cfg, &["task", "get", id]);
        assert_eq!(code, Some(65), "{id}: {out}{err}");
        assert!(!out.contains("secret"), "{id}: {out}");
        assert!(err.contains("not a task id"), "{id}: {err}");
    }
}

#[test]
fn no_code_path_prints_the_redis_password() {
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let run = |bin_name: &str, cfg: &Path, args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(bin(bin_name));
        c.arg("--config").arg(cfg).args(args);
        c.env_remove("PEAGEN_REDIS_URL");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    // A wrong scheme: a config error (78) that names the URL, redacted.
    let wrong = write_config(
        dir.path(),
        "[redis]\nurl = \"http://:SECRET-A@127.0.0.1:1\"\n",
    );
    let (code, text) = run("peagenctl", &wrong, &["config", "validate"], &[]);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("redis.url") && !text.contains("SECRET-A"),
        "{text}"
    );
    let (code, text) = run("peagen-worker", &wrong, &[], &[]);
    assert_eq!(code, Some(78), "{text}");
    assert!(!text.contains("SECRET-A"), "{text}");
    // config show, with sentinels too.
    let shown = write_config(
        dir.path(),
        "[redis]\nurl = \"redis://:SECRET-B@127.0.0.1:1/0\"\nsentinel-master = \"m\"\nsentinels = [\"redis://:SECRET-C@127.0.0.1:2\"]\n",
    );
    let (code, text) = run("peagenctl", &shown, &["config", "show"], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(
        !text.contains("SECRET-B") && !text.contains("SECRET-C"),
        "{text}"
    );
    // A unix socket URL with the password in the query, unreachable: the
    // connect error of peagenctl and of the worker.
    let sock = dir.path().join("none.sock");
    let unix = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"redis+unix://{}?db=0&pass=SECRET-D\"\n",
            sock.display()
        ),
    );
    let (code, text) = run("peagenctl", &unix, &["queue", "stats"], &[]);
    assert_eq!(code, Some(69), "{text}");
    assert!(
        text.contains("none.sock") && !text.contains("SECRET-D"),
        "{text}"
    );
    let (code, text) = run("peagenctl", &unix, &["config", "show"], &[]);
    assert_eq!(code, Some(0));
    assert!(!text.contains("SECRET-D"), "{text}");
    // Unreachable for longer than its idle budget, the worker exits with an
    // error (status 1) instead of waiting forever; its log shows no secret.
    let log = dir.path().join("worker.log");
    let mut w = Command::new(bin("peagen-worker"))
        .arg("--config")
        .arg(&unix)
        .env_remove("PEAGEN_REDIS_URL")
        .env("WORKER_IDLE_EXIT", "1")
        .env("RUST_LOG", "debug")
        .env("PEAGEN_LOG_FORMAT", "text")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut code = None;
    for _ in 0..600 {
        if let Some(st) = w.try_wait().unwrap() {
            code = st.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = w.kill();
    let _ = w.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("none.sock") && !text.contains("SECRET-D"),
        "{text}"
    );
}

#[test]
fn dlq_retry_answers_each_id_and_goes_on() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "");
    r.cli(&[
        "XGROUP",
        "CREATE",
        "peagen.tasks",
        "peagen",
        "0",
        "MKSTREAM",
    ]);
    r.cli(&[
        "XADD",
        "peagen.tasks",
        "*",
        "data",
        r#"{"kind":"warp-drive","id":"dlq-1","payload":{}}"#,
    ]);
    let mut w = WorkerProc::start(&r, &cfg, "w-dlq", &[]);
    eventually(LONG, "dead-lettered", || {
        r.int(&["XLEN", "peagen.dead"]) == 1
    });
    w.kill9();
    let dead_id = r
        .cli(&["XRANGE", "peagen.dead", "-", "+"])
        .lines()
        .next()
        .unwrap()
        .to_string();
    let (code, out, err) = ctl_code(
        &r,
        &cfg,
        &["queue", "dlq", "retry", "not-an-id", &dead_id, "0-1"],
    );
    assert_eq!(code, Some(65), "{out}{err}");
    assert!(out.contains(&dead_id), "the good id was retried: {out}");
    assert!(err.contains("not-an-id") && err.contains("0-1"), "{err}");
    assert!(
        !err.contains("unavailable") && !err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 1);
}

#[test]
fn push_refuses_counts_and_sizes_that_cannot_work() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = cfg_with(dir.path(), "max-payload-bytes = 1024\n");
    for count in ["0", "4294967295", "1000001"] {
        let (code, _, err) = ctl_code(&r, &cfg, &["push", "--kind", "echo", "--count", count]);
        assert_eq!(code, Some(64), "--count {count}: {err}");
        assert!(err.contains("--count"), "{err}");
    }
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    // Batches: more than one round trip's worth, ids in order.
    let out = ctl_ok(
        &r,
        Some(&cfg),
        &["push", "--kind", "echo", "--id", "many", "--count", "2500"],
    );
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 2500);
    assert_eq!((ids[0], ids[2499]), ("many-1", "many-2500"));
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 2500);
    // Over the payload limit every worker enforces: refused, nothing sent.
    let payload = format!("{{\"x\":\"{}\"}}", "a".repeat(2000));
    let (code, _, err) = ctl_code(&r, &cfg, &["push", "--kind", "echo", "--payload", &payload]);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("max-payload-bytes"), "{err}");
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"kind\":\"echo\",\"id\":\"small\"}}\n{{\"kind\":\"echo\",\"payload\":{payload}}}\n"
        ),
    )
    .unwrap();
    let (code, _, err) = ctl_code(&r, &cfg, &["push", "--file", file.to_str().unwrap()]);
    assert_eq!(code, Some(65), "{err}");
    assert_eq!(
        r.int(&["XLEN", "peagen.tasks"]),
        2500,
        "nothing of the file was sent"
    );
}

#[test]
fn a_worker_whose_results_cannot_be_saved_exits_with_error() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let results = dir.path().join("results");
    // A plain file where the directory should be: every save fails.
    std::fs::write(&results, b"not a directory").unwrap();
    let cfg = cfg_with(
        dir.path(),
        &format!(
            "[results]\nbackend = \"fs\"\ndir = \"{}\"\n",
            results.display()
        ),
    );
    push(&r, &cfg, "echo", "stuck-1");
    let mut w = WorkerProc::start(&r, &cfg, "w-stuck", &[("WORKER_IDLE_EXIT", "1")]);
    assert_eq!(w.wait_exit(LONG), Some(1), "{}", w.log_text());
    // Counted where the spawner exports it (the alert's series).
    let key = format!(
        "peagen.tasks.metrics.{}",
        peagen_fabric::telemetry::hostname()
    );
    let v = r.cli(&[
        "HGET",
        &key,
        r#"peagen_worker_exit_reason_total{reason="error"}"#,
    ]);
    assert_eq!(v.trim(), "1", "{}", w.log_text());
    // Nothing lost: the task waits for reclaim.
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 1);
}
