//! The `execute` handler end to end (real sandbox, no Redis).

use peagen_fabric::config::SandboxConfig;
use peagen_fabric::handlers::execute::Execute;
use peagen_fabric::handlers::Handler;
use peagen_fabric::task::{Status, Task};
use serde_json::json;

async fn run(payload: serde_json::Value) -> peagen_fabric::handlers::Outcome {
    let h = Execute::new(SandboxConfig::default());
    h.run(&Task::new("execute", payload)).await
}

/// With warm mode off: every prototype task starts its own interpreter.
async fn run_cold(payload: serde_json::Value) -> peagen_fabric::handlers::Outcome {
    let h = Execute::new(SandboxConfig {
        warm: false,
        ..Default::default()
    });
    h.run(&Task::new("execute", payload)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_form_with_files_stdin_env() {
    let o = run(json!({
        "argv": ["/bin/sh", "-c", "cat in.txt; cat; env"],
        "files": {"in.txt": "file\n"},
        "stdin": "stdin\n",
        "env": {"GREETING": "hi"},
        "limits": {"wall_ms": 10000}
    }))
    .await;
    assert_eq!(o.status, Status::Ok, "{o:?}");
    let out = o.data["verdict"]["stdout"].as_str().unwrap();
    assert!(out.starts_with("file\nstdin\n"), "{out}");
    assert!(out.contains("GREETING=hi"));
    assert!(!out.contains("CARGO"), "worker environment leaked: {out}");
    assert!(o.data["speed_ms"].as_f64().unwrap() > 0.0);
    assert!(o.data["peak_kb"].as_u64().is_some());
    assert_eq!(o.data["verdict"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prototype_form_calls_entry_fn() {
    let o = run_cold(json!({
        "child_src": "print('user output')\ndef score():\n    return {'n': sum(range(10))}\n",
        "entry_fn": "score"
    }))
    .await;
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.data["result"], json!({"n": 45}));
    assert_eq!(o.data["verdict"]["stdout"], "user output\n");
    let o = run(json!({
        "child_src": "print('user output')\ndef score():\n    return {'n': sum(range(10))}\n",
        "entry_fn": "score"
    }))
    .await;
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.data["result"], json!({"n": 45}));
    assert_eq!(o.data["verdict"]["stdout"], "user output\n");
    assert!(o.data["speed_ms"].as_f64().unwrap() >= 0.0);
    assert!(o.data["peak_kb"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_failures_are_not_retryable() {
    let o = run(json!({"argv": ["/bin/sh", "-c", "exit 4"]})).await;
    assert_eq!(o.status, Status::Error);
    assert!(!o.retryable);
    assert_eq!(o.data["verdict"]["status"], "runtime_error");
    assert_eq!(o.data["verdict"]["exit_code"], 4);

    let o = run(json!({"child_src": "def f():\n    raise ValueError('boom')\n", "entry_fn": "f"}))
        .await;
    assert_eq!(o.status, Status::Error);
    assert!(!o.retryable);
    assert!(o.data["verdict"]["stderr"]
        .as_str()
        .unwrap()
        .contains("boom"));

    let o = run(json!({"argv": ["/bin/sleep", "30"], "limits": {"wall_ms": 200}})).await;
    assert_eq!(o.data["verdict"]["status"], "timeout", "{o:?}");
    assert!(!o.retryable);

    let o = run(json!({"nonsense": true})).await;
    assert_eq!(o.status, Status::Error);
    assert!(!o.retryable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_timeout_clamps_the_wall_clock() {
    let h = Execute::new(SandboxConfig::default());
    let mut t = Task::new("execute", json!({"argv": ["/bin/sleep", "30"]}));
    t.timeout_ms = Some(200);
    let o = h.run(&t).await;
    assert_eq!(o.data["verdict"]["status"], "timeout", "{o:?}");
    assert_eq!(o.data["verdict"]["limits"]["wall_ms"]["value"], 200);
}

/// The function the `command` handler's `sandbox = true` option uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_program_for_the_command_handler() {
    use peagen_fabric::sandbox::{LimitRequest, Sandbox, Status as V};
    use std::sync::Arc;
    let sb = Arc::new(Sandbox::new(&SandboxConfig::default()).unwrap());
    let mut env = std::collections::BTreeMap::new();
    env.insert("PEAGEN_TASK_ID".to_string(), "t-1".to_string());
    let v = sb
        .run_program(
            std::path::Path::new("/bin/sh"),
            &[
                "-c".into(),
                "cat; echo \" $PEAGEN_TASK_ID\"; exit 75".into(),
            ],
            b"{\"task\":1}".to_vec(),
            env,
            LimitRequest::default(),
        )
        .await;
    assert_eq!(v.status, V::RuntimeError, "{v:?}");
    assert_eq!(v.exit_code, Some(75));
    assert_eq!(v.stdout, "{\"task\":1} t-1\n");
}

#[test]
fn sandbox_run_cli_exit_codes() {
    use peagen_fabric::sandbox::run_cli;
    let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(run_cli(a(&["--json", "--", "/bin/true"])), 0);
    assert_eq!(run_cli(a(&["--", "/bin/sh", "-c", "exit 3"])), 3);
    assert_eq!(
        run_cli(a(&["--wall-ms", "100", "--", "/bin/sleep", "5"])),
        124
    );
    assert_eq!(
        run_cli(a(&["--", "/bin/sh", "-c", "kill -TERM $$"])),
        128 + 15
    );
    assert_eq!(run_cli(a(&["--bogus"])), 64);
}

/// The prototype's documented example: `def sort(a): ...` called with the
/// payload's `args` (and `kwargs`); wrong types are refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_fn_gets_args_and_kwargs() {
    let o = run(json!({
        "child_src": "def sort(a, reverse=False):\n    return sorted(a, reverse=reverse)\n",
        "entry_fn": "sort",
        "args": [[3, 1, 2]],
        "kwargs": {"reverse": true}
    }))
    .await;
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.data["result"], json!([3, 2, 1]));
    let o = run(json!({
        "child_src": "def sort(a):\n    return sorted(a)\n",
        "entry_fn": "sort",
        "args": [[3, 1, 2]]
    }))
    .await;
    assert_eq!(o.data["result"], json!([1, 2, 3]), "{o:?}");
    // The cold driver passes them too (on stdin).
    let o = run_cold(json!({
        "child_src": "def sort(a, reverse=False):\n    return sorted(a, reverse=reverse)\n",
        "entry_fn": "sort",
        "args": [[3, 1, 2]],
        "kwargs": {"reverse": true}
    }))
    .await;
    assert_eq!(o.status, Status::Ok, "{o:?}");
    assert_eq!(o.data["result"], json!([3, 2, 1]));
    assert!(o.data["speed_ms"].as_f64().unwrap() >= 0.0);
    for (bad, msg) in [
        (
            json!({"args": {"a": 1}}),
            "`args` must be a JSON list, not an object",
        ),
        (
            json!({"kwargs": [1]}),
            "`kwargs` must be a JSON object, not a list",
        ),
    ] {
        let mut p = json!({"child_src": "def f(*a, **k): return 1", "entry_fn": "f"});
        for (k, v) in bad.as_object().unwrap() {
            p[k] = v.clone();
        }
        let o = run(p).await;
        assert_eq!(o.status, Status::Error);
        assert!(!o.retryable);
        let m = o.data["msg"].as_str().unwrap_or_default();
        assert!(m.contains(msg), "{o:?}");
    }
}
