//! The LLM handler end to end: a real redis-server, the real peagen-worker
//! and peagenctl binaries, and a scripted chat-completions server written
//! here (hand-written HTTP/1.1 on a tokio TcpListener, so every answer can
//! be scripted: usage numbers, 429 + Retry-After, 503, slow answers, 400,
//! garbage JSON, connection resets).

mod support;

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(60);
const KEY: &str = "sk-peagen-test-7f3a9c1e5b2d4f60";

/// One scripted answer.
#[derive(Clone, Debug)]
enum Reply {
    Ok {
        prompt: u64,
        completion: u64,
    },
    Status {
        code: u16,
        body: String,
        retry_after: Option<String>,
    },
    Garbage,
    Reset,
    Slow(Duration, Box<Reply>),
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    auth: Option<String>,
    body: Value,
}

type Script = dyn Fn(usize, &Value) -> Reply + Send + Sync;

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    /// `script(n, body)`: the answer to the n-th request (0-based).
    fn start(script: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let s2 = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(conn(sock, script.clone(), s2.clone()));
            }
        });
        Server {
            port,
            seen,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn conn(mut sock: tokio::net::TcpStream, script: Arc<Script>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        // Headers.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + len);
        assert!(
            head.starts_with("POST /v1/chat/completions "),
            "unexpected request: {head}"
        );
        let n = {
            let mut s = seen.lock().unwrap();
            s.push(Seen {
                at: Instant::now(),
                auth: header("authorization"),
                body: body.clone(),
            });
            s.len() - 1
        };
        let mut reply = script(n, &body);
        while let Reply::Slow(d, r) = reply {
            tokio::time::sleep(d).await;
            reply = *r;
        }
        let (code, body, extra) = match reply {
            Reply::Ok { prompt, completion } => (
                200,
                json!({
                    "id": format!("chatcmpl-{n}"),
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("def f{n}(): return {n}")}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
                })
                .to_string(),
                String::new(),
            ),
            Reply::Status {
                code,
                body,
                retry_after,
            } => (
                code,
                body,
                retry_after
                    .map(|v| format!("Retry-After: {v}\r\n"))
                    .unwrap_or_default(),
            ),
            Reply::Garbage => (200, "{\"choices\": [tru".to_string(), String::new()),
            Reply::Reset => {
                let _ = sock.set_zero_linger();
                return;
            }
            Reply::Slow(..) => unreachable!(),
        };
        let resp = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Worker config with one backend at `url`; `backend` and `top` add keys to
/// the backend table and to the top of the file.
fn llm_cfg(dir: &std::path::Path, url: &str, top: &str, backend: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "{top}\n[worker]\nidle-exit-secs = 0\nmax-uptime-secs = 0\npending-retry-secs = 1\nretry-backoff-ms = 100\nretry-backoff-max-ms = 200\n\
             [[llm.backends]]\nname = \"stand-in\"\nbase-url = \"{url}\"\nmodel = \"test-model\"\napi-key-env = \"PEAGEN_LLM_KEY\"\ntimeout-ms = 1500\n{backend}\n"
        ),
    )
}

fn push_mutate(r: &Redis, cfg: &std::path::Path, id: &str, payload: Value) {
    ctl_ok(
        r,
        Some(cfg),
        &[
            "push",
            "--kind",
            "mutate",
            "--id",
            id,
            "--payload",
            &payload.to_string(),
        ],
    );
}

fn result(r: &Redis, id: &str) -> Option<Value> {
    r.stream_data("peagen.results")
        .into_iter()
        .find(|v| v["task_id"] == id)
}

fn wait_result(r: &Redis, id: &str) -> Value {
    let mut out = None;
    eventually(LONG, &format!("result of {id}"), || {
        out = result(r, id);
        out.is_some()
    });
    out.unwrap()
}

fn worker(r: &Redis, cfg: &std::path::Path, id: &str) -> WorkerProc {
    WorkerProc::start(r, cfg, id, &[("PEAGEN_LLM_KEY", KEY)])
}

