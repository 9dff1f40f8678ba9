//! Shell completions and man pages generated from the clap definitions of
//! the three programs, so they cannot drift from the real command lines
//! (`peagenctl completions SHELL [--program P]`, `peagenctl man --dir D`).
//! The man pages add hand-written prose (description, signals, files, exit
//! status: `packaging/man/prose/`) around the generated synopsis, options
//! and commands. The copies in `packaging/` are checked against this output
//! by `tests/generated_docs.rs`.

use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The three programs, by binary name.
pub const PROGRAMS: [&str; 3] = ["peagenctl", "peagen-worker", "peagen-spawnerd"];

/// The shells completions are generated for.
pub use clap_complete::Shell;

/// The clap command of `program`; `peagenctl`'s is passed in by the caller
/// (the ctl module owns it, and this module must not import a program).
pub fn command(program: &str, peagenctl: clap::Command) -> Option<clap::Command> {
    match program {
        "peagenctl" => Some(peagenctl),
        "peagen-worker" => Some(super::worker::WorkerCli::command()),
        "peagen-spawnerd" => Some(super::spawnerd::SpawnerCli::command()),
        _ => None,
    }
}

/// Write `program`'s completion script for `shell` to `out`.
pub fn completions(shell: Shell, mut cmd: clap::Command, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// File name a completion script is installed under, as the shells look it up.
pub fn completion_file(shell: Shell, program: &str) -> String {
    match shell {
        Shell::Bash => format!("{program}.bash"),
        Shell::Zsh => format!("_{program}"),
        Shell::Fish => format!("{program}.fish"),
        Shell::Elvish => format!("{program}.elv"),
        Shell::PowerShell => format!("_{program}.ps1"),
        _ => format!("{program}.{shell}"),
    }
}

/// Man section of each program: peagenctl is a user command (1), the
/// daemons are administration commands (8).
pub fn man_section(program: &str) -> &'static str {
    if program == "peagenctl" {
        "1"
    } else {
        "8"
    }
}

fn prose(program: &str) -> (&'static str, &'static str) {
    match program {
        "peagenctl" => (
            include_str!("../../packaging/man/prose/peagenctl.description.roff"),
            include_str!("../../packaging/man/prose/peagenctl.sections.roff"),
        ),
        "peagen-worker" => (
            include_str!("../../packaging/man/prose/peagen-worker.description.roff"),
            include_str!("../../packaging/man/prose/peagen-worker.sections.roff"),
        ),
        _ => (
            include_str!("../../packaging/man/prose/peagen-spawnerd.description.roff"),
            include_str!("../../packaging/man/prose/peagen-spawnerd.sections.roff"),
        ),
    }
}

/// Roff comment lines (`.\"`) of the prose files are for their editors.
fn strip_comments(roff: &str) -> String {
    roff.lines()
        .filter(|l| !l.starts_with(".\\\""))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The man page of `program` (roff).
pub fn man_page(program: &str, cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd)
        .section(man_section(program))
        .manual(if program == "peagenctl" {
            "User Commands"
        } else {
            "System Administration"
        })
        .source(format!("peagen-fabric {}", env!("CARGO_PKG_VERSION")));
    let (description, sections) = prose(program);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    out.extend_from_slice(b".SH DESCRIPTION\n");
    out.extend_from_slice(strip_comments(description).as_bytes());
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.extend_from_slice(strip_comments(sections).as_bytes());
    Ok(out)
}

/// Write every program's man page into `dir` (`peagenctl.1`,
/// `peagen-worker.8`, `peagen-spawnerd.8`); returns the paths written.
pub fn write_man_pages(dir: &Path, peagenctl: clap::Command) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for p in PROGRAMS {
        let cmd = command(p, peagenctl.clone()).expect("a known program");
        let path = dir.join(format!("{p}.{}", man_section(p)));
        std::fs::write(&path, man_page(p, cmd)?)?;
        written.push(path);
    }
    Ok(written)
}

/// Write every program's completion for `shells` into `dir`.
pub fn write_completions(
    dir: &Path,
    shells: &[Shell],
    peagenctl: clap::Command,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for p in PROGRAMS {
        for &sh in shells {
            let mut buf = Vec::new();
            completions(
                sh,
                command(p, peagenctl.clone()).expect("a known program"),
                &mut buf,
            );
            let path = dir.join(completion_file(sh, p));
            std::fs::write(&path, buf)?;
            written.push(path);
        }
    }
    Ok(written)
}
