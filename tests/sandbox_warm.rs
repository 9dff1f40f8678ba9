//! Warm mode (a prepared interpreter forking one child per task, one task
//! ahead): results as cold, and a task that changes the interpreter's
//! state, leaves threads or processes behind, hits its limits, kills itself
//! or signals its parent or any process it can see (the next task's
//! prepared child included) does not affect the next task.

use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{LimitRequest, Mechanism, Sandbox, Status, Verdict, WarmRequest};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

mod support;

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
        "shm": len(open("/proc/sysvipc/shm").read().splitlines()) - 1,
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
    assert_eq!(r["shm"], 0, "after {after}");
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
            "import threading, time\ndef main():\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n    return 1\n",
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
            "leaving a SysV shared memory segment",
            "import ctypes\ndef main():\n    libc = ctypes.CDLL(None)\n    return libc.shmget(0, 4096, 0o1600)\n",
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
        (
            // /work is emptied only once every process of the task is gone.
            "leaving a process that writes into /work after the task",
            "import os, time\ndef main():\n    if os.fork() == 0:\n        os.setsid()\n        while os.path.exists('/work/child.py'):\n            pass\n        for _ in range(100000):\n            try:\n                with open('/work/requests.py', 'w') as f:\n                    f.write('x = 1')\n            except OSError:\n                pass\n        time.sleep(60)\n        os._exit(0)\n    return 1\n",
        ),
        (
            // The zygote and the next task's child (forked while this task
            // runs) are in its pid namespace.
            "signalling every process it can see",
            "import os, signal\ndef main():\n    me = os.getpid()\n    for p in os.listdir('/proc'):\n        if p.isdigit() and int(p) != me:\n            for s in (signal.SIGSTOP, signal.SIGKILL):\n                try:\n                    os.kill(int(p), s)\n                except OSError:\n                    pass\n    return 1\n",
        ),
    ];
    let mut abi = 0;
    for (what, src) in tasks {
        let v = call(&sb, src, json!([]));
        assert_ne!(v.status, Status::InternalError, "{what}: {v:?}");
        abi = v.isolation.landlock_abi;
        probe_ok(&sb, what);
    }
    if abi >= 6 {
        // Scoped signals: no task could stop or kill the zygote or a
        // prepared child (else they would have been replaced, for this).
        let r = sb.warm_retired();
        assert!(
            !r.iter()
                .any(|w| w.contains("not waiting") || w.contains("ended")),
            "{r:?}"
        );
    }
    let v = call(&sb, tasks[6].1, json!([]));
    assert_eq!(v.status, Status::Signal, "{v:?}");
    assert_eq!(v.signal_name.as_deref(), Some("SIGKILL"));
    let v = call(&sb, tasks[8].1, json!([]));
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
    let v = call(&sb, src, json!([]));
    assert_eq!(v.status, Status::Ok, "{v:?}");
    // One task left: its successor starts in the background, so the task
    // after the last does not wait for an interpreter.
    let t = std::time::Instant::now();
    while sb.warm_idle() < 2 && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(sb.warm_idle(), 2, "no successor was started");
    for _ in 0..4 {
        let v = call(&sb, src, json!([]));
        assert_eq!(v.status, Status::Ok, "{v:?}");
    }
    let r = sb.warm_retired();
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|w| w == "served its tasks"), "{r:?}");
}

