//! A real systemd (PID 1 of a private PID+mount namespace over an overlay of
//! the host root, see tests/box/box.sh) and a private redis-server on host
//! loopback, with the project's real binaries installed. Each [`TestBox`] is
//! independent (own scratch directory, overlay, cgroup subtree, Redis port),
//! so tests in one binary may run in parallel. Booting one needs root: tests
//! using it are `#[ignore = "needs root"]` (scripts/test.sh runs them).

use super::{bin, free_port};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const BOX_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/box/box.sh");
pub const CONFIG_IN_BOX: &str = "/etc/peagen/peagen.toml";

pub struct TestBox {
    pub dir: PathBuf,
    pub pid: u32,
    pub redis_port: u16,
    /// Host-side copy of the config (for peagenctl on the host).
    pub config_path: PathBuf,
    pub metrics_port: u16,
}

/// Where box directories go: never under /tmp (the box gets a private /tmp).
fn scratch_root() -> PathBuf {
    let t = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if t.starts_with("/tmp") {
        PathBuf::from("/var/tmp")
    } else {
        t
    }
}

impl TestBox {
    /// Boot a box named `name` and install the binaries built for this test run.
    pub fn start(name: &str) -> TestBox {
        let root = scratch_root();
        std::fs::create_dir_all(&root).unwrap();
        // A fresh directory per box (box.sh rm removes it, see Drop).
        let dir = tempfile::Builder::new()
            .prefix(&format!("peagen-box-{name}-"))
            .tempdir_in(&root)
            .unwrap()
            .keep();
        let out = Command::new(BOX_SH)
            .arg("start")
            .arg(&dir)
            .output()
            .expect("running tests/box/box.sh");
        assert!(
            out.status.success(),
            "box start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |f: &str| -> String {
            std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("box start left no {f}: {e}"))
                .trim()
                .to_string()
        };
        let b = TestBox {
            pid: read("pid").parse().unwrap(),
            redis_port: read("redis.port").parse().unwrap(),
            config_path: dir.join("peagen.toml"),
            metrics_port: free_port(),
            dir,
        };
        for bin in ["peagen-worker", "peagen-spawnerd", "peagenctl"] {
            b.install(&super::bin(bin), &format!("/usr/local/bin/{bin}"));
        }
        b
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// Copy a host file into the box.
    pub fn install(&self, src: &Path, dst: &str) {
        let out = Command::new(BOX_SH)
            .arg("install")
            .arg(&self.dir)
            .arg(src)
            .arg(dst)
            .output()
            .unwrap();
        assert!(out.status.success(), "install {src:?}: {out:?}");
    }

    /// Write `contents` to `dst` inside the box.
    pub fn write(&self, dst: &str, contents: &str) {
        let tmp = self.dir.join("install.tmp");
        std::fs::write(&tmp, contents).unwrap();
        self.install(&tmp, dst);
    }

