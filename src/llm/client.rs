//! One chat-completions call to an OpenAI-compatible backend
//! (`POST {base-url}/chat/completions`) and the classification of what came
//! back. HTTPS through rustls (no OpenSSL); redirects are not followed, so
//! the `Authorization` header only ever goes to the configured host.
//!
//! The API key lives in an [`ApiKey`], whose `Debug` prints nothing of it;
//! every text that comes from the provider passes [`ApiKey::scrub`] before
//! it reaches a log, a result or a dead letter (providers echo keys, whole
//! or in part, in their 401 messages).

use super::config::BackendConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Longest provider message kept in results and logs.
pub const MAX_MESSAGE_CHARS: usize = 500;
/// Retry-After values above this are capped (a provider asking for a day
/// still gets its task retried, and an operator notices the errors).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// Pieces of the key this long or longer are scrubbed wherever they appear.
const SCRUB_WINDOW: usize = 6;

impl ApiKey {
    pub fn new(s: String) -> Option<Self> {
        let t = s.trim().to_string();
        (!t.is_empty()).then_some(ApiKey(t))
    }

    /// Remove the key, and any word sharing a run of 6+ characters with it
    /// (so `sk-abc***xyz` style partial echoes go too), from `text`.
    pub fn scrub(&self, text: &str) -> String {
        let k = &self.0;
        let text = text.replace(k.as_str(), "[redacted]");
        let kb = k.as_bytes();
        if kb.len() < SCRUB_WINDOW {
            return text;
        }
        let windows: std::collections::HashSet<&[u8]> = kb.windows(SCRUB_WINDOW).collect();
        let mut out = String::with_capacity(text.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            if word
                .as_bytes()
                .windows(SCRUB_WINDOW)
                .any(|w| windows.contains(w))
            {
                out.push_str("[redacted]");
            } else {
                out.push_str(word);
            }
            word.clear();
        };
        for c in text.chars() {
            if c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '(' | ')' | '<' | '>') {
                flush(&mut word, &mut out);
                out.push(c);
            } else {
                word.push(c);
            }
        }
        flush(&mut word, &mut out);
        out
    }

    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("LLM backend {backend:?}: API key {source_desc} is not set or empty (give it to the worker: Environment=, or LoadCredential= in spawner.worker-unit)")]
    Missing {
        backend: String,
        source_desc: String,
    },
    #[error("LLM backend {backend:?}: cannot read API key from {source_desc}: {error}")]
    Unreadable {
        backend: String,
        source_desc: String,
        error: std::io::Error,
    },
}

/// The backend's key, read now (files and credentials may be rotated).
/// `Ok(None)`: the backend is configured without a key.
pub fn load_key(
    b: &BackendConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ApiKey>, KeyError> {
    let missing = || KeyError::Missing {
        backend: b.name.clone(),
        source_desc: b.key_source(),
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|error| KeyError::Unreadable {
            backend: b.name.clone(),
            source_desc: b.key_source(),
            error,
        })
    };
    if let Some(var) = &b.api_key_env {
        return env(var).and_then(ApiKey::new).map(Some).ok_or_else(missing);
    }
    if let Some(p) = &b.api_key_file {
        return ApiKey::new(read(p)?).map(Some).ok_or_else(missing);
    }
    if let Some(name) = &b.api_key_credential {
        let dir = env("CREDENTIALS_DIRECTORY").ok_or_else(missing)?;
        return ApiKey::new(read(&std::path::Path::new(&dir).join(name))?)
            .map(Some)
            .ok_or_else(missing);
    }
    Ok(None)
}

/// The body of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    pub max_tokens: u64,
    pub temperature: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub text: String,
    pub finish_reason: Option<String>,
    /// `None` when the backend did not report usage.
    pub usage: Option<Usage>,
    pub model: String,
    pub latency: Duration,
}

