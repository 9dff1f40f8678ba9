//! Test support, one module for every integration test: real `redis-server`s
//! on private ports, the real binaries driven through their CLI, a real
//! systemd in a box ([`systemd_box`]), and [`eventually`].
#![allow(dead_code)]

pub mod bwrap;
pub mod llm_standin;
pub mod prometheus;
pub mod systemd_box;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    aof: bool,
    /// Extra `redis-server` arguments (e.g. `--replicaof`).
    extra: Vec<String>,
}

/// A port that was free a moment ago. Another process may take it before
/// ours binds it: servers started on it go through [`start_server`], which
/// notices and tries another one.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Start `redis-server ARGS... --port P` on a free port P and wait until it
/// answers. The server is ours when its `INFO server` names our child's pid
/// (not whichever server answers on P); when it exits instead (P was taken
/// between [`free_port`] and its bind), try again on another port.
/// `fixed_port`: that port only (a restart of a server that had it).
/// `log`: redis-server's log file, quoted when it does not come up.
pub fn start_server(
    args: &[&OsStr],
    fixed_port: Option<u16>,
    log: &Path,
) -> Result<(Child, u16), String> {
    let attempts = if fixed_port.is_some() { 1 } else { 5 };
    let mut why = String::new();
    for _ in 0..attempts {
        let port = fixed_port.unwrap_or_else(free_port);
        let mut child = Command::new("redis-server")
            .args(args)
            .arg("--port")
            .arg(port.to_string())
            .arg("--logfile")
            .arg(log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                why = format!("redis-server on port {port} exited ({st}): {tail:?}");
                break;
            }
            if server_pid(port) == Some(child.id()) {
                return Ok((child, port));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                why = format!("redis-server on port {port} did not answer within 10 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(why)
}

/// `process_id` from `INFO server` of whatever answers on `port`.
fn server_pid(port: u16) -> Option<u32> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(["INFO", "server"])
        .output()
        .expect("redis-cli must be installed (scripts/install-deps.sh)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// `aof`: append-only file with fsync on every write, so a restart
    /// (even a crash) loses nothing.
    pub fn start_with(aof: bool) -> Self {
        Self::start_args(aof, &[])
    }

    pub fn start_args(aof: bool, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peagen-redis")
            .tempdir_in(scratch())
            .unwrap();
        let mut r = Redis {
            port: 0,
            dir,
            child: None,
            aof,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn(false);
        r
    }

    /// Start the server; on its current port when `restart` (clients keep
    /// their URL), else on a free one.
    fn spawn(&mut self, restart: bool) {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--bind"),
            OsStr::new("127.0.0.1"),
            OsStr::new("--dir"),
            self.dir.path().as_os_str(),
            OsStr::new("--save"),
            OsStr::new(""),
        ];
        args.extend(self.extra.iter().map(OsStr::new));
        if self.aof {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(OsStr::new));
        } else {
            args.extend(["--appendonly", "no"].map(OsStr::new));
        }
        let log = self.dir.path().join("redis.log");
        match start_server(&args, restart.then_some(self.port), &log) {
            Ok((child, port)) => {
                self.child = Some(child);
                self.port = port;
            }
            Err(why) => panic!("{why}"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill (SIGKILL) and start again on the same port and data dir.
    pub fn crash_and_restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn(true);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli must be installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `HGETALL key` with numeric values (redis-cli without a TTY prints one
    /// item per line: field, value, ...).
    pub fn hash_f64(&self, key: &str) -> std::collections::BTreeMap<String, f64> {
        let raw = self.cli(&["HGETALL", key]);
        let items: Vec<&str> = raw.lines().collect();
        items
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].parse().unwrap()))
            .collect()
    }

    pub fn int(&self, args: &[&str]) -> i64 {
        let s = self.cli(args);
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{args:?} -> {s:?}"))
    }

    /// `data` fields of every entry of a stream, parsed.
    pub fn stream_data(&self, stream: &str) -> Vec<serde_json::Value> {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("--json")
            .args(["XRANGE", stream, "-", "+"])
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::json!([]));
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| {
                let fields = e.get(1)?.as_array()?.clone();
                let i = fields.iter().position(|f| f == "data")?;
                let s = fields.get(i + 1)?.as_str()?;
                Some(serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.to_string())))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Scratch space outside /tmp-sensitive places but cleaned by TempDir.
pub fn scratch() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "peagen-worker" => PathBuf::from(env!("CARGO_BIN_EXE_peagen-worker")),
        "peagen-spawnerd" => PathBuf::from(env!("CARGO_BIN_EXE_peagen-spawnerd")),
        "peagenctl" => PathBuf::from(env!("CARGO_BIN_EXE_peagenctl")),
        _ => panic!("unknown binary {name}"),
    }
}

pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("peagen.toml");
    std::fs::write(&p, body).unwrap();
    p
}

pub fn ctl(redis: &Redis, config: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(bin("peagenctl"));
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.args(args)
        .env("PEAGEN_REDIS_URL", redis.url())
        .output()
        .unwrap()
}

pub fn ctl_ok(redis: &Redis, config: Option<&Path>, args: &[&str]) -> String {
    let o = ctl(redis, config, args);
    assert!(
        o.status.success(),
        "peagenctl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `peagenctl push --kind KIND --id ID`; returns the printed task id.
pub fn push(redis: &Redis, config: &Path, kind: &str, id: &str) -> String {
    ctl_ok(redis, Some(config), &["push", "--kind", kind, "--id", id])
        .trim()
        .to_string()
}

pub struct WorkerProc {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProc {
    pub fn start(redis: &Redis, config: &Path, id: &str, env: &[(&str, &str)]) -> Self {
        let log = config.with_file_name(format!("worker-{id}-{}.log", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut c = Command::new(bin("peagen-worker"));
        c.arg("--config")
            .arg(config)
            .env("PEAGEN_REDIS_URL", redis.url())
            .env("PEAGEN_WORKER_ID", id)
            .env("RUST_LOG", "info")
            .env("PEAGEN_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(f);
        for (k, v) in env {
            c.env(k, v);
        }
        WorkerProc {
            child: c.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn term(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`eventually`] polls for: `true`, or `Some(value)`.
pub trait Ready {
    type Output;
    fn ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Poll `f` until it is ready (`true` or `Some(v)`, then returns `()` or
/// `v`); panic naming `what` after `within`, a generous bound on a hang and
/// not a timing assertion. Polls often at first, then every 200 ms (box
/// tests poll through `systemctl`, which costs CPU).
pub fn eventually<R: Ready>(within: Duration, what: &str, mut f: impl FnMut() -> R) -> R::Output {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f().ready() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// `GET /metrics` of a metrics endpoint; the whole HTTP answer, which must be a 200.
pub fn scrape(addr: impl std::net::ToSocketAddrs + std::fmt::Debug) -> String {
    use std::io::{Read, Write};
    let what = format!("{addr:?}");
    let mut c = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{what}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{what}: {out}");
    out
}

/// A child killed and reaped when the test ends, also when it panics.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
