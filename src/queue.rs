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

use crate::config::{Config, RedisConfig};
use crate::redact::redact;
use crate::redis_target::{suggests_failover, Target};
use crate::results::ResultSink;
use crate::retry::Reclaim;
use crate::task::{Actor, DeadLetter, Known, ResultRecord, Task, TaskError, DATA_FIELD};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamInfoConsumersReply, StreamInfoGroupsReply};
use redis::{AsyncConnectionConfig, Value};
use serde::Serialize;
use std::collections::BTreeMap;
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
pub(crate) const MAX_BLOCK_MS: u64 = 1000;

/// Room for field names and a few small extra fields on top of
/// `worker.max-payload-bytes` before an entry counts as oversized.
const ENTRY_OVERHEAD: usize = 4096;

/// Most tasks one `push_many` round trip carries.
pub(crate) const PUSH_BATCH: usize = 1000;

/// Most delayed retries one promotion moves (the next one takes the rest);
/// workers and the spawner both promote.
pub const PROMOTE_BATCH: usize = 100;

/// One stream entry as read by this crate. Reads never copy an entry over
/// the size limit to the client: such an entry arrives as its size only.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub id: String,
    /// The `data` field's bytes, if the entry has one and was carried.
    pub data: Option<Vec<u8>>,
    /// The entry's size in bytes (names + values) when over the read limit;
    /// its contents were left in Redis.
    pub(crate) oversize: Option<u64>,
    /// Names of the fields (lossily decoded, at most 64), for messages.
    pub(crate) fields: Vec<String>,
    /// How many fields the entry has; 0 for a pending id whose entry was
    /// deleted (Redis has no empty entries).
    pub(crate) field_count: u64,
    /// Some field name is not UTF-8.
    pub(crate) bad_names: bool,
}

impl Entry {
    /// The task this entry carries, or why it carries none: (dead-letter
    /// reason, message). The one classification of bad entries.
    pub(crate) fn task(&self, limit: usize) -> std::result::Result<Task, (&'static str, String)> {
        if let Some(size) = self.oversize {
            return Err((
                TaskError::TooLarge { size: 0, limit }.code(),
                format!(
                    "the entry is {size} bytes, over the limit of {limit} (worker.max-payload-bytes); not read: its fields are kept in the dead letter as orig.<name>"
                ),
            ));
        }
        if self.bad_names {
            return Err((
                "field_not_utf8",
                format!(
                    "a field name is not UTF-8 (fields: {}); the fields are kept in the dead letter as orig.<name>",
                    self.fields.join(",")
                ),
            ));
        }
        let Some(data) = self.data.as_deref() else {
            let e = TaskError::NoData(self.fields.join(","));
            return Err((e.code(), e.to_string()));
        };
        Task::parse(data, limit).map_err(|e| (e.code(), e.to_string()))
    }

    /// What can be salvaged from a bad entry (a valid task id, its kind).
    pub(crate) fn known(&self) -> Known {
        self.data.as_deref().map(Known::salvage).unwrap_or_default()
    }

    /// The client did not carry this entry's contents: a dead letter keeps
    /// them server-side instead (`orig.<name>` fields).
    pub(crate) fn not_carried(&self) -> bool {
        self.oversize.is_some() || self.bad_names
    }

    /// The dead-letter record of this entry.
    pub(crate) fn dead_letter(
        &self,
        known: &Known,
        reason: &str,
        error: String,
        attempts: u32,
        by: &Actor,
    ) -> DeadLetter {
        DeadLetter::new(
            &self.id,
            self.data.as_deref(),
            known,
            reason,
            error,
            attempts,
            by,
        )
    }

    /// From the read script's `{id, field count, names, data|size|false}`.
    fn from_script(v: Value) -> Result<Entry> {
        let bad = || QueueError::Protocol("read script: unexpected entry shape".into());
        let Value::Array(parts) = v else {
            return Err(bad());
        };
        let mut it = parts.into_iter();
        let (Some(id), Some(Value::Int(n)), Some(Value::Array(names)), data) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        let mut e = Entry {
            id: text(id).ok_or_else(bad)?,
            field_count: n.max(0) as u64,
            ..Default::default()
        };
        for name in names {
            e.add_name(bytes(name).ok_or_else(bad)?);
        }
        match data {
            Some(Value::Int(size)) => e.oversize = Some(size.max(0) as u64),
            Some(Value::Nil) | None => {}
            Some(v) => e.data = Some(bytes(v).ok_or_else(bad)?),
        }
        Ok(e)
    }

