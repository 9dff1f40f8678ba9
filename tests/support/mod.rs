//! Test support: a real `redis-server` on a private port, and the real
//! binaries driven through their CLI.
#![allow(dead_code)]

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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
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
            port: free_port(),
            dir,
            child: None,
            aof,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not come up on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill (SIGKILL) and start again on the same port and data dir.
    pub fn crash_and_restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn();
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

/// Poll `f` until it is true; panic with `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}
