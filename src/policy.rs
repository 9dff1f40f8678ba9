//! The spawner's decision core: pure functions, no I/O, exhaustively tested.
//!
//! [`decide`] maps (queue backlog, in-flight work, the workers systemd
//! reports, config, a little memory of the previous call) to "start N
//! workers" and "stop these idle workers". Rules, from the field lessons in
//! docs (KEDA, HPA, Celery):
//! - work = backlog + in flight; NULL lag is *unknown*, never 0: fall back to
//!   `length - pending` (entries are deleted when finished, so XLEN counts
//!   backlog + in flight).
//! - desired = clamp(need + warm_pool, min, max) where need = 0 for no work
//!   and max(1, work / tasks_per_worker) otherwise.
//! - Starting workers count as capacity (no over-creation while they boot).
//! - Scale up at once, rate-limited per tick; scale down only after the
//!   desired count stayed below the current one for the stabilization window,
//!   and only workers idle for at least the idle timeout. Busy, starting and
//!   stopping workers are never chosen.
//!
//! [`Breaker`] is the spawn-failure circuit breaker.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub min: u32,
    pub max: u32,
    pub warm_pool: u32,
    pub tasks_per_worker: u32,
    pub max_starts_per_tick: u32,
    pub scale_down_window: Duration,
    pub idle_timeout: Duration,
}

impl From<&crate::config::SpawnerConfig> for PolicyConfig {
    fn from(s: &crate::config::SpawnerConfig) -> Self {
        PolicyConfig {
            min: s.min,
            max: s.max,
            warm_pool: s.warm_pool,
            tasks_per_worker: s.tasks_per_worker.max(1),
            max_starts_per_tick: s.max_starts_per_tick,
            scale_down_window: Duration::from_secs(s.scale_down_window_secs),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        }
    }
}

/// Queue state as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Entries never delivered (`XINFO GROUPS` lag); `None` = unknown.
    pub lag: Option<u64>,
    /// XLEN of the tasks stream (backlog + in flight).
    pub length: u64,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
}

impl Backlog {
    /// Undelivered entries; unknown lag falls back to `length - pending`.
    pub fn waiting(&self) -> u64 {
        self.lag
            .unwrap_or_else(|| self.length.saturating_sub(self.pending))
    }

    /// Backlog plus in-flight work.
    pub fn work(&self) -> u64 {
        self.waiting().saturating_add(self.pending)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Start job running (not yet READY=1).
    Starting,
    /// Running with nothing pending, since the given instant.
    Idle { since: Instant },
    /// Running with at least one pending entry.
    Busy,
    /// Stop job running; no longer capacity.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub id: String,
    pub state: WorkerState,
}

/// What the policy remembers between calls (owned by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Since when the desired count has been below the current count.
    pub low_since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    /// Workers counted as capacity (starting + idle + busy).
    pub current: u32,
    pub start: u32,
    /// Idle workers to stop, longest idle first.
    pub stop: Vec<String>,
    pub memory: Memory,
}

/// Desired worker count for this much work.
pub fn desired(cfg: &PolicyConfig, b: &Backlog) -> u32 {
    let work = b.work();
    let need: u64 = if work == 0 {
        0
    } else {
        (work / u64::from(cfg.tasks_per_worker.max(1))).max(1)
    };
    let want = need.saturating_add(u64::from(cfg.warm_pool));
    let want = want.min(u64::from(cfg.max)) as u32;
    want.max(cfg.min).min(cfg.max)
}

/// One scaling decision. `allowed_starts` is the circuit breaker's budget
/// ([`Breaker::allowed_starts`]).
pub fn decide(
    cfg: &PolicyConfig,
    backlog: &Backlog,
    workers: &[WorkerView],
    mem: Memory,
    allowed_starts: u32,
    now: Instant,
) -> Decision {
    decide_towards(
        cfg,
        desired(cfg, backlog),
        workers,
        mem,
        allowed_starts,
        now,
    )
}

