//! Worker start-up order: `READY=1` goes out once Redis answers, without
//! waiting for the consumer group (one round trip less in every spawn), and
//! a task pushed right after READY still waits for the group and is done.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use support::{eventually, push, write_config, Redis, WorkerProc};

/// A notify socket like systemd's; returns everything received so far.
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    got: String,
}

impl NotifySocket {
    fn new(dir: &std::path::Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        NotifySocket {
            sock,
            path,
            got: String::new(),
        }
    }

    fn received(&mut self) -> &str {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got.push_str(&String::from_utf8_lossy(&buf[..n]));
            self.got.push('\n');
        }
        &self.got
    }
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    write_config(dir, "[worker]\nidle-exit-secs = 0\n")
}

/// XGROUP refused (renamed away): the worker still announces READY=1, since
/// it is connected; it does not consume until the group exists.
#[test]
fn ready_does_not_wait_for_the_consumer_group() {
    let r = Redis::start_args(false, &["--rename-command", "XGROUP", ""]);
    let dir = tempfile::tempdir_in(support::scratch()).unwrap();
    let cfg = config(dir.path());
    let mut ns = NotifySocket::new(dir.path());
    let path = ns.path.to_str().unwrap().to_string();
    let mut w = WorkerProc::start(&r, &cfg, "w-ready", &[("NOTIFY_SOCKET", &path)]);
    eventually(Duration::from_secs(30), "READY=1 from the worker", || {
        ns.received().contains("READY=1")
    });
    w.kill9();
}

/// A fresh Redis (no stream, no group): READY first, then the group, and a
/// task pushed as soon as READY arrived is done.
#[test]
fn a_task_pushed_at_ready_is_done() {
    let r = Redis::start();
    let dir = tempfile::tempdir_in(support::scratch()).unwrap();
    let cfg = config(dir.path());
    let mut ns = NotifySocket::new(dir.path());
    let path = ns.path.to_str().unwrap().to_string();
    let mut w = WorkerProc::start(&r, &cfg, "w-first", &[("NOTIFY_SOCKET", &path)]);
    eventually(Duration::from_secs(30), "READY=1 from the worker", || {
        ns.received().contains("READY=1")
    });
    let id = push(&r, &cfg, "echo", "t-first");
    eventually(Duration::from_secs(30), "the task's result", || {
        r.stream_data("peagen.results")
            .iter()
            .any(|v| v["task_id"] == id.as_str() && v["status"] == "ok")
    });
    w.kill9();
}

/// Pids of every process below `pid` (from /proc's parent links).
fn descendants(pid: i32) -> Vec<i32> {
    let parent_of = |p: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces, so after ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().filter(|c| parent_of(**c) == Some(p)));
        i += 1;
    }
    out.remove(0);
    out
}

/// A worker prepares its warm interpreter after READY=1, before any task
/// asks for one: the first candidate does not pay for the start.
#[test]
fn worker_prestarts_a_zygote_after_ready() {
    let r = support::Redis::start();
    let dir = tempfile::tempdir_in(support::scratch()).unwrap();
    let cfg = support::write_config(dir.path(), "[worker]\nidle-exit-secs = 0\n");
    let w = support::WorkerProc::start(&r, &cfg, "w-prestart", &[]);
    let python = peagen_fabric::config::SandboxConfig::default().python;
    let python = python.file_name().unwrap().to_string_lossy().into_owned();
    support::eventually(
        std::time::Duration::from_secs(60),
        "a zygote below the worker",
        || {
            descendants(w.pid()).into_iter().any(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&python))
                    .unwrap_or(false)
            })
        },
    );
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0, "no task was pushed");
}
