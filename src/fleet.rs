//! Fleet-wide sizing across hosts: pure functions, no I/O.
//!
//! Every `peagen-spawnerd` heartbeats its host's state into one Redis record
//! ([`crate::fleet_store`]); from the same snapshot each host computes
//! - the fleet's desired count: [`crate::policy::desired`] applied to the
//!   queue's work with `max` = the sum of the live hosts' `max` (so `min` and
//!   `warm-pool` are fleet-wide), and
//! - its own share of it with [`shares`]: hosts sorted by id, an equal split
//!   with the remainder to the first ones, each capped by its own `max`; what a
//!   capped host cannot take goes to the others (water-filling).
//!
//! Every host runs the same function on the same snapshot, so the shares add
//! up to the desired count without any coordination beyond Redis.
//!
//! Worker ids (= Redis consumer names) made by a spawner are
//! `<host>-<uuid>` ([`worker_id`]), so when a host's heartbeat expires the
//! surviving spawners can tell which consumers were its own ([`owner_host`]).

use crate::policy::{self, Backlog, PolicyConfig, WorkerState, WorkerView};
use serde::{Deserialize, Serialize};

/// Where `min`, `warm-pool` and the desired count apply
/// (`spawner.scale-scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleScope {
    /// One desired count for all hosts sharing the queue, split into shares.
    #[default]
    Fleet,
    /// Each host sizes itself for the whole queue (the pre-fleet behaviour).
    Host,
}

/// Workers of one host by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub starting: u32,
    pub idle: u32,
    pub busy: u32,
    pub stopping: u32,
}

impl Counts {
    pub fn of(views: &[WorkerView]) -> Counts {
        let mut c = Counts::default();
        for v in views {
            match v.state {
                WorkerState::Starting => c.starting += 1,
                WorkerState::Idle { .. } => c.idle += 1,
                WorkerState::Busy => c.busy += 1,
                WorkerState::Stopping => c.stopping += 1,
            }
        }
        c
    }

    /// Workers counted as capacity (stopping ones are not).
    pub fn capacity(&self) -> u32 {
        self.starting + self.idle + self.busy
    }
}

/// What a spawner writes into the fleet record each reconcile (the time it
/// was seen comes from Redis `TIME`, kept beside it by the script).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostState {
    pub max: u32,
    pub workers: Counts,
    pub scope: ScaleScope,
    /// The share this host computed at its previous reconcile (for operators).
    pub share: u32,
    /// The fleet-wide desired count it computed then.
    pub desired: u32,
}

/// One live host in a fleet snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub id: String,
    pub state: HostState,
    /// Milliseconds since its last heartbeat (Redis clock).
    pub age_ms: u64,
}

/// Deterministic split of `desired` workers over hosts given as
/// `(id, max)`. Returns `(id, share)` sorted by id. Hosts are sorted by id;
/// every round gives each host that still has room an equal part of what is
/// left (capped by its room); when less is left than there are such hosts,
/// the first ones in id order get one more. The total is
/// `min(desired, sum of max)`. Duplicate ids count once (first `max` kept).
pub fn shares(desired: u32, hosts: &[(String, u32)]) -> Vec<(String, u32)> {
    let mut hs: Vec<(String, u32)> = hosts.to_vec();
    hs.sort_by(|a, b| a.0.cmp(&b.0));
    hs.dedup_by(|b, a| a.0 == b.0);
    let cap: u64 = hs.iter().map(|h| u64::from(h.1)).sum();
    let mut left = u64::from(desired).min(cap);
    let mut got = vec![0u32; hs.len()];
    while left > 0 {
        let open: Vec<usize> = (0..hs.len()).filter(|&i| got[i] < hs[i].1).collect();
        if open.is_empty() {
            break;
        }
        let per = left / open.len() as u64;
        if per == 0 {
            for &i in open.iter().take(left as usize) {
                got[i] += 1;
            }
            break;
        }
        for &i in &open {
            let g = per.min(u64::from(hs[i].1 - got[i]));
            got[i] += g as u32;
            left -= g;
        }
    }
    hs.into_iter()
        .zip(got)
        .map(|((id, _), g)| (id, g))
        .collect()
}

/// The fleet's desired count: the host policy with `max` = the sum of the
/// live hosts' `max` (saturating).
pub fn fleet_desired(cfg: &PolicyConfig, backlog: &Backlog, max_sum: u32) -> u32 {
    let mut c = cfg.clone();
    c.max = max_sum;
    policy::desired(&c, backlog)
}

