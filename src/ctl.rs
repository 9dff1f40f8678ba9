//! `peagenctl`: the operator's CLI. Every listing has `--json` for scripts;
//! exit codes: 0 ok, 1 not found / failed, 64 usage (e.g. `--count` out of
//! range), 65 bad input (a task over the payload limit, an id that is not a
//! task id, dead letters that could not be retried: each is reported and the
//! others still processed), 69 Redis unavailable, 78 config error.

use crate::config::{Config, ResultBackendKind};
use crate::exit;
use crate::queue::Queue;
use crate::task::Task;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;

mod autoscale;
pub(crate) mod exporter;
mod workers;

pub use autoscale::AutoscaleArgs;
pub use exporter::ServeArgs;

#[derive(Parser, Debug)]
#[command(
    name = "peagenctl",
    version,
    about = "Operate the Peagen task fabric: push tasks, inspect the queue, workers and dead letters"
)]
pub struct Cli {
    /// Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults).
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Push a task (from flags, or a whole task document with --file) and print its id.
    Push(PushArgs),
    /// Task results.
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
    },
    /// Queue statistics and dead letters.
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Workers of every host sharing the queue: host, state, pending, current task.
    Workers,
    /// Hosts sharing the queue: heartbeat age, workers by state, share, max.
    Fleet,
    /// Queue and fleet metrics without systemd (Kubernetes, Compose).
    Metrics {
        #[command(subcommand)]
        cmd: MetricsCmd,
    },
    /// Size a worker pool with the spawner's policy: print the desired count
    /// or keep a Docker Compose service at it.
    Autoscale(AutoscaleArgs),
    /// Configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Print a shell completion script, generated from the command-line definitions.
    Completions {
        #[arg(value_enum)]
        shell: crate::app::docs::Shell,
        /// Program to complete.
        #[arg(long, default_value = "peagenctl", value_parser = crate::app::docs::PROGRAMS)]
        program: String,
        /// Write the scripts of all three programs into DIR instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Write the man pages of peagenctl, peagen-worker and peagen-spawnerd into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Workflow token budgets of LLM tasks.
    Budget {
        #[command(subcommand)]
        cmd: crate::llm::budget::BudgetCmd,
    },
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Task kind (echo, execute, or a configured command kind).
    #[arg(long, short = 'k', required_unless_present = "file")]
    pub kind: Option<String>,
    /// Payload JSON object.
    #[arg(long, short = 'p', default_value = "{}")]
    pub payload: String,
    /// Task id (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    /// Capability the task requires (repeatable).
    #[arg(long)]
    pub requires: Vec<String>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// RFC 3339 time after which the task must not start.
    #[arg(long)]
    pub deadline: Option<String>,
    /// W3C traceparent.
    #[arg(long)]
    pub trace_id: Option<String>,
    /// Read task documents (one JSON object per line) from FILE, or - for stdin.
    #[arg(long, conflicts_with = "kind")]
    pub file: Option<PathBuf>,
    /// Push N copies, 1 to 1000000 (ids suffixed -1..-N when --id is given);
    /// sent in batches of 1000.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Print a task's result record (exit 1 if there is none yet).
    Get {
        id: String,
        /// Wait up to SECS for the result.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Length, lag, pending, delayed retries, consumers, oldest age.
    Stats,
    /// Dead-letter stream.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// List dead letters.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Write every dead letter as one JSON object per line to stdout.
    Export,
    /// Put dead letters back on the queue with attempts reset.
    Retry {
        /// Dead-letter entry ids (as shown by list/export).
        ids: Vec<String>,
        /// Retry every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MetricsCmd {
    /// Serve GET /metrics (queue work, fleet hosts and desired count, queue
    /// gauges) read from Redis every interval; runs until SIGTERM.
    Serve(ServeArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check a config file; exit 0 if valid, 78 if not.
    Validate,
    /// Print the effective configuration (file + defaults + environment) as TOML.
    Show,
}

/// Error with the exit code to use.
#[derive(Debug)]
struct CtlError(i32, String);

impl<E: std::fmt::Display> From<(i32, E)> for CtlError {
    fn from((c, e): (i32, E)) -> Self {
        CtlError(c, e.to_string())
    }
}

fn unavailable(e: impl std::fmt::Display) -> CtlError {
    CtlError(exit::UNAVAILABLE, e.to_string())
}

pub fn cli_main() -> i32 {
    let cli = Cli::parse();
    if let Some(code) = docs(&cli.cmd) {
        return code;
    }
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peagenctl: {e}");
            return exit::CONFIG;
        }
    };
    if let Cmd::Config { cmd } = &cli.cmd {
        return match cmd {
            ConfigCmd::Validate => {
                let src = cli
                    .config
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| {
                        "built-in defaults (+ /etc/peagen/peagen.toml if present)".into()
                    });
                if cli.json {
                    println!("{}", json!({"valid": true, "config": src}));
                } else {
                    println!("{src}: OK");
                }
                exit::OK
            }
            ConfigCmd::Show => {
                // The URLs may carry the Redis password.
                let mut shown = cfg.clone();
                shown.redis.url = crate::redact::redact(&shown.redis.url);
                for s in &mut shown.redis.sentinels {
                    *s = crate::redact::redact(s);
                }
                print!("{}", toml::to_string_pretty(&shown).unwrap_or_default());
                exit::OK
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peagenctl: {e}");
            return exit::FAILURE;
        }
    };
    match rt.block_on(run(cli, cfg)) {
        Ok(()) => exit::OK,
        Err(CtlError(code, msg)) => {
            eprintln!("peagenctl: {msg}");
            code
        }
    }
}

/// `completions` and `man`: no configuration needed.
fn docs(cmd: &Cmd) -> Option<i32> {
    use crate::app::docs;
    use clap::CommandFactory;
    let written = match cmd {
        Cmd::Completions {
            shell,
            program,
            dir: None,
        } => {
            let c = docs::command(program, Cli::command())?;
            docs::completions(*shell, c, &mut std::io::stdout().lock());
            return Some(exit::OK);
        }
        Cmd::Completions {
            shell,
            dir: Some(dir),
            ..
        } => docs::write_completions(dir, &[*shell], Cli::command()),
        Cmd::Man { dir } => docs::write_man_pages(dir, Cli::command()),
        _ => return None,
    };
    Some(match written {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("peagenctl: {e}");
            exit::FAILURE
        }
    })
}

