//! Handler registry: task kind -> code that runs it.
//!
//! Handlers are I/O at the edge; they return an [`Outcome`] and never decide
//! about retries (that is [`crate::retry`]).

pub mod command;
pub mod echo;
pub mod execute;
pub mod llm;

use crate::config::Config;
use crate::task::{Status, Task};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler reports for one execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub data: Value,
    /// Only meaningful for `Status::Error`: worth another attempt.
    pub retryable: bool,
    /// Earliest retry the backend asked for (`Retry-After`): a lower bound
    /// of the retry delay.
    pub retry_after: Option<Duration>,
    /// Not run for want of a local resource (a rate-limit token): back to
    /// the delayed set for this long, without using an attempt, no result.
    pub defer: Option<Duration>,
}

impl Outcome {
    pub fn ok(data: Value) -> Self {
        Outcome {
            status: Status::Ok,
            data,
            retryable: false,
            retry_after: None,
            defer: None,
        }
    }
    pub fn error(msg: impl Into<String>, retryable: bool) -> Self {
        Outcome {
            status: Status::Error,
            data: serde_json::json!({ "msg": msg.into(), "retryable": retryable }),
            retryable,
            retry_after: None,
            defer: None,
        }
    }
    /// Finished without doing the work on purpose (e.g. a budget refusal).
    pub fn skip(data: Value) -> Self {
        Outcome {
            status: Status::Skip,
            ..Outcome::ok(data)
        }
    }
    /// Put the task back unchanged after `after` (see [`Outcome::defer`]).
    /// A worker that ignored the field would still retry it (retryable error).
    pub fn defer(after: Duration) -> Self {
        Outcome {
            defer: Some(after),
            ..Outcome::error("deferred: rate limit", true)
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
    /// Handlers of `cfg`, with LLM metrics that are not exported anywhere.
    pub fn from_config(cfg: &Config) -> Self {
        Self::with_metrics(cfg, crate::llm::metrics::CostMetrics::unregistered())
    }

    /// Handlers of `cfg`; the LLM handlers count into `cost`.
    pub fn with_metrics(cfg: &Config, cost: crate::llm::metrics::CostMetrics) -> Self {
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
                Arc::new(
                    command::Command::new(c.clone(), cfg.sandbox.clone())
                        .without_env(cfg.llm.key_env_names()),
                ),
            );
        }
        let kinds = cfg.llm.kinds();
        if !kinds.is_empty() {
            let core = llm::Core::new(cfg, cost);
            for k in kinds {
                r.insert(&k, Arc::new(llm::Llm::new(&k, core.clone())));
            }
        }
        r
    }

    /// The kinds [`Registry::with_metrics`] registers for `cfg`, without
    /// building any handler (for the spawner's per-kind gauges).
    pub fn configured_kinds(cfg: &Config) -> Vec<String> {
        let mut k: Vec<String> = [
            ("echo", cfg.handlers.echo),
            ("execute", cfg.handlers.execute),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n.to_string())
        .chain(cfg.handlers.command.iter().map(|c| c.kind.clone()))
        .chain(cfg.llm.kinds())
        .collect();
        k.sort();
        k.dedup();
        k
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_kinds_are_the_registrys_kinds() {
        let text = "[handlers]\nexecute = true\n[[handlers.command]]\nkind = \"render\"\nprogram = \"/bin/true\"\n\
                    [[llm.backends]]\nname = \"b\"\nbase-url = \"http://127.0.0.1:9\"\nmodel = \"m\"\nkinds = [\"mutate\", \"judge\"]\n";
        let cfg = Config::from_toml(text, std::path::Path::new("t.toml")).unwrap();
        let built: Vec<String> = Registry::from_config(&cfg)
            .kinds()
            .map(String::from)
            .collect();
        let kinds = Registry::configured_kinds(&cfg);
        assert_eq!(kinds, built);
        assert!(kinds.contains(&"render".to_string()) && kinds.contains(&"judge".to_string()));
        let bare = Config::from_toml("", std::path::Path::new("t.toml")).unwrap();
        let built: Vec<String> = Registry::from_config(&bare)
            .kinds()
            .map(String::from)
            .collect();
        assert_eq!(Registry::configured_kinds(&bare), built);
    }
}