#[test]
fn server_errors_are_retried_until_ok() {
    let r = Redis::start();
    let srv = Server::start(|n, _| {
        if n < 2 {
            Reply::Status {
                code: 503,
                body: r#"{"error":{"message":"overloaded"}}"#.into(),
                retry_after: None,
            }
        } else {
            Reply::Ok {
                prompt: 12,
                completion: 30,
            }
        }
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(dir.path(), &srv.url(), "", "");
    push_mutate(
        &r,
        &cfg,
        "mut-503",
        json!({"messages": [{"role": "user", "content": "improve f"}], "max_tokens": 64, "temperature": 0.2}),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _w = WorkerProc::start(
        &r,
        &cfg,
        "w-503",
        &[("PEAGEN_LLM_KEY", KEY), ("PEAGEN_METRICS_LISTEN", &listen)],
    );
    let v = wait_result(&r, "mut-503");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["attempts"], 3, "{v}");
    assert_eq!(v["handler"], "mutate");
    let d = &v["data"];
    assert_eq!(d["text"], "def f2(): return 2");
    assert_eq!(d["finish_reason"], "stop");
    assert_eq!(
        d["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42})
    );
    assert_eq!(d["backend"], "stand-in");
    assert_eq!(d["model"], "test-model");
    assert!(d["latency_ms"].is_u64(), "{d}");
    // One final result, three requests, each carrying the request we built.
    let finals: Vec<_> = r
        .stream_data("peagen.results")
        .into_iter()
        .filter(|x| x["task_id"] == "mut-503")
        .collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    let seen = srv.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body["model"], "test-model");
    assert_eq!(seen[0].body["max_tokens"], 64);
    assert_eq!(seen[0].body["temperature"], 0.2);
    assert_eq!(seen[0].body["messages"][0]["content"], "improve f");
    assert_eq!(
        seen[0].auth.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    // The metric contract the alerts and the Cost dashboard use.
    let m = scrape(&listen);
    for series in [
        r#"peagen_llm_requests_total{backend="stand-in",outcome="server_error"} 2"#,
        r#"peagen_llm_requests_total{backend="stand-in",outcome="ok"} 1"#,
        r#"peagen_llm_tokens_total{backend="stand-in",kind="mutate",type="prompt"} 12"#,
        r#"peagen_llm_tokens_total{backend="stand-in",kind="mutate",type="completion"} 30"#,
        r#"peagen_llm_request_duration_seconds_count{backend="stand-in"} 3"#,
        r#"peagen_handler_fail_total{handler="mutate"} 2"#,
        r#"peagen_budget_refusals_total{reason="budget_exhausted"} 0"#,
        r#"peagen_worker_runtime_seconds_total{kind="mutate"} "#,
    ] {
        assert!(m.contains(series), "missing {series}:\n{m}");
    }
}

#[test]
fn key_from_a_systemd_credential_and_https_required() {
    let r = Redis::start();
    let srv = Server::start(|_, _| Reply::Ok {
        prompt: 1,
        completion: 1,
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("llm-key"), format!("{KEY}\n")).unwrap();
    let cfg = llm_cfg(dir.path(), &srv.url(), "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "api-key-env = \"PEAGEN_LLM_KEY\"",
        "api-key-credential = \"llm-key\"",
    );
    std::fs::write(&cfg, &text).unwrap();
    let _w = WorkerProc::start(
        &r,
        &cfg,
        "w-cred",
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    );
    push_mutate(&r, &cfg, "mut-cred", json!({"prompt": "p"}));
    assert_eq!(wait_result(&r, "mut-cred")["status"], "ok");
    assert_eq!(
        srv.seen()[0].auth.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );

    // The worker unit passes the credential to systemd.
    let unit: peagen_fabric::config::WorkerUnitConfig =
        toml::from_str("load-credential = [\"llm-key:/etc/peagen/llm.key\"]\n").unwrap();
    assert!(peagen_fabric::systemd::render_worker_unit(&unit)
        .contains("\nLoadCredential=llm-key:/etc/peagen/llm.key\n"));
    let props = peagen_fabric::systemd::worker_properties(&unit, "w", &[]).unwrap();
    assert!(props.iter().any(|(k, _)| k == "LoadCredential"));

    // Plain HTTP leaves the host only over loopback: a config error (78).
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace(&srv.url(), "http://llm.example.com/v1")).unwrap();
    let o = ctl(&r, Some(&bad), &["config", "validate"]);
    assert_eq!(o.status.code(), Some(78));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not loopback"), "{err}");
    let o = ctl(
        &r,
        Some(&write_config(
            dir.path(),
            "[spawner.worker-unit]\nload-credential = [\"no-path\"]\n",
        )),
        &["config", "validate"],
    );
    assert_eq!(o.status.code(), Some(78));
    // One handler per kind: a backend may not take over a command kind.
    let clash = dir.path().join("clash.toml");
    std::fs::write(
        &clash,
        format!("{text}\n[[handlers.command]]\nkind = \"mutate\"\nprogram = \"/bin/true\"\n"),
    )
    .unwrap();
    let o = ctl(&r, Some(&clash), &["config", "validate"]);
    assert_eq!(o.status.code(), Some(78));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("also served by another handler"), "{err}");
}

#[test]
fn retry_after_sets_the_earliest_retry() {
    let r = Redis::start();
    let srv = Server::start(|n, _| {
        if n == 0 {
            Reply::Status {
                code: 429,
                body: r#"{"error":{"message":"rate limit reached"}}"#.into(),
                retry_after: Some("2".into()),
            }
        } else {
            Reply::Ok {
                prompt: 1,
                completion: 1,
            }
        }
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(dir.path(), &srv.url(), "", "");
    push_mutate(&r, &cfg, "mut-429", json!({"prompt": "p"}));
    let _w = worker(&r, &cfg, "w-429");
    let v = wait_result(&r, "mut-429");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["attempts"], 2);
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    // The worker's own backoff is 100-200 ms; the provider asked for 2 s.
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
}

#[test]
fn client_errors_timeouts_and_garbage_and_the_key_never_leaks() {
    let r = Redis::start();
    let srv = Server::start(|_, body| {
        let c = body["messages"][0]["content"].as_str().unwrap_or("");
        match c {
            "401" => Reply::Status {
                code: 401,
                body: json!({"error": {"message": format!("Incorrect API key provided: {KEY}. Also seen as sk-peagen-te***4f60 and \"{}\".", &KEY[..12])}}).to_string(),
                retry_after: None,
            },
            "400" => Reply::Status {
                code: 400,
                body: json!({"error": {"message": format!("prompt rejected {}", "x".repeat(2000))}}).to_string(),
                retry_after: None,
            },
            "garbage" => Reply::Garbage,
            "reset" => Reply::Reset,
            "slow" => Reply::Slow(
                Duration::from_secs(4),
                Box::new(Reply::Ok {
                    prompt: 1,
                    completion: 1,
                }),
            ),
            _ => Reply::Ok {
                prompt: 1,
                completion: 1,
            },
        }
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    // A command handler run without the sandbox inherits the worker's
    // environment: it must not find the key there.
    let probe = dir.path().join("probe.sh");
    std::fs::write(
        &probe,
        format!("#!/bin/sh\ncat >/dev/null\nif env | grep -q '{}'; then echo '{{\"leak\":true}}'; else echo '{{\"leak\":false}}'; fi\n", &KEY[..12]),
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = llm_cfg(
        dir.path(),
        &srv.url(),
        "",
        &format!(
            "[[handlers.command]]\nkind = \"probe\"\nprogram = \"{}\"\n",
            probe.display()
        ),
    );
    // Two attempts, so retryable failures end in the dead-letter stream.
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[worker]\n", "[worker]\nmax-attempts = 2\n");
    std::fs::write(&cfg, cfg_text).unwrap();
    for what in ["401", "400", "garbage", "reset", "slow"] {
        push_mutate(&r, &cfg, &format!("mut-{what}"), json!({"prompt": what}));
    }
    ctl_ok(
        &r,
        Some(&cfg),
        &["push", "--kind", "probe", "--id", "probe-1"],
    );
    let w = worker(&r, &cfg, "w-keys");

    let v = wait_result(&r, "mut-401");
    assert_eq!(v["status"], "error");
    assert_eq!(v["attempts"], 1, "401 is not retried: {v}");
    assert_eq!(v["data"]["http_status"], 401);
    assert_eq!(v["data"]["outcome"], "client_error");
    assert_eq!(v["data"]["dead_letter_reason"], "handler_error");
    assert!(
        v["data"]["msg"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key provided"),
        "the provider's message is kept: {v}"
    );
    let v = wait_result(&r, "mut-400");
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_u64()),
        (Some("error"), Some(1))
    );
    let msg = v["data"]["msg"].as_str().unwrap();
    assert!(msg.contains("prompt rejected"), "{msg}");
    assert!(
        msg.len() < 700,
        "provider message truncated: {} chars",
        msg.len()
    );
    for (id, outcome) in [
        ("mut-garbage", "bad_response"),
        ("mut-reset", "connect_error"),
        ("mut-slow", "timeout"),
    ] {
        let v = wait_result(&r, id);
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["attempts"], 2, "{id} is retryable: {v}");
        assert_eq!(v["data"]["outcome"], outcome, "{v}");
        assert_eq!(v["data"]["dead_letter_reason"], "attempts_exhausted", "{v}");
    }
    let v = wait_result(&r, "probe-1");
    assert_eq!(v["data"]["leak"], false, "{v}");

    // The key was sent, and appears nowhere else.
    assert!(srv
        .seen()
        .iter()
        .all(|s| s.auth.as_deref() == Some(format!("Bearer {KEY}").as_str())));
    let log = w.log.clone();
    drop(w);
    let show = ctl_ok(&r, Some(&cfg), &["config", "show"]);
    let texts = [
        ("worker log", std::fs::read_to_string(log).unwrap()),
        ("results", r.cli(&["XRANGE", "peagen.results", "-", "+"])),
        ("dead letters", r.cli(&["XRANGE", "peagen.dead", "-", "+"])),
        ("config show", show),
        ("redis keys", r.cli(&["KEYS", "*"])),
    ];
    assert!(
        texts[0].1.contains("LLM call failed"),
        "log was read: {}",
        texts[0].1
    );
    assert!(texts[2].1.contains("mut-401"));
    for (what, text) in texts {
        for piece in [KEY, &KEY[..12], &KEY[KEY.len() - 12..]] {
            assert!(!text.contains(piece), "{what} contains the key: {text}");
        }
    }
}

fn budget_show(r: &Redis, cfg: &std::path::Path, wf: &str) -> Value {
    serde_json::from_str(&ctl_ok(r, Some(cfg), &["budget", "show", wf, "--json"])).unwrap()
}

#[test]
fn concurrent_tasks_never_overspend_a_workflow_budget() {
    let r = Redis::start();
    // Every call costs exactly its max_tokens (300), slowly, so the
    // workers' reservations overlap.
    let srv = Server::start(|_, _| {
        Reply::Slow(
            Duration::from_millis(300),
            Box::new(Reply::Ok {
                prompt: 10,
                completion: 290,
            }),
        )
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(dir.path(), &srv.url(), "", "");
    let out = ctl_ok(
        &r,
        Some(&cfg),
        &["budget", "set", "wf-1", "--tokens", "1000", "--json"],
    );
    let b: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (b["limit"].as_u64(), b["used"].as_u64()),
        (Some(1000), Some(0)),
        "{b}"
    );
    let ids: Vec<String> = (0..20).map(|i| format!("mut-b{i}")).collect();
    for id in &ids {
        push_mutate(
            &r,
            &cfg,
            id,
            json!({"prompt": "p", "max_tokens": 300, "workflow_id": "wf-1"}),
        );
    }
    let _ws: Vec<WorkerProc> = (0..5)
        .map(|i| worker(&r, &cfg, &format!("w-b{i}")))
        .collect();
    let results: Vec<Value> = ids.iter().map(|id| wait_result(&r, id)).collect();
    let ok = results.iter().filter(|v| v["status"] == "ok").count() as u64;
    for v in &results {
        match v["status"].as_str() {
            Some("ok") => assert_eq!(v["data"]["usage"]["total_tokens"], 300),
            Some("skip") => {
                assert_eq!(v["data"]["reason"], "budget_exhausted", "{v}");
                assert_eq!(v["data"]["workflow_id"], "wf-1");
            }
            _ => panic!("neither ok nor skip: {v}"),
        }
        assert_eq!(v["attempts"], 1, "{v}");
    }
    let b = budget_show(&r, &cfg, "wf-1");
    assert!(ok >= 1, "some calls fit");
    assert_eq!(b["used"].as_u64(), Some(ok * 300), "{b}");
    assert!(b["used"].as_u64().unwrap() <= 1000, "{b}");
    assert_eq!(b["reserved"], 0, "every reservation settled: {b}");
    assert!(b["started_at"].is_string(), "{b}");
    assert_eq!(srv.seen().len() as u64, ok, "skipped tasks made no call");
    // Nothing lost or stuck.
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
    assert_eq!(r.int(&["XLEN", "peagen.tasks"]), 0);
    assert_eq!(r.int(&["ZCARD", "peagen.tasks.delayed"]), 0);
}

#[test]
fn tasks_starting_after_the_run_timeout_are_skipped() {
    let r = Redis::start();
    let srv = Server::start(|_, _| Reply::Ok {
        prompt: 1,
        completion: 1,
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(dir.path(), &srv.url(), "", "");
    ctl_ok(
        &r,
        Some(&cfg),
        &[
            "budget",
            "set",
            "wf-t",
            "--tokens",
            "100000",
            "--run-timeout-secs",
            "1",
        ],
    );
    let _w = worker(&r, &cfg, "w-t");
    push_mutate(
        &r,
        &cfg,
        "mut-t0",
        json!({"prompt": "p", "workflow_id": "wf-t", "max_tokens": 5}),
    );
    assert_eq!(wait_result(&r, "mut-t0")["status"], "ok");
    let b = budget_show(&r, &cfg, "wf-t");
    assert!(b["deadline"].is_string(), "{b}");
    // Pushed once the deadline has passed (by Redis's clock, which the
    // reservation script uses).
    eventually(LONG, "run timeout passed", || {
        let t: Vec<u64> = r
            .cli(&["TIME"])
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        let now_ms = t[0] * 1000 + t[1] / 1000;
        let started: u64 = r
            .cli(&["HGET", "peagen.tasks.budget.wf-t", "started_ms"])
            .trim()
            .parse()
            .unwrap();
        now_ms > started + 1000
    });
    push_mutate(
        &r,
        &cfg,
        "mut-t1",
        json!({"prompt": "p", "workflow_id": "wf-t", "max_tokens": 5}),
    );
    let v = wait_result(&r, "mut-t1");
    assert_eq!(v["status"], "skip", "{v}");
    assert_eq!(v["data"]["reason"], "run_timeout");
    assert_eq!(srv.seen().len(), 1);
}

/// 3 workers against one backend limited to R requests/minute with burst
/// B: over a window of W seconds the server sees at most B + R*W/60
/// requests (+1: the window is measured at the server, a few ms after the
/// grants), and at least 90 % of that while the queue is saturated. Tasks
/// that found no token went back to the delayed set without using attempts.
#[test]
fn fleet_rate_limit_holds_across_workers() {
    const R: u64 = 120;
    const B: u64 = 5;
    const W: u64 = 30;
    const TASKS: usize = 80;
    let r = Redis::start();
    let srv = Server::start(|_, _| Reply::Ok {
        prompt: 1,
        completion: 1,
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(
        dir.path(),
        &srv.url(),
        "[llm]\nrate-limit-max-wait-ms = 1000\n",
        &format!("requests-per-minute = {R}\nburst = {B}\nrate-limit-scope = \"fleet\"\n"),
    );
    let tasks: Vec<String> = (0..TASKS)
        .map(|i| json!({"kind": "mutate", "id": format!("mut-rl{i}"), "payload": {"prompt": "p", "max_tokens": 1}}).to_string())
        .collect();
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(&file, tasks.join("\n")).unwrap();
    ctl_ok(&r, Some(&cfg), &["push", "--file", file.to_str().unwrap()]);
    let ws: Vec<WorkerProc> = (0..3)
        .map(|i| worker(&r, &cfg, &format!("w-rl{i}")))
        .collect();
    eventually(Duration::from_secs(120), "every task done", || {
        r.int(&["HLEN", "peagen.results.index"]) == TASKS as i64
    });
    let seen = srv.seen();
    let t0 = seen[0].at;
    let in_window = seen
        .iter()
        .filter(|s| s.at.duration_since(t0) <= Duration::from_secs(W))
        .count() as u64;
    let bound = B + R * W / 60;
    eprintln!("fleet rate limit: {in_window} requests in {W} s (limit {bound})");
    assert!(
        in_window <= bound + 1,
        "{in_window} requests in {W} s, limit {bound}"
    );
    assert!(
        in_window * 10 >= bound * 9,
        "{in_window} requests in {W} s while saturated, limit {bound}"
    );
    for i in 0..TASKS {
        let v = result(&r, &format!("mut-rl{i}")).unwrap();
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["attempts"], 1, "a deferral used an attempt: {v}");
    }
    assert_eq!(seen.len(), TASKS, "one request per task");
    // Saturated: some tasks found no token within the wait bound.
    let deferred = ws
        .iter()
        .map(|w| {
            w.log_text()
                .matches("deferred without using an attempt")
                .count()
        })
        .sum::<usize>();
    eprintln!("fleet rate limit: {deferred} deferrals");
    assert!(
        deferred > 0,
        "no task was deferred: the test did not saturate"
    );
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
}

/// A call cut short by the task's own `timeout_ms` still settles its
/// reservation (counting all of it: the provider may have billed it).
#[test]
fn a_task_timeout_settles_its_reservation() {
    let r = Redis::start();
    let srv = Server::start(|_, _| {
        Reply::Slow(
            Duration::from_secs(3),
            Box::new(Reply::Ok {
                prompt: 1,
                completion: 1,
            }),
        )
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(dir.path(), &srv.url(), "", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout-ms = 1500", "timeout-ms = 10000");
    std::fs::write(&cfg, text).unwrap();
    ctl_ok(
        &r,
        Some(&cfg),
        &["budget", "set", "wf-to", "--tokens", "5000"],
    );
    let _w = worker(&r, &cfg, "w-to");
    ctl_ok(
        &r,
        Some(&cfg),
        &[
            "push",
            "--kind",
            "mutate",
            "--id",
            "mut-to",
            "--max-attempts",
            "1",
            "--timeout-ms",
            "1000",
            "--payload",
            &json!({"prompt": "p", "max_tokens": 100, "workflow_id": "wf-to"}).to_string(),
        ],
    );
    let v = wait_result(&r, "mut-to");
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(
        v["data"]["outcome"], "timeout",
        "the handler's own timeout: {v}"
    );
    let b = budget_show(&r, &cfg, "wf-to");
    assert_eq!(b["reserved"], 0, "{b}");
    // max_tokens 100 + prompt bound 16 + 1 + 4 + 16.
    assert_eq!(b["used"], 137, "{b}");
}

/// The fleet-wide token bucket (seed: a shared `TokenBucketRateLimit`):
/// a call is made only while the bucket holds its whole possible cost;
/// the others are deferred, not failed.
#[test]
fn fleet_token_bucket_defers_what_does_not_fit() {
    let r = Redis::start();
    // Reports exactly the reserved cost, so nothing is given back.
    let srv = Server::start(|_, _| Reply::Ok {
        prompt: 37,
        completion: 100,
    });
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let cfg = llm_cfg(
        dir.path(),
        &srv.url(),
        "[llm]\nrate-limit-max-wait-ms = 500\nfleet-tokens-per-minute = 60\nfleet-token-burst = 200\n",
        "",
    );
    for i in 0..3 {
        push_mutate(
            &r,
            &cfg,
            &format!("mut-fb{i}"),
            json!({"prompt": "p", "max_tokens": 100}),
        );
    }
    let w = worker(&r, &cfg, "w-fb");
    // 200 tokens hold one call of 100 + 37; the next needs ~74 s of refill.
    eventually(LONG, "both other tasks deferred", || {
        w.log_text()
            .matches("deferred without using an attempt")
            .count()
            >= 2
    });
    assert_eq!(srv.seen().len(), 1);
    assert_eq!(r.int(&["HLEN", "peagen.results.index"]), 1);
    assert_eq!(r.int(&["XLEN", "peagen.dead"]), 0);
    let waiting = r.cli(&["ZRANGE", "peagen.tasks.delayed", "0", "-1"]);
    assert!(waiting.contains("\"attempts\":0"), "{waiting}");
}
