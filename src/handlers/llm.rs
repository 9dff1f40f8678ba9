//! The LLM handler (`mutate` and any other kind an `[[llm.backends]]` entry
//! serves): one chat completion per task, within the workflow's budget and
//! the backend's rate limits.
//!
//! Payload: `{messages: [{role, content}...]}` or `{prompt}`, optional
//! `max_tokens`, `temperature`, `backend` (name), `workflow_id`.
//! Result data: `{text, finish_reason, usage: {prompt_tokens,
//! completion_tokens, total_tokens}, backend, model, latency_ms}`.
//!
//! Order of a run: pick the backend, load its key, reserve the budget
//! (`skip` when it does not fit or the run timed out: no call made), take a
//! rate-limit token (waiting at most `llm.rate-limit-max-wait-ms`, then
//! deferring the task without using an attempt), call, settle the budget.

use super::{BoxFuture, Handler, Outcome};
use crate::config::Config;
use crate::llm::budget::{check_workflow_id, Reservation};
use crate::llm::client::{load_key, CallError, ChatRequest, Client};
use crate::llm::config::{BackendConfig, LlmConfig, Scope};
use crate::llm::metrics::CostMetrics;
use crate::llm::ratelimit::{Limiter, Spec};
use crate::llm::store::Store;
use crate::llm::MAX_TOKENS_LIMIT;
use crate::task::Task;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time kept back from a task's `timeout_ms` for settling the budget.
const TIMEOUT_MARGIN: Duration = Duration::from_millis(200);

struct Backend {
    cfg: BackendConfig,
    /// Building a TLS client can fail (no usable roots): every task of this
    /// backend then fails with the reason instead of the worker not starting.
    client: Result<Client, String>,
    limiter: Limiter,
}

/// What all LLM kinds of one worker share: backends, buckets, the Redis store.
pub struct Core {
    cfg: LlmConfig,
    backends: Vec<Backend>,
    store: Store,
    fleet: Limiter,
    metrics: CostMetrics,
}

impl Core {
    pub fn new(cfg: &Config, metrics: CostMetrics) -> Arc<Self> {
        let store = Store::new(&cfg.redis);
        let backends = cfg
            .llm
            .backends
            .iter()
            .map(|b| {
                let spec = Spec {
                    requests_per_minute: b.requests_per_minute,
                    request_burst: b.request_burst(),
                    tokens_per_minute: b.tokens_per_minute,
                    token_burst: b.token_burst(),
                };
                let limiter = match b.rate_limit_scope {
                    Scope::Worker => Limiter::worker(spec),
                    Scope::Fleet => Limiter::fleet(spec, store.bucket_key(&b.name)),
                };
                Backend {
                    cfg: b.clone(),
                    client: Client::new(b),
                    limiter,
                }
            })
            .collect();
        let fleet = Limiter::fleet(
            Spec {
                requests_per_minute: 0,
                request_burst: 0,
                tokens_per_minute: cfg.llm.fleet_tokens_per_minute,
                token_burst: cfg.llm.fleet_token_burst,
            },
            store.fleet_bucket_key(),
        );
        Arc::new(Core {
            cfg: cfg.llm.clone(),
            backends,
            store,
            fleet,
            metrics,
        })
    }
}

pub struct Llm {
    kind: String,
    core: Arc<Core>,
}

impl Llm {
    pub fn new(kind: &str, core: Arc<Core>) -> Self {
        Llm {
            kind: kind.to_string(),
            core,
        }
    }
}

/// A parsed payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub chat: ChatRequest,
    pub backend: Option<String>,
    pub workflow_id: Option<String>,
}

