//! The task queue on Redis Streams.
//!
//! Invariants (see `docs/protocol.md`):
//! - Every state change of an entry (complete, retry, dead-letter) is one Lua
//!   script: write the result/copy/dead letter, `XACK`, `XDEL`, atomically.
//!   The script first checks the entry is still pending for the expected
//!   owner, so two parties can never both move it.
//! - Pending entries are never trimmed; `XDEL` only removes finished ones.
//! - A retry with a backoff waits in the delayed sorted set (written by the
//!   retry script, same atomicity); the promote script moves due members back
//!   to the stream. Due times come from Redis `TIME`, one clock for all hosts.
//! - Blocking reads use their own connection with a response timeout longer
//!   than `BLOCK` (redis-rs defaults to 500 ms).
//! - With Redis Sentinel all connections point at one resolved master and
//!   move together when a failover names another (see `redis_target`).

use crate::config::RedisConfig;
use crate::redis_target::{suggests_failover, Target};
use crate::task::{DeadLetter, Task, DATA_FIELD};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamInfoGroupsReply,
    StreamReadReply,
};
use redis::{AsyncConnectionConfig, Value};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// `url` is the redacted URL, or the Sentinel master name and sentinels.
    #[error("Redis at {url} is unreachable: {source} (is redis-server running? check redis.url / PEAGEN_REDIS_URL, or redis.sentinels / redis.sentinel-master)")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// Longest blocking read: a worker promotes due delayed retries between
/// reads, so this bounds how late a due retry can start on an idle fleet.
pub const MAX_BLOCK_MS: u64 = 1000;

/// Most delayed retries one promotion moves (the next one takes the rest);
/// workers and the spawner both promote.
pub const PROMOTE_BATCH: usize = 100;

/// One stream entry as read from the tasks stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// The `data` field's bytes, if the entry has one.
    pub data: Option<Vec<u8>>,
    /// Names of all fields (for the dead-letter reason of a bad entry).
    pub fields: Vec<String>,
}

impl Entry {
    fn from_stream_id(s: StreamId) -> Self {
        let mut fields: Vec<String> = s.map.keys().cloned().collect();
        fields.sort();
        let data = s.map.get(DATA_FIELD).and_then(|v| match v {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            _ => None,
        });
        Entry {
            id: s.id,
            data,
            fields,
        }
    }
}

/// Outcome of the atomic move script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    Done,
    /// The entry was no longer pending: someone else finished it.
    NotPending,
    /// The entry is pending for a different consumer.
    NotOwner,
}

