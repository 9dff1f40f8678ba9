//! Sandbox for untrusted code (the only module allowed `unsafe`).
//! (Implemented by the sandbox work.)

/// Entry of `peagen-worker sandbox-run ...`; `args` excludes `sandbox-run`.
/// Returns the process exit code.
pub fn run_cli(args: Vec<String>) -> i32 {
    let _ = args;
    eprintln!("sandbox-run is not built yet");
    crate::exit::FAILURE
}