/// Check and normalise a payload; `Err` is a non-retryable task error.
pub fn parse_request(task: &Task, default_max_tokens: u64) -> Result<Request, String> {
    let p = &task.payload;
    let messages = match (p.get("messages"), p.get("prompt")) {
        (Some(_), Some(_)) => return Err("payload has both messages and prompt; give one".into()),
        (None, None) => {
            return Err("payload needs messages ([{role, content}...]) or prompt".into())
        }
        (None, Some(Value::String(s))) => vec![json!({"role": "user", "content": s})],
        (None, Some(_)) => return Err("payload.prompt must be a string".into()),
        (Some(Value::Array(ms)), None) => {
            if ms.is_empty() {
                return Err("payload.messages must not be empty".into());
            }
            for (i, m) in ms.iter().enumerate() {
                if !m.get("role").is_some_and(Value::is_string) || m.get("content").is_none() {
                    return Err(format!(
                        "payload.messages[{i}] must be an object with a string role and a content"
                    ));
                }
            }
            ms.clone()
        }
        (Some(_), None) => return Err("payload.messages must be an array".into()),
    };
    let max_tokens = match p.get("max_tokens") {
        None | Some(Value::Null) => default_max_tokens,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_TOKENS_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "payload.max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}"
                ))
            }
        },
    };
    let temperature = match p.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Some(t),
            _ => return Err("payload.temperature must be a number from 0 to 2".into()),
        },
    };
    let backend = match p.get("backend") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("payload.backend must be a string".into()),
    };
    // In the payload, or at the top of the task document (a producer's choice).
    let workflow_id = match p
        .get("workflow_id")
        .or_else(|| task.extra.get("workflow_id"))
    {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_workflow_id(s)?;
            Some(s.clone())
        }
        Some(_) => return Err("workflow_id must be a string".into()),
    };
    Ok(Request {
        chat: ChatRequest {
            messages,
            max_tokens,
            temperature,
        },
        backend,
        workflow_id,
    })
}

fn fail(msg: String, retryable: bool, extra: Value) -> Outcome {
    let mut o = Outcome::error(msg, retryable);
    if let (Value::Object(d), Value::Object(x)) = (&mut o.data, extra) {
        d.extend(x);
    }
    o
}

