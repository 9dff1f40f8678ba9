//! Exponential backoff for waiting out an unavailable service (Redis,
//! systemd): the one copy of "double the wait, up to a cap, back to the
//! start after a success".

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// 100 ms doubling up to 5 s: for reconnecting to Redis or systemd.
    pub fn service() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The wait the next [`Backoff::step`] returns.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The wait to use now; the following one doubles (up to the cap).
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::service();
        let got: Vec<u64> = (0..8).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(b.step(), Duration::from_secs(10));
        assert_eq!(b.step(), Duration::from_secs(10));
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        b.step();
        assert_eq!(b.step(), Duration::MAX);
    }
}