    /// From a plain `[id, [name, value, ...]]` (the blocking read), taking
    /// the values without copying and dropping them at once when the entry
    /// is over `limit`.
    fn from_plain(v: Value, limit: usize) -> Result<Entry> {
        let bad = || QueueError::Protocol("XREADGROUP: unexpected entry shape".into());
        let Value::Array(parts) = v else {
            return Err(bad());
        };
        let mut it = parts.into_iter();
        let mut e = Entry {
            id: it.next().and_then(text).ok_or_else(bad)?,
            ..Default::default()
        };
        let fields = match it.next() {
            Some(Value::Array(f)) => f,
            Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(), // deleted while pending
        };
        let mut size = 0usize;
        let mut f = fields.into_iter();
        while let (Some(name), Some(value)) = (f.next(), f.next()) {
            let name = bytes(name).ok_or_else(bad)?;
            let value = bytes(value).ok_or_else(bad)?;
            size = size.saturating_add(name.len() + value.len());
            e.field_count += 1;
            let is_data = name == DATA_FIELD.as_bytes() && e.data.is_none();
            e.add_name(name);
            if is_data {
                e.data = Some(value);
            }
        }
        if size > limit {
            e.data = None;
            e.oversize = Some(size as u64);
        }
        Ok(e)
    }

    fn add_name(&mut self, name: Vec<u8>) {
        if self.fields.len() >= 64 {
            return;
        }
        match String::from_utf8(name) {
            Ok(s) => self.fields.push(s),
            Err(e) => {
                self.bad_names = true;
                self.fields
                    .push(String::from_utf8_lossy(e.as_bytes()).into_owned());
            }
        }
    }
}

/// A bulk or simple string reply as bytes (moved, not copied).
fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
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

