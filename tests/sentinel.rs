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

/// Push through peagenctl with the sentinel config; retried while the
/// failover is still in progress (a push then fails cleanly, not silently).
fn push_via_sentinel(r: &Redis, cfg: &std::path::Path, id: &str) -> String {
    let mut last = String::new();
    for _ in 0..120 {
        let o = ctl(r, Some(cfg), &["push", "--kind", "echo", "--id", id]);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).trim().to_string();
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("push {id} kept failing: {last}");
}

#[test]
fn worker_and_ctl_follow_a_sentinel_failover_without_losing_tasks() {
    let mut master = Redis::start();
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

    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // redis.url (and PEAGEN_REDIS_URL, which the helpers set to the first
    // master) only carries credentials here: the address comes from the sentinel.
    let cfg = write_config(
        dir.path(),
        &format!(
            "[redis]\nsentinel-master = \"{MASTER}\"\nsentinels = [\"{}\"]\n\
             [worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\n",
            sentinel.url()
        ),
    );
    let mut w = WorkerProc::start(&master, &cfg, "w-sentinel", &[]);

    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(push_via_sentinel(&master, &cfg, &format!("before-{i}")));
    }
    eventually(LONG, "tasks done before the failover", || {
        master.int(&["HLEN", "peagen.results.index"]) == 10
    });
    // Replication is asynchronous: let the replica catch up so the kill
    // below loses nothing that was acknowledged.
    eventually(LONG, "replica caught up", || {
        let m = info_field(&master, "master_repl_offset");
        m.is_some() && m == info_field(&replica, "master_repl_offset")
    });

    master.kill(); // SIGKILL
    eventually(LONG, "sentinel promoted the replica", || {
        sentinel.master_port() == Some(replica.port)
            && info_field(&replica, "role").as_deref() == Some("master")
    });

    for i in 0..10 {
        ids.push(push_via_sentinel(&master, &cfg, &format!("after-{i}")));
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
        let out = ctl_ok(&master, Some(&cfg), &["task", "get", id, "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["status"], "ok", "{id}: {v}");
        assert_eq!(v["worker_id"], "w-sentinel");
    }
    assert_eq!(replica.int(&["XLEN", "peagen.tasks"]), 0);
    let stats: Value =
        serde_json::from_str(&ctl_ok(&master, Some(&cfg), &["queue", "stats", "--json"])).unwrap();
    assert_eq!(stats["pending"], 0);
    let log = w.log_text();
    assert!(log.contains("master changed"), "failover not logged: {log}");

    w.kill9();
    drop(sentinel);
}
