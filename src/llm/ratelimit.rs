//! Token buckets for LLM backends: requests per minute and tokens per
//! minute, each with a burst capacity.
//!
//! One algorithm, two homes: [`take`] (scope `worker`, in memory, monotonic
//! clock) and [`BUCKET_SCRIPT`] (scope `fleet`, one atomic Lua script with
//! Redis `TIME` as the only clock, so hosts with skewed clocks share one
//! bucket correctly). A request is granted only when both buckets hold
//! enough; otherwise nothing is taken and the answer is how long to wait.

use super::store::{Store, StoreError};
use std::sync::Mutex;
use std::time::Instant;

/// Refill rates (per minute, 0 = unlimited) and capacities of one bucket pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub requests_per_minute: u64,
    pub request_burst: u64,
    pub tokens_per_minute: u64,
    pub token_burst: u64,
}

impl Spec {
    pub fn unlimited(&self) -> bool {
        self.requests_per_minute == 0 && self.tokens_per_minute == 0
    }
}

/// Levels of both buckets at a point in time (ms on the caller's clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub requests: f64,
    pub tokens: f64,
    pub at_ms: u64,
}

/// Slack for the float sums of many small refills (a bucket at
/// 0.999999999 after exactly one period counts as full).
const EPS: f64 = 1e-6;

fn refill(spec: &Spec, st: Option<Levels>, now_ms: u64) -> Levels {
    let mut l = st.unwrap_or(Levels {
        requests: spec.request_burst as f64,
        tokens: spec.token_burst as f64,
        at_ms: now_ms,
    });
    // A clock that went backwards (only possible for a restored Redis) refills nothing.
    let elapsed = now_ms.saturating_sub(l.at_ms) as f64;
    l.requests = (l.requests + elapsed * spec.requests_per_minute as f64 / 60_000.0)
        .min(spec.request_burst as f64);
    l.tokens = (l.tokens + elapsed * spec.tokens_per_minute as f64 / 60_000.0)
        .min(spec.token_burst as f64);
    l.at_ms = now_ms.max(l.at_ms);
    l
}

/// Take one request and `cost` tokens at `now_ms`. Returns 0 when granted
/// (levels lowered), else the milliseconds until both buckets would hold
/// enough (levels only refilled). A cost above the token capacity is
/// clamped to it, or it could never be granted.
pub fn take(spec: &Spec, st: &mut Option<Levels>, now_ms: u64, cost: u64) -> u64 {
    let mut l = refill(spec, *st, now_ms);
    let cost = cost.min(spec.token_burst) as f64;
    let mut wait = 0f64;
    if spec.requests_per_minute > 0 && l.requests < 1.0 - EPS {
        wait = wait.max((1.0 - l.requests) * 60_000.0 / spec.requests_per_minute as f64);
    }
    if spec.tokens_per_minute > 0 && l.tokens < cost - EPS {
        wait = wait.max((cost - l.tokens) * 60_000.0 / spec.tokens_per_minute as f64);
    }
    if wait == 0.0 {
        if spec.requests_per_minute > 0 {
            l.requests = (l.requests - 1.0).max(0.0);
        }
        if spec.tokens_per_minute > 0 {
            l.tokens = (l.tokens - cost).max(0.0);
        }
    }
    *st = Some(l);
    if wait == 0.0 {
        0
    } else {
        ((wait - EPS).ceil() as u64).max(1)
    }
}

/// Give back tokens taken for a call that used fewer (capped at capacity).
pub fn refund(spec: &Spec, st: &mut Option<Levels>, now_ms: u64, tokens: u64) {
    if spec.tokens_per_minute == 0 || tokens == 0 {
        return;
    }
    let mut l = refill(spec, *st, now_ms);
    l.tokens = (l.tokens + tokens as f64).min(spec.token_burst as f64);
    *st = Some(l);
}

/// KEYS: bucket hash. ARGV: requests/min, request burst, tokens/min, token
/// burst, cost, refund. The Lua twin of [`take`] (refund > 0: [`refund`]).
/// The hash expires once both buckets would be full again anyway.
/// Returns 0 granted, else ms to wait.
pub const BUCKET_SCRIPT: &str = r#"
local rpm, rb, tpm, tb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, back = math.min(tonumber(ARGV[5]), tb), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'r', 'k', 'at')
local r, k, at = tonumber(h[1]) or rb, tonumber(h[2]) or tb, tonumber(h[3]) or now
local el = math.max(0, now - at)
r = math.min(rb, r + el * rpm / 60000)
k = math.min(tb, k + el * tpm / 60000)
local wait = 0
if back > 0 then
  if tpm > 0 then k = math.min(tb, k + back) end
