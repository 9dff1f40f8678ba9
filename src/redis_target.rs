//! Where Redis is: the one place every binary (queue, spawner, peagenctl)
//! turns the `[redis]` config into a `redis::Client`.
//!
//! Either a fixed `redis.url`, or the master that Redis Sentinel names for
//! `redis.sentinel-master`. The master is asked for at connect time and again
//! whenever a caller calls [`Target::client`] after a failure, so a failover
//! is followed; the address a client points at never changes by itself (a
//! `redis::Client` is bound to one address), hence the explicit re-resolve.

use crate::config::RedisConfig;
use crate::redact::redact;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::IntoConnectionInfo;
use tokio::sync::Mutex;

/// A resolved Redis: the client and the address it points at (for logs).
pub(crate) struct Resolved {
    pub(crate) client: redis::Client,
    pub(crate) addr: String,
}

enum Kind {
    Direct(redis::Client),
    Sentinel {
        // The crate's client caches its sentinel connections; `&mut` to use.
        client: Mutex<SentinelClient>,
        master: String,
        /// Last master address handed out, to log changes once.
        last: std::sync::Mutex<Option<String>>,
    },
}

pub(crate) struct Target {
    kind: Kind,
    /// What to name in error messages (passwords redacted).
    describe: String,
}

impl Target {
    /// Build from config; fails only on malformed URLs (no I/O).
    pub(crate) fn new(cfg: &RedisConfig) -> redis::RedisResult<Self> {
        match &cfg.sentinel_master {
            None => Ok(Target {
                kind: Kind::Direct(redis::Client::open(cfg.url.as_str())?),
                describe: redact(&cfg.url),
            }),
            Some(master) => {
                // The master's credentials and db come from redis.url (its
                // host and port are ignored); the sentinels' own credentials
                // from the userinfo of each redis.sentinels URL.
                let info = cfg.url.as_str().into_connection_info()?;
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone());
                let client = SentinelClient::build(
                    cfg.sentinels.clone(),
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let sentinels: Vec<String> = cfg.sentinels.iter().map(|s| redact(s)).collect();
                Ok(Target {
                    kind: Kind::Sentinel {
                        client: Mutex::new(client),
                        master: master.clone(),
                        last: std::sync::Mutex::new(None),
                    },
                    describe: format!("sentinel master {master:?} via {}", sentinels.join(", ")),
                })
            }
        }
    }

    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self.kind, Kind::Sentinel { .. })
    }

    /// For error messages: the URL, or the master name and sentinels.
    pub(crate) fn describe(&self) -> &str {
        &self.describe
    }

    /// A client for the current master. With Sentinel this asks the sentinels
    /// (and checks the answer's `ROLE` is master) on every call.
    pub(crate) async fn client(&self) -> redis::RedisResult<Resolved> {
        match &self.kind {
            Kind::Direct(c) => Ok(Resolved {
                client: c.clone(),
                addr: c.get_connection_info().addr().to_string(),
            }),
            Kind::Sentinel {
                client,
                master,
                last,
            } => {
                let c = client.lock().await.async_get_client().await?;
                let addr = c.get_connection_info().addr().to_string();
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                match last.as_deref() {
                    None => {
                        tracing::info!(master = %master, addr = %addr, "redis sentinel: using master")
                    }
                    Some(old) if old != addr => tracing::warn!(
                        master = %master,
                        from = %old,
                        to = %addr,
                        "redis sentinel: master changed (failover)"
                    ),
                    Some(_) => {}
                }
                *last = Some(addr.clone());
                Ok(Resolved { client: c, addr })
            }
        }
    }
}

/// Errors after which the master may have moved: the connection broke, or
/// the server we talk to became a replica (`READONLY`, an old master that
/// came back after a failover).
pub(crate) fn suggests_failover(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
        || e.code() == Some("MASTERDOWN")
}
