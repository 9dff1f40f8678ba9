//! `peagen-worker sandbox-run [OPTIONS] -- CMD ARGS...`

use super::{Request, Sandbox, Status, Verdict};
use crate::config::SandboxConfig;
use crate::exit;

const USAGE: &str = "usage: peagen-worker sandbox-run [--memory BYTES] [--pids N] [--wall-ms N] \
[--cpu-ms N] [--output-bytes N] [--file-size BYTES] [--tmpfs BYTES] [--ro-bind PATH]... \
[--env NAME=VALUE]... [--stdin FILE|-] [--json] -- CMD ARGS...

Runs CMD in the execute sandbox (fresh namespaces, minimal read-only root with a tmpfs
work dir /work, no network, no capabilities, landlock, seccomp, cgroup/rlimit limits).
The environment is only what --env gives (plus PATH/HOME/TMPDIR/LANG defaults).
--json prints the verdict (captured output included) as one JSON object; otherwise the
captured stdout/stderr are written out and a one-line summary goes to stderr.
Exit status: the command's exit code; 128+N for signal N; 124 timeout; 125 memory or
output limit; 70 sandbox failure; 64 usage error.";

fn num(flag: &str, v: Option<String>) -> Result<u64, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

/// Parse arguments into (config, request, json).
fn parse(args: Vec<String>) -> Result<(SandboxConfig, Request, bool), String> {
    let mut cfg = SandboxConfig::default();
    let mut req = Request::default();
    let mut json = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                req.argv = it.by_ref().collect();
                break;
            }
            "--json" => json = true,
            "--memory" => cfg.memory_bytes = num(&a, it.next())?,
            "--pids" => cfg.pids = num(&a, it.next())?,
            "--wall-ms" => cfg.wall_ms = num(&a, it.next())?,
            "--cpu-ms" => cfg.cpu_ms = num(&a, it.next())?,
            "--output-bytes" => cfg.output_bytes = num(&a, it.next())?,
            "--file-size" => cfg.file_size_bytes = num(&a, it.next())?,
            "--tmpfs" => cfg.tmpfs_bytes = num(&a, it.next())?,
            "--ro-bind" => cfg
                .ro_binds
                .push(it.next().ok_or("--ro-bind needs a path")?.into()),
            "--env" => {
                let kv = it.next().ok_or("--env needs NAME=VALUE")?;
                let (k, v) = kv.split_once('=').ok_or("--env needs NAME=VALUE")?;
                req.env.insert(k.to_string(), v.to_string());
            }
            "--stdin" => {
                let f = it.next().ok_or("--stdin needs a file")?;
                req.stdin = if f == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                        .map_err(|e| format!("reading stdin: {e}"))?;
                    b
                } else {
                    std::fs::read(&f).map_err(|e| format!("{f}: {e}"))?
                };
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if req.argv.is_empty() {
        return Err("no command given (put it after --)".into());
    }
    Ok((cfg, req, json))
}

/// Process exit status for a verdict.
pub fn exit_status(v: &Verdict) -> i32 {
    match v.status {
        Status::Ok => 0,
        Status::RuntimeError => v.exit_code.unwrap_or(1),
        Status::Signal => 128 + v.signal.unwrap_or(0),
        Status::Timeout => 124,
        Status::MemoryLimit | Status::OutputLimit => 125,
        Status::InternalError => 70,
    }
}

/// Entry of `peagen-worker sandbox-run ...`; `args` excludes `sandbox-run`.
/// Returns the process exit code.
pub fn run_cli(args: Vec<String>) -> i32 {
    let (cfg, req, json) = match parse(args) {
        Ok(x) => x,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return exit::OK;
            }
            eprintln!("error: {e}\n{USAGE}");
            return exit::USAGE;
        }
    };
    let sb = match Sandbox::new(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let v = sb.run(&req);
    if json {
        match serde_json::to_string(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return 70;
            }
        }
    } else {
        use std::io::Write;
        let _ = std::io::stdout().write_all(v.stdout.as_bytes());
        let _ = std::io::stderr().write_all(v.stderr.as_bytes());
        let sig = v.signal_name.clone().unwrap_or_default();
        eprintln!(
            "sandbox: {:?} {}{} wall={:.1}ms cpu={:.1}ms {}",
            v.status,
            v.exit_code.map(|c| format!("exit={c}")).unwrap_or_default(),
            sig,
            v.wall_ms,
            v.cpu_ms,
            v.message
        );
    }
    exit_status(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let (cfg, req, json) = parse(a(
            "--memory 1000000 --pids 9 --wall-ms 50 --json -- /bin/echo hi",
        ))
        .unwrap();
        assert_eq!(cfg.memory_bytes, 1_000_000);
        assert_eq!(cfg.pids, 9);
        assert_eq!(cfg.wall_ms, 50);
        assert!(json);
        assert_eq!(req.argv, vec!["/bin/echo", "hi"]);
        assert!(parse(a("--bogus -- x")).is_err());
        assert!(parse(a("--json")).is_err());
    }
}
