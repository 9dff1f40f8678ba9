//! Workflow token budgets: reserve before the call, settle after.
//!
//! One Redis hash per workflow (`<tasks-stream>.budget.<workflow>`):
//! `limit`, `used`, `reserved`, `run_timeout_ms`, `started_ms` and one field
//! `r:<task id>` per open reservation. A reservation is taken only if
//! `used + reserved + amount <= limit`, and settling adds at most the
//! reserved amount to `used`, so `used` never exceeds `limit` whatever the
//! concurrency. Reservations are keyed by task id: a task re-delivered after
//! a worker crash finds and reuses its reservation instead of leaking it.
//!
//! Also `peagenctl budget set|show`.

use super::store::{Store, StoreError};
use crate::config::Config;
use crate::exit;
use serde::Serialize;

/// KEYS: budget hash. ARGV: task id, tokens. Redis TIME is the clock.
/// Returns `none` (no budget for this workflow), `ok`, `budget_exhausted`
/// or `run_timeout`. The run clock starts at the first reservation.
pub const RESERVE_SCRIPT: &str = r#"
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
if not limit then return 'none' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local started = tonumber(redis.call('HGET', KEYS[1], 'started_ms'))
if not started then
  started = now
  redis.call('HSET', KEYS[1], 'started_ms', now)
end
local rt = tonumber(redis.call('HGET', KEYS[1], 'run_timeout_ms')) or 0
if rt > 0 and now > started + rt then return 'run_timeout' end
local f = 'r:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[1], f) == 1 then return 'ok' end
local n = tonumber(ARGV[2])
local used = tonumber(redis.call('HGET', KEYS[1], 'used')) or 0
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved')) or 0
if used + reserved + n > limit then return 'budget_exhausted' end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
redis.call('HSET', KEYS[1], f, ARGV[2])
return 'ok'
"#;

/// KEYS: budget hash. ARGV: task id, tokens used. Releases the task's
/// reservation and adds `min(used, reserved)` to `used`. Returns what was
/// added, or -1 when the task had no reservation (already settled).
pub const SETTLE_SCRIPT: &str = r#"
local f = 'r:' .. ARGV[1]
local n = tonumber(redis.call('HGET', KEYS[1], f))
if not n then return -1 end
local u = math.min(tonumber(ARGV[2]), n)
redis.call('HDEL', KEYS[1], f)
redis.call('HINCRBY', KEYS[1], 'reserved', -n)
redis.call('HINCRBY', KEYS[1], 'used', u)
return u
"#;

/// What a reservation attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The workflow has no budget: call without one.
    NoBudget,
    Reserved,
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BudgetExhausted,
    RunTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BudgetExhausted => "budget_exhausted",
            Refusal::RunTimeout => "run_timeout",
        }
    }
}

/// A workflow id is part of a Redis key: keep it printable and bounded.
pub fn check_workflow_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err("workflow_id must be 1 to 200 characters".into());
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("workflow_id must not contain whitespace or control characters".into());
    }
    Ok(())
}

pub(super) async fn reserve(
    s: &Store,
    workflow: &str,
    task_id: &str,
    tokens: u64,
) -> Result<Reservation, StoreError> {
    let mut c = s.conn().await?;
    let r: String = s
        .reserve
        .key(s.budget_key(workflow))
        .arg(task_id)
        .arg(tokens)
        .invoke_async(&mut c)
        .await
        .map_err(|e| s.saw(e))?;
    Ok(match r.as_str() {
        "ok" => Reservation::Reserved,
        "budget_exhausted" => Reservation::Refused(Refusal::BudgetExhausted),
        "run_timeout" => Reservation::Refused(Refusal::RunTimeout),
        _ => Reservation::NoBudget,
    })
}

pub(super) async fn settle(
    s: &Store,
    workflow: &str,
    task_id: &str,
    used: u64,
) -> Result<u64, StoreError> {
    let mut c = s.conn().await?;
    let n: i64 = s
        .settle
        .key(s.budget_key(workflow))
        .arg(task_id)
        .arg(used)
        .invoke_async(&mut c)
        .await
        .map_err(|e| s.saw(e))?;
    Ok(n.max(0) as u64)
}

/// A workflow budget as `peagenctl budget show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    pub workflow: String,
    pub limit: u64,
    pub used: u64,
    pub reserved: u64,
    /// Open reservations (tasks calling their backend now).
    pub reservations: u64,
    pub run_timeout_secs: Option<u64>,
    /// RFC 3339; set by the first reservation.
    pub started_at: Option<String>,
    /// `started_at + run_timeout`.
    pub deadline: Option<String>,
}

