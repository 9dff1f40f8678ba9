//! The LLM half of the fabric: OpenAI-compatible chat-completions backends
//! ([`client`]), their rate limits ([`ratelimit`]), workflow token budgets
//! ([`budget`]), the Redis side of both ([`store`]) and their metrics.
//! The `mutate`-style handler that puts them together is
//! [`crate::handlers::llm`].

pub mod budget;
pub mod client;
pub mod config;
pub mod metrics;
pub mod ratelimit;
pub mod store;

use serde_json::Value;

/// Largest `max_tokens` accepted (the budget's Lua arithmetic stays exact).
pub const MAX_TOKENS_LIMIT: u64 = 100_000_000;

/// Tokens a chat template adds around each message (role markers, separators)
/// and once per request; generous on purpose (see [`prompt_token_bound`]).
pub const TEMPLATE_TOKENS_PER_MESSAGE: u64 = 16;
pub const TEMPLATE_TOKENS_PER_REQUEST: u64 = 16;

/// An upper bound of the prompt tokens of `messages`, known before the
/// call: byte-level BPE tokenizers never make more tokens than bytes, plus
/// the template's tokens. The budget reserves this plus `max_tokens`, so a
/// call can never cost more than was reserved.
pub fn prompt_token_bound(messages: &[Value]) -> u64 {
    let mut n = TEMPLATE_TOKENS_PER_REQUEST;
    for m in messages {
        let content = match m.get("content") {
            Some(Value::String(s)) => s.len() as u64,
            Some(other) => other.to_string().len() as u64,
            None => 0,
        };
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .map_or(0, |r| r.len() as u64);
        n = n
            .saturating_add(content)
            .saturating_add(role)
            .saturating_add(TEMPLATE_TOKENS_PER_MESSAGE);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bound_counts_bytes_and_template() {
        let m = vec![json!({"role":"user","content":"hello"})];
        assert_eq!(prompt_token_bound(&m), 16 + 5 + 4 + 16);
        assert_eq!(prompt_token_bound(&[]), 16);
        let m = vec![json!({"role":"user","content":"é"})];
        assert_eq!(prompt_token_bound(&m), 16 + 2 + 4 + 16);
    }
}
