//! The worker runtime: read a task, run its handler, record the result,
//! acknowledge; retry or dead-letter failures. Each decision comes from
//! [`crate::retry`]; each state change is one atomic queue script.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::handlers::{Outcome, Registry};
use crate::metrics::{labels, WorkerMetrics};
use crate::queue::{Entry, Moved, Queue, QueueError};
use crate::results::{Prepared, ResultSink};
use crate::retry::{backoff_ms, decide, is_poison, Decision};
use crate::task::{now_rfc3339, Actor, Known, ResultRecord, Status, Task};
use crate::telemetry::notify;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why the worker stopped (logged and counted as `worker_exit_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitReason {
    Idle,
    MaxUptime,
    Signal,
    /// Gave up (exit status 1), only when `worker.idle-exit-secs` is set:
    /// entries it could not finish because the result backend kept failing
    /// for twice that budget (counted in the fleet hash, Redis is up), or
    /// Redis unusable for that long (exit status only: the count cannot
    /// reach Redis).
    Error,
}

impl ExitReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExitReason::Idle => "idle",
            ExitReason::MaxUptime => "max_uptime",
            ExitReason::Signal => "signal",
            ExitReason::Error => "error",
        }
    }
}

/// Least time between two promotions of due delayed retries by one worker:
/// under load it reads back to back, and one promotion per read would add a
/// round trip to every task. Idle reads block at most
/// [`crate::queue::MAX_BLOCK_MS`], so a due retry waits about a second at most.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// How often a worker refreshes the idle time of the entry it works on, so
/// the spawner's orphan sweep never takes healthy long-running work.
const HEARTBEAT: Duration = Duration::from_secs(15);

pub(crate) struct Worker {
    cfg: Config,
    queue: Arc<Queue>,
    handlers: Registry,
    metrics: WorkerMetrics,
    results: ResultSink,
    id: String,
    host: String,
    shutdown: watch::Receiver<bool>,
    /// Entries this worker left pending on purpose (result backend failed);
    /// it keeps retrying them and does not idle-exit while any remain.
    left_pending: std::collections::HashSet<String>,
}

/// What happened to one entry (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handled {
    Completed,
    Retried,
    DeadLettered(String),
    /// Back to the delayed set unchanged (no attempt used).
    Deferred,
    /// Left pending (result backend failed, or drain deadline passed).
    LeftPending,
    /// Someone else owns or finished it.
    Lost,
}

pub(crate) fn make_worker_id(configured: &str) -> String {
    if configured.is_empty() {
        let u = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", crate::telemetry::hostname(), &u[..12])
    } else {
        configured.to_string()
    }
}

impl Worker {
    pub(crate) fn new(
        cfg: Config,
        queue: Arc<Queue>,
        metrics: WorkerMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let handlers = Registry::with_metrics(&cfg, metrics.cost.clone());
        let results = ResultSink::from_config(&cfg.results);
        let id = make_worker_id(&cfg.worker.id);
        Worker {
            cfg,
            queue,
            handlers,
            metrics,
            results,
            id,
            host: crate::telemetry::hostname(),
            shutdown,
            left_pending: Default::default(),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleep that ends early on shutdown.
    async fn pause(&mut self, d: Duration) {
        let mut rx = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = rx.wait_for(|s| *s) => {}
        }
    }

    /// Run until idle, max uptime or a signal. Redis outages are waited out
    /// with backoff; nothing is acknowledged that was not finished.
    pub(crate) async fn run(&mut self) -> ExitReason {
        let started = Instant::now();
        let mut last_activity = Instant::now();
        let mut last_pel_check = Instant::now();
        let mut last_promote: Option<Instant> = None;
        let mut backoff = Backoff::service();
        let mut ready = false;
        let mut pel_suspect = false;
        let mut up_mark = Instant::now();
        let idle_exit = Duration::from_secs(self.cfg.worker.idle_exit_secs);
        let max_uptime = Duration::from_secs(self.cfg.worker.max_uptime_secs);
        loop {
            notify(&[NotifyState::Watchdog]);
            self.metrics
                .up_seconds
                .inc_by(up_mark.elapsed().as_secs_f64());
            up_mark = Instant::now();
            if self.stopping() {
                return ExitReason::Signal;
            }
            if !ready {
                match self.startup().await {
                    Ok(()) => {
                        ready = true;
                        backoff.reset();
                        last_activity = Instant::now();
                        last_pel_check = Instant::now();
                        continue;
                    }
                    Err(e) => {
                        if !idle_exit.is_zero() && last_activity.elapsed() >= idle_exit {
                            tracing::error!(worker_id = %self.id, error = %e, idle_exit_secs = idle_exit.as_secs(),
                                "Redis unusable for longer than worker.idle-exit-secs; exiting with an error");
                            return ExitReason::Error;
                        }
                        tracing::warn!(worker_id = %self.id, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "Redis not ready; backing off");
                        notify(&[NotifyState::Status(&format!("waiting for Redis: {e}"))]);
                        self.pause(backoff.step()).await;
                        continue;
                    }
                }
            }
            let idle_for = (!idle_exit.is_zero()).then(|| last_activity.elapsed());
            let exit = if idle_for.is_some_and(|t| t >= idle_exit) && self.left_pending.is_empty() {
                Some(ExitReason::Idle)
            } else if idle_for.is_some_and(|t| t >= idle_exit.saturating_mul(2)) {
                // Only entries left pending remain (the result backend keeps
                // failing), for twice the idle budget: give them up to the
                // spawner's reclaim and say so with an error exit.
                tracing::error!(worker_id = %self.id, left_pending = self.left_pending.len(), idle_exit_secs = idle_exit.as_secs(),
                    "result backend failing for longer than twice worker.idle-exit-secs; exiting with an error (entries stay pending for reclaim)");
                return ExitReason::Error;
            } else if !max_uptime.is_zero() && started.elapsed() >= max_uptime {
                Some(ExitReason::MaxUptime)
            } else {
                None
            };
            if let Some(reason) = exit {
                // Leave nothing behind that a read delivered but we never saw.
                match self.drain_own_pel().await {
                    Ok(0) => return reason,
                    Ok(_) => {
                        last_activity = Instant::now();
                        continue;
                    }
                    Err(e) => {
                        // Idle because Redis is gone, not for lack of work.
                        tracing::error!(worker_id = %self.id, error = %e, "final check of own pending entries failed; exiting with an error");
                        return ExitReason::Error;
                    }
                }
            }
            if pel_suspect
                || last_pel_check.elapsed()
                    >= Duration::from_secs(self.cfg.worker.pending_retry_secs.max(1))
            {
                pel_suspect = false;
                last_pel_check = Instant::now();
                match self.drain_own_pel().await {
                    Ok(n) if n > 0 => last_activity = Instant::now(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(worker_id = %self.id, error = %e, "re-reading own pending entries failed")
                    }
                }
            }
            if last_promote.is_none_or(|t| t.elapsed() >= PROMOTE_EVERY) {
                last_promote = Some(Instant::now());
                match self.queue.promote_due(crate::queue::PROMOTE_BATCH).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(worker_id = %self.id, promoted = n, "delayed retries now due")
                    }
                    // The read below meets the same outage and backs off.
                    Err(e) => {
                        tracing::debug!(worker_id = %self.id, error = %e, "promoting delayed retries failed")
                    }
                }
            }
            // Not raced against shutdown: a read returns within block-ms, and
            // an entry delivered to us is better finished than abandoned.
            match self.queue.read(&self.id, 1, false).await {
                Ok(entries) => {
                    backoff.reset();
                    for e in entries {
                        self.handle(e, false).await;
                        last_activity = Instant::now();
                    }
                }
                Err(e) => {
                    // A read that timed out on our side may still have been
                    // served: the entry then sits in our pending list unseen.
                    pel_suspect = true;
                    tracing::warn!(worker_id = %self.id, error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "reading tasks failed; backing off");
                    notify(&[NotifyState::Status(&format!("Redis error, retrying: {e}"))]);
                    self.pause(backoff.step()).await;
                }
            }
        }
    }

    async fn startup(&mut self) -> Result<(), QueueError> {
        self.queue.ensure_group().await?;
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&format!(
                "consuming {} as {}",
                self.cfg.redis.tasks_stream, self.id
            )),
        ]);
        tracing::info!(worker_id = %self.id, stream = %self.cfg.redis.tasks_stream, group = %self.cfg.redis.group,
            handlers = ?self.handlers.kinds().collect::<Vec<_>>(), "worker ready");
        // Crash recovery: first finish what this consumer id already holds.
        let n = self.drain_own_pel().await?;
        if n > 0 {
            tracing::info!(worker_id = %self.id, entries = n, "re-processed own pending entries");
        }
        Ok(())
    }

    /// Re-read and process this consumer's pending entries. Returns how many
    /// were finished (entries left pending on purpose do not count).
    pub(crate) async fn drain_own_pel(&mut self) -> Result<usize, QueueError> {
        let mut n = 0;
        let mut seen = std::collections::HashSet::new();
        loop {
            if self.stopping() {
                break;
            }
            let entries = self.queue.read(&self.id, 10, true).await?;
            let fresh: Vec<Entry> = entries
                .into_iter()
                .filter(|e| seen.insert(e.id.clone()))
                .collect();
            if fresh.is_empty() {
                break; // everything left is pending on purpose (backend down)
            }
            for e in fresh {
                if self.handle(e, true).await != Handled::LeftPending {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Process one entry end to end. Never panics on bad input.
    pub(crate) async fn handle(&mut self, e: Entry, redelivered: bool) -> Handled {
        let id = e.id.clone();
        let h = self.handle_entry(e, redelivered).await;
        if h == Handled::LeftPending {
            self.left_pending.insert(id);
        } else {
            self.left_pending.remove(&id);
        }
        h
    }

    async fn handle_entry(&mut self, e: Entry, redelivered: bool) -> Handled {
        if e.field_count == 0 {
            // A pending id whose entry was deleted: nothing left to do.
            return match self.queue.forget(&e.id).await {
                Ok(()) => Handled::Lost,
                Err(_) => Handled::LeftPending,
            };
        }
        let limit = self.cfg.worker.max_payload_bytes;
        let task = match e.task(limit) {
            Ok(t) => t,
            Err((code, why)) => {
                tracing::warn!(worker_id = %self.id, entry_id = %e.id, reason = code, error = %why, "bad entry");
                return self.dead(&e, &e.known(), code, why, 0, None).await;
            }
        };
        let max_attempts = task.max_attempts.unwrap_or(self.cfg.worker.max_attempts);
        // Entries we left pending ourselves (result backend down) are re-read
        // on purpose; their delivery count says nothing about crashes.
        if redelivered && !self.left_pending.contains(&e.id) {
            // A task that keeps killing its worker must not loop forever: the
            // PEL counter counts its deliveries across crashes.
            if let Ok(Some(n)) = self.queue.delivery_count(&e.id).await {
                if is_poison(n, max_attempts) {
                    let msg = format!("delivered {n} times without finishing (worker crashes?)");
                    let attempts = task.attempts.saturating_add(1);
                    return self
                        .dead(&e, &Known::of(&task), "poison", msg, attempts, None)
                        .await;
                }
            }
        }
        if task.deadline_passed(time::OffsetDateTime::now_utc()) {
            let msg = format!(
                "deadline {} passed before the task started",
                task.deadline.as_deref().unwrap_or("")
            );
            return self
                .dead(&e, &Known::of(&task), "deadline", msg, task.attempts, None)
                .await;
        }
        let Some(handler) = self.handlers.get(&task.kind).cloned() else {
            let kinds: Vec<&str> = self.handlers.kinds().collect();
            let msg = format!(
                "no handler for kind {:?} on this worker (handles: {})",
                task.kind,
                kinds.join(", ")
            );
            return self
                .dead(
                    &e,
                    &Known::of(&task),
                    "no_handler",
                    msg,
                    task.attempts,
                    None,
                )
                .await;
        };
        let trace = task.trace_id.clone().unwrap_or_default();
        tracing::info!(task_id = %task.id, worker_id = %self.id, trace_id = %trace, kind = %task.kind,
            attempt = task.attempts.saturating_add(1), entry_id = %e.id, "task started");
        let started_at = now_rfc3339();
        let t0 = Instant::now();
        let outcome = match self.run_handler(&e.id, &task, handler.as_ref()).await {
            Some(o) => o,
            None => {
                tracing::warn!(task_id = %task.id, worker_id = %self.id, trace_id = %trace,
                    "drain deadline passed; releasing the task (left pending for re-queue)");
                return Handled::LeftPending;
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        let kind_l = labels(&[("kind", &task.kind)]);
        self.metrics
            .task_duration
            .get_or_create(&kind_l)
            .observe(secs);
        self.metrics.busy_seconds.inc_by(secs);
        self.metrics
            .cost
            .runtime_seconds
            .get_or_create(&kind_l)
            .inc_by(secs);
        if let Some(after) = outcome.defer {
            return self.defer(&e, &task, after).await;
        }
        // Calls and failures count the same thing (one execution each), so
        // their ratio is a share; labelled by kind: every command handler's
        // name is "command", and a kind reaching here is a configured one.
        let handler_l = labels(&[("handler", &task.kind)]);
        self.metrics.handler_calls.get_or_create(&handler_l).inc();
        // Created at 0 with the first call: rate() misses a series' first sample.
        let fail = self.metrics.handler_fail.get_or_create(&handler_l);
        if outcome.status == Status::Error {
            fail.inc();
        }
        drop(fail);
        let attempts_done = task.attempts.saturating_add(1);
        let record = ResultRecord {
            task_id: task.id.clone(),
            status: outcome.status,
            data: outcome.data.clone(),
            created_at: now_rfc3339(),
            attempts: attempts_done,
            retryable: outcome.retryable,
            kind: task.kind.clone(),
            handler: handler.name().to_string(),
            handler_version: handler.version().to_string(),
            image_tag: self.image_tag(),
            worker_id: self.id.clone(),
            host: self.host.clone(),
            started_at,
            finished_at: now_rfc3339(),
            trace_id: task.trace_id.clone(),
        };
        match decide(
            outcome.status,
            outcome.retryable,
            attempts_done,
            max_attempts,
        ) {
            Decision::Complete => {
                let Some(prepared) = self.save(&record).await else {
                    return Handled::LeftPending;
                };
                let moved = self
                    .finish(
                        |q, id, me| {
                            let p = prepared.clone();
                            let tid = record.task_id.clone();
                            async move { q.complete(&id, &me, &tid, p.script_json()).await }
                        },
                        &e.id,
                        prepared.script_json().is_some(),
                    )
                    .await;
                self.metrics
                    .tasks
                    .get_or_create(&labels(&[
                        ("kind", &task.kind),
                        ("status", outcome.status.as_str()),
                    ]))
                    .inc();
                tracing::info!(task_id = %task.id, worker_id = %self.id, trace_id = %trace, status = outcome.status.as_str(),
                    duration_ms = (secs * 1000.0) as u64, attempts = attempts_done, "task finished");
                self.moved_to_handled(moved, Handled::Completed, &task)
            }
            Decision::Retry => {
                let next = task.next_attempt();
                let w = &self.cfg.worker;
                let delay_ms = backoff_ms(
                    w.retry_backoff_ms,
                    w.retry_backoff_max_ms,
                    attempts_done,
                    rand::random(),
                )
                // The backend's Retry-After is a floor.
                .max(outcome.retry_after.map_or(0, |d| d.as_millis() as u64));
                let moved = self
                    .finish(
                        |q, id, me| {
                            let n = next.clone();
                            async move { q.retry(&id, &me, &n, delay_ms).await }
                        },
                        &e.id,
                        false,
                    )
                    .await;
                self.metrics.retried.inc();
                tracing::warn!(task_id = %task.id, worker_id = %self.id, trace_id = %trace, attempts = attempts_done,
                    max_attempts, retry_in_ms = delay_ms, error = %outcome.data, "retryable failure; re-enqueued");
                self.moved_to_handled(moved, Handled::Retried, &task)
            }
            Decision::DeadLetter(reason) => {
                let msg = outcome
                    .data
                    .get("msg")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| outcome.data.to_string());
                self.metrics
                    .tasks
                    .get_or_create(&labels(&[("kind", &task.kind), ("status", "error")]))
                    .inc();
                self.dead(
                    &e,
                    &Known::of(&task),
                    reason.as_str(),
                    msg,
                    attempts_done,
                    Some(&record),
                )
                .await
            }
        }
    }

    /// Put the task back unchanged (same attempts) after `after`, through
    /// the retry script: a deferral is not an execution.
    async fn defer(&mut self, e: &Entry, task: &Task, after: Duration) -> Handled {
        let delay_ms = (after.as_millis() as u64).max(1);
        let moved = self
            .finish(
                |q, id, me| {
                    let t = task.clone();
                    async move { q.retry(&id, &me, &t, delay_ms).await }
                },
                &e.id,
                false,
            )
            .await;
        tracing::info!(task_id = %task.id, worker_id = %self.id, retry_in_ms = delay_ms,
            attempts = task.attempts, "deferred without using an attempt");
        self.moved_to_handled(moved, Handled::Deferred, task)
    }

    fn image_tag(&self) -> String {
        if self.cfg.worker.image_tag.is_empty() {
            format!("peagen-fabric/{}", env!("CARGO_PKG_VERSION"))
        } else {
            self.cfg.worker.image_tag.clone()
        }
    }

    fn moved_to_handled(&self, m: Option<Moved>, ok: Handled, task: &Task) -> Handled {
        self.moved_to_handled_id(m, ok, &task.id)
    }

    fn moved_to_handled_id(&self, m: Option<Moved>, ok: Handled, task_id: &str) -> Handled {
        match m {
            Some(Moved::Done) => ok,
            Some(other) => {
                tracing::warn!(task_id = %task_id, worker_id = %self.id, moved = ?other,
                    "entry was taken over meanwhile (re-queued by the spawner?); not acknowledging");
                Handled::Lost
            }
            None => Handled::LeftPending,
        }
    }

    /// Run the handler with the task's timeout, heart-beating the entry and
    /// the watchdog. Returns None if a shutdown's drain deadline passed.
    async fn run_handler(
        &self,
        entry_id: &str,
        task: &Task,
        h: &dyn crate::handlers::Handler,
    ) -> Option<Outcome> {
        let fut = h.run(task);
        tokio::pin!(fut);
        let timeout = task.timeout_ms.map(Duration::from_millis);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // First ticks one period from now: an `interval`'s immediate first
        // tick still goes through the timer wheel (1 ms resolution) and cost
        // every task ~1 ms of idle waiting (see docs/benchmarks.md).
        let now = tokio::time::Instant::now();
        let mut hb = tokio::time::interval_at(now + HEARTBEAT, HEARTBEAT);
        let wd_every = Duration::from_secs(1);
        let mut wd = tokio::time::interval_at(now + wd_every, wd_every);
        let mut rx = self.shutdown.clone();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        if *rx.borrow() {
            drain_deadline = Some(
                tokio::time::Instant::now()
                    + Duration::from_millis(self.cfg.worker.drain_timeout_ms),
            );
        }
        loop {
            let task_sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let drain_sleep = async {
                match drain_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                o = &mut fut => return Some(o),
                _ = task_sleep => {
                    return Some(Outcome::error(format!("timed out after {} ms (task timeout_ms)", timeout.unwrap_or_default().as_millis()), true));
                }
                _ = hb.tick() => {
                    if let Err(e) = self.queue.heartbeat(&self.id, entry_id).await {
                        tracing::debug!(task_id = %task.id, worker_id = %self.id, error = %e, "heartbeat failed");
                    }
                }
                _ = wd.tick() => notify(&[NotifyState::Watchdog]),
                _ = rx.wait_for(|s| *s), if drain_deadline.is_none() => {
                    tracing::info!(task_id = %task.id, worker_id = %self.id, drain_ms = self.cfg.worker.drain_timeout_ms, "stop requested; finishing the current task");
                    drain_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(self.cfg.worker.drain_timeout_ms));
                }
                _ = drain_sleep => return None,
            }
        }
    }

    /// Save a result in the configured backend (see [`ResultSink`]). `None`
    /// = the save failed and the task stays pending.
    async fn save(&self, record: &ResultRecord) -> Option<Prepared> {
        match self.results.prepare(record).await {
            Ok(p) => Some(p),
            Err(e) => {
                self.metrics.result_backend_fail.inc();
                tracing::error!(task_id = %record.task_id, worker_id = %self.id, error = %e,
                    "result backend failed; task left pending and will be retried");
                let err_rec = ResultRecord {
                    status: Status::Error,
                    data: serde_json::json!({ "msg": e.to_string(), "retryable": true, "result_backend_failed": true }),
                    retryable: true,
                    created_at: now_rfc3339(),
                    ..record.clone()
                };
                let _ = self
                    .queue
                    .publish_result_unindexed(&serde_json::to_string(&err_rec).expect("serializes"))
                    .await;
                None
            }
        }
    }

    /// Run a finishing script, retrying through Redis outages (the scripts
    /// are idempotent). Gives up only when stopping and the drain time is
    /// spent, leaving the entry pending for re-queue.
    /// `writes_result`: the script also writes the result record (stream
    /// backend), so a failed attempt is a result-backend failure too.
    async fn finish<F, Fut>(&self, f: F, entry_id: &str, writes_result: bool) -> Option<Moved>
    where
        F: Fn(Arc<Queue>, String, String) -> Fut,
        Fut: std::future::Future<Output = Result<Moved, QueueError>>,
    {
        let mut backoff = Backoff::service();
        let give_up = Instant::now() + Duration::from_millis(self.cfg.worker.drain_timeout_ms);
        loop {
            match f(self.queue.clone(), entry_id.to_string(), self.id.clone()).await {
                Ok(m) => return Some(m),
                Err(e) => {
                    // Keep the watchdog fed through a Redis outage: the task is
                    // done, only its acknowledgement is waiting.
                    notify(&[NotifyState::Watchdog]);
                    if writes_result {
                        self.metrics.result_backend_fail.inc();
                    }
                    tracing::warn!(worker_id = %self.id, entry_id, error = %e, writes_result, "acknowledging failed; retrying");
                    if self.stopping() && Instant::now() > give_up {
                        return None;
                    }
                    tokio::time::sleep(backoff.step()).await;
                }
            }
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            worker_id: self.id.clone(),
            host: self.host.clone(),
            image_tag: self.image_tag(),
        }
    }

    /// Dead-letter an entry. When its task id is known, the task's final
    /// error result is saved first (`record`, or one built from the reason),
    /// so `peagenctl task get ID` always answers; a save failure leaves the
    /// entry pending.
    async fn dead(
        &mut self,
        e: &Entry,
        known: &Known,
        reason: &str,
        msg: String,
        attempts: u32,
        record: Option<&ResultRecord>,
    ) -> Handled {
        let by = self.actor();
        let prepared = match &known.task_id {
            Some(_) => {
                let mut rec = match record {
                    Some(r) => r.clone(),
                    None => ResultRecord::dead(known, reason, &msg, attempts, &by),
                };
                if let serde_json::Value::Object(m) = &mut rec.data {
                    m.insert("dead_letter_reason".into(), reason.into());
                    m.entry("msg").or_insert_with(|| msg.clone().into());
                }
                match self.save(&rec).await {
                    Some(p) => Some(p),
                    None => return Handled::LeftPending,
                }
            }
            None => None,
        };
        let dl = e.dead_letter(known, reason, msg, attempts, &by);
        let keep = e.not_carried();
        self.metrics
            .dead_lettered
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        let task_id = known.task_id.as_deref().unwrap_or_default();
        tracing::warn!(task_id, worker_id = %self.id, entry_id = %e.id,
            trace_id = %known.trace_id.as_deref().unwrap_or_default(),
            reason, attempts, error = %dl.error, "dead-lettered");
        let moved = self
            .finish(
                |q, id, me| {
                    let dl = dl.clone();
                    let p = prepared.clone();
                    async move {
                        let rj = p.as_ref().and_then(|p| p.script_json());
                        q.dead_letter(&id, &me, &dl, rj, keep).await
                    }
                },
                &e.id,
                prepared.as_ref().is_some_and(|p| p.script_json().is_some()),
            )
            .await;
        self.moved_to_handled_id(moved, Handled::DeadLettered(reason.to_string()), task_id)
    }
}

/// How often a worker flushes its counter deltas to the host's Redis hash.
pub(crate) const FLEET_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Refresh `queue_pending_total{kind}` periodically (bounded scan).
pub(crate) async fn pending_gauge_loop(queue: Arc<Queue>, m: WorkerMetrics, every: Duration) {
    loop {
        if let Ok(by_kind) = queue.pending_by_kind(10_000).await {
            m.queue_pending.set(by_kind);
        }
        tokio::time::sleep(every).await;
    }
}
