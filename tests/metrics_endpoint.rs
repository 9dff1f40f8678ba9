//! The real peagen-spawnerd's metrics endpoint when the process runs out of
//! file descriptors: accept() then fails with EMFILE while the listener stays
//! readable, and an immediate retry is a busy loop at 100% CPU. The endpoint
//! must back off instead. Measured as CPU ticks over a window with a bound
//! far above what a backing-off loop uses and far below a spin.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start peagen-spawnerd with the metrics endpoint on `port`, Redis on a
/// closed port (it keeps retrying, quietly) and at most `nofile` descriptors.
fn start(dir: &Path, port: u16, nofile: Option<u32>) -> Daemon {
    let cfg = dir.join("peagen.toml");
    let mut f = std::fs::File::create(&cfg).unwrap();
    writeln!(
        f,
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\n[metrics]\nspawner-listen = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\nformat = \"text\"",
        free_port()
    )
    .unwrap();
    let limit = nofile
        .map(|n| format!("ulimit -n {n} && "))
        .unwrap_or_default();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{limit}exec \"$0\" --config \"$1\""))
        .arg(env!("CARGO_BIN_EXE_peagen-spawnerd"))
        .arg(&cfg)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    wait_for("the metrics endpoint", Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    d
}

#[test]
fn metrics_endpoint_backs_off_when_out_of_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    // The daemon's own descriptors at rest, to set a limit just above them
    // (below the endpoint's connection cap, so accept really hits EMFILE).
    let base = {
        let port = free_port();
        let d = start(dir.path(), port, None);
        std::thread::sleep(Duration::from_millis(500));
        fds(d.0.id())
    };
    let limit = base as u32 + 4;
    let port = free_port();
    let d = start(dir.path(), port, Some(limit));
    let pid = d.0.id();
    // Silent clients: each accepted one holds a descriptor until the
    // endpoint's client timeout; the rest wait in the listen backlog.
    let held: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(held.len() > 16, "connections made: {}", held.len());
    wait_for(
        "the descriptor limit reached",
        Duration::from_secs(30),
        || fds(pid) >= limit as usize,
    );
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_ticks(pid) - t0;
    eprintln!("CPU ticks used in the window: {used}");
    drop(held);
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    // A backing-off loop uses 0-2 ticks here; a spin uses its whole share
    // of a core: 400 ticks at 100 Hz when idle, and still ~80 with a load
    // average of 12 on 2 cores (measured with the backoff removed).
    assert!(
        used < 20,
        "peagen-spawnerd used {used} CPU ticks in 4 s while out of descriptors (busy accept loop?)\n{log}"
    );
    assert!(
        log.contains("metrics endpoint cannot accept connections"),
        "the condition is logged: {log}"
    );
}