// The Lua scripts; each file starts with its KEYS/ARGV contract.
const MOVE_SCRIPT: &str = include_str!("queue/move.lua");
const RETRY_SCRIPT: &str = include_str!("queue/retry.lua");
const PROMOTE_SCRIPT: &str = include_str!("queue/promote.lua");
const DELCONSUMER_SCRIPT: &str = include_str!("queue/delconsumer.lua");
const DLQ_RETRY_SCRIPT: &str = include_str!("queue/dlq_retry.lua");
const READ_SCRIPT: &str = include_str!("queue/read.lua");

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
    read_script: redis::Script,
    /// Largest entry a read copies to this process (see [`Entry`]).
    entry_limit: usize,
    /// Where reclaim writes the error result of a task it dead-letters.
    results: ResultSink,
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
            read_script: redis::Script::new(READ_SCRIPT),
            entry_limit: crate::config::WorkerConfig::default().max_payload_bytes,
            results: ResultSink::Stream,
        })
    }

    /// Connect with the limits and result backend of the whole config: reads
    /// copy no entry over `worker.max-payload-bytes`, and tasks that reclaim
    /// dead-letters get their error result in `results.backend`.
    pub async fn connect_for(cfg: &Config) -> Result<Self> {
        let mut q = Self::connect(&cfg.redis).await?;
        q.entry_limit = cfg.worker.max_payload_bytes;
        q.results = ResultSink::from_config(&cfg.results);
        Ok(q)
    }

    /// An entry's byte budget in reads: the payload limit plus room for names.
    fn read_limit(&self) -> usize {
        self.entry_limit.saturating_add(ENTRY_OVERHEAD)
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

    pub(crate) async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.c()).await?;
        Ok(())
    }

    /// Push tasks in one round trip per [`PUSH_BATCH`]; returns their entry
    /// ids in order. Memory stays bounded by the caller's batch.
    /// Push one task document as it is (tests, tools); see [`Queue::push_many`].
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

    /// Push one task; returns its entry id.
    pub async fn push(&self, task: &Task) -> Result<String> {
        let mut ids = self.push_many(std::slice::from_ref(task)).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Push tasks in pipelined batches of [`PUSH_BATCH`]; returns their entry ids in order.
    pub async fn push_many(&self, tasks: &[Task]) -> Result<Vec<String>> {
        self.ensure_group().await?;
        let mut ids = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(PUSH_BATCH) {
            let mut p = redis::pipe();
            for t in chunk {
                p.cmd("XADD")
                    .arg(&self.cfg.tasks_stream)
                    .arg("*")
                    .arg(DATA_FIELD)
                    .arg(t.to_json());
            }
            let got: Vec<String> = p.query_async(&mut self.c()).await?;
            ids.extend(got);
        }
        Ok(ids)
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
    /// pending entries (id `0`) instead of waiting for new ones (`>`).
    ///
    /// No entry over the size limit is copied here when Redis can check it
    /// first: the read script (no blocking) returns such an entry as its size.
    /// Only when nothing is waiting does a blocking `XREADGROUP COUNT 1` wait
    /// for the next entry (a script cannot block); an oversized entry arriving
    /// that way is dropped as soon as it is parsed, and the connection that
    /// carried it is closed so its grown buffer is freed.
    pub async fn read(&self, consumer: &str, count: usize, from_pel: bool) -> Result<Vec<Entry>> {
        let now = self
            .read_script_group(consumer, count, if from_pel { "0" } else { ">" })
            .await;
        match now {
            Ok(v) if !v.is_empty() || from_pel => return Ok(v),
            Ok(_) => {}
            Err(e) => {
                if let QueueError::Redis(r) = &e {
                    self.saw(r);
                    if r.code() == Some("NOGROUP") {
                        self.ensure_group().await?;
                    }
                }
                return Err(e);
            }
        }
        self.read_blocking(consumer).await
    }

    async fn read_script_group(
        &self,
        consumer: &str,
        count: usize,
        start: &str,
    ) -> Result<Vec<Entry>> {
        let v: Value = self
            .read_script
            .key(&self.cfg.tasks_stream)
            .arg(self.read_limit())
            .arg(count)
            .arg("group")
            .arg(&self.cfg.group)
            .arg(consumer)
            .arg(start)
            .invoke_async(&mut self.c())
            .await?;
        script_entries(v)
    }

    async fn read_blocking(&self, consumer: &str) -> Result<Vec<Entry>> {
        let mut conn = self.blocking_conn().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(self.cfg.block_ms.min(MAX_BLOCK_MS))
            .arg("STREAMS")
            .arg(&self.cfg.tasks_stream)
            .arg(">");
        let r: redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
        let reply = match r {
            Ok(v) => v,
            Err(e) => {
                // Drop the connection; the next call makes a new one.
                *self.shared.blocking.lock().await = None;
                self.saw(&e);
                if e.code() == Some("NOGROUP") {
                    self.ensure_group().await?;
                }
                return Err(e.into());
            }
        };
        let entries = plain_read_entries(reply, self.read_limit())?;
        if entries.iter().any(|e| e.oversize.is_some()) {
            // Its read buffer grew to the entry's size and would stay so.
            *self.shared.blocking.lock().await = None;
        }
        Ok(entries)
    }

    /// Acknowledge a pending id whose entry no longer exists (nothing to do).
    pub(crate) async fn forget(&self, id: &str) -> Result<()> {
        let _: i64 = redis::cmd("XACK")
            .arg(&self.cfg.tasks_stream)
            .arg(&self.cfg.group)
            .arg(id)
            .query_async(&mut self.c())
            .await?;
        Ok(())
    }

    /// How often this entry was delivered (PEL counter), for poison-task
    /// detection after worker crashes.
    pub(crate) async fn delivery_count(&self, id: &str) -> Result<Option<u64>> {
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
    pub(crate) async fn heartbeat(&self, consumer: &str, id: &str) -> Result<()> {
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
        entry_id: &str,
        owner: &str,
        target_data: &str,
        task_id: &str,
        result: &str,
        keep_fields: bool,
    ) -> Result<Moved> {
        let r: i64 = self
            .move_script
            .key(&self.cfg.tasks_stream)
            .key(&self.cfg.dead_stream)
            .key(&self.cfg.results_stream)
            .key(self.cfg.results_index())
            .arg(&self.cfg.group)
            .arg(entry_id)
            .arg(owner)
            .arg(target_data)
            .arg(task_id)
            .arg(result)
            .arg(if keep_fields { "1" } else { "" })
            .invoke_async(&mut self.c())
            .await
            .inspect_err(|e| self.saw(e))?;
        Ok(Moved::from_script(r))
    }

    /// Acknowledge a finished entry, recording `result_json` in the results
    /// stream unless a result for `task_id` already exists (idempotent).
    pub(crate) async fn complete(
        &self,
        entry_id: &str,
        owner: &str,
        task_id: &str,
        result_json: Option<&str>,
    ) -> Result<Moved> {
        // No target data is written; the target key is only named (a key of
        // the same hash slot, for Redis Cluster).
        self.run_move(
            entry_id,
            owner,
            "",
            task_id,
            result_json.unwrap_or(""),
            false,
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

    /// Move an entry to the dead-letter stream (and record a final error
    /// result when one is given and the task id is known), atomically with
    /// its ack. `keep_fields`: the script copies the entry's own fields into
    /// the dead letter (`orig.<name>`), for entries this client never carried.
    pub(crate) async fn dead_letter(
        &self,
        entry_id: &str,
        owner: &str,
        dl: &DeadLetter,
        result_json: Option<&str>,
        keep_fields: bool,
    ) -> Result<Moved> {
        let data = serde_json::to_string(dl).expect("dead letter serializes");
        let tid = dl.task_id.clone().unwrap_or_default();
        let result = if tid.is_empty() {
            ""
        } else {
            result_json.unwrap_or("")
        };
        self.run_move(entry_id, owner, &data, &tid, result, keep_fields)
            .await
    }

    /// Add a record to the results stream without indexing it (used for
    /// error records about a failing result backend: not a final result).
    pub(crate) async fn publish_result_unindexed(&self, json: &str) -> Result<()> {
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
    pub(crate) async fn get_result(&self, task_id: &str) -> Result<Option<String>> {
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

    /// XRANGE through the read script: entries of the tasks stream over the
    /// size limit come back as their size only (see [`Entry`]).
    pub(crate) async fn range(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<Entry>> {
        let limit = if stream == self.cfg.tasks_stream {
            self.read_limit()
        } else {
            // Results and dead letters are written by this crate, and only
            // their `data` field is ever returned.
            usize::MAX
        };
        self.range_limited(stream, start, end, count, limit).await
    }

    /// XRANGE returning at most `limit` bytes of each entry (0: ids and
    /// field names only).
    async fn range_limited(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let v: Value = self
            .read_script
            .key(stream)
            // Lua numbers are doubles: 2^53 is "no limit".
            .arg(limit.min(1 << 53))
            .arg(count)
            .arg("range")
            .arg(start)
            .arg(end)
            .invoke_async(&mut self.c())
            .await?;
        script_entries(v)
    }

    /// Pending entries of one consumer (ids only), oldest first.
    pub(crate) async fn pending_ids_of(&self, consumer: &str, count: usize) -> Result<Vec<String>> {
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
    pub(crate) async fn current_task_of(&self, consumer: &str) -> Result<Option<String>> {
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
            self.forget(id).await?;
            rep.vanished += 1;
            return Ok(());
        };
        let task = entry.task(self.entry_limit);
        let (reason, error) = match crate::retry::reclaim(task.as_ref(), max_attempts, reason) {
            Reclaim::Requeue(next) => {
                // At once: the interruption was the worker's fault, not
                // a sign of a struggling dependency.
                let moved = self.retry(id, owner, &next, 0).await?;
                rep.requeued += u64::from(moved == Moved::Done);
                tracing::debug!(entry_id = id, consumer = owner, ?moved, "reclaim");
                return Ok(());
            }
            Reclaim::DeadLetter { reason, error } => (reason, error),
        };
        let (known, attempts) = match &task {
            Ok(t) => (Known::of(t), t.attempts.saturating_add(1)),
            Err(_) => (entry.known(), 0),
        };
        let by = Actor {
            worker_id: owner.to_string(),
            host: host.to_string(),
            image_tag: String::new(),
        };
        let result = match known.task_id {
            Some(_) => {
                let rec = ResultRecord::dead(&known, reason, &error, attempts, &by);
                match self.results.prepare(&rec).await {
                    Ok(p) => p.script_json().map(str::to_string),
                    Err(e) => {
                        // Left pending: the next reclaim tries again.
                        tracing::warn!(entry_id = id, task_id = %rec.task_id, error = %e,
                            "reclaim: cannot save the error result; entry left pending");
                        return Ok(());
                    }
                }
            }
            None => None,
        };
        let dl = entry.dead_letter(&known, reason, error, attempts, &by);
        let moved = self
            .dead_letter(id, owner, &dl, result.as_deref(), entry.not_carried())
            .await?;
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
    pub(crate) async fn delete_consumer_if_empty(&self, consumer: &str) -> Result<bool> {
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
                            .range_limited(&cfg.tasks_stream, &after, "+", BOUND, 0)
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
            .range_limited(&cfg.tasks_stream, "-", "+", 1, 0)
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
    pub(crate) async fn pending_by_kind(&self, limit: usize) -> Result<BTreeMap<String, u64>> {
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
    pub(crate) async fn memory_usage(&self, key: &str) -> Result<u64> {
        let v: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut self.c())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Dead letters, oldest first: (dead entry id, record).
    pub(crate) async fn dlq_list(&self, count: usize) -> Result<Vec<(String, serde_json::Value)>> {
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
    pub(crate) async fn dlq_retry(
        &self,
        dead_id: &str,
    ) -> Result<std::result::Result<String, String>> {
        if !valid_stream_id(dead_id) {
            return Ok(Err(format!(
                "{dead_id:?} is not a dead-letter id (expected <ms>-<seq>, as `peagenctl queue dlq list` shows)"
            )));
        }
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
    pub(crate) async fn hash_incr(
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
    pub(crate) async fn hash_all(&self, key: &str) -> Result<BTreeMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.c())
            .await?)
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

/// Reply of the read script: a list of entries.
fn script_entries(v: Value) -> Result<Vec<Entry>> {
    match v {
        Value::Array(items) => items.into_iter().map(Entry::from_script).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::Protocol(format!(
            "read script returned {other:?}"
        ))),
    }
}

/// Reply of a plain XREADGROUP: nil, or `[[stream, [entry, ...]]]` (RESP2)
/// or `{stream: [entry, ...]}` (RESP3).
fn plain_read_entries(v: Value, limit: usize) -> Result<Vec<Entry>> {
    let streams: Vec<Value> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(a) => a
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(kv) => kv.into_iter().nth(1),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        other => {
            return Err(QueueError::Protocol(format!(
                "XREADGROUP returned {other:?}"
            )))
        }
    };
    let mut out = Vec::new();
    for s in streams {
        if let Value::Array(entries) = s {
            for e in entries {
                out.push(Entry::from_plain(e, limit)?);
            }
        }
    }
    Ok(out)
}

/// `<ms>-<seq>` or `<ms>`: what Redis accepts as an exact stream id.
fn valid_stream_id(s: &str) -> bool {
    let digits = |x: &str| !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => digits(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        for ok in ["1-0", "1795778213365-12", "5"] {
            assert!(valid_stream_id(ok), "{ok}");
        }
        for bad in ["", "not-an-id", "1-", "-1", "1-2-3", "+", "-", "1x-0"] {
            assert!(!valid_stream_id(bad), "{bad}");
        }
    }

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn plain_read_drops_oversized_data_and_flags_bad_names() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"peagen.tasks"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"data"), bulk(&[b'x'; 100])]),
                ]),
                Value::Array(vec![
                    bulk(b"2-0"),
                    Value::Array(vec![bulk(&[0xff]), bulk(b"v"), bulk(b"data"), bulk(b"{}")]),
                ]),
                Value::Array(vec![bulk(b"3-0"), Value::Nil]),
            ]),
        ])]);
        let e = plain_read_entries(reply, 50).unwrap();
        assert_eq!(e[0].oversize, Some(104));
        assert!(e[0].data.is_none());
        assert!(e[1].bad_names && e[1].data.as_deref() == Some(&b"{}"[..]));
        assert_eq!(e[1].task(1000).unwrap_err().0, "field_not_utf8");
        assert_eq!(e[0].task(50).unwrap_err().0, "too_large");
        assert_eq!(e[2].field_count, 0);
        assert_eq!(e[2].task(50).unwrap_err().0, "no_data");
    }
}
