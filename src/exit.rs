//! Process exit codes shared by the binaries (sysexits.h where one fits).

/// Clean exit.
pub const OK: i32 = 0;
/// Generic failure.
pub const FAILURE: i32 = 1;
/// Command-line usage error (EX_USAGE).
pub const USAGE: i32 = 64;
/// Input data error, e.g. a malformed task given to `peagenctl push` (EX_DATAERR).
pub const DATAERR: i32 = 65;
/// A service (Redis, systemd) is unavailable (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// Temporary failure; also the `command` handler's "retryable" exit (EX_TEMPFAIL).
pub const TEMPFAIL: i32 = 75;
/// Configuration error (EX_CONFIG); units set `RestartPreventExitStatus=78`.
pub const CONFIG: i32 = 78;
