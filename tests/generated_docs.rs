//! Completions and man pages come from the clap definitions (`peagenctl
//! completions`, `peagenctl man`), through the real binary. The copies the
//! packages install (packaging/completions, packaging/man) must equal that
//! output; regenerate them with
//!   PEAGEN_BLESS=1 cargo test --test generated_docs

use std::path::{Path, PathBuf};
use std::process::Command;

const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

fn peagenctl(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_peagenctl"))
        .args(args)
        // No config is read for these: a missing one must not matter.
        .args(["--config", "/nonexistent/peagen.toml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "peagenctl {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn bash_completion_knows_every_subcommand() {
    let ctl = peagenctl(&["completions", "bash"]);
    for w in [
        "push",
        "dlq",
        "export",
        "retry",
        "validate",
        "completions",
        "--json",
    ] {
        assert!(ctl.contains(w), "peagenctl bash completion lacks {w}");
    }
    assert!(ctl.contains("complete -F _peagenctl"), "{ctl}");
    let spawnerd = peagenctl(&["completions", "zsh", "--program", "peagen-spawnerd"]);
    assert!(spawnerd.contains("--config"), "{spawnerd}");
}

/// Needs the clap definition of `sandbox-run` (its flags were hidden under a
/// catch-all argument, so no completion could know them).
#[test]
fn bash_completion_has_the_sandbox_run_flags() {
    let worker = peagenctl(&["completions", "bash", "--program", "peagen-worker"]);
    assert!(worker.contains("sandbox-run"), "{worker}");
    for flag in [
        "--memory",
        "--pids",
        "--wall-ms",
        "--cpu-ms",
        "--output-bytes",
        "--file-size",
        "--tmpfs",
        "--ro-bind",
        "--env",
        "--stdin",
    ] {
        assert!(
            worker.contains(flag),
            "peagen-worker bash completion lacks the sandbox-run flag {flag}"
        );
    }
}

#[test]
fn man_pages_have_generated_options_and_the_prose() {
    let dir = tempfile::tempdir().unwrap();
    let out = peagenctl(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let ctl = std::fs::read_to_string(dir.path().join("peagenctl.1")).unwrap();
    assert!(
        ctl.starts_with(".ie"),
        "roff: {}",
        &ctl[..80.min(ctl.len())]
    );
    assert!(ctl.contains(".TH peagenctl 1"), "{ctl}");
    assert!(ctl.contains("\\-\\-json"), "generated options: {ctl}");
    assert!(ctl.contains("EXIT STATUS"), "hand-written sections: {ctl}");
    let sp = std::fs::read_to_string(dir.path().join("peagen-spawnerd.8")).unwrap();
    assert!(sp.contains(".TH peagen-spawnerd 8"), "{sp}");
    assert!(sp.contains("\\-\\-config"), "{sp}");
    assert!(sp.contains(".SH SIGNALS"), "{sp}");
}

/// The checked-in copies equal the generated output (or are rewritten with
/// PEAGEN_BLESS=1).
#[test]
fn packaged_copies_equal_the_generated_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    peagenctl(&["man", "--dir", d]);
    for sh in SHELLS {
        peagenctl(&["completions", sh, "--dir", d]);
    }
    let bless = std::env::var_os("PEAGEN_BLESS").is_some();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let dest = if name.ends_with(".1") || name.ends_with(".8") {
            repo("packaging/man").join(&name)
        } else {
            repo("packaging/completions").join(&name)
        };
        let want = std::fs::read(&p).unwrap();
        if std::fs::read(&dest).ok().as_deref() != Some(&want[..]) {
            if bless {
                std::fs::write(&dest, &want).unwrap();
            } else {
                stale.push(dest.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "out of date (run PEAGEN_BLESS=1 cargo test --test generated_docs): {stale:?}"
    );
    // Nothing hand-written is left beside them.
    for f in std::fs::read_dir(repo("packaging/completions")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        assert!(
            dir.path().join(&name).exists(),
            "packaging/completions/{name} is not generated"
        );
    }
}
