//! Task protocol v1: wire-compatible with Peagen's Streams prototype.
//!
//! A task is one stream entry with one field `data` holding JSON. Unknown JSON
//! fields are kept (in `extra`) and written back unchanged on retry, so newer
//! producers are never broken by older workers. See `docs/protocol.md`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const SCHEMA_V: u32 = 1;
/// The one stream field that carries the JSON document.
pub const DATA_FIELD: &str = "data";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub kind: String,
    pub id: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub requires: Vec<String>,
    /// Executions already made (0 for a fresh task). Lives in the message, not
    /// in the PEL delivery counter, which claims and re-adds reset or bump.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub created_at: String,
    #[serde(default = "default_schema_v")]
    pub schema_v: u32,
    /// RFC 3339 time after which the task is not started (dead-lettered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Per-task wall-clock limit for the handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Overrides the worker's `max-attempts` for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Fields this version does not know; preserved verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}
fn default_schema_v() -> u32 {
    SCHEMA_V
}

/// Why an entry could not become a task. Each of these dead-letters the entry.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TaskError {
    #[error("entry has no `data` field (fields present: {0})")]
    NoData(String),
    #[error("`data` is {size} bytes, over the limit of {limit} (worker.max-payload-bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("`data` is not UTF-8")]
    NotUtf8,
    #[error("`data` is not a valid task: {0}")]
    Malformed(String),
    #[error("task field {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl TaskError {
    /// Stable machine-readable reason for DLQ records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TaskError::NoData(_) => "no_data",
            TaskError::TooLarge { .. } => "too_large",
            TaskError::NotUtf8 => "not_utf8",
            TaskError::Malformed(_) => "malformed",
            TaskError::Invalid { .. } => "invalid",
        }
    }
}

/// Current time in the prototype's `%Y-%m-%dT%H:%M:%SZ` form (ms added for audit fields).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn now_prototype() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl Task {
    /// A fresh task with a random id `<kind-prefix>-<8 hex>` like the prototype's.
    pub fn new(kind: &str, payload: Value) -> Self {
        let u = uuid::Uuid::new_v4().simple().to_string();
        let prefix: String = kind.chars().take(3).collect();
        Task {
            kind: kind.to_string(),
            id: format!(
                "{}-{}",
                if prefix.is_empty() { "task" } else { &prefix },
                &u[..16]
            ),
            payload,
            requires: Vec::new(),
            attempts: 0,
            created_at: now_prototype(),
            schema_v: SCHEMA_V,
            deadline: None,
            timeout_ms: None,
            max_attempts: None,
            trace_id: None,
            extra: Map::new(),
        }
    }

    /// Parse the raw `data` bytes of a stream entry.
    pub fn parse(data: &[u8], limit: usize) -> Result<Self, TaskError> {
        if data.len() > limit {
            return Err(TaskError::TooLarge {
                size: data.len(),
                limit,
            });
        }
        let text = std::str::from_utf8(data).map_err(|_| TaskError::NotUtf8)?;
        let t: Task =
            serde_json::from_str(text).map_err(|e| TaskError::Malformed(e.to_string()))?;
        t.check()?;
        Ok(t)
    }

    /// Field checks serde's types cannot express.
    pub fn check(&self) -> Result<(), TaskError> {
        let bad = |field, message: &str| {
            Err(TaskError::Invalid {
                field,
                message: message.into(),
            })
        };
        if self.kind.is_empty() {
            return bad("kind", "must not be empty");
        }
        if self.id.is_empty() || self.id.len() > 200 {
            return bad("id", "must be 1 to 200 characters");
        }
        if self.id.contains(['/', '\0']) || self.id == "." || self.id == ".." {
            return bad("id", "must not contain '/' or NUL or be '.'/'..'");
        }
        if !self.payload.is_object() {
            return bad("payload", "must be a JSON object");
        }
        if self.schema_v != SCHEMA_V {
            return Err(TaskError::Invalid {
                field: "schema_v",
                message: format!(
                    "version {} is not supported (this worker speaks {SCHEMA_V})",
                    self.schema_v
                ),
            });
        }
        if let Some(d) = &self.deadline {
            if parse_time(d).is_none() {
                return bad("deadline", "must be an RFC 3339 time");
            }
        }
        if let Some(tp) = &self.trace_id {
            if !valid_traceparent(tp) {
                return bad(
                    "trace_id",
                    "must be a W3C traceparent 00-<32 hex>-<16 hex>-<2 hex>",
                );
            }
        }
        if self.max_attempts == Some(0) {
            return bad("max_attempts", "must be at least 1");
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Task always serializes")
    }

    /// The copy that goes back on the queue after a failed attempt.
    pub fn next_attempt(&self) -> Task {
        let mut t = self.clone();
        t.attempts = t.attempts.saturating_add(1);
        t
    }

    pub fn deadline_passed(&self, now: time::OffsetDateTime) -> bool {
        self.deadline
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|d| now > d)
    }
}

