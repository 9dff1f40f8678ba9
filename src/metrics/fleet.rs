//! Fleet metrics: workers flush counter deltas into a per-host Redis hash
//! (`RedisConfig::fleet_metrics_key`), the host's spawner exports the hash.

use super::{render, Labels, SharedRegistry};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A sample value: integer counters/buckets/counts, or float counters/sums.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(u64),
    Float(f64),
}

impl Num {
    fn parse(s: &str) -> Option<Num> {
        if let Ok(u) = s.parse::<u64>() {
            return Some(Num::Int(u));
        }
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Num::Float)
    }
}

/// Parse `name{k="v",...}` at the start of `s` (label values unescaped);
/// returns the name, the labels and the rest of `s`.
fn parse_series_prefix(s: &str) -> Option<(&str, Labels, &str)> {
    let end = s.find(['{', ' ']).unwrap_or(s.len());
    let name = &s[..end];
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    let Some(mut r) = s[end..].strip_prefix('{') else {
        return Some((name, labels, &s[end..]));
    };
    loop {
        r = r.trim_start_matches(',');
        if let Some(rest) = r.strip_prefix('}') {
            return Some((name, labels, rest));
        }
        let eq = r.find('=')?;
        let key = r[..eq].to_string();
        r = r[eq + 1..].strip_prefix('"')?;
        let mut val = String::new();
        let mut chars = r.char_indices();
        let close = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                (_, c) => val.push(c),
            }
        };
        labels.push((key, val));
        r = &r[close + 1..];
    }
}

/// Parse a hash field (a series in Prometheus text form).
pub fn parse_series(s: &str) -> Option<(String, Labels)> {
    match parse_series_prefix(s)? {
        (name, labels, "") => Some((name.to_string(), labels)),
        _ => None,
    }
}

/// Canonical series text: labels in order, `le` last, values escaped.
pub fn series_text(name: &str, labels: &[(String, String)]) -> String {
    let mut out = name.to_string();
    let ordered = labels
        .iter()
        .filter(|(k, _)| k != "le")
        .chain(labels.iter().filter(|(k, _)| k == "le"));
    for (i, (k, v)) in ordered.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        out.push_str(&format!("{k}=\"{v}\""));
    }
    if !labels.is_empty() {
        out.push('}');
    }
    out
}

/// The counter and histogram series (`_total`, `_bucket`, `_sum`, `_count`)
/// of an encoded registry; gauges, info and `_created` are skipped.
pub fn fleet_series(text: &str) -> BTreeMap<String, Num> {
    let mut out = BTreeMap::new();
    let mut keep = false;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            keep = matches!(t.rsplit(' ').next(), Some("counter" | "histogram"));
            continue;
        }
        if !keep || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, rest)) = parse_series_prefix(line) else {
            continue;
        };
        if !["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suf| name.ends_with(suf))
        {
            continue;
        }
        // `value` or `value # exemplar`
        let Some(v) = rest.split_whitespace().next().and_then(Num::parse) else {
            continue;
        };
        out.insert(series_text(name, &labels), v);
    }
    out
}

/// Integer (`HINCRBY`) and float (`HINCRBYFLOAT`) increments, by field.
pub type FleetDeltas = (Vec<(String, i64)>, Vec<(String, f64)>);

/// What to add to the hash so it matches `current`, given what was already
/// flushed. New series are included even at 0 (that creates the field).
pub fn fleet_deltas(
    flushed: &BTreeMap<String, Num>,
    current: &BTreeMap<String, Num>,
) -> FleetDeltas {
    let (mut ints, mut floats) = (Vec::new(), Vec::new());
    for (k, v) in current {
        let prev = flushed.get(k);
        match (*v, prev.copied()) {
            (Num::Int(c), None) => ints.push((k.clone(), c as i64)),
            (Num::Int(c), Some(Num::Int(p))) if c != p => {
                ints.push((k.clone(), c.saturating_sub(p) as i64))
            }
            (Num::Int(_), Some(_)) => {}
            (Num::Float(c), None) => floats.push((k.clone(), c)),
            (Num::Float(c), Some(p)) => {
                let p = match p {
                    Num::Int(p) => p as f64,
                    Num::Float(p) => p,
                };
                if c != p {
                    floats.push((k.clone(), c - p));
                }
            }
        }
    }
    (ints, floats)
}

