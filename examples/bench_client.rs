//! Helper for `scripts/bench-fabric.sh` (fabric overhead benchmark).
//!
//! A minimal, synchronous Redis client with no fabric logic:
//!
//! - `load N`    preload N echo tasks (the JSON `peagenctl push` writes) into
//!   the tasks stream, pipelined, after `XGROUP CREATE ... MKSTREAM`.
//! - `raw4 N`    the raw peer, one round trip per command, as a naive client
//!   would do it: per task `XREADGROUP COUNT 1 BLOCK` + `XADD results` +
//!   `XACK` + `XDEL` (4 round trips).
//! - `raw2 N`    the raw peer with the fabric's round-trip shape: per task
//!   `XREADGROUP COUNT 1 BLOCK`, then one `MULTI XADD results; HSET index;
//!   XACK; XDEL EXEC` pipeline (2 round trips, same Redis-side writes as the
//!   fabric's finish script minus its ownership check).
//! - `drive N -- CMD...`  start CMD (the real `peagen-worker`), poll until the
//!   tasks stream is empty and N results exist, stop CMD with SIGTERM.
//!
//! Every mode prints one line `elapsed_s=<f64> tasks=<n>`. Connection URL:
//! `PEAGEN_REDIS_URL`; key names are the fabric's defaults.

use std::time::{Duration, Instant};

const TASKS: &str = "peagen.tasks";
const GROUP: &str = "peagen";
const RESULTS: &str = "peagen.results";
const INDEX: &str = "peagen.results.index";

fn conn() -> redis::Connection {
    let url = std::env::var("PEAGEN_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| die(&format!("cannot connect to {url}: {e}")))
}

fn die(msg: &str) -> ! {
    eprintln!("bench_client: {msg}");
    std::process::exit(2)
}

fn ensure_group(c: &mut redis::Connection) {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(TASKS)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(c);
    if let Err(e) = r {
        if e.code() != Some("BUSYGROUP") {
            die(&format!("XGROUP CREATE: {e}"));
        }
    }
}

fn load(n: usize) {
    let mut c = conn();
    ensure_group(&mut c);
    let t0 = Instant::now();
    let mut left = n;
    while left > 0 {
        let batch = left.min(1000);
        let mut p = redis::pipe();
        for _ in 0..batch {
            let t = peagen_fabric::task::Task::new("echo", serde_json::json!({}));
            p.cmd("XADD")
                .arg(TASKS)
                .arg("*")
                .arg("data")
                .arg(t.to_json())
                .ignore();
        }
        let () = p
            .query(&mut c)
            .unwrap_or_else(|e| die(&format!("XADD: {e}")));
        left -= batch;
    }
    println!("elapsed_s={:.6} tasks={n}", t0.elapsed().as_secs_f64());
}

/// One `XREADGROUP COUNT 1 BLOCK 1000` for consumer `me`: (entry id, data).
fn read_one(c: &mut redis::Connection, me: &str) -> Option<(String, Vec<u8>)> {
    let v: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(me)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(TASKS)
        .arg(">")
        .query(c)
        .unwrap_or_else(|e| die(&format!("XREADGROUP: {e}")));
    let reply: Option<redis::streams::StreamReadReply> =
        redis::FromRedisValue::from_redis_value(v).unwrap_or_else(|e| die(&format!("reply: {e}")));
    let e = reply?.keys.into_iter().next()?.ids.into_iter().next()?;
    let data = match e.map.get("data") {
        Some(redis::Value::BulkString(b)) => b.clone(),
        _ => Vec::new(),
    };
    Some((e.id, data))
}

/// A result record of about the size the echo worker writes (no parsing,
/// no handler: that is fabric work, not Redis work).
fn fake_result(data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(data.len() + 320);
    r.extend_from_slice(br#"{"status":"ok","data":{},"worker_id":"raw","handler":"echo","handler_version":"0.1.0","image_tag":"peagen-fabric/0.1.0","started_at":"2025-01-01T00:00:00.000000Z","finished_at":"2025-01-01T00:00:00.000000Z","created_at":"2025-01-01T00:00:00.000000Z","attempts":1,"retryable":false,"task":"#);
    r.extend_from_slice(data);
    r.push(b'}');
    r
}

fn raw(n: usize, pipelined: bool) {
    let mut c = conn();
    ensure_group(&mut c);
    let me = "raw-client";
    let t0 = Instant::now();
    let mut done = 0usize;
    while done < n {
        let Some((id, data)) = read_one(&mut c, me) else {
            break; // stream empty for a whole BLOCK period
        };
        let result = fake_result(&data);
        let task_id = format!("raw-{done}");
        if pipelined {
            let () = redis::pipe()
                .atomic()
                .cmd("XADD")
                .arg(RESULTS)
                .arg("*")
                .arg("data")
                .arg(&result)
                .ignore()
                .cmd("HSET")
                .arg(INDEX)
                .arg(&task_id)
                .arg(&id)
                .ignore()
                .cmd("XACK")
                .arg(TASKS)
                .arg(GROUP)
                .arg(&id)
                .ignore()
                .cmd("XDEL")
                .arg(TASKS)
                .arg(&id)
                .ignore()
                .query(&mut c)
                .unwrap_or_else(|e| die(&format!("finish: {e}")));
        } else {
            let _: String = redis::cmd("XADD")
                .arg(RESULTS)
                .arg("*")
                .arg("data")
                .arg(&result)
                .query(&mut c)
                .unwrap_or_else(|e| die(&format!("XADD: {e}")));
            let _: i64 = redis::cmd("XACK")
                .arg(TASKS)
                .arg(GROUP)
                .arg(&id)
                .query(&mut c)
                .unwrap_or_else(|e| die(&format!("XACK: {e}")));
            let _: i64 = redis::cmd("XDEL")
                .arg(TASKS)
                .arg(&id)
                .query(&mut c)
                .unwrap_or_else(|e| die(&format!("XDEL: {e}")));
        }
        done += 1;
    }
    println!("elapsed_s={:.6} tasks={done}", t0.elapsed().as_secs_f64());
}

fn xlen(c: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query(c)
        .unwrap_or_else(|e| die(&format!("XLEN: {e}")))
}

fn drive(n: usize, argv: &[String]) {
    let Some((prog, args)) = argv.split_first() else {
        die("drive: missing worker command after --");
    };
    let mut c = conn();
    let t0 = Instant::now();
    let mut child = std::process::Command::new(prog)
        .args(args)
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start {prog}: {e}")));
    let limit = Duration::from_secs(600);
    let elapsed = loop {
        if xlen(&mut c, TASKS) == 0 && xlen(&mut c, RESULTS) >= n as u64 {
            break t0.elapsed();
        }
        if let Ok(Some(st)) = child.try_wait() {
            die(&format!("worker exited early: {st}"));
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            die("worker did not drain the queue in 600 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    println!(
        "elapsed_s={:.6} tasks={}",
        elapsed.as_secs_f64(),
        xlen(&mut c, RESULTS)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize| -> usize {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| die("usage: bench_client load|raw4|raw2|drive N [-- CMD...]"))
    };
    match args.first().map(String::as_str) {
        Some("load") => load(n(1)),
        Some("raw4") => raw(n(1), false),
        Some("raw2") => raw(n(1), true),
        Some("drive") => {
            let rest: Vec<String> = args
                .iter()
                .skip_while(|a| *a != "--")
                .skip(1)
                .cloned()
                .collect();
            drive(n(1), &rest)
        }
        _ => die("usage: bench_client load|raw4|raw2|drive N [-- CMD...]"),
    }
}
