//! `peagenctl autoscale`: the seed's Compose loop as a supported command,
//! sized by the spawners' own policy. `--print-desired` prints the count
//! [`crate::fleet::pool_desired`] gives for the live queue (once, or every
//! interval with `--watch`); `--compose SERVICE` applies it with
//! `docker compose up -d --no-recreate --scale SERVICE=N`, scaling up at
//! once (at most `spawner.max-starts-per-tick` per interval) and down only
//! after `spawner.scale-down-window-secs` of lower demand: the same
//! [`policy::decide_towards`] the spawner runs.

use super::{unavailable, CtlError};
use crate::config::Config;
use crate::fleet_store::pool_view;
use crate::policy::{self, Memory, PolicyConfig, WorkerState, WorkerView};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["print_desired", "compose"])))]
pub struct AutoscaleArgs {
    /// Print the desired worker count for the live queue and exit.
    #[arg(long)]
    pub print_desired: bool,
    /// With --print-desired: print it every interval instead of once.
    #[arg(long, requires = "print_desired")]
    pub watch: bool,
    /// Keep this Docker Compose service at the desired count (runs until stopped).
    #[arg(long, value_name = "SERVICE")]
    pub compose: Option<String>,
    /// Compose file (docker compose -f FILE); default: Compose's own lookup.
    #[arg(long, value_name = "FILE", requires = "compose")]
    pub compose_file: Option<PathBuf>,
    /// Compose project name (docker compose -p NAME).
    #[arg(long, value_name = "NAME", requires = "compose")]
    pub project: Option<String>,
    /// Milliseconds between decisions.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval_ms: u64,
    /// With --compose: also re-queue the tasks of gone workers (the orphan
    /// sweep of peagen-spawnerd, every spawner.reclaim-interval-secs);
    /// Compose restarts no consumer that died with a task.
    #[arg(long, requires = "compose")]
    pub reclaim: bool,
}

/// The scale-down memory of the loop. Compose cannot say which replicas are
/// idle (and `--scale` stops whichever it picks), so every replica counts as
/// idle for the policy; the stabilization window and the per-interval start
/// limit are the spawner's.
pub struct Scaler {
    cfg: PolicyConfig,
    mem: Memory,
}

impl Scaler {
    pub fn new(cfg: PolicyConfig) -> Self {
        Scaler {
            cfg: PolicyConfig {
                idle_timeout: Duration::ZERO,
                ..cfg
            },
            mem: Memory::default(),
        }
    }

    /// The replica count to set now, given `running` replicas and the pool's
    /// desired count `want`.
    pub fn next(&mut self, want: u32, running: u32, now: Instant) -> u32 {
        let views: Vec<WorkerView> = (0..running)
            .map(|i| WorkerView {
                id: format!("{i:010}"),
                state: WorkerState::Idle { since: now },
            })
            .collect();
        let d = policy::decide_towards(&self.cfg, want, &views, self.mem, u32::MAX, now);
        self.mem = d.memory;
        running + d.start - d.stop.len() as u32
    }
}

pub(super) async fn autoscale(
    cfg: &Config,
    a: AutoscaleArgs,
    as_json: bool,
) -> Result<(), CtlError> {
    let q = super::connect(cfg).await?;
    let every = Duration::from_millis(a.interval_ms);
    let Some(service) = a.compose.clone() else {
        loop {
            let v = pool_view(cfg, &q).await.map_err(unavailable)?;
            if as_json {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                println!("{}", v.desired);
            }
            if !a.watch {
                return Ok(());
            }
            tokio::time::sleep(every).await;
        }
    };
    let compose = Compose {
        file: a.compose_file.clone(),
        project: a.project.clone(),
    };
    // Nothing is scaled before both Redis and docker answered once.
    let mut running = compose.running(&service).await.map_err(unavailable)?;
    let mut scaler = Scaler::new(PolicyConfig::from(&cfg.spawner));
    let mut reclaimer = a.reclaim.then(|| super::Reclaimer::new(cfg));
    loop {
        if let Some(r) = &mut reclaimer {
            r.tick(cfg, &q).await;
        }
        match pool_view(cfg, &q).await {
            Err(e) => {
                // As the spawner does: no reading, no change.
                eprintln!("peagenctl: reading the queue from Redis failed: {e}; keeping {running} replica(s)");
            }
            Ok(v) => {
                let next = scaler.next(v.desired, running, Instant::now());
                let line =
                    json!({"work": v.work, "desired": v.desired, "running": running, "set": next});
                if next != running {
                    match compose.scale(&service, next).await {
                        Ok(()) => {
                            println!("{line}");
                            running = next;
                        }
                        Err(e) => eprintln!("peagenctl: {e}; retrying next interval"),
                    }
                } else if as_json {
                    println!("{line}");
                }
            }
        }
        tokio::time::sleep(every).await;
        // Replicas that died or were scaled by hand count as they are.
        match compose.running(&service).await {
            Ok(n) => running = n,
            Err(e) => eprintln!("peagenctl: {e}; assuming {running} replica(s)"),
        }
    }
}

