//! `peagenctl metrics serve`: the queue and fleet gauges without systemd
//! (Kubernetes, Compose, or any host without `peagen-spawnerd`). The same
//! endpoint code as the spawner's ([`crate::metrics::serve`]), the same
//! fleet gauges ([`FleetMetrics`]) and the same desired count
//! ([`crate::fleet::pool_desired`]); read-only towards Redis.

use super::{unavailable, CtlError};
use crate::config::Config;
use crate::exit;
use crate::fleet_store::{pool_view, FleetMetrics};
use crate::metrics::{FleetCollector, Num, SharedRegistry};
use crate::queue::Queue;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// IP:PORT to serve GET /metrics on (default: metrics.spawner-listen).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// Milliseconds between reads of the queue and the fleet record.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval_ms: u64,
    /// Also re-queue the tasks of gone workers (the orphan sweep of
    /// peagen-spawnerd, every spawner.reclaim-interval-secs): for pools
    /// without a spawner. Run it in one process per queue.
    #[arg(long)]
    pub reclaim: bool,
    /// Also export the workers' counters and histograms (peagen_tasks_total,
    /// ...), summed over every host's hash in Redis: for pools without
    /// peagen-spawnerd, which exports them per host otherwise.
    #[arg(long)]
    pub worker_counters: bool,
}

/// The exporter's gauges: the fleet ones plus the queue gauges the spawner
/// also exports (same names and meaning), and whether the last read worked.
struct ExporterMetrics {
    fleet: FleetMetrics,
    queue: crate::metrics::QueueGauges,
    redis_up: Gauge,
    /// The workers' counters, when exported (`--worker-counters`).
    counters: Option<FleetCollector>,
}

impl ExporterMetrics {
    fn register(reg: &mut Registry, worker_counters: bool) -> Self {
        let m = ExporterMetrics {
            fleet: FleetMetrics::register(reg),
            queue: Default::default(),
            redis_up: Default::default(),
            counters: worker_counters.then(FleetCollector::default),
        };
        if let Some(c) = &m.counters {
            reg.register_collector(Box::new(c.clone()));
        }
        m.queue.register(reg);
        reg.register(
            "exporter_redis_up",
            "1 if the exporter's last read of Redis worked; 0 while the other gauges are stale",
            m.redis_up.clone(),
        );
        m
    }
}

/// The exporter's families with a series each, for the metric contract test.
#[cfg(test)]
pub(crate) fn contract_registry() -> Registry {
    let mut reg = crate::metrics::new_registry();
    let m = ExporterMetrics::register(&mut reg, false);
    let q = &m.queue;
    q.redis_pending
        .get_or_create(&crate::metrics::labels(&[("stream", "s")]))
        .set(1);
    q.lag.get_or_create(&crate::metrics::labels(&[])).set(1);
    m.queue.by_kind.set(BTreeMap::from([("k".into(), 1)]));
    reg
}

/// One read of Redis into the gauges.
async fn refresh(cfg: &Config, q: &Queue, m: &ExporterMetrics) -> Result<(), String> {
    let v = pool_view(cfg, q).await.map_err(|e| e.to_string())?;
    m.fleet.work.set(v.work as i64);
    m.fleet.hosts.set(v.live_hosts as i64);
    m.fleet.desired.set(v.desired as i64);
    m.queue.set_stats(&v.stats);
    let kinds = q.pending_by_kind(10_000).await.map_err(|e| e.to_string())?;
    m.queue.by_kind.set(kinds);
    if let Some(c) = &m.counters {
        c.set(worker_counters(cfg, q).await.map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// Every host's worker-counter hash (`<tasks-stream>.metrics.*`), summed.
async fn worker_counters(
    cfg: &Config,
    q: &Queue,
) -> Result<BTreeMap<String, String>, crate::queue::QueueError> {
    let prefix = cfg.redis.fleet_metrics_key("");
    let pattern = format!("{}*", glob_escape(&prefix));
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut q.connection())
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    let mut hashes = Vec::with_capacity(keys.len());
    for k in keys {
        hashes.push(q.hash_all(&k).await?);
    }
    Ok(sum_hashes(&hashes))
}

/// `s` matched literally by a Redis glob pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Field-wise sum of counter hashes (integers stay integers; a float in
/// any of them makes the sum a float). Fields that are not numbers are
/// skipped.
fn sum_hashes(hashes: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let mut sums: BTreeMap<&str, Num> = BTreeMap::new();
    for h in hashes {
        for (k, v) in h {
            let n = if let Ok(u) = v.parse::<u64>() {
                Num::Int(u)
            } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
                Num::Float(f)
            } else {
                continue;
            };
            let e = sums.entry(k).or_insert(Num::Int(0));
            *e = match (*e, n) {
                (Num::Int(a), Num::Int(b)) => Num::Int(a.saturating_add(b)),
                (Num::Int(a), Num::Float(b)) => Num::Float(a as f64 + b),
                (Num::Float(a), Num::Int(b)) => Num::Float(a + b as f64),
                (Num::Float(a), Num::Float(b)) => Num::Float(a + b),
            };
        }
    }
    sums.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Num::Int(u) => u.to_string(),
                Num::Float(f) => f.to_string(),
            };
            (k.to_string(), v)
        })
        .collect()
}

