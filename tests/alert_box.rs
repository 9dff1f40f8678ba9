//! Alert inputs only the spawner can produce, in a real systemd box (see
//! tests/spawner.rs): a worker killed mid-task cannot count its own exit, so
//! the spawner that sees its unit fail counts it as an error exit; the
//! per-kind pending gauge reads 0 for configured kinds while idle.

mod support;

use std::time::Duration;
use support::eventually;
use support::systemd_box::TestBox;

const LONG: Duration = Duration::from_secs(90);

#[test]
#[ignore = "needs root"]
fn killed_worker_is_counted_as_an_error_exit_and_idle_kinds_read_zero() {
    let b = TestBox::start("crashcount");
    b.write_config("max = 2\nwarm-pool = 1\nidle-timeout-secs = 600", "");
    b.start_spawnerd();
    let err = "peagen_worker_exit_reason_total{reason=\"error\"}";
    eventually(LONG, "a warm worker", || {
        (b.live_workers() == 1).then_some(())
    });
    assert_eq!(b.metric(err).unwrap_or(0.0), 0.0, "{}", b.metrics());
    // Idle: every configured kind reads 0 (not "No data").
    for kind in ["echo", "sleep", "slow"] {
        let s = format!("peagen_queue_pending_total{{kind=\"{kind}\"}}");
        assert_eq!(b.metric(&s), Some(0.0), "{}", b.metrics());
    }
    b.push("slow", 1);
    let victim: String = eventually(LONG, "the task in flight", || {
        let s = b.stats();
        s["consumers"]
            .as_array()?
            .iter()
            .find(|c| c["pending"] == 1)
            .and_then(|c| c["name"].as_str().map(str::to_string))
    });
    b.sh(&format!(
        "systemctl kill -s KILL peagen-worker@{victim}.service"
    ));
    eventually(LONG, "the crash counted as reason=error", || {
        (b.metric(err) == Some(1.0)).then_some(())
    });
    let j = b.journal("-u peagen-spawnerd");
    assert!(j.contains("worker unit failed"), "{j}");
}
