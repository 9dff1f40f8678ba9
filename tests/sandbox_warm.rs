//! Warm mode (a prepared interpreter forking one child per task): results
//! as cold, and a task that changes the interpreter's state, leaves
//! threads or processes behind, hits its limits, kills itself or signals
//! its parent does not affect the next task.

use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{LimitRequest, Mechanism, Sandbox, Status, Verdict, WarmRequest};
use serde_json::{json, Value};
use std::sync::Arc;

fn sandbox(f: impl FnOnce(&mut SandboxConfig)) -> Arc<Sandbox> {
    let mut cfg = SandboxConfig {
        wall_ms: 20_000,
        ..Default::default()
    };
    f(&mut cfg);
    Arc::new(Sandbox::new(&cfg).expect("sandbox config"))
}

fn call(sb: &Arc<Sandbox>, src: &str, args: Value) -> Verdict {
    call_with(sb, src, args, LimitRequest::default())
}

fn call_with(sb: &Arc<Sandbox>, src: &str, args: Value, limits: LimitRequest) -> Verdict {
    let req = WarmRequest {
        src: src.into(),
        entry_fn: "main".into(),
        args: args.as_array().cloned().unwrap_or_default(),
        limits,
        ..Default::default()
    };
    sb.run_warm(&req).expect("warm mode available")
}

/// The value the driver printed (the result line on stdout).
fn result(v: &Verdict) -> Value {
    let mark = "\x1ePEAGEN_RESULT ";
    let pos = v
        .stdout
        .rfind(mark)
        .unwrap_or_else(|| panic!("no result: {v:?}"));
    let line: Value = serde_json::from_str(v.stdout[pos + mark.len()..].trim()).unwrap();
    line["result"].clone()
}

/// The probe every "next task" runs: pure function result plus the state
/// a previous task may have tried to leave behind.
const PROBE: &str = r#"
import json, os, string, threading, sys
def main(a):
    procs = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                procs.append(open("/proc/%s/cmdline" % p, "rb").read().split(b"\0")[0].decode())
            except OSError:
                pass
    return {
        "sorted": sorted(a),
        "dumps": json.dumps([1]),
        "global": hasattr(string, "peagen_mark"),
        "threads": threading.active_count(),
        "work": sorted(os.listdir("/work")),
        "procs": sorted(procs),
        "ppid_alive": os.getppid() > 1,
    }
"#;

fn probe_ok(sb: &Arc<Sandbox>, after: &str) {
    let v = call(sb, PROBE, json!([[3, 1, 2]]));
    assert_eq!(v.status, Status::Ok, "after {after}: {v:?}");
    let r = result(&v);
    assert_eq!(r["sorted"], json!([1, 2, 3]), "after {after}");
    assert_eq!(r["dumps"], "[1]", "after {after}");
    assert_eq!(r["global"], false, "after {after}");
    assert_eq!(r["threads"], 1, "after {after}");
    assert_eq!(r["work"], json!(["child.py"]), "after {after}");
    // Only this task is visible (the reaper and the zygote are hidden).
    assert_eq!(
        r["procs"].as_array().map(Vec::len),
        Some(1),
        "after {after}: {r}"
    );
}

#[test]
fn results_args_and_reuse() {
    let sb = sandbox(|_| {});
    let src = "import os\ndef main(a, k=0):\n    return [sorted(a), k, os.getppid()]\n";
    let v = call(&sb, src, json!([[2, 1]]));
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let first = result(&v);
    assert_eq!(first[0], json!([1, 2]));
    let req = WarmRequest {
        src: src.into(),
        entry_fn: "main".into(),
        args: vec![json!([5, 4])],
        kwargs: json!({"k": 7}).as_object().cloned().unwrap(),
        ..Default::default()
    };
    let v = sb.run_warm(&req).unwrap();
    let second = result(&v);
    assert_eq!(second[0], json!([4, 5]));
    assert_eq!(second[1], 7);
    // Same parent (the same zygote) in the same pid namespace: warm.
    assert_eq!(first[2], second[2], "{first} {second}");
    assert!(sb.warm_retired().is_empty(), "{:?}", sb.warm_retired());
}

