//! A real Prometheus (Debian's `/usr/bin/prometheus`, installed by
//! scripts/install-deps.sh) on a free loopback port with a private storage
//! directory, scraping one target every second and evaluating rules every
//! second; and a small client for its HTTP API (`/api/v1/query`,
//! `/api/v1/alerts`, `/api/v1/rules`).

use super::{free_port, scratch};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Root of the repository (shipped rule files and dashboards live there).
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

pub struct Prometheus {
    pub port: u16,
    /// Config, rule copy, storage and log (removed on drop, after the
    /// process is gone).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    /// Start Prometheus scraping `target` (host:port) as job `job`, with the
    /// rule file `rules` (text), and wait until it is ready. On a port taken
    /// between [`free_port`] and Prometheus's bind, try another.
    pub fn start(job: &str, target: &str, rules: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("peagen-prometheus")
            .tempdir_in(scratch())
            .unwrap();
        let rules_path = dir.path().join("peagen-alerts.yml");
        std::fs::write(&rules_path, rules).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules_path.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // promtool is the reference for what Prometheus accepts: a rule copy
        // the transformation broke fails here with its message, not as a
        // silent "no such rule" later.
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&config_path)
            .output()
            .expect("promtool not found: run scripts/install-deps.sh (Debian's prometheus)");
        assert!(
            check.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut why = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut child = Command::new("/usr/bin/prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("/usr/bin/prometheus not found: run scripts/install-deps.sh");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    why = format!(
                        "prometheus on port {port} exited ({st}): {}",
                        tail(dir.path())
                    );
                    break;
                }
                if get(port, "/-/ready").is_some_and(|(code, _)| code == 200) {
                    return Prometheus {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                if Instant::now() > deadline {
                    stop_child(&mut child);
                    why = format!("prometheus on port {port} not ready within 60 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("{why}");
    }

    /// `data` of a successful API answer; panics on anything else (a bad
    /// query is a bug of the test or of the dashboards).
    pub fn api(&self, path_and_query: &str) -> Value {
        let (code, body) = get(self.port, path_and_query)
            .unwrap_or_else(|| panic!("prometheus did not answer {path_and_query}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: HTTP {code}, not JSON ({e}): {body}"));
        assert_eq!(
            v["status"], "success",
            "{path_and_query}: HTTP {code}: {body}"
        );
        v["data"].clone()
    }

    /// Instant query; the result vector (or scalar as a one-element list).
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let d = self.api(&format!("/api/v1/query?query={}", urlencode(expr)));
        match (d["resultType"].as_str(), d["result"].clone()) {
            (Some("vector" | "matrix"), Value::Array(a)) => a,
            (_, Value::Null) => vec![],
            // scalar or string: [time, "value"]
            (_, other) => vec![other],
        }
    }

    /// Numbers of an instant query's result vector (NaN dropped: a ratio
    /// of two zero rates is "no data", not data).
    pub fn values(&self, expr: &str) -> Vec<f64> {
        self.query(expr)
            .iter()
            .filter_map(|s| {
                let v = if s["value"].is_array() {
                    &s["value"][1]
                } else {
                    &s[1]
                };
                v.as_str()?.parse::<f64>().ok()
            })
            .filter(|v| !v.is_nan())
            .collect()
    }

    /// Active alerts (pending and firing): (alertname, state, labels).
    pub fn alerts(&self) -> Vec<(String, String, Value)> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// Is `name` firing now?
    pub fn firing(&self, name: &str) -> bool {
        self.alerts()
            .iter()
            .any(|(n, s, _)| n == name && s == "firing")
    }

    /// Every rule of every loaded group (the `/api/v1/rules` objects).
    pub fn rules(&self) -> Vec<Value> {
        self.api("/api/v1/rules")["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Prometheus's own clock (`time()`, Unix seconds), the clock of its
    /// evaluation timestamps.
    pub fn now(&self) -> f64 {
        self.values("time()")
            .first()
            .copied()
            .expect("time() has a value")
    }

    /// Wait until every rule group has been evaluated at or after Prometheus
    /// time `t` (so what the rules say covers everything scraped before it).
    pub fn wait_evaluated_after(&self, t: f64, within: Duration) {
        super::eventually(within, "every rule evaluated again", || {
            let groups = self.api("/api/v1/rules")["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            !groups.is_empty()
                && groups.iter().all(|g| {
                    g["lastEvaluation"]
                        .as_str()
                        .and_then(rfc3339_unix)
                        .is_some_and(|e| e >= t)
                })
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// SIGTERM and wait for the process (before its directory goes).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        self.stop();
    }
}

fn stop_child(c: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still there after 30 s: take it down hard, but still wait for it.
    let _ = c.kill();
    let _ = c.wait();
}

fn tail(dir: &Path) -> String {
    let t = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let lines: Vec<&str> = t.lines().rev().take(5).collect();
    format!("{lines:?}")
}

/// Plain HTTP/1.0 GET on loopback: (status code, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Unix seconds of Prometheus's RFC 3339 timestamps
/// (`2026-12-01T18:00:00.123456789Z`, always UTC).
fn rfc3339_unix(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// Every query of the shipped Grafana dashboards (packaging/grafana/*.json):
/// (dashboard file, panel title, expr) with the dashboard variables bound
/// as Grafana would bind them for "all hosts, last `range`".
pub fn dashboard_queries(range: &str) -> Vec<(String, String, String)> {
    let dir = PathBuf::from(REPO).join("packaging/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = vec![];
    for f in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$instance", ".*")
                    .replace("$__range", range);
                assert!(!expr.contains('$'), "unbound variable in {expr}");
                out.push((name.clone(), p["title"].as_str().unwrap().to_string(), expr));
            }
        }
    }
    out
}

/// A copy of the shipped rules made fit for a test of minutes: every
/// `for: D` becomes `for: {for_}`, and the threshold of each
/// (alert, `old` -> `new`) pair is replaced inside that alert's block.
/// Each replacement must match exactly once, so a change of the shipped
/// file stops the test instead of silently testing something else.
pub fn shortened_rules(shipped: &str, for_: &str, thresholds: &[(&str, &str, &str)]) -> String {
    let mut out = String::new();
    let mut current_alert = String::new();
    let mut done = vec![0usize; thresholds.len()];
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let mut line = line.to_string();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            current_alert = name.trim().to_string();
        } else if trimmed.starts_with("- record: ") || trimmed.starts_with("- name: ") {
            current_alert.clear();
        }
        if trimmed.starts_with("for: ") {
            line = format!("{indent}for: {for_}");
        }
        for (i, (alert, old, new)) in thresholds.iter().enumerate() {
            if current_alert == *alert && line.contains(old) {
                line = line.replacen(old, new, 1);
                done[i] += 1;
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    for (i, (alert, old, _)) in thresholds.iter().enumerate() {
        assert_eq!(
            done[i], 1,
            "the shipped rules changed: `{old}` in {alert} matched {} times",
            done[i]
        );
    }
    out
}
