//! The worker inventory: worker units as systemd reports them, joined with
//! what each one holds in the queue. One classification of a unit's state
//! serves both `peagenctl workers` and the spawner's reconcile pass, so the
//! two never disagree about what "busy" or "starting" means.

use crate::config::Config;
use crate::queue::Queue;
use crate::systemd::{Systemd, UnitInfo};
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;

/// What a worker unit is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnitState {
    /// Activating, a start job queued, or a start call still in flight.
    Starting,
    Idle,
    /// Live and holding at least one pending entry.
    Busy,
    Stopping,
    Failed,
    Inactive,
}

impl UnitState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UnitState::Starting => "starting",
            UnitState::Idle => "idle",
            UnitState::Busy => "busy",
            UnitState::Stopping => "stopping",
            UnitState::Failed => "failed",
            UnitState::Inactive => "inactive",
        }
    }
}

/// Classify a unit from its systemd state, the entries its consumer holds and
/// whether the spawner's own start call for it is still in flight.
pub(crate) fn classify(u: &UnitInfo, pending: u64, start_in_flight: bool) -> UnitState {
    if !u.is_live() {
        return if u.active_state == "failed" {
            UnitState::Failed
        } else {
            UnitState::Inactive
        };
    }
    match u.active_state.as_str() {
        // Live but not yet activating: a start job is queued.
        "activating" | "inactive" | "failed" => UnitState::Starting,
        "deactivating" => UnitState::Stopping,
        _ if start_in_flight => UnitState::Starting,
        _ if pending > 0 => UnitState::Busy,
        _ => UnitState::Idle,
    }
}

/// One row of `peagenctl workers`: a worker unit and what it holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct WorkerRow {
    pub worker_id: String,
    pub unit: String,
    /// systemd ActiveState/SubState.
    pub active_state: String,
    pub sub_state: String,
    /// starting | idle | busy | stopping | failed | inactive
    pub state: String,
    pub pending: u64,
    pub current_task: Option<String>,
}

/// Worker units with state and current task, for `peagenctl workers`.
pub(crate) async fn list_workers(cfg: &Config) -> Result<Vec<WorkerRow>> {
    let sd = Systemd::connect(cfg.spawner.user_mode).await?;
    let units = sd.list_workers().await?;
    let q = Queue::connect(&cfg.redis).await?;
    let consumers: HashMap<String, u64> = q
        .consumers()
        .await?
        .into_iter()
        .map(|c| (c.name, c.pending))
        .collect();
    let mut rows = Vec::new();
    for u in units {
        let pending = consumers.get(&u.worker_id).copied().unwrap_or(0);
        let current_task = if pending > 0 {
            q.current_task_of(&u.worker_id).await?
        } else {
            None
        };
        rows.push(WorkerRow {
            state: classify(&u, pending, false).as_str().into(),
            worker_id: u.worker_id,
            unit: u.unit,
            active_state: u.active_state,
            sub_state: u.sub_state,
            pending,
            current_task,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(state: &str, job: &str) -> UnitInfo {
        UnitInfo {
            unit: "peagen-worker@x.service".into(),
            worker_id: "x".into(),
            active_state: state.into(),
            sub_state: String::new(),
            job_type: job.into(),
        }
    }

    #[test]
    fn one_classification_for_listing_and_reconcile() {
        use UnitState::*;
        for (state, job, pending, in_flight, want) in [
            ("activating", "", 0, false, Starting),
            ("activating", "", 3, false, Starting),
            ("deactivating", "", 1, false, Stopping),
            ("active", "", 0, false, Idle),
            ("reloading", "", 0, false, Idle),
            ("active", "", 2, false, Busy),
            ("active", "", 2, true, Starting),
            // A start job still queued: live, and starting (not idle).
            ("inactive", "start", 0, false, Starting),
            ("inactive", "", 0, false, Inactive),
            ("inactive", "stop", 0, false, Inactive),
            ("failed", "", 1, false, Failed),
        ] {
            let got = classify(&unit(state, job), pending, in_flight);
            assert_eq!(got, want, "{state} + {job:?} pending {pending}");
            // Live exactly when systemd's view says the unit holds a slot.
            assert_eq!(
                !matches!(got, Failed | Inactive),
                unit(state, job).is_live(),
                "{state}"
            );
        }
    }
}
