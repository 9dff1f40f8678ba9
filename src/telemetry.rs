//! Logging: journald's native protocol when stderr is the journal (so fields
//! like `TASK_ID`/`WORKER_ID` are queryable with `journalctl TASK_ID=...`),
//! text on a terminal, JSON on request.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// True when `$JOURNAL_STREAM` names the device:inode of our stderr, i.e.
/// systemd connected stderr to journald.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(js) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = js.split_once(':') else {
        return false;
    };
    let Ok(md) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(md.dev()) && ino.parse::<u64>().ok() == Some(md.ino())
}

/// Install the global subscriber. Safe to call once per process; later calls
/// are ignored (tests).
pub fn init(cfg: &LogConfig, identifier: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match cfg.format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(l) => registry
                .with(
                    l.with_field_prefix(None)
                        .with_syslog_identifier(identifier.to_string()),
                )
                .try_init(),
            // No journal socket: fall back to text on stderr.
            Err(_) => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init(),
        },
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        _ => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
    let _ = res;
}

/// sd_notify wrapper: a no-op outside systemd. Uses the safe `notify()` (the
/// `*_and_unset_env` variants are unsafe once threads exist).
pub fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

/// Half the watchdog interval requested by systemd, if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Common start of the daemons: load config (exit 78 on error), set up
/// logging, build the runtime. `Err` carries the exit code.
pub fn bootstrap(
    binary: &str,
    config: Option<&std::path::Path>,
    multi_thread: bool,
) -> Result<(crate::config::Config, tokio::runtime::Runtime), i32> {
    let cfg = crate::config::Config::load(config).map_err(|e| {
        eprintln!("{binary}: {e}");
        crate::exit::CONFIG
    })?;
    init(&cfg.log, binary);
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = builder.enable_all().build().map_err(|e| {
        eprintln!("{binary}: cannot start the async runtime: {e}");
        crate::exit::FAILURE
    })?;
    Ok((cfg, rt))
}
