//! Redis Sentinel against real processes: a master, a replica and one
//! sentinel on private ports. A worker and peagenctl configured with the
//! sentinel (not the master's URL) keep working across a failover, and no
//! task is lost.

mod support;

use serde_json::Value;
use std::ffi::OsStr;
use std::process::{Child, Command};
use std::time::Duration;
use support::*;

/// Failover takes a few seconds (down-after 1 s, then a vote and promotion);
/// these only bound a hang.
const LONG: Duration = Duration::from_secs(60);
const MASTER: &str = "mymaster";

struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peagen-sentinel")
            .tempdir_in(scratch())
            .unwrap();
        // The sentinel rewrites its config file, so it lives in a writable dir.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\ndir {d}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 3000\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        // On a free port, retried if another process takes it first.
        let (child, port) = start_server(
            &[conf.as_os_str(), OsStr::new("--sentinel")],
            None,
            &dir.path().join("sentinel.log"),
        )
        .unwrap_or_else(|why| panic!("sentinel: {why}"));
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Port of the master the sentinel names now.
    fn master_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", MASTER]);
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn info_field(r: &Redis, field: &str) -> Option<String> {
    r.cli(&["INFO", "replication"]).lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// peagenctl with the sentinel config; retried while the sentinel names no
/// usable master: during the failover, and whenever this loaded machine
/// makes the sentinel flag the master down for a moment (down-after is
/// 1 s here). peagenctl then fails cleanly (exit 69), never silently.
fn ctl_via_sentinel(r: &Redis, cfg: &std::path::Path, args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..120 {
        let o = ctl(r, Some(cfg), args);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(69), "{args:?}: {last}");
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("peagenctl {args:?} kept failing: {last}");
}

fn push_via_sentinel(r: &Redis, cfg: &std::path::Path, id: &str) -> String {
    ctl_via_sentinel(r, cfg, &["push", "--kind", "echo", "--id", id])
}

/// A master, its replica and a sentinel that watches them.
struct Pair {
    master: Redis,
    replica: Redis,
    sentinel: Sentinel,
}

impl Pair {
    fn start() -> Self {
        let master = Redis::start();
        let mport = master.port.to_string();
        let replica = Redis::start_args(false, &["--replicaof", "127.0.0.1", &mport]);
        eventually(LONG, "replica linked to the master", || {
            info_field(&replica, "master_link_status").as_deref() == Some("up")
        });
        let sentinel = Sentinel::start(master.port);
        // The sentinel learns the replica from the master's INFO.
        eventually(LONG, "sentinel knows the replica", || {
            sentinel
                .cli(&["SENTINEL", "replicas", MASTER])
                .contains(&replica.port.to_string())
        });
        Pair {
            master,
            replica,
            sentinel,
        }
    }

    /// `[redis]` naming the sentinel; redis.url (and PEAGEN_REDIS_URL, which
    /// the helpers set to the first master) only carries credentials here:
    /// the address comes from the sentinel.
    fn redis_section(&self) -> String {
        format!(
            "[redis]\nsentinel-master = \"{MASTER}\"\nsentinels = [\"{}\"]\n",
            self.sentinel.url()
        )
    }

    /// SIGKILL the master once the replica has everything it acknowledged
    /// (replication is asynchronous), and wait for the promotion.
    fn fail_over(&mut self) {
        eventually(LONG, "replica caught up", || {
            let m = info_field(&self.master, "master_repl_offset");
            m.is_some() && m == info_field(&self.replica, "master_repl_offset")
        });
        self.master.kill();
        eventually(LONG, "sentinel promoted the replica", || {
            self.sentinel.master_port() == Some(self.replica.port)
                && info_field(&self.replica, "role").as_deref() == Some("master")
        });
    }
}

#[test]
fn worker_and_ctl_follow_a_sentinel_failover_without_losing_tasks() {
    let mut p = Pair::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}[worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\n",
            p.redis_section()
        ),
    );
    let master = &p.master;
    let mut w = WorkerProc::start(master, &cfg, "w-sentinel", &[]);

    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(push_via_sentinel(master, &cfg, &format!("before-{i}")));
    }
    eventually(LONG, "tasks done before the failover", || {
        master.int(&["HLEN", "peagen.results.index"]) == 10
    });
    p.fail_over();
    let (master, replica) = (&p.master, &p.replica);

    for i in 0..10 {
        ids.push(push_via_sentinel(master, &cfg, &format!("after-{i}")));
    }
    eventually(LONG, "every task done on the new master", || {
        replica.int(&["HLEN", "peagen.results.index"]) == 20
    });
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker must ride through the failover, not exit: {}",
        w.log_text()
    );
    for id in &ids {
        let out = ctl_via_sentinel(master, &cfg, &["task", "get", id, "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "ok", "{id}: {v}");
        assert_eq!(v["worker_id"], "w-sentinel");
    }
    assert_eq!(replica.int(&["XLEN", "peagen.tasks"]), 0);
    let stats: Value = serde_json::from_str(&ctl_via_sentinel(
        master,
        &cfg,
        &["queue", "stats", "--json"],
    ))
    .unwrap();
    assert_eq!(stats["pending"], 0);
    let log = w.log_text();
    assert!(log.contains("master changed"), "failover not logged: {log}");

    w.kill9();
}

/// The LLM handler's budget and rate-limit store has its own connection: it
/// must follow the failover too, or every `mutate` task with a workflow
/// budget fails after it (the connection kept redialling the dead master).
#[test]
fn llm_budgets_follow_a_sentinel_failover() {
    let mut p = Pair::start();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // The shipped LLM stand-in (scripts/llm-standin.py), a real HTTP server.
    let port_file = dir.path().join("llm.port");
    let _llm = Killed(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/llm-standin.py"
            ))
            .arg("--port-file")
            .arg(&port_file)
            .env_remove("LLM_STANDIN_KEY")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let llm_port = eventually(LONG, "LLM stand-in listening", || {
        std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
    });
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}[worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\n\
             retry-backoff-ms = 100\nretry-backoff-max-ms = 200\n\
             [[llm.backends]]\nname = \"stand-in\"\nbase-url = \"http://127.0.0.1:{llm_port}/v1\"\n\
             model = \"m\"\napi-key-env = \"PEAGEN_LLM_KEY\"\n",
            p.redis_section()
        ),
    );
    let master = &p.master;
    ctl_via_sentinel(
        master,
        &cfg,
        &["budget", "set", "wf-s", "--tokens", "100000"],
    );
    let mut w = WorkerProc::start(master, &cfg, "w-llm", &[("PEAGEN_LLM_KEY", "k")]);
    let push = |r: &Redis, id: &str| {
        let payload = r#"{"prompt": "say hi", "max_tokens": 40, "workflow_id": "wf-s"}"#;
        let args = ["push", "--kind", "mutate", "--id", id, "--payload", payload];
        ctl_via_sentinel(r, &cfg, &args);
    };
    let status = |r: &Redis, id: &str| -> Option<Value> {
        let o = ctl(r, Some(&cfg), &["task", "get", id, "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&o.stdout).ok())
            .flatten()
    };
    push(master, "mut-before");
    let v = eventually(LONG, "mutate done before the failover", || {
        status(master, "mut-before")
    });
    assert_eq!(v["status"], "ok", "{v}");
    let used_before = v["data"]["usage"]["total_tokens"].as_u64().unwrap();

    p.fail_over();
    let master = &p.master;
    push(master, "mut-after");
    let v = eventually(LONG, "mutate done after the failover", || {
        status(master, "mut-after")
    });
    assert_eq!(v["status"], "ok", "{v}\n{}", w.log_text());
    let used_after = v["data"]["usage"]["total_tokens"].as_u64().unwrap();
    // The budget on the promoted master counts both calls: the reservation
    // and settlement of the second went to the new master.
    let b: Value = serde_json::from_str(&ctl_via_sentinel(
        master,
        &cfg,
        &["budget", "show", "wf-s", "--json"],
    ))
    .unwrap();
    assert_eq!(b["used"].as_u64(), Some(used_before + used_after), "{b}");
    assert_eq!(b["reserved"], 0, "{b}");

    w.kill9();
}