/// Why a call failed. Retryable: rate limits, server errors, timeouts,
/// connection errors and unparseable answers; not retryable: other 4xx.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("LLM backend {backend:?} rate-limited the request (HTTP {status}): {message}")]
    RateLimited {
        backend: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("LLM backend {backend:?} failed (HTTP {status}): {message}")]
    Server {
        backend: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("LLM backend {backend:?} refused the request (HTTP {status}): {message}")]
    Client {
        backend: String,
        status: u16,
        message: String,
    },
    #[error("LLM backend {backend:?} did not answer within {after_ms} ms")]
    Timeout { backend: String, after_ms: u64 },
    #[error("cannot reach LLM backend {backend:?}: {message}")]
    Connect { backend: String, message: String },
    #[error("LLM backend {backend:?} sent an answer that is not a chat completion: {message}")]
    BadResponse { backend: String, message: String },
}

impl CallError {
    /// The `outcome` label of `llm_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::RateLimited { .. } => "rate_limited",
            CallError::Server { .. } => "server_error",
            CallError::Client { .. } => "client_error",
            CallError::Timeout { .. } => "timeout",
            CallError::Connect { .. } => "connect_error",
            CallError::BadResponse { .. } => "bad_response",
        }
    }

    pub fn retryable(&self) -> bool {
        !matches!(self, CallError::Client { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::RateLimited { retry_after, .. } | CallError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::RateLimited { status, .. }
            | CallError::Server { status, .. }
            | CallError::Client { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(v: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &f).ok()?.assume_utc();
    let d = at - now;
    Some(if d.is_negative() {
        Duration::ZERO
    } else {
        Duration::try_from(d).ok()?.min(MAX_RETRY_AFTER)
    })
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= MAX_MESSAGE_CHARS {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
    t.push_str("...");
    t
}

/// The provider's own words from an error body: `error.message` (OpenAI
/// style), `error` as a string, `message`, or the raw text; truncated.
pub fn provider_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let m = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let m = m.unwrap_or_else(|| text.into_owned());
    if m.trim().is_empty() {
        "(empty body)".into()
    } else {
        truncate(&m)
    }
}

/// Classify a non-2xx status.
pub fn status_error(
    backend: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> CallError {
    let message = provider_message(body);
    let backend = backend.to_string();
    match status {
        429 => CallError::RateLimited {
            backend,
            status,
            message,
            retry_after,
        },
        // Request timeout, conflict, too early: the same request may pass later.
        408 | 409 | 425 | 500..=599 => CallError::Server {
            backend,
            status,
            message,
            retry_after,
        },
        300..=399 => CallError::Client {
            backend,
            status,
            message: format!("redirect not followed (check base-url): {message}"),
        },
        _ => CallError::Client {
            backend,
            status,
            message,
        },
    }
}

/// Parse a 2xx body.
pub fn parse_reply(backend: &str, body: &[u8], latency: Duration) -> Result<ChatReply, CallError> {
    let bad = |message: String| CallError::BadResponse {
        backend: backend.to_string(),
        message,
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "not JSON ({e}): {}",
            truncate(&String::from_utf8_lossy(body))
        ))
    })?;
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| bad("no choices[0]".into()))?;
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // A reply of only tool calls or a refusal has null content.
        Some(Value::Null) | None => choice
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad("choices[0].message.content is missing".into()))?,
        Some(other) => {
            return Err(bad(format!(
                "choices[0].message.content is {other}, not a string"
            )))
        }
    };
    let usage = v.get("usage").and_then(|u| {
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        let (p, c) = (n("prompt_tokens")?, n("completion_tokens")?);
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: n("total_tokens").unwrap_or(p.saturating_add(c)),
        })
    });
    Ok(ChatReply {
        text,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        usage,
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        latency,
    })
}

/// A reqwest error as text without the URL (a query string may carry
/// secrets of other schemes), with its causes.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// HTTP client of one backend.
pub struct Client {
    http: reqwest::Client,
    url: String,
    name: String,
    model: String,
}

