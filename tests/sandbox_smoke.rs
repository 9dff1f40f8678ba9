use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{Request, Sandbox};
use std::time::Instant;

#[test]
#[ignore]
fn smoke_timing() {
    for parent in ["", "/nonexistent-xyz"] {
        let mut cfg = SandboxConfig::default();
        cfg.cgroup_parent = parent.into();
        let sb = Sandbox::new(&cfg).unwrap();
        let req = Request::new(["/bin/true"]);
        let mut v: Vec<f64> = (0..200).map(|_| { let t = Instant::now(); sb.run(&req); t.elapsed().as_secs_f64()*1000.0 }).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("parent={parent:?} min {:.3} median {:.3} p95 {:.3} mech {:?}", v[0], v[100], v[190], sb.run(&req).limits.memory_bytes.mechanism);
    }
}
