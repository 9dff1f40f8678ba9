//! Prometheus metrics: one registry object passed in (no globals), names
//! prefixed `peagen_`, no identifiers (task or worker ids) as labels.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

mod fleet;
mod http;

pub use fleet::{
    fleet_deltas, fleet_series, parse_series, series_text, DeltaStore, FleetCollector, FleetDeltas,
    FleetSink, Num,
};
pub(crate) use http::serve;
pub use http::serve_hooked;
pub use http::{HookSlot, ScrapeHook};

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

/// The `{kind}` gauge `queue_pending_total`: configured kinds always have a
/// series (0 while none is pending, so an idle fleet reads 0 instead of "No
/// data"); other kinds (unknown ones still in the stream) only while they
/// have entries. Updated in place: a scrape never sees the family empty.
#[derive(Clone, Default)]
pub struct KindGauge {
    gauge: GaugeVec,
    /// (configured kinds, kinds with a series now)
    kinds: Arc<Mutex<(Vec<String>, BTreeSet<String>)>>,
}

impl KindGauge {
    /// The kinds that always read (configured handlers); takes effect at
    /// the next [`KindGauge::set`].
    pub fn set_configured(&self, kinds: Vec<String>) {
        self.kinds.lock().expect("kind gauge lock").0 = kinds;
    }

    /// Fresh counts by kind (kinds not in `counts` read 0 or disappear).
    pub fn set(&self, counts: BTreeMap<String, u64>) {
        let mut k = self.kinds.lock().expect("kind gauge lock");
        let now: BTreeSet<String> = k.0.iter().chain(counts.keys()).cloned().collect();
        for kind in &now {
            let n = counts.get(kind).copied().unwrap_or(0);
            self.gauge
                .get_or_create(&labels(&[("kind", kind)]))
                .set(n as i64);
        }
        for gone in k.1.difference(&now) {
            self.gauge.remove(&labels(&[("kind", gone)]));
        }
        k.1 = now;
    }

    fn family(&self) -> GaugeVec {
        self.gauge.clone()
    }
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
    /// Handler calls by `handler` = the task kind (a configured kind: the
    /// worker looked its handler up), the denominator of `handler_fail`.
    pub handler_calls: CounterVec,
    pub handler_fail: CounterVec,
    pub task_duration: HistogramVec,
    pub retried: Counter,
    pub dead_lettered: CounterVec,
    pub result_backend_fail: Counter,
    pub exit_reason: CounterVec,
    pub queue_pending: KindGauge,
    /// LLM tokens, requests, limits, budgets, runtime by kind.
    pub cost: crate::llm::metrics::CostMetrics,
    pub busy_seconds: FloatCounter,
    pub up_seconds: FloatCounter,
}