    /// Run a command inside the box.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new(BOX_SH)
            .arg("exec")
            .arg(&self.dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// Run `sh -c script` inside the box; stdout (panics on failure).
    pub fn sh(&self, script: &str) -> String {
        let o = self.exec(&["sh", "-c", script]);
        assert!(
            o.status.success(),
            "box sh {script:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Write the peagen config (host copy + box copy). `extra` is appended TOML.
    pub fn write_config(&self, spawner: &str, extra: &str) {
        self.write_config_for(&self.redis_url(), spawner, extra);
    }

    /// [`TestBox::write_config`] with another Redis (boxes sharing one).
    pub fn write_config_for(&self, url: &str, spawner: &str, extra: &str) {
        let text = format!(
            r#"[redis]
url = "{url}"
[metrics]
spawner-listen = "127.0.0.1:{mport}"
[log]
level = "info"
[spawner]
reclaim-interval-secs = 5
{spawner}
[spawner.worker-unit]
exec-start = ["/usr/local/bin/peagen-worker", "--config", "{CONFIG_IN_BOX}"]
timeout-stop-secs = 30
[[handlers.command]]
kind = "sleep"
program = "/bin/sh"
args = ["-c", "sleep 2; cat"]
[[handlers.command]]
kind = "slow"
program = "/bin/sh"
args = ["-c", "sleep 15; cat"]
{extra}
"#,
            mport = self.metrics_port,
        );
        std::fs::write(&self.config_path, &text).unwrap();
        self.write(CONFIG_IN_BOX, &text);
    }

    /// Start peagen-spawnerd as a Type=notify service in the box; returns once
    /// it sent READY=1 (systemd-run waits for the start job).
    pub fn start_spawnerd(&self) {
        self.start_spawnerd_watchdog(30);
    }

    /// [`TestBox::start_spawnerd`] with `WatchdogSec=secs`.
    pub fn start_spawnerd_watchdog(&self, secs: u32) {
        self.sh(&format!(
            "systemd-run --unit=peagen-spawnerd -p Type=notify -p NotifyAccess=main \
             -p WatchdogSec={secs} /usr/local/bin/peagen-spawnerd --config {CONFIG_IN_BOX}"
        ));
    }

    /// peagen-spawnerd's `STATUS=` line, which it writes at the end of every
    /// tick: seeing a new one proves a tick ran (and made its starts).
    pub fn status(&self) -> String {
        self.sh("systemctl show -p StatusText --value peagen-spawnerd")
            .trim()
            .to_string()
    }

    /// Worker units with their ActiveState.
    pub fn worker_units(&self) -> Vec<(String, String)> {
        let out = self.sh(
            "systemctl list-units --all --plain --no-legend --no-pager 'peagen-worker@*' | awk '{print $1, $3}'",
        );
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect()
    }

    pub fn live_workers(&self) -> usize {
        self.worker_units()
            .iter()
            .filter(|(_, s)| s == "active" || s == "activating" || s == "deactivating")
            .count()
    }

    /// `peagenctl` on the host, against the box's Redis; parsed JSON.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let o = self.ctl(args);
        assert!(o.status.success(), "peagenctl {args:?}: {o:?}");
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("peagenctl {args:?} printed non-JSON ({e}): {o:?}"))
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("peagenctl"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn push(&self, kind: &str, count: usize) -> Vec<String> {
        let o = self.ctl(&["push", "--json", "-k", kind, "--count", &count.to_string()]);
        assert!(o.status.success(), "push: {o:?}");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["task_id"].as_str().map(str::to_string))
            .collect()
    }

    pub fn stats(&self) -> Value {
        self.ctl_json(&["queue", "stats", "--json"])
    }

    /// The task's result record, if there is one yet.
    pub fn result(&self, task_id: &str) -> Option<Value> {
        let o = self.ctl(&["task", "get", task_id, "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// The spawner's Prometheus text (empty if the endpoint is not up).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return String::new();
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        if c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_err() {
            return String::new();
        }
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        resp.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()
    }

    /// Value of one metric line (exact name + labels) from [`Self::metrics`].
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().ok()).flatten()
        })
    }

    pub fn journal(&self, args: &str) -> String {
        self.sh(&format!("journalctl --no-pager -o cat {args}"))
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Leave a trace for the failure report.
            let j = self.exec(&[
                "journalctl",
                "--no-pager",
                "-n",
                "80",
                "-u",
                "peagen-spawnerd",
            ]);
            eprintln!(
                "--- spawnerd journal ---\n{}",
                String::from_utf8_lossy(&j.stdout)
            );
        }
        // A failed test keeps its overlay for inspection; a passed one
        // removes everything. box.sh waits for every process it started
        // before removing; what it cannot clean up is a warning (written
        // past the test harness's capture so it shows), not a failure.
        let keep = std::thread::panicking();
        let cmd = if keep { "stop" } else { "rm" };
        let warn = match Command::new(BOX_SH).arg(cmd).arg(&self.dir).output() {
            Ok(o) if o.status.success() => {
                keep.then(|| format!("box kept for inspection: {}", self.dir.display()))
            }
            Ok(o) => Some(format!(
                "warning: tests/box/box.sh {cmd} {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("warning: cannot run tests/box/box.sh {cmd}: {e}")),
        };
        if let Some(w) = warn {
            let _ = writeln!(std::io::stderr(), "{w}");
        }
    }
}
