//! `execute`: untrusted code in the sandbox ([`crate::sandbox`]).
//!
//! Payload, either form:
//! - `{argv, files?, stdin?, env?, limits?}`: run `argv` with `files`
//!   (relative path -> UTF-8 content) written into the work dir `/work`,
//!   `stdin` as standard input and exactly `env` as environment (the
//!   worker's own environment never reaches the sandbox).
//! - `{child_src, entry_fn, args?, kwargs?, env?, limits?}` (Peagen's
//!   prototype form): the configured interpreter (`sandbox.python`) loads
//!   `child_src` as module `child` and calls `entry_fn(*args, **kwargs)`
//!   (`args` a JSON list, `kwargs` a JSON object); its JSON-encodable return
//!   value comes back as `result`, and `speed_ms` is the call's own duration.
//!
//! Result data: `{verdict, speed_ms, peak_kb, result?}`. Verdict `ok` ->
//! `Status::Ok`; `internal_error` -> retryable error; anything the user code
//! did (non-zero exit, signal, timeout, memory/output limit) -> non-retryable
//! error with the same data.

use super::{BoxFuture, Handler, Outcome};
use crate::config::SandboxConfig;
use crate::sandbox::{
    interpreter_binds, LimitRequest, Request, Sandbox, Status, Verdict, WarmRequest,
};
use crate::task::Task;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Execute {
    cfg: SandboxConfig,
    sandbox: Result<Arc<Sandbox>, String>,
}

impl Execute {
    pub fn new(cfg: SandboxConfig) -> Self {
        let sandbox = Sandbox::new(&cfg).map(Arc::new).map_err(|e| e.to_string());
        Execute { cfg, sandbox }
    }
}

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    limits: LimitRequest,
    #[serde(default)]
    child_src: Option<String>,
    #[serde(default)]
    entry_fn: Option<String>,
    /// Positional arguments of `entry_fn` (a JSON list).
    #[serde(default)]
    args: Option<Value>,
    /// Keyword arguments of `entry_fn` (a JSON object).
    #[serde(default)]
    kwargs: Option<Value>,
}

/// Marks the driver's result line on stdout (ASCII record separator).
const RESULT_MARK: &str = "\x1ePEAGEN_RESULT ";

/// The cold driver: the call's arguments come on stdin as
/// `{"args": [...], "kwargs": {...}}` (no size limit of argv, nothing
/// extra in the work dir).
const DRIVER: &str = r#"
import importlib.util, json, sys, time
call = json.load(sys.stdin)
sys.path.insert(0, "/work")
spec = importlib.util.spec_from_file_location("child", "/work/child.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
fn = getattr(mod, sys.argv[1])
args, kwargs = call["args"], call["kwargs"]
t0 = time.perf_counter()
r = fn(*args, **kwargs)
dt = (time.perf_counter() - t0) * 1000.0
try:
    enc = json.dumps(r)
except (TypeError, ValueError):
    enc = json.dumps(repr(r))
sys.stdout.flush()
sys.stdout.write("\n\x1ePEAGEN_RESULT {\"speed_ms\": %r, \"result\": %s}\n" % (dt, enc))
"#;

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch == '_' || ch.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
}

