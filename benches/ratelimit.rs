//! Cost of one rate-limit decision per LLM request: worker scope (in-process
//! bucket), fleet scope (the Lua bucket script in Redis), next to a plain
//! Redis round trip (PING) on the same connection. Prints a table.
//! Run: `cargo bench --bench ratelimit` (needs redis-server on PATH; starts
//! its own on a free loopback port). `RATELIMIT_BENCH_N` sets the
//! iterations per row (default 5000).

use peagen_fabric::config::RedisConfig;
use peagen_fabric::llm::ratelimit::{Limiter, Spec};
use peagen_fabric::llm::store::Store;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.95), q(0.99))
}

/// Per-call times in microseconds (after n/10 warm-up calls).
async fn measure<F, Fut>(n: usize, mut f: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v
}

struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let n: usize = std::env::var("RATELIMIT_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = RedisServer(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        response_timeout_ms: 2000,
        ..Default::default()
    };
    let store = Store::new(&cfg);
    rt.block_on(async {
        for _ in 0..100 {
            if store.ping().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not come up");
    });
    // Limits high enough that every request is granted: the cost of the
    // decision itself, not of waiting.
    let spec = Spec {
        requests_per_minute: 1_000_000_000,
        request_burst: 1_000_000_000,
        tokens_per_minute: 1_000_000_000,
        token_burst: 1_000_000_000,
    };
    let worker = Limiter::worker(spec);
    let fleet = Limiter::fleet(spec, store.bucket_key("bench"));
    let (worker_t, fleet_t, ping_t) = rt.block_on(async {
        (
            measure(n, || async {
                assert_eq!(worker.try_take(&store, 100).await.unwrap(), 0);
            })
            .await,
            measure(n, || async {
                assert_eq!(fleet.try_take(&store, 100).await.unwrap(), 0);
            })
            .await,
            measure(n, || async {
                store.ping().await.unwrap();
            })
            .await,
        )
    });
    let rows = [
        ("worker scope (in process)", worker_t),
        ("fleet scope (Lua + Redis TIME)", fleet_t),
        ("plain Redis round trip (PING)", ping_t),
    ];
    println!("rate-limit decision per request, {n} iterations each (microseconds)");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "limiter", "p50", "p95", "p99"
    );
    for (name, v) in rows {
        let (p50, p95, p99) = stats(v);
        println!("{name:<34} {p50:>10.2} {p95:>10.2} {p99:>10.2}");
    }
}
