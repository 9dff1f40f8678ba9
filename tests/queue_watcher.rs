//! The spawner's queue watcher (push -> wake-up of the reconcile loop) against
//! a real redis-server: entries that producers may legally write (a field
//! name that is not UTF-8, an entry far over any payload limit) wake it at
//! once, without a reconnect and without the entry crossing the wire.

mod support;

use peagen_fabric::config::RedisConfig;
use peagen_fabric::spawner::{spawn_queue_watcher, WatcherStats};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, Redis};
use tokio::sync::Notify;

const LARGE: usize = 8 << 20;

fn cfg(r: &Redis) -> RedisConfig {
    RedisConfig {
        url: r.url(),
        ..Default::default()
    }
}

fn net_out(r: &Redis) -> u64 {
    r.cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .expect("INFO stats has total_net_output_bytes")
        .trim()
        .parse()
        .unwrap()
}

async fn xadd(r: &Redis, stream: &str, field: &[u8], value: &[u8]) {
    let c = redis::Client::open(r.url()).unwrap();
    let mut conn = c.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(field)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Wait for the next wake-up (a bound, not a timing assertion: a missing
/// wake-up fails here instead of hanging the test).
async fn woken(wake: &Notify, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), wake.notified())
        .await
        .unwrap_or_else(|_| panic!("no wake-up after {what}"));
}

async fn odd_and_large_entries_wake_it(r: &Redis, st: &WatcherStats, wake: &Notify, stream: &str) {
    let connects = st.connects.load(Relaxed);
    xadd(r, stream, b"\xff\xfe not utf-8", b"{}").await;
    woken(wake, "an entry with a non-UTF-8 field name").await;
    let before = net_out(r);
    xadd(r, stream, b"data", &vec![b'x'; LARGE]).await;
    woken(wake, "a large entry").await;
    let sent = net_out(r) - before;
    xadd(r, stream, b"data", b"{}").await;
    woken(wake, "a small entry after the large one").await;
    assert_eq!(
        st.connects.load(Relaxed),
        connects,
        "the watcher reconnected"
    );
    assert!(
        sent < (LARGE / 8) as u64,
        "Redis sent {sent} bytes while the watcher noticed an entry of {LARGE} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_wakes_on_any_entry_without_reading_it() {
    let r = Redis::start();
    let cfg = cfg(&r);
    let wake = Arc::new(Notify::new());
    let (h, st) = spawn_queue_watcher(cfg.clone(), wake.clone());
    eventually(Duration::from_secs(30), "client tracking on", || {
        st.tracking.load(Relaxed)
    });
    odd_and_large_entries_wake_it(&r, &st, &wake, &cfg.tasks_stream).await;
    assert!(st.invalidations.load(Relaxed) >= 3);
    // Writes to other keys do not wake it.
    let wakes = st.wakes.load(Relaxed);
    xadd(&r, "some-other-stream", b"data", b"{}").await;
    xadd(&r, &cfg.tasks_stream, b"data", b"{}").await;
    woken(&wake, "a last entry").await;
    assert_eq!(st.wakes.load(Relaxed), wakes + 1);
    h.abort();
}

/// Without RESP3 client tracking (here: CLIENT renamed away, as some managed
/// services and proxies do) it falls back to XREAD and still never drops
/// the connection over a field name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xread_fallback_survives_a_non_utf8_field_name() {
    let r = Redis::start_args(false, &["--rename-command", "CLIENT", ""]);
    let cfg = cfg(&r);
    let wake = Arc::new(Notify::new());
    let (h, st) = spawn_queue_watcher(cfg.clone(), wake.clone());
    // One connection refused tracking, the next one waits in XREAD.
    eventually(Duration::from_secs(30), "fallback connection", || {
        st.connects.load(Relaxed) >= 2
    });
    assert!(!st.tracking.load(Relaxed));
    // The XREAD may not be blocking yet ("$" = entries after it arrives).
    eventually(Duration::from_secs(30), "watcher blocked in XREAD", || {
        r.cli(&["INFO", "clients"]).contains("blocked_clients:1")
    });
    let connects = st.connects.load(Relaxed);
    xadd(&r, &cfg.tasks_stream, b"\xff\xfe not utf-8", b"{}").await;
    woken(&wake, "an entry with a non-UTF-8 field name").await;
    eventually(Duration::from_secs(30), "watcher blocked again", || {
        r.cli(&["INFO", "clients"]).contains("blocked_clients:1")
    });
    xadd(&r, &cfg.tasks_stream, b"data", b"{}").await;
    woken(&wake, "the next entry").await;
    assert_eq!(
        st.connects.load(Relaxed),
        connects,
        "the watcher reconnected"
    );
    h.abort();
}
