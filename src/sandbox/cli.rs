//! `peagen-worker sandbox-run [OPTIONS] -- CMD ARGS...`
//!
//! Parsed by clap ([`SandboxRunArgs`], a subcommand of the worker's CLI):
//! the command is everything after `--` (`last = true`), so a leading `--`
//! is the separator, never part of the command.

use super::{Request, Sandbox, Status, Verdict};
use crate::config::SandboxConfig;
use crate::exit;
use std::path::PathBuf;

/// The exit statuses, shown by `--help` (keep in sync with [`exit_status`]).
pub const EXIT_HELP: &str = "\
Runs CMD in the execute sandbox (fresh namespaces, minimal read-only root with a tmpfs
work dir /work, no network, no capabilities, landlock, seccomp, cgroup/rlimit limits).
The environment is only what --env gives (plus PATH/HOME/TMPDIR/LANG defaults).
--json prints the verdict (captured output included) as one JSON object; otherwise the
captured stdout/stderr are written out and a one-line summary goes to stderr.

Exit status: the command's exit code; 126 the command cannot be executed; 127 not found;
128+N for signal N; 124 timeout; 125 memory or output limit; 70 sandbox failure;
64 usage error; 78 bad sandbox configuration (e.g. --ro-bind).";

/// Options of `sandbox-run`; the limits default to the `[sandbox]` defaults.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct SandboxRunArgs {
    /// Memory limit in bytes.
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<u64>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Wall clock limit in milliseconds.
    #[arg(long, value_name = "N")]
    pub wall_ms: Option<u64>,
    /// CPU time limit in milliseconds.
    #[arg(long, value_name = "N")]
    pub cpu_ms: Option<u64>,
    /// Cap on captured stdout and on stderr, in bytes each.
    #[arg(long, value_name = "N")]
    pub output_bytes: Option<u64>,
    /// Largest file the command may write, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub file_size: Option<u64>,
    /// Size of the /work tmpfs in bytes.
    #[arg(long, value_name = "BYTES")]
    pub tmpfs: Option<u64>,
    /// Bind a host path read-only at the same path (added to the defaults).
    #[arg(long, value_name = "PATH")]
    pub ro_bind: Vec<PathBuf>,
    /// Set an environment variable (the environment starts empty).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Feed FILE (or `-`, this process's stdin) to the command's stdin.
    #[arg(long, value_name = "FILE|-")]
    pub stdin: Option<PathBuf>,
    /// Print the verdict as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        last = true,
        required = true,
        num_args = 1..,
        value_name = "CMD",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub command: Vec<String>,
}

/// `NAME=VALUE` with a valid name: what the sandbox would refuse later
/// (as the command's own failure) is a usage error here.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: the name is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `sandbox-run` on its own, for [`run_cli`] (the argv after `sandbox-run`).
#[derive(clap::Parser, Debug)]
#[command(name = "peagen-worker sandbox-run", after_help = EXIT_HELP)]
struct Standalone {
    #[command(flatten)]
    args: SandboxRunArgs,
}

/// Why the options cannot be turned into a run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--stdin {path}: {source}")]
    Stdin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Request(#[from] super::RequestError),
}

impl SandboxRunArgs {
    /// The sandbox config and the request these options describe.
    pub fn to_run(&self) -> Result<(SandboxConfig, Request), CliError> {
        let mut cfg = SandboxConfig::default();
        let set = |field: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut cfg.memory_bytes, self.memory);
        set(&mut cfg.pids, self.pids);
        set(&mut cfg.wall_ms, self.wall_ms);
        set(&mut cfg.cpu_ms, self.cpu_ms);
        set(&mut cfg.output_bytes, self.output_bytes);
        set(&mut cfg.file_size_bytes, self.file_size);
        set(&mut cfg.tmpfs_bytes, self.tmpfs);
        cfg.ro_binds.extend(self.ro_bind.iter().cloned());
        let mut req = Request::new(self.command.iter().cloned());
        req.env = self.env.iter().cloned().collect();
        if let Some(f) = &self.stdin {
            let stdin_err = |source| CliError::Stdin {
                path: f.display().to_string(),
                source,
            };
            req.stdin = if f.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(stdin_err)?;
                b
            } else {
                std::fs::read(f).map_err(stdin_err)?
            };
        }
        req.validate()?;
        Ok((cfg, req))
    }
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

/// Print a clap error (or the help it carries) and return the exit code:
/// 0 for `--help`/`--version`, 64 (EX_USAGE) for a usage error.
pub fn usage_exit(e: &clap::Error) -> i32 {
    let _ = e.print();
    if e.use_stderr() {
        exit::USAGE
    } else {
        exit::OK
    }
}