/// Warm mode serves the configured interpreter, not just the default one:
/// PyPy (Debian's `pypy3`, which `.ci/run` installs) has neither
/// `os.pidfd_open` nor `gc.freeze`, and its own memory manager.
#[test]
fn warm_mode_with_another_interpreter_pypy() {
    let pypy = Path::new("/usr/bin/pypy3");
    assert!(
        pypy.exists(),
        "this test needs PyPy: apt-get install pypy3 (.ci/run does)"
    );
    let sb = sandbox(|c| c.python = pypy.to_path_buf());
    let src = "import os, platform\ndef main(a, k=0):\n    return [platform.python_implementation(), sorted(a), k, os.getppid()]\n";
    let mut zygotes = Vec::new();
    for i in 0..3 {
        let req = WarmRequest {
            src: src.into(),
            entry_fn: "main".into(),
            args: vec![json!([3, 1, 2])],
            kwargs: json!({"k": i}).as_object().cloned().unwrap(),
            ..Default::default()
        };
        let v = sb.run_warm(&req).expect("warm mode with pypy3");
        assert_eq!(v.status, Status::Ok, "{v:?}");
        let r = result(&v);
        assert_eq!(r[0], "PyPy", "{r}");
        assert_eq!(r[1], json!([1, 2, 3]));
        assert_eq!(r[2], i);
        zygotes.push(r[3].clone());
    }
    assert!(zygotes.windows(2).all(|w| w[0] == w[1]), "{zygotes:?}");
    assert!(sb.warm_retired().is_empty(), "{:?}", sb.warm_retired());
    // A task that changes the interpreter's state does not reach the next.
    let v = call(
        &sb,
        "import json\ndef main():\n    json.dumps = lambda *a, **k: 'patched'\n    return 1\n",
        json!([]),
    );
    assert_eq!(v.status, Status::Ok, "{v:?}");
    let v = call(
        &sb,
        "import json\ndef main():\n    return json.dumps([1])\n",
        json!([]),
    );
    assert_eq!(result(&v), "[1]", "{v:?}");
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

/// The benchmark of issue 12: the prototype's three-line function, side by
/// side in one run: plain `python3 -c` outside any sandbox, bwrap running
/// python3, the cold sandboxed child_src and warm mode (median and p95 of
/// the sandbox wall time; for the two unsandboxed rows the process's
/// fork-to-exit time), then tasks/s through ONE real worker with a real
/// redis-server, cold and warm. `SANDBOX_BENCH_N` sets the iterations
/// (default 300). Prints a table; asserts only that every task succeeded.
#[test]
#[ignore = "benchmark: cargo test --test sandbox_warm -- --ignored bench_ --nocapture"]
fn bench_warm_execute_vs_cold() {
    use peagen_fabric::handlers::execute::Execute;
    use peagen_fabric::handlers::Handler;
    use peagen_fabric::task::{Status as TaskStatus, Task};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let n: usize = std::env::var("SANDBOX_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    const SRC: &str = "def sort(a):\n    b = sorted(a)\n    return b\n";
    let payload = json!({"child_src": SRC, "entry_fn": "sort", "args": [[5, 3, 1, 4, 2]]});
    let standalone = format!("{SRC}import json\nprint(json.dumps(sort([5, 3, 1, 4, 2])))\n");
    let stats = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        (q(0.5), q(0.95))
    };
    // (sandbox wall ms, the whole call as its caller sees it ms).
    let timed = |f: &mut dyn FnMut() -> (f64, f64)| -> (Vec<f64>, Vec<f64>) {
        for _ in 0..n / 10 {
            f();
        }
        (0..n).map(|_| f()).unzip()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handler_wall = |warm: bool| {
        let h = Execute::new(SandboxConfig {
            warm,
            ..Default::default()
        });
        let payload = payload.clone();
        let rt = &rt;
        move || -> (f64, f64) {
            let t = Instant::now();
            let o = rt.block_on(h.run(&Task::new("execute", payload.clone())));
            let call = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(o.status, TaskStatus::Ok, "{o:?}");
            assert_eq!(o.data["result"], json!([1, 2, 3, 4, 5]));
            (o.data["verdict"]["wall_ms"].as_f64().unwrap(), call)
        }
    };
    fn process(mut c: Command) -> (f64, f64) {
        let t = Instant::now();
        let s = c
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        (ms, ms)
    }
    type Samples = (Vec<f64>, Vec<f64>);
    let mut rows: Vec<(String, Samples)> = Vec::new();
    let py = || {
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-c", &standalone]);
        c
    };
    rows.push((
        "python3 -c, plain fork+exec (no sandbox)".into(),
        timed(&mut || process(py())),
    ));
    if support::bwrap::available() {
        let bw = || {
            let mut c = Command::new(support::bwrap::PATH);
            c.args(support::bwrap::ARGS)
                .args(["/usr/bin/python3", "-c", &standalone]);
            c
        };
        rows.push((
            "bwrap --unshare-all python3 -c".into(),
            timed(&mut || process(bw())),
        ));
    }
    rows.push((
        "peagen sandbox, cold child_src (warm = false)".into(),
        timed(&mut handler_wall(false)),
    ));
    rows.push((
        "peagen sandbox, warm mode".into(),
        timed(&mut handler_wall(true)),
    ));

    // Tasks/s through one real worker (default config but `warm`).
    let tput = |warm: bool, payload: &Value| -> f64 {
        let r = support::Redis::start();
        let dir = tempfile::tempdir_in(support::scratch()).unwrap();
        let cfg = support::write_config(dir.path(), &format!("[sandbox]\nwarm = {warm}\n"));
        let q = rt.block_on(async {
            let mut c = peagen_fabric::config::Config::default().redis;
            c.url = r.url();
            let q = peagen_fabric::queue::Queue::connect(&c).await.unwrap();
            q.ensure_group().await.unwrap();
            q
        });
        let _w = support::WorkerProc::start(&r, &cfg, "bench-w", &[]);
        let task = || Task::new("execute", payload.clone());
        // One connection, not a redis-cli process per poll (those would
        // take CPU from the worker on a 2-core machine).
        let mut conn = redis::Client::open(r.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut wait_results = |k: i64| loop {
            let n: i64 = redis::cmd("XLEN")
                .arg("peagen.results")
                .query(&mut conn)
                .unwrap();
            if n >= k {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        rt.block_on(q.push(&task())).unwrap();
        wait_results(1);
        let tasks: Vec<Task> = (0..n).map(|_| task()).collect();
        let t = Instant::now();
        rt.block_on(q.push_many(&tasks)).unwrap();
        wait_results(n as i64 + 1);
        let secs = t.elapsed().as_secs_f64();
        let ok = r.stream_data("peagen.results");
        let bad: Vec<_> = ok.iter().filter(|d| d["status"] != "ok").collect();
        assert!(bad.is_empty(), "{:?}", bad.first());
        n as f64 / secs
    };
    let cold_tps = tput(false, &payload);
    let warm_tps = tput(true, &payload);
    // The worker's own per-task floor on this machine right now: the
    // cheapest sandboxed task there is.
    let true_tps = tput(false, &json!({"argv": ["/bin/true"]}));

    println!(
        "\nissue 12 benchmark: `def sort(a)` (three lines), n={n} per row, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("sandbox wall: the verdict's wall_ms (for a process: its fork+exec+wait);");
    println!("whole call: the handler call as the worker sees it (warm: including the");
    println!("zygote's clean-up and the next child's confirmation after the verdict)");
    println!("| how | sandbox wall median ms | p95 ms | whole call median ms | p95 ms |");
    println!("|---|---|---|---|---|");
    let mut med = std::collections::BTreeMap::new();
    for (name, (wall, call)) in rows {
        let (m, p) = stats(wall);
        let (cm, cp) = stats(call);
        med.insert(name.clone(), m);
        println!("| {name} | {m:.2} | {p:.2} | {cm:.2} | {cp:.2} |");
    }
    println!("\n| one worker + redis | tasks/s |");
    println!("|---|---|");
    println!("| cold child_src (warm = false) | {cold_tps:.0} |");
    println!("| warm mode | {warm_tps:.0} |");
    println!("| (floor: argv [\"/bin/true\"], cold) | {true_tps:.0} |");
    println!("\nwarm / cold tasks/s: {:.1}x", warm_tps / cold_tps);
}