/// `{"args": [...], "kwargs": {...}}` for the entry function, `None` when
/// the payload gives neither; `Err` names the field of the wrong type.
fn call_args(args: Option<Value>, kwargs: Option<Value>) -> Result<Option<Value>, String> {
    if args.is_none() && kwargs.is_none() {
        return Ok(None);
    }
    let args = match args {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(a @ Value::Array(_)) => a,
        Some(other) => {
            return Err(format!(
                "bad execute payload: `args` must be a JSON list, not {}",
                kind(&other)
            ))
        }
    };
    let kwargs = match kwargs {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(k @ Value::Object(_)) => k,
        Some(other) => {
            return Err(format!(
                "bad execute payload: `kwargs` must be a JSON object, not {}",
                kind(&other)
            ))
        }
    };
    Ok(Some(json!({"args": args, "kwargs": kwargs})))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Build the sandbox request (and, for the prototype form, its warm
/// twin); `Err` is a bad payload (non-retryable).
fn request(cfg: &SandboxConfig, task: &Task) -> Result<(Request, Option<WarmRequest>), String> {
    let p: Payload = serde_json::from_value(task.payload.clone())
        .map_err(|e| format!("bad execute payload: {e}"))?;
    let mut req = Request {
        env: p.env,
        limits: p.limits,
        ..Request::default()
    };
    if let Some(t) = task.timeout_ms {
        req.limits.wall_ms = Some(req.limits.wall_ms.map_or(t, |w| w.min(t)));
    }
    let call = call_args(p.args, p.kwargs)?;
    let prototype = match (p.argv, p.child_src, p.entry_fn) {
        (Some(argv), None, None) => {
            if call.is_some() {
                return Err(
                    "bad execute payload: `args`/`kwargs` go with `entry_fn`, not `argv`".into(),
                );
            }
            if argv.is_empty() {
                return Err("bad execute payload: argv is empty".into());
            }
            req.argv = argv;
            req.files = p
                .files
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            req.stdin = p.stdin.into_bytes();
            None
        }
        (None, Some(src), Some(entry)) => {
            if !is_identifier(&entry) {
                return Err(format!(
                    "bad execute payload: entry_fn {entry:?} is not an identifier"
                ));
            }
            let call = call.unwrap_or_else(|| json!({"args": [], "kwargs": {}}));
            let warm = WarmRequest {
                src: src.clone(),
                entry_fn: entry.clone(),
                args: call["args"].as_array().cloned().unwrap_or_default(),
                kwargs: call["kwargs"].as_object().cloned().unwrap_or_default(),
                env: req.env.clone(),
                limits: req.limits.clone(),
            };
            let py = cfg.python.display().to_string();
            req.argv = vec![py, "-c".into(), DRIVER.into(), entry];
            req.files.insert("child.py".into(), src.into_bytes());
            req.stdin = call.to_string().into_bytes();
            // An interpreter outside the configured binds brings its prefix.
            req.extra_ro_binds = interpreter_binds(cfg);
            Some(warm)
        }
        _ => {
            return Err(
                "bad execute payload: give either `argv` or both `child_src` and `entry_fn`".into(),
            )
        }
    };
    Ok((req, prototype))
}

/// Result data for a verdict; strips the driver's result line from stdout.
fn data(mut v: Verdict, prototype: bool) -> Value {
    let mut speed_ms = v.wall_ms;
    let mut result = Value::Null;
    if prototype {
        if let Some(pos) = v.stdout.rfind(RESULT_MARK) {
            let line = v.stdout[pos + RESULT_MARK.len()..].trim_end().to_string();
            if let Ok(r) = serde_json::from_str::<Value>(&line) {
                if let Some(s) = r.get("speed_ms").and_then(Value::as_f64) {
                    speed_ms = s;
                }
                result = r.get("result").cloned().unwrap_or(Value::Null);
                let cut = if pos > 0 && v.stdout.as_bytes()[pos - 1] == b'\n' {
                    pos - 1
                } else {
                    pos
                };
                v.stdout.truncate(cut);
            }
        }
    }
    let peak_kb = v.peak_memory_bytes.map(|b| b / 1024);
    let mut d = json!({ "speed_ms": speed_ms, "peak_kb": peak_kb, "verdict": v });
    if prototype {
        d["result"] = result;
    }
    d
}

/// Map a verdict to the handler outcome.
fn outcome(v: Verdict, prototype: bool) -> Outcome {
    let status = v.status;
    let msg = if v.message.is_empty() {
        format!("{status:?}")
    } else {
        v.message.clone()
    };
    let mut d = data(v, prototype);
    match status {
        Status::Ok => Outcome::ok(d),
        s => {
            let retryable = s == Status::InternalError;
            d["msg"] = json!(msg);
            d["retryable"] = json!(retryable);
            Outcome {
                data: d,
                ..Outcome::error("", retryable)
            }
        }
    }
}

impl Handler for Execute {
    fn name(&self) -> &str {
        "execute"
    }
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }
    /// A warm interpreter ready before the first prototype task.
    fn prepare(&self) {
        if let Ok(sb) = &self.sandbox {
            sb.prestart_warm();
        }
    }
    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let sb = match &self.sandbox {
                Ok(sb) => Arc::clone(sb),
                Err(e) => return Outcome::error(format!("sandbox unavailable: {e}"), true),
            };
            let (req, warm) = match request(&self.cfg, task) {
                Ok(r) => r,
                Err(e) => return Outcome::error(e, false),
            };
            let prototype = warm.is_some();
            if let Some(w) = warm.filter(|_| self.cfg.warm) {
                match sb.run_warm_async(w).await {
                    Ok(v) => return outcome(v, true),
                    Err(e) => tracing::warn!(
                        task_id = %task.id,
                        error = %e,
                        "execute: warm mode unavailable, running the task cold"
                    ),
                }
            }
            outcome(sb.run_async(req).await, prototype)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_forms() {
        let cfg = SandboxConfig::default();
        let t = Task::new(
            "execute",
            json!({"argv": ["/bin/true"], "files": {"a.txt": "x"}}),
        );
        let (r, warm) = request(&cfg, &t).unwrap();
        assert!(warm.is_none());
        assert_eq!(r.files["a.txt"], b"x");
        let t = Task::new(
            "execute",
            json!({"child_src": "def f(): return 1", "entry_fn": "f"}),
        );
        let (r, warm) = request(&cfg, &t).unwrap();
        assert!(warm.is_some());
        assert_eq!(r.argv.last().unwrap(), "f");
        for bad in [
            json!({}),
            json!({"argv": []}),
            json!({"child_src": "x", "entry_fn": "f; import os"}),
            json!({"argv": ["x"], "child_src": "y", "entry_fn": "f"}),
            json!({"argv": ["x"], "args": [1]}),
            json!({"child_src": "x", "entry_fn": "f", "args": {"a": 1}}),
            json!({"child_src": "x", "entry_fn": "f", "kwargs": [1]}),
            json!({"child_src": "x", "entry_fn": "f", "args": "abc"}),
        ] {
            assert!(request(&cfg, &Task::new("execute", bad)).is_err());
        }
    }
}