async fn connect(cfg: &Config) -> Result<Queue, CtlError> {
    let q = Queue::connect_for(cfg).await.map_err(unavailable)?;
    q.ping().await.map_err(unavailable)?;
    Ok(q)
}

/// `--reclaim` of `metrics serve` and `autoscale --compose`: the orphan
/// sweep of `peagen-spawnerd` for pools without one. Entries idle longer
/// than `spawner.reclaim-min-idle-ms` (their worker stopped refreshing
/// them: it is gone) are re-queued with attempts+1 or dead-lettered.
struct Reclaimer {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    claimer: String,
    host: String,
}

impl Reclaimer {
    fn new(cfg: &Config) -> Self {
        let host = crate::telemetry::hostname();
        Reclaimer {
            every: std::time::Duration::from_secs(cfg.spawner.reclaim_interval_secs.max(1)),
            last: None,
            claimer: format!("peagenctl-{host}"),
            host,
        }
    }

    /// Sweep if the interval has passed (and on the first call).
    async fn tick(&mut self, cfg: &Config, q: &Queue) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return;
        }
        self.last = Some(now);
        match q
            .autoclaim_orphans(
                &self.claimer,
                cfg.spawner.reclaim_min_idle_ms,
                cfg.worker.max_attempts,
                &self.host,
            )
            .await
        {
            Ok(r) if r.requeued + r.dead_lettered > 0 => eprintln!(
                "peagenctl: orphan sweep re-queued {} and dead-lettered {} task(s) of gone workers",
                r.requeued, r.dead_lettered
            ),
            Ok(_) => {}
            Err(e) => eprintln!("peagenctl: orphan sweep failed: {e}; retrying next interval"),
        }
    }
}

async fn run(cli: Cli, cfg: Config) -> Result<(), CtlError> {
    match cli.cmd {
        Cmd::Push(a) => push(&cfg, a, cli.json).await,
        Cmd::Task {
            cmd: TaskCmd::Get { id, wait },
        } => task_get(&cfg, &id, wait, cli.json).await,
        Cmd::Queue {
            cmd: QueueCmd::Stats,
        } => stats(&cfg, cli.json).await,
        Cmd::Queue {
            cmd: QueueCmd::Dlq { cmd },
        } => dlq(&cfg, cmd, cli.json).await,
        Cmd::Workers => workers::workers(&cfg, cli.json).await,
        Cmd::Metrics {
            cmd: MetricsCmd::Serve(a),
        } => exporter::serve(&cfg, a).await,
        Cmd::Autoscale(a) => autoscale::autoscale(&cfg, a, cli.json).await,
        Cmd::Budget { cmd } => Ok(crate::llm::budget::cli(&cfg, cmd, cli.json).await?),
        Cmd::Fleet => {
            let q = connect(&cfg).await?;
            let out =
                (crate::fleet_store::ctl_fleet(&cfg, &q, cli.json).await).map_err(unavailable)?;
            println!("{out}");
            Ok(())
        }
        Cmd::Config { .. } | Cmd::Completions { .. } | Cmd::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// Most copies one `push --count` makes: far above any real batch, far
/// below what would exhaust memory or the stream (each copy is built, sent
/// and forgotten in batches of [`crate::queue::PUSH_BATCH`]).
pub const MAX_PUSH_COUNT: u32 = 1_000_000;

fn bad(m: String) -> CtlError {
    CtlError(exit::DATAERR, m)
}

/// The task documents of `--file` (all read and checked before any push).
fn file_tasks(f: &std::path::Path) -> Result<Vec<Task>, CtlError> {
    let text = if f.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| bad(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(f).map_err(|e| bad(format!("reading {}: {e}", f.display())))?
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut v: Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("line {}: not JSON: {e}", i + 1)))?;
        // Fill what producers usually leave out.
        if let Value::Object(m) = &mut v {
            let kind = m
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            m.entry("id")
                .or_insert_with(|| Task::new(&kind, json!({})).id.into());
            m.entry("created_at")
                .or_insert_with(|| crate::task::now_prototype().into());
        }
        let t: Task = serde_json::from_value(v)
            .map_err(|e| bad(format!("line {}: not a task: {e}", i + 1)))?;
        t.check().map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
        out.push(t);
    }
    Ok(out)
}