#[test]
fn state_changes_do_not_reach_the_next_task() {
    let sb = sandbox(|_| {});
    probe_ok(&sb, "nothing");
    let tasks: &[(&str, &str)] = &[
        (
            "monkey-patching a module",
            "import json\ndef main():\n    json.dumps = lambda *a, **k: 'patched'\n    return 1\n",
        ),
        (
            "writing a global",
            "import string, sys\ndef main():\n    string.peagen_mark = 1\n    sys.path.insert(0, '/nope')\n    return 1\n",
        ),
        (
            "leaving a thread",
            "import threading, time\ndef main():\n    threading.Thread(target=time.sleep, args=(60,), daemon=False).start()\n    return 1\n",
        ),
        (
            "leaving a child process",
            "import subprocess\ndef main():\n    subprocess.Popen(['/bin/sleep', '60'], start_new_session=True)\n    return 1\n",
        ),
        (
            "leaving a file",
            "def main():\n    open('/work/left', 'w').write('x')\n    open('/tmp/left2', 'w').write('x')\n    return 1\n",
        ),
        (
            "killing itself",
            "import os, signal\ndef main():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        ),
        (
            "signalling its parent",
            "import os, signal\ndef main():\n    for s in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):\n        try:\n            os.kill(os.getppid(), s)\n        except OSError:\n            pass\n    return 1\n",
        ),
        (
            "exiting with sys.exit",
            "import sys\ndef main():\n    sys.exit(3)\n",
        ),
    ];
    for (what, src) in tasks {
        let v = call(&sb, src, json!([]));
        assert_ne!(v.status, Status::InternalError, "{what}: {v:?}");
        probe_ok(&sb, what);
    }
    let v = call(&sb, tasks[5].1, json!([]));
    assert_eq!(v.status, Status::Signal, "{v:?}");
    assert_eq!(v.signal_name.as_deref(), Some("SIGKILL"));
    let v = call(&sb, tasks[7].1, json!([]));
    assert_eq!(
        (v.status, v.exit_code),
        (Status::RuntimeError, Some(3)),
        "{v:?}"
    );
}

#[test]
fn memory_limit_and_timeouts_then_the_next_task_is_right() {
    let sb = sandbox(|_| {});
    let v = call_with(
        &sb,
        "def main():\n    a = []\n    while True:\n        a.append(bytearray(1 << 20))\n",
        json!([]),
        LimitRequest {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
    );
    match v.limits.memory_bytes.mechanism {
        Mechanism::CgroupV1 | Mechanism::CgroupV2 => {
            assert_eq!(v.status, Status::MemoryLimit, "{v:?}")
        }
        // Unprivileged without a delegated cgroup: RLIMIT_AS.
        Mechanism::Rlimit => {
            assert_eq!(v.status, Status::RuntimeError, "{v:?}");
            assert!(v.stderr.contains("MemoryError"), "{v:?}");
        }
        m => panic!("memory limit not enforced: {m:?}"),
    }
    probe_ok(&sb, "filling its memory limit");
    let v = call_with(
        &sb,
        "import time\ndef main():\n    time.sleep(60)\n",
        json!([]),
        LimitRequest {
            wall_ms: Some(300),
            ..Default::default()
        },
    );
    assert_eq!(v.status, Status::Timeout, "{v:?}");
    probe_ok(&sb, "a wall clock timeout");
    let v = call_with(
        &sb,
        "def main():\n    while True:\n        pass\n",
        json!([]),
        LimitRequest {
            cpu_ms: Some(300),
            ..Default::default()
        },
    );
    assert_eq!(v.status, Status::Timeout, "{v:?}");
    probe_ok(&sb, "a CPU timeout");
    let v = call_with(
        &sb,
        "def main():\n    print('x' * 100000)\n",
        json!([]),
        LimitRequest {
            output_bytes: Some(1000),
            ..Default::default()
        },
    );
    assert_eq!(v.status, Status::OutputLimit, "{v:?}");
    probe_ok(&sb, "an output flood");
}

#[test]
fn zygote_is_replaced_after_its_task_budget() {
    let sb = sandbox(|c| c.warm_tasks_per_zygote = 2);
    let src = "import os\ndef main():\n    return os.getppid()\n";
    for _ in 0..5 {
        let v = call(&sb, src, json!([]));
        assert_eq!(v.status, Status::Ok, "{v:?}");
    }
    let r = sb.warm_retired();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|w| w == "served its tasks"), "{r:?}");
}

#[test]
fn warm_mode_can_be_turned_off() {
    let sb = sandbox(|c| c.warm = false);
    let req = WarmRequest {
        src: "def main(): return 1".into(),
        entry_fn: "main".into(),
        ..Default::default()
    };
    assert!(sb.run_warm(&req).is_err());
}
