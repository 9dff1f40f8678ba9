//! `command`: maps a task kind to a configured program.
//!
//! Contract: the task JSON on stdin, the result data JSON on stdout; exit 0
//! = ok, 75 (EX_TEMPFAIL) = retryable error, anything else = error. The
//! program runs in its own process group so a timeout kills the whole tree;
//! stdout/stderr are read with a byte cap.

use super::{BoxFuture, Handler, Outcome};
use crate::config::{CommandHandlerConfig, SandboxConfig};
use crate::sandbox::{LimitRequest, Sandbox, Status as SbStatus};
use crate::task::{Status, Task};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub struct Command {
    cfg: CommandHandlerConfig,
    /// Built once when `sandbox = true`; the error is reported per task.
    sandbox: Option<Result<Arc<Sandbox>, String>>,
    /// Worker environment variables the program must not inherit (LLM keys).
    strip_env: Vec<String>,
}

impl Command {
    pub fn new(cfg: CommandHandlerConfig, sandbox: SandboxConfig) -> Self {
        let sandbox = cfg.sandbox.then(|| {
            Sandbox::new(&sandbox)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        Command {
            cfg,
            sandbox,
            strip_env: Vec::new(),
        }
    }

    /// Keep these variables (secrets of other handlers) from the program.
    pub fn without_env(mut self, names: Vec<String>) -> Self {
        self.strip_env = names;
        self
    }

    /// The same program inside the execute sandbox: the task on stdin, an
    /// environment built from scratch, the handler's timeout and output cap
    /// as the sandbox's wall-clock and output limits.
    async fn run_sandboxed(&self, sb: &Arc<Sandbox>, task: &Task, timeout: Duration) -> Outcome {
        let program = self.cfg.program.display().to_string();
        let env = BTreeMap::from([
            ("PEAGEN_TASK_ID".to_string(), task.id.clone()),
            ("PEAGEN_TASK_KIND".to_string(), task.kind.clone()),
            (
                "PEAGEN_TASK_ATTEMPT".to_string(),
                (task.attempts + 1).to_string(),
            ),
        ]);
        let limits = LimitRequest {
            wall_ms: Some(timeout.as_millis() as u64),
            output_bytes: Some(self.cfg.output_cap_bytes as u64),
            ..Default::default()
        };
        let v = sb
            .run_program(
                &self.cfg.program,
                &self.cfg.args,
                task.to_json().into_bytes(),
                env,
                limits,
            )
            .await;
        let verdict = serde_json::json!({
            "status": v.status, "exit_code": v.exit_code, "signal": v.signal_name,
            "wall_ms": v.wall_ms, "cpu_ms": v.cpu_ms, "peak_memory_bytes": v.peak_memory_bytes,
            "message": v.message,
        });
        let mut o = match v.status {
            SbStatus::Ok | SbStatus::RuntimeError => exit_outcome(
                &program,
                v.exit_code.unwrap_or(-1),
                v.stdout.as_bytes(),
                v.stderr.as_bytes(),
            ),
            SbStatus::Timeout => Outcome::error(
                format!("{program} timed out in the sandbox: {}", v.message),
                true,
            ),
            SbStatus::OutputLimit => Outcome::error(
                format!(
                    "{program} wrote more than {} bytes (output-cap-bytes)",
                    self.cfg.output_cap_bytes
                ),
                false,
            ),
            SbStatus::InternalError => {
                Outcome::error(format!("sandbox failed: {}", v.message), true)
            }
            _ => Outcome::error(
                format!(
                    "{program} failed in the sandbox: {:?} {}",
                    v.status, v.message
                ),
                false,
            ),
        };
        if o.status == Status::Error {
            o.data["sandbox"] = verdict;
        }
        o
    }
}

/// Map a finished program to an outcome: 0 = ok with stdout as JSON data,
/// 75 = retryable error, anything else = error.
fn exit_outcome(program: &str, code: i32, stdout: &[u8], stderr: &[u8]) -> Outcome {
    match code {
        0 => {
            if stdout.iter().all(u8::is_ascii_whitespace) {
                return Outcome::ok(serde_json::json!({}));
            }
            match serde_json::from_slice::<serde_json::Value>(stdout) {
                Ok(v) => Outcome::ok(v),
                Err(e) => Outcome::error(
                    format!("{program} exited 0 but stdout is not JSON: {e}"),
                    false,
                ),
            }
        }
        code => {
            let retryable = code == crate::exit::TEMPFAIL;
            let mut o = Outcome::error(
                format!("{program} exited with {code}: {}", tail(stderr, 2000)),
                retryable,
            );
            o.data["exit_code"] = code.into();
            o
        }
    }
}

/// Read up to `cap` bytes, then keep draining (so the child never blocks on
/// a full pipe) and report truncation.
pub async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                if n > room {
                    truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (out, truncated)
}

fn tail(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].trim().to_string()
}

impl Handler for Command {
    fn name(&self) -> &str {
        "command"
    }
    fn version(&self) -> &str {
        &self.cfg.version
    }
    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let timeout = Duration::from_millis(
                task.timeout_ms
                    .unwrap_or(self.cfg.timeout_ms)
                    .min(self.cfg.timeout_ms),
            );
            match &self.sandbox {
                Some(Ok(sb)) => return self.run_sandboxed(sb, task, timeout).await,
                Some(Err(e)) => {
                    return Outcome::error(
                        format!("the sandbox cannot be set up on this host: {e}"),
                        true,
                    )
                }
                None => {}
            }
            let program = self.cfg.program.display().to_string();
            let mut cmd = tokio::process::Command::new(&self.cfg.program);
            cmd.args(&self.cfg.args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                // Never hand systemd's notify/watchdog sockets to the program.
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID")
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .env("PEAGEN_TASK_ID", &task.id)
                .env("PEAGEN_TASK_KIND", &task.kind)
                .env("PEAGEN_TASK_ATTEMPT", (task.attempts + 1).to_string());
            for k in &self.strip_env {
                cmd.env_remove(k);
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => return Outcome::error(format!("cannot start {program}: {e}"), false),
            };
            let pgid = child.id().map(|p| p as i32);
            let input = task.to_json();
            let mut stdin = child.stdin.take().expect("piped");
            let feed = async move {
                let _ = stdin.write_all(input.as_bytes()).await;
                drop(stdin);
            };
            let cap = self.cfg.output_cap_bytes;
            let out = read_capped(child.stdout.take().expect("piped"), cap);
            let err = read_capped(child.stderr.take().expect("piped"), 64 * 1024);
            let timeout = Duration::from_millis(
                task.timeout_ms
                    .unwrap_or(self.cfg.timeout_ms)
                    .min(self.cfg.timeout_ms),
            );
            let run = async {
                let (_, o, e, st) = tokio::join!(feed, out, err, child.wait());
                (o, e, st)
            };
            let res = tokio::time::timeout(timeout, run).await;
            let Ok(((stdout, out_trunc), (stderr, _), status)) = res else {
                if let Some(p) = pgid {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Outcome::error(
                    format!(
                        "{program} timed out after {} ms; its process group was killed",
                        timeout.as_millis()
                    ),
                    true,
                );
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    return Outcome::error(format!("waiting for {program} failed: {e}"), true)
                }
            };
            // The leader is gone; make sure nothing it forked lingers.
            if let Some(p) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if out_trunc {
                return Outcome::error(
                    format!("{program} wrote more than {cap} bytes to stdout (output-cap-bytes)"),
                    false,
                );
            }
            match status.code() {
                Some(code) => exit_outcome(&program, code, &stdout, &stderr),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    Outcome::error(
                        format!(
                            "{program} was killed by signal {}",
                            status.signal().unwrap_or(0)
                        ),
                        false,
                    )
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(args: &[&str], timeout_ms: u64, cap: usize) -> Command {
        hs(args, timeout_ms, cap, false)
    }

    fn hs(args: &[&str], timeout_ms: u64, cap: usize, sandbox: bool) -> Command {
        Command::new(
            CommandHandlerConfig {
                kind: "t".into(),
                program: "/bin/sh".into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                timeout_ms,
                output_cap_bytes: cap,
                sandbox,
                version: "1".into(),
            },
            SandboxConfig::default(),
        )
    }

    fn task() -> Task {
        Task::new("t", serde_json::json!({"n": 1}))
    }

    #[tokio::test]
    async fn ok_reads_json() {
        let o = h(&["-c", "cat >/dev/null; echo '{\"a\":2}'"], 5000, 1024)
            .run(&task())
            .await;
        assert_eq!(o.status, Status::Ok);
        assert_eq!(o.data["a"], 2);
    }

    #[tokio::test]
    async fn sees_task_on_stdin() {
        let o = h(&["-c", "cat"], 5000, 1 << 20).run(&task()).await;
        assert_eq!(o.data["payload"]["n"], 1);
    }

    #[tokio::test]
    async fn exit_75_is_retryable() {
        let o = h(&["-c", "echo boom >&2; exit 75"], 5000, 1024)
            .run(&task())
            .await;
        assert_eq!(o.status, Status::Error);
        assert!(o.retryable);
        assert!(o.data["msg"].as_str().unwrap().contains("boom"));
        let o = h(&["-c", "exit 3"], 5000, 1024).run(&task()).await;
        assert!(!o.retryable);
    }

    #[tokio::test]
    async fn timeout_kills_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("m");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let o = h(&["-c", &script], 300, 1024).run(&task()).await;
        assert!(o.retryable, "{o:?}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "grandchild survived the timeout");
    }

    #[tokio::test]
    async fn output_cap() {
        let o = h(&["-c", "head -c 100000 /dev/zero"], 5000, 1000)
            .run(&task())
            .await;
        assert_eq!(o.status, Status::Error);
        assert!(o.data["msg"].as_str().unwrap().contains("output-cap-bytes"));
    }

    #[tokio::test]
    async fn sandboxed_program_gets_the_task_and_nothing_of_the_host() {
        // No set_var (tests run in parallel threads): cargo puts
        // CARGO_MANIFEST_DIR in every test's environment, so it stands for
        // any host variable that must not reach the sandbox.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let script = "t=$(cat); test -r /etc/shadow && exit 9; \
                      test -n \"$CARGO_MANIFEST_DIR\" && exit 8; \
                      printf '{\"task\":%s,\"pid\":%s}' \"$t\" $$";
        let o = hs(&["-c", script], 10_000, 1 << 20, true)
            .run(&task())
            .await;
        assert_eq!(o.status, Status::Ok, "{o:?}");
        assert_eq!(o.data["task"]["payload"]["n"], 1);
        // Not PID 1 (a reaper is), and not the host's pid either.
        assert!(o.data["pid"].as_u64().unwrap() < 100, "{o:?}");
    }

    #[tokio::test]
    async fn sandboxed_exit_codes_and_timeout() {
        let o = hs(&["-c", "exit 75"], 10_000, 1024, true)
            .run(&task())
            .await;
        assert!(o.retryable && o.status == Status::Error, "{o:?}");
        let o = hs(&["-c", "exit 4"], 10_000, 1024, true).run(&task()).await;
        assert!(!o.retryable && o.data["exit_code"] == 4, "{o:?}");
        let o = hs(&["-c", "sleep 30"], 300, 1024, true).run(&task()).await;
        assert!(o.retryable, "{o:?}");
        assert_eq!(o.data["sandbox"]["status"], "timeout", "{o:?}");
    }
}
