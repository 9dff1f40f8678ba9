//! Retry policy: a pure decision over one finished execution.
//!
//! `attempts_done` counts executions including the one that just ended, so
//! with `max_attempts = 3` a task runs at most three times.
//!
//! [`backoff_ms`] says how long a retry waits before it is due again;
//! [`is_poison`] and [`reclaim`] decide about entries whose worker crashed
//! or vanished. The worker and the queue's reclaim only carry them out.

use crate::task::{Status, Task};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Record the result and acknowledge.
    Complete,
    /// Re-enqueue a copy with `attempts + 1` and acknowledge the original.
    Retry,
    /// Record the error result, move the task to the dead-letter stream.
    DeadLetter(DeadReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// The handler said the error is not worth retrying.
    HandlerError,
    /// Retryable, but this was the last allowed attempt.
    AttemptsExhausted,
}

impl DeadReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadReason::HandlerError => "handler_error",
            DeadReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

pub(crate) fn decide(
    status: Status,
    retryable: bool,
    attempts_done: u32,
    max_attempts: u32,
) -> Decision {
    match status {
        Status::Ok | Status::Skip => Decision::Complete,
        Status::Error if !retryable => Decision::DeadLetter(DeadReason::HandlerError),
        Status::Error if attempts_done < max_attempts.max(1) => Decision::Retry,
        Status::Error => Decision::DeadLetter(DeadReason::AttemptsExhausted),
    }
}

/// For work taken back from a dead or vanished worker: the interrupted
/// execution counts as an attempt.
pub(crate) fn decide_reclaim(attempts_before: u32, max_attempts: u32) -> Decision {
    decide(
        Status::Error,
        true,
        attempts_before.saturating_add(1),
        max_attempts,
    )
}

/// A redelivered entry (found in its worker's own pending list) whose PEL
/// delivery counter passed `max_attempts + 1` keeps killing its worker:
/// dead-letter it (reason `poison`) instead of running it again.
pub(crate) fn is_poison(deliveries: u64, max_attempts: u32) -> bool {
    deliveries > u64::from(max_attempts) + 1
}

/// What to do with an entry taken back from a dead or vanished worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reclaim {
    /// Re-queue this copy (attempts already counted) at once.
    Requeue(Box<Task>),
    /// Dead-letter the entry.
    DeadLetter { reason: &'static str, error: String },
}