impl Llm {
    fn backend(&self, want: Option<&str>) -> Result<&Backend, String> {
        let serves = |b: &&Backend| b.cfg.kinds.contains(&self.kind);
        match want {
            Some(name) => {
                let b = self
                    .core
                    .backends
                    .iter()
                    .find(|b| b.cfg.name == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            self.core.backends.iter().map(|b| b.cfg.name.as_str()).collect();
                        format!(
                            "payload.backend {name:?} is not configured on this worker (backends: {})",
                            names.join(", ")
                        )
                    })?;
                if !serves(&b) {
                    return Err(format!(
                        "backend {name:?} does not serve kind {:?} (its kinds: {})",
                        self.kind,
                        b.cfg.kinds.join(", ")
                    ));
                }
                Ok(b)
            }
            None => self
                .core
                .backends
                .iter()
                .find(serves)
                .ok_or_else(|| format!("no LLM backend serves kind {:?}", self.kind)),
        }
    }

    /// Release a reservation with `used` tokens (a few tries: a leaked
    /// reservation shrinks the budget until an operator resets it).
    async fn settle(&self, task: &Task, wf: Option<&str>, used: u64) {
        let Some(wf) = wf else { return };
        let mut wait = Duration::from_millis(100);
        for i in 0..3 {
            match self.core.store.settle(wf, &task.id, used).await {
                Ok(_) => return,
                Err(e) if i == 2 => {
                    tracing::error!(task_id = %task.id, workflow_id = wf, error = %e,
                        "cannot settle the budget reservation; it stays reserved (peagenctl budget show)");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    /// Take tokens from the backend's and the fleet's buckets, waiting up to
    /// the configured bound. `Err(wait)`: defer the task by `wait`.
    async fn rate_limit(
        &self,
        task: &Task,
        b: &Backend,
        cost: u64,
        left: Option<Duration>,
    ) -> Result<(), Outcome> {
        let mut max_wait = Duration::from_millis(self.core.cfg.rate_limit_max_wait_ms);
        if let Some(left) = left {
            // Waiting must not eat the task's own timeout: defer instead.
            max_wait = max_wait.min(left / 2);
        }
        let t0 = Instant::now();
        let name = b.cfg.name.as_str();
        let l = crate::metrics::labels(&[("backend", name)]);
        let mut granted_backend = false;
        let result = loop {
            let w = if granted_backend {
                0
            } else {
                b.limiter
                    .try_take(&self.core.store, cost)
                    .await
                    .map_err(|e| fail(e.to_string(), true, json!({"backend": name})))?
            };
            granted_backend = w == 0;
            let w = if w == 0 {
                self.core
                    .fleet
                    .try_take(&self.core.store, cost)
                    .await
                    .map_err(|e| fail(e.to_string(), true, json!({"backend": name})))?
            } else {
                w
            };
            if w == 0 {
                break Ok(());
            }
            let w = Duration::from_millis(w);
            if t0.elapsed() + w > max_wait {
                break Err(w);
            }
            tokio::time::sleep(w).await;
        };
        let waited = t0.elapsed().as_secs_f64();
        if waited > 0.0 {
            self.core
                .metrics
                .ratelimit_wait
                .get_or_create(&l)
                .inc_by(waited);
        }
        match result {
            Ok(()) => Ok(()),
            Err(w) => {
                if granted_backend {
                    // The backend's tokens were taken but no call follows.
                    b.limiter.give_back(&self.core.store, cost).await;
                }
                self.core.metrics.ratelimit_deferred.get_or_create(&l).inc();
                tracing::info!(task_id = %task.id, backend = name, defer_ms = w.as_millis() as u64,
                    "rate limit: no token within the wait bound; deferring without using an attempt");
                Err(Outcome::defer(w))
            }
        }
    }

    async fn run_task(&self, task: &Task) -> Outcome {
        let t0 = Instant::now();
        let req = match parse_request(task, self.core.cfg.default_max_tokens) {
            Ok(r) => r,
            Err(m) => return Outcome::error(m, false),
        };
        let b = match self.backend(req.backend.as_deref()) {
            Ok(b) => b,
            Err(m) => return Outcome::error(m, false),
        };
        let name = b.cfg.name.as_str();
        let client = match &b.client {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    format!("LLM backend {name:?}: cannot build the HTTPS client: {e}"),
                    false,
                    json!({"backend": name}),
                )
            }
        };
        let key = match load_key(&b.cfg, |k| std::env::var(k).ok()) {
            Ok(k) => k,
            Err(e) => return fail(e.to_string(), false, json!({"backend": name})),
        };
        // Everything this call may cost, known before it is made.
        let cost = req
            .chat
            .max_tokens
            .saturating_add(crate::llm::prompt_token_bound(&req.chat.messages));
        let wf = req.workflow_id.as_deref();
        if let Some(wf) = wf {
            match self.core.store.reserve(wf, &task.id, cost).await {
                Ok(Reservation::Reserved | Reservation::NoBudget) => {}
                Ok(Reservation::Refused(r)) => {
                    self.core
                        .metrics
                        .budget_refusals
                        .get_or_create(&crate::metrics::labels(&[("reason", r.as_str())]))
                        .inc();
                    tracing::info!(task_id = %task.id, workflow_id = wf, reason = r.as_str(), reserve = cost,
                        "workflow budget refused the call; task skipped");
                    return Outcome::skip(json!({
                        "reason": r.as_str(),
                        "workflow_id": wf,
                        "backend": name,
                        "msg": format!("workflow {wf:?}: {} (needed {cost} tokens; see peagenctl budget show)", r.as_str()),
                    }));
                }
                Err(e) => return fail(e.to_string(), true, json!({"backend": name})),
            }
        }
        // What is left of the task's timeout_ms, less a margin so this
        // handler settles its reservation before the worker's timer fires.
        let left = |t0: Instant| {
            task.timeout_ms.map(|ms| {
                Duration::from_millis(ms)
                    .saturating_sub(t0.elapsed())
                    .saturating_sub(TIMEOUT_MARGIN)
            })
        };
        if let Err(o) = self.rate_limit(task, b, cost, left(t0)).await {
            self.settle(task, wf, 0).await;
            return o;
        }
        // The task's timeout_ms bounds the whole run, the backend's the call.
        let mut timeout = Duration::from_millis(b.cfg.timeout_ms);
        if let Some(left) = left(t0) {
            timeout = timeout.min(left.max(Duration::from_millis(1)));
        }
        let call_t0 = Instant::now();
        let res = client.chat(key.as_ref(), &req.chat, timeout).await;
        let secs = call_t0.elapsed().as_secs_f64();
        match res {
            Ok(reply) => {
                self.core.metrics.request(name, "ok", secs);
                // Without reported usage the whole reservation counts.
                let used = reply.usage.as_ref().map_or(cost, |u| u.total_tokens);
                if let Some(u) = &reply.usage {
                    self.core
                        .metrics
                        .usage(name, &self.kind, u.prompt_tokens, u.completion_tokens);
                    if u.total_tokens > cost {
                        tracing::warn!(task_id = %task.id, backend = name, reported = u.total_tokens, reserved = cost,
                            "backend reported more tokens than the call could cost; budget counts the reservation");
                    }
                }
                self.settle(task, wf, used).await;
                b.limiter
                    .give_back(&self.core.store, cost.saturating_sub(used))
                    .await;
                self.core
                    .fleet
                    .give_back(&self.core.store, cost.saturating_sub(used))
                    .await;
                let usage = reply.usage.as_ref().map_or(Value::Null, |u| {
                    json!({
                        "prompt_tokens": u.prompt_tokens,
                        "completion_tokens": u.completion_tokens,
                        "total_tokens": u.total_tokens,
                    })
                });
                let mut data = json!({
                    "text": reply.text,
                    "finish_reason": reply.finish_reason,
                    "usage": usage,
                    "backend": name,
                    "model": if reply.model.is_empty() { client.model().to_string() } else { reply.model },
                    "latency_ms": reply.latency.as_millis() as u64,
                });
                if let Some(wf) = wf {
                    data["workflow_id"] = json!(wf);
                }
                Outcome::ok(data)
            }
            Err(e) => {
                self.core.metrics.request(name, e.outcome(), secs);
                // A call that timed out may still have been billed in full.
                let used = if matches!(e, CallError::Timeout { .. }) {
                    cost
                } else {
                    0
                };
                self.settle(task, wf, used).await;
                b.limiter.give_back(&self.core.store, cost - used).await;
                self.core
                    .fleet
                    .give_back(&self.core.store, cost - used)
                    .await;
                let mut extra = json!({"backend": name, "outcome": e.outcome()});
                if let Some(s) = e.status() {
                    extra["http_status"] = json!(s);
                }
                if let Some(d) = e.retry_after() {
                    extra["retry_after_ms"] = json!(d.as_millis() as u64);
                }
                tracing::warn!(task_id = %task.id, backend = name, outcome = e.outcome(), error = %e, "LLM call failed");
                let mut o = fail(e.to_string(), e.retryable(), extra);
                o.retry_after = e.retry_after();
                o
            }
        }
    }
}

impl Handler for Llm {
    fn name(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }
    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Outcome> {
        Box::pin(self.run_task(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(payload: Value) -> Task {
        Task::new("mutate", payload)
    }

    #[test]
    fn payload_forms() {
        let r = parse_request(&task(json!({"prompt": "hi", "max_tokens": 5})), 100).unwrap();
        assert_eq!(r.chat.messages, vec![json!({"role":"user","content":"hi"})]);
        assert_eq!(r.chat.max_tokens, 5);
        let r = parse_request(
            &task(json!({"messages": [{"role":"system","content":"s"},{"role":"user","content":"u"}], "temperature": 0.5, "backend": "b", "workflow_id": "wf"})),
            100,
        )
        .unwrap();
        assert_eq!(r.chat.max_tokens, 100);
        assert_eq!(r.chat.temperature, Some(0.5));
        assert_eq!(r.backend.as_deref(), Some("b"));
        assert_eq!(r.workflow_id.as_deref(), Some("wf"));
        let mut t = task(json!({"prompt": "x"}));
        t.extra.insert("workflow_id".into(), json!("top"));
        assert_eq!(
            parse_request(&t, 1).unwrap().workflow_id.as_deref(),
            Some("top")
        );
        for bad in [
            json!({}),
            json!({"prompt": 1}),
            json!({"prompt": "a", "messages": []}),
            json!({"messages": []}),
            json!({"messages": [{"content": "x"}]}),
            json!({"prompt": "a", "max_tokens": 0}),
            json!({"prompt": "a", "max_tokens": "9"}),
            json!({"prompt": "a", "max_tokens": MAX_TOKENS_LIMIT + 1}),
            json!({"prompt": "a", "temperature": 3}),
            json!({"prompt": "a", "workflow_id": ""}),
            json!({"prompt": "a", "backend": 1}),
        ] {
            assert!(parse_request(&task(bad.clone()), 1).is_err(), "{bad}");
        }
    }
}