/// The desired worker count an external pool (Kubernetes, Compose, the
/// `peagenctl` exporter and autoscaler) should have: with fleet-scope
/// spawner hosts alive (`hosts` = their `(id, max)`), the fleet's desired
/// count as those hosts compute it ([`fleet_desired`] over the sum of their
/// `max`); with none, the host policy with the configured `max`
/// ([`policy::desired`]). One function, so the exported gauge and the
/// autoscaler never disagree with the spawners.
pub fn pool_desired(cfg: &PolicyConfig, backlog: &Backlog, hosts: &[(String, u32)]) -> u32 {
    if hosts.is_empty() {
        return policy::desired(cfg, backlog);
    }
    let max_sum = hosts
        .iter()
        .map(|h| u64::from(h.1))
        .sum::<u64>()
        .min(u64::from(u32::MAX)) as u32;
    fleet_desired(cfg, backlog, max_sum)
}

/// What one host aims for this pass. `hosts` is the fleet snapshot including
/// this host; in host scope the fleet is ignored. Returns `(share, desired)`.
pub fn target(
    scope: ScaleScope,
    me: &str,
    cfg: &PolicyConfig,
    backlog: &Backlog,
    hosts: &[(String, u32)],
) -> (u32, u32) {
    match scope {
        ScaleScope::Host => {
            let d = policy::desired(cfg, backlog);
            (d, d)
        }
        ScaleScope::Fleet => {
            let mut hs = hosts.to_vec();
            if !hs.iter().any(|h| h.0 == me) {
                hs.push((me.to_string(), cfg.max));
            }
            let max_sum = hs
                .iter()
                .map(|h| u64::from(h.1))
                .sum::<u64>()
                .min(u64::from(u32::MAX)) as u32;
            let d = fleet_desired(cfg, backlog, max_sum);
            let share = shares(d, &hs)
                .into_iter()
                .find(|(id, _)| id == me)
                .map(|(_, s)| s)
                .unwrap_or(0);
            (share.min(cfg.max), d)
        }
    }
}

/// The configured host id, or the hostname when none is configured.
pub fn host_id(configured: &str) -> String {
    if configured.is_empty() {
        crate::telemetry::hostname()
    } else {
        configured.to_string()
    }
}

/// A configured host id goes into unit names and Redis consumer names:
/// letters, digits, `.`, `_` and `-` only (empty = the hostname).
pub fn check_host_id(id: &str) -> Result<(), String> {
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "{id:?} contains {c:?}; use letters, digits, '.', '_' and '-' only"
        )),
        None if id.len() > 64 => Err(format!("{id:?} is longer than 64 characters")),
        None => Ok(()),
    }
}

/// Length of a hyphenated UUID.
const UUID_LEN: usize = 36;
/// Prefix of the consumer the orphan sweep claims with (`peagen-spawnerd-<host>`).
pub const CLAIMER_PREFIX: &str = "peagen-spawnerd-";

/// The id (and Redis consumer name) of a worker a spawner on `host` starts.
pub fn worker_id(host: &str, uuid: &uuid::Uuid) -> String {
    format!("{host}-{}", uuid.hyphenated())
}

