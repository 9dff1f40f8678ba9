//! `peagen-worker sandbox-run` through the real argv of the built binary:
//! the `--` separator, usage errors (64) apart from the command's own exit
//! codes, and 126/127 for a command that cannot be executed / is missing.

use std::process::{Command, Output};

fn worker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peagen-worker"))
        .args(args)
        .env_remove("PEAGEN_REDIS_URL")
        .output()
        .expect("run peagen-worker")
}

fn code(args: &[&str]) -> i32 {
    let o = worker(args);
    o.status.code().unwrap_or_else(|| panic!("{args:?}: {o:?}"))
}

#[test]
fn nothing_before_the_double_dash() {
    let o = worker(&["sandbox-run", "--", "/bin/true"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = worker(&["sandbox-run", "--", "/bin/echo", "--", "--json", "-x"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "-- --json -x\n");
}

#[test]
fn options_then_command() {
    let o = worker(&[
        "sandbox-run",
        "--json",
        "--wall-ms",
        "5000",
        "--env",
        "A=b=c",
        "--",
        "/bin/sh",
        "-c",
        "echo $A; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stdout"], "b=c\n");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(code(&["sandbox-run", "--", "/bin/false"]), 1);
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["sandbox-run", "/bin/true"][..],
        &["sandbox-run"],
        &["sandbox-run", "--"],
        &["sandbox-run", "--", ""],
        &["sandbox-run", "--env", "=x", "--", "/bin/true"],
        &["sandbox-run", "--env", "x", "--", "/bin/true"],
        &["sandbox-run", "--bogus", "--", "/bin/true"],
        &["sandbox-run", "--memory", "lots", "--", "/bin/true"],
        &[
            "sandbox-run",
            "--stdin",
            "/nonexistent/file",
            "--",
            "/bin/true",
        ],
    ] {
        let o = worker(args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {o:?}");
        assert!(!o.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn help_exits_0_and_shows_the_exit_statuses() {
    let o = worker(&["sandbox-run", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("-- <CMD>..."), "{out}");
    assert!(
        out.contains("126 the command cannot be executed; 127 not found"),
        "{out}"
    );
}

#[test]
fn not_executable_126_not_found_127() {
    // /dev/null is in the sandbox but not executable; /usr is a directory.
    assert_eq!(code(&["sandbox-run", "--", "/dev/null"]), 126);
    assert_eq!(code(&["sandbox-run", "--", "/usr"]), 126);
    assert_eq!(code(&["sandbox-run", "--", "/no/such/program"]), 127);
    assert_eq!(code(&["sandbox-run", "--", "no-such-program-in-path"]), 127);
}
