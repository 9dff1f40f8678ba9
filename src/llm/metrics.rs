//! Metrics of the LLM half and of the Cost dashboard. Registered in the
//! worker's registry (so they also reach the fleet hash and the spawner's
//! export). Names are a contract with the alerts and dashboards: see
//! packaging/prometheus/metric-names.txt.

use crate::metrics::{duration_histogram, labels, CounterVec, HistogramVec};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub type FloatCounterVec = Family<
    crate::metrics::Labels,
    prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
>;

#[derive(Clone)]
pub struct CostMetrics {
    /// `llm_tokens_total{backend,kind,type}`, type = prompt | completion.
    pub tokens: CounterVec,
    /// `llm_requests_total{backend,outcome}`.
    pub requests: CounterVec,
    /// `llm_request_duration_seconds{backend}`.
    pub request_duration: HistogramVec,
    /// `llm_ratelimit_wait_seconds_total{backend}`.
    pub ratelimit_wait: FloatCounterVec,
    /// `llm_ratelimit_deferred_total{backend}`.
    pub ratelimit_deferred: CounterVec,
    /// `budget_refusals_total{reason}`, reason = budget_exhausted | run_timeout.
    pub budget_refusals: CounterVec,
    /// `worker_runtime_seconds_total{kind}`: handler wall time.
    pub runtime_seconds: FloatCounterVec,
}

/// Every `outcome` label value of `llm_requests_total`.
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "rate_limited",
    "server_error",
    "client_error",
    "timeout",
    "connect_error",
    "bad_response",
];

impl CostMetrics {
    /// Build and register (the one hook in the worker's registry set-up).
    pub fn register(reg: &mut Registry) -> Self {
        let m = CostMetrics {
            tokens: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            ratelimit_wait: Family::default(),
            ratelimit_deferred: Family::default(),
            budget_refusals: Family::default(),
            runtime_seconds: Family::default(),
        };
        // Present at 0 so rate() and alerts see the series from the start.
        for r in ["budget_exhausted", "run_timeout"] {
            let _ = m.budget_refusals.get_or_create(&labels(&[("reason", r)]));
        }
        reg.register(
            "llm_tokens",
            "LLM tokens reported by backends, by backend, task kind and type (prompt, completion)",
            m.tokens.clone(),
        );
        reg.register(
            "llm_requests",
            "LLM HTTP requests, by backend and outcome (ok, rate_limited, server_error, client_error, timeout, connect_error, bad_response)",
            m.requests.clone(),
        );
        reg.register(
            "llm_request_duration_seconds",
            "LLM HTTP request latency, by backend",
            m.request_duration.clone(),
        );
        reg.register(
            "llm_ratelimit_wait_seconds",
            "Seconds tasks waited in the worker for a rate-limit token, by backend",
            m.ratelimit_wait.clone(),
        );
        reg.register(
            "llm_ratelimit_deferred",
            "Tasks sent back to the delayed set for want of a rate-limit token (no attempt used), by backend",
            m.ratelimit_deferred.clone(),
        );
        reg.register(
            "budget_refusals",
            "LLM tasks skipped by a workflow budget, by reason (budget_exhausted, run_timeout)",
            m.budget_refusals.clone(),
        );
        reg.register(
            "worker_runtime_seconds",
            "Handler wall time, by task kind",
            m.runtime_seconds.clone(),
        );
        m
    }

    /// A set that is not exported anywhere (tests, handlers built without a worker).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn request(&self, backend: &str, outcome: &str, secs: f64) {
        self.requests
            .get_or_create(&labels(&[("backend", backend), ("outcome", outcome)]))
            .inc();
        self.request_duration
            .get_or_create(&labels(&[("backend", backend)]))
            .observe(secs);
    }

    pub fn usage(&self, backend: &str, kind: &str, prompt: u64, completion: u64) {
        for (t, n) in [("prompt", prompt), ("completion", completion)] {
            self.tokens
                .get_or_create(&labels(&[
                    ("backend", backend),
                    ("kind", kind),
                    ("type", t),
                ]))
                .inc_by(n);
        }
    }
}