/// Reclaim decision for an entry holding `task`, or a bad entry (its
/// dead-letter reason and message). `why` says why it was taken back.
pub(crate) fn reclaim(
    task: Result<&Task, &(&'static str, String)>,
    default_max_attempts: u32,
    why: &str,
) -> Reclaim {
    match task {
        Ok(t) => {
            let max = t.max_attempts.unwrap_or(default_max_attempts);
            match decide_reclaim(t.attempts, max) {
                Decision::Retry => Reclaim::Requeue(Box::new(t.next_attempt())),
                _ => Reclaim::DeadLetter {
                    reason: DeadReason::AttemptsExhausted.as_str(),
                    error: format!("{why}; no attempts left ({max} allowed)"),
                },
            }
        }
        Err((reason, error)) => Reclaim::DeadLetter {
            reason,
            error: error.clone(),
        },
    }
}

/// Upper bound of the delay after the `attempt`-th failed execution (1-based):
/// `min(max_ms, base_ms * 2^(attempt-1))`, saturating. 0 when `base_ms` is 0
/// (backoff off) or `attempt` is 0.
pub(crate) fn backoff_ceiling_ms(base_ms: u64, max_ms: u64, attempt: u32) -> u64 {
    if base_ms == 0 || attempt == 0 {
        return 0;
    }
    let factor = 1u64.checked_shl(attempt - 1).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(max_ms.max(base_ms))
}

/// Delay before the retry of the `attempt`-th failed execution, with "equal
/// jitter": half the ceiling is fixed, the other half is drawn from `random`
/// (any uniformly random u64, passed in so this stays pure). Always within
/// `[ceiling / 2, ceiling]`: a lower bound operators can rely on, and spread
/// so tasks that failed together do not come back together.
pub(crate) fn backoff_ms(base_ms: u64, max_ms: u64, attempt: u32, random: u64) -> u64 {
    let ceiling = backoff_ceiling_ms(base_ms, max_ms, attempt);
    let fixed = ceiling - ceiling / 2;
    let span = ceiling / 2;
    // span < u64::MAX, so span + 1 cannot overflow.
    fixed + random % (span + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_then_caps() {
        let got: Vec<u64> = (0..=8)
            .map(|n| backoff_ceiling_ms(1000, 60_000, n))
            .collect();
        assert_eq!(
            got,
            [0, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
        );
        // Off, whatever the cap.
        for n in 0..100 {
            assert_eq!(backoff_ceiling_ms(0, 60_000, n), 0);
            assert_eq!(backoff_ceiling_ms(0, 0, n), 0);
        }
    }

    #[test]
    fn backoff_exhaustive_small_space() {
        for base in 0..20u64 {
            for max in 0..50u64 {
                for attempt in 0..12u32 {
                    let c = backoff_ceiling_ms(base, max, attempt);
                    let expect = if base == 0 || attempt == 0 {
                        0
                    } else {
                        (base << (attempt - 1)).min(max.max(base))
                    };
                    assert_eq!(c, expect, "base={base} max={max} attempt={attempt}");
                    for random in [0, 1, 2, 3, 7, 1000, u64::MAX - 1, u64::MAX] {
                        let d = backoff_ms(base, max, attempt, random);
                        assert!(
                            d >= c - c / 2 && d <= c,
                            "base={base} max={max} attempt={attempt} random={random}: {d} not in [{}, {c}]",
                            c - c / 2
                        );
                    }
                    // Every value of the range is reachable.
                    let reach: std::collections::BTreeSet<u64> =
                        (0..=c).map(|r| backoff_ms(base, max, attempt, r)).collect();
                    assert_eq!(reach, ((c - c / 2)..=c).collect());
                }
            }
        }
    }

    #[test]
    fn backoff_never_overflows() {
        for attempt in [1, 2, 31, 32, 63, 64, 65, 1000, u32::MAX - 1, u32::MAX] {
            for (base, max) in [(1, u64::MAX), (u64::MAX, u64::MAX), (1000, 60_000)] {
                for random in [0, u64::MAX / 2, u64::MAX] {
                    let c = backoff_ceiling_ms(base, max, attempt);
                    assert!(c <= max && c >= base, "attempt={attempt} base={base}");
                    let d = backoff_ms(base, max, attempt, random);
                    assert!(d <= c && d >= c - c / 2);
                }
            }
        }
        assert_eq!(backoff_ceiling_ms(1000, 60_000, u32::MAX), 60_000);
        assert_eq!(backoff_ceiling_ms(1, u64::MAX, 64), 1 << 63);
        assert_eq!(backoff_ceiling_ms(1, u64::MAX, 65), u64::MAX);
        assert_eq!(backoff_ceiling_ms(3, u64::MAX, 64), u64::MAX);
    }

    #[test]
    fn exhaustive_small_space() {
        for max in 0..6u32 {
            for done in 0..8u32 {
                for retryable in [false, true] {
                    assert_eq!(decide(Status::Ok, retryable, done, max), Decision::Complete);
                    assert_eq!(
                        decide(Status::Skip, retryable, done, max),
                        Decision::Complete
                    );
                    let d = decide(Status::Error, retryable, done, max);
                    let expect = if !retryable {
                        Decision::DeadLetter(DeadReason::HandlerError)
                    } else if done < max.max(1) {
                        Decision::Retry
                    } else {
                        Decision::DeadLetter(DeadReason::AttemptsExhausted)
                    };
                    assert_eq!(d, expect, "max={max} done={done} retryable={retryable}");
                }
            }
        }
    }

    #[test]
    fn default_three_attempts() {
        assert_eq!(decide(Status::Error, true, 1, 3), Decision::Retry);
        assert_eq!(decide(Status::Error, true, 2, 3), Decision::Retry);
        assert_eq!(
            decide(Status::Error, true, 3, 3),
            Decision::DeadLetter(DeadReason::AttemptsExhausted)
        );
    }

    #[test]
    fn poison_after_max_attempts_plus_one_deliveries() {
        assert!(!is_poison(4, 3));
        assert!(is_poison(5, 3));
        assert!(is_poison(u64::MAX, u32::MAX));
        assert!(!is_poison(u64::from(u32::MAX) + 1, u32::MAX));
    }

    #[test]
    fn reclaim_requeues_or_dead_letters() {
        let mut t = Task::new("echo", serde_json::json!({}));
        match reclaim(Ok(&t), 3, "gone") {
            Reclaim::Requeue(n) => assert_eq!(n.attempts, 1),
            other => panic!("{other:?}"),
        }
        t.attempts = 2;
        assert_eq!(
            reclaim(Ok(&t), 3, "gone"),
            Reclaim::DeadLetter {
                reason: "attempts_exhausted",
                error: "gone; no attempts left (3 allowed)".into()
            }
        );
        t.max_attempts = Some(5);
        assert!(matches!(reclaim(Ok(&t), 3, "gone"), Reclaim::Requeue(_)));
        let bad = ("malformed", "x".to_string());
        assert_eq!(
            reclaim(Err(&bad), 3, "gone"),
            Reclaim::DeadLetter {
                reason: "malformed",
                error: "x".into()
            }
        );
    }

    #[test]
    fn reclaim_counts_the_interrupted_attempt() {
        assert_eq!(decide_reclaim(0, 3), Decision::Retry);
        assert_eq!(decide_reclaim(1, 3), Decision::Retry);
        assert_eq!(
            decide_reclaim(2, 3),
            Decision::DeadLetter(DeadReason::AttemptsExhausted)
        );
        assert_eq!(
            decide_reclaim(u32::MAX, 3),
            Decision::DeadLetter(DeadReason::AttemptsExhausted)
        );
    }
}