/// The `i`-th (1-based) copy of the task the flags describe.
fn flag_task(a: &PushArgs, payload: &Value, i: u32) -> Result<Task, CtlError> {
    let kind = a.kind.clone().unwrap_or_default();
    let mut t = Task::new(&kind, payload.clone());
    if let Some(id) = &a.id {
        t.id = if a.count > 1 {
            format!("{id}-{i}")
        } else {
            id.clone()
        };
    }
    t.requires = a.requires.clone();
    t.max_attempts = a.max_attempts;
    t.timeout_ms = a.timeout_ms;
    t.deadline = a.deadline.clone();
    t.trace_id = a.trace_id.clone();
    t.check().map_err(|e| bad(e.to_string()))?;
    Ok(t)
}

/// Refuse a task every worker would dead-letter as `too_large`.
fn check_size(t: &Task, limit: usize) -> Result<(), CtlError> {
    let size = t.to_json().len();
    if size > limit {
        return Err(bad(format!(
            "task {} is {size} bytes, over worker.max-payload-bytes ({limit}): every worker would dead-letter it; send a smaller payload (e.g. a reference to the data) or raise the limit for the whole fleet",
            t.id
        )));
    }
    Ok(())
}

async fn push(cfg: &Config, a: PushArgs, as_json: bool) -> Result<(), CtlError> {
    let limit = cfg.worker.max_payload_bytes;
    if a.count == 0 || a.count > MAX_PUSH_COUNT {
        return Err(CtlError(
            exit::USAGE,
            format!("--count must be 1 to {MAX_PUSH_COUNT}, not {}", a.count),
        ));
    }
    // Everything is checked before anything is pushed.
    let (from_file, payload) = match &a.file {
        Some(f) => {
            let tasks = file_tasks(f)?;
            for t in &tasks {
                check_size(t, limit)?;
            }
            (Some(tasks), Value::Null)
        }
        None => {
            let payload: Value = serde_json::from_str(&a.payload)
                .map_err(|e| bad(format!("--payload is not JSON: {e}")))?;
            // Copies differ only in their ids: the first one stands for all.
            check_size(&flag_task(&a, &payload, a.count)?, limit)?;
            (None, payload)
        }
    };
    let q = connect(cfg).await?;
    let mut out = std::io::stdout().lock();
    let mut print = |batch: &[Task], ids: &[String]| {
        for (t, entry) in batch.iter().zip(ids) {
            if as_json {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"task_id": t.id, "entry_id": entry, "kind": t.kind})
                );
            } else {
                let _ = writeln!(out, "{}", t.id);
            }
        }
    };
    match from_file {
        Some(tasks) => {
            for chunk in tasks.chunks(crate::queue::PUSH_BATCH) {
                let ids = q.push_many(chunk).await.map_err(unavailable)?;
                print(chunk, &ids);
            }
        }
        None => {
            let mut i = 1u32;
            while i <= a.count {
                let end = a
                    .count
                    .min(i.saturating_add(crate::queue::PUSH_BATCH as u32 - 1));
                let batch = (i..=end)
                    .map(|n| flag_task(&a, &payload, n))
                    .collect::<Result<Vec<_>, _>>()?;
                let ids = q.push_many(&batch).await.map_err(unavailable)?;
                print(&batch, &ids);
                i = end.saturating_add(1);
                if end == a.count {
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn task_get(cfg: &Config, id: &str, wait: u64, as_json: bool) -> Result<(), CtlError> {
    // The same rule as for the ids workers accept: an id is never a path.
    crate::task::check_id(id).map_err(|e| bad(format!("not a task id {id:?}: {e}")))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let fs = (cfg.results.backend == ResultBackendKind::Fs)
        .then(|| crate::results::FsBackend::new(cfg.results.dir.clone()));
    let q = if fs.is_none() {
        Some(connect(cfg).await?)
    } else {
        None
    };
    loop {
        let found = match (&fs, &q) {
            (Some(fs), _) => fs
                .load(id)
                .map_err(|e| CtlError(exit::FAILURE, format!("reading result: {e}")))?,
            (None, Some(q)) => q.get_result(id).await.map_err(unavailable)?,
            _ => None,
        };
        if let Some(s) = found {
            let v: Value = serde_json::from_str(&s).unwrap_or(Value::String(s));
            if as_json {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CtlError(
                exit::FAILURE,
                format!("no result for task {id} yet"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn stats(cfg: &Config, as_json: bool) -> Result<(), CtlError> {
    let q = connect(cfg).await?;
    let st = q.stats().await.map_err(unavailable)?;
    let by_kind = q.pending_by_kind(10_000).await.map_err(unavailable)?;
    if as_json {
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        v["by_kind"] = json!(by_kind);
        println!("{v}");
        return Ok(());
    }
    let lag = match st.lag {
        Some(l) if st.lag_exact => l.to_string(),
        Some(l) => format!("{l} (counted; Redis reports no lag)"),
        None => "unknown".into(),
    };
    println!("stream        {} (group {})", st.stream, st.group);
    println!("length        {}", st.length);
    println!("lag           {lag}");
    println!("pending       {}", st.pending);
    println!("delayed       {}", st.delayed);
    println!(
        "oldest age    {}",
        st.oldest_age_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    );
    println!("dead letters  {}", st.dead_letters);
    println!("results       {}", st.results);
    println!(
        "by kind       {}",
        by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("consumers     {}", st.consumers.len());
    for c in &st.consumers {
        println!(
            "  {:<48} pending={:<4} idle={:.1}s",
            c.name,
            c.pending,
            c.idle_ms as f64 / 1000.0
        );
    }
    Ok(())
}

async fn dlq(cfg: &Config, cmd: DlqCmd, as_json: bool) -> Result<(), CtlError> {
    let q = connect(cfg).await?;
    match cmd {
        DlqCmd::List { limit } => {
            let items = q.dlq_list(limit).await.map_err(unavailable)?;
            if as_json {
                let v: Vec<Value> = items.iter().map(|(id, r)| with_dead_id(id, r)).collect();
                println!("{}", Value::Array(v));
            } else {
                println!(
                    "{:<20} {:<24} {:<20} {:>3}  error",
                    "dead id", "task id", "reason", "att"
                );
                for (id, r) in items {
                    println!(
                        "{:<20} {:<24} {:<20} {:>3}  {}",
                        id,
                        r["task_id"].as_str().unwrap_or("-"),
                        r["reason"].as_str().unwrap_or("-"),
                        r["attempts"].as_u64().unwrap_or(0),
                        r["error"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(80)
                            .collect::<String>()
                    );
                }
            }
        }
        DlqCmd::Export => {
            let items = q.dlq_list(usize::MAX).await.map_err(unavailable)?;
            let mut out = std::io::stdout().lock();
            for (id, r) in items {
                let _ = writeln!(out, "{}", with_dead_id(&id, &r));
            }
        }
        DlqCmd::Retry { ids, all } => {
            let ids: Vec<String> = if all {
                q.dlq_list(usize::MAX)
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            } else if ids.is_empty() {
                return Err(CtlError(
                    exit::USAGE,
                    "give dead-letter ids or --all".into(),
                ));
            } else {
                ids
            };
            let mut failed = 0;
            for id in ids {
                // A Redis error about this id (not the connection) fails this
                // id only; the others are still tried.
                let r = match q.dlq_retry(&id).await {
                    Ok(r) => r,
                    Err(crate::queue::QueueError::Redis(e)) if e.code() == Some("ERR") => {
                        Err(format!("dead letter {id}: Redis refused it: {e}"))
                    }
                    Err(e) => return Err(unavailable(e)),
                };
                match r {
                    Ok(new) => {
                        if as_json {
                            println!("{}", json!({"dead_id": id, "requeued_as": new}));
                        } else {
                            println!("{id} -> {new}");
                        }
                    }
                    Err(msg) => {
                        failed += 1;
                        eprintln!("peagenctl: {msg}");
                    }
                }
            }
            if failed > 0 {
                return Err(CtlError(
                    exit::DATAERR,
                    format!("{failed} dead letter(s) not retried"),
                ));
            }
        }
    }
    Ok(())
}

fn with_dead_id(id: &str, r: &Value) -> Value {
    let mut v = r.clone();
    if let Value::Object(m) = &mut v {
        m.insert("dead_id".into(), id.into());
    }
    v
}