/// [`decide`] for a desired count chosen elsewhere (a fleet share, see
/// [`crate::fleet`]): same rate limit, `max`, stabilization window and
/// idle-only scale-down.
pub fn decide_towards(
    cfg: &PolicyConfig,
    want: u32,
    workers: &[WorkerView],
    mem: Memory,
    allowed_starts: u32,
    now: Instant,
) -> Decision {
    let want = want.min(cfg.max);
    let current = workers
        .iter()
        .filter(|w| !matches!(w.state, WorkerState::Stopping))
        .count() as u32;
    // Everything still alive takes a slot below `max`, stopping ones included.
    let alive = workers.len() as u32;
    let mut d = Decision {
        desired: want,
        current,
        start: 0,
        stop: Vec::new(),
        memory: Memory { low_since: None },
    };
    if want > current {
        d.start = (want - current)
            .min(cfg.max_starts_per_tick)
            .min(cfg.max.saturating_sub(alive))
            .min(allowed_starts);
        return d;
    }
    if want == current {
        return d;
    }
    // want < current: scale down after the stabilization window.
    let since = mem.low_since.unwrap_or(now);
    d.memory.low_since = Some(since);
    if now.saturating_duration_since(since) < cfg.scale_down_window {
        return d;
    }
    let mut idle: Vec<(&WorkerView, Instant)> = workers
        .iter()
        .filter_map(|w| match w.state {
            WorkerState::Idle { since }
                if now.saturating_duration_since(since) >= cfg.idle_timeout =>
            {
                Some((w, since))
            }
            _ => None,
        })
        .collect();
    idle.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.id.cmp(&b.0.id)));
    d.stop = idle
        .into_iter()
        .take((current - want) as usize)
        .map(|(w, _)| w.id.clone())
        .collect();
    d
}

/// Spawn-failure circuit breaker. `threshold` consecutive failed starts open
/// it for `backoff` (doubling up to `max_backoff` on each failed probe);
/// after that one probe start is allowed (half-open); a successful start
/// closes it. Fresh transient units have no start-limit counter, so without
/// this a broken worker binary would be restarted in a storm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    pub threshold: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    failures: u32,
    backoff: Duration,
    open_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// No starts until the instant.
    Open {
        until: Instant,
    },
    /// One probe start allowed.
    HalfOpen,
}

