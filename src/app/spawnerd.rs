//! `peagen-spawnerd`: command line and signals around [`crate::spawner::run`].

use crate::spawner::Control;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// `peagen-spawnerd [--config FILE]`.
#[derive(clap::Parser, Debug)]
#[command(
    name = "peagen-spawnerd",
    version,
    about = "Autoscale peagen-worker@<uuid>.service units from the Redis queue",
    long_about = "Autoscale peagen-worker@<uuid>.service units from the Redis queue.\n\n\
Runs as the systemd service peagen-spawnerd.service. Every tick (and on every systemd \
signal about a worker unit) it reads the worker units from systemd and the queue from \
Redis, starts transient worker units for the backlog, stops idle ones, and re-queues the \
tasks of workers that died. It keeps no state of its own.",
    after_long_help = SPAWNERD_MORE
)]
pub(crate) struct SpawnerCli {
    /// Config file (default /etc/peagen/peagen.toml if present).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

const SPAWNERD_MORE: &str = "\
Signals: SIGTERM/SIGINT stop the spawner (worker units keep running and finish their \
tasks); SIGHUP re-reads the configuration (systemctl reload peagen-spawnerd validates it \
first with peagenctl config validate, so a broken file fails the reload visibly).

Readiness: READY=1 is sent once systemd answers; if Redis does not, the service is up with \
a STATUS= that names the Redis address and the error, and keeps retrying.

Exit status: 0 stopped; 69 metrics port unavailable; 78 configuration error.

Files: /etc/peagen/peagen.toml; metrics on metrics.spawner-listen (GET /metrics).

See also: peagenctl(1), peagen-worker(8), /usr/share/doc/peagen-fabric/operations.md";

/// Entry point; returns the process exit code.
pub fn cli_main() -> i32 {
    use clap::Parser;
    let cli = SpawnerCli::parse();
    let (cfg, rt) =
        match crate::telemetry::bootstrap("peagen-spawnerd", cli.config.as_deref(), true) {
            Ok(x) => x,
            Err(code) => return code,
        };
    let path = cli.config.or_else(|| {
        std::path::Path::new(crate::config::DEFAULT_PATH)
            .exists()
            .then(|| crate::config::DEFAULT_PATH.into())
    });
    rt.block_on(async move {
        let Some(ctl) = control_from_signals() else {
            tracing::error!("cannot install signal handlers");
            return crate::exit::FAILURE;
        };
        crate::spawner::run(cfg, path, ctl).await
    })
}

/// SIGTERM/SIGINT -> [`Control::Stop`], SIGHUP -> [`Control::Reload`]. The
/// streams are created before returning, so no signal is missed.
fn control_from_signals() -> Option<mpsc::UnboundedReceiver<Control>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return None;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(c).is_err() {
                return;
            }
        }
    });
    Some(rx)
}
