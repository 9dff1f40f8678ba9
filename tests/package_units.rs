//! The worker's transient-unit property set as the spawner really builds it
//! (`systemd::render_worker_unit`). scripts/check-units.sh obtains the
//! rendering through `examples/render_worker_unit.rs` and gates it with `systemd-analyze
//! verify` and `systemd-analyze security --offline=true` (exposure <= 3.0).

use peagen_fabric::config::Config;
use peagen_fabric::systemd::render_worker_unit;

fn rendered_default() -> String {
    render_worker_unit(&Config::default().spawner.worker_unit)
}

#[test]
fn worker_property_set_keeps_the_sandbox_doors_open() {
    // The worker builds its own sandbox; these settings would break it
    // (see units/peagen-worker-transient.reference.service).
    let r = rendered_default();
    for bad in [
        "ProtectKernelTunables=yes",
        "ProtectKernelLogs=yes",
        "ProtectProc=",
        "ProcSubset=",
        "ProtectControlGroups=yes",
        "ProtectHostname=yes",
        "MemoryDenyWriteExecute=yes",
        "PrivateNetwork=yes",
    ] {
        assert!(!r.contains(bad), "rendered worker unit sets {bad}:\n{r}");
    }
    for need in [
        "Delegate=yes",
        "Type=notify",
        "Slice=peagen-workers.slice",
        "NoNewPrivileges=yes",
    ] {
        assert!(r.contains(need), "rendered worker unit lacks {need}:\n{r}");
    }
    assert!(
        r.contains("RestrictNamespaces=") && r.contains("user"),
        "{r}"
    );
}
