//! One TOML file shared by every binary (default `/etc/peagen/peagen.toml`).
//!
//! Every table is `deny_unknown_fields` + kebab-case so a typo is an error,
//! not a silently ignored knob. With no file at all the built-in defaults run
//! a worker against `redis://127.0.0.1:6379` with the `echo` handler.
//! Environment overrides (documented in the shipped example):
//! `PEAGEN_REDIS_URL`, `PEAGEN_WORKER_ID`, `WORKER_IDLE_EXIT`,
//! `WORKER_MAX_UPTIME`, `PEAGEN_METRICS_LISTEN`, `PEAGEN_LOG_FORMAT`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/peagen/peagen.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass --config FILE, or create it from /usr/share/doc/peagen-fabric/examples/peagen.toml)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?} is not valid: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("config is not valid: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    pub redis: RedisConfig,
    pub worker: WorkerConfig,
    pub results: ResultsConfig,
    pub handlers: HandlersConfig,
    pub sandbox: SandboxConfig,
    pub spawner: SpawnerConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// LLM backends, rate limits and budgets (see `crate::llm::config`).
    pub llm: crate::llm::config::LlmConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://`, `rediss://` or `redis+unix://` URL.
    pub url: String,
    pub tasks_stream: String,
    pub group: String,
    pub results_stream: String,
    pub dead_stream: String,
    /// Blocking read timeout for XREADGROUP; short enough to notice signals.
    /// Capped at 1000 ms for workers so due retries are promoted promptly.
    pub block_ms: u64,
    /// Response timeout for ordinary (non-blocking) commands.
    pub response_timeout_ms: u64,
    /// Name of a Sentinel-monitored master (`sentinel monitor NAME ...`).
    /// Set together with `sentinels`; then `url` only supplies the master's
    /// credentials and db, its host and port are ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,
    /// `redis://[:password@]host:port` of each sentinel, tried in order.
    pub sentinels: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            tasks_stream: "peagen.tasks".into(),
            group: "peagen".into(),
            results_stream: "peagen.results".into(),
            dead_stream: "peagen.dead".into(),
            block_ms: 1000,
            response_timeout_ms: 5000,
            sentinel_master: None,
            sentinels: Vec::new(),
        }
    }
}

impl RedisConfig {
    /// Key of the hash task_id -> results-stream entry id, which makes result
    /// writes idempotent and `peagenctl task get` O(1).
    pub fn results_index(&self) -> String {
        format!("{}.index", self.results_stream)
    }

    /// Key of the per-host hash of worker counters (`<tasks-stream>.metrics.<host>`),
    /// which workers increment and that host's spawner exports.
    pub fn fleet_metrics_key(&self, host: &str) -> String {
        format!("{}.metrics.{host}", self.tasks_stream)
    }