/// Worker side: flushes the counter deltas of the worker registry into the
/// host's hash. Nothing is lost when Redis is down: only what was flushed
/// successfully (one MULTI/EXEC) is marked as flushed.
pub struct FleetSink {
    reg: SharedRegistry,
    key: String,
    flushed: tokio::sync::Mutex<BTreeMap<String, Num>>,
}

impl FleetSink {
    pub fn new(reg: SharedRegistry, key: String) -> Self {
        FleetSink {
            reg,
            key,
            flushed: Default::default(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Flush the deltas since the last successful flush; returns how many
    /// fields were incremented.
    pub async fn flush<S: DeltaStore>(&self, store: &S) -> Result<usize, S::Error> {
        // Held across the round trip: concurrent flushes would double-count.
        let mut flushed = self.flushed.lock().await;
        let current = fleet_series(&render(&self.reg.lock().expect("metrics lock")));
        let (ints, floats) = fleet_deltas(&flushed, &current);
        let n = ints.len() + floats.len();
        if n > 0 {
            store.hash_incr(&self.key, &ints, &floats).await?;
            *flushed = current;
        }
        Ok(n)
    }

    /// Flush every `every` forever (errors are logged; deltas wait).
    pub async fn run<S: DeltaStore + Sync>(
        self: Arc<Self>,
        store: Arc<S>,
        every: std::time::Duration,
    ) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.flush(&*store).await {
                tracing::warn!(key = %self.key, error = %e, "cannot flush metrics to Redis; keeping them for the next flush");
            }
        }
    }
}

/// Where flushed deltas go: the host's Redis hash, i.e. the queue (its
/// implementation is wired in by the worker program), so this module
/// imports no queue code.
pub trait DeltaStore {
    type Error: std::fmt::Display;
    /// Add `ints` (`HINCRBY`) and `floats` (`HINCRBYFLOAT`) to hash `key`,
    /// all or nothing.
    fn hash_incr(
        &self,
        key: &str,
        ints: &[(String, i64)],
        floats: &[(String, f64)],
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// Spawner side: exports a snapshot of the host's hash at scrape time.
/// Fields `peagen_*_total` become counters, `_bucket/_sum/_count` become
/// histograms. The hash only grows, so the counters are monotonic; deleting
/// the hash is a counter reset, which Prometheus handles.
#[derive(Debug, Clone, Default)]
pub struct FleetCollector {
    snap: Arc<Mutex<BTreeMap<String, String>>>,
}

#[derive(Default)]
struct HistSnap {
    sum: f64,
    count: u64,
    /// (le, cumulative count)
    buckets: Vec<(f64, u64)>,
}

impl FleetCollector {
    /// Replace the snapshot (the spawner calls this each tick).
    pub fn set(&self, m: BTreeMap<String, String>) {
        *self.snap.lock().expect("fleet snapshot lock") = m;
    }
}

const FLEET_HELP: &str = "Sum over this host's workers (flushed to Redis by each worker)";

impl prometheus_client::collector::Collector for FleetCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::MetricType;
        let mut counters: BTreeMap<String, Vec<(Labels, Num)>> = BTreeMap::new();
        let mut hists: BTreeMap<String, BTreeMap<Labels, HistSnap>> = BTreeMap::new();
        for (field, value) in self.snap.lock().expect("fleet snapshot lock").iter() {
            let (Some((name, mut labels)), Some(v)) = (parse_series(field), Num::parse(value))
            else {
                continue;
            };
            // The registry adds the `peagen_` prefix (and `_total`) back.
            let Some(name) = name.strip_prefix("peagen_") else {
                continue;
            };
            let as_u64 = match v {
                Num::Int(u) => u,
                Num::Float(f) => f.max(0.0) as u64,
            };
            if let Some(fam) = name.strip_suffix("_total") {
                counters
                    .entry(fam.to_string())
                    .or_default()
                    .push((labels, v));
            } else if let Some(fam) = name.strip_suffix("_bucket") {
                let Some(i) = labels.iter().position(|(k, _)| k == "le") else {
                    continue;
                };
                let le = labels.remove(i).1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    match le.parse() {
                        Ok(x) => x,
                        Err(_) => continue,
                    }
                };
                let h = hists.entry(fam.into()).or_default();
                h.entry(labels).or_default().buckets.push((le, as_u64));
            } else if let Some(fam) = name.strip_suffix("_sum") {
                let h = hists.entry(fam.into()).or_default();
                h.entry(labels).or_default().sum = match v {
                    Num::Int(u) => u as f64,
                    Num::Float(f) => f,
                };
            } else if let Some(fam) = name.strip_suffix("_count") {
                let h = hists.entry(fam.into()).or_default();
                h.entry(labels).or_default().count = as_u64;
            }
        }
        for (fam, series) in &counters {
            let mut me = enc.encode_descriptor(fam, FLEET_HELP, None, MetricType::Counter)?;
            for (labels, v) in series {
                let fe = me.encode_family(labels)?;
                match *v {
                    Num::Int(u) => ConstCounter::new(u).encode(fe)?,
                    Num::Float(f) => ConstCounter::new(f).encode(fe)?,
                }
            }
        }
        for (fam, series) in &hists {
            let mut me = enc.encode_descriptor(fam, FLEET_HELP, None, MetricType::Histogram)?;
            for (labels, h) in series {
                // The encoder wants per-bucket counts; the hash holds cumulative ones.
                let mut cum = h.buckets.clone();
                cum.sort_by(|a, b| a.0.total_cmp(&b.0));
                if cum.last().is_none_or(|b| b.0 != f64::INFINITY) {
                    cum.push((f64::INFINITY, h.count));
                }
                let mut prev = 0;
                let per: Vec<(f64, u64)> = cum
                    .iter()
                    .map(|&(le, c)| {
                        let d = c.saturating_sub(prev);
                        prev = prev.max(c);
                        (le, d)
                    })
                    .collect();
                me.encode_family(labels)?
                    .encode_histogram::<Labels>(h.sum, h.count, &per, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{labels, new_registry, WorkerMetrics};

    #[test]
    fn series_parse_and_print_round_trip() {
        let f = r#"peagen_tasks_total{kind="a\"b\\c\nd",status="ok"}"#;
        let (name, l) = parse_series(f).unwrap();
        assert_eq!(name, "peagen_tasks_total");
        assert_eq!(l[0], ("kind".into(), "a\"b\\c\nd".into()));
        assert_eq!(series_text(&name, &l), f);
        assert_eq!(
            parse_series("peagen_x_total").unwrap(),
            ("peagen_x_total".into(), vec![])
        );
        assert!(parse_series("peagen_x{a=\"1\"} junk").is_none());
        // `le` goes last
        let l = labels(&[("le", "0.5"), ("kind", "echo")]);
        assert_eq!(
            series_text("h_bucket", &l),
            r#"h_bucket{kind="echo",le="0.5"}"#
        );
    }

    #[test]
    fn worker_registry_series_and_deltas() {
        let mut r = new_registry();
        let m = WorkerMetrics::new(&mut r);
        m.queue_pending.set([("echo".to_string(), 7)].into());
        m.tasks
            .get_or_create(&labels(&[("kind", "echo"), ("status", "ok")]))
            .inc();
        m.task_duration
            .get_or_create(&labels(&[("kind", "echo")]))
            .observe(0.0015);
        m.busy_seconds.inc_by(0.25);
        let cur = fleet_series(&render(&r));
        // gauges and build_info are not flushed
        assert!(!cur.keys().any(|k| k.contains("queue_pending")), "{cur:?}");
        assert!(!cur.keys().any(|k| k.contains("build_info")), "{cur:?}");
        assert_eq!(
            cur[r#"peagen_tasks_total{kind="echo",status="ok"}"#],
            Num::Int(1)
        );
        assert_eq!(
            cur[r#"peagen_worker_exit_reason_total{reason="error"}"#],
            Num::Int(0)
        );
        assert_eq!(
            cur[r#"peagen_task_duration_seconds_bucket{kind="echo",le="0.001"}"#],
            Num::Int(0)
        );
        assert_eq!(
            cur[r#"peagen_task_duration_seconds_bucket{kind="echo",le="0.002"}"#],
            Num::Int(1)
        );
        assert_eq!(
            cur[r#"peagen_task_duration_seconds_bucket{kind="echo",le="+Inf"}"#],
            Num::Int(1)
        );
        assert_eq!(
            cur[r#"peagen_task_duration_seconds_count{kind="echo"}"#],
            Num::Int(1)
        );
        assert_eq!(cur["peagen_worker_busy_seconds_total"], Num::Float(0.25));
        // First flush: everything, zeros included (creates the fields).
        let (ints, floats) = fleet_deltas(&BTreeMap::new(), &cur);
        assert!(ints.contains(&(
            r#"peagen_worker_exit_reason_total{reason="idle"}"#.into(),
            0
        )));
        assert!(floats.contains(&("peagen_worker_busy_seconds_total".into(), 0.25)));
        // Then only what changed.
        m.tasks
            .get_or_create(&labels(&[("kind", "echo"), ("status", "ok")]))
            .inc_by(2);
        m.busy_seconds.inc_by(0.5);
        let next = fleet_series(&render(&r));
        let (ints, floats) = fleet_deltas(&cur, &next);
        assert_eq!(
            ints,
            vec![(r#"peagen_tasks_total{kind="echo",status="ok"}"#.into(), 2)]
        );
        assert_eq!(
            floats,
            vec![("peagen_worker_busy_seconds_total".into(), 0.5)]
        );
        assert_eq!(fleet_deltas(&next, &next), (vec![], vec![]));
    }

    #[test]
    fn collector_exports_counters_and_histograms() {
        let mut r = new_registry();
        let c = FleetCollector::default();
        r.register_collector(Box::new(c.clone()));
        let h: BTreeMap<String, String> = [
            (r#"peagen_worker_exit_reason_total{reason="idle"}"#, "3"),
            (r#"peagen_worker_exit_reason_total{reason="error"}"#, "0"),
            (r#"peagen_handler_fail_total{handler="fail"}"#, "1"),
            ("peagen_worker_busy_seconds_total", "1.5"),
            (
                r#"peagen_task_duration_seconds_bucket{kind="echo",le="0.001"}"#,
                "1",
            ),
            (
                r#"peagen_task_duration_seconds_bucket{kind="echo",le="0.002"}"#,
                "3",
            ),
            (
                r#"peagen_task_duration_seconds_bucket{kind="echo",le="+Inf"}"#,
                "4",
            ),
            (r#"peagen_task_duration_seconds_sum{kind="echo"}"#, "0.75"),
            (r#"peagen_task_duration_seconds_count{kind="echo"}"#, "4"),
            ("garbage{", "1"),
            ("other_metric_total", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        c.set(h);
        let s = render(&r);
        for want in [
            "# TYPE peagen_worker_exit_reason counter",
            "peagen_worker_exit_reason_total{reason=\"idle\"} 3\n",
            "peagen_worker_exit_reason_total{reason=\"error\"} 0\n",
            "peagen_handler_fail_total{handler=\"fail\"} 1\n",
            "peagen_worker_busy_seconds_total 1.5\n",
            "# TYPE peagen_task_duration_seconds histogram",
            "peagen_task_duration_seconds_sum{kind=\"echo\"} 0.75\n",
            "peagen_task_duration_seconds_count{kind=\"echo\"} 4\n",
            "peagen_task_duration_seconds_bucket{le=\"0.001\",kind=\"echo\"} 1\n",
            "peagen_task_duration_seconds_bucket{le=\"0.002\",kind=\"echo\"} 3\n",
            "peagen_task_duration_seconds_bucket{le=\"+Inf\",kind=\"echo\"} 4\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("garbage") && !s.contains("other_metric"), "{s}");
        assert_eq!(s.matches("_bucket{").count(), 3, "{s}");
        // An empty hash exports nothing (but build_info).
        c.set(BTreeMap::new());
        assert!(!render(&r).contains("exit_reason"));
    }
}
