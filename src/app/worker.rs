//! `peagen-worker`: command line, signals and wiring around
//! [`crate::worker::Worker`].

use crate::config::Config;
use crate::metrics::{labels, WorkerMetrics};
use crate::queue::Queue;
use crate::telemetry::notify;
use crate::worker::{pending_gauge_loop, ExitReason, StartupMarks, Worker, FLEET_FLUSH_EVERY};
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(clap::Parser, Debug)]
#[command(
    name = "peagen-worker",
    version,
    about = "Consume Peagen tasks from Redis Streams and run them"
)]
pub(crate) struct WorkerCli {
    /// Config file (default /etc/peagen/peagen.toml if it exists, else built-in defaults).
    #[arg(long, short = 'c', global = true)]
    pub(crate) config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub(crate) cmd: Option<WorkerCmd>,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum WorkerCmd {
    /// Run the consume loop (the default).
    Run,
    /// Run a command in the execute sandbox and print its verdict (debugging).
    #[command(after_help = crate::sandbox::cli::EXIT_HELP)]
    SandboxRun(Box<crate::sandbox::cli::SandboxRunArgs>),
}

/// `peagen-worker` entry point; returns the process exit code.
pub fn cli_main() -> i32 {
    use clap::Parser;
    let main_mono = crate::systemd::monotonic_us();
    let cli = match WorkerCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return crate::sandbox::cli::usage_exit(&e),
    };
    if let Some(WorkerCmd::SandboxRun(args)) = cli.cmd {
        return crate::sandbox::cli::run_args(&args);
    }
    // One thread: the consume loop is sequential and every handler is async
    // (blocking work goes to spawn_blocking). A multi-thread runtime only
    // added cross-thread wake-ups (futex/eventfd) to each Redis round trip.
    let (cfg, rt) = match crate::telemetry::bootstrap("peagen-worker", cli.config.as_deref(), false)
    {
        Ok(x) => x,
        Err(code) => return code,
    };
    let marks = StartupMarks {
        main: main_mono,
        config: crate::systemd::monotonic_us(),
        ..Default::default()
    };
    rt.block_on(async_main(cfg, marks))
}

async fn async_main(cfg: Config, mut marks: StartupMarks) -> i32 {
    let mut reg = crate::metrics::new_registry();
    let metrics = WorkerMetrics::new(&mut reg);
    // Every configured kind's call and failure counters exist at 0 before its
    // first call: created with it, a burst finished within one flush reaches
    // the fleet hash as the series' first sample, which rate() ignores (the
    // failure-rate alert then never fires).
    for kind in crate::handlers::Registry::configured_kinds(&cfg) {
        let l = labels(&[("handler", &kind)]);
        let _ = metrics.handler_calls.get_or_create(&l);
        let _ = metrics.handler_fail.get_or_create(&l);
    }
    let reg = Arc::new(std::sync::Mutex::new(reg));
    let (tx, rx) = watch::channel(false);
    spawn_signal_listener(tx);
    // Connect with backoff: a worker started while Redis is down waits.
    let mut backoff = crate::backoff::Backoff::service();
    let since = std::time::Instant::now();
    let budget = Duration::from_secs(cfg.worker.idle_exit_secs);
    let queue = loop {
        match Queue::connect_for(&cfg).await {
            Ok(q) => {
                marks.redis = crate::systemd::monotonic_us();
                break Arc::new(q);
            }
            Err(e) => {
                if *rx.borrow() {
                    metrics
                        .exit_reason
                        .get_or_create(&labels(&[("reason", "signal")]))
                        .inc();
                    return crate::exit::OK;
                }
                if !budget.is_zero() && since.elapsed() >= budget {
                    // Same budget as an idle exit: a worker that never reached
                    // Redis is not idle, it failed (its count cannot reach the
                    // fleet hash without Redis; the exit status shows it).
                    tracing::error!(error = %e, idle_exit_secs = budget.as_secs(),
                        "Redis unreachable for longer than worker.idle-exit-secs; exiting with an error");
                    return crate::exit::FAILURE;
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.peek().as_millis() as u64, "cannot connect to Redis; retrying");
                notify(&[NotifyState::Status(&format!("waiting for Redis: {e}"))]);
                tokio::time::sleep(backoff.step()).await;
            }
        }
    };
    if !cfg.metrics.listen.is_empty() {
        match cfg.metrics.listen.parse() {
            Ok(addr) => match crate::metrics::serve(addr, reg.clone()).await {
                Ok(local) => {
                    tracing::info!(listen = %local, "metrics endpoint up");
                    tokio::spawn(pending_gauge_loop(
                        queue.clone(),
                        metrics.clone(),
                        Duration::from_secs(15),
                    ));
                }
                Err(e) => {
                    tracing::error!(listen = %cfg.metrics.listen, error = %e, "cannot serve metrics; continuing without")
                }
            },
            Err(e) => {
                tracing::error!(listen = %cfg.metrics.listen, error = %e, "bad metrics address")
            }
        }
    }
    // Counters also go to the host's Redis hash, exported by the spawner.
    let sink = Arc::new(crate::metrics::FleetSink::new(
        reg.clone(),
        cfg.redis.fleet_metrics_key(&crate::telemetry::hostname()),
    ));
    let flusher = tokio::spawn(sink.clone().run(queue.clone(), FLEET_FLUSH_EVERY));
    let fleet_queue = queue.clone();
    let mut w = Worker::new(cfg, queue, metrics.clone(), rx);
    marks.handlers = crate::systemd::monotonic_us();
    w.set_startup_marks(marks);
    let reason = w.run().await;
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status(&format!("exiting: {}", reason.as_str())),
    ]);
    metrics
        .exit_reason
        .get_or_create(&labels(&[("reason", reason.as_str())]))
        .inc();
    // Last flush, after the exit reason is counted (waits for a running one).
    match tokio::time::timeout(Duration::from_secs(5), sink.flush(&*fleet_queue)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(key = %sink.key(), error = %e, "final metrics flush failed; these counts are lost")
        }
        Err(_) => tracing::warn!(key = %sink.key(), "final metrics flush timed out"),
    }
    flusher.abort();
    tracing::info!(worker_id = %w.id(), reason = reason.as_str(), "worker exiting");
    match reason {
        ExitReason::Error => crate::exit::FAILURE,
        _ => crate::exit::OK,
    }
}

/// SIGTERM/SIGINT flip the shutdown flag once; the loops drain and exit.
fn spawn_signal_listener(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
        }
        notify(&[NotifyState::Stopping]);
        let _ = tx.send(true);
    });
}

/// The fleet sink's store is the queue's per-host hash (the metrics module
/// knows no queue; the program connects the two).
impl crate::metrics::DeltaStore for Queue {
    type Error = crate::queue::QueueError;
    fn hash_incr(
        &self,
        key: &str,
        ints: &[(String, i64)],
        floats: &[(String, f64)],
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        Queue::hash_incr(self, key, ints, floats)
    }
}