impl Breaker {
    pub fn new(threshold: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            initial_backoff,
            max_backoff: max_backoff.max(initial_backoff),
            failures: 0,
            backoff: initial_backoff,
            open_until: None,
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open { until: t },
            Some(_) => BreakerState::HalfOpen,
        }
    }

    pub fn is_open(&self, now: Instant) -> bool {
        matches!(self.state(now), BreakerState::Open { .. })
    }

    /// How many starts may begin now, given `in_flight` starts not yet
    /// finished. After a failure (even below the threshold) starts are
    /// serialized, so one broken binary cannot fail a whole wave at a time.
    pub fn allowed_starts(&self, now: Instant, in_flight: u32) -> u32 {
        match self.state(now) {
            BreakerState::Closed if self.failures == 0 => u32::MAX,
            BreakerState::Closed | BreakerState::HalfOpen => u32::from(in_flight == 0),
            BreakerState::Open { .. } => 0,
        }
    }

    pub fn on_success(&mut self) {
        self.failures = 0;
        self.backoff = self.initial_backoff;
        self.open_until = None;
    }

    /// Record a failed start. Returns `Some(backoff)` when this failure
    /// (re)opened the breaker: reaching the threshold opens it for the
    /// initial backoff, a failed half-open probe doubles it. Failures of
    /// starts that were already in flight while it was open change nothing.
    pub fn on_failure(&mut self, now: Instant) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        match self.state(now) {
            BreakerState::Open { .. } => None,
            BreakerState::HalfOpen => {
                self.backoff = (self.backoff * 2).min(self.max_backoff);
                self.open_until = Some(now + self.backoff);
                Some(self.backoff)
            }
            BreakerState::Closed if self.failures >= self.threshold => {
                self.backoff = self.initial_backoff;
                self.open_until = Some(now + self.backoff);
                Some(self.backoff)
            }
            BreakerState::Closed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            min: 0,
            max: 32,
            warm_pool: 2,
            tasks_per_worker: 2,
            max_starts_per_tick: 8,
            scale_down_window: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn bl(lag: Option<u64>, length: u64, pending: u64) -> Backlog {
        Backlog {
            lag,
            length,
            pending,
        }
    }

    fn w(id: &str, state: WorkerState) -> WorkerView {
        WorkerView {
            id: id.into(),
            state,
        }
    }

    #[test]
    fn null_lag_is_unknown_not_zero() {
        let b = bl(None, 10, 0);
        assert_eq!(b.waiting(), 10);
        assert_eq!(desired(&cfg(), &b), 5 + 2);
        // Unknown lag with some in flight: length counts both.
        assert_eq!(bl(None, 10, 4).work(), 10);
        // Known zero lag with in-flight work still needs workers.
        assert_eq!(desired(&cfg(), &bl(Some(0), 3, 3)), 1 + 2);
    }

    #[test]
    fn desired_formula() {
        let c = PolicyConfig {
            warm_pool: 0,
            ..cfg()
        };
        assert_eq!(desired(&c, &bl(Some(0), 0, 0)), 0);
        assert_eq!(desired(&c, &bl(Some(1), 1, 0)), 1, "max(1, ..)");
        assert_eq!(desired(&c, &bl(Some(3), 3, 0)), 1);
        assert_eq!(desired(&c, &bl(Some(10), 14, 4)), 7);
        assert_eq!(desired(&c, &bl(Some(1000), 1000, 0)), 32, "capped at max");
        let c = PolicyConfig { min: 3, ..c };
        assert_eq!(desired(&c, &bl(Some(0), 0, 0)), 3, "min floor");
        // Warm pool on top of need, still capped.
        assert_eq!(desired(&cfg(), &bl(Some(0), 0, 0)), 2);
        assert_eq!(desired(&cfg(), &bl(Some(100), 100, 0)), 32);
    }

    #[test]
    fn burst_scales_up_rate_limited_and_counts_starting() {
        let now = Instant::now();
        let c = cfg();
        let b = bl(Some(40), 40, 0); // need 20 + warm 2 = 22
        let d = decide(&c, &b, &[], Memory::default(), u32::MAX, now);
        assert_eq!((d.desired, d.current, d.start), (22, 0, 8));
        // Next tick: 8 starting count as capacity.
        let ws: Vec<_> = (0..8)
            .map(|i| w(&format!("s{i}"), WorkerState::Starting))
            .collect();
        let d = decide(&c, &b, &ws, d.memory, u32::MAX, now);
        assert_eq!((d.current, d.start), (8, 8));
        // All 22 present (starting or busy): no more starts.
        let ws: Vec<_> = (0..22)
            .map(|i| {
                w(
                    &format!("w{i}"),
                    if i % 2 == 0 {
                        WorkerState::Busy
                    } else {
                        WorkerState::Starting
                    },
                )
            })
            .collect();
        let d = decide(&c, &b, &ws, d.memory, u32::MAX, now);
        assert_eq!(d.start, 0);
        assert!(d.stop.is_empty());
    }

    #[test]
    fn never_exceeds_max_including_stopping() {
        let now = Instant::now();
        let c = PolicyConfig {
            max: 4,
            warm_pool: 0,
            ..cfg()
        };
        let ws = vec![
            w("a", WorkerState::Stopping),
            w("b", WorkerState::Stopping),
            w("c", WorkerState::Busy),
        ];
        let d = decide(&c, &bl(Some(100), 100, 1), &ws, Memory::default(), 99, now);
        assert_eq!(d.desired, 4);
        assert_eq!(d.start, 1, "2 stopping + 1 busy + 1 new = max 4");
    }

    #[test]
    fn breaker_budget_limits_starts() {
        let now = Instant::now();
        let d = decide(&cfg(), &bl(Some(10), 10, 0), &[], Memory::default(), 0, now);
        assert_eq!(d.start, 0);
        let d = decide(&cfg(), &bl(Some(10), 10, 0), &[], Memory::default(), 1, now);
        assert_eq!(d.start, 1);
    }

    #[test]
    fn scale_down_waits_for_window_and_idle_timeout() {
        let t0 = Instant::now();
        let c = cfg(); // window 300 s, idle 60 s, warm 2
        let long_idle = WorkerState::Idle { since: t0 };
        let ws: Vec<_> = (0..5).map(|i| w(&format!("w{i}"), long_idle)).collect();
        let empty = bl(Some(0), 0, 0);
        let d = decide(&c, &empty, &ws, Memory::default(), u32::MAX, t0);
        assert_eq!(d.desired, 2);
        assert!(d.stop.is_empty(), "window just opened");
        assert_eq!(d.memory.low_since, Some(t0));
        let t1 = t0 + Duration::from_secs(299);
        let d = decide(&c, &empty, &ws, d.memory, u32::MAX, t1);
        assert!(d.stop.is_empty());
        let t2 = t0 + Duration::from_secs(300);
        let d = decide(&c, &empty, &ws, d.memory, u32::MAX, t2);
        assert_eq!(d.stop.len(), 3, "down to the warm pool");
        assert_eq!(d.start, 0);
    }

    #[test]
    fn load_returning_resets_the_window() {
        let t0 = Instant::now();
        let c = cfg();
        let ws: Vec<_> = (0..4)
            .map(|i| w(&format!("w{i}"), WorkerState::Idle { since: t0 }))
            .collect();
        let d = decide(&c, &bl(Some(0), 0, 0), &ws, Memory::default(), 9, t0);
        assert!(d.memory.low_since.is_some());
        let d = decide(
            &c,
            &bl(Some(4), 4, 0),
            &ws,
            d.memory,
            9,
            t0 + Duration::from_secs(10),
        );
        assert_eq!(d.memory.low_since, None, "desired == current resets");
        let t = t0 + Duration::from_secs(400);
        let d = decide(&c, &bl(Some(0), 0, 0), &ws, d.memory, 9, t);
        assert!(d.stop.is_empty(), "window restarts");
    }

    #[test]
    fn never_stops_busy_starting_or_recently_idle() {
        let t0 = Instant::now();
        let c = PolicyConfig {
            warm_pool: 0,
            scale_down_window: Duration::ZERO,
            ..cfg()
        };
        let now = t0 + Duration::from_secs(100);
        let ws = vec![
            w("busy", WorkerState::Busy),
            w("start", WorkerState::Starting),
            w(
                "fresh",
                WorkerState::Idle {
                    since: now - Duration::from_secs(5),
                },
            ),
            w("old", WorkerState::Idle { since: t0 }),
            w(
                "older",
                WorkerState::Idle {
                    since: t0 - Duration::from_secs(1),
                },
            ),
        ];
        // No work at all: desired 0, but only the two long-idle ones may go.
        let d = decide(&c, &bl(Some(0), 0, 0), &ws, Memory::default(), 9, now);
        assert_eq!(d.stop, vec!["older".to_string(), "old".to_string()]);
    }

    #[test]
    fn scale_down_stops_only_the_excess() {
        let t0 = Instant::now();
        let c = PolicyConfig {
            warm_pool: 0,
            scale_down_window: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            ..cfg()
        };
        let ws: Vec<_> = (0..6)
            .map(|i| w(&format!("w{i}"), WorkerState::Idle { since: t0 }))
            .collect();
        // 4 waiting tasks: desired 2 -> stop 4.
        let d = decide(&c, &bl(Some(4), 4, 0), &ws, Memory::default(), 9, t0);
        assert_eq!((d.desired, d.stop.len()), (2, 4));
    }

    #[test]
    fn stopping_workers_are_not_capacity() {
        let now = Instant::now();
        let c = PolicyConfig {
            warm_pool: 0,
            ..cfg()
        };
        let ws = vec![w("a", WorkerState::Stopping)];
        let d = decide(&c, &bl(Some(2), 2, 0), &ws, Memory::default(), 9, now);
        assert_eq!((d.current, d.start), (0, 1));
    }

    #[test]
    fn breaker_opens_backs_off_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(5), Duration::from_secs(12));
        assert_eq!(b.allowed_starts(t0, 0), u32::MAX);
        assert_eq!(b.on_failure(t0), None);
        // Below the threshold: closed, but starts are serialized.
        assert_eq!(b.allowed_starts(t0, 0), 1);
        assert_eq!(b.allowed_starts(t0, 1), 0);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), Some(Duration::from_secs(5)));
        assert!(b.is_open(t0));
        // Late failures of starts already in flight do not extend it.
        assert_eq!(b.on_failure(t0 + Duration::from_secs(1)), None);
        assert_eq!(b.state(t0 + Duration::from_secs(5)), BreakerState::HalfOpen);
        assert_eq!(b.allowed_starts(t0 + Duration::from_secs(4), 0), 0);
        // Half-open: one probe, only when nothing is in flight.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.allowed_starts(t1, 0), 1);
        assert_eq!(b.allowed_starts(t1, 1), 0);
        // Failed probe doubles the backoff, capped.
        assert_eq!(b.on_failure(t1), Some(Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(b.on_failure(t2), Some(Duration::from_secs(12)));
        assert_eq!(b.failures(), 6);
        // Success closes and resets.
        b.on_success();
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.on_failure(t2), None);
    }

    #[test]
    fn success_between_failures_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1), Duration::from_secs(8));
        b.on_failure(t0);
        b.on_success();
        assert_eq!(b.on_failure(t0), None);
        assert!(!b.is_open(t0));
    }
}