/// `docker compose` with the chosen file and project.
struct Compose {
    file: Option<PathBuf>,
    project: Option<String>,
}

impl Compose {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("docker");
        c.arg("compose");
        if let Some(f) = &self.file {
            c.arg("-f").arg(f);
        }
        if let Some(p) = &self.project {
            c.arg("-p").arg(p);
        }
        c.stdin(std::process::Stdio::null());
        c
    }

    async fn output(&self, args: &[&str]) -> Result<String, String> {
        let what = format!("docker compose {}", args.join(" "));
        let o = self
            .command()
            .args(args)
            .output()
            .await
            .map_err(|e| format!("cannot run {what}: {e} (is docker on PATH?)"))?;
        if !o.status.success() {
            return Err(format!(
                "{what} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Running replicas of `service` (`docker compose ps -q SERVICE`: running
    /// containers only, Compose's default).
    async fn running(&self, service: &str) -> Result<u32, String> {
        let out = self.output(&["ps", "-q", service]).await?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count() as u32)
    }

    async fn scale(&self, service: &str, n: u32) -> Result<(), String> {
        let scale = format!("{service}={n}");
        self.output(&["up", "-d", "--no-recreate", "--scale", &scale])
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: u64) -> PolicyConfig {
        PolicyConfig {
            min: 1,
            max: 32,
            warm_pool: 0,
            tasks_per_worker: 2,
            max_starts_per_tick: 8,
            scale_down_window: Duration::from_secs(window),
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn scales_up_at_once_within_the_start_limit() {
        let mut s = Scaler::new(cfg(300));
        let t = Instant::now();
        assert_eq!(s.next(5, 0, t), 5);
        // 8 starts per interval, as the spawner's max-starts-per-tick.
        assert_eq!(s.next(20, 5, t), 13);
        assert_eq!(s.next(20, 13, t), 20);
        assert_eq!(s.next(40, 20, t), 28, "max 32 still leaves room");
        assert_eq!(s.next(40, 32, t), 32, "never above max");
    }

    #[test]
    fn scales_down_only_after_the_window() {
        let mut s = Scaler::new(cfg(300));
        let t0 = Instant::now();
        assert_eq!(s.next(2, 10, t0), 10);
        assert_eq!(s.next(2, 10, t0 + Duration::from_secs(299)), 10);
        // Idle timeout does not apply: Compose cannot tell idle replicas.
        assert_eq!(s.next(2, 10, t0 + Duration::from_secs(300)), 2);
        // Demand back up in the window resets it.
        let mut s = Scaler::new(cfg(300));
        assert_eq!(s.next(2, 10, t0), 10);
        assert_eq!(s.next(10, 10, t0 + Duration::from_secs(200)), 10);
        assert_eq!(s.next(2, 10, t0 + Duration::from_secs(400)), 10);
        assert_eq!(s.next(2, 10, t0 + Duration::from_secs(700)), 2);
    }

    #[test]
    fn window_zero_follows_demand() {
        let mut s = Scaler::new(cfg(0));
        let t = Instant::now();
        assert_eq!(s.next(1, 6, t), 1);
        assert_eq!(s.next(1, 1, t), 1);
    }
}