else
  if rpm > 0 and r < 1 - 1e-6 then wait = math.max(wait, (1 - r) * 60000 / rpm) end
  if tpm > 0 and k < cost - 1e-6 then wait = math.max(wait, (cost - k) * 60000 / tpm) end
  if wait == 0 then
    if rpm > 0 then r = math.max(0, r - 1) end
    if tpm > 0 then k = math.max(0, k - cost) end
  end
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 'k', tostring(k), 'at', math.max(now, at))
local full = 0
if rpm > 0 then full = math.max(full, (rb - r) * 60000 / rpm) end
if tpm > 0 then full = math.max(full, (tb - k) * 60000 / tpm) end
redis.call('PEXPIRE', KEYS[1], math.ceil(full) + 1000)
if wait == 0 then return 0 end
return math.max(1, math.ceil(wait - 1e-6))
"#;

/// Where a bucket lives.
pub enum Limiter {
    Off,
    Worker {
        spec: Spec,
        levels: Mutex<Option<Levels>>,
        epoch: Instant,
    },
    Fleet {
        spec: Spec,
        key: String,
    },
}

impl Limiter {
    pub fn worker(spec: Spec) -> Self {
        if spec.unlimited() {
            return Limiter::Off;
        }
        Limiter::Worker {
            spec,
            levels: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    pub fn fleet(spec: Spec, key: String) -> Self {
        if spec.unlimited() {
            return Limiter::Off;
        }
        Limiter::Fleet { spec, key }
    }

    /// One try: 0 = granted, else ms to wait before trying again.
    pub async fn try_take(&self, store: &Store, cost: u64) -> Result<u64, StoreError> {
        match self {
            Limiter::Off => Ok(0),
            Limiter::Worker {
                spec,
                levels,
                epoch,
            } => {
                let now = epoch.elapsed().as_millis() as u64;
                let mut l = levels.lock().unwrap_or_else(|p| p.into_inner());
                Ok(take(spec, &mut l, now, cost))
            }
            Limiter::Fleet { spec, key } => store.bucket(key, spec, cost, 0).await,
        }
    }

    /// Return unused tokens (best effort: a failure only makes the bucket stricter).
    pub async fn give_back(&self, store: &Store, tokens: u64) {
        match self {
            Limiter::Off => {}
            Limiter::Worker {
                spec,
                levels,
                epoch,
            } => {
                let now = epoch.elapsed().as_millis() as u64;
                let mut l = levels.lock().unwrap_or_else(|p| p.into_inner());
                refund(spec, &mut l, now, tokens);
            }
            Limiter::Fleet { spec, key } => {
                if spec.tokens_per_minute > 0 && tokens > 0 {
                    if let Err(e) = store.bucket(key, spec, 0, tokens).await {
                        tracing::debug!(error = %e, "rate-limit refund failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rpm: u64, rb: u64, tpm: u64, tb: u64) -> Spec {
        Spec {
            requests_per_minute: rpm,
            request_burst: rb,
            tokens_per_minute: tpm,
            token_burst: tb,
        }
    }

    #[test]
    fn burst_then_refill_rate() {
        let s = spec(60, 5, 0, 0);
        let mut st = None;
        for _ in 0..5 {
            assert_eq!(take(&s, &mut st, 0, 0), 0);
        }
        assert_eq!(take(&s, &mut st, 0, 0), 1000);
        assert_eq!(take(&s, &mut st, 999, 0), 1);
        assert_eq!(take(&s, &mut st, 1000, 0), 0);
        assert!(take(&s, &mut st, 1000, 0) > 0);
    }

    #[test]
    fn grants_over_a_window_never_exceed_burst_plus_rate() {
        // Try every millisecond for a minute: exactly burst + rate granted.
        for (rpm, burst) in [(60, 5), (600, 1), (1, 1), (120, 40)] {
            let s = spec(rpm, burst, 0, 0);
            let mut st = None;
            let granted = (0..=60_000u64)
                .filter(|now| take(&s, &mut st, *now, 0) == 0)
                .count() as u64;
            assert_eq!(granted, burst + rpm, "rpm={rpm} burst={burst}");
        }
    }

    #[test]
    fn tokens_need_both_buckets_and_refunds_cap() {
        let s = spec(0, 0, 600, 1000);
        let mut st = None;
        assert_eq!(take(&s, &mut st, 0, 700), 0);
        // 300 left, 700 more needed at 10 tokens/s.
        assert_eq!(take(&s, &mut st, 0, 1000), 70_000);
        refund(&s, &mut st, 0, 5000);
        assert_eq!(st.unwrap().tokens, 1000.0);
        // A cost above capacity is clamped rather than never granted.
        assert_eq!(take(&s, &mut st, 0, 5000), 0);
        let s = spec(60, 1, 60, 100);
        let mut st = None;
        assert_eq!(take(&s, &mut st, 0, 100), 0);
        // Request bucket needs 1 s, token bucket 10 s: the longer wait wins.
        assert_eq!(take(&s, &mut st, 0, 10), 10_000);
    }

    #[test]
    fn clock_going_back_refills_nothing() {
        let s = spec(60, 1, 0, 0);
        let mut st = None;
        assert_eq!(take(&s, &mut st, 10_000, 0), 0);
        assert!(take(&s, &mut st, 0, 0) > 0);
        assert!(take(&s, &mut st, 10_500, 0) > 0);
        assert_eq!(take(&s, &mut st, 11_000, 0), 0);
    }
}
