//! The shipped /etc/peagen/peagen.toml (packaging/peagen.toml) documents every
//! config key, commented out, with its built-in default. This test keeps the
//! file honest: uncommenting every key must give a valid config that equals
//! `Config::default()`, and every key of the schema must be present.

use peagen_fabric::config::{CommandHandlerConfig, Config};
use std::collections::BTreeSet;
use std::path::Path;

const SHIPPED: &str = include_str!("../packaging/peagen.toml");

/// Uncomment `#key = value`, `#[table]` and `#[[array]]` lines; prose comments
/// (`# text`) stay comments.
fn uncomment_all(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty()
                            && k.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    }) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn key_paths(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                key_paths(v, &p, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(|x| x.is_table()) && !a.is_empty() => {
            for x in a {
                key_paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn shipped_config_is_valid_as_shipped() {
    let cfg = Config::from_toml(SHIPPED, Path::new("packaging/peagen.toml")).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        cfg,
        Config::default(),
        "the shipped file must change nothing"
    );
}

#[test]
fn every_documented_default_is_the_real_default() {
    let text = uncomment_all(SHIPPED);
    let mut cfg = Config::from_toml(&text, Path::new("uncommented"))
        .unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    cfg.validate().unwrap();
    // The example command handler documents the per-entry defaults.
    assert_eq!(cfg.handlers.command.len(), 1);
    let documented = cfg.handlers.command.remove(0);
    let minimal: CommandHandlerConfig = toml::from_str(&format!(
        "kind = {:?}\nprogram = {:?}\n",
        documented.kind,
        documented.program.display().to_string()
    ))
    .unwrap();
    assert_eq!(documented, minimal, "handlers.command defaults");
    // So does the example LLM backend.
    assert_eq!(cfg.llm.backends.len(), 1);
    let documented = cfg.llm.backends.remove(0);
    let minimal: peagen_fabric::llm::config::BackendConfig = toml::from_str(&format!(
        "name = {:?}\nbase-url = {:?}\nmodel = {:?}\n",
        documented.name, documented.base_url, documented.model
    ))
    .unwrap();
    assert_eq!(documented, minimal, "llm.backends defaults");
    assert_eq!(
        cfg,
        Config::default(),
        "a documented default differs from the code"
    );
}

#[test]
fn every_key_of_the_schema_is_documented() {
    let mut schema = Config::default();
    schema
        .handlers
        .command
        .push(toml::from_str("kind = \"k\"\nprogram = \"/p\"\n").unwrap());
    schema.llm.backends.push(
        toml::from_str("name = \"b\"\nbase-url = \"https://x/v1\"\nmodel = \"m\"\n").unwrap(),
    );
    let mut want = BTreeSet::new();
    key_paths(&toml::Value::try_from(&schema).unwrap(), "", &mut want);
    let mut have = BTreeSet::new();
    key_paths(
        &toml::from_str::<toml::Value>(&uncomment_all(SHIPPED)).unwrap(),
        "",
        &mut have,
    );
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "keys missing from packaging/peagen.toml: {missing:?}"
    );
}