impl Moved {
    /// The finish scripts' reply: 1 moved, 0 not pending, -1 other owner.
    fn from_script(r: i64) -> Moved {
        match r {
            1 => Moved::Done,
            0 => Moved::NotPending,
            _ => Moved::NotOwner,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    pub stream: String,
    pub group: String,
    /// XLEN: entries not yet finished (backlog + in flight).
    pub length: u64,
    /// Entries never delivered to the group. `None` when Redis reports NULL
    /// lag and the fallback count also failed: unknown, never zero.
    pub lag: Option<u64>,
    /// True when `lag` came from Redis itself, false for the fallback count.
    pub lag_exact: bool,
    /// Delivered but not acknowledged (in flight).
    pub pending: u64,
    pub consumers: Vec<ConsumerInfo>,
    /// Age of the oldest unfinished entry in milliseconds.
    pub oldest_age_ms: Option<u64>,
    pub dead_letters: u64,
    pub results: u64,
    /// Retries waiting out their backoff in the delayed set: not in `length`
    /// or `lag` (not backlog) until due and promoted.
    pub delayed: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReclaimReport {
    pub requeued: u64,
    pub dead_lettered: u64,
    /// Pending ids whose entry was already deleted (acknowledged, nothing to redo).
    pub vanished: u64,
}

impl ReclaimReport {
    pub fn add(&mut self, o: &ReclaimReport) {
        self.requeued += o.requeued;
        self.dead_lettered += o.dead_lettered;
        self.vanished += o.vanished;
    }
}

/// KEYS: tasks, target, results, index.
/// ARGV: group, entry id, owner ('' = any), target data ('' = none),
///       task id, result json ('' = none).
/// Returns 1 moved, 0 not pending, -1 pending for another consumer.
const MOVE_SCRIPT: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
if ARGV[3] ~= '' and p[1][2] ~= ARGV[3] then return -1 end
if ARGV[6] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[5]) == 0 then
  local rid = redis.call('XADD', KEYS[3], '*', 'data', ARGV[6])
  redis.call('HSET', KEYS[4], ARGV[5], rid)
end
if ARGV[4] ~= '' then redis.call('XADD', KEYS[2], '*', 'data', ARGV[4]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: tasks, delayed. ARGV: group, entry id, owner ('' = any), task data,
/// delay ms. Like the move script, for a retry: with a delay the copy goes to
/// the delayed set, scored by its due time (Redis TIME + delay, in ms), as
/// `<entry id> <data>` (the unique id keeps equal task documents apart).
/// Returns 1 moved, 0 not pending, -1 pending for another consumer.
const RETRY_SCRIPT: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
if ARGV[3] ~= '' and p[1][2] ~= ARGV[3] then return -1 end
local delay = tonumber(ARGV[5])
if delay > 0 then
  local t = redis.call('TIME')
  local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
  redis.call('ZADD', KEYS[2], due, ARGV[2] .. ' ' .. ARGV[4])
else
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[4])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: delayed, tasks. ARGV: most members to move. Moves delayed retries
/// whose due time (Redis TIME) has come to the tasks stream, each XADD with
/// its ZREM in this one script, so concurrent promoters never double one.
/// Nothing moves while the tasks stream is missing: an XADD would create it
/// without the group. A member not in the retry script's format goes to the
/// stream whole (a worker dead-letters it with its raw text) rather than
/// blocking the set. Returns how many moved.
const PROMOTE_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local sp = string.find(m, ' ', 1, true)
  local data = m
  if sp then data = string.sub(m, sp + 1) end
  redis.call('XADD', KEYS[2], '*', 'data', data)
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#;

/// KEYS: tasks. ARGV: group, consumer. Deletes the consumer only if it has
/// nothing pending (otherwise its entries would become unclaimable).
const DELCONSUMER_SCRIPT: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"#;

/// KEYS: dead, tasks, results index. ARGV: dead entry id, task data, task
/// id. Moves one dead letter back to the tasks stream atomically and forgets
/// its final error result, so the retry's outcome becomes the final one.
const DLQ_RETRY_SCRIPT: &str = r#"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('HDEL', KEYS[3], ARGV[3])
return redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
"#;

pub struct Queue {
    cfg: RedisConfig,
    target: Arc<Target>,
    shared: Arc<Shared>,
    /// Sentinel only: follows the master after a failover.
    follower: Option<tokio::task::JoinHandle<()>>,
    move_script: redis::Script,
    retry_script: redis::Script,
    promote_script: redis::Script,
    delconsumer_script: redis::Script,
    dlq_retry_script: redis::Script,
}

/// The connections, swapped together when Sentinel names a new master.
struct Shared {
    conn: std::sync::Mutex<ConnectionManager>,
    /// The master the connections point at, and its address.
    current: std::sync::Mutex<(redis::Client, String)>,
    /// Dedicated connection for blocking reads; rebuilt after any error.
    blocking: Mutex<Option<MultiplexedConnection>>,
    /// Ask the follower to re-resolve the master now.
    kick: Notify,
}

/// Backstop for re-resolving the master when no error asked for it.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);

fn manager_config(cfg: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(cfg.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
    }
}

impl Queue {
    /// Connect (failing fast if Redis is not there). With Sentinel, the
    /// master is resolved now and followed after failovers.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self> {
        let target = Target::new(cfg).map_err(|source| QueueError::Connect {
            url: redact(&cfg.url),
            source,
        })?;
        let connect_err = |source| QueueError::Connect {
            url: target.describe().to_string(),
            source,
        };
        let resolved = target.client().await.map_err(connect_err)?;
        let conn = resolved
            .client
            .get_connection_manager_with_config(manager_config(cfg))
            .await
            .map_err(connect_err)?;
        let shared = Arc::new(Shared {
            conn: std::sync::Mutex::new(conn),
            current: std::sync::Mutex::new((resolved.client, resolved.addr)),
            blocking: Mutex::new(None),
            kick: Notify::new(),
        });
        let target = Arc::new(target);
        let follower = target
            .is_sentinel()
            .then(|| tokio::spawn(follow(cfg.clone(), target.clone(), shared.clone())));
        Ok(Queue {
            cfg: cfg.clone(),
            target,
            shared,
            follower,
            move_script: redis::Script::new(MOVE_SCRIPT),
            retry_script: redis::Script::new(RETRY_SCRIPT),
            promote_script: redis::Script::new(PROMOTE_SCRIPT),
            delconsumer_script: redis::Script::new(DELCONSUMER_SCRIPT),
            dlq_retry_script: redis::Script::new(DLQ_RETRY_SCRIPT),
        })
    }

    /// After an error that may mean a failover, have the follower ask the
    /// sentinels now instead of at its next tick.
    fn saw(&self, e: &redis::RedisError) {
        if self.follower.is_some() && suggests_failover(e) {
            self.shared.kick.notify_one();
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// The shared connection, for modules with their own scripts (the fleet record).
    pub fn connection(&self) -> ConnectionManager {
        self.c()
    }

    fn c(&self) -> ConnectionManager {
        self.shared
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `XGROUP CREATE tasks group 0 MKSTREAM`, BUSYGROUP ignored.
    pub async fn ensure_group(&self) -> Result<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.c())
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.c()).await?;
        Ok(())
    }

    /// Push a task; returns the stream entry id. Creates the group first so
    /// no entry is ever written before the group exists.
    pub async fn push(&self, task: &Task) -> Result<String> {
        self.push_raw(&task.to_json()).await
    }

    pub async fn push_raw(&self, data: &str) -> Result<String> {
        self.ensure_group().await?;
        let id: String = redis::cmd("XADD")
            .arg(&self.cfg.tasks_stream)
            .arg("*")
            .arg(DATA_FIELD)
            .arg(data)
            .query_async(&mut self.c())
            .await?;
        Ok(id)
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection> {
        let mut g = self.shared.blocking.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let acfg = AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_millis(self.cfg.block_ms + 5000)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let client = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        let c = client
            .get_multiplexed_async_connection_with_config(&acfg)
            .await
            .map_err(|source| {
                self.saw(&source);
                QueueError::Connect {
                    url: self.target.describe().to_string(),
                    source,
                }
            })?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// XREADGROUP for `consumer`. `from_pel` replays the consumer's own
    /// pending entries (id `0`) instead of blocking for new ones (`>`).
    pub async fn read(&self, consumer: &str, count: usize, from_pel: bool) -> Result<Vec<Entry>> {
        let mut conn = self.blocking_conn().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if !from_pel {
            cmd.arg("BLOCK").arg(self.cfg.block_ms.min(MAX_BLOCK_MS));
        }
        cmd.arg("STREAMS")
            .arg(&self.cfg.tasks_stream)
            .arg(if from_pel { "0" } else { ">" });
        let r: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(&mut conn).await;
        match r {
            Ok(reply) => Ok(reply
                .map(|r| {
                    r.keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .map(Entry::from_stream_id)
                        .collect()
                })
                .unwrap_or_default()),
            Err(e) => {
                // Drop the connection; the next call makes a new one.
                *self.shared.blocking.lock().await = None;
                self.saw(&e);
                if e.code() == Some("NOGROUP") {
                    self.ensure_group().await?;
                }
                Err(e.into())
            }
        }
    }

    /// How often this entry was delivered (PEL counter), for poison-task
    /// detection after worker crashes.
    pub async fn delivery_count(&self, id: &str) -> Result<Option<u64>> {
        let v: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut self.c())
            .await?;
        Ok(v.first().map(|e| e.3))
    }

    /// Keep an entry we are working on from looking orphaned (resets idle
    /// time, not the delivery counter).
    pub async fn heartbeat(&self, consumer: &str, id: &str) -> Result<()> {
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut self.c())
            .await?;
        Ok(())
    }

    async fn run_move(
        &self,
        target: &str,
        entry_id: &str,
        owner: &str,
        target_data: &str,
        task_id: &str,
        result: &str,
    ) -> Result<Moved> {
        let r: i64 = self
            .move_script
            .key(&self.cfg.tasks_stream)
            .key(target)
            .key(&self.cfg.results_stream)
            .key(self.cfg.results_index())
            .arg(&self.cfg.group)
            .arg(entry_id)
            .arg(owner)
            .arg(target_data)
            .arg(task_id)
            .arg(result)
            .invoke_async(&mut self.c())
            .await
            .inspect_err(|e| self.saw(e))?;
        Ok(Moved::from_script(r))
    }

    /// Acknowledge a finished entry, recording `result_json` in the results
    /// stream unless a result for `task_id` already exists (idempotent).
    pub async fn complete(
        &self,
        entry_id: &str,
        owner: &str,
        task_id: &str,
        result_json: Option<&str>,
    ) -> Result<Moved> {
        // No target data is written; the target key is only named (a key of
        // the same hash slot, for Redis Cluster).
        self.run_move(
            &self.cfg.dead_stream,
            entry_id,
            owner,
            "",
            task_id,
            result_json.unwrap_or(""),
        )
        .await
    }

    /// Re-enqueue `next` (attempts already incremented) and ack the original:
    /// at the end of the stream when `delay_ms` is 0, else into the delayed
    /// set, due `delay_ms` after now (Redis time).
    pub async fn retry(
        &self,
        entry_id: &str,
        owner: &str,
        next: &Task,
        delay_ms: u64,
    ) -> Result<Moved> {
        let r: i64 = self
            .retry_script
            .key(&self.cfg.tasks_stream)
            .key(self.cfg.delayed_key())
            .arg(&self.cfg.group)
            .arg(entry_id)
            .arg(owner)
            .arg(next.to_json())
            .arg(delay_ms)
            .invoke_async(&mut self.c())
            .await?;
        Ok(Moved::from_script(r))
    }

    /// Move up to `limit` due delayed retries to the tasks stream; returns
    /// how many moved. Safe to run from any number of workers and hosts.
    pub async fn promote_due(&self, limit: usize) -> Result<u64> {
        let n: u64 = self
            .promote_script
            .key(self.cfg.delayed_key())
            .key(&self.cfg.tasks_stream)
            .arg(limit)
            .invoke_async(&mut self.c())
            .await?;
        Ok(n)
    }

    /// Retries waiting out their backoff (not yet in the stream).
    pub async fn delayed_count(&self) -> Result<u64> {
        Ok(redis::cmd("ZCARD")
            .arg(self.cfg.delayed_key())
            .query_async(&mut self.c())
            .await?)
    }

    /// Move an entry to the dead-letter stream (and optionally record a final
    /// error result), atomically with its ack.
    pub async fn dead_letter(
        &self,
        entry_id: &str,
        owner: &str,
        dl: &DeadLetter,
        result_json: Option<&str>,
    ) -> Result<Moved> {
        let data = serde_json::to_string(dl).expect("dead letter serializes");
        let tid = dl.task_id.clone().unwrap_or_default();
        let result = if tid.is_empty() {
            ""
        } else {
            result_json.unwrap_or("")
        };
        self.run_move(&self.cfg.dead_stream, entry_id, owner, &data, &tid, result)
            .await
    }

    /// Add a record to the results stream without indexing it (used for
    /// error records about a failing result backend: not a final result).
    pub async fn publish_result_unindexed(&self, json: &str) -> Result<()> {
        let _: String = redis::cmd("XADD")
            .arg(&self.cfg.results_stream)
            .arg("*")
            .arg(DATA_FIELD)
            .arg(json)
            .query_async(&mut self.c())
            .await?;
        Ok(())
    }

    /// The final result record of a task, if one was written to the stream.
    pub async fn get_result(&self, task_id: &str) -> Result<Option<String>> {
        let rid: Option<String> = redis::cmd("HGET")
            .arg(self.cfg.results_index())
            .arg(task_id)
            .query_async(&mut self.c())
            .await?;
        let Some(rid) = rid else { return Ok(None) };
        let r = self.range(&self.cfg.results_stream, &rid, &rid, 1).await?;
        Ok(r.into_iter()
            .next()
            .and_then(|e| e.data)
            .map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    pub async fn range(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<Entry>> {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.c())
            .await?;
        Ok(r.ids.into_iter().map(Entry::from_stream_id).collect())
    }

    /// Pending entries of one consumer (ids only), oldest first.
    pub async fn pending_ids_of(&self, consumer: &str, count: usize) -> Result<Vec<String>> {
        let v: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .arg("-")
            .arg("+")
            .arg(count)
            .arg(consumer)
            .query_async(&mut self.c())
            .await?;
        Ok(v.into_iter().map(|e| e.0).collect())
    }

    /// Task id of the oldest entry `consumer` holds (its current task).
    pub async fn current_task_of(&self, consumer: &str) -> Result<Option<String>> {
        let Some(eid) = self.pending_ids_of(consumer, 1).await?.into_iter().next() else {
            return Ok(None);
        };
        Ok(self
            .range(&self.cfg.tasks_stream, &eid, &eid, 1)
            .await?
            .first()
            .and_then(|e| e.data.as_deref())
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok())
            .and_then(|v| v["id"].as_str().map(str::to_string)))
    }

    /// Re-queue (attempts+1) or dead-letter everything `consumer` held. Used
    /// when the consumer is known dead (its unit is gone). Only entries still
    /// pending for that consumer are moved, so a concurrent sweep cannot
    /// double them.
    pub async fn requeue_consumer(
        &self,
        consumer: &str,
        max_attempts: u32,
        reason: &str,
        host: &str,
    ) -> Result<ReclaimReport> {
        let mut rep = ReclaimReport::default();
        loop {
            let ids = self.pending_ids_of(consumer, 100).await?;
            if ids.is_empty() {
                break;
            }
            let before = rep.clone();
            for id in &ids {
                self.requeue_one(id, consumer, max_attempts, reason, host, &mut rep)
                    .await?;
            }
            if rep == before {
                break; // nothing moved: avoid spinning
            }
        }
        Ok(rep)
    }

    async fn requeue_one(
        &self,
        id: &str,
        owner: &str,
        max_attempts: u32,
        reason: &str,
        host: &str,
        rep: &mut ReclaimReport,
    ) -> Result<()> {
        let entry = self
            .range(&self.cfg.tasks_stream, id, id, 1)
            .await?
            .into_iter()
            .next();
        let Some(entry) = entry else {
            // Deleted after being pending: nothing left to redo; clear the PEL.
            let _: i64 = redis::cmd("XACK")
                .arg(&self.cfg.tasks_stream)
                .arg(&self.cfg.group)
                .arg(id)
                .query_async(&mut self.c())
                .await?;
            rep.vanished += 1;
            return Ok(());
        };
        let raw = entry
            .data
            .as_deref()
            .map(|d| String::from_utf8_lossy(d).into_owned());
        let parsed = entry.data.as_deref().map(|d| Task::parse(d, usize::MAX));
        let dead = |task: Option<&Task>, why: &str, error: String| DeadLetter {
            original_id: id.to_string(),
            task_id: task.map(|t| t.id.clone()),
            kind: task.map(|t| t.kind.clone()),
            reason: why.to_string(),
            error,
            attempts: task.map(|t| t.attempts.saturating_add(1)).unwrap_or(0),
            worker_id: owner.to_string(),
            host: host.to_string(),
            dead_at: crate::task::now_rfc3339(),
            raw: raw.clone(),
        };
        // Either a retry copy, or the dead letter to write instead.
        let dead_letter = match parsed {
            Some(Ok(task)) => {
                let max = task.max_attempts.unwrap_or(max_attempts);
                if crate::retry::decide_reclaim(task.attempts, max) == crate::retry::Decision::Retry
                {
                    // At once: the interruption was the worker's fault, not
                    // a sign of a struggling dependency.
                    let moved = self.retry(id, owner, &task.next_attempt(), 0).await?;
                    rep.requeued += u64::from(moved == Moved::Done);
                    tracing::debug!(entry_id = id, consumer = owner, ?moved, "reclaim");
                    return Ok(());
                }
                dead(
                    Some(&task),
                    "attempts_exhausted",
                    format!("{reason}; no attempts left ({max} allowed)"),
                )
            }
            Some(Err(e)) => dead(None, e.code(), e.to_string()),
            None => dead(
                None,
                "no_data",
                format!(
                    "entry has no `data` field (fields: {})",
                    entry.fields.join(",")
                ),
            ),
        };
        let moved = self.dead_letter(id, owner, &dead_letter, None).await?;
        rep.dead_lettered += u64::from(moved == Moved::Done);
        tracing::debug!(entry_id = id, consumer = owner, ?moved, "reclaim");
        Ok(())
    }

    /// Sweep: claim entries idle longer than `min_idle_ms` (their owner
    /// stopped heart-beating: it is dead or wedged, on any host) to
    /// `claimer`, then re-queue them. Handles Redis 7's three-element reply.
    pub async fn autoclaim_orphans(
        &self,
        claimer: &str,
        min_idle_ms: u64,
        max_attempts: u32,
        host: &str,
    ) -> Result<ReclaimReport> {
        let mut rep = ReclaimReport::default();
        let mut cursor = "0-0".to_string();
        loop {
            let r: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg.tasks_stream)
                .arg(&self.cfg.group)
                .arg(claimer)
                .arg(min_idle_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(100)
                .arg("JUSTID")
                .query_async(&mut self.c())
                .await?;
            for s in &r.claimed {
                self.requeue_one(
                    &s.id,
                    claimer,
                    max_attempts,
                    "orphaned (owner stopped heart-beating)",
                    host,
                    &mut rep,
                )
                .await?;
            }
            rep.vanished += r.deleted_ids.len() as u64;
            if r.next_stream_id == "0-0" {
                break;
            }
            cursor = r.next_stream_id;
        }
        Ok(rep)
    }

    /// Delete `consumer` if it has no pending entries. Returns true if deleted.
    pub async fn delete_consumer_if_empty(&self, consumer: &str) -> Result<bool> {
        let r: i64 = self
            .delconsumer_script
            .key(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .arg(consumer)
            .invoke_async(&mut self.c())
            .await?;
        Ok(r >= 0)
    }

    pub async fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        let r: redis::RedisResult<StreamInfoConsumersReply> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .query_async(&mut self.c())
            .await;
        match r {
            Ok(r) => Ok(r
                .consumers
                .into_iter()
                .map(|c| ConsumerInfo {
                    name: c.name,
                    pending: c.pending as u64,
                    idle_ms: c.idle as u64,
                })
                .collect()),
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                Ok(vec![])
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn xlen(&self, key: &str) -> Result<u64> {
        Ok(redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut self.c())
            .await?)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let cfg = &self.cfg;
        let length = self.xlen(&cfg.tasks_stream).await?;
        let mut st = QueueStats {
            stream: cfg.tasks_stream.clone(),
            group: cfg.group.clone(),
            length,
            dead_letters: self.xlen(&cfg.dead_stream).await?,
            results: self.xlen(&cfg.results_stream).await?,
            delayed: self.delayed_count().await?,
            ..Default::default()
        };
        let groups: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&cfg.tasks_stream)
            .query_async(&mut self.c())
            .await;
        let group = match groups {
            Ok(g) => g.groups.into_iter().find(|g| g.name == cfg.group),
            Err(e) if e.to_string().contains("no such key") => None,
            Err(e) => return Err(e.into()),
        };
        match group {
            None => {
                // No group yet: nothing was ever delivered.
                st.lag = Some(length);
                st.lag_exact = true;
            }
            Some(g) => {
                st.pending = g.pending as u64;
                match g.lag {
                    Some(l) => {
                        st.lag = Some(l as u64);
                        st.lag_exact = true;
                    }
                    None => {
                        // NULL lag (after XDEL): count entries after the last
                        // delivered id, bounded so a huge stream stays cheap.
                        const BOUND: usize = 100_000;
                        let after = format!("({}", g.last_delivered_id);
                        let n = self
                            .range(&cfg.tasks_stream, &after, "+", BOUND)
                            .await?
                            .len() as u64;
                        st.lag = Some(n);
                        st.lag_exact = false;
                    }
                }
                st.consumers = self.consumers().await?;
            }
        }
        if let Some(first) = self
            .range(&cfg.tasks_stream, "-", "+", 1)
            .await?
            .into_iter()
            .next()
        {
            let ms: u64 = first
                .id
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            st.oldest_age_ms = Some(now.saturating_sub(ms));
        }
        Ok(st)
    }

    /// Unfinished tasks (backlog + in flight) by kind, scanning at most
    /// `limit` entries. Unparsable entries count as kind `invalid`.
    pub async fn pending_by_kind(&self, limit: usize) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for e in self.range(&self.cfg.tasks_stream, "-", "+", limit).await? {
            let kind = e
                .data
                .as_deref()
                .and_then(|d| serde_json::from_slice::<serde_json::Value>(d).ok())
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                .unwrap_or_else(|| "invalid".into());
            *out.entry(kind).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// `MEMORY USAGE` of a key in bytes (0 if absent).
    pub async fn memory_usage(&self, key: &str) -> Result<u64> {
        let v: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut self.c())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Dead letters, oldest first: (dead entry id, record).
    pub async fn dlq_list(&self, count: usize) -> Result<Vec<(String, serde_json::Value)>> {
        let mut out = Vec::new();
        let mut start = "-".to_string();
        while out.len() < count {
            let page = self
                .range(
                    &self.cfg.dead_stream,
                    &start,
                    "+",
                    (count - out.len()).min(1000),
                )
                .await?;
            if page.is_empty() {
                break;
            }
            start = format!("({}", page.last().map(|e| e.id.clone()).unwrap_or_default());
            for e in page {
                let v = e
                    .data
                    .as_deref()
                    .and_then(|d| serde_json::from_slice(d).ok())
                    .unwrap_or_else(|| serde_json::json!({ "unparsable": true }));
                out.push((e.id, v));
            }
        }
        Ok(out)
    }

    /// Move one dead letter back to the tasks stream as a fresh attempt
    /// series (`attempts` reset to 0). Errors if its original data is not a
    /// valid task (it would only be dead-lettered again).
    pub async fn dlq_retry(&self, dead_id: &str) -> Result<std::result::Result<String, String>> {
        let e = self
            .range(&self.cfg.dead_stream, dead_id, dead_id, 1)
            .await?;
        let Some(e) = e.into_iter().next() else {
            return Ok(Err(format!("no dead letter with id {dead_id}")));
        };
        let dl: DeadLetter = match e.data.as_deref().map(serde_json::from_slice) {
            Some(Ok(d)) => d,
            _ => {
                return Ok(Err(format!(
                    "dead letter {dead_id} is not a record this version understands"
                )))
            }
        };
        let Some(raw) = dl.raw else {
            return Ok(Err(format!(
                "dead letter {dead_id} has no original data to retry"
            )));
        };
        let mut task = match Task::parse(raw.as_bytes(), usize::MAX) {
            Ok(t) => t,
            Err(err) => {
                return Ok(Err(format!(
                    "dead letter {dead_id} cannot be retried: {err}"
                )))
            }
        };
        task.attempts = 0;
        self.ensure_group().await?;
        let r: Option<String> = self
            .dlq_retry_script
            .key(&self.cfg.dead_stream)
            .key(&self.cfg.tasks_stream)
            .key(self.cfg.results_index())
            .arg(dead_id)
            .arg(task.to_json())
            .arg(&task.id)
            .invoke_async(&mut self.c())
            .await?;
        Ok(r.ok_or_else(|| format!("dead letter {dead_id} vanished meanwhile")))
    }

    /// Add counter deltas to the fields of a hash in one MULTI/EXEC pipeline
    /// (all applied or none): `HINCRBY` for integers, `HINCRBYFLOAT` for
    /// floats. An increment of 0 creates the field.
    pub async fn hash_incr(
        &self,
        key: &str,
        ints: &[(String, i64)],
        floats: &[(String, f64)],
    ) -> Result<()> {
        let mut p = redis::pipe();
        p.atomic();
        for (f, v) in ints {
            p.cmd("HINCRBY").arg(key).arg(f).arg(*v).ignore();
        }
        for (f, v) in floats {
            p.cmd("HINCRBYFLOAT").arg(key).arg(f).arg(*v).ignore();
        }
        p.query_async::<()>(&mut self.c()).await?;
        Ok(())
    }

    /// HGETALL of a hash (empty when the key does not exist).
    pub async fn hash_all(&self, key: &str) -> Result<BTreeMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.c())
            .await?)
    }