pub(super) async fn serve(cfg: &Config, a: ServeArgs) -> Result<(), CtlError> {
    let addr: SocketAddr = match a.listen {
        Some(l) => l,
        None => cfg.metrics.spawner_listen.parse().map_err(|e| {
            CtlError(
                exit::CONFIG,
                format!(
                    "metrics.spawner-listen {:?} is not IP:PORT ({e}); set it or pass --listen",
                    cfg.metrics.spawner_listen
                ),
            )
        })?,
    };
    let q = super::connect(cfg).await?;
    let mut reg = crate::metrics::new_registry();
    let m = ExporterMetrics::register(&mut reg, a.worker_counters);
    // As the spawner: configured kinds read 0 while idle, not "No data".
    m.queue
        .by_kind
        .set_configured(crate::handlers::Registry::configured_kinds(cfg));
    // The first read must work: an exporter that starts with wrong zeros
    // would tell an autoscaler the queue is empty.
    refresh(cfg, &q, &m)
        .await
        .map_err(|e| unavailable(format!("reading the queue from Redis: {e}")))?;
    m.redis_up.set(1);
    let reg: SharedRegistry = Arc::new(std::sync::Mutex::new(reg));
    let local = crate::metrics::serve(addr, reg).await.map_err(|e| {
        CtlError(
            exit::UNAVAILABLE,
            format!("cannot listen on {addr}: {e} (another exporter or peagen-spawnerd on it? pass --listen)"),
        )
    })?;
    tracing::info!(listen = %local, "metrics exporter up");
    println!("serving http://{local}/metrics");
    let every = Duration::from_millis(a.interval_ms);
    let mut reclaimer = a.reclaim.then(|| super::Reclaimer::new(cfg));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CtlError(exit::FAILURE, format!("cannot watch SIGTERM: {e}")))?;
    loop {
        if let Some(r) = &mut reclaimer {
            r.tick(cfg, &q).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
        match refresh(cfg, &q, &m).await {
            Ok(()) => {
                m.redis_up.set(1);
            }
            Err(e) => {
                // Keep the last values; exporter_redis_up says they are stale.
                m.redis_up.set(0);
                eprintln!(
                    "peagenctl: reading the queue from Redis failed: {e}; serving the last values"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_summed_field_by_field() {
        let h = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sum = sum_hashes(&[
            h(&[("a_total", "2"), ("b_total", "0.5"), ("bad", "x")]),
            h(&[("a_total", "3"), ("b_total", "1"), ("c_total", "1")]),
        ]);
        assert_eq!(
            sum,
            h(&[("a_total", "5"), ("b_total", "1.5"), ("c_total", "1")])
        );
        assert!(sum_hashes(&[]).is_empty());
    }

    #[test]
    fn glob_special_characters_are_escaped() {
        assert_eq!(
            glob_escape("{peagen}.tasks.metrics."),
            "{peagen}.tasks.metrics."
        );
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
