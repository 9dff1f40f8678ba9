//! Hiding secrets in Redis URLs before they reach a message, a log line or
//! `peagenctl config show`. The one place that does it, so every path that
//! prints a URL prints the same redacted form.
//!
//! A base module (no crate imports): `config` validation, `redis_target` and
//! `peagenctl` all use it without importing each other.

/// What a hidden secret is replaced with.
const HIDDEN: &str = "***";

/// Query parameters that carry a password (`redis+unix:///s?pass=...`).
fn is_secret_param(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k == "pass" || k == "password" || k.contains("secret") || k.contains("token")
}

/// The URL with its password and password-like query parameters replaced
/// by `***`. A text that does not parse as a URL is not shown at all (it may
/// hold a password in a place a parser cannot find).
pub fn redact(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "<not shown: not a valid URL>".to_string();
    };
    if u.password().is_some() && u.set_password(Some(HIDDEN)).is_err() {
        return "<not shown: cannot hide its password>".to_string();
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    HIDDEN.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    // A fragment is never meaningful in a Redis URL and may be a pasted secret.
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn hides_passwords_everywhere_a_redis_url_carries_one() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://user:secret@h:1"), "redis://user:***@h:1");
        assert_eq!(redact("rediss://:p%40ss@h:1"), "rediss://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("redis://h:1/2"), "redis://h:1/2");
        let unix = redact("redis+unix:///run/redis.sock?db=2&pass=SECRET");
        assert!(!unix.contains("SECRET"), "{unix}");
        assert!(unix.contains("db=2") && unix.contains("pass=***"), "{unix}");
        let unix = redact("unix:///run/redis.sock?password=SECRET&user=u");
        assert!(
            !unix.contains("SECRET") && unix.contains("user=u"),
            "{unix}"
        );
        // Wrong scheme: still parsed, still hidden.
        assert_eq!(redact("http://:SECRET@h:1"), "http://:***@h:1/");
        // Not a URL: nothing of it is shown.
        assert!(!redact("redis//:SECRET@h").contains("SECRET"));
        assert!(!redact("redis://h:1#SECRET").contains("SECRET"));
        // '@' inside the password (the old first-'@'/last-'@' split).
        assert!(!redact("redis://:a%40SECRET@h:1").contains("SECRET"));
    }
}