/// `peagen-worker sandbox-run ...` with `args` the argv after `sandbox-run`
/// (parsed as the worker's CLI parses it). Returns the process exit code.
pub fn run_cli(args: Vec<String>) -> i32 {
    let argv = std::iter::once("sandbox-run".to_string()).chain(args);
    match <Standalone as clap::Parser>::try_parse_from(argv) {
        Ok(s) => run_args(&s.args),
        Err(e) => usage_exit(&e),
    }
}

/// Run parsed `sandbox-run` options; returns the process exit code.
pub fn run_args(args: &SandboxRunArgs) -> i32 {
    let (cfg, req) = match args.to_run() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
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
    if args.json {
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
    use clap::Parser;

    /// The worker's shape: `sandbox-run` as a subcommand with a global
    /// option, which is where clap used to swallow the first `--`.
    #[derive(clap::Parser, Debug)]
    struct Top {
        #[arg(long, short = 'c', global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: Option<Cmd>,
    }
    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Run,
        SandboxRun(Box<SandboxRunArgs>),
    }

    fn top(argv: &str) -> Result<SandboxRunArgs, clap::Error> {
        let argv = std::iter::once("peagen-worker").chain(argv.split(' '));
        match Top::try_parse_from(argv)?.cmd {
            Some(Cmd::SandboxRun(a)) => Ok(*a),
            other => panic!("not sandbox-run: {other:?}"),
        }
    }

    fn standalone(argv: &str) -> Result<SandboxRunArgs, clap::Error> {
        let argv = std::iter::once("sandbox-run").chain(argv.split(' '));
        Standalone::try_parse_from(argv).map(|s| s.args)
    }

    fn both(argv: &str) -> Result<SandboxRunArgs, clap::Error> {
        let a = top(&format!("sandbox-run {argv}"));
        let b = standalone(argv);
        assert_eq!(
            a.as_ref().map_err(|e| e.kind()),
            b.as_ref().map_err(|e| e.kind()),
            "{argv}"
        );
        b
    }

    #[test]
    fn command_is_everything_after_the_first_double_dash() {
        for argv in ["-- /bin/true", "--json -- /bin/true"] {
            assert_eq!(both(argv).unwrap().command, ["/bin/true"], "{argv}");
        }
        let a = both("-- /bin/sh -c -- --json").unwrap();
        assert_eq!(a.command, ["/bin/sh", "-c", "--", "--json"]);
        assert!(!a.json);
        let a = top("-c /etc/x.toml sandbox-run -- /bin/true").unwrap();
        assert_eq!(a.command, ["/bin/true"]);
    }

    #[test]
    fn parses_flags() {
        let a = both(
            "--memory 1000000 --pids 9 --wall-ms 50 --cpu-ms 7 --output-bytes 10 \
             --file-size 11 --tmpfs 12 --ro-bind /a --ro-bind /b --env A=1 --env B=x=y \
             --env C= --json -- /bin/echo hi",
        )
        .unwrap();
        let (cfg, req) = a.to_run().unwrap();
        assert_eq!(cfg.memory_bytes, 1_000_000);
        assert_eq!(cfg.pids, 9);
        assert_eq!(cfg.wall_ms, 50);
        assert_eq!(cfg.cpu_ms, 7);
        assert_eq!(cfg.output_bytes, 10);
        assert_eq!(cfg.file_size_bytes, 11);
        assert_eq!(cfg.tmpfs_bytes, 12);
        assert!(cfg.ro_binds.ends_with(&["/a".into(), "/b".into()]));
        assert!(a.json);
        assert_eq!(req.argv, ["/bin/echo", "hi"]);
        let env: Vec<_> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(env, ["A=1", "B=x=y", "C="]);
    }

    #[test]
    fn usage_errors() {
        use clap::error::ErrorKind as K;
        for (argv, kind) in [
            ("--bogus -- x", K::UnknownArgument),
            ("--json", K::MissingRequiredArgument),
            ("--json --", K::MissingRequiredArgument),
            ("-- ", K::InvalidValue),
            ("/bin/true", K::UnknownArgument),
            ("--env =x -- /bin/true", K::ValueValidation),
            ("--env x -- /bin/true", K::ValueValidation),
            ("--memory lots -- /bin/true", K::ValueValidation),
            ("--memory -- /bin/true", K::InvalidValue),
        ] {
            let e = both(argv).expect_err(argv);
            assert_eq!(e.kind(), kind, "{argv}: {e}");
            assert_eq!(usage_exit(&e), 64, "{argv}");
        }
        let help = both("--help").unwrap_err();
        assert_eq!(usage_exit(&help), 0);
        assert!(help.to_string().contains("127 not found"), "{help}");
    }
}