impl WorkerMetrics {
    pub fn new(reg: &mut Registry) -> Self {
        let m = WorkerMetrics {
            tasks: Family::default(),
            handler_calls: Family::default(),
            handler_fail: Family::default(),
            task_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            retried: Counter::default(),
            dead_lettered: Family::default(),
            result_backend_fail: Counter::default(),
            exit_reason: Family::default(),
            queue_pending: KindGauge::default(),
            cost: crate::llm::metrics::CostMetrics::register(reg),
            busy_seconds: FloatCounter::default(),
            up_seconds: FloatCounter::default(),
        };
        reg.register(
            "tasks",
            "Tasks finished, by kind and final status",
            m.tasks.clone(),
        );
        reg.register(
            "handler_calls",
            "Handler calls (executions, retries included; deferrals not), by handler = task kind",
            m.handler_calls.clone(),
        );
        reg.register(
            "handler_fail",
            "Handler calls that ended in an error, by handler = task kind",
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
            "Failed result writes, each attempt (the task stays pending and is retried)",
            m.result_backend_fail.clone(),
        );
        // Present at 0 before the first exit, so alerts see the series.
        for r in ["idle", "max_uptime", "signal", "error"] {
            let _ = m.exit_reason.get_or_create(&labels(&[("reason", r)]));
        }
        reg.register(
            "worker_exit_reason",
            "Worker exits, by reason (idle, max_uptime, signal, error)",
            m.exit_reason.clone(),
        );
        reg.register(
            "queue_pending_total",
            "Unfinished tasks in the queue (backlog + in flight), by kind",
            m.queue_pending.family(),
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

/// The spawner's metrics.
#[derive(Clone)]
pub(crate) struct SpawnerMetrics {
    pub workers: GaugeVec,
    pub desired: Gauge,
    pub spawns: Counter,
    pub stops: Counter,
    pub spawn_failures: Counter,
    pub spawn_ready: Histogram,
    pub reclaimed: CounterVec,
    pub queue_pending_by_kind: KindGauge,
    pub redis_pending: GaugeVec,
    pub breaker_open: Gauge,
    pub stream_memory: GaugeVec,
    /// `peagen_queue_lag`; no series while the lag is unknown.
    pub queue_lag: GaugeVec,
    /// `peagen_queue_delayed`: retries waiting out their backoff.
    pub queue_delayed: Gauge,
    /// This host's workers' counters (the Redis hash they flush to).
    pub fleet: FleetCollector,
}

impl SpawnerMetrics {
    pub fn new(reg: &mut Registry) -> Self {
        let m = SpawnerMetrics {
            workers: Default::default(),
            desired: Default::default(),
            spawns: Default::default(),
            stops: Default::default(),
            spawn_failures: Default::default(),
            spawn_ready: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            reclaimed: Default::default(),
            queue_pending_by_kind: Default::default(),
            redis_pending: Default::default(),
            breaker_open: Default::default(),
            stream_memory: Default::default(),
            queue_lag: Default::default(),
            queue_delayed: Default::default(),
            fleet: Default::default(),
        };
        reg.register(
            "workers",
            "Worker units by state (starting, idle, busy, stopping)",
            m.workers.clone(),
        );
        reg.register(
            "workers_desired",
            "Worker count the scaling policy wants",
            m.desired.clone(),
        );
        reg.register("spawns", "Worker units started", m.spawns.clone());
        reg.register(
            "worker_stops",
            "Idle worker units stopped by scale-down",
            m.stops.clone(),
        );
        reg.register(
            "spawn_failures",
            "Worker starts whose start job did not end in done",
            m.spawn_failures.clone(),
        );
        reg.register(
            "spawn_ready_seconds",
            "From StartTransientUnit to the start job's end (the worker's READY=1)",
            m.spawn_ready.clone(),
        );
        reg.register(
            "reclaimed_tasks",
            "Pending tasks of dead workers re-queued or dead-lettered, by outcome",
            m.reclaimed.clone(),
        );
        reg.register(
            "queue_pending_total",
            "Unfinished tasks in the queue (backlog + in flight), by kind",
            m.queue_pending_by_kind.family(),
        );
        reg.register(
            "redis_queue_pending",
            "Entries delivered but not acknowledged (XPENDING), by stream",
            m.redis_pending.clone(),
        );
        reg.register(
            "spawner_breaker_open",
            "1 while the spawn-failure circuit breaker blocks starts",
            m.breaker_open.clone(),
        );
        reg.register(
            "redis_stream_memory_bytes",
            "MEMORY USAGE of the streams, by stream",
            m.stream_memory.clone(),
        );
        reg.register(
            "queue_lag",
            "Entries not yet delivered to the group (XINFO GROUPS lag, else a bounded count)",
            m.queue_lag.clone(),
        );
        reg.register(
            "queue_delayed",
            "Retries waiting out their backoff in the delayed set (not backlog until due)",
            m.queue_delayed.clone(),
        );
        reg.register_collector(Box::new(m.fleet.clone()));
        m
    }
}

pub type SharedRegistry = Arc<Mutex<Registry>>;

pub fn render(reg: &Registry) -> String {
    let mut s = String::new();
    encode(&mut s, reg).expect("encoding into a String cannot fail");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, name) of every family an encoded registry declares.
    fn declared(text: &str) -> std::collections::BTreeSet<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|t| t.split_once(' '))
            .map(|(name, ty)| {
                // Text names of counters carry no `_total`; the contract's do.
                let name = if ty == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                (ty.to_string(), name)
            })
            .collect()
    }

