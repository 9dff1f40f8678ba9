//! `peagenctl workers` across hosts: this host's worker units from systemd
//! (when it can be reached) joined with every consumer of the group in
//! Redis, so the workers of the other hosts are listed too. The host of a
//! consumer comes from its name (`<host>-<uuid>`, [`fleet::owner_host`]);
//! whether that host is alive comes from the fleet record.

use super::{unavailable, CtlError};
use crate::config::Config;
use crate::fleet::{self, Host};
use crate::inventory::WorkerRow;
use crate::queue::ConsumerInfo;
use serde::Serialize;
use std::collections::HashMap;

/// One row of `peagenctl workers`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    /// The spawner host that started it; `None` for consumers named
    /// otherwise (started by hand, a Kubernetes pod).
    pub host: Option<String>,
    /// live | expired (heartbeat older than the timeout) | none (no spawner
    /// heartbeat for this host: a Kubernetes/Compose pool or a stale name).
    pub host_status: &'static str,
    pub worker_id: String,
    /// starting | idle | busy | stopping | failed | inactive (from systemd on
    /// this host); idle | busy (from the queue for other hosts).
    pub state: String,
    /// The worker's unit on this host; `None` elsewhere.
    pub unit: Option<String>,
    /// systemd ActiveState/SubState on this host; `None` elsewhere.
    pub unit_state: Option<String>,
    pub pending: u64,
    /// Since the consumer last read or claimed (Redis), when it is one.
    pub idle_ms: Option<u64>,
    pub current_task: Option<String>,
}

/// Join this host's units (`local`, empty when systemd was not reachable)
/// with the group's consumers (with their current task). Sorted by host,
/// then worker id; each worker once.
pub(crate) fn join(
    me: &str,
    local: &[WorkerRow],
    consumers: &[(ConsumerInfo, Option<String>)],
    hosts: &[Host],
    host_timeout_ms: u64,
) -> Vec<Row> {
    let status = |h: Option<&str>| match h.and_then(|h| hosts.iter().find(|x| x.id == h)) {
        Some(x) if x.age_ms <= host_timeout_ms => "live",
        Some(_) => "expired",
        None => "none",
    };
    let by_name: HashMap<&str, &ConsumerInfo> = consumers
        .iter()
        .map(|(c, _)| (c.name.as_str(), c))
        .collect();
    let mut rows: Vec<Row> = local
        .iter()
        .map(|r| Row {
            host: Some(me.to_string()),
            host_status: status(Some(me)),
            worker_id: r.worker_id.clone(),
            state: r.state.clone(),
            unit: Some(r.unit.clone()),
            unit_state: Some(format!("{}/{}", r.active_state, r.sub_state)),
            pending: r.pending,
            idle_ms: by_name.get(r.worker_id.as_str()).map(|c| c.idle_ms),
            current_task: r.current_task.clone(),
        })
        .collect();
    for (c, current) in consumers {
        if local.iter().any(|r| r.worker_id == c.name) {
            continue;
        }
        let host = fleet::owner_host(&c.name);
        rows.push(Row {
            host: host.map(str::to_string),
            host_status: status(host),
            worker_id: c.name.clone(),
            state: if c.pending > 0 { "busy" } else { "idle" }.into(),
            unit: None,
            unit_state: None,
            pending: c.pending,
            idle_ms: Some(c.idle_ms),
            current_task: current.clone(),
        });
    }
    rows.sort_by(|a, b| (&a.host, &a.worker_id).cmp(&(&b.host, &b.worker_id)));
    rows
}

pub(super) async fn workers(cfg: &Config, as_json: bool) -> Result<(), CtlError> {
    let me = fleet::host_id(&cfg.spawner.host_id);
    let local = match crate::inventory::list_workers(cfg).await {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("peagenctl: cannot list this host's worker units from systemd ({e}); showing every host's workers from the queue only");
            Vec::new()
        }
    };
    let q = super::connect(cfg).await?;
    let mut consumers = Vec::new();
    for c in q.consumers().await.map_err(unavailable)? {
        let current = if c.pending > 0 {
            q.current_task_of(&c.name).await.map_err(unavailable)?
        } else {
            None
        };
        consumers.push((c, current));
    }
    let (hosts, _) = crate::fleet_store::snapshot(cfg, &q)
        .await
        .map_err(unavailable)?;
    let rows = join(
        &me,
        &local,
        &consumers,
        &hosts,
        cfg.spawner.fleet_host_timeout_ms,
    );
    if as_json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{:<24} {:<7} {:<48} {:<9} {:<20} {:>7} {:>9}  current task",
        "host", "status", "worker id", "state", "unit state", "pending", "idle"
    );
    for r in rows {
        println!(
            "{:<24} {:<7} {:<48} {:<9} {:<20} {:>7} {:>9}  {}",
            r.host.as_deref().unwrap_or("-"),
            r.host_status,
            r.worker_id,
            r.state,
            r.unit_state.as_deref().unwrap_or("-"),
            r.pending,
            r.idle_ms
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            r.current_task.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Counts, HostState, ScaleScope};

    fn consumer(name: &str, pending: u64) -> (ConsumerInfo, Option<String>) {
        let c = ConsumerInfo {
            name: name.into(),
            pending,
            idle_ms: 1500,
        };
        (c, (pending > 0).then(|| format!("task-of-{name}")))
    }

    fn host(id: &str, age_ms: u64) -> Host {
        Host {
            id: id.into(),
            state: HostState {
                max: 4,
                workers: Counts::default(),
                scope: ScaleScope::Fleet,
                share: 0,
                desired: 0,
            },
            age_ms,
        }
    }

    #[test]
    fn joins_local_units_with_other_hosts_consumers() {
        let a = "boxa-0b6c8c4e-4a3c-4f5e-9d7a-2f1b0c9d8e7f";
        let b = "boxb-1b6c8c4e-4a3c-4f5e-9d7a-2f1b0c9d8e7f";
        let local = vec![WorkerRow {
            worker_id: a.into(),
            unit: "peagen-worker@x.service".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            state: "busy".into(),
            pending: 1,
            current_task: Some("t1".into()),
        }];
        let consumers = vec![consumer(a, 1), consumer(b, 0), consumer("pod-7f9c", 2)];
        let hosts = vec![host("boxa", 100), host("boxb", 60_000)];
        let rows = join("boxa", &local, &consumers, &hosts, 10_000);
        let got: Vec<(Option<&str>, &str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.host.as_deref(),
                    r.host_status,
                    r.worker_id.as_str(),
                    r.state.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (None, "none", "pod-7f9c", "busy"),
                (Some("boxa"), "live", a, "busy"),
                (Some("boxb"), "expired", b, "idle"),
            ]
        );
        // This host's row keeps systemd's view and gains Redis's idle time.
        assert_eq!(rows[1].unit_state.as_deref(), Some("active/running"));
        assert_eq!(rows[1].unit.as_deref(), Some("peagen-worker@x.service"));
        assert_eq!(rows[2].unit, None);
        assert_eq!(rows[1].idle_ms, Some(1500));
        assert_eq!(rows[0].current_task.as_deref(), Some("task-of-pod-7f9c"));
    }
}