impl Client {
    pub fn new(b: &BackendConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(b.timeout_ms.min(10_000)))
            .user_agent(concat!("peagen-fabric/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(error_chain)?;
        Ok(Client {
            http,
            url: format!("{}/chat/completions", b.base_url.trim_end_matches('/')),
            name: b.name.clone(),
            model: b.model.clone(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// One call bounded by `timeout`. Every provider text in the error is
    /// scrubbed of `key`.
    pub async fn chat(
        &self,
        key: Option<&ApiKey>,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatReply, CallError> {
        let scrub = |s: String| match key {
            Some(k) => k.scrub(&s),
            None => s,
        };
        let mut body = json!({
            "model": self.model,
            "messages": req.messages,
            "max_tokens": req.max_tokens,
        });
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        let mut rb = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            let mut v = reqwest::header::HeaderValue::from_str(&k.header()).map_err(|_| {
                CallError::Client {
                    backend: self.name.clone(),
                    status: 0,
                    message: "API key contains characters not allowed in an HTTP header".into(),
                }
            })?;
            v.set_sensitive(true);
            rb = rb.header(reqwest::header::AUTHORIZATION, v);
        }
        let t0 = Instant::now();
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                CallError::Timeout {
                    backend: self.name.clone(),
                    after_ms: timeout.as_millis() as u64,
                }
            } else {
                CallError::Connect {
                    backend: self.name.clone(),
                    message: scrub(error_chain(e)),
                }
            }
        };
        let resp = rb.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
        let remaining = timeout.saturating_sub(t0.elapsed());
        let bytes = match tokio::time::timeout(remaining, resp.bytes()).await {
            Err(_) => {
                return Err(CallError::Timeout {
                    backend: self.name.clone(),
                    after_ms: timeout.as_millis() as u64,
                })
            }
            Ok(r) => r.map_err(classify)?,
        };
        let latency = t0.elapsed();
        if !(200..300).contains(&status) {
            return Err(
                match status_error(&self.name, status, &bytes, retry_after) {
                    CallError::RateLimited {
                        backend,
                        status,
                        message,
                        retry_after,
                    } => CallError::RateLimited {
                        backend,
                        status,
                        message: scrub(message),
                        retry_after,
                    },
                    CallError::Server {
                        backend,
                        status,
                        message,
                        retry_after,
                    } => CallError::Server {
                        backend,
                        status,
                        message: scrub(message),
                        retry_after,
                    },
                    CallError::Client {
                        backend,
                        status,
                        message,
                    } => CallError::Client {
                        backend,
                        status,
                        message: scrub(message),
                    },
                    other => other,
                },
            );
        }
        parse_reply(&self.name, &bytes, latency).map_err(|e| match e {
            CallError::BadResponse { backend, message } => CallError::BadResponse {
                backend,
                message: scrub(message),
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_whole_and_partial_echoes() {
        let k = ApiKey::new("sk-test-0123456789abcdef".into()).unwrap();
        let s = k.scrub("Incorrect API key provided: sk-test-0123456789abcdef. You can find...");
        assert!(!s.contains("0123456789"), "{s}");
        let s = k
            .scrub("Incorrect API key provided: sk-tes**********************cdef (\"sk-test-01\")");
        assert!(!s.contains("sk-test-01"), "{s}");
        assert!(s.contains("Incorrect API key provided"), "{s}");
        assert_eq!(format!("{k:?}"), "ApiKey([redacted])");
        assert_eq!(k.scrub("nothing here"), "nothing here");
    }

    #[test]
    fn statuses() {
        let e = status_error("b", 503, br#"{"error":{"message":"overloaded"}}"#, None);
        assert_eq!((e.outcome(), e.retryable()), ("server_error", true));
        assert!(e.to_string().contains("overloaded"));
        let e = status_error("b", 429, b"slow down", Some(Duration::from_secs(2)));
        assert_eq!(e.outcome(), "rate_limited");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        for s in [400, 401, 403, 404, 422] {
            let e = status_error("b", s, br#"{"error":"bad"}"#, None);
            assert_eq!((e.outcome(), e.retryable()), ("client_error", false), "{s}");
        }
        let long = "x".repeat(5000);
        let e = status_error("b", 400, long.as_bytes(), None);
        assert!(e.to_string().len() < MAX_MESSAGE_CHARS + 100);
    }

    #[test]
    fn retry_after_forms() {
        let now = time::macros::datetime!(2015-10-21 07:27:58 UTC);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn replies() {
        let r = parse_reply(
            "b",
            br#"{"model":"m","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(r.text, "hi");
        assert_eq!(r.usage.unwrap().total_tokens, 5);
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"choices":[{"message":{"content":7}}]}"#,
        ] {
            let e = parse_reply("b", bad, Duration::ZERO).unwrap_err();
            assert_eq!((e.outcome(), e.retryable()), ("bad_response", true));
        }
    }
}
