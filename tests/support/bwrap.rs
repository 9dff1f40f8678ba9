//! The reference sandbox the benchmarks compare with: bubblewrap with every
//! namespace unshared and a minimal read-only `/usr` root. Shared by
//! `benches/sandbox.rs` (through `#[path]`) and `tests/sandbox_warm.rs`.

pub const PATH: &str = "/usr/bin/bwrap";

/// `bwrap ARGS... COMMAND...`: everything before the command.
pub const ARGS: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/sbin",
    "/sbin",
    "--ro-bind",
    "/etc/ssl",
    "/etc/ssl",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
];

/// bwrap is installed.
pub fn available() -> bool {
    std::path::Path::new(PATH).exists()
}
