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
        check_id(&self.id)?;
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

/// The one check of a task id, wherever an id comes from (a task, a
/// command line, a dead letter) and wherever it becomes a key or a path (the
/// filesystem result backend names files `<id>.json`): 1 to 200 bytes, no
/// `/` or NUL, not `.` or `..`. So an id can never leave the results
/// directory (no separator, no absolute path, no parent).
pub fn check_id(id: &str) -> Result<(), TaskError> {
    let bad = |message: &str| {
        Err(TaskError::Invalid {
            field: "id",
            message: message.into(),
        })
    };
    if id.is_empty() || id.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if id.contains(['/', '\0']) || id == "." || id == ".." {
        return bad("must not contain '/' or NUL or be '.'/'..'");
    }
    Ok(())
}

/// What is known about the task an entry carries, even when the entry is
/// not a valid task: enough to keep the protocol's promise of an error
/// result whenever the task id is known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Known {
    /// A valid task id (see [`check_id`]), or None.
    pub task_id: Option<String>,
    pub kind: Option<String>,
    pub trace_id: Option<String>,
}

impl Known {
    pub fn of(task: &Task) -> Self {
        Known {
            task_id: Some(task.id.clone()),
            kind: Some(task.kind.clone()),
            trace_id: task.trace_id.clone(),
        }
    }

    /// Salvage the top-level `id` and `kind` strings from data that is not
    /// a valid task (wrong-typed fields, bad values). Reads only up to the
    /// first syntax error and keeps an id only if it passes [`check_id`].
    pub fn salvage(data: &[u8]) -> Self {
        use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
        struct Seed<'a>(&'a mut Known);
        impl<'de> DeserializeSeed<'de> for Seed<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_map(self)
            }
        }
        impl<'de> Visitor<'de> for Seed<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "id" | "kind" => {
                            // A non-string value is skipped, not an error.
                            if let Value::String(s) = m.next_value::<Value>()? {
                                if k == "id" {
                                    self.0.task_id = check_id(&s).is_ok().then_some(s);
                                } else {
                                    self.0.kind = Some(s);
                                }
                            }
                        }
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                    if self.0.task_id.is_some() && self.0.kind.is_some() {
                        break;
                    }
                }
                Ok(())
            }
        }
        let mut k = Known::default();
        let mut de = serde_json::Deserializer::from_slice(data);
        // An error only ends the scan; what was found before it stays.
        let _ = Seed(&mut k).deserialize(&mut de);
        k
    }
}

/// Who writes a record (its audit fields).
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub worker_id: String,
    pub host: String,
    pub image_tag: String,
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

impl ResultRecord {
    /// The final error result of a task that is dead-lettered without an
    /// execution result of its own (bad entry, no handler, deadline, poison,
    /// reclaimed at its last attempt), so `peagenctl task get` answers.
    pub fn dead(known: &Known, reason: &str, msg: &str, attempts: u32, by: &Actor) -> Self {
        let now = now_rfc3339();
        ResultRecord {
            task_id: known.task_id.clone().unwrap_or_default(),
            status: Status::Error,
            data: serde_json::json!({ "msg": msg, "retryable": false, "dead_letter_reason": reason }),
            created_at: now.clone(),
            attempts,
            retryable: false,
            kind: known.kind.clone().unwrap_or_default(),
            handler: String::new(),
            handler_version: String::new(),
            image_tag: by.image_tag.clone(),
            worker_id: by.worker_id.clone(),
            host: by.host.clone(),
            started_at: now.clone(),
            finished_at: now,
            trace_id: known.trace_id.clone(),
        }
    }
}

impl DeadLetter {
    /// The one constructor of dead-letter records (worker and reclaim).
    /// `raw` is the entry's `data` as it arrived, None when it had none or
    /// it was not carried to the client (over the size limit).
    pub fn new(
        original_id: &str,
        raw: Option<&[u8]>,
        known: &Known,
        reason: &str,
        error: String,
        attempts: u32,
        by: &Actor,
    ) -> Self {
        DeadLetter {
            original_id: original_id.to_string(),
            task_id: known.task_id.clone(),
            kind: known.kind.clone(),
            reason: reason.to_string(),
            error,
            attempts,
            worker_id: by.worker_id.clone(),
            host: by.host.clone(),
            dead_at: now_rfc3339(),
            raw: raw.map(|d| String::from_utf8_lossy(d).into_owned()),
        }
    }
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
    fn ids_that_would_leave_a_directory_are_refused() {
        for bad in ["", ".", "..", "../outside", "/etc/passwd", "a/b", "a\0b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"x".repeat(201)).is_err());
        for ok in ["a", "mut-deadbeef", "..a", "a..", "x".repeat(200).as_str()] {
            assert!(check_id(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn salvage_finds_a_valid_id_in_a_bad_task() {
        let k = Known::salvage(br#"{"kind":"echo","id":"a-1","attempts":"x"}"#);
        assert_eq!(k.task_id.as_deref(), Some("a-1"));
        assert_eq!(k.kind.as_deref(), Some("echo"));
        // Found before a syntax error; nested "id" keys do not count.
        let k = Known::salvage(br#"{"payload":{"id":"inner"},"id":"outer","x":[1,"#);
        assert_eq!(k.task_id.as_deref(), Some("outer"));
        assert_eq!(Known::salvage(br#"{"id":42,"kind":"x"}"#).task_id, None);
        assert_eq!(Known::salvage(br#"{"id":"../x"}"#).task_id, None);
        assert_eq!(Known::salvage(b"{not json").task_id, None);
        assert_eq!(Known::salvage(b"[1,2]"), Known::default());
        assert_eq!(Known::salvage(&[0xff, 0xfe]), Known::default());
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
