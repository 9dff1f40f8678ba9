//! The `[llm]` table: LLM backends, their limits, the fleet token bucket and
//! workflow budget defaults. Pure data and checks (no I/O); every key is
//! documented in packaging/peagen.toml.
//!
//! API keys are never config values: a backend names where the key is
//! (`api-key-env`, `api-key-file` or `api-key-credential`), so `peagenctl
//! config show` and every error message can name the place without the key.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LlmConfig {
    /// OpenAI-compatible chat-completions backends.
    pub backends: Vec<BackendConfig>,
    /// Longest a task waits in the worker for a rate-limit token before it
    /// goes back to the delayed set (without using an attempt).
    pub rate_limit_max_wait_ms: u64,
    /// Fleet-wide token bucket over all backends (0 = off): tokens per minute.
    pub fleet_tokens_per_minute: u64,
    /// Capacity of the fleet-wide token bucket (the seed's `capacity=1_000_000`).
    pub fleet_token_burst: u64,
    /// `max_tokens` for tasks that carry none: every call is bounded, so a
    /// budget reservation is always known before the call.
    pub default_max_tokens: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            backends: Vec::new(),
            rate_limit_max_wait_ms: 5000,
            fleet_tokens_per_minute: 0,
            fleet_token_burst: 1_000_000,
            default_max_tokens: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// One bucket shared by every worker through Redis (Redis TIME is the clock).
    Fleet,
    /// One bucket per worker process, in memory.
    Worker,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BackendConfig {
    /// Label in metrics and results; selects the backend in a payload.
    pub name: String,
    /// Up to and including the API version, e.g. `https://api.example/v1`;
    /// requests go to `{base-url}/chat/completions`. `http://` only for
    /// loopback hosts.
    pub base_url: String,
    pub model: String,
    /// Environment variable of the worker holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File holding the API key (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Name of a systemd credential (`LoadCredential=NAME:PATH` in the
    /// worker unit); read from `$CREDENTIALS_DIRECTORY/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_credential: Option<String>,
    /// Task kinds this backend serves.
    #[serde(default = "default_kinds")]
    pub kinds: Vec<String>,
    /// Bound of one HTTP call (a task's `timeout_ms` may shorten it).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Token bucket refill in requests per minute (0 = unlimited).
    #[serde(default)]
    pub requests_per_minute: u64,
    /// Token bucket refill in LLM tokens per minute (0 = unlimited).
    #[serde(default)]
    pub tokens_per_minute: u64,
    /// Bucket capacity in requests (default: `requests-per-minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Bucket capacity in tokens (default: `tokens-per-minute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_burst: Option<u64>,
    #[serde(default = "default_scope")]
    pub rate_limit_scope: Scope,
}

fn default_kinds() -> Vec<String> {
    vec!["mutate".into()]
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_scope() -> Scope {
    Scope::Fleet
}

impl BackendConfig {
    pub fn request_burst(&self) -> u64 {
        self.burst.unwrap_or(self.requests_per_minute)
    }
    pub fn token_burst(&self) -> u64 {
        self.token_burst.unwrap_or(self.tokens_per_minute)
    }
    /// Where the key comes from, for messages (never the key itself).
    pub fn key_source(&self) -> String {
        if let Some(v) = &self.api_key_env {
            format!("environment variable {v}")
        } else if let Some(p) = &self.api_key_file {
            format!("file {}", p.display())
        } else if let Some(c) = &self.api_key_credential {
            format!("systemd credential {c}")
        } else {
            "none".into()
        }
    }
}

/// Hosts for which plain `http://` is allowed: the traffic never leaves the
/// machine (seed §11.4: LLM handlers require HTTPS otherwise).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `(scheme, host)` of an `http(s)://host[:port]/...` URL, or why not.
pub fn scheme_host(url: &str) -> Result<(&str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "must start with https:// (or http:// for a loopback host)".to_string())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "must not carry credentials (use api-key-env, api-key-file or api-key-credential)"
                .into(),
        );
    }
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    Ok((scheme, host))
}