    /// Live consumer names of the group (for sweeps).
    pub async fn consumer_names(&self) -> Result<HashSet<String>> {
        Ok(self
            .consumers()
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect())
    }
}

/// Sentinel only: re-resolve the master on every kick and every
/// [`FOLLOW_EVERY`]; when it moved, point all connections at the new one.
/// A failed resolve (sentinels or the new master not ready yet) is retried at
/// the next tick; commands meanwhile fail and their callers retry as usual.
async fn follow(cfg: RedisConfig, target: Arc<Target>, shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = shared.kick.notified() => {}
        }
        let resolved = match target.client().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, target = target.describe(), "redis sentinel: no usable master yet (failover in progress?)");
                // Don't spin on a burst of kicks while the sentinels vote.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let same = shared.current.lock().unwrap_or_else(|p| p.into_inner()).1 == resolved.addr;
        if same {
            continue;
        }
        match resolved
            .client
            .get_connection_manager_with_config(manager_config(&cfg))
            .await
        {
            Ok(conn) => {
                *shared.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
                *shared.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    (resolved.client, resolved.addr.clone());
                *shared.blocking.lock().await = None;
                tracing::info!(addr = %resolved.addr, "redis sentinel: connections now use the new master");
            }
            Err(e) => {
                tracing::warn!(error = %e, addr = %resolved.addr, "redis sentinel: cannot connect to the new master");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Hide a password in a URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
    }
}
