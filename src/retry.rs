//! Retry policy: a pure decision over one finished execution.
//!
//! `attempts_done` counts executions including the one that just ended, so
//! with `max_attempts = 3` a task runs at most three times.

use crate::task::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Record the result and acknowledge.
    Complete,
    /// Re-enqueue a copy with `attempts + 1` and acknowledge the original.
    Retry,
    /// Record the error result, move the task to the dead-letter stream.
    DeadLetter(DeadReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The handler said the error is not worth retrying.
    HandlerError,
    /// Retryable, but this was the last allowed attempt.
    AttemptsExhausted,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::HandlerError => "handler_error",
            DeadReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

pub fn decide(status: Status, retryable: bool, attempts_done: u32, max_attempts: u32) -> Decision {
    match status {
        Status::Ok | Status::Skip => Decision::Complete,
        Status::Error if !retryable => Decision::DeadLetter(DeadReason::HandlerError),
        Status::Error if attempts_done < max_attempts.max(1) => Decision::Retry,
        Status::Error => Decision::DeadLetter(DeadReason::AttemptsExhausted),
    }
}

/// For work taken back from a dead or vanished worker: the interrupted
/// execution counts as an attempt.
pub fn decide_reclaim(attempts_before: u32, max_attempts: u32) -> Decision {
    decide(
        Status::Error,
        true,
        attempts_before.saturating_add(1),
        max_attempts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