impl LlmConfig {
    /// Problems in this table, each naming its key (collected by
    /// `Config::validate` with the others).
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let at = if b.name.is_empty() {
                format!("llm.backends[{i}]")
            } else {
                format!("llm.backends {:?}", b.name)
            };
            if b.name.is_empty() {
                errs.push(format!("{at}: name must not be empty"));
            } else if !names.insert(b.name.clone()) {
                errs.push(format!("{at}: name is used twice"));
            }
            if b.model.is_empty() {
                errs.push(format!("{at}: model must not be empty"));
            }
            match scheme_host(&b.base_url) {
                Err(why) => errs.push(format!("{at}: base-url {:?} {why}", b.base_url)),
                Ok(("https", _)) => {}
                Ok(("http", host)) if is_loopback_host(host) => {}
                Ok(("http", host)) => errs.push(format!(
                    "{at}: base-url uses http:// to {host}, which is not loopback: LLM traffic leaves the host only over https://"
                )),
                Ok((scheme, _)) => errs.push(format!(
                    "{at}: base-url scheme {scheme:?} is not supported (https://, or http:// for loopback)"
                )),
            }
            let sources = [
                b.api_key_env.is_some(),
                b.api_key_file.is_some(),
                b.api_key_credential.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                errs.push(format!(
                    "{at}: set at most one of api-key-env, api-key-file, api-key-credential"
                ));
            }
            if b.api_key_env.as_deref() == Some("") {
                errs.push(format!("{at}: api-key-env must not be empty"));
            }
            if let Some(p) = &b.api_key_file {
                if !p.is_absolute() {
                    errs.push(format!("{at}: api-key-file {p:?} must be an absolute path"));
                }
            }
            if let Some(c) = &b.api_key_credential {
                if c.is_empty() || c.contains('/') {
                    errs.push(format!(
                        "{at}: api-key-credential {c:?} must be a credential name (no '/')"
                    ));
                }
            }
            if b.kinds.is_empty() {
                errs.push(format!("{at}: kinds must name at least one task kind"));
            }
            if b.kinds.iter().any(String::is_empty) {
                errs.push(format!("{at}: kinds must not contain an empty name"));
            }
            if b.timeout_ms == 0 {
                errs.push(format!("{at}: timeout-ms must be at least 1"));
            }
            if b.requests_per_minute > 0 && b.request_burst() == 0 {
                errs.push(format!("{at}: burst must be at least 1"));
            }
            if b.tokens_per_minute > 0 && b.token_burst() == 0 {
                errs.push(format!("{at}: token-burst must be at least 1"));
            }
        }
        if self.fleet_tokens_per_minute > 0 && self.fleet_token_burst == 0 {
            errs.push("llm.fleet-token-burst must be at least 1".into());
        }
        if self.default_max_tokens == 0 || self.default_max_tokens > super::MAX_TOKENS_LIMIT {
            errs.push(format!(
                "llm.default-max-tokens must be from 1 to {}",
                super::MAX_TOKENS_LIMIT
            ));
        }
        errs
    }

    /// Kinds served by some backend (one `mutate`-style handler each).
    pub fn kinds(&self) -> std::collections::BTreeSet<String> {
        self.backends
            .iter()
            .flat_map(|b| b.kinds.iter().cloned())
            .collect()
    }

    /// Environment variables holding keys: removed from the environment of
    /// every program a handler starts.
    pub fn key_env_names(&self) -> Vec<String> {
        self.backends
            .iter()
            .filter_map(|b| b.api_key_env.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str) -> BackendConfig {
        toml::from_str(&format!(
            "name = \"b\"\nbase-url = \"{url}\"\nmodel = \"m\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        for ok in [
            "https://api.example.com/v1",
            "http://127.0.0.1:8000/v1",
            "http://localhost/v1",
            "http://[::1]:8080/v1",
            "http://127.9.9.9/v1",
        ] {
            let c = LlmConfig {
                backends: vec![backend(ok)],
                ..Default::default()
            };
            assert_eq!(c.problems(), Vec::<String>::new(), "{ok}");
        }
        for bad in [
            "http://api.example.com/v1",
            "http://10.0.0.1:8000/v1",
            "http://localhost.evil.com/v1",
            "ftp://127.0.0.1/",
            "127.0.0.1:8000",
            "https://user:pw@api.example.com/v1",
            "http://[::2]/v1",
        ] {
            let c = LlmConfig {
                backends: vec![backend(bad)],
                ..Default::default()
            };
            assert_eq!(c.problems().len(), 1, "{bad}: {:?}", c.problems());
        }
    }

    #[test]
    fn one_key_source_and_unknown_keys_refused() {
        let mut b = backend("https://x/v1");
        b.api_key_env = Some("K".into());
        b.api_key_file = Some("/k".into());
        let c = LlmConfig {
            backends: vec![b.clone(), b],
            ..Default::default()
        };
        let p = c.problems().join("; ");
        assert!(p.contains("at most one"), "{p}");
        assert!(p.contains("used twice"), "{p}");
        let e = toml::from_str::<BackendConfig>(
            "name = \"b\"\nbase-url = \"https://x\"\nmodel = \"m\"\napi-key = \"sk\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn defaults() {
        let b = backend("https://x/v1");
        assert_eq!(b.kinds, ["mutate"]);
        assert_eq!(b.rate_limit_scope, Scope::Fleet);
        assert_eq!(b.timeout_ms, 60_000);
        assert_eq!(b.requests_per_minute, 0);
        assert_eq!(LlmConfig::default().fleet_token_burst, 1_000_000);
    }
}