fn rfc3339_ms(ms: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

pub(super) async fn get(s: &Store, workflow: &str) -> Result<Option<Budget>, StoreError> {
    let key = s.budget_key(workflow);
    let mut c = s.conn().await?;
    let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .map_err(|e| s.saw(e))?;
    if !h.contains_key("limit") {
        return Ok(None);
    }
    let num = |field: &'static str| -> Result<u64, StoreError> {
        match h.get(field) {
            None => Ok(0),
            Some(v) => v
                .parse::<i64>()
                .map(|n| n.max(0) as u64)
                .map_err(|_| StoreError::Corrupt {
                    workflow: workflow.to_string(),
                    field,
                    key: key.clone(),
                }),
        }
    };
    let started = h.get("started_ms").and_then(|v| v.parse::<u64>().ok());
    let rt = num("run_timeout_ms")?;
    Ok(Some(Budget {
        workflow: workflow.to_string(),
        limit: num("limit")?,
        used: num("used")?,
        reserved: num("reserved")?,
        reservations: h.keys().filter(|k| k.starts_with("r:")).count() as u64,
        run_timeout_secs: (rt > 0).then_some(rt / 1000),
        started_at: started.and_then(rfc3339_ms),
        deadline: started
            .filter(|_| rt > 0)
            .and_then(|s| rfc3339_ms(s.saturating_add(rt))),
    }))
}

/// Set (or change) a workflow's limit and run timeout; what was used and
/// reserved so far stays.
pub async fn set(
    s: &Store,
    workflow: &str,
    tokens: u64,
    run_timeout_secs: Option<u64>,
) -> Result<(), StoreError> {
    let mut c = s.conn().await?;
    let key = s.budget_key(workflow);
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&key)
        .arg("limit")
        .arg(tokens)
        .arg("run_timeout_ms")
        .arg(run_timeout_secs.unwrap_or(0).saturating_mul(1000))
        .ignore()
        .cmd("HSETNX")
        .arg(&key)
        .arg("used")
        .arg(0)
        .ignore()
        .cmd("HSETNX")
        .arg(&key)
        .arg("reserved")
        .arg(0)
        .ignore()
        .query_async(&mut c)
        .await
        .map_err(|e| s.saw(e))?;
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum BudgetCmd {
    /// Set a workflow's token budget (used tokens are kept).
    Set {
        workflow: String,
        /// Most tokens (prompt + completion) the workflow's LLM tasks may use.
        #[arg(long)]
        tokens: u64,
        /// Tasks starting later than this after the workflow's first LLM
        /// task are skipped with reason run_timeout.
        #[arg(long)]
        run_timeout_secs: Option<u64>,
    },
    /// Show a workflow's budget: limit, used, reserved, started_at, deadline.
    Show { workflow: String },
}

/// `peagenctl budget ...`; errors carry the exit code.
pub async fn cli(cfg: &Config, cmd: BudgetCmd, json: bool) -> Result<(), (i32, String)> {
    let store = Store::new(&cfg.redis);
    let unavailable = |e: StoreError| match e {
        StoreError::Corrupt { .. } => (exit::FAILURE, e.to_string()),
        _ => (exit::UNAVAILABLE, e.to_string()),
    };
    match cmd {
        BudgetCmd::Set {
            workflow,
            tokens,
            run_timeout_secs,
        } => {
            check_workflow_id(&workflow).map_err(|m| (exit::DATAERR, m))?;
            set(&store, &workflow, tokens, run_timeout_secs)
                .await
                .map_err(unavailable)?;
            let b = get(&store, &workflow).await.map_err(unavailable)?;
            print_budget(b.as_ref(), json);
            Ok(())
        }
        BudgetCmd::Show { workflow } => {
            check_workflow_id(&workflow).map_err(|m| (exit::DATAERR, m))?;
            match get(&store, &workflow).await.map_err(unavailable)? {
                Some(b) => {
                    print_budget(Some(&b), json);
                    Ok(())
                }
                None => Err((
                    exit::FAILURE,
                    format!(
                        "workflow {workflow:?} has no budget (set one with peagenctl budget set)"
                    ),
                )),
            }
        }
    }
}

fn print_budget(b: Option<&Budget>, json: bool) {
    let Some(b) = b else { return };
    if json {
        println!("{}", serde_json::to_string(b).expect("budget serializes"));
        return;
    }
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    println!("workflow     {}", b.workflow);
    println!("limit        {}", b.limit);
    println!("used         {}", b.used);
    println!("reserved     {} ({} open)", b.reserved, b.reservations);
    println!(
        "remaining    {}",
        b.limit.saturating_sub(b.used + b.reserved)
    );
    println!(
        "run timeout  {}",
        b.run_timeout_secs
            .map(|s| format!("{s} s"))
            .unwrap_or_else(|| "-".into())
    );
    println!("started_at   {}", opt(&b.started_at));
    println!("deadline     {}", opt(&b.deadline));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_ids() {
        assert!(check_workflow_id("evolve-42").is_ok());
        assert!(check_workflow_id("").is_err());
        assert!(check_workflow_id("a b").is_err());
        assert!(check_workflow_id("a\nb").is_err());
        assert!(check_workflow_id(&"x".repeat(201)).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_ms(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1500).unwrap(), "1970-01-01T00:00:01.5Z");
    }
}
