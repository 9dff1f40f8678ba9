//! Handler registry: task kind -> code that runs it.
//!
//! Handlers are I/O at the edge; they return an [`Outcome`] and never decide
//! about retries (that is [`crate::retry`]).

pub mod command;
pub mod echo;
pub mod execute;

use crate::config::Config;
use crate::task::{Status, Task};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler reports for one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub data: Value,
    /// Only meaningful for `Status::Error`: worth another attempt.
    pub retryable: bool,
}

impl Outcome {
    pub fn ok(data: Value) -> Self {
        Outcome {
            status: Status::Ok,
            data,
            retryable: false,
        }
    }
    pub fn error(msg: impl Into<String>, retryable: bool) -> Self {
        Outcome {
            status: Status::Error,
            data: serde_json::json!({ "msg": msg.into(), "retryable": retryable }),
            retryable,
        }
    }
}

pub trait Handler: Send + Sync {
    /// Name recorded as `handler` in results.
    fn name(&self) -> &str;
    /// Recorded as `handler_version`.
    fn version(&self) -> &str;
    /// Run one task. Must not panic on any payload; bad payloads are
    /// non-retryable errors.
    fn run<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Outcome>;
}

#[derive(Clone, Default)]
pub struct Registry {
    by_kind: BTreeMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub fn from_config(cfg: &Config) -> Self {
        let mut r = Registry::default();
        if cfg.handlers.echo {
            r.insert("echo", Arc::new(echo::Echo));
        }
        if cfg.handlers.execute {
            r.insert(
                "execute",
                Arc::new(execute::Execute::new(cfg.sandbox.clone())),
            );
        }
        for c in &cfg.handlers.command {
            r.insert(
                &c.kind,
                Arc::new(command::Command::new(c.clone(), cfg.sandbox.clone())),
            );
        }
        r
    }

    pub fn insert(&mut self, kind: &str, h: Arc<dyn Handler>) {
        self.by_kind.insert(kind.to_string(), h);
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.by_kind.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.by_kind.keys().map(String::as_str)
    }
}
