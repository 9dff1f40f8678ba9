use peagen_fabric::config::SandboxConfig;
use peagen_fabric::sandbox::{Request, Sandbox};

#[test]
fn smoke() {
    let sb = Sandbox::new(&SandboxConfig::default()).unwrap();
    for cmd in ["echo hi; id; ls -la /; ls /dev /work; cat /proc/self/status | grep -E 'Cap|NoNew|Seccomp'; hostname; echo $$; ls /proc"] {
        let v = sb.run(&Request::new(["/bin/sh", "-c", cmd]));
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    }
}
