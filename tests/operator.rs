//! What an operator sees from systemd, with the shipped unit
//! (units/peagen-spawnerd.service) in a real systemd 252 (tests/box/box.sh):
//! a reload with a broken config fails visibly; a start with Redis
//! unreachable is ready at once and says why in STATUS= and the journal; a
//! Redis outside the unit's IP allow list is named as the cause, and the
//! shipped remote-Redis drop-in fixes it. Run under `flock /work/wt/box.lock`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::eventually;
use support::systemd_box::{TestBox, CONFIG_IN_BOX};

const LONG: Duration = Duration::from_secs(60);
const UNIT: &str = "/etc/systemd/system/peagen-spawnerd.service";

fn repo_file(p: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap()
}

/// The shipped unit, runnable in the box: the binaries are in
/// /usr/local/bin and the box has no `peagen` user (so it runs as root,
/// still without capabilities); `edits` are (from, to) text replacements.
fn install_shipped_unit(b: &TestBox, edits: &[(&str, &str)]) {
    let mut u: String = repo_file("units/peagen-spawnerd.service")
        .lines()
        .filter(|l| !l.starts_with("User=") && !l.starts_with("Group="))
        .map(|l| format!("{l}\n"))
        .collect();
    u = u.replace("/usr/bin/peagen", "/usr/local/bin/peagen");
    for (from, to) in edits {
        assert!(u.contains(from), "unit has no {from:?}");
        u = u.replace(from, to);
    }
    b.write(UNIT, &u);
    b.sh("systemctl daemon-reload");
}

fn status_text(b: &TestBox) -> String {
    b.sh("systemctl show -p StatusText --value peagen-spawnerd")
}

/// Point the config at another Redis URL (host and box copies).
fn set_redis_url(b: &TestBox, url: &str) {
    let cfg = std::fs::read_to_string(&b.config_path).unwrap();
    let line = cfg.lines().find(|l| l.starts_with("url = ")).unwrap();
    let cfg = cfg.replace(line, &format!("url = \"{url}\""));
    std::fs::write(&b.config_path, &cfg).unwrap();
    b.write(CONFIG_IN_BOX, &cfg);
}

#[test]
#[ignore = "needs root"]
fn reload_with_a_broken_config_fails_visibly_and_keeps_the_running_one() {
    let b = TestBox::start("op-reload");
    b.write_config("max = 1\nwarm-pool = 0", "");
    install_shipped_unit(&b, &[]);
    b.sh("systemctl start peagen-spawnerd");
    let good = std::fs::read_to_string(&b.config_path).unwrap();
    b.write(CONFIG_IN_BOX, &format!("no-such-key = 1\n{good}"));
    let o = b.exec(&["systemctl", "reload", "peagen-spawnerd"]);
    assert!(
        !o.status.success(),
        "systemctl reload with a broken config must fail: {o:?}"
    );
    // The whole error is in the unit's journal (from ExecReload=).
    let j = b.journal("-u peagen-spawnerd");
    assert!(j.contains("no-such-key"), "{j}");
    assert_eq!(
        b.sh("systemctl is-active peagen-spawnerd || true").trim(),
        "active"
    );
    b.write(CONFIG_IN_BOX, &good);
    b.sh("systemctl reload peagen-spawnerd");
    eventually(LONG, "reloaded", || {
        b.journal("-u peagen-spawnerd")
            .contains("configuration reloaded")
            .then_some(())
    });
}

#[test]
#[ignore = "needs root"]
fn start_with_redis_unreachable_is_ready_and_says_why() {
    let b = TestBox::start("op-noredis");
    b.write_config("max = 1\nwarm-pool = 0", "");
    let closed = support::free_port();
    set_redis_url(&b, &format!("redis://127.0.0.1:{closed}"));
    // Shorter than the shipped 90 s so a start that waits for Redis fails
    // this test in reasonable time.
    install_shipped_unit(&b, &[("TimeoutStartSec=90s", "TimeoutStartSec=30s")]);
    b.sh("systemctl start peagen-spawnerd");
    let addr = format!("127.0.0.1:{closed}");
    let status = eventually(LONG, "a status naming Redis", || {
        let s = status_text(&b);
        s.contains("waiting for Redis").then_some(s)
    });
    assert!(status.contains(&addr), "{status}");
    assert!(status.to_lowercase().contains("refused"), "{status}");
    // At warning level, with the address and the error.
    let warn = b.journal("-u peagen-spawnerd -p warning");
    assert!(warn.contains("cannot reach Redis"), "{warn}");
    assert!(warn.contains(&addr), "{warn}");
    // A corrected [redis] section applies on reload, without a restart.
    set_redis_url(&b, &b.redis_url());
    b.sh("systemctl reload peagen-spawnerd");
    eventually(LONG, "connected and reconciling", || {
        status_text(&b).starts_with("workers ").then_some(())
    });
    assert_eq!(
        b.sh("systemctl show -p NRestarts --value peagen-spawnerd")
            .trim(),
        "0"
    );
}

/// A redis-server on another loopback address (127.0.0.2), which a unit
/// allowing only 127.0.0.1/32 cannot reach: the same situation as a remote
/// Redis under the shipped IPAddressAllow=localhost, without leaving loopback.
struct OtherRedis(Child, u16);

impl OtherRedis {
    fn start(dir: &std::path::Path) -> Self {
        let port = support::free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.2"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let r = OtherRedis(child, port);
        eventually(LONG, "redis on 127.0.0.2", || {
            std::net::TcpStream::connect(("127.0.0.2", port))
                .ok()
                .map(|_| ())
        });
        r
    }
}

impl Drop for OtherRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn redis_outside_the_ip_allow_list_is_named_and_the_shipped_dropin_fixes_it() {
    let b = TestBox::start("op-ipfilter");
    let scratch = tempfile::tempdir().unwrap();
    let other = OtherRedis::start(scratch.path());
    b.write_config("max = 1\nwarm-pool = 0", "");
    let url = format!("redis://127.0.0.2:{}", other.1);
    set_redis_url(&b, &url);
    install_shipped_unit(
        &b,
        &[
            ("IPAddressAllow=localhost", "IPAddressAllow=127.0.0.1/32"),
            ("TimeoutStartSec=90s", "TimeoutStartSec=30s"),
        ],
    );
    b.sh("systemctl start peagen-spawnerd");
    let status = eventually(LONG, "the IP filter named in the status", || {
        let s = status_text(&b);
        s.contains("outside this unit's IP allow list").then_some(s)
    });
    eprintln!("status: {status}");
    assert!(status.contains("127.0.0.2"), "{status}");
    assert!(status.contains("20-remote-redis.conf"), "{status}");
    let err = b.journal("-u peagen-spawnerd -p err");
    assert!(err.contains("outside this unit's IP allow list"), "{err}");
    // peagenctl, outside the unit, is not filtered.
    let o = b.ctl(&["queue", "stats", "--json"]);
    assert!(o.status.success(), "{o:?}");
    // The documented one step: the shipped drop-in with the address put in.
    let dropin =
        repo_file("packaging/examples/20-remote-redis.conf").replace("10.0.0.5/32", "127.0.0.2/32");
    b.write(
        "/etc/systemd/system/peagen-spawnerd.service.d/20-remote-redis.conf",
        &dropin,
    );
    b.sh("systemctl daemon-reload && systemctl restart peagen-spawnerd");
    eventually(LONG, "connected through the drop-in", || {
        status_text(&b).starts_with("workers ").then_some(())
    });
}