pub fn valid_traceparent(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    let hex = |x: &str, n: usize| {
        x.len() == n
            && x.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    p.len() == 4
        && hex(p[0], 2)
        && hex(p[1], 32)
        && hex(p[2], 16)
        && hex(p[3], 2)
        && p[1] != "0".repeat(32)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Skip => "skip",
        }
    }
}

/// The result record: the prototype's fields plus audit fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRecord {
    pub task_id: String,
    pub status: Status,
    pub data: Value,
    pub created_at: String,
    /// Executions made including this one.
    pub attempts: u32,
    pub retryable: bool,
    pub kind: String,
    pub handler: String,
    pub handler_version: String,
    pub image_tag: String,
    pub worker_id: String,
    pub host: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The dead-letter record written to `peagen.dead` (field `data`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// Stream entry id of the entry that was dead-lettered.
    pub original_id: String,
    /// Task id when the entry parsed far enough to have one.
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    /// `handler_error`, `attempts_exhausted`, `no_handler`, `deadline`, or a
    /// [`TaskError::code`].
    pub reason: String,
    pub error: String,
    pub attempts: u32,
    pub worker_id: String,
    pub host: String,
    pub dead_at: String,
    /// The original `data` exactly as it arrived (string), so it can be retried.
    pub raw: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PROTO: &str = r#"{"kind":"mutate","id":"mut-deadbeef","payload":{"x":1},"requires":["llm","cpu"],"attempts":0,"created_at":"2025-05-30T12:00:00Z","schema_v":1}"#;

    #[test]
    fn parses_prototype_task() {
        let t = Task::parse(PROTO.as_bytes(), 1 << 20).unwrap();
        assert_eq!(t.kind, "mutate");
        assert_eq!(t.requires, vec!["llm", "cpu"]);
        assert_eq!(t.payload, json!({"x":1}));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let s = r#"{"kind":"echo","id":"a","payload":{},"future":{"deep":[1,2]},"priority":5}"#;
        let t = Task::parse(s.as_bytes(), 1 << 20).unwrap();
        let back: Value = serde_json::from_str(&t.next_attempt().to_json()).unwrap();
        assert_eq!(back["future"], json!({"deep":[1,2]}));
        assert_eq!(back["priority"], json!(5));
        assert_eq!(back["attempts"], json!(1));
    }

    #[test]
    fn bad_inputs_have_distinct_reasons() {
        let lim = 1 << 20;
        assert_eq!(
            Task::parse(b"{not json", lim).unwrap_err().code(),
            "malformed"
        );
        assert_eq!(
            Task::parse(br#"{"id":"a"}"#, lim).unwrap_err().code(),
            "malformed"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"x","id":7}"#, lim)
                .unwrap_err()
                .code(),
            "malformed"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"x","id":"a","attempts":"1"}"#, lim)
                .unwrap_err()
                .code(),
            "malformed"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"x","id":"a","payload":[1]}"#, lim)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"","id":"a"}"#, lim)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"x","id":"../etc"}"#, lim)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"x","id":"a","schema_v":2}"#, lim)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            Task::parse(br#"{"kind":"x","id":"a","trace_id":"zz"}"#, lim)
                .unwrap_err()
                .code(),
            "invalid"
        );
        assert_eq!(
            Task::parse(&[0xff, 0xfe], lim).unwrap_err().code(),
            "not_utf8"
        );
        assert_eq!(
            Task::parse(PROTO.as_bytes(), 10).unwrap_err().code(),
            "too_large"
        );
    }

    #[test]
    fn attempts_never_wrap() {
        let s = br#"{"kind":"echo","id":"a","attempts":4294967295}"#;
        let t = Task::parse(s, 1 << 20).unwrap();
        assert_eq!(t.next_attempt().attempts, u32::MAX);
    }

    #[test]
    fn traceparent() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn deadline() {
        let mut t = Task::new("echo", json!({}));
        t.deadline = Some("2000-01-01T00:00:00Z".into());
        t.check().unwrap();
        assert!(t.deadline_passed(time::OffsetDateTime::now_utc()));
    }

    #[test]
    fn result_record_shape() {
        let r = ResultRecord {
            task_id: "a".into(),
            status: Status::Ok,
            data: json!({}),
            created_at: now_rfc3339(),
            attempts: 1,
            retryable: false,
            kind: "echo".into(),
            handler: "echo".into(),
            handler_version: "0.1.0".into(),
            image_tag: "".into(),
            worker_id: "w".into(),
            host: "h".into(),
            started_at: now_rfc3339(),
            finished_at: now_rfc3339(),
            trace_id: None,
        };
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "ok");
        assert!(v.get("trace_id").is_none());
    }
}