/// The host whose spawner made this consumer: `<host>-<uuid>` (a worker it
/// started) or `peagen-spawnerd-<host>` (its orphan-sweep claimer). `None`
/// for other names (workers started by hand, pre-fleet uuid-only ids).
pub fn owner_host(consumer: &str) -> Option<&str> {
    if let Some(h) = consumer.strip_prefix(CLAIMER_PREFIX) {
        return (!h.is_empty()).then_some(h);
    }
    let n = consumer.len();
    if n < UUID_LEN + 2 || !consumer.is_char_boundary(n - UUID_LEN - 1) {
        return None;
    }
    let (host, rest) = consumer.split_at(n - UUID_LEN - 1);
    let u = rest.strip_prefix('-')?;
    // Only the canonical lowercase hyphenated form that `worker_id` writes.
    let ok = uuid::Uuid::try_parse(u).is_ok_and(|p| p.hyphenated().to_string() == u);
    ok.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hs(maxes: &[u32]) -> Vec<(String, u32)> {
        maxes
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("h{i}"), *m))
            .collect()
    }

    /// Reference: hand out one worker at a time, round-robin over the hosts
    /// in id order, skipping full ones.
    fn round_robin(desired: u32, hosts: &[(String, u32)]) -> Vec<(String, u32)> {
        let mut h = hosts.to_vec();
        h.sort();
        let mut got = vec![0u32; h.len()];
        let mut left = desired;
        'outer: while left > 0 {
            let mut gave = false;
            for i in 0..h.len() {
                if left == 0 {
                    break 'outer;
                }
                if got[i] < h[i].1 {
                    got[i] += 1;
                    left -= 1;
                    gave = true;
                }
            }
            if !gave {
                break;
            }
        }
        h.into_iter().zip(got).map(|((id, _), g)| (id, g)).collect()
    }

    /// Every fleet of up to 4 hosts with max 0..=5 each, every desired count
    /// 0..=22: equal to the round-robin reference, total = min(desired, sum
    /// max), each within its max, uncapped hosts within one of each other and
    /// the larger ones first, and monotone in `desired`.
    #[test]
    fn shares_exhaustive() {
        let mut cases = 0u64;
        for n in 0..=4usize {
            let mut maxes = vec![0u32; n];
            loop {
                let h = hs(&maxes);
                let sum: u32 = maxes.iter().sum();
                let mut prev: Option<Vec<(String, u32)>> = None;
                for d in 0..=22u32 {
                    let s = shares(d, &h);
                    assert_eq!(s, round_robin(d, &h), "d={d} maxes={maxes:?}");
                    assert_eq!(s.iter().map(|x| x.1).sum::<u32>(), d.min(sum));
                    for (i, (_, g)) in s.iter().enumerate() {
                        assert!(*g <= maxes[i]);
                    }
                    let uncapped: Vec<u32> = s
                        .iter()
                        .enumerate()
                        .filter(|(i, (_, g))| *g < maxes[*i])
                        .map(|(_, (_, g))| *g)
                        .collect();
                    // Hosts with room left differ by at most one, and no
                    // full host got more than one above those with room.
                    if let (Some(lo), Some(hi)) = (uncapped.iter().min(), uncapped.iter().max()) {
                        assert!(hi - lo <= 1, "d={d} maxes={maxes:?} {s:?}");
                        assert!(uncapped.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
                        for (i, (_, g)) in s.iter().enumerate() {
                            if *g == maxes[i] {
                                assert!(*g <= hi + 1, "d={d} maxes={maxes:?} {s:?}");
                            }
                        }
                    }
                    if let Some(p) = &prev {
                        for (a, b) in p.iter().zip(&s) {
                            assert!(b.1 >= a.1, "not monotone at d={d}: {p:?} -> {s:?}");
                        }
                    }
                    prev = Some(s);
                    cases += 1;
                }
                // Next max vector (odometer over 0..=5).
                let mut i = 0;
                while i < n {
                    maxes[i] += 1;
                    if maxes[i] <= 5 {
                        break;
                    }
                    maxes[i] = 0;
                    i += 1;
                }
                if i == n {
                    break;
                }
            }
        }
        assert!(cases > 30_000, "{cases}");
    }

    #[test]
    fn shares_ignore_input_order_and_duplicates() {
        let a = vec![("b".to_string(), 3), ("a".to_string(), 5), ("c".into(), 1)];
        let mut b = a.clone();
        b.reverse();
        for d in 0..12 {
            assert_eq!(shares(d, &a), shares(d, &b));
        }
        let dup = vec![("a".to_string(), 2), ("a".to_string(), 9)];
        assert_eq!(shares(5, &dup), vec![("a".to_string(), 2)]);
    }

    #[test]
    fn shares_examples() {
        let three = hs(&[16, 16, 16]);
        let v = |s: Vec<(String, u32)>| s.into_iter().map(|x| x.1).collect::<Vec<_>>();
        assert_eq!(v(shares(20, &three)), vec![7, 7, 6]);
        assert_eq!(v(shares(2, &three)), vec![1, 1, 0]);
        assert_eq!(v(shares(20, &hs(&[2, 16, 16]))), vec![2, 9, 9]);
        assert_eq!(v(shares(100, &hs(&[2, 3]))), vec![2, 3]);
        assert!(shares(5, &[]).is_empty());
    }

    fn cfg(min: u32, max: u32, warm: u32) -> PolicyConfig {
        PolicyConfig {
            min,
            max,
            warm_pool: warm,
            tasks_per_worker: 2,
            max_starts_per_tick: 8,
            scale_down_window: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn work(n: u64) -> Backlog {
        Backlog {
            lag: Some(n),
            length: n,
            pending: 0,
        }
    }

    #[test]
    fn fleet_target_splits_the_policy_count() {
        let h = hs(&[16, 16, 16]);
        let c = cfg(0, 16, 0);
        // 40 tasks, 2 per worker: 20 fleet-wide, not 16 per host.
        let t: Vec<(u32, u32)> = ["h0", "h1", "h2"]
            .iter()
            .map(|me| target(ScaleScope::Fleet, me, &c, &work(40), &h))
            .collect();
        assert_eq!(t, vec![(7, 20), (7, 20), (6, 20)]);
        // Warm pool 2 on an idle queue: 2 in total.
        let c = cfg(0, 16, 2);
        let sum: u32 = ["h0", "h1", "h2"]
            .iter()
            .map(|me| target(ScaleScope::Fleet, me, &c, &work(0), &h).0)
            .sum();
        assert_eq!(sum, 2);
        // min 1 is fleet-wide too.
        let c = cfg(1, 16, 0);
        assert_eq!(target(ScaleScope::Fleet, "h0", &c, &work(0), &h), (1, 1));
        assert_eq!(target(ScaleScope::Fleet, "h2", &c, &work(0), &h), (0, 1));
        // Host scope: the old per-host sizing, capped by this host's max.
        let c = cfg(0, 16, 0);
        assert_eq!(target(ScaleScope::Host, "h2", &c, &work(40), &h), (16, 16));
    }

    #[test]
    fn fleet_target_without_own_record_counts_itself() {
        // First pass before the heartbeat landed: alone, it takes everything.
        let c = cfg(0, 16, 0);
        assert_eq!(
            target(ScaleScope::Fleet, "me", &c, &work(40), &[]),
            (16, 16)
        );
        // Others' huge max cannot push this host's share above its own max.
        let others = vec![("a".to_string(), 1000)];
        let (s, d) = target(ScaleScope::Fleet, "0", &c, &work(4000), &others);
        assert!(s <= 16 && d == 1016, "{s} {d}");
    }

    #[test]
    fn pool_desired_is_the_spawners_count() {
        // No spawner hosts: the seed's compose loop, max(1, min(32, work / 2)).
        let c = cfg(1, 32, 0);
        for (w, want) in [(0, 1), (1, 1), (3, 1), (10, 5), (64, 32), (1000, 32)] {
            assert_eq!(pool_desired(&c, &work(w), &[]), want, "work {w}");
        }
        // Fleet-scope hosts alive: exactly what each of them computes.
        let h = hs(&[16, 16, 16]);
        let c = cfg(0, 16, 2);
        for w in [0, 1, 7, 40, 500] {
            assert_eq!(
                pool_desired(&c, &work(w), &h),
                target(ScaleScope::Fleet, "h1", &c, &work(w), &h).1,
                "work {w}"
            );
        }
        assert_eq!(pool_desired(&c, &work(40), &h), 22);
    }

    #[test]
    fn host_ids_fit_unit_and_consumer_names() {
        assert!(check_host_id("").is_ok());
        assert!(check_host_id("box-1.example_x").is_ok());
        assert!(check_host_id("box 1").is_err());
        assert!(check_host_id("a/b").is_err());
        assert!(check_host_id(&"x".repeat(65)).is_err());
        assert_eq!(host_id("given"), "given");
        assert_eq!(host_id(""), crate::telemetry::hostname());
    }

    #[test]
    fn worker_ids_name_their_host() {
        let u = uuid::Uuid::new_v4();
        for host in ["box1", "box-2", "a.b.example", "x"] {
            let id = worker_id(host, &u);
            assert_eq!(owner_host(&id), Some(host));
        }
        assert_eq!(owner_host("peagen-spawnerd-box1"), Some("box1"));
        assert_eq!(owner_host("peagen-spawnerd-"), None);
        // Pre-fleet ids (bare uuid), hand-started workers (<host>-<12 hex>).
        assert_eq!(owner_host(&u.to_string()), None);
        assert_eq!(owner_host("box1-0123456789ab"), None);
        assert_eq!(owner_host(&format!("box1_{u}")), None);
        assert_eq!(
            owner_host(&format!("box1-{}", u.to_string().to_uppercase())),
            None
        );
        assert_eq!(owner_host(""), None);
        assert_eq!(owner_host("é"), None);
    }
}