    /// Key of the sorted set of retries waiting out their backoff
    /// (`<tasks-stream>.delayed`): it inherits the stream's hash tag, so the
    /// retry and promote scripts stay in one slot on Redis Cluster.
    pub fn delayed_key(&self) -> String {
        format!("{}.delayed", self.tasks_stream)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Consumer name; normally set by the spawner through `PEAGEN_WORKER_ID`.
    /// Empty = `<hostname>-<random>` (a fresh identity each start).
    pub id: String,
    /// Exit cleanly after this many idle seconds between tasks (0 = never).
    pub idle_exit_secs: u64,
    /// Exit cleanly between tasks after this many seconds of uptime (0 = never).
    pub max_uptime_secs: u64,
    /// Total executions of a task before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry of a retryable failure, in milliseconds;
    /// doubled for each further attempt up to `retry-backoff-max-ms`, with
    /// jitter (each delay is between half and all of that). 0 = retry at once.
    pub retry_backoff_ms: u64,
    /// Cap of the retry delay, in milliseconds (at least `retry-backoff-ms`).
    pub retry_backoff_max_ms: u64,
    /// Size limit of one entry's `data` field in bytes.
    pub max_payload_bytes: usize,
    /// How often the worker re-reads its own pending entries (tasks left
    /// pending after a result-backend failure), in seconds.
    pub pending_retry_secs: u64,
    /// Deadline for finishing the current task after SIGTERM, in milliseconds;
    /// after it the task is released (left pending) and the worker exits.
    pub drain_timeout_ms: u64,
    /// Recorded in every result as `image_tag` (package version by default).
    pub image_tag: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            idle_exit_secs: 600,
            max_uptime_secs: 3600,
            max_attempts: 3,
            retry_backoff_ms: 1000,
            retry_backoff_max_ms: 60_000,
            max_payload_bytes: 1024 * 1024,
            pending_retry_secs: 30,
            drain_timeout_ms: 60_000,
            image_tag: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ResultBackendKind {
    /// The results stream (default).
    Stream,
    /// One JSON file per task id under `dir`.
    Fs,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ResultsConfig {
    pub backend: ResultBackendKind,
    pub dir: PathBuf,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            backend: ResultBackendKind::Stream,
            dir: PathBuf::from("/var/lib/peagen/results"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HandlersConfig {
    /// The built-in `echo` handler (returns its payload).
    pub echo: bool,
    /// The built-in `execute` handler (untrusted code in the sandbox).
    pub execute: bool,
    /// Task kinds mapped to external programs.
    pub command: Vec<CommandHandlerConfig>,
}

impl Default for HandlersConfig {
    fn default() -> Self {
        Self {
            echo: true,
            execute: true,
            command: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CommandHandlerConfig {
    /// Task kind this program handles.
    pub kind: String,
    /// Absolute path of the program.
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// Wall-clock limit; the whole process group is killed after it.
    #[serde(default = "default_command_timeout_ms")]
    pub timeout_ms: u64,
    /// Stdout/stderr bytes kept; more is an error result.
    #[serde(default = "default_output_cap")]
    pub output_cap_bytes: usize,
    /// Run the program inside the execute sandbox.
    #[serde(default)]
    pub sandbox: bool,
    /// Reported as `handler_version` in results.
    #[serde(default)]
    pub version: String,
}

fn default_command_timeout_ms() -> u64 {
    60_000
}
fn default_output_cap() -> usize {
    1024 * 1024
}

/// `[sandbox]`: defined with the sandbox (its own crate, `peagen-sandbox`).
pub use peagen_sandbox::SandboxConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SpawnerConfig {
    /// Minimum number of workers kept running.
    pub min: u32,
    /// Upper bound of workers on this host.
    pub max: u32,
    /// Idle workers kept warm beyond what the backlog needs.
    pub warm_pool: u32,
    /// Backlog tasks one worker is expected to absorb.
    pub tasks_per_worker: u32,
    /// Most workers started per tick (scale-up rate limit).
    pub max_starts_per_tick: u32,
    /// Seconds the desired count must stay low before idle workers are stopped.
    pub scale_down_window_secs: u64,
    /// Seconds a worker must be idle before it may be stopped.
    pub idle_timeout_secs: u64,
    /// Supervisor tick in milliseconds (also woken by systemd events).
    pub tick_ms: u64,
    /// XAUTOCLAIM sweep period for orphans of consumers that are not live units.
    pub reclaim_interval_secs: u64,
    /// Minimum idle time of a pending entry before the sweep takes it.
    pub reclaim_min_idle_ms: u64,
    /// Talk to the user manager instead of the system manager.
    pub user_mode: bool,
    /// Consecutive failed starts that open the circuit breaker.
    pub failure_threshold: u32,
    /// First backoff after the breaker opens, doubled up to `backoff-max-secs`.
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
    /// `fleet`: min, warm-pool and the desired count are fleet-wide, split
    /// over the hosts sharing the queue; `host`: each host sizes itself.
    pub scale_scope: crate::fleet::ScaleScope,
    /// A host whose spawner has not heart-beaten for this long leaves the
    /// fleet; its workers' tasks are re-queued.
    pub fleet_host_timeout_ms: u64,
    /// This host's id in the fleet record and in its worker ids (empty =
    /// the hostname). Must be unique among the hosts sharing the queue.
    pub host_id: String,
    pub worker_unit: WorkerUnitConfig,
}

impl Default for SpawnerConfig {
    fn default() -> Self {
        Self {
            min: 0,
            max: 32,
            warm_pool: 2,
            tasks_per_worker: 2,
            max_starts_per_tick: 8,
            scale_down_window_secs: 300,
            idle_timeout_secs: 60,
            tick_ms: 1000,
            reclaim_interval_secs: 60,
            reclaim_min_idle_ms: 600_000,
            user_mode: false,
            failure_threshold: 3,
            backoff_initial_secs: 5,
            backoff_max_secs: 300,
            scale_scope: crate::fleet::ScaleScope::Fleet,
            fleet_host_timeout_ms: 10_000,
            host_id: String::new(),
            worker_unit: WorkerUnitConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WorkerUnitConfig {
    /// argv of the worker; argv[0] must be an absolute path.
    pub exec_start: Vec<String>,
    /// Run workers as this user (empty together with dynamic-user = root).
    pub user: String,
    pub group: String,
    pub dynamic_user: bool,
    pub slice: String,
    /// Extra `KEY=VALUE` environment for workers.
    pub environment: Vec<String>,
    /// Apply the built-in hardening property set.
    pub hardening: bool,
    /// Seconds systemd gives a worker to drain on stop.
    pub timeout_stop_secs: u64,
    /// Watchdog interval for workers (0 = none).
    pub watchdog_secs: u64,
    /// Pass `Delegate=yes` so the sandbox gets a cgroup v2 subtree.
    pub delegate: bool,
    /// `LoadCredential=ID:PATH` entries (e.g. LLM API keys): the worker reads
    /// `$CREDENTIALS_DIRECTORY/ID`, nothing lands in its environment.
    pub load_credential: Vec<String>,
}

impl Default for WorkerUnitConfig {
    fn default() -> Self {
        Self {
            exec_start: vec!["/usr/bin/peagen-worker".into()],
            user: String::new(),
            group: String::new(),
            dynamic_user: true,
            slice: "peagen-workers.slice".into(),
            environment: Vec::new(),
            hardening: true,
            timeout_stop_secs: 90,
            watchdog_secs: 30,
            delegate: true,
            load_credential: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus listen address of the worker (empty = off). Workers started
    /// by the spawner use port 0 (off) unless configured; the spawner uses
    /// `spawner-listen`.
    pub listen: String,
    pub spawner_listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            spawner_listen: "127.0.0.1:9465".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// journald when stderr is the journal, text otherwise.
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Parse TOML text (no environment overrides, no validation).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Load the configuration the way every binary does: the explicit file
    /// (must exist), else the default path if present, else built-in
    /// defaults; then environment overrides; then validation.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match explicit {
            Some(p) => Self::read_file(p)?,
            None if Path::new(DEFAULT_PATH).exists() => Self::read_file(Path::new(DEFAULT_PATH))?,
            None => Self::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn read_file(p: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_owned(),
            source,
        })?;
        Self::from_toml(&text, p)
    }

    /// Environment overrides, taken through `get` so tests need no global state.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("PEAGEN_REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = get("PEAGEN_WORKER_ID") {
            self.worker.id = v;
        }
        if let Some(v) = get("PEAGEN_METRICS_LISTEN") {
            self.metrics.listen = v;
        }
        let secs = |var: &'static str, v: String| {
            v.trim().parse::<u64>().map_err(|e| ConfigError::Env {
                var,
                value: v.clone(),
                message: format!("expected whole seconds: {e}"),
            })
        };
        if let Some(v) = get("WORKER_IDLE_EXIT") {
            self.worker.idle_exit_secs = secs("WORKER_IDLE_EXIT", v)?;
        }
        if let Some(v) = get("WORKER_MAX_UPTIME") {
            self.worker.max_uptime_secs = secs("WORKER_MAX_UPTIME", v)?;
        }
        if let Some(v) = get("PEAGEN_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "auto" => LogFormat::Auto,
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                "journald" => LogFormat::Journald,
                _ => {
                    return Err(ConfigError::Env {
                        var: "PEAGEN_LOG_FORMAT",
                        value: v,
                        message: "expected auto, text, json or journald".into(),
                    })
                }
            };
        }
        Ok(())
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let r = &self.redis;
        if !(r.url.starts_with("redis://")
            || r.url.starts_with("rediss://")
            || r.url.starts_with("redis+unix://")
            || r.url.starts_with("unix://"))
        {
            errs.push(format!(
                "redis.url {:?} must start with redis://, rediss://, redis+unix:// or unix://",
                crate::redact::redact(&r.url)
            ));
        }
        for (name, v) in [
            ("redis.tasks-stream", &r.tasks_stream),
            ("redis.group", &r.group),
            ("redis.results-stream", &r.results_stream),
            ("redis.dead-stream", &r.dead_stream),
        ] {
            if v.is_empty() {
                errs.push(format!("{name} must not be empty"));
            }
        }
        if r.tasks_stream == r.dead_stream || r.tasks_stream == r.results_stream {
            errs.push("redis.tasks-stream must differ from results-stream and dead-stream".into());
        }
        if r.block_ms == 0 {
            errs.push("redis.block-ms must be at least 1".into());
        }
        match (&r.sentinel_master, r.sentinels.is_empty()) {
            (Some(m), false) if m.is_empty() => {
                errs.push("redis.sentinel-master must not be empty".into())
            }
            (Some(_), true) => errs.push(
                "redis.sentinel-master is set but redis.sentinels is empty: list at least one sentinel (redis://host:26379)".into(),
            ),
            (None, false) => errs.push(
                "redis.sentinels is set but redis.sentinel-master is not: name the monitored master (sentinel monitor NAME ...)".into(),
            ),
            _ => {}
        }
        if r.sentinel_master.is_some() && !r.url.starts_with("redis://") {
            // Only its credentials and db are used; TLS to a Sentinel-named
            // master is not built in, so refuse rather than silently downgrade.
            errs.push(format!(
                "redis.url {:?} must be a redis:// URL with redis.sentinel-master (it only supplies the master's password and db; TLS with Sentinel is not supported)",
                crate::redact::redact(&r.url)
            ));
        }
        for s in &r.sentinels {
            // The crate talks to sentinels over plain TCP only (no TLS feature built in).
            if !s.starts_with("redis://") {
                errs.push(format!(
                    "redis.sentinels entry {:?} must start with redis://",
                    crate::redact::redact(s)
                ));
            }
        }
        if self.worker.max_attempts == 0 {
            errs.push("worker.max-attempts must be at least 1".into());
        }
        let w = &self.worker;
        if w.retry_backoff_ms > 0 && w.retry_backoff_max_ms < w.retry_backoff_ms {
            errs.push(format!(
                "worker.retry-backoff-max-ms ({}) must be at least worker.retry-backoff-ms ({})",
                w.retry_backoff_max_ms, w.retry_backoff_ms
            ));
        }
        if self.worker.max_payload_bytes == 0 {
            errs.push("worker.max-payload-bytes must be at least 1".into());
        }
        let mut kinds = std::collections::BTreeSet::new();
        for c in &self.handlers.command {
            if c.kind.is_empty() {
                errs.push("handlers.command: kind must not be empty".into());
            }
            if !c.program.is_absolute() {
                errs.push(format!(
                    "handlers.command kind {:?}: program {:?} must be an absolute path",
                    c.kind, c.program
                ));
            }
            if !kinds.insert(c.kind.clone()) || (c.kind == "echo" && self.handlers.echo) {
                errs.push(format!(
                    "handlers.command: kind {:?} is handled twice",
                    c.kind
                ));
            }
            if c.timeout_ms == 0 {
                errs.push(format!(
                    "handlers.command kind {:?}: timeout-ms must be at least 1",
                    c.kind
                ));
            }
        }
        let s = &self.spawner;
        if s.max == 0 {
            errs.push("spawner.max must be at least 1".into());
        }
        if s.min > s.max {
            errs.push(format!(
                "spawner.min ({}) must not exceed spawner.max ({})",
                s.min, s.max
            ));
        }
        if s.tasks_per_worker == 0 {
            errs.push("spawner.tasks-per-worker must be at least 1".into());
        }
        if s.tick_ms == 0 {
            errs.push("spawner.tick-ms must be at least 1".into());
        }
        if s.fleet_host_timeout_ms < s.tick_ms.saturating_mul(3) {
            errs.push(format!(
                "spawner.fleet-host-timeout-ms ({}) must be at least 3 x spawner.tick-ms ({}), or live hosts look dead",
                s.fleet_host_timeout_ms, s.tick_ms
            ));
        }
        if let Err(e) = crate::fleet::check_host_id(&s.host_id) {
            errs.push(format!("spawner.host-id: {e}"));
        }
        if s.max_starts_per_tick == 0 {
            errs.push("spawner.max-starts-per-tick must be at least 1".into());
        }
        if s.failure_threshold == 0 {
            errs.push("spawner.failure-threshold must be at least 1".into());
        }
        let wu = &s.worker_unit;
        match wu.exec_start.first() {
            None => errs.push("spawner.worker-unit.exec-start must not be empty".into()),
            Some(p) if !p.starts_with('/') => errs.push(format!(
                "spawner.worker-unit.exec-start[0] {p:?} must be an absolute path"
            )),
            _ => {}
        }
        if !wu.slice.is_empty() && !wu.slice.ends_with(".slice") {
            errs.push(format!(
                "spawner.worker-unit.slice {:?} must end in .slice",
                wu.slice
            ));
        }
        for c in &wu.load_credential {
            match c.split_once(':') {
                Some((id, path))
                    if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {}
                _ => errs.push(format!(
                    "spawner.worker-unit.load-credential entry {c:?} must be ID:/absolute/path"
                )),
            }
        }
        for e in &wu.environment {
            if !e.contains('=') {
                errs.push(format!(
                    "spawner.worker-unit.environment entry {e:?} must be KEY=VALUE"
                ));
            }
        }
        for (name, v) in [
            ("metrics.listen", &self.metrics.listen),
            ("metrics.spawner-listen", &self.metrics.spawner_listen),
        ] {
            if !v.is_empty() && v.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "{name} {v:?} must be IP:PORT (e.g. 127.0.0.1:9464) or empty"
                ));
            }
        }
        if self.sandbox.memory_bytes < (8 << 20) {
            errs.push("sandbox.memory-bytes must be at least 8 MiB".into());
        }
        if self.sandbox.pids == 0 {
            errs.push("sandbox.pids must be at least 1".into());
        }
        if self.sandbox.warm_tasks_per_zygote == 0 {
            errs.push("sandbox.warm-tasks-per-zygote must be at least 1".into());
        }
        errs.extend(self.llm.problems());
        for k in self.llm.kinds() {
            if kinds.contains(&k)
                || (k == "echo" && self.handlers.echo)
                || (k == "execute" && self.handlers.execute)
            {
                errs.push(format!(
                    "llm.backends: kind {k:?} is also served by another handler"
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs.join("; ")))
        }
    }

    /// Map of kind -> version for the configured handlers (for audit fields).
    pub fn command_kinds(&self) -> BTreeMap<String, &CommandHandlerConfig> {
        self.handlers
            .command
            .iter()
            .map(|c| (c.kind.clone(), c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().redis.url, "redis://127.0.0.1:6379");
        assert!(Config::default().handlers.echo);
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(
            Config::from_toml("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = Config::from_toml("[redis]\nurll = \"x\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Config::from_toml("[nope]\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn sentinel_needs_master_and_sentinels_together() {
        let ok = Config::from_toml(
            "[redis]\nsentinel-master = \"mymaster\"\nsentinels = [\"redis://127.0.0.1:26379\", \"redis://:pw@127.0.0.2:26379\"]\n",
            Path::new("x"),
        )
        .unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.redis.sentinel_master.as_deref(), Some("mymaster"));
        assert_eq!(ok.redis.sentinels.len(), 2);
        for (toml, want) in [
            ("sentinel-master = \"m\"\n", "redis.sentinels is empty"),
            (
                "sentinels = [\"redis://127.0.0.1:26379\"]\n",
                "redis.sentinel-master is not",
            ),
            (
                "sentinel-master = \"\"\nsentinels = [\"redis://h:1\"]\n",
                "must not be empty",
            ),
            (
                "sentinel-master = \"m\"\nsentinels = [\"h:26379\"]\n",
                "must start with redis://",
            ),
            (
                "url = \"rediss://h:1\"\nsentinel-master = \"m\"\nsentinels = [\"redis://h:1\"]\n",
                "TLS with Sentinel is not supported",
            ),
        ] {
            let c = Config::from_toml(&format!("[redis]\n{toml}"), Path::new("x")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{toml:?}: {e}");
        }
    }

    #[test]
    fn kebab_case_keys() {
        let c = Config::from_toml(
            "[redis]\ntasks-stream = \"t\"\n[spawner]\nwarm-pool = 5\n[[handlers.command]]\nkind = \"render\"\nprogram = \"/bin/cat\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.redis.tasks_stream, "t");
        assert_eq!(c.spawner.warm_pool, 5);
        assert_eq!(c.handlers.command[0].timeout_ms, 60_000);
        c.validate().unwrap();
    }

    #[test]
    fn env_overrides() {
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "PEAGEN_REDIS_URL" => Some("redis://10.0.0.1:1".into()),
            "WORKER_IDLE_EXIT" => Some("5".into()),
            "WORKER_MAX_UPTIME" => Some("7".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.redis.url, "redis://10.0.0.1:1");
        assert_eq!(c.worker.idle_exit_secs, 5);
        assert_eq!(c.worker.max_uptime_secs, 7);
        let e = c
            .apply_env(|k| (k == "WORKER_IDLE_EXIT").then(|| "soon".into()))
            .unwrap_err();
        assert!(e.to_string().contains("WORKER_IDLE_EXIT"));
    }

    #[test]
    fn validation_catches_operator_mistakes() {
        let mut c = Config::default();
        c.spawner.min = 40;
        c.redis.url = "http://x".into();
        c.handlers.command.push(CommandHandlerConfig {
            kind: "x".into(),
            program: "relative".into(),
            args: vec![],
            timeout_ms: 1,
            output_cap_bytes: 1,
            sandbox: false,
            version: String::new(),
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("spawner.min"), "{e}");
        assert!(e.contains("redis.url"), "{e}");
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn retry_backoff_settings() {
        let c = Config::default();
        assert_eq!(
            (c.worker.retry_backoff_ms, c.worker.retry_backoff_max_ms),
            (1000, 60_000)
        );
        let c = Config::from_toml(
            "[worker]\nretry-backoff-ms = 250\nretry-backoff-max-ms = 250\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.worker.retry_backoff_ms, 250);
        c.validate().unwrap();
        let mut c = Config::default();
        c.worker.retry_backoff_max_ms = 999;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains(
                "worker.retry-backoff-max-ms (999) must be at least worker.retry-backoff-ms (1000)"
            ),
            "{e}"
        );
        // 0 turns backoff off; the cap no longer matters.
        c.worker.retry_backoff_ms = 0;
        c.worker.retry_backoff_max_ms = 0;
        c.validate().unwrap();
        assert_eq!(c.redis.delayed_key(), "peagen.tasks.delayed");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/peagen.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
