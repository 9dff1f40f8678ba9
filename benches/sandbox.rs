//! Start-to-exit time of `/bin/true`: plain fork+exec, our sandbox, bwrap,
//! and our sandbox with a second one running in parallel. Prints a table.
//! Run: `cargo bench --bench sandbox` (as root or an unprivileged user).
//! `SANDBOX_BENCH_N` sets the iterations per row (default 400).

use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{Request, Sandbox, Status};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

#[path = "../tests/support/bwrap.rs"]
mod bwrap;

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.95))
}

fn time<F: FnMut()>(n: usize, mut f: F) -> Vec<f64> {
    for _ in 0..n / 10 {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("SANDBOX_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let sb = Arc::new(Sandbox::new(&SandboxConfig::default()).expect("sandbox"));
    let req = Request::new(["/bin/true"]);
    let v = sb.run(&req);
    assert_eq!(v.status, Status::Ok, "{v:?}");
    println!(
        "sandbox mechanisms: memory={:?} pids={:?} cpu={:?} landlock_abi={} namespaces={:?}",
        v.limits.memory_bytes.mechanism,
        v.limits.pids.mechanism,
        v.limits.cpu_ms.mechanism,
        v.isolation.landlock_abi,
        v.isolation.namespaces
    );

    let mut rows: Vec<(&str, Vec<f64>)> = Vec::new();
    rows.push((
        "plain fork+exec",
        time(n, || {
            Command::new("/bin/true").status().unwrap();
        }),
    ));
    rows.push((
        "peagen sandbox",
        time(n, || {
            let v = sb.run(&req);
            assert_eq!(v.status, Status::Ok, "{v:?}");
        }),
    ));
    let private = Sandbox::new(&SandboxConfig {
        shared_netns: false,
        ..Default::default()
    })
    .expect("sandbox");
    rows.push((
        "peagen sandbox, own netns per task",
        time(n, || {
            let v = private.run(&req);
            assert_eq!(v.status, Status::Ok, "{v:?}");
        }),
    ));
    if bwrap::available() {
        rows.push((
            "bwrap --unshare-all",
            time(n, || {
                let s = Command::new(bwrap::PATH)
                    .args(bwrap::ARGS)
                    .arg("/bin/true")
                    .stdin(Stdio::null())
                    .status()
                    .unwrap();
                assert!(s.success());
            }),
        ));
    }
    let other = Arc::clone(&sb);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let bg = std::thread::spawn(move || {
        let req = Request::new(["/bin/true"]);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            other.run(&req);
        }
    });
    rows.push((
        "peagen sandbox, 2 in parallel",
        time(n, || {
            let v = sb.run(&req);
            assert_eq!(v.status, Status::Ok, "{v:?}");
        }),
    ));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    bg.join().unwrap();
    // A real worker is bigger than this benchmark: with 256 MiB resident, a
    // fork-style reaper would copy its page tables on every task; ours
    // (CLONE_VM) should not move. Last, so the ballast weighs on no other
    // row.
    let ballast = vec![1u8; 256 << 20];
    std::hint::black_box(&ballast);
    rows.push((
        "peagen sandbox, worker with 256 MiB resident",
        time(n, || {
            let v = sb.run(&req);
            assert_eq!(v.status, Status::Ok, "{v:?}");
        }),
    ));
    drop(ballast);

    println!("\n`/bin/true` start-to-exit, n={n} per row");
    println!("| how | median ms | p95 ms |");
    println!("|---|---|---|");
    let mut med = std::collections::BTreeMap::new();
    for (name, v) in rows {
        let (m, p) = stats(v);
        med.insert(name, m);
        println!("| {name} | {m:.3} | {p:.3} |");
    }
    if let (Some(b), Some(o)) = (med.get("bwrap --unshare-all"), med.get("peagen sandbox")) {
        println!("\nbwrap / peagen sandbox median ratio: {:.2}x", b / o);
    }
}
