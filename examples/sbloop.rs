use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{Request, Sandbox};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let sb = Sandbox::new(&SandboxConfig::default()).unwrap();
    let req = Request::new(["/bin/true"]);
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            let r = sb.run(&req);
            assert!(r.status == peagen_fabric::sandbox::Status::Ok, "{r:?}");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let avg = v.iter().sum::<f64>() / n as f64;
    let first: Vec<String> = v[..20].iter().map(|x| format!("{x:.2}")).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "avg {avg:.3} med {:.3} p95 {:.3} p99 {:.3} max {:.3} ms; first: {}",
        v[n / 2],
        v[n * 95 / 100],
        v[n * 99 / 100],
        v[n - 1],
        first.join(" ")
    );
}