    /// The metric contract (packaging/prometheus/metric-names.txt), which
    /// alerts, dashboards and docs are checked against, is exactly what the
    /// two programs declare: the spawner's registry (fleet and workers'
    /// counters included) and the worker's.
    #[test]
    fn contract_is_what_the_programs_export() {
        let contract: std::collections::BTreeSet<(String, String)> =
            include_str!("../packaging/prometheus/metric-names.txt")
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (t, n) = l.split_once(' ').expect("type name");
                    (t.to_string(), n.trim().to_string())
                })
                .collect();
        let mut w = new_registry();
        let wm = WorkerMetrics::new(&mut w);
        let mut sp = new_registry();
        let sm = SpawnerMetrics::new(&mut sp);
        let _fm = crate::fleet_store::FleetMetrics::register(&mut sp);
        // Labelled families declare themselves once they have a series.
        let l = labels(&[("x", "y")]);
        for f in [
            &wm.tasks,
            &wm.handler_calls,
            &wm.handler_fail,
            &wm.dead_lettered,
            &wm.cost.tokens,
            &wm.cost.requests,
            &wm.cost.ratelimit_deferred,
            &wm.cost.budget_refusals,
            &sm.reclaimed,
        ] {
            f.get_or_create(&l).inc();
        }
        for f in [&wm.cost.ratelimit_wait, &wm.cost.runtime_seconds] {
            f.get_or_create(&l).inc();
        }
        wm.task_duration.get_or_create(&l).observe(1.0);
        wm.cost.request_duration.get_or_create(&l).observe(1.0);
        for g in [
            &sm.workers,
            &sm.redis_pending,
            &sm.stream_memory,
            &sm.queue_lag,
        ] {
            g.get_or_create(&l).set(1);
        }
        wm.queue_pending.set(BTreeMap::from([("k".into(), 1)]));
        sm.queue_pending_by_kind
            .set(BTreeMap::from([("k".into(), 1)]));
        let mut got = declared(&render(&w));
        got.extend(declared(&render(&sp)));
        // Counters are rendered with `_total` already in the TYPE line of
        // some encoders; normalise `_total_total`.
        let got: std::collections::BTreeSet<(String, String)> = got
            .into_iter()
            .map(|(t, n)| (t, n.replace("_total_total", "_total")))
            .collect();
        assert_eq!(
            got.difference(&contract).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "exported but not in metric-names.txt"
        );
        assert_eq!(
            contract.difference(&got).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "in metric-names.txt but not exported"
        );
    }

    /// docs/operations.md's metric tables name exactly the contract, with
    /// its types; its alert tables exactly the rule file's alerts.
    #[test]
    fn docs_tables_match_the_contract_and_the_rules() {
        let docs = include_str!("../docs/operations.md");
        let contract: std::collections::BTreeSet<(String, String)> =
            include_str!("../packaging/prometheus/metric-names.txt")
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (t, n) = l.split_once(' ').expect("type name");
                    (t.to_string(), n.trim().to_string())
                })
                .collect();
        let mut documented = std::collections::BTreeSet::new();
        let mut alerts_doc = std::collections::BTreeSet::new();
        for l in docs.lines() {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            if cells.len() < 4 {
                continue;
            }
            let first = cells[1].trim_matches('`');
            if first.starts_with("peagen_") {
                let name = first.split('{').next().unwrap_or(first);
                documented.insert((cells[2].to_string(), name.to_string()));
            } else if first.starts_with("Peagen") && !first.contains(' ') {
                alerts_doc.insert(first.to_string());
            }
        }
        assert_eq!(documented, contract, "docs/operations.md metric tables");
        let rules: std::collections::BTreeSet<String> =
            include_str!("../packaging/prometheus/peagen-alerts.yml")
                .lines()
                .filter_map(|l| l.trim().strip_prefix("- alert: "))
                .map(|a| a.trim().to_string())
                .collect();
        assert_eq!(alerts_doc, rules, "docs/operations.md alert tables");
    }

    #[test]
    fn kind_gauge_reads_zero_for_configured_kinds_and_drops_others() {
        let mut r = new_registry();
        let m = WorkerMetrics::new(&mut r);
        let g = &m.queue_pending;
        g.set_configured(vec!["echo".into(), "mutate".into()]);
        g.set(BTreeMap::from([("mutate".into(), 83), ("odd".into(), 2)]));
        let s = render(&r);
        for want in [
            "peagen_queue_pending_total{kind=\"echo\"} 0\n",
            "peagen_queue_pending_total{kind=\"mutate\"} 83\n",
            "peagen_queue_pending_total{kind=\"odd\"} 2\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // Queue empty: configured kinds read 0, the unconfigured one goes.
        g.set(BTreeMap::new());
        let s = render(&r);
        assert!(
            s.contains("peagen_queue_pending_total{kind=\"mutate\"} 0\n"),
            "{s}"
        );
        assert!(
            s.contains("peagen_queue_pending_total{kind=\"echo\"} 0\n"),
            "{s}"
        );
        assert!(!s.contains("odd"), "{s}");
    }

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
