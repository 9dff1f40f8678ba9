//! Prometheus metrics: one registry object passed in (no globals), names
//! prefixed `peagen_`, no identifiers (task or worker ids) as labels.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Labels = Vec<(String, String)>;
pub type CounterVec = Family<Labels, Counter>;
pub type GaugeVec = Family<Labels, Gauge>;
pub type HistogramVec = Family<Labels, Histogram, fn() -> Histogram>;
pub type FloatCounter = Counter<f64, AtomicU64>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn duration_histogram() -> Histogram {
    // 1 ms .. ~9 min
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Registry with `peagen_build_info` already in it.
pub fn new_registry() -> Registry {
    let mut r = Registry::with_prefix("peagen");
    let info: GaugeVec = Family::default();
    info.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
        .set(1);
    r.register("build_info", "Build information", info);
    r
}

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub tasks: CounterVec,
    pub handler_fail: CounterVec,
    pub task_duration: HistogramVec,
    pub retried: Counter,
    pub dead_lettered: CounterVec,
    pub result_backend_fail: Counter,
    pub exit_reason: CounterVec,
    pub queue_pending: GaugeVec,
    pub tokens: CounterVec,
    pub busy_seconds: FloatCounter,
    pub up_seconds: FloatCounter,
}

impl WorkerMetrics {
    pub fn new(reg: &mut Registry) -> Self {
        let m = WorkerMetrics {
            tasks: Family::default(),
            handler_fail: Family::default(),
            task_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            retried: Counter::default(),
            dead_lettered: Family::default(),
            result_backend_fail: Counter::default(),
            exit_reason: Family::default(),
            queue_pending: Family::default(),
            tokens: Family::default(),
            busy_seconds: FloatCounter::default(),
            up_seconds: FloatCounter::default(),
        };
        reg.register(
            "tasks",
            "Tasks finished, by kind and final status",
            m.tasks.clone(),
        );
        reg.register(
            "handler_fail",
            "Failed handler executions, by handler",
            m.handler_fail.clone(),
        );
        reg.register(
            "task_duration_seconds",
            "Handler run time, by kind",
            m.task_duration.clone(),
        );
        reg.register(
            "tasks_retried",
            "Tasks re-enqueued for another attempt",
            m.retried.clone(),
        );
        reg.register(
            "tasks_dead_lettered",
            "Entries moved to the dead-letter stream, by reason",
            m.dead_lettered.clone(),
        );
        reg.register(
            "result_backend_fail",
            "Failed result saves (task left pending for retry)",
            m.result_backend_fail.clone(),
        );
        reg.register(
            "worker_exit_reason",
            "Worker exits, by reason (idle, max_uptime, signal, error)",
            m.exit_reason.clone(),
        );
        reg.register(
            "queue_pending_total",
            "Unfinished tasks in the queue (backlog + in flight), by kind",
            m.queue_pending.clone(),
        );
        reg.register(
            "llm_tokens",
            "LLM tokens reported by handlers (usage.total_tokens), by kind",
            m.tokens.clone(),
        );
        reg.register(
            "worker_busy_seconds",
            "Seconds spent running tasks",
            m.busy_seconds.clone(),
        );
        reg.register(
            "worker_up_seconds",
            "Seconds of worker uptime",
            m.up_seconds.clone(),
        );
        m
    }
}

pub type SharedRegistry = Arc<Mutex<Registry>>;

pub fn render(reg: &Registry) -> String {
    let mut s = String::new();
    encode(&mut s, reg).expect("encoding into a String cannot fail");
    s
}

/// Serve `GET /metrics` on `addr` (loopback by default). A deliberately tiny
/// HTTP/1.0 responder: one scrape endpoint needs no web framework.
pub async fn serve(
    addr: std::net::SocketAddr,
    reg: SharedRegistry,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let reg = reg.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, ctype, body) = if req.starts_with("GET /metrics") {
                    let body = render(&reg.lock().expect("metrics lock"));
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    )
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_typed() {
        let mut r = new_registry();
        let m = WorkerMetrics::new(&mut r);
        m.handler_fail
            .get_or_create(&labels(&[("handler", "echo")]))
            .inc();
        m.exit_reason
            .get_or_create(&labels(&[("reason", "idle")]))
            .inc();
        m.task_duration
            .get_or_create(&labels(&[("kind", "echo")]))
            .observe(0.01);
        m.result_backend_fail.inc();
        let s = render(&r);
        assert!(s.contains("peagen_build_info{version="), "{s}");
        assert!(
            s.contains("peagen_handler_fail_total{handler=\"echo\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("peagen_worker_exit_reason_total{reason=\"idle\"} 1"),
            "{s}"
        );
        assert!(s.contains("peagen_result_backend_fail_total 1"), "{s}");
        assert!(s.contains("peagen_task_duration_seconds_bucket"), "{s}");
    }
}
