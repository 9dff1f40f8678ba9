//! The Redis side of the LLM guardrails: fleet rate-limit buckets and
//! workflow budgets. Its own connection (made on first use), so handlers
//! need no queue; key names derive from the tasks stream so two fleets on
//! one Redis never share a bucket or a budget by accident. After an error
//! that may mean a Sentinel failover the connection is dropped, so the next
//! call asks the sentinels for the master again.

use super::budget::{Budget, Reservation};
use super::ratelimit::{Spec, BUCKET_SCRIPT};
use crate::config::RedisConfig;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach Redis at {target} for LLM rate limits and budgets: {source}")]
    Connect {
        target: String,
        source: redis::RedisError,
    },
    #[error("Redis command for LLM rate limits and budgets failed: {0}")]
    Redis(redis::RedisError),
    #[error("budget of workflow {workflow:?} holds a value that is not a number in field {field} (fix or delete the key {key})")]
    Corrupt {
        workflow: String,
        field: &'static str,
        key: String,
    },
}

pub struct Store {
    cfg: RedisConfig,
    conn: Mutex<Option<ConnectionManager>>,
    /// Set by [`Store::saw`]: the cached connection may point at a master
    /// that is gone (a `ConnectionManager` reconnects to the same address).
    stale: AtomicBool,
    bucket: redis::Script,
    pub(super) reserve: redis::Script,
    pub(super) settle: redis::Script,
}

impl Store {
    pub fn new(cfg: &RedisConfig) -> Self {
        Store {
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            stale: AtomicBool::new(false),
            bucket: redis::Script::new(BUCKET_SCRIPT),
            reserve: redis::Script::new(super::budget::RESERVE_SCRIPT),
            settle: redis::Script::new(super::budget::SETTLE_SCRIPT),
        }
    }

    /// Connected on first use and again after [`Store::saw`] flagged an
    /// error that may mean a failover (the master is resolved anew then).
    pub(super) async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let mut g = self.conn.lock().await;
        if self.stale.swap(false, Ordering::AcqRel) {
            *g = None;
        }
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let target =
            crate::redis_target::Target::new(&self.cfg).map_err(|source| StoreError::Connect {
                target: crate::redact::redact(&self.cfg.url),
                source,
            })?;
        let connect_err = |source| StoreError::Connect {
            target: target.describe().to_string(),
            source,
        };
        let resolved = target.client().await.map_err(connect_err)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(self.cfg.response_timeout_ms)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let c = resolved
            .client
            .get_connection_manager_with_config(cfg)
            .await
            .map_err(connect_err)?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// Pass every command's error through here: one that may mean the
    /// master moved (or that we talk to a demoted one) drops the connection.
    pub(super) fn saw(&self, e: redis::RedisError) -> StoreError {
        if crate::redis_target::suggests_failover(&e) {
            self.stale.store(true, Ordering::Release);
        }
        StoreError::Redis(e)
    }

    pub fn bucket_key(&self, name: &str) -> String {
        format!("{}.llm.ratelimit.{name}", self.cfg.tasks_stream)
    }

    /// The fleet-wide token bucket (`llm.fleet-tokens-per-minute`).
    pub fn fleet_bucket_key(&self) -> String {
        format!("{}.llm.ratelimit-fleet", self.cfg.tasks_stream)
    }

    pub fn budget_key(&self, workflow: &str) -> String {
        format!("{}.budget.{workflow}", self.cfg.tasks_stream)
    }

    /// Run the bucket script: 0 = granted, else ms to wait.
    pub async fn bucket(
        &self,
        key: &str,
        spec: &Spec,
        cost: u64,
        refund: u64,
    ) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        self.bucket
            .key(key)
            .arg(spec.requests_per_minute)
            .arg(spec.request_burst)
            .arg(spec.tokens_per_minute)
            .arg(spec.token_burst)
            .arg(cost)
            .arg(refund)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.saw(e))
    }

    /// A plain round trip (the benchmark's baseline).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| self.saw(e))?;
        Ok(())
    }

    pub async fn reserve(
        &self,
        workflow: &str,
        task_id: &str,
        tokens: u64,
    ) -> Result<Reservation, StoreError> {
        super::budget::reserve(self, workflow, task_id, tokens).await
    }

    pub async fn settle(
        &self,
        workflow: &str,
        task_id: &str,
        used: u64,
    ) -> Result<u64, StoreError> {
        super::budget::settle(self, workflow, task_id, used).await
    }

    pub async fn budget(&self, workflow: &str) -> Result<Option<Budget>, StoreError> {
        super::budget::get(self, workflow).await
    }
}
