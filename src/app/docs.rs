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
pub(crate) const PROGRAMS: [&str; 3] = ["peagenctl", "peagen-worker", "peagen-spawnerd"];

/// The shells completions are generated for.
pub(crate) use clap_complete::Shell;

/// The clap command of `program`; `peagenctl`'s is passed in by the caller
/// (the ctl module owns it, and this module must not import a program).
pub(crate) fn command(program: &str, peagenctl: clap::Command) -> Option<clap::Command> {
    match program {
        "peagenctl" => Some(peagenctl),
        "peagen-worker" => Some(super::worker::WorkerCli::command()),
        "peagen-spawnerd" => Some(super::spawnerd::SpawnerCli::command()),
        _ => None,
    }
}

/// Write `program`'s completion script for `shell` to `out`.
pub(crate) fn completions(shell: Shell, mut cmd: clap::Command, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// File name a completion script is installed under, as the shells look it up.
pub(crate) fn completion_file(shell: Shell, program: &str) -> String {
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
pub(crate) fn man_section(program: &str) -> &'static str {
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
pub(crate) fn man_page(program: &str, cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let cmd_for_commands = cmd.clone();
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
    let mut commands = String::new();
    for sub in cmd_for_commands.get_subcommands() {
        render_command(&mut commands, cmd_for_commands.get_name(), sub);
    }
    if !commands.is_empty() {
        out.extend_from_slice(b".SH COMMANDS\n");
        out.extend_from_slice(commands.as_bytes());
    }
    out.extend_from_slice(strip_comments(sections).as_bytes());
    Ok(out)
}

/// Roff-escape text for a line that is not a request.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Every leaf command with its full path, description and options, so one
/// page documents `peagenctl queue dlq export` and the rest (clap_mangen's
/// own section would point at per-command pages that are not shipped).
fn render_command(out: &mut String, parent: &str, cmd: &clap::Command) {
    if cmd.get_name() == "help" || cmd.is_hide_set() {
        return;
    }
    let path = format!("{parent} {}", cmd.get_name());
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands() {
            render_command(out, &path, sub);
        }
        return;
    }
    let mut synopsis = String::new();
    for a in cmd
        .get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
    {
        let id = a.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let value = a
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| id.to_uppercase());
        let takes_value = a.get_action().takes_values();
        let item = match (a.get_long(), a.get_short(), takes_value) {
            (Some(l), _, true) => format!("--{l} {value}"),
            (Some(l), _, false) => format!("--{l}"),
            (None, Some(c), true) => format!("-{c} {value}"),
            (None, Some(c), false) => format!("-{c}"),
            (None, None, _) if a.get_num_args().is_some_and(|n| n.max_values() > 1) => {
                format!("{value}...")
            }
            (None, None, _) => value,
        };
        synopsis.push_str(&if a.is_required_set() {
            format!(" {item}")
        } else {
            format!(" [{item}]")
        });
    }
    out.push_str(&format!(
        ".TP\n\\fB{}\\fR{}\n",
        roff(&path),
        roff(&synopsis)
    ));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        out.push_str(&format!("{}\n", roff(&about.to_string())));
    }
    for a in cmd
        .get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
    {
        let id = a.get_id().as_str();
        let Some(help) = a.get_help() else { continue };
        if id == "help" || id == "version" {
            continue;
        }
        let name = match (a.get_long(), a.get_short()) {
            (Some(l), Some(c)) => format!("-{c}, --{l}"),
            (Some(l), None) => format!("--{l}"),
            (None, Some(c)) => format!("-{c}"),
            (None, None) => id.to_uppercase(),
        };
        out.push_str(&format!(
            ".br\n\\fI{}\\fR: {}\n",
            roff(&name),
            roff(&help.to_string())
        ));
    }
}

/// Write every program's man page into `dir` (`peagenctl.1`,
/// `peagen-worker.8`, `peagen-spawnerd.8`); returns the paths written.
pub(crate) fn write_man_pages(
    dir: &Path,
    peagenctl: clap::Command,
) -> std::io::Result<Vec<PathBuf>> {
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
pub(crate) fn write_completions(
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
